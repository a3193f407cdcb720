package test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestOpsListenerNotOpenByDefault: the ops listener (key counts, signer health, metrics) is plain
// HTTP without authentication, so production mode refuses it on an address others can reach,
// unless it is declared public or served with TLS and client certificates, where the admin and the
// identities whose policy allows "/ops/<path>" get in and nobody else does.
func TestOpsListenerNotOpenByDefault(t *testing.T) {
	b := newBridge(t, t.TempDir(), "ops")
	_, port, _ := net.SplitHostPort(b.ops)
	wide := "0.0.0.0:" + port
	b.ops = wide
	b.writeProd(prodConfig{signer: "ops"})
	p := start(t, b.env, "serve", "--config", b.cfgPath)
	if code := waitExit(t, p); code == 0 || !strings.Contains(p.Output(), "the ops listener \""+wide+"\" is reachable from the network without authentication") {
		t.Fatalf("serve with a plain ops listener on every interface: exit %d\n%s", code, p.Output())
	}

	// Declared public: served as before.
	b.ops = "127.0.0.1:" + port
	b.writeProd(prodConfig{signer: "ops", extra: "ops { public = true }\n"})
	b.start()
	b.proc.stop(t)

	// With TLS: client certificates, and the policies' "/ops/..." paths.
	metrics := b.issueClient("metrics-scraper")
	stranger := b.issueClient("stranger")
	b.writeProd(prodConfig{signer: "ops", extra: fmt.Sprintf("ops { tls = true }\npolicy \"scraper\" {\n  allow = [\"/ops/metrics\"]\n  identities = [%q]\n}\n", metrics.id)})
	p = start(t, b.env, "serve", "--config", b.cfgPath)
	get := func(id *clientID, path string) (int, error) {
		cfg := b.tlsFor(clientID{})
		if id != nil {
			cfg = b.tlsFor(*id)
		}
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
		resp, err := c.Get("https://" + b.ops + path)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	admin := b.adminClient()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if st, err := get(&admin, "/ready"); err == nil && st == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ops over TLS never ready\n%s", p.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, c := range []struct {
		who  *clientID
		path string
		want int
	}{
		{&admin, "/status", http.StatusOK},
		{&metrics, "/metrics", http.StatusOK},
		{&metrics, "/status", http.StatusForbidden},
		{&stranger, "/metrics", http.StatusForbidden},
	} {
		if st, err := get(c.who, c.path); err != nil || st != c.want {
			t.Errorf("%s %s: %d %v, want %d", c.who.name, c.path, st, err, c.want)
		}
	}
	if _, err := get(nil, "/metrics"); err == nil {
		t.Error("ops over TLS answered a client without a certificate")
	}
	if resp, err := http.Get("http://" + b.ops + "/metrics"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("ops over TLS answered plain HTTP")
		}
	}
}
