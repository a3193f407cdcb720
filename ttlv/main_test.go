package ttlv

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gemalto/kmip-go/kmip14"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/server/pki"
	"github.com/p11bridge/p11bridge/signer"
	"github.com/p11bridge/p11bridge/signer/softhsm"
)

// The tests share one SoftHSM2 token, keymap, registry and KMIP server on 127.0.0.1 with real
// mutual TLS. Test identities are client certificates issued by a test CA.

type clientCert struct {
	name     string
	certFile string
	keyFile  string
	identity string
	tls      tls.Certificate
}

type testEnv struct {
	dir     string
	tok     *softhsm.Token
	km      *keymap.Map
	reg     *signer.Registry
	ca      *pki.CA
	caFile  string
	srv     *Server
	addr    string
	auth    *testAuth
	audit   *syncBuffer
	clients map[string]*clientCert
}

var env testEnv

// testAuth: identities are certificate key hashes; "admin" sees everything; "limited" may only
// run Query, DiscoverVersions, Locate and Get.
type testAuth struct {
	mu      sync.Mutex
	admins  map[string]bool
	limited map[string]bool
	sha1    map[string]bool // identities whose policy allows SHA-1 signatures
	export  map[string]bool // identities whose policy has the export right
}

func (a *testAuth) Identify(cs *tls.ConnectionState) (string, error) {
	if len(cs.PeerCertificates) == 0 {
		return "", errors.New("no client certificate")
	}
	return pki.Identity(cs.PeerCertificates[0]), nil
}

func (a *testAuth) AllowKMIP(identity, operation string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.limited[identity] {
		switch operation {
		case "Query", "DiscoverVersions", "Locate", "Get":
			return true
		}
		return false
	}
	return true
}

func (a *testAuth) HasKMIP(string) bool { return true }

func (a *testAuth) Caller(identity string) signer.Caller {
	a.mu.Lock()
	defer a.mu.Unlock()
	return signer.Caller{Identity: identity, Admin: a.admins[identity], SHA1: a.admins[identity] || a.sha1[identity],
		Export: a.admins[identity] || a.export[identity]}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestMain(m *testing.M) {
	code, err := runTests(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ttlv tests:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

// encodeMismatch keeps the first response that appendStruct encoded differently from the tree
// encoder (encodeStruct then bytes); runTests fails the run when there is one.
var encodeMismatch atomic.Pointer[string]

func checkEncoding(m *ResponseMessage, out []byte) {
	if want := encodeStruct(kmip14.TagResponseMessage, m).bytes(); !bytes.Equal(out, want) {
		msg := fmt.Sprintf("response encodings differ:\nappendStruct %x\nencodeStruct %x", out, want)
		encodeMismatch.CompareAndSwap(nil, &msg)
	}
}

func runTests(m *testing.M) (int, error) {
	flag.Parse()
	if f := flag.Lookup("test.bench"); f == nil || f.Value.String() == "" {
		// Not when benchmarking: the check encodes every response a second time.
		encodeCheck = checkEncoding
	}
	dir, err := os.MkdirTemp("", "ttlv-test-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	env.dir = dir
	tok, err := softhsm.Ensure(filepath.Join(dir, "hsm"), "ttlv-test")
	if err != nil {
		return 0, err
	}
	env.tok = tok
	// SoftHSM reads its configuration once per process: set it before the module is loaded.
	os.Setenv("SOFTHSM2_CONF", tok.Conf)
	var logOut io.Writer = io.Discard
	if os.Getenv("TTLV_TEST_LOG") != "" {
		logOut = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: slog.LevelDebug}))
	env.km, err = keymap.Open(filepath.Join(dir, "keymap.csv"), log)
	if err != nil {
		return 0, err
	}
	defer env.km.Close()
	env.reg, err = signer.Open(signer.Options{Signers: []signer.Config{{Name: "a", Module: tok.Module, TokenLabel: tok.Label, PIN: tok.PIN, MaxSessions: 8, KeyCopies: 1024}},
		Default: "a", Logger: log}, env.km)
	if err != nil {
		return 0, err
	}
	defer env.reg.Close()
	if err := setupPKI(dir); err != nil {
		return 0, err
	}
	env.audit = &syncBuffer{}
	env.srv = New(Options{
		Registry: env.reg, Auth: env.auth, Log: log, Audit: slog.New(slog.NewJSONHandler(env.audit, nil)),
		MaxMessageSize: 1 << 20, MaxConnections: 64, IdleTimeout: 20 * time.Second, ServerName: "p11bridge-test",
	})
	l, err := tls.Listen("tcp", "127.0.0.1:0", serverTLS())
	if err != nil {
		return 0, err
	}
	env.addr = l.Addr().String()
	served := make(chan error, 1)
	go func() { served <- env.srv.Serve(l) }()
	code := m.Run()
	stopPyKMIP()
	if msg := encodeMismatch.Load(); msg != nil {
		fmt.Fprintln(os.Stderr, *msg)
		code = 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := env.srv.Shutdown(ctx); err != nil {
		return code, fmt.Errorf("shutdown: %w", err)
	}
	if err := <-served; err != nil {
		return code, fmt.Errorf("Serve returned %w after Shutdown", err)
	}
	return code, nil
}

var serverCert tls.Certificate

func setupPKI(dir string) error {
	ca, err := pki.NewCA("ttlv test CA")
	if err != nil {
		return err
	}
	env.ca = ca
	certs := filepath.Join(dir, "certs")
	if err := os.MkdirAll(certs, 0o700); err != nil {
		return err
	}
	env.caFile = filepath.Join(certs, "ca.pem")
	if err := os.WriteFile(env.caFile, pki.CertPEM(ca.Cert), 0o644); err != nil {
		return err
	}
	sc, sk, err := ca.Issue("localhost", []string{"127.0.0.1", "localhost"}, pki.Server)
	if err != nil {
		return err
	}
	if serverCert, err = tlsPair(sc, sk, filepath.Join(certs, "server")); err != nil {
		return err
	}
	env.auth = &testAuth{admins: map[string]bool{}, limited: map[string]bool{}, sha1: map[string]bool{}, export: map[string]bool{}}
	env.clients = map[string]*clientCert{}
	for _, name := range []string{"alice", "bob", "admin", "limited", "krill", "pykmip", "ovh", "raw", "bench", "storage"} {
		c, k, err := ca.Issue(name, nil, pki.Client)
		if err != nil {
			return err
		}
		base := filepath.Join(certs, name)
		pair, err := tlsPair(c, k, base)
		if err != nil {
			return err
		}
		cc := &clientCert{name: name, certFile: base + ".crt", keyFile: base + ".key", identity: pki.Identity(c), tls: pair}
		env.clients[name] = cc
	}
	env.auth.admins[env.clients["admin"].identity] = true
	env.auth.limited[env.clients["limited"].identity] = true
	// PyKMIP and the storage-array identity fetch their keys, as a policy with export = true lets
	// them; alice and the others have no export right.
	env.auth.export[env.clients["pykmip"].identity] = true
	env.auth.export[env.clients["storage"].identity] = true
	return nil
}

func tlsPair(c *x509.Certificate, k crypto.Signer, base string) (tls.Certificate, error) {
	if err := pki.WriteFiles(c, k, base+".crt", base+".key"); err != nil {
		return tls.Certificate{}, err
	}
	return tls.LoadX509KeyPair(base+".crt", base+".key")
}

func serverTLS() *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(env.ca.Cert)
	return &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool, MinVersion: tls.VersionTLS12}
}

// dialTLS opens a raw TLS connection as a test identity.
func dialTLS(t testing.TB, who string) *tls.Conn {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", env.addr, clientTLS(who))
	if err != nil {
		t.Fatalf("dial as %s: %v", who, err)
	}
	return c
}

// clientTLS is the TLS configuration of a test identity.
func clientTLS(who string) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(env.ca.Cert)
	return &tls.Config{Certificates: []tls.Certificate{env.clients[who].tls}, RootCAs: pool, ServerName: "127.0.0.1"}
}
