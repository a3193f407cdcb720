package test

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ovh/kmip-go/kmipclient"

	"github.com/p11bridge/p11bridge/server/pki"
	"github.com/p11bridge/p11bridge/signer/softhsm"
)

// prodConfig is a production-style config for one of the bridge's tokens: what b.config writes,
// plus the options production deployments use.
type prodConfig struct {
	signer   string   // token label (also the signer name)
	pinLine  string   // "" = pin_file of the token (0600)
	key      string   // tls key; "" = server-key.pem
	tls      []string // more lines in the tls block
	kes      []string // lines in the kes block
	extra    string   // more top-level HCL
	noListen []string // listeners to leave out: "kmip", "kes"
}

func (b *bridge) writeProd(c prodConfig) {
	b.t.Helper()
	tok := b.tokens[c.signer]
	var s strings.Builder
	s.WriteString("listen {\n")
	for name, addr := range map[string]string{"kmip": b.kmip, "kes": b.kes} {
		if !contains(c.noListen, name) {
			fmt.Fprintf(&s, "  %s = %q\n", name, addr)
		}
	}
	fmt.Fprintf(&s, "  ops = %q\n}\n", b.ops)
	key := c.key
	if key == "" {
		key = "server-key.pem"
	}
	fmt.Fprintf(&s, "tls {\n  cert = \"server.pem\"\n  key = %q\n  client_ca = \"ca.pem\"\n", key)
	for _, l := range c.tls {
		fmt.Fprintf(&s, "  %s\n", l)
	}
	s.WriteString("}\n")
	pin := c.pinLine
	if pin == "" {
		pin = fmt.Sprintf("pin_file = %q", softhsm.PINFile(filepath.Dir(tok.Conf), tok.Label))
	}
	fmt.Fprintf(&s, "signer %q {\n  module = %q\n  token_label = %q\n  %s\n}\n", c.signer, tok.Module, tok.Label, pin)
	fmt.Fprintf(&s, "keymap { path = %q }\naudit { path = \"audit.log\" }\nadmin = %q\n", b.keymap, b.adminID)
	if len(c.kes) > 0 {
		fmt.Fprintf(&s, "kes {\n  %s\n}\n", strings.Join(c.kes, "\n  "))
	}
	s.WriteString(c.extra)
	if err := os.WriteFile(b.cfgPath, []byte(s.String()), 0o600); err != nil {
		b.t.Fatal(err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// issueFiles makes a client (or server) certificate from the bridge's CA and writes name.pem and
// name-key.pem next to the others; it returns the identity.
func (b *bridge) issueFiles(name string, usage pki.Usage, hosts ...string) string {
	b.t.Helper()
	ca, err := pki.LoadCA(filepath.Join(b.dir, "ca.pem"), filepath.Join(b.dir, "ca-key.pem"))
	if err != nil {
		b.t.Fatal(err)
	}
	c, k, err := ca.Issue(name, hosts, usage)
	if err != nil {
		b.t.Fatal(err)
	}
	if err := pki.WriteFiles(c, k, filepath.Join(b.dir, name+".pem"), filepath.Join(b.dir, name+"-key.pem")); err != nil {
		b.t.Fatal(err)
	}
	return pki.Identity(c)
}

// tlsConfigAs is the client TLS config of the certificate name.pem.
func (b *bridge) tlsConfigAs(name string) *tls.Config {
	b.t.Helper()
	c := b.tlsConfig()
	cert, err := tls.LoadX509KeyPair(filepath.Join(b.dir, name+".pem"), filepath.Join(b.dir, name+"-key.pem"))
	if err != nil {
		b.t.Fatal(err)
	}
	c.Certificates = []tls.Certificate{cert}
	return c
}

// countingKMIP is a KMIP client whose dials are counted: a kept connection is one dial.
func (b *bridge) countingKMIP(cfg *tls.Config) (*kmipclient.Client, *atomic.Int64) {
	b.t.Helper()
	var dials atomic.Int64
	c, err := kmipclient.Dial(b.kmip, kmipclient.WithTlsConfig(cfg), kmipclient.WithDialerUnsafe(func(ctx context.Context, addr string) (net.Conn, error) {
		dials.Add(1)
		return tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
	}))
	if err != nil {
		b.t.Fatalf("KMIP dial: %v", err)
	}
	b.t.Cleanup(func() { c.Close() })
	return c, &dials
}

// serverLeaf is the certificate the listener at addr presents now.
func (b *bridge) serverLeaf(addr string) *x509.Certificate {
	b.t.Helper()
	c, err := tls.Dial("tcp", addr, b.tlsConfig())
	if err != nil {
		b.t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0]
}

// waitLog waits until the process output contains s.
func waitLog(t *testing.T, p *proc, s string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(p.Output(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log after 20 s\n%s", s, p.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitExit waits for a process that must stop on its own (a refused start).
func waitExit(t *testing.T, p *proc) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(60 * time.Second):
		t.Fatalf("p11bridge still running after 60 s\n%s", p.Output())
	}
	return 0
}

// pkcs11Tool runs pkcs11-tool against a token of the bridge, logged in.
func (b *bridge) pkcs11Tool(label string, args ...string) string {
	b.t.Helper()
	tok := b.tokens[label]
	out, code := runTool(b.t, b.env, "pkcs11-tool", append([]string{"--module", tok.Module, "--token-label", tok.Label, "--login", "--pin", tok.PIN}, args...)...)
	if code != 0 {
		b.t.Fatalf("pkcs11-tool %v: %s", args, out)
	}
	return out
}

// tokenPublicKey reads a public key object from a token with pkcs11-tool (DER SubjectPublicKeyInfo).
func (b *bridge) tokenPublicKey(label, object string) crypto.PublicKey {
	b.t.Helper()
	der := filepath.Join(b.dir, object+".pub.der")
	b.pkcs11Tool(label, "--read-object", "--type", "pubkey", "--label", object, "--output-file", der)
	raw, err := os.ReadFile(der)
	if err != nil {
		b.t.Fatal(err)
	}
	pub, err := x509.ParsePKIXPublicKey(raw)
	if err != nil {
		b.t.Fatalf("public key of %s from pkcs11-tool: %v", object, err)
	}
	return pub
}
