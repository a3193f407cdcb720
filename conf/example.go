package conf

// Example returns a complete, commented config. It parses as is when
// P11BRIDGE_PIN_A is set and secrets/pin-b exists next to the file.
func Example() string { return example }

const example = `# p11bridge configuration (HCL). Relative paths are relative to this file.

# debug, info, warn or error.
log_level = "info"

# Where to listen. Leave an address out (or "") to turn that listener off.
listen {
  kmip = "127.0.0.1:5696"   # KMIP over mutual TLS
  kes  = "127.0.0.1:7373"   # KES API for MinIO, HTTPS
  ops  = "127.0.0.1:9464"   # /health, /ready, /status, /metrics; plain HTTP: keep it private
}

# Production mode serves plain ops on a loopback address only. Elsewhere,
# serve it with the server certificate and client certificates (the admin,
# or identities whose policy allows "/ops/<path>", e.g. "/ops/metrics"), or
# declare it public.
# ops {
#   tls    = true
#   public = false   # true: plain HTTP on any address, for anyone who reaches it
# }

# The server certificate for the kmip and kes listeners. Clients must present
# a certificate; with client_ca their chain is verified against it. SIGHUP
# reloads every file named here without dropping connections.
tls {
  cert        = "server.pem"      # the server certificate, then any intermediates
  key         = "server-key.pem"  # mode 0600 or 0640; or a key in a signer's token:
  #   key = "pkcs11:token=bridge-a;object=p11bridge-tls"   (RFC 7512)
  client_ca   = "ca.pem"
  min_version = "1.2"        # or "1.3"
  fips        = false        # true: FIPS 140-approved suites (AES-GCM) and curves only

  # Identities refused on both listeners even when their chain verifies.
  # A revoked_file holds one per line (# comments); SIGHUP reads it again.
  revoked = []
  # revoked_file = "revoked.txt"
}

# A signer is one PKCS#11 token. Select it with exactly one of slot_id,
# token_label, token_serial or an RFC 7512 uri, and give the PIN with exactly
# one of pin = env("NAME") or pin_file (mode 0600). A PIN written here as a
# string is for dev mode only: p11bridge serve refuses it.
signer "hsm-a" {
  module          = "/usr/lib/softhsm/libsofthsm2.so"
  token_label     = "bridge-a"
  pin             = env("P11BRIDGE_PIN_A")
  max_sessions    = 8        # PKCS#11 sessions kept open; default 2 per CPU
  session_timeout = "5s"     # how long a request waits for a free session
  # AES, HMAC and private keys in use get a session-object copy inside the
  # token (not extractable, gone when p11bridge stops), which SoftHSM2 uses
  # faster (AES-GCM ~3x).
  # A key destroyed by another process stops working here within 1 s.
  # Default 1024 keys; 0 = always use the token objects.
  key_copies      = 1024
}

signer "hsm-b" {
  module   = "/usr/lib/softhsm/libsofthsm2.so"
  uri      = "pkcs11:token=bridge-b"
  pin_file = "secrets/pin-b"  # holds the PIN; a trailing newline is ignored
}

# New keys are created on default_signer. To move to a new token, set
# rollover_signer and reload (SIGHUP): new keys go there, old keys keep
# working where they are.
default_signer = "hsm-a"
# rollover_signer = "hsm-b"

# Removing a signer block is refused while the keymap records active or
# pre-active keys on it. Listing the removed signer here confirms that its
# keys are given up.
# retired_signers = ["hsm-old"]

# The key map: which key lives on which token, and its KMIP state. One
# instance keeps it in a CSV file (path). Several instances in front of one
# HSM share it in PostgreSQL instead (docs/howto-cluster.md): replace path
# with postgres = env("NAME") or postgres_file (mode 0600), a libpq
# connection string or postgres:// URI; the schema is created at start.
keymap {
  path = "keymap.csv"
  # postgres  = env("P11BRIDGE_KEYMAP_DSN")
  # instance  = "bridge-1"  # this instance in /status; default host/pid
  # staleness = "2s"        # an instance that cannot confirm for this long
  #                         # that its rows are current refuses keys
}

# One line per request. With required = true a request fails when its audit
# line cannot be written.
audit {
  path     = "audit.log"
  required = false
}

# Identities are the lowercase hex SHA-256 of a client certificate's public
# key; ` + "`p11bridge identity cert.pem`" + ` prints it. The admin may do everything.
admin = "8c6976e5b5410415bde908bd4dee15dfb167a9c873fc4bb8a81f6f2ab448a918"

# What MinIO may do through the KES API.
policy "minio" {
  allow = [
    "/v1/key/create/minio-*",
    "/v1/key/generate/minio-*",
    "/v1/key/decrypt/minio-*",
    "/v1/key/describe/minio-*",
    "/v1/key/list/*",
    "/v1/status",
  ]
  deny       = ["/v1/key/delete/*"]
  # Only keys named so, over KES and KMIP alike; and the use (not the
  # management) of such keys that other identities made.
  keys       = ["minio-*"]
  identities = ["5791b6226743c56f44f8274cc67b8beb9751b6403e697243ad00fd37af5635e3"]
}

# Identities configured exactly (the admin, a policy's identities: KES API
# keys among them) are taken without a chain or expiry check, as KES takes
# them; /status warns of one whose certificate has expired. An identity
# block gives one an end:
# identity "5791b6226743c56f44f8274cc67b8beb9751b6403e697243ad00fd37af5635e3" {
#   not_after = "2027-06-30T00:00:00Z"
# }

# What a KMIP client may do: KMIP operation names, or ["*"].
policy "rpki-ca" {
  kmip       = ["Query", "CreateKeyPair", "Get", "ModifyAttribute", "Activate", "Sign", "Revoke", "Destroy"]
  sha1       = false   # signatures over SHA-1 are refused unless true
  # Each identity's quotas: live objects, and bytes of their attributes
  # (defaults 100000 and "256MiB").
  max_objects         = 100000
  max_attribute_bytes = "256MiB"
  # Client-chosen IVs are taken on an identity's own keys that no policy
  # shares; true allows them on shared keys too, letting one user's
  # encryptions reveal what others sealed (see docs/guarantees.md).
  client_iv_shared_keys = false
  identities = ["0e6b69fbd1836bbd274587164bdbde0221901974ec4ade407e4bf4c357273eed"]
}

# Storage arrays and databases fetch their keys (KMIP Get). export = true
# lets a policy's identities make keys that may leave the token: generated in
# the token all the same, given back wrapped in it, each export audited. Their
# keys are exportable unless a KMIP 1.4/2.0 request says Extractable = false.
# Without it (the default) generated keys never leave the token.
policy "storage" {
  kmip       = ["Create", "Register", "Get", "Locate", "GetAttributes", "Activate", "ReKey", "Revoke", "Destroy"]
  export     = true
  keys       = ["array-*"]
  identities = ["731855c2d1351421793d943f800c0c3242b057090a89ea680331e939a855a9a4"]
}

# Limits of the KMIP listener.
kmip {
  max_message_size = "1MiB"
  max_connections  = 1024   # authenticated connections
  idle_timeout     = "2m"
  # One identity holds at most this many of them (default: a quarter of
  # max_connections). Identities without KMIP rights share 64 slots of their
  # own, where they are told Permission Denied.
  max_connections_per_identity = 256
  # A new connection must finish TLS within handshake_timeout. Connections
  # still in their handshake do not take the slots above: at most
  # max_handshakes of them, max_handshakes_per_address from one IP address
  # (IPv6: one /64). Beyond either, the oldest is closed for the newest once
  # it has had a second, and the newest is refused while all are younger.
  handshake_timeout          = "10s"
  max_handshakes             = 256
  max_handshakes_per_address = 64
  # Locate answers at most this many identifiers (fewer when the request's
  # Maximum Items says so); Offset Items pages through the rest.
  max_locate_items = 1000
}

# The KES listener.
kes {
  max_body = "1MiB"

  # Behind a TLS-terminating proxy that connects with its own client
  # certificate and forwards each client's certificate as URL-encoded PEM
  # (nginx: proxy_set_header X-Tls-Client-Cert $ssl_client_escaped_cert).
  # The header is taken from these identities only.
  # proxy {
  #   identities = ["<identity of the proxy's client certificate>"]
  #   header     = "X-Tls-Client-Cert"
  # }

  # plaintext = true   # HTTP without TLS behind a local proxy: dev mode only
}
`
