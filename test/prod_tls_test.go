package test

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	kesclient "github.com/minio/kms-go/kes"
	"github.com/ovh/kmip-go/kmipclient"

	"github.com/p11bridge/p11bridge/server/pki"
)

// TestTLSReloadKeepsConnections: SIGHUP swaps the server certificate and key, the revoked list
// and min_version for new connections; connections already open stay open. A revoked identity
// loses its rights at once, even on a KMIP connection it already holds.
func TestTLSReloadKeepsConnections(t *testing.T) {
	b := newBridge(t, t.TempDir(), "reload-tls")
	revoked := filepath.Join(b.dir, "revoked.txt")
	os.WriteFile(revoked, []byte("# none yet\n"), 0o644)
	alice := b.issueFiles("alice", pki.Client)
	cfg := prodConfig{signer: "reload-tls", tls: []string{`revoked_file = "revoked.txt"`},
		extra: fmt.Sprintf("policy \"alice\" {\n  kmip = [\"*\"]\n  allow = [\"/v1/*\"]\n  identities = [%q]\n}\n", alice)}
	b.writeProd(cfg)
	b.start()

	c, dials := b.countingKMIP(b.tlsConfigAs("alice"))
	created, err := c.Create().AES(256, 0).Exec()
	if err != nil {
		t.Fatal(err)
	}
	kc := kesclient.NewClientWithConfig("https://"+b.kes, b.tlsConfigAs("alice"))
	if err := kc.CreateKey(ctxBG, "alice-key"); err != nil {
		t.Fatal(err)
	}
	before := b.serverLeaf(b.kmip)

	// A new server certificate and key, same names, same CA.
	b.issueFiles("server", pki.Server, "127.0.0.1", "localhost")
	if ok, log := b.reload(); !ok {
		t.Fatalf("reload refused:\n%s", log)
	}
	for _, addr := range []string{b.kmip, b.kes} {
		if after := b.serverLeaf(addr); after.SerialNumber.Cmp(before.SerialNumber) == 0 {
			t.Errorf("%s still presents the old certificate after the reload", addr)
		}
	}
	if _, err := c.GetAttributes(created.UniqueIdentifier).Exec(); err != nil || dials.Load() != 1 {
		t.Fatalf("the KMIP connection opened before the reload: %v, %d dials", err, dials.Load())
	}
	if _, err := kc.DescribeKey(ctxBG, "alice-key"); err != nil {
		t.Fatalf("KES after the reload: %v", err)
	}

	// Revoke alice: her open KMIP connection is refused from the next operation, new
	// connections and KES requests at once.
	os.WriteFile(revoked, []byte("# laptop lost\n"+alice+"\n"), 0o644)
	if ok, log := b.reload(); !ok || !strings.Contains(log, "revoked_identities=1") {
		t.Fatalf("reload with a revoked identity:\n%s", log)
	}
	if _, err := c.GetAttributes(created.UniqueIdentifier).Exec(); err == nil || !strings.Contains(err.Error(), "PermissionDenied") {
		t.Errorf("a revoked identity's open KMIP connection: %v", err)
	}
	if _, err := kc.DescribeKey(ctxBG, "alice-key"); !errors.Is(err, kesclient.ErrNotAllowed) {
		t.Errorf("a revoked identity over KES: %v", err)
	}
	if c2, err := kmipclient.Dial(b.kmip, kmipclient.WithTlsConfig(b.tlsConfigAs("alice"))); err == nil {
		_, err = c2.GetAttributes(created.UniqueIdentifier).Exec()
		c2.Close()
		if err == nil {
			t.Error("a revoked identity opened a new KMIP connection")
		}
	}
	if _, err := b.kmipClient().GetAttributes(created.UniqueIdentifier).Exec(); err != nil {
		t.Errorf("the admin after alice's revocation: %v", err)
	}
	if !strings.Contains(b.proc.Output(), "client certificate identity "+alice+" is revoked") {
		t.Errorf("the log does not say why alice was refused:\n%s", b.proc.Output())
	}

	// Un-revoke, and raise min_version to 1.3: TLS 1.2 clients are refused from then on.
	os.WriteFile(revoked, nil, 0o644)
	cfg.tls = append(cfg.tls, `min_version = "1.3"`)
	b.writeProd(cfg)
	tls12 := b.tlsConfigAs("alice")
	tls12.MaxVersion = tls.VersionTLS12
	if conn, err := tls.Dial("tcp", b.kes, tls12); err != nil {
		t.Fatalf("TLS 1.2 before min_version 1.3: %v", err)
	} else {
		conn.Close()
	}
	if ok, log := b.reload(); !ok {
		t.Fatalf("reload:\n%s", log)
	}
	if conn, err := tls.Dial("tcp", b.kes, tls12); err == nil {
		conn.Close()
		t.Error("a TLS 1.2 client connected after min_version 1.3 was loaded")
	}
	if _, err := kc.DescribeKey(ctxBG, "alice-key"); err != nil {
		t.Errorf("alice after un-revoking: %v", err)
	}
}

// sClient runs openssl s_client against addr with the admin certificate and an HTTP request,
// and returns its output: whether the server accepted the handshake shows as an HTTP answer.
func (b *bridge) sClient(addr string, args ...string) string {
	b.t.Helper()
	base := []string{"s_client", "-connect", addr, "-cert", filepath.Join(b.dir, "admin.pem"), "-key", filepath.Join(b.dir, "admin-key.pem"),
		"-CAfile", filepath.Join(b.dir, "ca.pem"), "-verify_return_error", "-ign_eof"}
	cmd := exec.Command("openssl", append(base, args...)...)
	cmd.Stdin = strings.NewReader("GET /version HTTP/1.1\r\nHost: p11bridge\r\nConnection: close\r\n\r\n")
	out, _ := cmd.CombinedOutput()
	return string(out)
}

func sessionField(out, name string) string {
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), ":"); ok && strings.TrimSpace(k) == name {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// TestFIPSWithOpenSSL: with fips = true, clients that offer only non-approved suites or curves
// are refused, a client preferring ChaCha20-Poly1305 gets TLS 1.2 with AES-GCM, and ordinary
// clients get TLS 1.3 with AES-GCM. The same client succeeds without fips.
func TestFIPSWithOpenSSL(t *testing.T) {
	b := newBridge(t, t.TempDir(), "fips")
	cfg := prodConfig{signer: "fips", tls: []string{"fips = true"}}
	b.writeProd(cfg)
	b.start()
	waitLog(t, b.proc, "TLS restricted to FIPS 140-approved suites and curves")
	accepted := func(out string) bool { return strings.Contains(out, "HTTP/1.1 200") }
	for _, c := range []struct {
		name           string
		args           []string
		ok             bool
		protocol, suit string
	}{
		{"default client", nil, true, "TLSv1.3", "TLS_AES_"},
		{"TLS 1.3 ChaCha20 only", []string{"-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"}, false, "", ""},
		{"ChaCha20 preferred, TLS 1.2 allowed", []string{"-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"}, true, "TLSv1.2", "ECDHE-ECDSA-AES"},
		{"TLS 1.2 ChaCha20 only", []string{"-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"}, false, "", ""},
		{"TLS 1.2 AES-CBC", []string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"}, false, "", ""},
		{"X25519 only", []string{"-groups", "X25519"}, false, "", ""},
		{"P-384", []string{"-groups", "P-384"}, true, "TLSv1.3", "TLS_AES"},
	} {
		out := b.sClient(b.kes, c.args...)
		if accepted(out) != c.ok {
			t.Errorf("%s: accepted %v, want %v\n%s", c.name, accepted(out), c.ok, out)
			continue
		}
		if c.ok && (sessionField(out, "Protocol") != c.protocol || !strings.HasPrefix(sessionField(out, "Cipher"), c.suit)) {
			t.Errorf("%s: %s %s, want %s %s…", c.name, sessionField(out, "Protocol"), sessionField(out, "Cipher"), c.protocol, c.suit)
		}
	}
	// The KMIP listener has the same rules.
	if out := b.sClient(b.kmip, "-groups", "X25519"); !strings.Contains(out, "alert") && !strings.Contains(out, "Cipher is (NONE)") {
		t.Errorf("KMIP: X25519 only was not refused\n%s", out)
	}
	if out := b.sClient(b.kmip); !strings.HasPrefix(sessionField(out, "Cipher"), "TLS_AES_") {
		t.Errorf("KMIP: default client\n%s", out)
	}

	cfg.tls = nil
	b.writeProd(cfg)
	if ok, log := b.reload(); !ok {
		t.Fatalf("reload:\n%s", log)
	}
	if out := b.sClient(b.kes, "-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"); !accepted(out) {
		t.Errorf("without fips, a ChaCha20 client was refused:\n%s", out)
	}
}

// TestServerKeyInToken: the server's TLS key is generated in the token with pkcs11-tool, only its
// certificate is on disk, and both listeners serve with it, RSA and ECDSA, also after a reload.
func TestServerKeyInToken(t *testing.T) {
	for _, c := range []struct{ name, keyType string }{{"rsa", "rsa:2048"}, {"ecdsa", "EC:prime256v1"}} {
		t.Run(c.name, func(t *testing.T) {
			label := "tlskey-" + c.name
			b := newBridge(t, t.TempDir(), label)
			b.pkcs11Tool(label, "--keypairgen", "--key-type", c.keyType, "--label", "p11bridge-tls", "--id", "01")
			pub := b.tokenPublicKey(label, "p11bridge-tls")
			ca, err := pki.LoadCA(filepath.Join(b.dir, "ca.pem"), filepath.Join(b.dir, "ca-key.pem"))
			if err != nil {
				t.Fatal(err)
			}
			cert, err := ca.IssueFor("p11bridge", []string{"127.0.0.1", "localhost"}, pki.Server, pub)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(b.dir, "server.pem"), pki.CertPEM(cert), 0o644); err != nil {
				t.Fatal(err)
			}
			os.Remove(filepath.Join(b.dir, "server-key.pem")) // no server key on disk
			cfg := prodConfig{signer: label, key: "pkcs11:token=" + label + ";object=p11bridge-tls"}
			if c.name == "ecdsa" {
				cfg.tls = []string{"fips = true"}
			}
			b.writeProd(cfg)
			b.start()
			waitLog(t, b.proc, "TLS key in a token")
			for _, addr := range []string{b.kmip, b.kes} {
				if leaf := b.serverLeaf(addr); !leaf.Equal(cert) {
					t.Errorf("%s serves another certificate", addr)
				}
			}
			if _, err := b.kmipClient().Create().AES(256, 0).Exec(); err != nil {
				t.Fatalf("KMIP with the server key in the token: %v", err)
			}
			if err := b.kesClient().CreateKey(ctxBG, "k-"+c.name); err != nil {
				t.Fatalf("KES with the server key in the token: %v", err)
			}
			if ok, log := b.reload(); !ok {
				t.Fatalf("reload with the key in the token:\n%s", log)
			}
			if _, err := b.kesClient().DescribeKey(ctxBG, "k-"+c.name); err != nil {
				t.Fatalf("KES after the reload: %v", err)
			}
			if out := b.sClient(b.kes, "-tls1_2"); !strings.Contains(out, "HTTP/1.1 200") {
				t.Errorf("TLS 1.2 with the token key:\n%s", out)
			}
		})
	}
}
