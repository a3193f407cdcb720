// Package conf reads p11bridge's configuration: one HCL v2 file describing the
// listeners, TLS, the PKCS#11 signers, the keymap, the audit log and the
// access policies.
//
// Parse reports every problem it finds at once, each with file:line:col, as a
// *Error, so an operator can fix a file in one pass. PINs are held as Secret
// and never appear in any message.
package conf

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	pkcs11uri "github.com/stefanberger/go-pkcs11uri"
)

// Config is a parsed, validated configuration. Relative paths in it are
// already resolved against the directory of the config file.
type Config struct {
	File     string // the file name given to Load or Parse
	LogLevel string // debug, info, warn or error

	Listen Listen
	TLS    TLS

	Signers        []Signer // in file order
	DefaultSigner  string   // always set when Signers is not empty
	RolloverSigner string   // "" when no rollover is in progress
	// RetiredSigners are signers removed from the file although the keymap records active or
	// pre-active keys on them; listing one confirms that its keys are given up.
	RetiredSigners []string

	Keymap Keymap
	Audit  Audit

	Admin    string // identity allowed everything; "" for none
	Policies []Policy
	// NotAfter ends configured identities at a time (identity blocks): they are taken without a
	// chain or expiry check otherwise.
	NotAfter map[string]time.Time

	KMIP KMIP
	KES  KES
	Ops  Ops

	// production holds what production mode refuses in an otherwise valid file (a PIN written
	// in it, readable secret files, a plaintext KES listener); see Production.
	production []Diagnostic
}

// Ops says how the ops listener (health, readiness, status, metrics) is served. Without TLS it is
// plain HTTP without authentication, which production mode accepts on a loopback address only,
// unless Public says the operator means it.
type Ops struct {
	// TLS serves it with the server's certificate, and requires a client certificate: the admin,
	// or an identity whose policy allows the path under /ops/ (e.g. allow = ["/ops/metrics"]).
	TLS bool
	// Public accepts plain HTTP on any address: what the listener shows (key counts per signer
	// and state, signer names, health) is then anyone's who can reach it.
	Public bool
}

// Listen holds the listener addresses; "" means that listener is off.
type Listen struct {
	KMIP string // KMIP TTLV over mutual TLS
	KES  string // KES HTTPS API
	Ops  string // health and metrics, plain HTTP
}

// TLS is the server certificate shared by the KMIP and KES listeners.
type TLS struct {
	Cert string // PEM: the server certificate, then any intermediates
	Key  string // PEM private key file; "" when the key lives in a token (KeyURI)
	// KeyURI is an RFC 7512 pkcs11: URI naming the server's private key in the token of a
	// configured signer: token, serial or slot-id, and object (CKA_LABEL) and/or id (CKA_ID).
	// The key is used through the signer registry, so no private key sits on disk.
	KeyURI   string
	ClientCA string // "" means client chains are not verified against a CA
	// MinVersion is tls.VersionTLS12 or tls.VersionTLS13.
	MinVersion uint16
	// FIPS restricts both front ends to FIPS 140-approved TLS: AES-GCM cipher suites, the NIST
	// curves, RSA ≥ 2048 and NIST-curve or Ed25519 certificate keys.
	FIPS bool
	// Revoked lists identities refused on both front ends even when their chain verifies or
	// they are configured: those of revoked and the lines of RevokedFile, which a reload
	// (SIGHUP) reads again.
	Revoked     []string
	RevokedFile string
}

// Signer is one PKCS#11 token. Exactly one of SlotID, TokenLabel,
// TokenSerial and URI is set.
type Signer struct {
	Name   string
	Module string // path of the PKCS#11 module, used as written (dlopen searches bare names)

	SlotID      *uint
	TokenLabel  string
	TokenSerial string
	URI         string // RFC 7512 pkcs11: URI naming a token; never holds a PIN

	PIN Secret
	// PINSource says where the PIN came from, for messages: "pin",
	// "env:NAME" or "file:/path". It never holds the PIN.
	PINSource string

	MaxSessions    int
	SessionTimeout time.Duration // how long to wait for a free session
	// KeyCopies bounds the session copies of keys (AES, HMAC, private) kept in the token; 0 = none.
	KeyCopies int

	Range string // "file:line:col" of the signer block, for later diagnostics
}

// Keymap says where the key map lives: a CSV file (Path), or PostgreSQL (Postgres) for several
// instances sharing one store. Exactly one is set.
type Keymap struct {
	Path string
	// Postgres is the libpq connection string or postgres:// URI; it may hold a password.
	Postgres Secret
	// PostgresSource says where it came from, for messages: "postgres", "env:NAME" or
	// "file:/path". It never holds the string.
	PostgresSource string
	// Instance names this instance in the store's heartbeat table; "" lets the server choose.
	Instance string
	// Staleness is how long an instance may go without confirming that its copy of the store
	// is current before it refuses to use keys; 0 means the store's default.
	Staleness time.Duration
}

// Audit configures the audit log; Path is "" when there is none.
type Audit struct {
	Path string
	// Required makes a failure to write the audit log fail the request
	// instead of only being reported.
	Required bool
}

// Policy maps identities to what they may do.
type Policy struct {
	Name       string
	Allow      []string // KES path patterns: exact, or prefix ending in '*'
	Deny       []string // KES path patterns, checked before Allow
	KMIP       []string // KMIP operation names, or "*"
	Keys       []string // key-name patterns: the policy's name space (signer/access.go); empty: its identities' own keys
	SHA1       bool     // signatures over SHA-1 allowed
	Identities []string // lowercase hex SHA-256 of a client certificate's SubjectPublicKeyInfo
	// ClientIVSharedKeys lets its identities choose IVs on keys others use too (docs/guarantees.md
	// says what that risks).
	ClientIVSharedKeys bool
	// Export lets its identities make keys that may leave the token, and take them out (KMIP Get):
	// never by default (signer/access.go).
	Export bool
	// MaxObjects and MaxAttributeBytes are each identity's quotas; 0 = the defaults (100,000
	// objects, 256 MiB of attributes).
	MaxObjects        int
	MaxAttributeBytes int
}

// KMIP tunes the KMIP listener.
type KMIP struct {
	MaxMessageSize int // bytes
	MaxConnections int // authenticated connections
	IdleTimeout    time.Duration
	// HandshakeTimeout bounds a new connection's TLS handshake.
	HandshakeTimeout time.Duration
	// MaxHandshakes and MaxHandshakesPerAddress bound the connections still in their handshake,
	// in all and per source address; over them the oldest is closed for the newest.
	MaxHandshakes           int
	MaxHandshakesPerAddress int
	// MaxLocateItems caps the identifiers one Locate answers.
	MaxLocateItems int
	// MaxConnectionsPerIdentity bounds one identity's authenticated connections; 0 = a quarter of
	// MaxConnections.
	MaxConnectionsPerIdentity int
}

// KES tunes the KES listener.
type KES struct {
	MaxBody int // bytes
	// Plaintext serves the KES API over HTTP without TLS, trusting the proxy header from any
	// peer. Only dev mode accepts it (see Production).
	Plaintext bool
	// Proxy is the TLS-terminating proxy in front of the listener, or nil.
	Proxy *Proxy
}

// Proxy is a TLS-terminating reverse proxy that forwards each client's certificate in a header,
// URL-encoded PEM as nginx's $ssl_client_escaped_cert. Only requests whose own TLS identity is
// one of Identities may carry it; from anyone else the header is ignored.
type Proxy struct {
	Identities []string
	Header     string // canonical MIME header name, default X-Tls-Client-Cert
}

// Signer returns the signer with the given name.
func (c *Config) Signer(name string) (*Signer, bool) {
	for i := range c.Signers {
		if c.Signers[i].Name == name {
			return &c.Signers[i], true
		}
	}
	return nil, false
}

// tokenSelector returns the token a signer names, whichever way it was
// selected; for a URI, the slot-id, token and serial attributes it has.
func (s *Signer) tokenSelector() (slotID *uint, label, serial string) {
	if s.URI == "" {
		return s.SlotID, s.TokenLabel, s.TokenSerial
	}
	u := pkcs11uri.New()
	if err := u.Parse(s.URI); err != nil {
		return nil, "", ""
	}
	label, _ = u.GetPathAttribute("token", false)
	serial, _ = u.GetPathAttribute("serial", false)
	if v, ok := u.GetPathAttribute("slot-id", false); ok {
		if n, err := strconv.ParseUint(v, 10, 0); err == nil {
			id := uint(n)
			slotID = &id
		}
	}
	return slotID, label, serial
}

// Diagnostic is one problem found in a config file.
type Diagnostic struct {
	Pos     string // "file:line:col", or just the file name when no position applies
	Summary string // what is wrong
	Detail  string // why, and what to do about it
}

func (d Diagnostic) String() string {
	s := d.Pos + ": " + d.Summary
	if d.Detail != "" {
		s += "; " + d.Detail
	}
	return s
}

// Error is returned by Load and Parse; it carries every problem found.
type Error struct {
	Diags []Diagnostic
}

// Error lists every diagnostic, one per line.
func (e *Error) Error() string {
	lines := make([]string, len(e.Diags))
	for i, d := range e.Diags {
		lines[i] = d.String()
	}
	return strings.Join(lines, "\n")
}

// maxConfigSize bounds what Load reads and Parse accepts: a config is a few
// kilobytes, so anything this large is the wrong file.
const maxConfigSize = 1 << 20

// Load reads and parses the config file at path.
func Load(path string) (*Config, error) {
	src, err := readLimited(path, maxConfigSize, false)
	if err != nil {
		return nil, &Error{Diags: []Diagnostic{{
			Pos:     path,
			Summary: "cannot read the config file",
			Detail:  err.Error(),
		}}}
	}
	return Parse(src, path)
}

var errTooLarge = errors.New("file too large")

// readLimited reads a file of at most limit bytes. With regularOnly, other
// kinds of file are refused before they are opened: opening a FIFO blocks,
// and /dev/zero never ends. Load allows them, for "-config <(generate)".
func readLimited(path string, limit int64, regularOnly bool) ([]byte, error) {
	notRegular := &fs.PathError{Op: "read", Path: path, Err: errors.New("not a regular file")}
	if regularOnly {
		st, err := os.Stat(path)
		if err != nil {
			return nil, err
		}
		if !st.Mode().IsRegular() {
			return nil, notRegular
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.IsDir() || regularOnly && !st.Mode().IsRegular() {
		return nil, notRegular
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, &fs.PathError{Op: "read", Path: path, Err: fmt.Errorf("%w: more than %d bytes", errTooLarge, limit)}
	}
	return b, nil
}
