package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/p11bridge/p11bridge/conf"
	"github.com/p11bridge/p11bridge/server/pki"
)

func TestPolicies(t *testing.T) {
	a := newAuth(&conf.Config{
		Admin: "admin",
		Policies: []conf.Policy{
			{Name: "minio", Allow: []string{"/v1/key/generate/*", "/v1/key/decrypt/*", "/v1/status"}, Deny: []string{"/v1/key/decrypt/secret-*"}, Identities: []string{"minio"}},
			{Name: "ca", KMIP: []string{"CreateKeyPair", "Sign"}, Identities: []string{"ca"}},
			{Name: "ops", KMIP: []string{"*"}, Identities: []string{"ops"}},
		},
	})
	for _, c := range []struct {
		id, path string
		want     bool
	}{
		{"admin", "/v1/key/delete/x", true},
		{"minio", "/v1/key/generate/a", true},
		{"minio", "/v1/key/decrypt/a", true},
		{"minio", "/v1/key/decrypt/secret-1", false},
		{"minio", "/v1/status", true},
		{"minio", "/v1/status/x", false},
		{"minio", "/v1/key/delete/a", false},
		{"ca", "/v1/status", false},
		{"nobody", "/v1/status", false},
		{"", "/v1/status", false},
	} {
		if got := a.allowPath(c.id, c.path); got != c.want {
			t.Errorf("allowPath(%s, %s) = %v", c.id, c.path, got)
		}
	}
	for _, c := range []struct {
		id, op string
		want   bool
	}{
		{"admin", "Destroy", true}, {"ca", "Sign", true}, {"ca", "Destroy", false}, {"ops", "Destroy", true},
		{"minio", "Get", false}, {"nobody", "Query", false},
	} {
		if got := a.allowKMIP(c.id, c.op); got != c.want {
			t.Errorf("allowKMIP(%s, %s) = %v", c.id, c.op, got)
		}
	}
}

func TestIdentify(t *testing.T) {
	ca, _ := pki.NewCA("ca")
	other, _ := pki.NewCA("other")
	byCA, _, _ := ca.Issue("client", nil, pki.Client)
	byOther, _, _ := other.Issue("stranger", nil, pki.Client)
	known, _, _ := other.Issue("configured", nil, pki.Client)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	a := newAuth(&conf.Config{Policies: []conf.Policy{{Name: "p", Identities: []string{pki.Identity(known)}}}})
	state := func(c *x509.Certificate) *tls.ConnectionState {
		return &tls.ConnectionState{PeerCertificates: []*x509.Certificate{c}}
	}
	if id, err := identify(state(byCA), a, pool); err != nil || id != pki.Identity(byCA) {
		t.Errorf("chain to the client CA: %q %v", id, err)
	}
	if _, err := identify(state(byOther), a, pool); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Errorf("unknown CA: %v", err)
	}
	if _, err := identify(state(byCA), a, nil); err == nil || !strings.Contains(err.Error(), "not configured") {
		t.Errorf("no client CA and an unconfigured identity: %v", err)
	}
	if id, err := identify(state(known), a, nil); err != nil || id != pki.Identity(known) {
		t.Errorf("configured identity: %q %v", id, err)
	}
	if _, err := identify(&tls.ConnectionState{}, a, pool); err == nil {
		t.Error("no certificate accepted")
	}
}

// TestRevoked: a revoked identity is nobody, whether configured exactly (even as admin) or
// vouched for by the client CA, and loses the rights of connections it already holds.
func TestRevoked(t *testing.T) {
	ca, _ := pki.NewCA("ca")
	byCA, _, _ := ca.Issue("client", nil, pki.Client)
	admin, _, _ := ca.Issue("admin", nil, pki.Client)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	a := newAuth(&conf.Config{Admin: pki.Identity(admin), TLS: conf.TLS{Revoked: []string{pki.Identity(byCA), pki.Identity(admin)}},
		Policies: []conf.Policy{{Name: "p", KMIP: []string{"*"}, Allow: []string{"/v1/*"}, Identities: []string{pki.Identity(byCA)}}}})
	for _, c := range []*x509.Certificate{byCA, admin} {
		if _, err := identify(&tls.ConnectionState{PeerCertificates: []*x509.Certificate{c}}, a, pool); err == nil || !strings.Contains(err.Error(), "is revoked") {
			t.Errorf("%s: %v", c.Subject.CommonName, err)
		}
		id := pki.Identity(c)
		if a.allowKMIP(id, "Get") || a.allowPath(id, "/v1/status") || a.isAdmin(id) {
			t.Errorf("%s: a revoked identity keeps rights", c.Subject.CommonName)
		}
	}
}

func escapedPEM(c *x509.Certificate) string {
	// As nginx's $ssl_client_escaped_cert: the PEM, URL-encoded.
	return url.QueryEscape(string(pki.CertPEM(c)))
}

// TestForwardedCertificate: only the proxy's identity may forward a certificate; the forwarded
// certificate is judged as if presented directly.
func TestForwardedCertificate(t *testing.T) {
	ca, _ := pki.NewCA("ca")
	other, _ := pki.NewCA("other")
	proxy, _, _ := ca.Issue("proxy", nil, pki.Client)
	client, _, _ := ca.Issue("client", nil, pki.Client)
	stranger, _, _ := other.Issue("stranger", nil, pki.Client)
	_, apiID, _ := pki.APIKey()
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	cfg := &conf.Config{KES: conf.KES{Proxy: &conf.Proxy{Identities: []string{pki.Identity(proxy)}, Header: "X-Tls-Client-Cert"}},
		Policies: []conf.Policy{{Name: "api", Allow: []string{"/v1/status"}, Identities: []string{apiID}}}}
	s := &Server{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	s.tls.Store(&tlsState{cas: pool})
	s.auth.Store(newAuth(cfg))
	k := kesAuth{s}
	req := func(peer *x509.Certificate, headers ...string) *http.Request {
		r := httptest.NewRequest("GET", "/v1/status", nil)
		r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{peer}}
		for _, h := range headers {
			r.Header.Add("X-Tls-Client-Cert", h)
		}
		return r
	}
	if id, err := k.Identify(req(proxy, escapedPEM(client))); err != nil || id != pki.Identity(client) {
		t.Errorf("forwarded by the proxy: %q %v", id, err)
	}
	// '+' left unescaped by a proxy stays '+' (base64 uses it).
	raw := strings.ReplaceAll(url.PathEscape(string(pki.CertPEM(client))), "%2B", "+")
	if id, err := k.Identify(req(proxy, raw)); err != nil || id != pki.Identity(client) {
		t.Errorf("forwarded with raw '+': %q %v", id, err)
	}
	if id, err := k.Identify(req(client, escapedPEM(stranger))); err != nil || id != pki.Identity(client) {
		t.Errorf("a header from a non-proxy must be ignored: %q %v", id, err)
	}
	for _, c := range []struct {
		name    string
		r       *http.Request
		wantErr string
	}{
		{"proxy without header", req(proxy), "carries no X-Tls-Client-Cert header"},
		{"proxy with an empty header", req(proxy, ""), "presented no certificate"},
		{"two headers", req(proxy, escapedPEM(client), escapedPEM(client)), "several"},
		{"garbage", req(proxy, "%%%not pem"), "no URL-encoded PEM certificate"},
		{"forwarded stranger", req(proxy, escapedPEM(stranger)), "does not verify against the client CA"},
	} {
		if _, err := k.Identify(c.r); err == nil || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	// The proxy is no client of the KMIP listener.
	if _, err := (kmipAuth{s}).Identify(&tls.ConnectionState{PeerCertificates: []*x509.Certificate{proxy}}); err == nil {
		t.Error("the proxy identity was accepted on KMIP")
	}
	// A revoked proxy forwards nothing.
	cfg.TLS.Revoked = []string{pki.Identity(proxy)}
	s.auth.Store(newAuth(cfg))
	if _, err := k.Identify(req(proxy, escapedPEM(client))); err == nil || !strings.Contains(err.Error(), "proxy's identity") {
		t.Errorf("revoked proxy: %v", err)
	}
	// Plaintext (dev mode): the header is all there is.
	cfg.TLS.Revoked = nil
	cfg.KES.Plaintext = true
	s.auth.Store(newAuth(cfg))
	r := httptest.NewRequest("GET", "/v1/status", nil)
	r.Header.Set("X-Tls-Client-Cert", escapedPEM(client))
	if id, err := k.Identify(r); err != nil || id != pki.Identity(client) {
		t.Errorf("plaintext: %q %v", id, err)
	}
}

// A policy's keys patterns and sha1 reach the registry's key model (signer/access.go decides with
// them, on both protocols); the KES path patterns do not look at key names.
func TestPolicyKeys(t *testing.T) {
	a := newAuth(&conf.Config{Admin: "root", TLS: conf.TLS{Revoked: []string{"gone"}}, Policies: []conf.Policy{
		{Name: "m", Allow: []string{"/v1/key/*"}, Keys: []string{"minio-*"}, SHA1: true, Identities: []string{"m", "gone"}}}})
	if c := a.caller("m"); c.Admin || !slices.Equal(c.Keys, []string{"minio-*"}) || !c.SHA1 || c.Identity != "m" {
		t.Errorf("caller of a policy identity: %+v", c)
	}
	if c := a.caller("root"); !c.Admin || !c.SHA1 {
		t.Errorf("caller of the admin: %+v", c)
	}
	if c := a.caller("gone"); c.Admin || c.Keys != nil || c.SHA1 {
		t.Errorf("caller of a revoked identity: %+v", c)
	}
	if !a.allowPath("m", "/v1/key/generate/other") {
		t.Error("the path policy looks at key names; the key model does")
	}
}

// Configured identities are taken without a chain or expiry check (as KES takes API keys); an
// identity block's not_after ends one, and an expired certificate of one is remembered for /status.
func TestConfiguredIdentityExpiry(t *testing.T) {
	mk := func(notAfter time.Time) *x509.Certificate {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: notAfter.Add(-48 * time.Hour), NotAfter: notAfter}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c
	}
	expired, ended := mk(time.Now().Add(-time.Hour)), mk(time.Now().Add(time.Hour))
	idExpired, idEnded := pki.Identity(expired), pki.Identity(ended)
	s := &Server{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	a := s.newAuth(&conf.Config{
		Policies: []conf.Policy{{Name: "p", Identities: []string{idExpired, idEnded}}},
		NotAfter: map[string]time.Time{idEnded: time.Now().Add(-time.Minute)},
	})
	if id, err := a.identifyCert(expired, nil, nil); err != nil || id != idExpired {
		t.Fatalf("a configured identity with an expired certificate: %q %v", id, err)
	}
	if got := s.expired.snapshot(); !got[idExpired].Equal(expired.NotAfter) {
		t.Fatalf("expired certificates remembered: %v", got)
	}
	if _, err := a.identifyCert(ended, nil, nil); err == nil || !strings.Contains(err.Error(), "past its not_after") {
		t.Fatalf("an identity past its not_after: %v", err)
	}
	// A KMIP connection opened before its not_after keeps no rights after it.
	a.policies[0].KMIP = []string{"*"}
	if a.allowKMIP(idEnded, "Get") || a.allowPath(idEnded, "/v1/key/generate/x") || a.caller(idEnded).Keys != nil {
		t.Fatal("an identity past its not_after keeps rights on an open connection")
	}
}
