package server

import (
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"

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
