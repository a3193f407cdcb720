package kes

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kesclient "github.com/minio/kms-go/kes"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/server/pki"
	"github.com/p11bridge/p11bridge/signer"
	"github.com/p11bridge/p11bridge/signer/softhsm"
)

// The fixture is one SoftHSM2 token, one keymap, one registry and one KES handler behind a real
// TLS listener with HTTP/2, shared by all tests of the package (tests run one at a time; the
// restart test swaps the registry under the running listener).
var fx struct {
	dir     string
	tok     *softhsm.Token
	tokB    *softhsm.Token
	km      *keymap.Map
	reg     *signer.Registry
	h       *Handler
	cur     atomic.Pointer[Handler]
	srv     *httptest.Server
	ca      *pki.CA
	roots   *x509.CertPool
	auth    *testAuth
	audit   *auditSink
	errLog  *testStream
	auditLS *testStream

	admin, minio, reader, stranger client
}

// client is a kms-go client and a raw HTTP client with the same identity.
type client struct {
	id  string
	kes *kesclient.Client
	raw *http.Client
}

// minioPolicy is MinIO's minimal KES policy.
var minioPolicy = []string{
	"/v1/key/create/*", "/v1/key/generate/*", "/v1/key/decrypt/*", "/v1/key/list/*", "/v1/key/hmac/*",
	"/v1/status", "/v1/api", "/version",
}

func TestMain(m *testing.M) {
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kes tests:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func run(m *testing.M) (int, error) {
	dir, err := os.MkdirTemp("", "p11bridge-kes-test-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	fx.dir = dir
	if fx.tok, err = softhsm.Ensure(filepath.Join(dir, "softhsm"), "kes-test"); err != nil {
		return 0, err
	}
	// The rollover test's second token: SoftHSM reads its token list at C_Initialize, so it must
	// exist before the first registry opens.
	if fx.tokB, err = softhsm.Ensure(filepath.Join(dir, "softhsm"), "kes-test-b"); err != nil {
		return 0, err
	}
	os.Setenv("SOFTHSM2_CONF", fx.tok.Conf)
	if err := openRegistry(); err != nil {
		return 0, err
	}
	defer closeRegistry()
	if err := startServer(); err != nil {
		return 0, err
	}
	defer fx.srv.Close()
	return m.Run(), nil
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// openRegistry (re)opens keymap and registry on the fixture's token and installs a fresh handler.
func openRegistry() error {
	km, err := keymap.Open(filepath.Join(fx.dir, "keymap.csv"), quiet)
	if err != nil {
		return err
	}
	reg, err := signer.Open(signer.Options{
		Signers: []signer.Config{{Name: "a", Module: fx.tok.Module, TokenLabel: fx.tok.Label, PIN: fx.tok.PIN, MaxSessions: 8, KeyCopies: 1024}},
		Default: "a", Logger: quiet,
	}, km)
	if err != nil {
		km.Close()
		return err
	}
	fx.km, fx.reg = km, reg
	if fx.auth == nil {
		fx.auth = &testAuth{assign: map[string]string{}, policies: map[string]Policy{}, keys: map[string][]string{}}
		fx.audit = &auditSink{}
		fx.errLog, fx.auditLS = newTestStream(), newTestStream()
	}
	fx.h = newHandler(Options{
		Registry: reg, Auth: fx.auth, Log: quiet, Audit: slog.New(fx.audit),
		ErrorLog: fx.errLog, AuditLog: fx.auditLS, Version: "test-1.0",
	})
	fx.cur.Store(fx.h)
	return nil
}

func closeRegistry() {
	fx.reg.Close()
	fx.km.Close()
}

func startServer() error {
	ca, err := pki.NewCA("kes test CA")
	if err != nil {
		return err
	}
	fx.ca = ca
	fx.roots = x509.NewCertPool()
	fx.roots.AddCert(ca.Cert)
	cert, key, err := ca.Issue("localhost", []string{"127.0.0.1", "localhost"}, pki.Server)
	if err != nil {
		return err
	}
	fx.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fx.cur.Load().ServeHTTP(w, r)
	}))
	fx.srv.EnableHTTP2 = true
	// API-key clients present self-signed Ed25519 certificates: ask for a certificate, accept any,
	// and let the Authorizer decide (as the server package does for KES).
	fx.srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}},
		ClientAuth:   tls.RequestClientCert,
		MinVersion:   tls.VersionTLS12,
	}
	fx.srv.Config.ErrorLog = slog.NewLogLogger(quiet.Handler(), slog.LevelInfo)
	// The timeouts server.Start gives its KES http.Server, so tests and benchmarks run the same
	// connection handling as production.
	fx.srv.Config.ReadHeaderTimeout, fx.srv.Config.IdleTimeout = 10*time.Second, 2*time.Minute
	fx.srv.StartTLS()

	// admin: a CA-issued certificate; minio: an API key with MinIO's minimal policy; reader: a
	// certificate with a describe/list policy and a deny rule; stranger: an API key nobody knows.
	if fx.admin, err = certClient("admin"); err != nil {
		return err
	}
	fx.auth.admin = fx.admin.id
	if fx.minio, err = apiKeyClient(); err != nil {
		return err
	}
	if fx.reader, err = certClient("reader"); err != nil {
		return err
	}
	if fx.stranger, err = apiKeyClient(); err != nil {
		return err
	}
	fx.auth.setPolicy(Policy{Name: "minio", Allow: minioPolicy, CreatedBy: fx.admin.id}, fx.minio.id)
	// MinIO's policy grants it the use of every key, whoever made it: most tests make their keys as
	// the admin and use them as MinIO. TestOwnership covers identities without such a grant.
	fx.auth.keys[fx.minio.id] = []string{"*"}
	fx.auth.setPolicy(Policy{Name: "reader", Allow: []string{
		"/v1/key/describe/*", "/v1/key/list/*", "/v1/policy/*", "/v1/identity/*", "/v1/metrics", "/v1/ready",
	}, Deny: []string{"/v1/key/describe/secret-*"}}, fx.reader.id)
	fx.auth.keys[fx.reader.id] = []string{"pol-*"}
	return nil
}

func newClient(id string, conf *tls.Config) client {
	conf.RootCAs = fx.roots
	c := kesclient.NewClientWithConfig(fx.srv.URL, conf)
	raw := &http.Client{Transport: &http.Transport{TLSClientConfig: conf.Clone(), ForceAttemptHTTP2: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return client{id: id, kes: c, raw: raw}
}

func certClient(cn string) (client, error) {
	cert, key, err := fx.ca.Issue(cn, nil, pki.Client)
	if err != nil {
		return client{}, err
	}
	return newClient(pki.Identity(cert), &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}},
	}), nil
}

// apiKeyClient builds the client the way kes.NewClient does (a self-signed Ed25519 certificate
// from the kes:v1: key), only with the test CA as root so the server certificate verifies.
func apiKeyClient() (client, error) {
	key, id, err := pki.APIKey()
	if err != nil {
		return client{}, err
	}
	ak, err := kesclient.ParseAPIKey(key)
	if err != nil {
		return client{}, err
	}
	if ak.Identity().String() != id {
		return client{}, fmt.Errorf("API key identity: kms-go says %s, pki says %s", ak.Identity(), id)
	}
	cert, err := kesclient.GenerateCertificate(ak)
	if err != nil {
		return client{}, err
	}
	return newClient(id, &tls.Config{Certificates: []tls.Certificate{cert}}), nil
}

// testAuth is the Authorizer of the tests: identities from the client certificate, KES policy
// matching (deny first, then allow, trailing '*' as prefix), one admin.
type testAuth struct {
	mu       sync.Mutex
	admin    string
	policies map[string]Policy
	assign   map[string]string   // identity -> policy
	keys     map[string][]string // identity -> its policy's key patterns
	extra    []string            // identities with no policy, for listing
}

// Caller gives the registry's key model the admin flag and key patterns of id, as server/auth.go
// does: patterns grant the keys of the admin and of identities of the same policy, and name a
// space no other policy's identities may make keys in.
func (a *testAuth) Caller(id string) signer.Caller {
	a.mu.Lock()
	defer a.mu.Unlock()
	pol := a.assign[id]
	return signer.Caller{Identity: id, Admin: id == a.admin, Keys: a.keys[id],
		Team: func(owner string) bool {
			a.mu.Lock()
			defer a.mu.Unlock()
			return owner == a.admin || (pol != "" && a.assign[owner] == pol)
		},
		Reserved: func(name string) bool {
			a.mu.Lock()
			defer a.mu.Unlock()
			for other, pats := range a.keys {
				if a.assign[other] == pol {
					continue
				}
				for _, p := range pats {
					if matchPattern(p, name) {
						return true
					}
				}
			}
			return false
		}}
}

func (a *testAuth) setPolicy(p Policy, ids ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.policies[p.Name] = p
	for _, id := range ids {
		a.assign[id] = p.Name
	}
}

func (a *testAuth) Identify(r *http.Request) (string, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return "", errors.New("no client certificate")
	}
	return pki.Identity(r.TLS.PeerCertificates[0]), nil
}

func matchPattern(pattern, path string) bool {
	if p, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(path, p)
	}
	return pattern == path
}

func (a *testAuth) AllowKES(id, path string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if id == a.admin {
		return true
	}
	p, ok := a.policies[a.assign[id]]
	if !ok {
		return false
	}
	for _, d := range p.Deny {
		if matchPattern(d, path) {
			return false
		}
	}
	for _, al := range p.Allow {
		if matchPattern(al, path) {
			return true
		}
	}
	return false
}

func (a *testAuth) IsAdmin(id string) bool { return id == a.admin }

func (a *testAuth) Policies() []Policy {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []Policy
	for _, p := range a.policies {
		out = append(out, p)
	}
	return out
}

func (a *testAuth) PolicyOf(id string) (string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n, ok := a.assign[id]
	return n, ok
}

func (a *testAuth) Identities() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := []string{a.admin}
	for id := range a.assign {
		out = append(out, id)
	}
	return append(out, a.extra...)
}

// auditSink is a slog.Handler that keeps the audit records.
type auditSink struct {
	mu   sync.Mutex
	recs []map[string]string
}

func (s *auditSink) Enabled(context.Context, slog.Level) bool { return true }
func (s *auditSink) WithAttrs([]slog.Attr) slog.Handler       { return s }
func (s *auditSink) WithGroup(string) slog.Handler            { return s }
func (s *auditSink) Handle(_ context.Context, r slog.Record) error {
	m := map[string]string{"msg": r.Message}
	r.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value.String()
		return true
	})
	s.mu.Lock()
	s.recs = append(s.recs, m)
	s.mu.Unlock()
	return nil
}

// take returns the records since the last take.
func (s *auditSink) take() []map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.recs
	s.recs = nil
	return out
}

// testStream is a LogStream the tests feed by hand.
type testStream struct {
	mu   sync.Mutex
	subs map[chan []byte]struct{}
}

func newTestStream() *testStream { return &testStream{subs: map[chan []byte]struct{}{}} }

func (s *testStream) Subscribe() (<-chan []byte, func()) {
	ch := make(chan []byte, 16)
	s.mu.Lock()
	s.subs[ch] = struct{}{}
	s.mu.Unlock()
	return ch, func() {
		s.mu.Lock()
		delete(s.subs, ch)
		s.mu.Unlock()
	}
}

// send delivers line to every subscriber and reports how many there were.
func (s *testStream) send(line string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.subs {
		ch <- []byte(line)
	}
	return len(s.subs)
}

func (s *testStream) waitSubscribers(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		got := len(s.subs)
		s.mu.Unlock()
		if got >= n {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no subscriber after 5s")
}

// ctx is a per-test context with a deadline, so a hung request fails the test instead of the run.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// uniq makes a key name unique to the test and the run.
var uniqN atomic.Int64

func uniq(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, time.Now().UnixNano()%1_000_000, uniqN.Add(1))
}

// mustCreate creates a key as admin.
func mustCreate(t *testing.T, name string) {
	t.Helper()
	if err := fx.admin.kes.CreateKey(ctx(t), name); err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
}

// wantErr checks that err is the kms-go sentinel want (errors.Is: status and message).
func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got %v (%T), want %v", what, err, err, want)
	}
}

func tlsNoCert() *tls.Config { return &tls.Config{} }

func b64(b []byte) string  { return base64.StdEncoding.EncodeToString(b) }
func hexs(b []byte) string { return hex.EncodeToString(b) }

// kesStatus is the HTTP status of a kms-go API error, 0 for other errors.
func kesStatus(err error) int {
	var e kesclient.Error
	if errors.As(err, &e) {
		return e.Status()
	}
	return 0
}
