package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/p11bridge/p11bridge/server/pki"
	"github.com/p11bridge/p11bridge/signer/softhsm"
)

// TestCheckSaysWhatIsWrong: a wrong PIN, a missing module and an unknown token label give three
// distinct, clear messages, and the PIN is never printed.
func TestCheckSaysWhatIsWrong(t *testing.T) {
	dir := t.TempDir()
	tok, err := softhsm.Ensure(filepath.Join(dir, "hsm"), "check-token")
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"SOFTHSM2_CONF=" + tok.Conf, "CHECK_PIN=" + tok.PIN, "WRONG_PIN=wrong-pin-31337"}
	write := func(name, signerBody string) string {
		path := filepath.Join(dir, name)
		cfg := fmt.Sprintf("signer \"hsm\" {\n%s\n}\nkeymap { path = \"km.csv\" }\n", signerBody)
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	good := write("good.hcl", fmt.Sprintf("module = %q\ntoken_label = %q\npin = env(\"CHECK_PIN\")", tok.Module, tok.Label))
	out, code := runCmd(t, env, "check", "--config", good)
	if code != 0 || !strings.Contains(out, "logged in") || !strings.Contains(out, "AES-GCM") {
		t.Fatalf("check of a good config: exit %d\n%s", code, out)
	}
	if strings.Contains(out, tok.PIN) {
		t.Fatalf("check printed the PIN:\n%s", out)
	}
	cases := []struct{ file, body, want string }{
		{"wrong-pin.hcl", fmt.Sprintf("module = %q\ntoken_label = %q\npin = env(\"WRONG_PIN\")", tok.Module, tok.Label), "wrong PIN"},
		{"no-module.hcl", "module = \"/opt/vendor/lib/libnothing.so\"\ntoken_label = \"x\"\npin = env(\"WRONG_PIN\")", "file does not exist"},
		{"no-token.hcl", fmt.Sprintf("module = %q\ntoken_label = \"no-such-label\"\npin = env(\"WRONG_PIN\")", tok.Module), "token not found"},
	}
	seen := map[string]bool{}
	for _, c := range cases {
		out, code := runCmd(t, env, "check", "--config", write(c.file, c.body))
		if code == 0 {
			t.Errorf("%s: check exited 0\n%s", c.file, out)
		}
		if !strings.Contains(out, c.want) {
			t.Errorf("%s: output does not say %q:\n%s", c.file, c.want, out)
		}
		if strings.Contains(out, "wrong-pin-31337") || strings.Contains(out, tok.PIN) {
			t.Errorf("%s: output shows a PIN:\n%s", c.file, out)
		}
		seen[strings.TrimSpace(out)] = true
	}
	if len(seen) != len(cases) {
		t.Error("the three failures did not give three distinct messages")
	}
}

// TestCheckReportsConfigErrors: a config mistake is reported with file:line:col.
func TestCheckReportsConfigErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.hcl")
	os.WriteFile(path, []byte("signer \"a\" {\n  module = \"/x.so\"\n  token_lable = \"t\"\n  pin = \"1234\"\n}\nkeymap { path = \"k.csv\" }\n"), 0o600)
	out, code := runCmd(t, nil, "check", "--config", path)
	if code == 0 || !strings.Contains(out, "bad.hcl:3:") || !strings.Contains(out, "token_label") {
		t.Fatalf("exit %d\n%s", code, out)
	}
	if strings.Contains(out, "1234") {
		t.Fatalf("the PIN appears in the diagnostics:\n%s", out)
	}
}

// TestIdentityCommand: the identity is what the notes' openssl pipeline computes.
func TestIdentityCommand(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("id test")
	if err != nil {
		t.Fatal(err)
	}
	c, k, err := ca.Issue("client", nil, pki.Client)
	if err != nil {
		t.Fatal(err)
	}
	certFile := filepath.Join(dir, "c.pem")
	if err := pki.WriteFiles(c, k, certFile, filepath.Join(dir, "k.pem")); err != nil {
		t.Fatal(err)
	}
	out, code := runCmd(t, nil, "identity", certFile)
	want, err := exec.Command("sh", "-c", "openssl x509 -in "+certFile+" -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum | cut -d' ' -f1").Output()
	if err != nil || code != 0 || strings.TrimSpace(out) != strings.TrimSpace(string(want)) {
		t.Fatalf("identity %q (exit %d), openssl says %q (%v)", out, code, want, err)
	}
	out, code = runCmd(t, nil, "identity", "/nonexistent.pem")
	if code == 0 || !strings.Contains(out, "no such file") {
		t.Fatalf("exit %d: %s", code, out)
	}
}
