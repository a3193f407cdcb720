package test

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	kesclient "github.com/minio/kms-go/kes"
	"github.com/ovh/kmip-go/kmipclient"

	"github.com/p11bridge/p11bridge/server/pki"
	"github.com/p11bridge/p11bridge/signer/softhsm"
)

// bridge is a p11bridge set up by a test: tokens, certificates, a config file, its clients.
type bridge struct {
	t              *testing.T
	dir            string
	tokens         map[string]*softhsm.Token
	adminID        string
	kmip, kes, ops string
	cfgPath        string
	keymap         string
	env            []string
	proc           *proc
}

// newBridge prepares tokens (labels) in one SoftHSM2 directory (SoftHSM reads its token directory
// when loaded, so every token a test uses is made up front), a CA, server and admin certificates in
// dir, and free addresses.
func newBridge(t *testing.T, dir string, labels ...string) *bridge {
	t.Helper()
	b := &bridge{t: t, dir: dir, tokens: map[string]*softhsm.Token{}, kmip: freeAddr(t), kes: freeAddr(t), ops: freeAddr(t)}
	for _, l := range labels {
		tok, err := softhsm.Ensure(filepath.Join(dir, "hsm"), l)
		if err != nil {
			t.Fatal(err)
		}
		b.tokens[l] = tok
		b.env = []string{"SOFTHSM2_CONF=" + tok.Conf}
	}
	if _, err := os.Stat(filepath.Join(dir, "ca.pem")); err != nil {
		ca, err := pki.NewCA("e2e CA")
		if err != nil {
			t.Fatal(err)
		}
		sc, sk, _ := ca.Issue("server", []string{"127.0.0.1", "localhost"}, pki.Server)
		ac, ak, _ := ca.Issue("admin", nil, pki.Client)
		for _, f := range []struct {
			name string
			c    *x509.Certificate
			k    crypto.Signer
		}{{"ca", ca.Cert, ca.Key}, {"server", sc, sk}, {"admin", ac, ak}} {
			if err := pki.WriteFiles(f.c, f.k, filepath.Join(dir, f.name+".pem"), filepath.Join(dir, f.name+"-key.pem")); err != nil {
				t.Fatal(err)
			}
		}
	}
	admin, err := pki.LoadCert(filepath.Join(dir, "admin.pem"))
	if err != nil {
		t.Fatal(err)
	}
	b.adminID = pki.Identity(admin)
	b.cfgPath = filepath.Join(dir, "p11bridge.hcl")
	b.keymap = filepath.Join(dir, "keymap.csv")
	return b
}

// config writes the config file: signers (in order), the default and an optional rollover signer.
func (b *bridge) config(signers []string, def, rollover string) {
	b.t.Helper()
	var s strings.Builder
	fmt.Fprintf(&s, "listen {\n  kmip = %q\n  kes = %q\n  ops = %q\n}\n", b.kmip, b.kes, b.ops)
	fmt.Fprintf(&s, "tls {\n  cert = \"server.pem\"\n  key = \"server-key.pem\"\n  client_ca = \"ca.pem\"\n}\n")
	for _, name := range signers {
		tok := b.tokens[name]
		fmt.Fprintf(&s, "signer %q {\n  module = %q\n  token_label = %q\n  pin_file = %q\n}\n", name, tok.Module, tok.Label, softhsm.PINFile(filepath.Dir(tok.Conf), tok.Label))
	}
	fmt.Fprintf(&s, "default_signer = %q\n", def)
	if rollover != "" {
		fmt.Fprintf(&s, "rollover_signer = %q\n", rollover)
	}
	fmt.Fprintf(&s, "keymap { path = %q }\naudit { path = \"audit.log\" }\nadmin = %q\n", b.keymap, b.adminID)
	if err := os.WriteFile(b.cfgPath, []byte(s.String()), 0o600); err != nil {
		b.t.Fatal(err)
	}
}

func (b *bridge) start() {
	b.t.Helper()
	b.proc = start(b.t, b.env, "serve", "--config", b.cfgPath)
	waitReady(b.t, b.proc, b.ops)
}

// reload sends SIGHUP through the CLI and waits until the server's log says what became of it.
func (b *bridge) reload() (applied bool, log string) {
	b.t.Helper()
	before := strings.Count(b.proc.Output(), "configuration reloaded") + strings.Count(b.proc.Output(), "configuration refused")
	if out, code := runCmd(b.t, b.env, "reload", "--config", b.cfgPath); code != 0 {
		b.t.Fatalf("reload: %s", out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		out := b.proc.Output()
		if strings.Count(out, "configuration reloaded")+strings.Count(out, "configuration refused") > before {
			return lastReload(out), out
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.t.Fatalf("no reload outcome in the log after 20 s\n%s", b.proc.Output())
	return false, ""
}

// lastReload says whether the newest reload line in the log is a success.
func lastReload(out string) bool {
	return strings.LastIndex(out, "configuration reloaded") > strings.LastIndex(out, "configuration refused")
}

func (b *bridge) tlsConfig() *tls.Config {
	b.t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(b.dir, "admin.pem"), filepath.Join(b.dir, "admin-key.pem"))
	if err != nil {
		b.t.Fatal(err)
	}
	ca, err := pki.LoadCert(filepath.Join(b.dir, "ca.pem"))
	if err != nil {
		b.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}
}

func (b *bridge) kmipClient() *kmipclient.Client {
	b.t.Helper()
	c, err := kmipclient.Dial(b.kmip, kmipclient.WithTlsConfig(b.tlsConfig()))
	if err != nil {
		b.t.Fatalf("KMIP dial: %v", err)
	}
	b.t.Cleanup(func() { c.Close() })
	return c
}

func (b *bridge) kesClient() *kesclient.Client {
	return kesclient.NewClientWithConfig("https://"+b.kes, b.tlsConfig())
}

// onToken says whether the token labelled label holds an object whose CKA_ID is the hex tag id,
// as pkcs11-tool sees it.
func (b *bridge) onToken(label, id string) bool {
	b.t.Helper()
	return tokenIDs(b.t, b, label)[strings.TrimSuffix(id, "-pub")]
}

var ctxBG = context.Background()
