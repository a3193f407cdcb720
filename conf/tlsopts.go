package conf

import (
	"fmt"
	"net/textproto"
	"regexp"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2/hclsyntax"
	pkcs11uri "github.com/stefanberger/go-pkcs11uri"
)

// keyURIAttrs are the RFC 7512 path attributes a TLS key URI may carry: those that select the
// token (as for signers) and those that select the object in it.
var keyURIAttrs = []string{"token", "serial", "slot-id", "manufacturer", "model", "object", "id", "type"}

const keyURISample = `"pkcs11:token=bridge-a;object=p11bridge-tls"`

// checkKeyURI validates tls.key when it is a pkcs11: URI. Which signer serves its token is
// checked once the signers are known (checkKeySigner).
func (d *decoder) checkKeyURI(a *attr, v string) bool {
	at := a.at()
	lv := strings.ToLower(v)
	// Checked before parsing so that no parser message can quote the PIN.
	if strings.Contains(lv, "pin-value") || strings.Contains(lv, "pin-source") {
		d.add(at, "the TLS key URI carries a PIN",
			"the signer whose token holds the key logs in with its own pin or pin_file; remove it from the URI")
		return false
	}
	if !strings.HasPrefix(v, "pkcs11:") {
		d.add(at, "the TLS key URI must start with pkcs11: in lowercase", "write e.g. "+keyURISample)
		return false
	}
	u := pkcs11uri.New()
	if err := u.Parse(v); err != nil {
		d.add(at, "invalid pkcs11 URI for the TLS key", err.Error()+"; see RFC 7512, e.g. "+keyURISample)
		return false
	}
	pathPart, query, _ := strings.Cut(strings.TrimPrefix(v, "pkcs11:"), "?")
	ok := true
	for _, kv := range strings.Split(pathPart, ";") {
		n, _, _ := strings.Cut(kv, "=")
		switch {
		case n == "":
		case n == "type":
			if t, _ := u.GetPathAttribute("type", false); t != "private" {
				d.add(at, fmt.Sprintf("the TLS key URI names type=%s", t), "the server's key is a private key: write type=private, or leave type out")
				ok = false
			}
		case contains(keyURIAttrs, n):
		case contains(uriIgnored, n) || strings.HasPrefix(n, "x-"):
			d.add(at, fmt.Sprintf("p11bridge cannot select the TLS key by %s", n),
				"remove it; the token is matched on token, serial, slot-id, manufacturer and model, the key on object and id")
			ok = false
		default:
			d.add(at, fmt.Sprintf("unknown attribute %q in the TLS key URI", n), didYouMean(n, keyURIAttrs, "URI attributes"))
			ok = false
		}
	}
	for _, kv := range strings.Split(query, "&") {
		n, _, _ := strings.Cut(kv, "=")
		switch {
		case n == "":
		case n == "module-name" || n == "module-path":
			d.add(at, fmt.Sprintf("the TLS key URI names a module (%s)", n),
				"remove it; the key is used through the signer configured for its token, with that signer's module")
			ok = false
		default:
			d.add(at, fmt.Sprintf("unknown query attribute %q in the TLS key URI", n), "remove it")
			ok = false
		}
	}
	if !ok {
		return false
	}
	_, hasObject := u.GetPathAttribute("object", false)
	_, hasID := u.GetPathAttribute("id", false)
	if !hasObject && !hasID {
		d.add(at, "the TLS key URI names no key",
			"add object=<its CKA_LABEL> or id=<its CKA_ID, as %xx bytes>, e.g. "+keyURISample)
		return false
	}
	_, t := u.GetPathAttribute("token", false)
	_, s := u.GetPathAttribute("serial", false)
	_, id := u.GetPathAttribute("slot-id", false)
	if !t && !s && !id {
		d.add(at, "the TLS key URI names no token", "add token=, serial= or slot-id=, as for the signer of that token")
		return false
	}
	d.keyURIAttr = a
	return true
}

// checkKeySigner checks that some configured signer may serve the token the TLS key URI names:
// the key is used through that signer's session pool and login. A signer chosen by a field the
// URI does not name cannot be ruled out here; at start the registry matches the real tokens.
func (d *decoder) checkKeySigner(cfg *Config) {
	if d.keyURIAttr == nil || cfg.TLS.KeyURI == "" {
		return
	}
	key := Signer{URI: cfg.TLS.KeyURI}
	kSlot, kLabel, kSerial := key.tokenSelector()
	var seen []string
	for _, s := range cfg.Signers {
		slot, label, serial := s.tokenSelector()
		if kLabel != "" && label != "" && kLabel != label || kSerial != "" && serial != "" && kSerial != serial ||
			kSlot != nil && slot != nil && *kSlot != *slot {
			seen = append(seen, describeSelector(s.Name, slot, label, serial))
			continue
		}
		return
	}
	detail := "the key is used through the signer of its token: add a signer block for that token"
	if len(seen) > 0 {
		detail += "; configured: " + strings.Join(seen, ", ")
	}
	d.add(d.keyURIAttr.at(), "the TLS key URI names a token that no signer selects", detail)
}

func describeSelector(name string, slot *uint, label, serial string) string {
	var parts []string
	if label != "" {
		parts = append(parts, "token "+strconv.Quote(label))
	}
	if serial != "" {
		parts = append(parts, "serial "+strconv.Quote(serial))
	}
	if slot != nil {
		parts = append(parts, fmt.Sprintf("slot %d", *slot))
	}
	return fmt.Sprintf("signer %q (%s)", name, strings.Join(parts, ", "))
}

// maxRevokedFile bounds revoked_file: a million revoked identities would be 65 MB.
const (
	maxRevokedFile  = 1 << 20
	maxRevokedDiags = 10
)

// revoked reads tls.revoked and tls.revoked_file into cfg.TLS.Revoked.
func (d *decoder) revoked(c content, cfg *Config) {
	seen := map[string]bool{}
	add := func(id string) {
		if !seen[id] {
			seen[id] = true
			cfg.TLS.Revoked = append(cfg.TLS.Revoked, id)
		}
	}
	if a := c.attrs["revoked"]; a != nil {
		items, _ := d.list(a)
		for _, it := range items {
			if d.identity(it.s, it.at, "revoked identity", " in the tls block") {
				add(it.s)
			}
		}
	}
	a := c.attrs["revoked_file"]
	if a == nil {
		return
	}
	p, ok := d.str(a)
	if !ok {
		return
	}
	if p == "" {
		d.add(a.at(), a.what()+" is empty", "give the path of a file with one identity per line, or remove it")
		return
	}
	path := d.path(p)
	b, err := readLimited(path, maxRevokedFile, true)
	if err != nil {
		d.add(a.at(), "cannot read the revoked_file", err.Error())
		return
	}
	cfg.TLS.RevokedFile = path
	bad := 0
	for i, line := range strings.Split(string(b), "\n") {
		text, _, _ := strings.Cut(line, "#")
		id := strings.TrimSpace(text)
		if id == "" {
			continue
		}
		if isIdentity(id) {
			add(id)
			continue
		}
		bad++
		if bad > maxRevokedDiags {
			continue
		}
		col := len(text) - len(strings.TrimLeft(text, " \t")) + 1
		// The position is in the revoked file; sorting uses the attribute's, so these stay
		// together, in line order, after what the config file itself says there.
		d.diags = append(d.diags, diag{at: a.at(), report: Diagnostic{
			Pos:     fmt.Sprintf("%s:%d:%d", path, i+1, col),
			Summary: fmt.Sprintf("bad identity %q in the revoked_file", id),
			Detail:  identityDetail(id) + "; lines are identities, blank, or # comments",
		}})
	}
	if bad > maxRevokedDiags {
		d.add(a.at(), fmt.Sprintf("the revoked_file has %d more bad lines", bad-maxRevokedDiags), "is it the right file?")
	}
}

// headerRE is an HTTP field name (RFC 9110 token).
var headerRE = regexp.MustCompile("^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")

// proxyHeaderTaken are headers a proxy or HTTP itself sets; a certificate cannot travel in them.
var proxyHeaderTaken = []string{"Host", "Connection", "Content-Length", "Content-Type", "Transfer-Encoding", "Upgrade", "Te", "Trailer"}

// proxy reads kes.proxy: the identity of a TLS-terminating proxy and the header in which it
// forwards client certificates.
func (d *decoder) proxy(b *hclsyntax.Block, cfg *Config) {
	if b == nil {
		return
	}
	c := d.content(b.Body, " in the proxy block", proxyAttrs, nil, "")
	p := &Proxy{Header: "X-Tls-Client-Cert"}
	if a := c.attrs["header"]; a != nil {
		if v, ok := d.str(a); ok {
			canon := textproto.CanonicalMIMEHeaderKey(v)
			switch {
			case !headerRE.MatchString(v):
				d.add(a.at(), fmt.Sprintf("bad header name %q in the proxy block", v),
					`a header name is letters, digits and '-', e.g. "X-Tls-Client-Cert"`)
			case contains(proxyHeaderTaken, canon):
				d.add(a.at(), fmt.Sprintf("header %s in the proxy block is HTTP's own", canon),
					`choose a header of your own, e.g. "X-Tls-Client-Cert", and set it in the proxy`)
			default:
				p.Header = canon
			}
		}
	}
	if a := c.attrs["identities"]; a != nil {
		d.proxyIdentities = a
		items, _ := d.list(a)
		for _, it := range items {
			if d.identity(it.s, it.at, "proxy identity", " in the proxy block") {
				p.Identities = append(p.Identities, it.s)
				d.proxyItems = append(d.proxyItems, it)
			}
		}
	}
	cfg.KES.Proxy = p
	d.proxyBlock = b
}

// checkProxyIdentities runs once policies are known. A request from the proxy acts for the
// certificate it forwards, so rights given to the proxy's own identity would never apply: a
// proxy identity that is also the admin or in a policy is a mistake worth stopping on.
func (d *decoder) checkProxyIdentities(cfg *Config) {
	p := cfg.KES.Proxy
	if p == nil {
		return
	}
	if !cfg.KES.Plaintext && len(p.Identities) == 0 && d.proxyBlock != nil {
		at := d.proxyBlock.TypeRange.Start
		if d.proxyIdentities != nil {
			at = d.proxyIdentities.at()
		}
		if d.proxyIdentities == nil || emptyList(d.proxyIdentities) {
			d.add(at, "the proxy block has no identities",
				`add identities = ["…"]: the identity of the proxy's client certificate (p11bridge identity proxy.pem); only it may forward certificates`)
		}
	}
	for _, it := range d.proxyItems {
		why := "requests from the proxy act for the certificate it forwards, so its own rights would never apply; give the proxy a certificate of its own"
		if it.s == cfg.Admin {
			d.add(it.at, fmt.Sprintf("proxy identity %q is also the admin", it.s), why)
			continue
		}
		for _, pol := range cfg.Policies {
			if contains(pol.Identities, it.s) {
				d.add(it.at, fmt.Sprintf("proxy identity %q is also in policy %q", it.s, pol.Name), why)
				break
			}
		}
	}
}

// emptyList says whether a is a list with no elements (other mistakes are reported by list).
func emptyList(a *attr) bool {
	if !a.ok {
		return false
	}
	t := a.val.Type()
	return (t.IsTupleType() || t.IsListType() || t.IsSetType()) && a.val.LengthInt() == 0
}
