package conf

import (
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"os"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	pkcs11uri "github.com/stefanberger/go-pkcs11uri"
	"github.com/zclconf/go-cty/cty"
)

var (
	topAttrs     = []string{"log_level", "default_signer", "rollover_signer", "retired_signers", "admin"}
	topBlocks    = []string{"listen", "tls", "signer", "keymap", "audit", "policy", "identity", "kmip", "kes", "ops"}
	listenAttrs  = []string{"kmip", "kes", "ops"}
	tlsAttrs     = []string{"cert", "key", "client_ca", "min_version", "fips", "revoked", "revoked_file"}
	kesAttrs     = []string{"max_body", "plaintext"}
	proxyAttrs   = []string{"identities", "header"}
	signerAttrs  = []string{"module", "slot_id", "token_label", "token_serial", "uri", "pin", "pin_file", "max_sessions", "session_timeout", "key_copies"}
	selectors    = []string{"slot_id", "token_label", "token_serial", "uri"}
	policyAttrs  = []string{"allow", "deny", "kmip", "keys", "sha1", "client_iv_shared_keys", "export", "max_objects", "max_attribute_bytes", "identities"}
	logLevels    = []string{"debug", "info", "warn", "error"}
	listenSample = map[string]string{"kmip": "127.0.0.1:5696", "kes": "127.0.0.1:7373", "ops": "127.0.0.1:9464"}
)

// Defaults and limits. The limits are generous; they exist to catch typos
// (a missing unit, an extra zero) before they become an outage.
const (
	defaultSessionTimeout = 5 * time.Second
	maxSessionsLimit      = 1024
	defaultKeyCopies      = 1024
	maxKeyCopies          = 1 << 20
	defaultMessageSize    = 1 << 20
	defaultMaxConnections = 1024
	defaultIdleTimeout    = 2 * time.Minute
	// The KMIP listener's handshake and Locate limits (the ttlv package's defaults).
	defaultHandshakeTimeout = 10 * time.Second
	defaultMaxHandshakes    = 256
	defaultHandshakesPerIP  = 64
	defaultMaxLocateItems   = 1000
	defaultMaxBody          = 1 << 20
	minBody, maxBody        = 1 << 10, 64 << 20
	maxPINFile              = 4096
)

func defaultMaxSessions() int {
	return min(maxSessionsLimit, max(2, 2*runtime.NumCPU()))
}

// names are used in the keymap CSV and on the command line, so keep them to
// characters that need no quoting anywhere.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

func (d *decoder) decode(body *hclsyntax.Body) *Config {
	top := d.content(body, "", topAttrs, topBlocks, "")
	cfg := &Config{
		File:     d.file,
		LogLevel: "info",
		TLS:      TLS{MinVersion: tls.VersionTLS12},
		KMIP: KMIP{MaxMessageSize: defaultMessageSize, MaxConnections: defaultMaxConnections, IdleTimeout: defaultIdleTimeout,
			HandshakeTimeout: defaultHandshakeTimeout, MaxHandshakes: defaultMaxHandshakes, MaxHandshakesPerAddress: defaultHandshakesPerIP,
			MaxLocateItems: defaultMaxLocateItems},
		KES: KES{MaxBody: defaultMaxBody},
	}
	if a := top.attrs["log_level"]; a != nil {
		if s, ok := d.str(a); ok {
			if contains(logLevels, s) {
				cfg.LogLevel = s
			} else {
				d.add(a.at(), fmt.Sprintf("bad log_level %q", s), oneOf(s, logLevels))
			}
		}
	}
	listen := d.listen(d.single(top, "listen"), cfg)
	// The kes and ops blocks come before tls: it needs a certificate for the listeners that use it.
	d.kes(d.single(top, "kes"), cfg)
	d.ops(d.single(top, "ops"), cfg, listen["ops"])
	d.tls(d.single(top, "tls"), cfg, listen)
	d.signers(top.blocks["signer"], cfg)
	d.checkKeySigner(cfg)
	d.chooseSigners(top, cfg)
	d.retired(top, cfg)
	if kb := d.single(top, "keymap"); kb != nil || !top.misused["keymap"] {
		d.keymap(kb, cfg)
	}
	d.audit(d.single(top, "audit"), cfg)
	if a := top.attrs["admin"]; a != nil {
		if s, ok := d.str(a); ok && d.identity(s, a.at(), "admin identity", "") {
			cfg.Admin = s
		}
	}
	d.policies(top.blocks["policy"], cfg)
	d.identities(top.blocks["identity"], cfg)
	d.checkProxyIdentities(cfg)
	d.kmip(d.single(top, "kmip"), cfg)
	d.keymapMode(cfg)
	cfg.production = d.report(d.prod)
	return cfg
}

func oneOf(given string, allowed []string) string {
	if s := suggest(given, allowed); s != "" {
		return fmt.Sprintf("did you mean %q?", s)
	}
	return "use one of " + quoteJoin(allowed)
}

func quoteJoin(list []string) string {
	q := make([]string, len(list))
	for i, s := range list {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}

// single returns the one block of a type that may appear once.
func (d *decoder) single(top content, typ string) *hclsyntax.Block {
	blocks := top.blocks[typ]
	for i, b := range blocks {
		if len(b.Labels) > 0 {
			d.add(b.LabelRanges[0].Start, fmt.Sprintf("the %s block takes no name", typ), fmt.Sprintf("write %s { … }", typ))
		}
		if i > 0 {
			d.add(b.TypeRange.Start, fmt.Sprintf("duplicate %s block", typ),
				fmt.Sprintf("the first is at %s; merge them", d.pos(blocks[0].TypeRange.Start)))
		}
	}
	if len(blocks) == 0 {
		return nil
	}
	return blocks[0]
}

// named checks that a repeatable block has exactly one name.
func (d *decoder) named(b *hclsyntax.Block) (string, bool) {
	if len(b.Labels) != 1 {
		d.add(b.TypeRange.Start, fmt.Sprintf("a %s block needs exactly one name", b.Type), fmt.Sprintf("write %s \"name\" { … }", b.Type))
		return "", false
	}
	name := b.Labels[0]
	if !nameRE.MatchString(name) {
		d.add(b.LabelRanges[0].Start, fmt.Sprintf("bad %s name %q", b.Type, name),
			"use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")
		return name, false
	}
	return name, true
}

// present returns the attributes among names that are set, in file order.
func present(c content, names ...string) []*attr {
	var out []*attr
	for _, n := range names {
		if a := c.attrs[n]; a != nil {
			out = append(out, a)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].SrcRange.Start.Byte < out[j].SrcRange.Start.Byte })
	return out
}

type listener struct {
	name, addr, host, port string
}

func (d *decoder) listen(b *hclsyntax.Block, cfg *Config) map[string]*attr {
	if b == nil {
		return nil
	}
	c := d.content(b.Body, " in the listen block", listenAttrs, nil, "")
	var seen []listener
	for _, name := range listenAttrs {
		a := c.attrs[name]
		if a == nil {
			continue
		}
		s, ok := d.str(a)
		if !ok || s == "" {
			continue
		}
		host, port, err := net.SplitHostPort(s)
		if err != nil {
			var ae *net.AddrError
			if errors.As(err, &ae) {
				err = errors.New(ae.Err)
			}
			d.add(a.at(), fmt.Sprintf("bad %s listen address %q", name, s),
				fmt.Sprintf("%v; write host:port, e.g. %q, or \":port\" for every interface", err, listenSample[name]))
			continue
		}
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			d.add(a.at(), fmt.Sprintf("bad %s listen address %q", name, s), "the port must be a number from 0 to 65535")
			continue
		}
		l := listener{name: name, addr: s, host: normHost(host), port: strconv.FormatUint(p, 10)}
		for _, o := range seen {
			if clash(o, l) {
				d.add(a.at(), fmt.Sprintf("the %s listener %q clashes with the %s listener %q", l.name, l.addr, o.name, o.addr),
					"give each listener its own port")
			}
		}
		seen = append(seen, l)
		switch name {
		case "kmip":
			cfg.Listen.KMIP = s
		case "kes":
			cfg.Listen.KES = s
		case "ops":
			cfg.Listen.Ops = s
		}
	}
	return c.attrs
}

func normHost(h string) string {
	h = strings.ToLower(h)
	if h == "localhost" {
		return "127.0.0.1"
	}
	if ip := net.ParseIP(h); ip != nil {
		return ip.String()
	}
	return h
}

// clash says whether two listeners would try to bind the same socket. Port
// 0 picks a free port, so it never clashes. "" and "::" are dual-stack
// wildcards on Linux and take the port on every address.
func clash(a, b listener) bool {
	if a.port != b.port || a.port == "0" {
		return false
	}
	if a.host == b.host || a.host == "" || b.host == "" || a.host == "::" || b.host == "::" {
		return true
	}
	v6 := func(h string) bool { return strings.Contains(h, ":") }
	return a.host == "0.0.0.0" && !v6(b.host) || b.host == "0.0.0.0" && !v6(a.host)
}

func (d *decoder) tls(b *hclsyntax.Block, cfg *Config, listen map[string]*attr) {
	var need []string // listeners that serve TLS
	if cfg.Listen.KMIP != "" {
		need = append(need, "kmip")
	}
	if cfg.Listen.KES != "" && !cfg.KES.Plaintext {
		need = append(need, "kes")
	}
	if cfg.Listen.Ops != "" && cfg.Ops.TLS {
		need = append(need, "ops")
	}
	if b == nil {
		for _, n := range need {
			d.add(listen[n].at(), fmt.Sprintf("the %s listener needs TLS, but there is no tls block", n),
				`add tls { cert = "server.pem"  key = "server-key.pem" }`)
		}
		return
	}
	c := d.content(b.Body, " in the tls block", tlsAttrs, nil, "")
	for _, f := range []struct {
		name string
		dst  *string
	}{{"cert", &cfg.TLS.Cert}, {"key", &cfg.TLS.Key}, {"client_ca", &cfg.TLS.ClientCA}} {
		a := c.attrs[f.name]
		if a == nil {
			continue
		}
		if s, ok := d.str(a); ok {
			if s == "" {
				d.add(a.at(), a.what()+" is empty", "give a file path, or remove the attribute")
				continue
			}
			if f.name == "key" && strings.HasPrefix(strings.ToLower(s), "pkcs11:") {
				if d.checkKeyURI(a, s) {
					cfg.TLS.KeyURI = s
				}
				continue
			}
			*f.dst = d.path(s)
			if f.name == "key" {
				d.keyFileMode(a, *f.dst)
			}
		}
	}
	_, hasCert := c.attrs["cert"]
	_, hasKey := c.attrs["key"]
	if len(need) > 0 || hasCert || hasKey {
		for _, m := range []struct {
			name, sample string
			has          bool
		}{{"cert", "server.pem", hasCert}, {"key", "server-key.pem", hasKey}} {
			if m.has {
				continue
			}
			why := "cert and key go together"
			switch len(need) {
			case 1:
				why = fmt.Sprintf("the %s listener needs it", need[0])
			case 2:
				why = fmt.Sprintf("the %s and %s listeners need it", need[0], need[1])
			}
			d.add(b.TypeRange.Start, fmt.Sprintf("the tls block has no %s", m.name), fmt.Sprintf("add %s = %q; %s", m.name, m.sample, why))
		}
	}
	if a := c.attrs["min_version"]; a != nil && a.ok {
		var v string
		switch a.val.Type() {
		case cty.String:
			v = a.val.AsString()
		case cty.Number: // min_version = 1.3 is an easy slip; it reads the same
			v = numText(a.val.AsBigFloat())
		}
		switch v {
		case "1.2":
			cfg.TLS.MinVersion = tls.VersionTLS12
		case "1.3":
			cfg.TLS.MinVersion = tls.VersionTLS13
		default:
			d.add(a.at(), fmt.Sprintf("bad TLS min_version %q", v), `use "1.2" (the default) or "1.3"`)
		}
	}
	if a := c.attrs["fips"]; a != nil {
		cfg.TLS.FIPS, _ = d.boolean(a)
	}
	d.revoked(c, cfg)
}

func (d *decoder) signers(blocks []*hclsyntax.Block, cfg *Config) {
	seen := map[string]hcl.Pos{}
	tokens := map[string]string{} // module + token → signer name
	for _, b := range blocks {
		name, ok := d.named(b)
		if name == "" && !ok {
			continue
		}
		if first, dup := seen[name]; dup {
			d.add(b.LabelRanges[0].Start, fmt.Sprintf("duplicate signer %q", name),
				fmt.Sprintf("the first is at %s; signer names must be unique", d.pos(first)))
		} else {
			seen[name] = b.LabelRanges[0].Start
		}
		s := d.signer(b, name)
		if s.Module != "" {
			slot, label, serial := s.tokenSelector()
			key := fmt.Sprintf("%s\x00%v\x00%s\x00%s", s.Module, slot != nil, label, serial)
			if slot != nil {
				key += fmt.Sprintf("\x00%d", *slot)
			}
			if slot != nil || label != "" || serial != "" {
				if other, dup := tokens[key]; dup && other != name {
					d.add(b.LabelRanges[0].Start, fmt.Sprintf("signers %q and %q select the same token", other, name),
						"a token can back only one signer; remove one of them")
				}
				tokens[key] = name
			}
		}
		cfg.Signers = append(cfg.Signers, s)
	}
}

func (d *decoder) signer(b *hclsyntax.Block, name string) Signer {
	in := fmt.Sprintf(" in signer %q", name)
	c := d.content(b.Body, in, signerAttrs, nil, "pin")
	s := Signer{
		Name:           name,
		Range:          d.pos(b.TypeRange.Start),
		MaxSessions:    defaultMaxSessions(),
		SessionTimeout: defaultSessionTimeout,
		KeyCopies:      defaultKeyCopies,
	}
	if a := c.attrs["module"]; a == nil {
		d.add(b.TypeRange.Start, fmt.Sprintf("signer %q has no module", name),
			`add module = "/usr/lib/softhsm/libsofthsm2.so" (the PKCS#11 library of the token)`)
	} else if v, ok := d.str(a); ok {
		if v == "" {
			d.add(a.at(), a.what()+" is empty", "give the path of the PKCS#11 library")
		}
		// Used as written: a bare library name is for dlopen to search.
		s.Module = v
	}

	switch sel := present(c, selectors...); {
	case len(sel) == 0:
		d.add(b.TypeRange.Start, fmt.Sprintf("signer %q has no token selector", name),
			"add exactly one of slot_id, token_label, token_serial or uri")
	case len(sel) > 1:
		names := make([]string, len(sel))
		for i, a := range sel {
			names[i] = a.Name
		}
		d.add(sel[1].NameRange.Start, fmt.Sprintf("signer %q has more than one token selector: %s", name, strings.Join(names, ", ")),
			"keep exactly one of slot_id, token_label, token_serial or uri")
	}
	if a := c.attrs["slot_id"]; a != nil {
		if n, ok := d.integer(a, 0, math.MaxInt); ok {
			u := uint(n)
			s.SlotID = &u
		}
	}
	// PKCS#11 pads labels to 32 bytes and serials to 16; a longer value can
	// never match a token.
	s.TokenLabel = d.tokenField(c.attrs["token_label"], 32)
	s.TokenSerial = d.tokenField(c.attrs["token_serial"], 16)
	if a := c.attrs["uri"]; a != nil {
		if v, ok := d.str(a); ok && d.checkURI(a, v, name) {
			s.URI = v
		}
	}

	switch pins := present(c, "pin", "pin_file"); {
	case len(pins) == 0:
		d.add(b.TypeRange.Start, fmt.Sprintf("signer %q has no PIN", name),
			`add pin = env("P11BRIDGE_PIN") or pin_file = "/run/secrets/pin"`)
	case len(pins) > 1:
		d.add(pins[1].NameRange.Start, fmt.Sprintf("signer %q has two PIN sources, pin and pin_file", name),
			"keep exactly one of them")
	}
	if a := c.attrs["pin"]; a != nil {
		if v, ok := d.str(a); ok {
			s.PINSource = "pin"
			if env, ok := envCallName(a.Expr); ok {
				s.PINSource = "env:" + env
			}
			d.secrets = append(d.secrets, v)
			if v == "" {
				detail := `give the token's user PIN`
				if strings.HasPrefix(s.PINSource, "env:") {
					detail = fmt.Sprintf("environment variable %q is set but empty", strings.TrimPrefix(s.PINSource, "env:"))
				}
				d.add(a.at(), fmt.Sprintf("the PIN of signer %q is empty", name), detail)
			}
			s.PIN = Secret(v)
			if s.PINSource == "pin" {
				d.prodPIN(a, name)
			}
		}
	}
	if a := c.attrs["pin_file"]; a != nil {
		if p, ok := d.str(a); ok {
			if pin, ok := d.pinFile(a, p, name); ok {
				path := d.path(p)
				s.PIN = Secret(pin)
				s.PINSource = "file:" + path
				d.pinFileMode(a, path, name)
			}
		}
	}

	if a := c.attrs["max_sessions"]; a != nil {
		if n, ok := d.integer(a, 1, maxSessionsLimit); ok {
			s.MaxSessions = int(n)
		}
	}
	if a := c.attrs["session_timeout"]; a != nil {
		if v, ok := d.duration(a, time.Millisecond, time.Hour); ok {
			s.SessionTimeout = v
		}
	}
	if a := c.attrs["key_copies"]; a != nil {
		if n, ok := d.integer(a, 0, maxKeyCopies); ok {
			s.KeyCopies = int(n)
		}
	}
	return s
}

func (d *decoder) tokenField(a *attr, limit int) string {
	if a == nil {
		return ""
	}
	v, ok := d.str(a)
	switch {
	case !ok:
		return ""
	case v == "":
		d.add(a.at(), a.what()+" is empty", "give the value shown by `pkcs11-tool --list-slots`, or use another selector")
	case len(v) > limit:
		d.add(a.at(), fmt.Sprintf("%s is longer than %d bytes", a.what(), limit),
			"PKCS#11 limits it to that length, so it can match no token")
	}
	return v
}

// pinFile reads a PIN from a file. Nothing it reports quotes the content.
func (d *decoder) pinFile(a *attr, p, signer string) (string, bool) {
	if p == "" {
		d.add(a.at(), a.what()+" is empty", "give the path of a file holding the PIN")
		return "", false
	}
	path := d.path(p)
	b, err := readLimited(path, maxPINFile, true)
	if err != nil {
		why := err.Error()
		if errors.Is(err, errTooLarge) {
			why = fmt.Sprintf("%s is larger than %d bytes; is it the right file?", path, maxPINFile)
		}
		d.add(a.at(), fmt.Sprintf("cannot read the pin_file of signer %q", signer), why)
		return "", false
	}
	pin := strings.TrimRight(string(b), "\r\n")
	d.secrets = append(d.secrets, pin)
	if pin == "" {
		d.add(a.at(), fmt.Sprintf("the pin_file of signer %q is empty", signer), fmt.Sprintf("write the token's user PIN into %s", path))
		return "", false
	}
	return pin, true
}

// RFC 7512 attribute names. uriTokenAttrs are those the signer matches
// tokens on; the other RFC 7512 attributes are refused rather than silently
// ignored. Object attributes (id, object, type) name keys, not tokens.
var (
	uriTokenAttrs  = []string{"token", "serial", "slot-id", "manufacturer", "model"}
	uriIgnored     = []string{"library-manufacturer", "library-description", "library-version", "slot-manufacturer", "slot-description"}
	uriObjectAttrs = []string{"id", "object", "type"}
)

func (d *decoder) checkURI(a *attr, v, signer string) bool {
	at := a.at()
	lv := strings.ToLower(v)
	// Checked before parsing so that no parser message can quote the PIN.
	if strings.Contains(lv, "pin-value") || strings.Contains(lv, "pin-source") {
		d.add(at, fmt.Sprintf("the pkcs11 URI of signer %q carries a PIN", signer),
			"put the PIN in pin/pin_file, not the URI")
		return false
	}
	if !strings.HasPrefix(v, "pkcs11:") {
		d.add(at, fmt.Sprintf("the uri of signer %q is not a pkcs11: URI", signer), `write an RFC 7512 URI, e.g. "pkcs11:token=bridge-a"`)
		return false
	}
	u := pkcs11uri.New()
	if err := u.Parse(v); err != nil {
		d.add(at, fmt.Sprintf("invalid pkcs11 URI in signer %q", signer), err.Error()+`; see RFC 7512, e.g. "pkcs11:token=bridge-a"`)
		return false
	}
	pathPart, query, _ := strings.Cut(strings.TrimPrefix(v, "pkcs11:"), "?")
	ok := true
	for _, kv := range strings.Split(pathPart, ";") {
		n, _, _ := strings.Cut(kv, "=")
		switch {
		case n == "" || contains(uriTokenAttrs, n):
		case contains(uriIgnored, n) || strings.HasPrefix(n, "x-"):
			d.add(at, fmt.Sprintf("p11bridge cannot select a token by %s (pkcs11 URI of signer %q)", n, signer),
				"remove it; tokens are matched on token, serial, slot-id, manufacturer and model")
			ok = false
		case contains(uriObjectAttrs, n):
			d.add(at, fmt.Sprintf("the pkcs11 URI of signer %q names an object (%s)", signer, n),
				"the URI selects a token; remove "+n+", p11bridge chooses the objects")
			ok = false
		default:
			d.add(at, fmt.Sprintf("unknown attribute %q in the pkcs11 URI of signer %q", n, signer), didYouMean(n, uriTokenAttrs, "URI attributes"))
			ok = false
		}
	}
	if query != "" {
		for _, kv := range strings.Split(query, "&") {
			n, _, _ := strings.Cut(kv, "=")
			switch {
			case n == "module-name" || n == "module-path":
				d.add(at, fmt.Sprintf("the pkcs11 URI of signer %q names a module (%s)", signer, n),
					"remove it; the module attribute says which library to load")
				ok = false
			default:
				d.add(at, fmt.Sprintf("unknown query attribute %q in the pkcs11 URI of signer %q", n, signer), "remove it")
				ok = false
			}
		}
	}
	_, t := u.GetPathAttribute("token", false)
	_, s := u.GetPathAttribute("serial", false)
	_, id := u.GetPathAttribute("slot-id", false)
	if ok && !t && !s && !id {
		d.add(at, fmt.Sprintf("the pkcs11 URI of signer %q names no token", signer), "add token=, serial= or slot-id= to it")
		ok = false
	}
	return ok
}

func (d *decoder) chooseSigners(top content, cfg *Config) {
	var names []string // unique: a duplicate is reported already
	known := map[string]bool{}
	for _, s := range cfg.Signers {
		if !known[s.Name] {
			known[s.Name] = true
			names = append(names, s.Name)
		}
	}
	which := func() string {
		if len(names) == 0 {
			return "no signer is configured; add a signer block"
		}
		return "the signers are " + quoteJoin(names)
	}
	if a := top.attrs["default_signer"]; a != nil {
		if v, ok := d.str(a); ok {
			if known[v] {
				cfg.DefaultSigner = v
			} else {
				d.add(a.at(), fmt.Sprintf("default_signer %q names no signer", v), which())
			}
		}
	} else if len(names) == 1 {
		cfg.DefaultSigner = names[0]
	} else if len(names) > 1 {
		d.add(top.blocks["signer"][0].TypeRange.Start, "default_signer is not set",
			fmt.Sprintf("with more than one signer, add default_signer = %q; %s", names[0], which()))
	}
	if a := top.attrs["rollover_signer"]; a != nil {
		if v, ok := d.str(a); ok {
			switch {
			case !known[v]:
				d.add(a.at(), fmt.Sprintf("rollover_signer %q names no signer", v), which())
			case v == cfg.DefaultSigner:
				d.add(a.at(), "rollover_signer equals default_signer", "unset it; rollover names the signer new keys move to")
			default:
				cfg.RolloverSigner = v
			}
		}
	}
}

// retired lists signers taken out of the config on purpose although the keymap still records live
// keys on them: the operator's confirmation that those keys are given up.
func (d *decoder) retired(top content, cfg *Config) {
	a := top.attrs["retired_signers"]
	if a == nil {
		return
	}
	items, _ := d.list(a)
	for _, it := range items {
		if _, still := cfg.Signer(it.s); still {
			d.add(it.at, fmt.Sprintf("retired_signers names signer %q, which is still configured", it.s),
				"list only signers whose block you removed")
			continue
		}
		cfg.RetiredSigners = append(cfg.RetiredSigners, it.s)
	}
}

var keymapAttrs = []string{"path", "postgres", "postgres_file", "instance", "staleness"}

func (d *decoder) keymap(b *hclsyntax.Block, cfg *Config) {
	if b == nil {
		d.add(hcl.InitialPos, "there is no keymap block", `add keymap { path = "keymap.csv" }; p11bridge keeps its key map there`)
		return
	}
	c := d.content(b.Body, " in the keymap block", keymapAttrs, nil, "postgres")
	pg := present(c, "postgres", "postgres_file")
	if len(pg) == 0 {
		cfg.Keymap.Path = d.requiredPath(b, c, "keymap.csv")
		d.keymapAttr = c.attrs["path"]
		for _, n := range []string{"instance", "staleness"} {
			if a := c.attrs[n]; a != nil {
				d.add(a.NameRange.Start, n+" in the keymap block applies to a PostgreSQL keymap only",
					`remove it, or keep the keymap in PostgreSQL: postgres = env("P11BRIDGE_KEYMAP_DSN")`)
			}
		}
		return
	}
	if a := c.attrs["path"]; a != nil {
		d.add(a.NameRange.Start, "the keymap block has both a path and "+pg[0].Name,
			"keep one: path for a CSV file (one instance), postgres for a store that several instances share")
	}
	if len(pg) > 1 {
		d.add(pg[1].NameRange.Start, "the keymap block has both postgres and postgres_file", "keep exactly one of them")
	}
	if a := c.attrs["postgres"]; a != nil {
		if v, ok := d.str(a); ok {
			cfg.Keymap.PostgresSource = "postgres"
			if env, ok := envCallName(a.Expr); ok {
				cfg.Keymap.PostgresSource = "env:" + env
			}
			if d.dsn(a, v, cfg.Keymap.PostgresSource) && cfg.Keymap.PostgresSource == "postgres" && dsnHasPassword(v) {
				d.prodAdd(a.at(), "the keymap's PostgreSQL password is written in the config file",
					`production mode reads it from the environment or a private file: postgres = env("P11BRIDGE_KEYMAP_DSN"), or postgres_file = "…" with mode 0600 (or leave the password to ~/.pgpass)`)
			}
			cfg.Keymap.Postgres = Secret(v)
		}
	}
	if a := c.attrs["postgres_file"]; a != nil {
		if p, ok := d.str(a); ok {
			path := d.path(p)
			b, err := readLimited(path, maxPINFile, true)
			switch {
			case p == "":
				d.add(a.at(), a.what()+" is empty", "give the path of a file holding the connection string")
			case err != nil:
				d.add(a.at(), "cannot read the keymap's postgres_file", err.Error())
			default:
				v := strings.TrimRight(string(b), "\r\n")
				d.secrets = append(d.secrets, v)
				cfg.Keymap.PostgresSource = "file:" + path
				if d.dsn(a, v, cfg.Keymap.PostgresSource) {
					cfg.Keymap.Postgres = Secret(v)
				}
				if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
					d.prodAdd(a.at(), fmt.Sprintf("the keymap's postgres_file is open to other users (mode %04o)", st.Mode().Perm()),
						fmt.Sprintf("production mode needs mode 0600 or stricter: chmod 600 %s", path))
				}
			}
		}
	}
	if a := c.attrs["instance"]; a != nil {
		if v, ok := d.str(a); ok {
			if nameRE.MatchString(v) {
				cfg.Keymap.Instance = v
			} else {
				d.add(a.at(), fmt.Sprintf("bad instance name %q", v), "use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")
			}
		}
	}
	if a := c.attrs["staleness"]; a != nil {
		if v, ok := d.duration(a, 100*time.Millisecond, time.Hour); ok {
			cfg.Keymap.Staleness = v
		}
	}
}

// dsn checks the form of a PostgreSQL connection string. Nothing it reports quotes the string:
// it may hold a password.
func (d *decoder) dsn(a *attr, v, source string) bool {
	d.secrets = append(d.secrets, v)
	if u, err := url.Parse(v); err == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok {
			d.secrets = append(d.secrets, pw)
		}
	}
	where := "the keymap's postgres connection string"
	if strings.HasPrefix(source, "env:") {
		where += fmt.Sprintf(" (environment variable %q)", strings.TrimPrefix(source, "env:"))
	} else if strings.HasPrefix(source, "file:") {
		where += " (in " + strings.TrimPrefix(source, "file:") + ")"
	}
	switch {
	case v == "":
		d.add(a.at(), where+" is empty", `give a URI such as "postgres://p11bridge@db.example:5432/p11bridge"`)
		return false
	case strings.HasPrefix(v, "postgres://") || strings.HasPrefix(v, "postgresql://"):
		if _, err := url.Parse(v); err != nil {
			d.add(a.at(), where+" is not a valid URI", "check its quoting: characters such as '@', ':' and '/' in a password must be percent-encoded")
			return false
		}
	case strings.Contains(v, "="):
	default:
		d.add(a.at(), where+" is neither a postgres:// URI nor key=value pairs", `e.g. "postgres://p11bridge@db.example:5432/p11bridge" or "host=db.example dbname=p11bridge user=p11bridge"`)
		return false
	}
	return true
}

// dsnHasPassword says whether a connection string carries a password itself.
func dsnHasPassword(v string) bool {
	if u, err := url.Parse(v); err == nil && u.Scheme != "" {
		if _, ok := u.User.Password(); ok {
			return true
		}
		return u.Query().Has("password")
	}
	for _, f := range strings.Fields(v) {
		if strings.HasPrefix(strings.ToLower(f), "password=") {
			return true
		}
	}
	return false
}

func (d *decoder) audit(b *hclsyntax.Block, cfg *Config) {
	if b == nil {
		return
	}
	c := d.content(b.Body, " in the audit block", []string{"path", "required"}, nil, "")
	cfg.Audit.Path = d.requiredPath(b, c, "audit.log")
	if a := c.attrs["required"]; a != nil {
		cfg.Audit.Required, _ = d.boolean(a)
	}
}

func (d *decoder) requiredPath(b *hclsyntax.Block, c content, sample string) string {
	a := c.attrs["path"]
	if a == nil {
		d.add(b.TypeRange.Start, fmt.Sprintf("the %s block has no path", b.Type), fmt.Sprintf("add path = %q", sample))
		return ""
	}
	v, ok := d.str(a)
	if ok && v == "" {
		d.add(a.at(), a.what()+" is empty", fmt.Sprintf("give a file path, e.g. %q", sample))
	}
	return d.path(v)
}

func (d *decoder) kmip(b *hclsyntax.Block, cfg *Config) {
	if b == nil {
		return
	}
	c := d.content(b.Body, " in the kmip block", []string{"max_message_size", "max_connections", "idle_timeout",
		"handshake_timeout", "max_handshakes", "max_handshakes_per_address", "max_locate_items", "max_connections_per_identity"}, nil, "")
	if a := c.attrs["max_message_size"]; a != nil {
		if n, ok := d.size(a, minBody, maxBody); ok {
			cfg.KMIP.MaxMessageSize = n
		}
	}
	if a := c.attrs["max_connections"]; a != nil {
		if n, ok := d.integer(a, 1, 1_000_000); ok {
			cfg.KMIP.MaxConnections = int(n)
		}
	}
	if a := c.attrs["idle_timeout"]; a != nil {
		if v, ok := d.duration(a, time.Second, 24*time.Hour); ok {
			cfg.KMIP.IdleTimeout = v
		}
	}
	if a := c.attrs["handshake_timeout"]; a != nil {
		if v, ok := d.duration(a, time.Second, 5*time.Minute); ok {
			cfg.KMIP.HandshakeTimeout = v
		}
	}
	if a := c.attrs["max_handshakes"]; a != nil {
		if n, ok := d.integer(a, 1, 1_000_000); ok {
			cfg.KMIP.MaxHandshakes = int(n)
		}
	}
	if a := c.attrs["max_handshakes_per_address"]; a != nil {
		if n, ok := d.integer(a, 1, 1_000_000); ok {
			cfg.KMIP.MaxHandshakesPerAddress = int(n)
		}
	}
	if a := c.attrs["max_locate_items"]; a != nil {
		if n, ok := d.integer(a, 1, 1_000_000); ok {
			cfg.KMIP.MaxLocateItems = int(n)
		}
	}
	if a := c.attrs["max_connections_per_identity"]; a != nil {
		if n, ok := d.integer(a, 1, 1_000_000); ok {
			cfg.KMIP.MaxConnectionsPerIdentity = int(n)
		}
	}
}

func (d *decoder) kes(b *hclsyntax.Block, cfg *Config) {
	if b == nil {
		return
	}
	c := d.content(b.Body, " in the kes block", kesAttrs, []string{"proxy"}, "")
	if a := c.attrs["max_body"]; a != nil {
		if n, ok := d.size(a, minBody, maxBody); ok {
			cfg.KES.MaxBody = n
		}
	}
	d.proxy(d.single(c, "proxy"), cfg)
	if a := c.attrs["plaintext"]; a != nil {
		if v, ok := d.boolean(a); ok && v {
			cfg.KES.Plaintext = true
			d.prodAdd(a.at(), "the KES listener is plaintext (plaintext = true)",
				"production mode serves the KES API over TLS only; remove plaintext, or use dev mode")
			switch {
			case cfg.KES.Proxy == nil:
				d.add(a.at(), "a plaintext KES listener sees no client certificates",
					`add proxy { header = "X-Tls-Client-Cert" } for the TLS-terminating proxy in front of it`)
			case len(cfg.KES.Proxy.Identities) > 0:
				d.add(d.proxyIdentities.at(), "the proxy's identities cannot be checked on a plaintext KES listener",
					"remove identities (a plaintext listener takes the header from any peer), or remove plaintext")
			}
		}
	}
}

// ops reads the ops block, and refuses in production an ops listener that anyone on the network can
// reach without a client certificate, unless the operator says so (public = true).
func (d *decoder) ops(b *hclsyntax.Block, cfg *Config, addr *attr) {
	if b != nil {
		c := d.content(b.Body, " in the ops block", []string{"tls", "public"}, nil, "")
		if a := c.attrs["tls"]; a != nil {
			cfg.Ops.TLS, _ = d.boolean(a)
		}
		if a := c.attrs["public"]; a != nil {
			cfg.Ops.Public, _ = d.boolean(a)
		}
		if cfg.Ops.TLS && cfg.Ops.Public {
			d.add(b.DefRange().Start, "the ops block sets both tls and public", "tls requires client certificates; public serves plain HTTP to anyone: choose one")
		}
	}
	if addr == nil || cfg.Listen.Ops == "" || cfg.Ops.TLS || cfg.Ops.Public {
		return
	}
	host, _, err := net.SplitHostPort(cfg.Listen.Ops)
	if err != nil || loopback(host) {
		return
	}
	d.prodAdd(addr.at(), fmt.Sprintf("the ops listener %q is reachable from the network without authentication", cfg.Listen.Ops),
		`production mode serves plain ops on loopback only: listen on 127.0.0.1, or add ops { tls = true } (client certificates, the policies' "/ops/..." paths), or ops { public = true } to accept it`)
}

// loopback says whether host names only this machine.
func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// identities reads identity "<hex>" { not_after = "RFC 3339 time" } blocks: identities configured
// exactly (admin, policies: KES API keys among them) are taken without a chain or expiry check, as
// KES takes them; not_after gives one an end.
func (d *decoder) identities(blocks []*hclsyntax.Block, cfg *Config) {
	for _, b := range blocks {
		id, ok := d.named(b)
		if !ok {
			continue
		}
		at := b.LabelRanges[0].Start
		if !d.identity(id, at, "identity", "") {
			continue
		}
		if cfg.NotAfter[id] != (time.Time{}) {
			d.add(at, fmt.Sprintf("identity %q is configured twice", id), "merge the identity blocks")
			continue
		}
		c := d.content(b.Body, fmt.Sprintf(" in identity %q", id), []string{"not_after"}, nil, "")
		a := c.attrs["not_after"]
		if a == nil {
			d.add(at, fmt.Sprintf("identity %q sets nothing", id), `write not_after = "2027-06-30T00:00:00Z"`)
			continue
		}
		s, ok := d.str(a)
		if !ok {
			continue
		}
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			d.add(a.at(), fmt.Sprintf("bad not_after %q for identity %q", s, id), `write an RFC 3339 time, e.g. "2027-06-30T00:00:00Z"`)
			continue
		}
		if cfg.NotAfter == nil {
			cfg.NotAfter = map[string]time.Time{}
		}
		cfg.NotAfter[id] = t
	}
}
