package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/p11bridge/p11bridge/conf"
	"github.com/p11bridge/p11bridge/kes"
	"github.com/p11bridge/p11bridge/server/pki"
)

// auth holds identities and policies of one configuration; a reload builds a new one.
type auth struct {
	admin      string
	policies   []conf.Policy
	byIdentity map[string]*conf.Policy
	loaded     time.Time
}

func newAuth(cfg *conf.Config) *auth {
	a := &auth{admin: cfg.Admin, policies: cfg.Policies, byIdentity: map[string]*conf.Policy{}, loaded: time.Now().UTC()}
	for i := range a.policies {
		for _, id := range a.policies[i].Identities {
			a.byIdentity[id] = &a.policies[i]
		}
	}
	return a
}

// known says whether identity is configured at all (admin or named by a policy).
func (a *auth) known(identity string) bool {
	return identity != "" && (identity == a.admin || a.byIdentity[identity] != nil)
}

func (a *auth) isAdmin(identity string) bool { return a.admin != "" && identity == a.admin }

// match is KES's rule: an exact path, or a prefix when the pattern ends in '*'.
func match(pattern, path string) bool {
	if p, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(path, p)
	}
	return pattern == path
}

func (a *auth) allowPath(identity, path string) bool {
	if a.isAdmin(identity) {
		return true
	}
	p := a.byIdentity[identity]
	if p == nil {
		return false
	}
	for _, d := range p.Deny {
		if match(d, path) {
			return false
		}
	}
	for _, al := range p.Allow {
		if match(al, path) {
			return true
		}
	}
	return false
}

func (a *auth) allowKMIP(identity, op string) bool {
	if a.isAdmin(identity) {
		return true
	}
	p := a.byIdentity[identity]
	return p != nil && (slices.Contains(p.KMIP, "*") || slices.Contains(p.KMIP, op))
}

// identify turns a verified TLS peer into an identity. A chain that verified against the client CA
// is accepted; without one (or for KES API keys, whose certificates are self-signed Ed25519), the
// identity must be configured exactly: an unknown self-signed certificate is nobody.
func identify(cs *tls.ConnectionState, a *auth, pool *x509.CertPool) (string, error) {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return "", errors.New("no client certificate")
	}
	leaf := cs.PeerCertificates[0]
	id := pki.Identity(leaf)
	if a.known(id) {
		return id, nil
	}
	if pool == nil {
		return "", errors.New("client certificate identity " + id + " is not configured")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return "", errors.New("client certificate does not verify against the client CA: " + err.Error())
	}
	return id, nil
}

// kmipAuth and kesAuth adapt auth to what each front end asks.
type kmipAuth struct{ s *Server }

func (k kmipAuth) Identify(cs *tls.ConnectionState) (string, error) {
	return identify(cs, k.s.auth.Load(), k.s.clientCAs())
}
func (k kmipAuth) AllowKMIP(identity, op string) bool { return k.s.auth.Load().allowKMIP(identity, op) }
func (k kmipAuth) IsAdmin(identity string) bool       { return k.s.auth.Load().isAdmin(identity) }

type kesAuth struct{ s *Server }

func (k kesAuth) Identify(r *http.Request) (string, error) {
	return identify(r.TLS, k.s.auth.Load(), k.s.clientCAs())
}
func (k kesAuth) AllowKES(identity, path string) bool {
	return k.s.auth.Load().allowPath(identity, path)
}
func (k kesAuth) IsAdmin(identity string) bool { return k.s.auth.Load().isAdmin(identity) }

func (k kesAuth) Policies() []kes.Policy {
	a := k.s.auth.Load()
	out := make([]kes.Policy, 0, len(a.policies))
	for _, p := range a.policies {
		out = append(out, kes.Policy{Name: p.Name, Allow: p.Allow, Deny: p.Deny, CreatedAt: a.loaded, CreatedBy: a.admin})
	}
	return out
}

func (k kesAuth) PolicyOf(identity string) (string, bool) {
	if p := k.s.auth.Load().byIdentity[identity]; p != nil {
		return p.Name, true
	}
	return "", false
}

func (k kesAuth) Identities() []string {
	a := k.s.auth.Load()
	out := make([]string, 0, len(a.byIdentity)+1)
	if a.admin != "" {
		out = append(out, a.admin)
	}
	for id := range a.byIdentity {
		if id != a.admin {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}
