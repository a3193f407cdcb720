package test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
)

// TestSlowClientsLetGo: clients that trickle bytes cannot hold a connection (a KMIP slot, an HTTP
// request) forever. KMIP: a message that has started must arrive within idle_timeout (3 s here),
// and a TCP connection that never finishes TLS is closed after handshake_timeout (2 s here). KES:
// headers within 10 s, the whole request within 20 s, over HTTP/1.1 and HTTP/2. The clients here
// send one byte per second, which would take minutes to finish.
func TestSlowClientsLetGo(t *testing.T) {
	b := newBridge(t, t.TempDir(), "slow")
	b.writeConfig(hcfg{signers: []string{"slow"}, kmip: "idle_timeout = \"3s\"\n  handshake_timeout = \"2s\""})
	b.startBin(binary)
	admin := b.adminClient()
	if err := kesWant(b.kesAs(admin), http.MethodPost, "/v1/key/create/slow", nil, http.StatusOK); err != nil {
		t.Fatal(err)
	}
	h1 := func() (*tls.Conn, error) {
		cfg := b.tlsFor(admin)
		cfg.NextProtos = []string{"http/1.1"}
		return tls.Dial("tcp", b.kes, cfg)
	}
	cases := []struct {
		name  string
		limit time.Duration                         // when the server must have let go, from the first byte
		run   func() (time.Duration, string, error) // runs on a goroutine of its own: errors, no t.Fatal
	}{
		{"KMIP message trickling after its header", 3 * time.Second, func() (time.Duration, string, error) {
			c, err := tls.Dial("tcp", b.kmip, b.tlsFor(admin))
			if err != nil {
				return 0, "", err
			}
			defer c.Close()
			// RequestMessage structure, 200 bytes announced.
			return trickle(c, []byte{0x42, 0x00, 0x78, 0x01, 0, 0, 0, 200}, strings.Repeat("\x42", 200))
		}},
		{"KMIP connection that never finishes TLS", 2 * time.Second, func() (time.Duration, string, error) {
			c, err := net.Dial("tcp", b.kmip)
			if err != nil {
				return 0, "", err
			}
			defer c.Close()
			return trickle(c, nil, strings.Repeat("\x16", 200))
		}},
		{"KES headers over HTTP/1.1", 10 * time.Second, func() (time.Duration, string, error) {
			c, err := h1()
			if err != nil {
				return 0, "", err
			}
			defer c.Close()
			return trickle(c, []byte("GET /v1/key/list/* HTTP/1.1\r\nHost: p11bridge\r\n"), "X-Slow: "+strings.Repeat("a", 200))
		}},
		{"KES body over HTTP/1.1", 20 * time.Second, func() (time.Duration, string, error) {
			c, err := h1()
			if err != nil {
				return 0, "", err
			}
			defer c.Close()
			return trickle(c, []byte("POST /v1/key/generate/slow HTTP/1.1\r\nHost: p11bridge\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"),
				`{"context":"`+strings.Repeat("A", 186)+`"}`)
		}},
		{"KES body over HTTP/2", 20 * time.Second, func() (time.Duration, string, error) {
			pr, pw := io.Pipe()
			go func() {
				for i := 0; i < 200; i++ {
					if _, err := pw.Write([]byte{'A'}); err != nil {
						return
					}
					time.Sleep(time.Second)
				}
				pw.Close()
			}()
			defer pw.Close()
			k := b.kesAs(admin)
			req, _ := http.NewRequest(http.MethodPost, k.base+"/v1/key/generate/slow", pr)
			start := time.Now()
			resp, err := k.c.Do(req)
			if err != nil {
				return time.Since(start), err.Error(), nil
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return time.Since(start), fmt.Sprintf("%s %s %s", resp.Proto, resp.Status, strings.TrimSpace(string(body))), nil
		}},
	}
	// All at once (not t.Parallel, which -parallel bounds to the CPU count): the test takes as long
	// as the longest deadline.
	type result struct {
		took time.Duration
		how  string
		err  error
	}
	results := make([]chan result, len(cases))
	for i, c := range cases {
		results[i] = make(chan result, 1)
		go func() {
			took, how, err := c.run()
			results[i] <- result{took, how, err}
		}()
	}
	for i, c := range cases {
		r := <-results[i]
		if r.err != nil {
			t.Errorf("%s: %v", c.name, r.err)
			continue
		}
		if r.took > c.limit+3*time.Second {
			t.Errorf("%s: the server held on for %.1f s (limit %.0f s): %s", c.name, r.took.Seconds(), c.limit.Seconds(), r.how)
		}
		t.Logf("%s: let go after %.1f s (limit %.0f s): %s", c.name, r.took.Seconds(), c.limit.Seconds(), r.how)
	}
}

// kesGauge reads one unlabelled series of the KES /v1/metrics.
func kesGauge(t *testing.T, k *kesHTTP, name string) float64 {
	t.Helper()
	st, body, err := k.do(http.MethodGet, "/v1/metrics", nil)
	if err != nil || st != http.StatusOK {
		t.Fatalf("/v1/metrics: %d %v", st, err)
	}
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	t.Fatalf("/v1/metrics has no %s", name)
	return 0
}

// trickle writes head at once, then body one byte a second, until the server closes the
// connection or answers; it returns how long that took and what the server said.
func trickle(c net.Conn, head []byte, body string) (time.Duration, string, error) {
	start := time.Now()
	if len(head) > 0 {
		if _, err := c.Write(head); err != nil {
			return 0, "", err
		}
	}
	answer := make(chan string, 1)
	go func() {
		r := bufio.NewReader(c)
		line, err := r.ReadString('\n')
		if err != nil && line == "" {
			answer <- "closed (" + err.Error() + ")"
			return
		}
		io.Copy(io.Discard, r)
		answer <- "answered " + strings.TrimSpace(line) + ", then closed"
	}()
	for i := 0; i < len(body); i++ {
		select {
		case a := <-answer:
			return time.Since(start), a, nil
		case <-time.After(time.Second):
		}
		if _, err := c.Write([]byte{body[i]}); err != nil {
			return time.Since(start), "write failed: " + err.Error(), nil
		}
	}
	return time.Since(start), "the server read all of it", nil
}

// TestInFlightCapPerIdentity: with serve --max-in-flight 4, an identity with four key operations
// running (KES requests whose bodies are still coming) is refused a fifth on either front end
// (KES 429, KMIP General Failure, both saying why), another identity is served meanwhile, and
// the first is served again once its requests end.
func TestInFlightCapPerIdentity(t *testing.T) {
	b := newBridge(t, t.TempDir(), "cap")
	other := b.issueClient("other")
	// keys grants the other identity the use of the admin's key "cap".
	b.writeConfig(hcfg{signers: []string{"cap"}, policies: fmt.Sprintf("policy \"other\" {\n  allow = [\"/v1/key/*\"]\n  kmip = [\"*\"]\n  keys = [\"cap\", \"cap-*\"]\n  identities = [%q]\n}\n", other.id)})
	b.startBin(binary, "--max-in-flight", "4")
	admin := b.adminClient()
	ka, ko := b.kesAs(admin), b.kesAs(other)
	if err := kesWant(ka, http.MethodPost, "/v1/key/create/cap", nil, http.StatusOK); err != nil {
		t.Fatal(err)
	}
	ca, err := b.kmipAs(admin)
	if err != nil {
		t.Fatal(err)
	}
	co, err := b.kmipAs(other)
	if err != nil {
		t.Fatal(err)
	}

	// Four requests of the admin stay in flight: headers sent, body not finished.
	var held []*tls.Conn
	for i := 0; i < 4; i++ {
		cfg := b.tlsFor(admin)
		cfg.NextProtos = []string{"http/1.1"}
		c, err := tls.Dial("tcp", b.kes, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("POST /v1/key/generate/cap HTTP/1.1\r\nHost: p11bridge\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{")); err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	// Wait until the server has the four in its handler (its own gauge, read through a route that
	// is not a key operation and so not counted against the cap).
	active := 0.0
	for deadline := time.Now().Add(10 * time.Second); active < 5 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		active = kesGauge(t, ka, "kes_http_request_active") // the four, and this request
	}
	_, st, msg, err := ka.generate("cap", nil)
	if err != nil || st != http.StatusTooManyRequests || !strings.Contains(msg, "too many requests in flight") {
		t.Fatalf("a fifth KES request of the same identity, with %.0f requests active: %d %s %v", active, st, msg, err)
	}
	if _, err := ca.Create().AES(256, kmip.CryptographicUsageEncrypt).Exec(); err == nil || !strings.Contains(err.Error(), "GeneralFailure") || !strings.Contains(err.Error(), "too many requests in flight") {
		t.Fatalf("a KMIP request of the same identity: %v", err)
	}
	if _, st, msg, err := ko.generate("cap", nil); err != nil || st != http.StatusOK {
		t.Fatalf("another identity's KES request: %d %s %v", st, msg, err)
	}
	if _, err := co.Create().AES(256, kmip.CryptographicUsageEncrypt).WithName("cap-other").Exec(); err != nil {
		t.Fatalf("another identity's KMIP request: %v", err)
	}
	// The held requests finish; the admin is served again.
	for i, c := range held {
		if _, err := c.Write([]byte("}")); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || !strings.Contains(line, "200") {
			t.Fatalf("held request %d: %q %v", i, line, err)
		}
	}
	if _, st, msg, err := ka.generate("cap", nil); err != nil || st != http.StatusOK {
		t.Fatalf("after its requests ended: %d %s %v", st, msg, err)
	}
	if _, err := ca.Create().AES(256, kmip.CryptographicUsageEncrypt).Exec(); err != nil {
		t.Fatalf("KMIP after its requests ended: %v", err)
	}
	t.Logf("cap 4: the fifth request was refused on KES (429 %q) and KMIP, another identity was served, service resumed after the four ended", msg)
}
