package conf

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// lines joins its arguments as lines, so a test's line numbers are the
// argument positions plus one.
func lines(ls ...string) string { return strings.Join(ls, "\n") + "\n" }

const (
	id1 = "5791b6226743c56f44f8274cc67b8beb9751b6403e697243ad00fd37af5635e3"
	id2 = "0e6b69fbd1836bbd274587164bdbde0221901974ec4ade407e4bf4c357273eed"
	id3 = "8c6976e5b5410415bde908bd4dee15dfb167a9c873fc4bb8a81f6f2ab448a918"
	id4 = "f0e4c2f76c58916ec258f246851bea091d14d4247a2fc3e18694461b1816e13b"
	id5 = "3b1d0e8a5c7f2a4e6d9b8c0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445"
)

func mustParse(t *testing.T, src, file string) *Config {
	t.Helper()
	cfg, err := Parse([]byte(src), file)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return cfg
}

func uintp(n uint) *uint { return &n }

func TestFullConfig(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pin-b"), []byte("pin-from-file\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("P11BRIDGE_TEST_PIN_A", "pin-from-env")
	src := lines(
		`log_level = "debug"`,
		`listen {`,
		`  kmip = "127.0.0.1:5696"`,
		`  kes  = "[::1]:7373"`,
		`  ops  = ":9464"`,
		`}`,
		`tls {`,
		`  cert        = "server.pem"`,
		`  key         = "/etc/p11bridge/server-key.pem"`,
		`  client_ca   = "ca/ca.pem"`,
		`  min_version = "1.3"`,
		`  fips        = true`,
		`  revoked     = ["`+id4+`", "`+id2+`", "`+id4+`"]`,
		`}`,
		`signer "hsm-a" {`,
		`  module          = "/usr/lib/softhsm/libsofthsm2.so"`,
		`  token_label     = "bridge-a"`,
		`  pin             = env("P11BRIDGE_TEST_PIN_A")`,
		`  max_sessions    = 8`,
		`  session_timeout = "1500ms"`,
		`}`,
		`signer "hsm-b" {`,
		`  module   = "libsofthsm2.so"`,
		`  uri      = "pkcs11:token=bridge-b;serial=abc"`,
		`  pin_file = "pin-b"`,
		`}`,
		`signer "hsm-c" {`,
		`  module  = "/opt/hsm/lib.so"`,
		`  slot_id = 3`,
		`  pin     = "literal"`,
		`  max_sessions = 1`,
		`}`,
		`signer "hsm-d" {`,
		`  module       = "/opt/hsm/lib.so"`,
		`  token_serial = "0123456789abcdef"`,
		`  pin          = "${env("P11BRIDGE_TEST_PIN_A")}-x"`,
		`  max_sessions = 1024`,
		`  key_copies   = 0`,
		`}`,
		`default_signer  = "hsm-a"`,
		`rollover_signer = "hsm-b"`,
		`keymap { path = "data/keymap.csv" }`,
		`audit {`,
		`  path     = "/var/log/p11bridge/audit.log"`,
		`  required = true`,
		`}`,
		`admin = "`+id3+`"`,
		`policy "minio" {`,
		`  allow      = ["/v1/key/create/*", "/v1/key/generate/*", "/version"]`,
		`  deny       = []`,
		`  kmip       = ["Create", "Get", "Encrypt"]`,
		`  keys       = ["minio-*"]`,
		`  identities = ["`+id1+`", "`+id2+`"]`,
		`}`,
		`policy "all-kmip" {`,
		`  kmip       = ["*"]`,
		`  identities = ["`+id4+`"]`,
		`  allow      = null`,
		`}`,
		`kmip {`,
		`  max_message_size = "64KiB"`,
		`  max_connections  = 10`,
		`  idle_timeout     = "30s"`,
		`  handshake_timeout = "3s"`,
		`  max_handshakes = 50`,
		`  max_handshakes_per_address = 2`,
		`  max_locate_items = 20`,
		`}`,
		`kes {`,
		`  max_body = 4096`,
		`  proxy {`,
		`    identities = ["`+id5+`"]`,
		`    header     = "x-ssl-client-cert"`,
		`  }`,
		`}`,
	)
	file := filepath.Join(dir, "config.hcl")
	got := mustParse(t, src, file)
	want := &Config{
		File:     file,
		LogLevel: "debug",
		Listen:   Listen{KMIP: "127.0.0.1:5696", KES: "[::1]:7373", Ops: ":9464"},
		TLS: TLS{
			Cert:       filepath.Join(dir, "server.pem"),
			Key:        "/etc/p11bridge/server-key.pem",
			ClientCA:   filepath.Join(dir, "ca", "ca.pem"),
			MinVersion: tls.VersionTLS13,
			FIPS:       true,
			Revoked:    []string{id4, id2},
		},
		Signers: []Signer{
			{Name: "hsm-a", Module: "/usr/lib/softhsm/libsofthsm2.so", TokenLabel: "bridge-a",
				PIN: "pin-from-env", PINSource: "env:P11BRIDGE_TEST_PIN_A", MaxSessions: 8,
				SessionTimeout: 1500 * time.Millisecond, KeyCopies: 1024, Range: file + ":15:1"},
			{Name: "hsm-b", Module: "libsofthsm2.so", URI: "pkcs11:token=bridge-b;serial=abc",
				PIN: "pin-from-file", PINSource: "file:" + filepath.Join(dir, "pin-b"), MaxSessions: defaultMaxSessions(),
				SessionTimeout: 5 * time.Second, KeyCopies: 1024, Range: file + ":22:1"},
			{Name: "hsm-c", Module: "/opt/hsm/lib.so", SlotID: uintp(3), PIN: "literal", PINSource: "pin",
				MaxSessions: 1, SessionTimeout: 5 * time.Second, KeyCopies: 1024, Range: file + ":27:1"},
			{Name: "hsm-d", Module: "/opt/hsm/lib.so", TokenSerial: "0123456789abcdef", PIN: "pin-from-env-x",
				PINSource: "pin", MaxSessions: 1024, SessionTimeout: 5 * time.Second, Range: file + ":33:1"},
		},
		DefaultSigner:  "hsm-a",
		RolloverSigner: "hsm-b",
		Keymap:         Keymap{Path: filepath.Join(dir, "data", "keymap.csv")},
		Audit:          Audit{Path: "/var/log/p11bridge/audit.log", Required: true},
		Admin:          id3,
		Policies: []Policy{
			{Name: "minio", Allow: []string{"/v1/key/create/*", "/v1/key/generate/*", "/version"},
				KMIP: []string{"Create", "Get", "Encrypt"}, Keys: []string{"minio-*"}, Identities: []string{id1, id2}},
			{Name: "all-kmip", KMIP: []string{"*"}, Identities: []string{id4}},
		},
		KMIP: KMIP{MaxMessageSize: 64 << 10, MaxConnections: 10, IdleTimeout: 30 * time.Second, HandshakeTimeout: 3 * time.Second,
			MaxHandshakes: 50, MaxHandshakesPerAddress: 2, MaxLocateItems: 20},
		KES: KES{MaxBody: 4096, Proxy: &Proxy{Identities: []string{id5}, Header: "X-Ssl-Client-Cert"}},
	}
	// An ops listener on every interface and two PINs written in the file: production mode
	// refuses them, at their positions.
	perr := got.Production()
	if perr == nil || perr.Error() != file+`:5:10: the ops listener ":9464" is reachable from the network without authentication; production mode serves plain ops on loopback only: listen on 127.0.0.1, or add ops { tls = true } (client certificates, the policies' "/ops/..." paths), or ops { public = true } to accept it`+"\n"+
		file+`:30:13: the PIN of signer "hsm-c" is written in the config file; production mode reads PINs from the environment or a private file: write pin = env("P11BRIDGE_PIN_HSM_C"), or pin_file = "…" with mode 0600`+"\n"+
		file+`:36:18: the PIN of signer "hsm-d" is written in the config file; production mode reads PINs from the environment or a private file: write pin = env("P11BRIDGE_PIN_HSM_D"), or pin_file = "…" with mode 0600` {
		t.Errorf("production check:\n%v", perr)
	}
	got.production = nil
	if !reflect.DeepEqual(got, want) {
		gj, _ := json.MarshalIndent(got, "", "  ")
		wj, _ := json.MarshalIndent(want, "", "  ")
		t.Fatalf("config mismatch\ngot:  %s\nwant: %s", gj, wj)
	}
	for i, s := range got.Signers {
		if s.PIN.Reveal() != want.Signers[i].PIN.Reveal() {
			t.Errorf("signer %s: PIN mismatch", s.Name)
		}
	}

	s, ok := got.Signer("hsm-c")
	if !ok || s.Name != "hsm-c" || *s.SlotID != 3 {
		t.Errorf("Signer(hsm-c) = %+v, %v", s, ok)
	}
	if _, ok := got.Signer("nope"); ok {
		t.Error("Signer(nope) found something")
	}
}

func TestDefaults(t *testing.T) {
	cfg := mustParse(t, lines(
		`keymap { path = "k.csv" }`,
		`signer "only" {`,
		`  module = "/m.so"`,
		`  token_label = "a"`,
		`  pin = "1234"`,
		`}`,
	), "/etc/p11bridge/config.hcl")
	if cfg.LogLevel != "info" || cfg.TLS.MinVersion != tls.VersionTLS12 {
		t.Errorf("log level %q, TLS min %x", cfg.LogLevel, cfg.TLS.MinVersion)
	}
	if cfg.DefaultSigner != "only" || cfg.RolloverSigner != "" {
		t.Errorf("default %q rollover %q", cfg.DefaultSigner, cfg.RolloverSigner)
	}
	if cfg.Listen != (Listen{}) || cfg.Audit != (Audit{}) || cfg.Admin != "" || cfg.Policies != nil {
		t.Errorf("unexpected non-zero: %+v", cfg)
	}
	want := KMIP{MaxMessageSize: 1 << 20, MaxConnections: 1024, IdleTimeout: 2 * time.Minute, HandshakeTimeout: 10 * time.Second,
		MaxHandshakes: 256, MaxHandshakesPerAddress: 64, MaxLocateItems: 1000}
	if cfg.KMIP != want || cfg.KES.MaxBody != 1<<20 {
		t.Errorf("KMIP %+v KES %+v", cfg.KMIP, cfg.KES)
	}
	s := cfg.Signers[0]
	if s.MaxSessions < 2 || s.MaxSessions > 1024 || s.SessionTimeout != 5*time.Second {
		t.Errorf("signer defaults: %d sessions, timeout %v", s.MaxSessions, s.SessionTimeout)
	}
	if cfg.Keymap.Path != "/etc/p11bridge/k.csv" {
		t.Errorf("keymap path %q", cfg.Keymap.Path)
	}
}

func TestRelativePaths(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "etc", "secrets"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "etc", "secrets", "pin"), []byte("9876\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	src := lines(
		`tls {`,
		`  cert = "tls/server.pem"`,
		`  key = "../outside/key.pem"`,
		`  client_ca = "/abs/ca.pem"`,
		`}`,
		`signer "a" {`,
		`  module = "libsofthsm2.so"`,
		`  token_label = "a"`,
		`  pin_file = "secrets/pin"`,
		`}`,
		`keymap { path = "./keymap.csv" }`,
		`audit { path = "log//audit.log" }`,
	)
	check := func(t *testing.T, cfg *Config, base string) {
		t.Helper()
		for _, c := range []struct{ got, want string }{
			{cfg.TLS.Cert, filepath.Join(base, "tls", "server.pem")},
			{cfg.TLS.Key, filepath.Join(filepath.Dir(base), "outside", "key.pem")},
			{cfg.TLS.ClientCA, "/abs/ca.pem"},
			{cfg.Keymap.Path, filepath.Join(base, "keymap.csv")},
			{cfg.Audit.Path, filepath.Join(base, "log", "audit.log")},
			{cfg.Signers[0].PINSource, "file:" + filepath.Join(base, "secrets", "pin")},
			{cfg.Signers[0].Module, "libsofthsm2.so"}, // not a config-relative path: dlopen searches it
			{cfg.Signers[0].PIN.Reveal(), "9876"},
		} {
			if c.got != c.want {
				t.Errorf("got %q, want %q", c.got, c.want)
			}
		}
	}
	t.Run("absolute file name", func(t *testing.T) {
		check(t, mustParse(t, src, filepath.Join(dir, "etc", "config.hcl")), filepath.Join(dir, "etc"))
	})
	t.Run("relative file name", func(t *testing.T) {
		t.Chdir(dir)
		cfg := mustParse(t, src, "etc/config.hcl")
		check(t, cfg, filepath.Join(dir, "etc"))
		if cfg.File != "etc/config.hcl" {
			t.Errorf("File = %q", cfg.File)
		}
	})
	t.Run("Load", func(t *testing.T) {
		file := filepath.Join(dir, "etc", "p11bridge.hcl")
		if err := os.WriteFile(file, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := Load(file)
		if err != nil {
			t.Fatal(err)
		}
		check(t, cfg, filepath.Join(dir, "etc"))
	})
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ path, want string }{
		{filepath.Join(dir, "missing.hcl"), "cannot read the config file; open " + filepath.Join(dir, "missing.hcl") + ": no such file or directory"},
		{dir, "cannot read the config file; read " + dir + ": not a regular file"},
	} {
		_, err := Load(c.path)
		var ce *Error
		if !errors.As(err, &ce) || len(ce.Diags) != 1 {
			t.Fatalf("Load(%s) = %v", c.path, err)
		}
		if got := ce.Diags[0].String(); got != c.path+": "+c.want {
			t.Errorf("got  %q\nwant %q", got, c.path+": "+c.want)
		}
	}
	big := filepath.Join(dir, "big.hcl")
	if err := os.WriteFile(big, bytes.Repeat([]byte("#\n"), maxConfigSize), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); err == nil || !strings.Contains(err.Error(), "more than 1048576 bytes") {
		t.Errorf("Load(big) = %v", err)
	}
	if _, err := Parse(bytes.Repeat([]byte("#\n"), maxConfigSize), "big.hcl"); err == nil || !strings.Contains(err.Error(), "big.hcl:1:1: the config file is larger than 1 MiB") {
		t.Errorf("Parse(big) = %v", err)
	}
}

func TestExample(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "secrets"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "secrets", "pin-b"), []byte("5678\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("P11BRIDGE_PIN_A", "1234")
	cfg := mustParse(t, Example(), filepath.Join(dir, "p11bridge.hcl"))
	if len(cfg.Signers) != 2 || cfg.DefaultSigner != "hsm-a" || len(cfg.Policies) != 3 || !cfg.Policies[2].Export || cfg.Policies[1].Export || cfg.Admin == "" {
		t.Errorf("example parsed to %+v", cfg)
	}
	if cfg.Signers[1].PIN.Reveal() != "5678" || cfg.Listen.KMIP == "" || cfg.Listen.KES == "" || cfg.Listen.Ops == "" {
		t.Errorf("example parsed to %+v", cfg)
	}
	// Every top-level block and attribute should be shown, commented out at
	// worst, so the example documents the whole language.
	for _, w := range append(append([]string{}, topAttrs...), topBlocks...) {
		if !strings.Contains(Example(), "\n"+w) && !strings.Contains(Example(), "# "+w) {
			t.Errorf("example does not show %q", w)
		}
	}
	for _, w := range append(append(append([]string{}, signerAttrs...), tlsAttrs...), policyAttrs...) {
		if w == "slot_id" || w == "token_serial" || w == "revoked_file" {
			continue // named in a comment
		}
		if !strings.Contains(Example(), "  "+w) {
			t.Errorf("example does not show %q", w)
		}
	}
	for _, w := range append(append([]string{"revoked_file"}, kesAttrs...), proxyAttrs...) {
		if !strings.Contains(Example(), "# "+w) && !strings.Contains(Example(), "  "+w) {
			t.Errorf("example does not show %q, even in a comment", w)
		}
	}
	if err := cfg.Production(); err != nil {
		t.Errorf("the example is not fit for production mode:\n%v", err)
	}
}

func TestTokenSelector(t *testing.T) {
	for _, c := range []struct {
		s             Signer
		slot          *uint
		label, serial string
	}{
		{Signer{SlotID: uintp(7)}, uintp(7), "", ""},
		{Signer{TokenLabel: "a"}, nil, "a", ""},
		{Signer{TokenSerial: "s"}, nil, "", "s"},
		{Signer{URI: "pkcs11:token=my%20token;serial=123;slot-id=9"}, uintp(9), "my token", "123"},
		{Signer{URI: "pkcs11:model=x;token=t"}, nil, "t", ""},
	} {
		slot, label, serial := c.s.tokenSelector()
		if !reflect.DeepEqual(slot, c.slot) || label != c.label || serial != c.serial {
			t.Errorf("%+v: got %v %q %q", c.s, slot, label, serial)
		}
	}
}

func TestSecretRedaction(t *testing.T) {
	const pin = "S3cretPIN-4711"
	s := Secret(pin)
	if s.Reveal() != pin {
		t.Fatal("Reveal lost the value")
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%10s", "%d"} {
		if got := fmt.Sprintf(verb, s); strings.Contains(got, pin) || !strings.Contains(got, "[redacted]") {
			t.Errorf("%s: %q", verb, got)
		}
	}
	sig := Signer{Name: "a", PIN: s}
	cfg := Config{Signers: []Signer{sig}}
	for _, verb := range []string{"%v", "%+v", "%#v"} {
		for _, v := range []any{sig, &sig, cfg, &cfg} {
			if got := fmt.Sprintf(verb, v); strings.Contains(got, pin) {
				t.Errorf("%s of %T leaks: %s", verb, v, got)
			}
		}
	}
	j, err := json.Marshal(cfg)
	if err != nil || strings.Contains(string(j), pin) || !strings.Contains(string(j), `"PIN":"[redacted]"`) {
		t.Errorf("json: %s %v", j, err)
	}
	txt, _ := s.MarshalText()
	if string(txt) != "[redacted]" || s.String() != "[redacted]" || s.GoString() != "[redacted]" {
		t.Error("MarshalText/String/GoString")
	}
	var buf bytes.Buffer
	for _, h := range []slog.Handler{slog.NewTextHandler(&buf, nil), slog.NewJSONHandler(&buf, nil)} {
		slog.New(h).Info("x", "pin", s, "signer", sig)
	}
	if strings.Contains(buf.String(), pin) {
		t.Errorf("slog leaks: %s", buf.String())
	}
}

func TestDiagnosticFormat(t *testing.T) {
	e := &Error{Diags: []Diagnostic{
		{Pos: "c.hcl:1:2", Summary: "first", Detail: "do this"},
		{Pos: "c.hcl:3:4", Summary: "second"},
	}}
	if got, want := e.Error(), "c.hcl:1:2: first; do this\nc.hcl:3:4: second"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	_, err := Parse([]byte("x = 1"), "")
	if err == nil || !strings.HasPrefix(err.Error(), "<config>:1:1: ") {
		t.Errorf("empty file name: %v", err)
	}
}
