package server

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"testing"

	"github.com/p11bridge/p11bridge/server/pki"
)

// fipsPair runs one handshake between a server in state st and client, and returns the
// client's view or the first error of either side.
func fipsPair(t *testing.T, st *tlsState, client *tls.Config) (tls.ConnectionState, error) {
	t.Helper()
	s := &Server{}
	s.tls.Store(st)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	srvErr := make(chan error, 1)
	go func() {
		a, err := l.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer a.Close()
		srv := tls.Server(a, s.tlsConfig("h2"))
		srvErr <- srv.Handshake()
	}()
	b, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(b, client)
	err = c.Handshake()
	// Closing ends the server's handshake if the client gave up first.
	b.Close()
	if serr := <-srvErr; serr != nil {
		return tls.ConnectionState{}, serr
	}
	if err != nil {
		return tls.ConnectionState{}, err
	}
	return c.ConnectionState(), nil
}

func TestFIPSHandshakes(t *testing.T) {
	ca, _ := pki.NewCA("ca")
	sc, sk, _ := ca.Issue("server", []string{"127.0.0.1"}, pki.Server)
	cc, ck, _ := ca.Issue("client", nil, pki.Client)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	serverCert := &tls.Certificate{Certificate: [][]byte{sc.Raw}, PrivateKey: sk, Leaf: sc}
	clientCert := tls.Certificate{Certificate: [][]byte{cc.Raw}, PrivateKey: ck}
	client := func(mod func(*tls.Config)) *tls.Config {
		c := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{clientCert}}
		if mod != nil {
			mod(c)
		}
		return c
	}
	fips := &tlsState{cert: serverCert, min: tls.VersionTLS12, fips: true}
	plain := &tlsState{cert: serverCert, min: tls.VersionTLS12}

	cs, err := fipsPair(t, fips, client(nil))
	if err != nil {
		t.Fatalf("a default Go client: %v", err)
	}
	if err := verifyFIPS(cs); err != nil {
		t.Errorf("negotiated %s / %s: %v", tls.CipherSuiteName(cs.CipherSuite), cs.CurveID, err)
	}
	cs, err = fipsPair(t, fips, client(func(c *tls.Config) { c.MaxVersion = tls.VersionTLS12 }))
	if err != nil || !strings.Contains(tls.CipherSuiteName(cs.CipherSuite), "AES") || !strings.Contains(tls.CipherSuiteName(cs.CipherSuite), "GCM") {
		t.Errorf("TLS 1.2: %s %v", tls.CipherSuiteName(cs.CipherSuite), err)
	}
	for _, c := range []struct {
		name string
		mod  func(*tls.Config)
	}{
		{"X25519 only", func(c *tls.Config) { c.CurvePreferences = []tls.CurveID{tls.X25519} }},
		{"TLS 1.2 ChaCha20 only", func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
			c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305}
		}},
	} {
		if _, err := fipsPair(t, fips, client(c.mod)); err == nil {
			t.Errorf("fips: %s was accepted", c.name)
		}
		if _, err := fipsPair(t, plain, client(c.mod)); err != nil {
			t.Errorf("without fips: %s refused: %v", c.name, err)
		}
	}

	// A client certificate with a key too weak for FIPS 140 fails the handshake.
	weak, _ := rsa.GenerateKey(rand.Reader, 1024)
	wc, err := ca.IssueFor("weak", nil, pki.Client, &weak.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fipsPair(t, fips, client(func(c *tls.Config) {
		c.Certificates = []tls.Certificate{{Certificate: [][]byte{wc.Raw}, PrivateKey: weak}}
	})); err == nil {
		t.Error("an RSA-1024 client certificate was accepted under fips")
	}
}

// TestFIPSKeepsChaChaClientsToTLS12: a client preferring ChaCha20-Poly1305 gets TLS 1.2 with an
// approved suite rather than Go's TLS 1.3 ChaCha20 choice; with min_version 1.3 nothing changes
// here and verifyFIPS has the last word.
func TestFIPSKeepsChaChaClientsToTLS12(t *testing.T) {
	s := &Server{}
	both := []uint16{tls.VersionTLS13, tls.VersionTLS12}
	chachaFirst := &tls.ClientHelloInfo{SupportedVersions: both, CipherSuites: []uint16{tls.TLS_CHACHA20_POLY1305_SHA256, tls.TLS_AES_128_GCM_SHA256}}
	aesFirst := &tls.ClientHelloInfo{SupportedVersions: both, CipherSuites: []uint16{tls.TLS_AES_256_GCM_SHA384, tls.TLS_CHACHA20_POLY1305_SHA256}}
	if c := s.handshakeConfig(&tlsState{min: tls.VersionTLS12, fips: true}, chachaFirst, nil); c.MaxVersion != tls.VersionTLS12 {
		t.Errorf("ChaCha-first client: MaxVersion %x", c.MaxVersion)
	}
	if c := s.handshakeConfig(&tlsState{min: tls.VersionTLS13, fips: true}, chachaFirst, nil); c.MaxVersion != 0 || c.MinVersion != tls.VersionTLS13 {
		t.Errorf("min_version 1.3: %x-%x", c.MinVersion, c.MaxVersion)
	}
	if c := s.handshakeConfig(&tlsState{min: tls.VersionTLS12}, chachaFirst, nil); c.MaxVersion != 0 || c.CipherSuites != nil || c.VerifyConnection != nil {
		t.Error("without fips nothing is restricted")
	}
	wantAES := hasAESGCMHardware
	if got := s.handshakeConfig(&tlsState{min: tls.VersionTLS12, fips: true}, aesFirst, nil).MaxVersion == 0; got != wantAES {
		t.Errorf("AES-first client kept at TLS 1.3: %v, AES hardware %v", got, wantAES)
	}
	for _, c := range []struct {
		offered []uint16
		want    bool
	}{
		{nil, false},
		{[]uint16{tls.TLS_CHACHA20_POLY1305_SHA256}, false},
		{[]uint16{tls.TLS_AES_256_GCM_SHA384}, true},
		{[]uint16{0x1305, tls.TLS_AES_128_GCM_SHA256}, true}, // unknown suites are skipped
		{[]uint16{tls.TLS_CHACHA20_POLY1305_SHA256, tls.TLS_AES_128_GCM_SHA256}, false},
		{[]uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_CHACHA20_POLY1305_SHA256}, hasAESGCMHardware},
		{[]uint16{tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305, tls.TLS_AES_128_GCM_SHA256, tls.TLS_CHACHA20_POLY1305_SHA256}, false},
	} {
		if got := goPicksAESGCM13(c.offered); got != c.want {
			t.Errorf("goPicksAESGCM13(%x) = %v", c.offered, got)
		}
	}
}
