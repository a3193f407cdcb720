# p11bridge production configuration: @SYSCONFDIR@/p11bridge/p11bridge.hcl, run by the
# p11bridge systemd unit as `p11bridge serve`. Relative paths are relative to this file.
# The full reference of every option is in the README ("Configuration").
#
# Replace every identity below (64 hex digits; `p11bridge identity cert.pem` prints one), the
# token label and the module path, then run: p11bridge check --config <this file>

log_level = "info"

listen {
  kmip = "0.0.0.0:5696"      # KMIP over mutual TLS
  kes  = "0.0.0.0:7373"      # KES API for MinIO, HTTPS
  ops  = "127.0.0.1:9464"    # /health, /ready, /status, /metrics: plain HTTP, keep it local
}

tls {
  cert        = "tls/server.pem"    # the server certificate, then any intermediates
  # The server's private key stays in the HSM, in the token of signer "hsm" below (RFC 7512).
  key         = "pkcs11:token=p11bridge;object=p11bridge-tls"
  client_ca   = "tls/client-ca.pem" # the CA of KMIP clients' and MinIO's certificates
  min_version = "1.2"
  fips        = true                # FIPS 140-approved suites and curves only
  revoked_file = "revoked.txt"      # identities refused even when their chain verifies
}

# The HSM. PIN from the root-only environment file the unit reads (p11bridge.env).
signer "hsm" {
  module       = "/usr/lib/softhsm/libsofthsm2.so"   # your HSM vendor's PKCS#11 library
  token_label  = "p11bridge"
  pin          = env("P11BRIDGE_PIN")
  max_sessions = 16
}
default_signer = "hsm"

# StateDirectory and LogsDirectory of the unit.
keymap { path = "/var/lib/p11bridge/keymap.csv" }
audit {
  path     = "/var/log/p11bridge/audit.log"
  required = true
}

# The operators' certificate: may do everything.
admin = "0000000000000000000000000000000000000000000000000000000000000000"

# MinIO, with a KES API key (`kes:v1:…`) or a client certificate.
policy "minio" {
  allow = [
    "/v1/key/create/*", "/v1/key/generate/*", "/v1/key/decrypt/*", "/v1/key/list/*",
    "/v1/key/describe/*", "/v1/key/hmac/*", "/v1/status", "/v1/api", "/v1/metrics", "/version",
  ]
  identities = ["1111111111111111111111111111111111111111111111111111111111111111"]
}

# A Krill-style RPKI CA signing with RSA keys over KMIP.
policy "rpki-ca" {
  kmip       = ["Query", "DiscoverVersions", "CreateKeyPair", "Get", "ModifyAttribute", "Activate", "Sign", "Revoke", "Destroy"]
  identities = ["2222222222222222222222222222222222222222222222222222222222222222"]
}
