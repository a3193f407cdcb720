package test

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	kesclient "github.com/minio/kms-go/kes"

	"github.com/p11bridge/p11bridge/server/pki"
)

// startNginx runs nginx (Debian nginx-light, installed by scripts/deps.sh test) as a
// TLS-terminating proxy in front of the KES listener upstream: it asks clients for a certificate
// without judging it (optional_no_ca: KES API keys are self-signed), connects upstream with its own
// client certificate proxy.pem, and forwards the client's as $ssl_client_escaped_cert.
func startNginx(t *testing.T, b *bridge, listen, upstream string) {
	t.Helper()
	if _, err := exec.LookPath("nginx"); err != nil {
		t.Fatal("nginx is not installed; run scripts/deps.sh test")
	}
	dir := filepath.Join(b.dir, "nginx")
	os.MkdirAll(filepath.Join(dir, "tmp"), 0o700)
	f := func(name string) string { return filepath.Join(b.dir, name) }
	conf := fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections 64; }
http {
  access_log %[1]s/access.log;
  client_body_temp_path %[1]s/tmp/body;
  proxy_temp_path %[1]s/tmp/proxy;
  fastcgi_temp_path %[1]s/tmp/fastcgi;
  uwsgi_temp_path %[1]s/tmp/uwsgi;
  scgi_temp_path %[1]s/tmp/scgi;
  server {
    listen %[2]s ssl;
    ssl_certificate %[4]s;
    ssl_certificate_key %[5]s;
    ssl_verify_client optional_no_ca;
    location / {
      proxy_pass https://%[3]s;
      proxy_http_version 1.1;
      proxy_ssl_certificate %[6]s;
      proxy_ssl_certificate_key %[7]s;
      proxy_ssl_trusted_certificate %[8]s;
      proxy_ssl_verify on;
      proxy_ssl_name localhost;
      proxy_set_header X-Tls-Client-Cert $ssl_client_escaped_cert;
    }
  }
}
`, dir, listen, upstream, f("nginx.pem"), f("nginx-key.pem"), f("proxy.pem"), f("proxy-key.pem"), f("ca.pem"))
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: exec.Command("nginx", "-p", dir, "-c", path), done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("nginx error log:\n%s", log)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, err := tls.Dial("tcp", listen, &tls.Config{InsecureSkipVerify: true}); err == nil {
			c.Close()
			return
		}
		select {
		case <-p.done:
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx exited: %s\n%s", p.Output(), log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx not listening after 20 s: %s", p.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestKESBehindNginx: behind nginx terminating TLS, p11bridge authenticates the certificate nginx
// forwards (CA-issued, or a KES API key configured exactly), refuses unknown and missing ones,
// and ignores the header from anyone but the proxy.
func TestKESBehindNginx(t *testing.T) {
	b := newBridge(t, t.TempDir(), "proxied")
	proxyID := b.issueFiles("proxy", pki.Client)
	b.issueFiles("nginx", pki.Server, "127.0.0.1", "localhost")
	malloryID := b.issueFiles("mallory", pki.Client) // from the CA, allowed only /v1/status
	apiKey, apiID, err := pki.APIKey()
	if err != nil {
		t.Fatal(err)
	}
	b.writeProd(prodConfig{signer: "proxied",
		kes: []string{"proxy {", fmt.Sprintf("  identities = [%q]", proxyID), `  header = "X-Tls-Client-Cert"`, "}"},
		// keys grants the API key the use of the key the admin makes for it.
		extra: fmt.Sprintf("policy \"minio\" {\n  allow = [\"/v1/key/create/*\", \"/v1/key/generate/*\", \"/v1/key/decrypt/*\", \"/v1/status\"]\n  keys = [\"through-nginx\"]\n  identities = [%q]\n}\n", apiID) +
			fmt.Sprintf("policy \"mallory\" {\n  allow = [\"/v1/status\"]\n  identities = [%q]\n}\n", malloryID)})
	b.start()
	front := freeAddr(t)
	startNginx(t, b, front, b.kes)

	ca := b.tlsConfig().RootCAs
	viaProxy := func(cert *tls.Certificate) *tls.Config {
		c := &tls.Config{RootCAs: ca, MinVersion: tls.VersionTLS12}
		if cert != nil {
			c.Certificates = []tls.Certificate{*cert}
		}
		return c
	}
	self := func(cfg *tls.Config, addr string, header string) (int, string) {
		req, _ := http.NewRequest("GET", "https://"+addr+"/v1/identity/self/describe", nil)
		if header != "" {
			req.Header.Set("X-Tls-Client-Cert", header)
		}
		resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 20 * time.Second}).Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", addr, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var v struct {
			Identity string `json:"identity"`
		}
		json.Unmarshal(body, &v)
		return resp.StatusCode, v.Identity
	}
	load := func(name string) *tls.Certificate {
		c, err := tls.LoadX509KeyPair(filepath.Join(b.dir, name+".pem"), filepath.Join(b.dir, name+"-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		return &c
	}

	// The admin, through nginx: the forwarded certificate is the admin's.
	if code, id := self(viaProxy(load("admin")), front, ""); code != 200 || id != b.adminID {
		t.Errorf("admin through nginx: %d %q", code, id)
	}
	admin := kesclient.NewClientWithConfig("https://"+front, viaProxy(load("admin")))
	if err := admin.CreateKey(ctxBG, "through-nginx"); err != nil {
		t.Fatalf("admin creates a key through nginx: %v", err)
	}
	// A KES API key (self-signed Ed25519), configured exactly, as MinIO would use it through nginx.
	ak, err := kesclient.ParseAPIKey(apiKey)
	if err != nil {
		t.Fatal(err)
	}
	akCert, err := kesclient.GenerateCertificate(ak)
	if err != nil {
		t.Fatal(err)
	}
	minio := kesclient.NewClientWithConfig("https://"+front, viaProxy(&akCert))
	dek, err := minio.GenerateKey(ctxBG, "through-nginx", []byte("ctx"))
	if err != nil {
		t.Fatalf("API key through nginx: %v", err)
	}
	if pt, err := minio.Decrypt(ctxBG, "through-nginx", dek.Ciphertext, []byte("ctx")); err != nil || string(pt) != string(dek.Plaintext) {
		t.Fatalf("decrypt through nginx: %v", err)
	}
	if err := minio.DeleteKey(ctxBG, "through-nginx"); !errors.Is(err, kesclient.ErrNotAllowed) {
		t.Errorf("the API key's policy does not allow delete: %v", err)
	}
	// Certificates p11bridge does not accept, and none at all.
	stranger, err := pki.NewCA("stranger CA")
	if err != nil {
		t.Fatal(err)
	}
	sc, sk, _ := stranger.Issue("stranger", nil, pki.Client)
	strangerCert := &tls.Certificate{Certificate: [][]byte{sc.Raw}, PrivateKey: sk}
	if code, _ := self(viaProxy(strangerCert), front, ""); code != 403 {
		t.Errorf("an unknown certificate through nginx: %d", code)
	}
	if code, _ := self(viaProxy(nil), front, ""); code != 403 {
		t.Errorf("no certificate through nginx: %d", code)
	}
	// Mallory connects directly with her own certificate and forges the header with the admin's:
	// she is herself, and may do nothing.
	adminPEM, _ := os.ReadFile(filepath.Join(b.dir, "admin.pem"))
	if code, id := self(b.tlsConfigAs("mallory"), b.kes, url.QueryEscape(string(adminPEM))); code != 200 || id != malloryID {
		t.Errorf("a forged header from a non-proxy: %d %q, want mallory %s", code, id, malloryID)
	}
	mallory := kesclient.NewClientWithConfig("https://"+b.kes, b.tlsConfigAs("mallory"))
	if err := mallory.CreateKey(ctxBG, "mallory"); !errors.Is(err, kesclient.ErrNotAllowed) {
		t.Errorf("mallory with a forged header: %v", err)
	}
	// The proxy itself, without a forwarded certificate, is nobody.
	if code, _ := self(b.tlsConfigAs("proxy"), b.kes, ""); code != 403 {
		t.Errorf("the proxy without a forwarded certificate: %d", code)
	}
	if !strings.Contains(b.proc.Output(), "carries no X-Tls-Client-Cert header") {
		t.Errorf("the log does not say why the proxy's own request was refused:\n%s", b.proc.Output())
	}
}
