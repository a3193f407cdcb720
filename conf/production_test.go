package conf

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestProduction: what production mode refuses in a valid file, each at its position with a
// hint, and what it accepts.
func TestProduction(t *testing.T) {
	const pin = "Pr0dPIN-31337"
	t.Setenv("P11BRIDGE_TEST_PROD_PIN", pin)
	head := []string{km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`}
	cases := []struct {
		name  string
		src   string
		files map[string]os.FileMode // created with that mode, holding the PIN
		want  []string               // "line:col: " + start of "summary; detail"
	}{
		{name: "env PIN", src: cat(head, `  pin = env("P11BRIDGE_TEST_PROD_PIN")`, `}`)},
		{name: "pin_file 0600", src: cat(head, `  pin_file = "pin"`, `}`), files: map[string]os.FileMode{"pin": 0o600}},
		{name: "pin_file 0400", src: cat(head, `  pin_file = "pin"`, `}`), files: map[string]os.FileMode{"pin": 0o400}},
		{name: "literal PIN", src: cat(head, `  pin = "`+pin+`"`, `}`),
			want: []string{`5:9: the PIN of signer "a" is written in the config file; production mode reads PINs from the environment or a private file: write pin = env("P11BRIDGE_PIN_A")`}},
		{name: "PIN built from env in a template", src: cat(head, `  pin = "${env("P11BRIDGE_TEST_PROD_PIN")}"`, `}`),
			want: []string{`5:9: the PIN of signer "a" is written in the config file; `}},
		{name: "pin_file readable by the group", src: cat(head, `  pin_file = "pin"`, `}`), files: map[string]os.FileMode{"pin": 0o640},
			want: []string{`5:14: the pin_file of signer "a" is open to other users (mode 0640); production mode needs mode 0600 or stricter: chmod 600 `}},
		{name: "pin_file world-readable", src: cat(head, `  pin_file = "pin"`, `}`), files: map[string]os.FileMode{"pin": 0o644},
			want: []string{`5:14: the pin_file of signer "a" is open to other users (mode 0644); `}},
		{name: "key file 0640", src: cat(head, `  pin_file = "pin"`, `}`, `tls {`, `  cert = "c.pem"`, `  key = "k.pem"`, `}`),
			files: map[string]os.FileMode{"pin": 0o600, "k.pem": 0o640}},
		{name: "key file world-readable", src: cat(head, `  pin_file = "pin"`, `}`, `tls {`, `  cert = "c.pem"`, `  key = "k.pem"`, `}`),
			files: map[string]os.FileMode{"pin": 0o600, "k.pem": 0o644},
			want:  []string{`9:9: the TLS key file <dir>/k.pem is world-readable (mode 0644); production mode refuses it: chmod o-r <dir>/k.pem, or keep the key in a token`}},
		{name: "key in a token", src: cat(head, `  pin_file = "pin"`, `}`, `tls {`, `  cert = "c.pem"`, `  key = "pkcs11:token=a;object=tls"`, `}`),
			files: map[string]os.FileMode{"pin": 0o600}},
		{name: "keymap world-readable", src: cat(`keymap { path = "k.csv" }`, head[1:], `  pin_file = "pin"`, `}`),
			files: map[string]os.FileMode{"pin": 0o600, "k.csv": 0o644},
			want:  []string{`1:17: the keymap file <dir>/k.csv is world-readable (mode 0644); it tells which keys exist`}},
		{name: "keymap 0600", src: cat(`keymap { path = "k.csv" }`, head[1:], `  pin_file = "pin"`, `}`),
			files: map[string]os.FileMode{"pin": 0o600, "k.csv": 0o600}},
		{name: "plaintext KES", src: cat(head, `  pin_file = "pin"`, `}`, `kes {`, `  plaintext = true`, `  proxy {`, `  }`, `}`),
			files: map[string]os.FileMode{"pin": 0o600},
			want:  []string{`8:15: the KES listener is plaintext (plaintext = true); production mode serves the KES API over TLS only`}},
		{name: "everything at once, in file order", src: cat(`keymap { path = "k.csv" }`, head[1:], `  pin = "`+pin+`"`, `}`,
			`tls {`, `  cert = "c.pem"`, `  key = "k.pem"`, `}`, `kes {`, `  plaintext = true`, `  proxy {`, `  }`, `}`),
			files: map[string]os.FileMode{"k.csv": 0o666, "k.pem": 0o604},
			want: []string{
				`1:17: the keymap file <dir>/k.csv is world-readable (mode 0666)`,
				`5:9: the PIN of signer "a" is written in the config file`,
				`9:9: the TLS key file <dir>/k.pem is world-readable (mode 0604)`,
				`12:15: the KES listener is plaintext`,
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, mode := range c.files {
				p := filepath.Join(dir, name)
				if err := os.WriteFile(p, []byte(pin+"\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(p, mode); err != nil {
					t.Fatal(err)
				}
			}
			file := filepath.Join(dir, "c.hcl")
			cfg, err := Parse([]byte(c.src), file)
			if err != nil {
				t.Fatalf("the file must be valid: %v", err)
			}
			perr := cfg.Production()
			if len(c.want) == 0 {
				if perr != nil {
					t.Fatalf("refused:\n%v", perr)
				}
				return
			}
			var ce *Error
			if !errors.As(perr, &ce) {
				t.Fatalf("Production() = %v (%T), want *Error", perr, perr)
			}
			if len(ce.Diags) != len(c.want) {
				t.Fatalf("got %d diagnostics, want %d:\n%v", len(ce.Diags), len(c.want), perr)
			}
			for i, w := range c.want {
				got := strings.TrimPrefix(ce.Diags[i].String(), file+":")
				if w = strings.ReplaceAll(w, "<dir>", dir); !strings.HasPrefix(got, w) {
					t.Errorf("diagnostic %d:\ngot  %s\nwant %s…", i, got, w)
				}
			}
			if strings.Contains(perr.Error(), pin) {
				t.Errorf("the PIN appears in:\n%v", perr)
			}
		})
	}
}

// TestRevokedFile: identities from the file join those of the list; bad lines are reported at
// their own line and column in the revoked file.
func TestRevokedFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "c.hcl")
	rev := filepath.Join(dir, "revoked.txt")
	src := cat(km, `tls {`, `  cert = "c.pem"`, `  key = "k.pem"`, `  revoked = ["`+id1+`"]`, `  revoked_file = "revoked.txt"`, `}`)
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(rev, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("# revoked after the laptop was lost\n" + id2 + "\n\n  " + id1 + "  # also in the list\n" + id3 + "\r\n")
	cfg, err := Parse([]byte(src), file)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cfg.TLS.Revoked, ","); got != id1+","+id2+","+id3 || cfg.TLS.RevokedFile != rev {
		t.Errorf("revoked %s from %q", got, cfg.TLS.RevokedFile)
	}

	write(id2 + "\n  " + strings.ToUpper(id3) + "\nnot-an-identity # comment\n")
	_, err = Parse([]byte(src), file)
	want := rev + `:2:3: bad identity "` + strings.ToUpper(id3) + `" in the revoked_file; write it in lowercase; lines are identities, blank, or # comments` + "\n" +
		rev + `:3:1: bad identity "not-an-identity" in the revoked_file; an identity is 64 lowercase hex digits`
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("got\n%v\nwant\n%s…", err, want)
	}

	write(strings.Repeat("x\n", 50))
	_, err = Parse([]byte(src), file)
	var ce *Error
	if !errors.As(err, &ce) || len(ce.Diags) != maxRevokedDiags+1 ||
		ce.Diags[maxRevokedDiags].String() != file+`:6:18: the revoked_file has 40 more bad lines; is it the right file?` {
		t.Errorf("a wrong file gives a capped report, got:\n%v", err)
	}
}

// The ops listener is plain HTTP without authentication: production mode takes it on loopback only,
// unless it is served with client certificates (which needs the tls block) or declared public.
func TestProductionOpsListener(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		body, want string
	}{
		{`listen { ops = "127.0.0.1:9464" }`, ""},
		{`listen { ops = "[::1]:9464" }`, ""},
		{`listen { ops = "localhost:9464" }`, ""},
		{`listen { ops = "0.0.0.0:9464" }`, "reachable from the network without authentication"},
		{`listen { ops = "10.1.2.3:9464" }`, "reachable from the network without authentication"},
		{"listen { ops = \"0.0.0.0:9464\" }\nops { public = true }", ""},
		{"listen { ops = \"0.0.0.0:9464\" }\nops { tls = true }\ntls {\n  cert = \"c.pem\"\n  key = \"k.pem\"\n}", ""},
	} {
		path := filepath.Join(dir, "c.hcl")
		if err := os.WriteFile(path, []byte(c.body+"\nkeymap { path = \"km.csv\" }\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := Load(path)
		if err != nil {
			t.Fatalf("%q: %v", c.body, err)
		}
		perr := cfg.Production()
		switch {
		case c.want == "" && perr != nil:
			t.Errorf("%q: production refuses: %v", c.body, perr)
		case c.want != "" && (perr == nil || !strings.Contains(perr.Error(), c.want)):
			t.Errorf("%q: production says %v, want %q", c.body, perr, c.want)
		}
	}
	// tls needs the certificate; tls and public together make no sense.
	for body, want := range map[string]string{
		"listen { ops = \"0.0.0.0:9464\" }\nops { tls = true }":                      "the ops listener needs TLS",
		"listen { ops = \"0.0.0.0:9464\" }\nops {\n  tls = true\n  public = true\n}": "both tls and public",
	} {
		path := filepath.Join(dir, "bad.hcl")
		if err := os.WriteFile(path, []byte(body+"\nkeymap { path = \"km.csv\" }\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", body, err, want)
		}
	}
}
