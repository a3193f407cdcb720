package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/p11bridge/p11bridge/conf"
	"github.com/p11bridge/p11bridge/kes"
	"github.com/p11bridge/p11bridge/server/pki"
	"github.com/p11bridge/p11bridge/signer"
)

// auth holds identities and policies of one configuration; a reload builds a new one.
type auth struct {
	gen        uint64 // this configuration's number (signer.Caller.Generation)
	admin      string
	policies   []conf.Policy
	byIdentity map[string]*conf.Policy
	// revoked identities are refused everywhere, whatever their chain or configuration.
	revoked map[string]bool
	// proxies may forward a client certificate in proxyHeader (KES only). With plaintext
	// there is no TLS peer to check and the header is taken from anyone (dev mode only).
	proxies     map[string]bool
	proxyHeader string
	plaintext   bool
	loaded      time.Time
	// notAfter ends configured identities (identity blocks).
	notAfter  map[string]time.Time
	onExpired func(id string, notAfter time.Time) // logs the first sighting
	// expired records configured identities seen with an expired certificate (they are taken
	// anyway, as KES takes them), for /status; shared by every auth of the process.
	expired *expiredCerts
	// callers holds caller's answer for each configured identity, made with the configuration
	// (which a reload replaces whole): building it allocated on every request. Other identities
	// (any that chains to the client CA) get theirs made per request, so they cannot fill it.
	callers map[string]signer.Caller
}

// authGeneration numbers the configurations an auth is made from.
var authGeneration atomic.Uint64

// expiredCerts remembers, per identity, the expiry of the last expired certificate it presented.
type expiredCerts struct {
	mu sync.Mutex
	m  map[string]time.Time
}

func (e *expiredCerts) note(id string, notAfter time.Time) (first bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.m == nil {
		e.m = map[string]time.Time{}
	}
	_, seen := e.m[id]
	e.m[id] = notAfter
	return !seen
}

func (e *expiredCerts) snapshot() map[string]time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return maps.Clone(e.m)
}

func newAuth(cfg *conf.Config) *auth {
	a := &auth{gen: authGeneration.Add(1), admin: cfg.Admin, policies: cfg.Policies, byIdentity: map[string]*conf.Policy{}, revoked: map[string]bool{},
		proxies: map[string]bool{}, plaintext: cfg.KES.Plaintext, loaded: time.Now().UTC(), notAfter: cfg.NotAfter}
	for i := range a.policies {
		for _, id := range a.policies[i].Identities {
			a.byIdentity[id] = &a.policies[i]
		}
	}
	for _, id := range cfg.TLS.Revoked {
		a.revoked[id] = true
	}
	if p := cfg.KES.Proxy; p != nil {
		a.proxyHeader = p.Header
		for _, id := range p.Identities {
			a.proxies[id] = true
		}
	}
	a.callers = map[string]signer.Caller{}
	for id := range a.byIdentity {
		a.callers[id] = a.makeCaller(id)
	}
	if a.admin != "" {
		a.callers[a.admin] = a.makeCaller(a.admin)
	}
	return a
}

// known says whether identity is configured at all (admin or named by a policy).
func (a *auth) known(identity string) bool {
	return identity != "" && (identity == a.admin || a.byIdentity[identity] != nil)
}

func (a *auth) isAdmin(identity string) bool {
	return a.admin != "" && identity == a.admin && !a.revoked[identity] && !a.ended(identity)
}

// ended says whether an identity block's not_after has passed: like a revocation, it also ends
// the rights of connections opened before.
func (a *auth) ended(identity string) bool {
	t, ok := a.notAfter[identity]
	return ok && time.Now().After(t)
}

// match is KES's rule: an exact path, or a prefix when the pattern ends in '*' (the key model's
// rule for key names too).
func match(pattern, path string) bool { return signer.MatchKeyPattern(pattern, path) }

func (a *auth) allowPath(identity, path string) bool {
	if a.revoked[identity] || a.ended(identity) {
		return false
	}
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

// caller is identity as the registry's key model sees it. The policy's keys patterns are applied
// there, to KES and KMIP alike.
func (a *auth) caller(identity string) signer.Caller {
	if a.revoked[identity] || a.ended(identity) {
		// Not cached: an identity's end date passes while the cache lives.
		return signer.Caller{Identity: identity, Generation: a.gen}
	}
	if c, ok := a.callers[identity]; ok {
		return c
	}
	return a.makeCaller(identity)
}

// makeCaller builds caller's answer for an identity that is neither revoked nor ended.
func (a *auth) makeCaller(identity string) signer.Caller {
	if a.isAdmin(identity) {
		return signer.Caller{Identity: identity, Admin: true, SHA1: true, Shares: a.shares, Export: true, Generation: a.gen}
	}
	c := signer.Caller{Identity: identity, Shares: a.shares, Generation: a.gen}
	p := a.byIdentity[identity]
	own := ""
	if p != nil {
		own = p.Name
	}
	c.Reserved = func(name string) bool { return a.reserved(name, own) }
	if p != nil {
		c.Keys, c.SHA1, c.ClientIVShared, c.Export = p.Keys, p.SHA1, p.ClientIVSharedKeys, p.Export
		c.Quota = signer.Quota{Objects: p.MaxObjects, AttrBytes: p.MaxAttributeBytes}
		c.Team = func(owner string) bool { return owner == a.admin || slices.Contains(p.Identities, owner) }
	}
	return c
}

// patternsMatch says whether one of p's keys patterns names name.
func patternsMatch(p *conf.Policy, name string) bool {
	for _, k := range p.Keys {
		if match(k, name) {
			return true
		}
	}
	return false
}

// reserved says whether a policy other than the one named own names keys of that name: its name
// space.
func (a *auth) reserved(name, own string) bool {
	for i := range a.policies {
		if p := &a.policies[i]; p.Name != own && patternsMatch(p, name) {
			return true
		}
	}
	return false
}

// shares says whether a policy's keys patterns grant a key of that name and owner to an identity
// other than its owner: then the key has several users, and none of them may choose its IVs. A
// pattern grants the keys of its own policy's identities and of the admin.
func (a *auth) shares(name, owner string) bool {
	for i := range a.policies {
		p := &a.policies[i]
		if !patternsMatch(p, name) || !(owner == a.admin || slices.Contains(p.Identities, owner)) {
			continue
		}
		if slices.ContainsFunc(p.Identities, func(id string) bool { return id != owner }) {
			return true
		}
	}
	return false
}

// allowKMIP also ends the rights of a KMIP connection opened before its identity was revoked:
// the connection stays, every later operation is refused.
func (a *auth) allowKMIP(identity, op string) bool {
	if a.revoked[identity] || a.ended(identity) {
		return false
	}
	if a.isAdmin(identity) {
		return true
	}
	p := a.byIdentity[identity]
	return p != nil && (slices.Contains(p.KMIP, "*") || slices.Contains(p.KMIP, op))
}

// hasKMIP says whether identity may run any KMIP operation at all.
func (a *auth) hasKMIP(identity string) bool {
	if a.revoked[identity] || a.ended(identity) {
		return false
	}
	if a.isAdmin(identity) {
		return true
	}
	p := a.byIdentity[identity]
	return p != nil && len(p.KMIP) > 0
}

// identify turns a TLS peer into an identity.
func identify(cs *tls.ConnectionState, a *auth, pool *x509.CertPool) (string, error) {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return "", errors.New("no client certificate")
	}
	return a.identifyCert(cs.PeerCertificates[0], cs.PeerCertificates[1:], pool)
}

// identifyCert names the holder of a client certificate (from the handshake, or forwarded by the
// proxy). A revoked identity is nobody. An identity configured exactly (admin, a policy: this is
// how KES API keys, whose certificates are self-signed Ed25519, get in) is accepted as is; any
// other certificate must chain to the client CA, for client authentication. There is no third
// way: an unknown self-signed certificate is nobody.
func (a *auth) identifyCert(leaf *x509.Certificate, chain []*x509.Certificate, pool *x509.CertPool) (string, error) {
	id := pki.Identity(leaf)
	if a.revoked[id] {
		return "", errors.New("client certificate identity " + id + " is revoked")
	}
	if a.known(id) {
		now := time.Now()
		if a.ended(id) {
			return "", errors.New("identity " + id + " is past its not_after (" + a.notAfter[id].Format(time.RFC3339) + ")")
		}
		if now.After(leaf.NotAfter) && a.expired != nil && a.expired.note(id, leaf.NotAfter) && a.onExpired != nil {
			a.onExpired(id, leaf.NotAfter)
		}
		return id, nil
	}
	if pool == nil {
		return "", errors.New("client certificate identity " + id + " is not configured")
	}
	inter := x509.NewCertPool()
	for _, c := range chain {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return "", errors.New("client certificate " + id + " does not verify against the client CA: " + err.Error())
	}
	return id, nil
}

// forwarded identifies the client whose certificate a trusted proxy forwarded in the header:
// URL-encoded PEM, as nginx's $ssl_client_escaped_cert, optionally followed by intermediates.
// The certificate is held to the same rules as one presented in a handshake; the proxy has
// verified that its client holds the key.
func (a *auth) forwarded(r *http.Request, pool *x509.CertPool) (string, error) {
	vals := r.Header.Values(a.proxyHeader)
	switch len(vals) {
	case 0:
		return "", errors.New("a request through the proxy carries no " + a.proxyHeader + " header (is the client sending a certificate, and does the proxy forward it?)")
	case 1:
	default:
		return "", errors.New("a request through the proxy carries several " + a.proxyHeader + " headers")
	}
	certs, err := parseForwarded(vals[0])
	if err != nil {
		return "", errors.New(a.proxyHeader + " header: " + err.Error())
	}
	return a.identifyCert(certs[0], certs[1:], pool)
}

// maxForwarded bounds the header: a certificate chain is a few kilobytes.
const maxForwarded = 64 << 10

func parseForwarded(v string) ([]*x509.Certificate, error) {
	if len(v) > maxForwarded {
		return nil, errors.New("too long")
	}
	if v == "" || v == "(null)" { // nginx sends an empty value when the client sent no certificate
		return nil, errors.New("empty: the client presented no certificate to the proxy")
	}
	// PathUnescape keeps '+', which base64 uses; a proxy that wrote spaces as '+' is handled by
	// the second attempt.
	for _, unescape := range []func(string) (string, error){url.PathUnescape, url.QueryUnescape} {
		s, err := unescape(v)
		if err != nil {
			continue
		}
		certs, err := pki.ParseCerts([]byte(s))
		if err != nil {
			return nil, errors.New("not a certificate: " + err.Error())
		}
		if len(certs) > 0 {
			return certs, nil
		}
	}
	return nil, errors.New("no URL-encoded PEM certificate in it")
}

// peerIdentity is the identity of the TLS peer's certificate, "" when there is none.
func peerIdentity(cs *tls.ConnectionState) string {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return ""
	}
	return pki.Identity(cs.PeerCertificates[0])
}

// kmipAuth and kesAuth adapt auth to what each front end asks.
type kmipAuth struct{ s *Server }

func (k kmipAuth) Identify(cs *tls.ConnectionState) (string, error) {
	a := k.s.auth.Load()
	if peer := peerIdentity(cs); peer != "" && a.proxies[peer] {
		return "", errors.New("the KES proxy's identity " + peer + " has no business on the KMIP listener")
	}
	return identify(cs, a, k.s.clientCAs())
}
func (k kmipAuth) AllowKMIP(identity, op string) bool   { return k.s.auth.Load().allowKMIP(identity, op) }
func (k kmipAuth) Caller(identity string) signer.Caller { return k.s.auth.Load().caller(identity) }
func (k kmipAuth) HasKMIP(identity string) bool         { return k.s.auth.Load().hasKMIP(identity) }

type kesAuth struct{ s *Server }

// Identify names the client of a KES request: the TLS peer, or, when the peer is the configured
// proxy, the certificate the proxy forwards. The header is ignored from anyone else, so a client
// cannot claim another's certificate by sending it. A refusal is logged with its reason; the
// client only learns it is not authorized.
func (k kesAuth) Identify(r *http.Request) (string, error) {
	a := k.s.auth.Load()
	pool := k.s.clientCAs()
	var id string
	var err error
	peer := peerIdentity(r.TLS)
	switch {
	case r.TLS == nil && a.plaintext:
		// A plaintext listener (dev mode only) has no peer to check: the header is all there is.
		id, err = a.forwarded(r, pool)
	case peer != "" && a.proxies[peer]:
		if a.revoked[peer] {
			err = errors.New("the proxy's identity " + peer + " is revoked")
			break
		}
		id, err = a.forwarded(r, pool)
	default:
		id, err = identify(r.TLS, a, pool)
	}
	if err != nil {
		k.s.log.Info("kes: client refused", "remote", r.RemoteAddr, "path", r.URL.Path, "err", err)
	}
	return id, err
}
func (k kesAuth) AllowKES(identity, path string) bool {
	return k.s.auth.Load().allowPath(identity, path)
}
func (k kesAuth) IsAdmin(identity string) bool         { return k.s.auth.Load().isAdmin(identity) }
func (k kesAuth) Caller(identity string) signer.Caller { return k.s.auth.Load().caller(identity) }

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

// newAuth is the auth of cfg for this server: configured identities seen with expired
// certificates are remembered across reloads and logged once.
func (s *Server) newAuth(cfg *conf.Config) *auth {
	a := newAuth(cfg)
	a.expired = &s.expired
	a.onExpired = func(id string, notAfter time.Time) {
		s.log.Warn("a configured identity presented an expired certificate; it is accepted, as KES accepts it: renew it, or end it with identity { not_after }",
			"identity", id, "not_after", notAfter.UTC().Format(time.RFC3339))
	}
	return a
}
