package kes

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/p11bridge/p11bridge/signer"
)

// Authorizer is what the server package supplies: who the client is and what it may do.
type Authorizer interface {
	// Identify names the client of r (from r.TLS, or proxy headers the server trusts).
	// An error answers 403 "not authorized: insufficient permissions".
	Identify(r *http.Request) (identity string, err error)
	// AllowKES applies the identity's policy to an API path such as "/v1/key/generate/my-key";
	// the admin identity is allowed everything.
	AllowKES(identity, path string) bool
	IsAdmin(identity string) bool
	// Caller is identity as the registry's key model sees it: admin or not, its policy's key
	// patterns. The registry decides every question about a key with it.
	Caller(identity string) signer.Caller
	// Policies, PolicyOf and Identities feed the read-only /v1/policy and /v1/identity views.
	Policies() []Policy
	PolicyOf(identity string) (name string, ok bool)
	Identities() []string
}

// Admitter is an optional part of an Authorizer: it bounds the key operations one identity has
// running at once. Admit returns a function to call when the operation ends, or an error refusing
// it (answered 429 with the error's text).
type Admitter interface {
	Admit(identity string) (release func(), err error)
}

// Policy is a configured policy as the read-only policy routes show it.
type Policy struct {
	Name        string
	Allow, Deny []string
	CreatedAt   time.Time
	CreatedBy   string
}

// LogStream is a source of JSON lines for /v1/log/error and /v1/log/audit. Each subscriber gets
// its own channel; cancel ends the subscription. A nil LogStream serves an empty stream that
// stays open until the client goes away, as KES does when nothing is logged.
type LogStream interface {
	Subscribe() (lines <-chan []byte, cancel func())
}

// Options configure New.
type Options struct {
	Registry *signer.Registry
	Auth     Authorizer
	Log      *slog.Logger
	// Audit gets one record per key operation: identity, protocol, operation, key name, version,
	// signer, status and latency. Never key material, plaintexts or ciphertexts.
	Audit              *slog.Logger
	ErrorLog, AuditLog LogStream
	Version            string
	// MaxBody bounds request bodies of the routes that take one; 0 means 1 MiB.
	MaxBody int64
	// AuditCheck, when set, is asked before every key operation; an error refuses it with 503
	// and the error's text (the audit log cannot be written and must be).
	AuditCheck func() error
}

// DefaultMaxBody is the body limit of KES (1 MiB).
const DefaultMaxBody = 1 << 20
