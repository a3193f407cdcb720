package test

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/p11bridge/p11bridge/server/pki"
)

// TestProductionModeRefuses: `serve` refuses a PIN written in the config and a world-readable
// key, each at its file:line:col, without showing the PIN; `check` says the same; `serve --dev`
// runs the same file and says what it relaxes; a reload cannot bring a refused setting in.
func TestProductionModeRefuses(t *testing.T) {
	b := newBridge(t, t.TempDir(), "strict")
	tok := b.tokens["strict"]
	keyFile := filepath.Join(b.dir, "server-key.pem")
	if err := os.Chmod(keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	b.writeProd(prodConfig{signer: "strict", pinLine: fmt.Sprintf("pin = %q", tok.PIN)})

	p := start(t, b.env, "serve", "--config", b.cfgPath)
	if code := waitExit(t, p); code == 0 {
		t.Fatalf("serve accepted the config\n%s", p.Output())
	}
	out := p.Output()
	for _, want := range []string{
		"production mode refuses this configuration (p11bridge dev and serve --dev relax these checks)",
		b.cfgPath + `:14:9: the PIN of signer "strict" is written in the config file; production mode reads PINs from the environment or a private file: write pin = env("P11BRIDGE_PIN_STRICT")`,
		b.cfgPath + ":8:9: the TLS key file " + keyFile + " is world-readable (mode 0644)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("serve output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, tok.PIN) {
		t.Fatalf("the PIN appears in the output:\n%s", out)
	}
	if out, code := runCmd(t, b.env, "check", "--config", b.cfgPath); code == 0 || !strings.Contains(out, "FAIL production mode (p11bridge serve) refuses") ||
		!strings.Contains(out, "the PIN of signer") || strings.Contains(out, tok.PIN) {
		t.Errorf("check: exit %d\n%s", code, out)
	}
	if out, code := runCmd(t, b.env, "check", "--dev", "--config", b.cfgPath); code != 0 || !strings.Contains(out, "dev mode accepts what production mode would refuse") {
		t.Errorf("check --dev: exit %d\n%s", code, out)
	}

	dev := start(t, b.env, "serve", "--dev", "--config", b.cfgPath)
	waitReady(t, dev, b.ops)
	for _, want := range []string{"dev mode relaxes production checks", "dev mode accepts what production mode refuses", "is written in the config file"} {
		if !strings.Contains(dev.Output(), want) {
			t.Errorf("serve --dev does not say %q:\n%s", want, dev.Output())
		}
	}
	if _, err := b.kmipClient().Create().AES(256, 0).Exec(); err != nil {
		t.Fatalf("KMIP under serve --dev: %v", err)
	}
	dev.stop(t)

	// Fixed: production mode starts. Then a reload that makes the keymap world-readable is refused.
	os.Chmod(keyFile, 0o600)
	b.writeProd(prodConfig{signer: "strict"})
	b.start()
	if out, code := runCmd(t, b.env, "check", "--config", b.cfgPath); code != 0 || !strings.Contains(out, "production checks: ok") ||
		!strings.Contains(out, "KES  yes  keys: create, generate, encrypt, decrypt") || strings.Contains(out, " NO ") {
		t.Errorf("check of a production config on SoftHSM: exit %d\n%s", code, out)
	}
	if err := os.Chmod(b.keymap, 0o644); err != nil {
		t.Fatal(err)
	}
	if ok, log := b.reload(); ok || !strings.Contains(log, "the keymap file "+b.keymap+" is world-readable") {
		t.Fatalf("a reload with a world-readable keymap was applied:\n%s", log)
	}
	os.Chmod(b.keymap, 0o600)
}

// TestPlaintextKESOnlyInDevMode: a plaintext KES listener is refused in production; with --dev it
// serves plain HTTP, naming clients by the proxy header alone.
func TestPlaintextKESOnlyInDevMode(t *testing.T) {
	b := newBridge(t, t.TempDir(), "plain")
	b.writeProd(prodConfig{signer: "plain", kes: []string{"plaintext = true", "proxy {", "}"}})
	p := start(t, b.env, "serve", "--config", b.cfgPath)
	if code := waitExit(t, p); code == 0 || !strings.Contains(p.Output(), "the KES listener is plaintext (plaintext = true)") {
		t.Fatalf("serve with a plaintext KES listener: exit %d\n%s", code, p.Output())
	}
	dev := start(t, b.env, "serve", "--dev", "--config", b.cfgPath)
	waitReady(t, dev, b.ops)
	waitLog(t, dev, "KES listener without TLS")
	admin, err := pki.LoadCert(filepath.Join(b.dir, "admin.pem"))
	if err != nil {
		t.Fatal(err)
	}
	get := func(path, header string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+b.kes+path, nil)
		if header != "" {
			req.Header.Set("X-Tls-Client-Cert", header)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := get("/v1/identity/self/describe", url.QueryEscape(string(pki.CertPEM(admin)))); code != 200 || !strings.Contains(body, b.adminID) {
		t.Errorf("plaintext with the admin's certificate forwarded: %d %s", code, body)
	}
	if code, _ := get("/v1/key/list/*", ""); code != 403 {
		t.Errorf("plaintext without a forwarded certificate: %d", code)
	}
	if code, _ := get("/version", ""); code != 200 {
		t.Errorf("/version: %d", code)
	}
	dev.cmd.Process.Signal(syscall.SIGTERM)
	waitExit(t, dev)
}
