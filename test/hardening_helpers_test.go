package test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"

	"github.com/p11bridge/p11bridge/server/pki"
	"github.com/p11bridge/p11bridge/signer/softhsm"
)

// Helpers of the hardening tests (hardening_*_test.go): a configuration with policies, audit and
// limits; client identities; raw KES requests; process figures; the fault switch of p11fault builds.

// hcfg is what a hardening test puts in the config file beyond newBridge's defaults.
type hcfg struct {
	signers       []string // default: every token of the bridge, the first one default
	policies      string   // HCL policy blocks
	auditPath     string   // default audit.log in the bridge directory
	auditRequired bool
	kmip          string // attributes of the kmip block, e.g. `idle_timeout = "3s"`
	logLevel      string
}

// writeConfig writes the bridge's config file in production form (pin_file, client_ca).
func (b *bridge) writeConfig(c hcfg) {
	b.t.Helper()
	if len(c.signers) == 0 {
		for l := range b.tokens {
			c.signers = append(c.signers, l)
		}
		sort.Strings(c.signers)
	}
	var s strings.Builder
	fmt.Fprintf(&s, "listen {\n  kmip = %q\n  kes = %q\n  ops = %q\n}\n", b.kmip, b.kes, b.ops)
	fmt.Fprintf(&s, "tls {\n  cert = \"server.pem\"\n  key = \"server-key.pem\"\n  client_ca = \"ca.pem\"\n}\n")
	if c.logLevel != "" {
		fmt.Fprintf(&s, "log_level = %q\n", c.logLevel)
	}
	for _, name := range c.signers {
		tok := b.tokens[name]
		fmt.Fprintf(&s, "signer %q {\n  module = %q\n  token_label = %q\n  pin_file = %q\n}\n", name, tok.Module, tok.Label, softhsm.PINFile(filepath.Dir(tok.Conf), tok.Label))
	}
	fmt.Fprintf(&s, "default_signer = %q\n", c.signers[0])
	if c.auditPath == "" {
		c.auditPath = filepath.Join(b.dir, "audit.log")
	}
	fmt.Fprintf(&s, "keymap { path = %q }\naudit {\n  path = %q\n  required = %v\n}\nadmin = %q\n", b.keymap, c.auditPath, c.auditRequired, b.adminID)
	if c.kmip != "" {
		fmt.Fprintf(&s, "kmip {\n  %s\n}\n", c.kmip)
	}
	s.WriteString(c.policies)
	if err := os.WriteFile(b.cfgPath, []byte(s.String()), 0o600); err != nil {
		b.t.Fatal(err)
	}
}

// startBin runs bin (binary or faultBinary) as `serve --config` with extra arguments and waits
// until it is ready.
func (b *bridge) startBin(bin string, extra ...string) {
	b.t.Helper()
	b.proc = startProc(b.t, bin, b.env, append([]string{"serve", "--config", b.cfgPath}, extra...)...)
	waitReady(b.t, b.proc, b.ops)
}

// startProc is start for any binary.
func startProc(t *testing.T, bin string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, args...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// clientID is a client certificate and what it is called.
type clientID struct {
	name string
	id   string
	cert tls.Certificate
}

// issueClient makes a client certificate signed by the bridge's CA.
func (b *bridge) issueClient(name string) clientID {
	b.t.Helper()
	ca, err := pki.LoadCA(filepath.Join(b.dir, "ca.pem"), filepath.Join(b.dir, "ca-key.pem"))
	if err != nil {
		b.t.Fatal(err)
	}
	c, k, err := ca.Issue(name, nil, pki.Client)
	if err != nil {
		b.t.Fatal(err)
	}
	return clientID{name: name, id: pki.Identity(c), cert: tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: k, Leaf: c}}
}

// selfSigned makes a client certificate no CA vouches for.
func selfSigned(t *testing.T, name string) clientID {
	t.Helper()
	ca, err := pki.NewCA(name)
	if err != nil {
		t.Fatal(err)
	}
	c, k, err := ca.Issue(name, nil, pki.Client)
	if err != nil {
		t.Fatal(err)
	}
	return clientID{name: name, id: pki.Identity(c), cert: tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: k, Leaf: c}}
}

// adminClient is the bridge's admin identity.
func (b *bridge) adminClient() clientID {
	b.t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(b.dir, "admin.pem"), filepath.Join(b.dir, "admin-key.pem"))
	if err != nil {
		b.t.Fatal(err)
	}
	return clientID{name: "admin", id: b.adminID, cert: cert}
}

// tlsFor is a client TLS configuration presenting id (none when id.cert is empty).
func (b *bridge) tlsFor(id clientID) *tls.Config {
	b.t.Helper()
	ca, err := pki.LoadCert(filepath.Join(b.dir, "ca.pem"))
	if err != nil {
		b.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	c := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if len(id.cert.Certificate) > 0 {
		c.Certificates = []tls.Certificate{id.cert}
	}
	return c
}

// kmipAs dials the KMIP listener as id; the connection closes when the test ends.
func (b *bridge) kmipAs(id clientID) (*kmipclient.Client, error) {
	c, err := kmipclient.Dial(b.kmip, kmipclient.WithTlsConfig(b.tlsFor(id)))
	if err == nil {
		b.t.Cleanup(func() { closeKMIP(c) })
	}
	return c, err
}

// closeKMIP closes an ovh KMIP client. Its Close dereferences a nil connection once a reconnect
// has failed (the server was killed); that is no concern of the test.
func closeKMIP(c *kmipclient.Client) {
	defer func() { _ = recover() }()
	c.Close()
}

// kesHTTP is a KES client speaking HTTP/2 as MinIO's does, without kms-go's retries, so that a
// test sees every status the server sends.
type kesHTTP struct {
	base string
	c    *http.Client
}

func (b *bridge) kesAs(id clientID) *kesHTTP {
	tr := &http.Transport{TLSClientConfig: b.tlsFor(id), ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 4}
	b.t.Cleanup(tr.CloseIdleConnections)
	return &kesHTTP{base: "https://" + b.kes, c: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// do sends one request; body is marshalled to JSON unless nil. It returns the status and body.
func (k *kesHTTP) do(method, path string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		j, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, k.base+path, rd)
	if err != nil {
		return 0, nil, err
	}
	resp, err := k.c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, out, err
}

// kesMessage is the "message" of a KES error body.
func kesMessage(body []byte) string {
	var e struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &e) != nil {
		return string(body)
	}
	return e.Message
}

// dataKey is what KES generate answers.
type dataKey struct {
	Plaintext  []byte `json:"plaintext"`
	Ciphertext []byte `json:"ciphertext"`
}

// generate asks for a data key of key name with context ctx.
func (k *kesHTTP) generate(name string, ctx []byte) (dataKey, int, string, error) {
	st, body, err := k.do(http.MethodPost, "/v1/key/generate/"+name, map[string]any{"context": ctx})
	if err != nil || st != http.StatusOK {
		return dataKey{}, st, kesMessage(body), err
	}
	var dk dataKey
	err = json.Unmarshal(body, &dk)
	return dk, st, "", err
}

// decrypt opens a data key's ciphertext.
func (k *kesHTTP) decrypt(name string, ct, ctx []byte) ([]byte, int, string, error) {
	st, body, err := k.do(http.MethodPost, "/v1/key/decrypt/"+name, map[string]any{"ciphertext": ct, "context": ctx})
	if err != nil || st != http.StatusOK {
		return nil, st, kesMessage(body), err
	}
	var out struct {
		Plaintext []byte `json:"plaintext"`
	}
	err = json.Unmarshal(body, &out)
	return out.Plaintext, st, "", err
}

// procFigures are what the load tests watch of the server process.
type procFigures struct {
	rssKB, fds, goroutines int
}

func (f procFigures) String() string {
	return fmt.Sprintf("RSS %.1f MiB, %d open files, %d goroutines", float64(f.rssKB)/1024, f.fds, f.goroutines)
}

// figures reads RSS from /proc/PID/status, open files from /proc/PID/fd and goroutines from the
// ops listener's go_goroutines.
func (b *bridge) figures() procFigures {
	b.t.Helper()
	pid := b.proc.cmd.Process.Pid
	var f procFigures
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.t.Fatalf("read process status: %v", err)
	}
	for _, l := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			f.rssKB, _ = strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		b.t.Fatalf("list open files: %v", err)
	}
	f.fds = len(fds)
	f.goroutines = int(b.opsMetric("go_goroutines"))
	return f
}

// settledFigures samples five times over half a second and keeps the least goroutines and open
// files: under load a sample also counts the goroutines of requests in flight at that instant,
// while a leak shows in the ones that stay.
func (b *bridge) settledFigures() procFigures {
	b.t.Helper()
	f := b.figures()
	for i := 0; i < 4; i++ {
		time.Sleep(100 * time.Millisecond)
		g := b.figures()
		f.rssKB = g.rssKB
		f.goroutines = min(f.goroutines, g.goroutines)
		f.fds = min(f.fds, g.fds)
	}
	return f
}

// metric reads one unlabelled series from the ops /metrics.
func (b *bridge) opsMetric(name string) float64 {
	b.t.Helper()
	resp, err := http.Get("http://" + b.ops + "/metrics")
	if err != nil {
		b.t.Fatalf("ops metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				b.t.Fatalf("metric %s: %v", name, err)
			}
			return f
		}
	}
	b.t.Fatalf("ops /metrics has no %s", name)
	return 0
}

// opsReady is the status of the ops listener's /ready.
func (b *bridge) opsReady() int {
	resp, err := http.Get("http://" + b.ops + "/ready")
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// fault drives /debug/fault of a p11fault binary: inject code on calls (all when none), or clear
// with code 0.
func (b *bridge) fault(code uint, calls ...string) {
	b.t.Helper()
	method, q := http.MethodDelete, ""
	if code != 0 {
		method, q = http.MethodPost, fmt.Sprintf("?code=%#x&calls=%s", code, strings.Join(calls, ","))
	}
	req, _ := http.NewRequest(method, "http://"+b.ops+"/debug/fault"+q, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.t.Fatalf("fault switch: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.t.Fatalf("fault switch: %s", resp.Status)
	}
}

// callCount says how often the server made a PKCS#11 call (p11fault builds).
func (b *bridge) callCount(call string) int64 {
	b.t.Helper()
	resp, err := http.Get("http://" + b.ops + "/debug/fault?call=" + call)
	if err != nil {
		b.t.Fatalf("fault counts: %v", err)
	}
	defer resp.Body.Close()
	var out struct{ Count int64 }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		b.t.Fatalf("fault counts: %v", err)
	}
	return out.Count
}

// auditLines reads the JSON lines of an audit file.
func auditLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for i, l := range bytes.Split(data, []byte("\n")) {
		if len(bytes.TrimSpace(l)) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(l, &m); err != nil {
			t.Fatalf("%s line %d is not JSON: %v\n%s", path, i+1, err, l)
		}
		out = append(out, m)
	}
	return out
}

// tally is a set of named counts shared by load goroutines.
type tally struct {
	mu    sync.Mutex
	n     map[string]int
	first map[string]string
}

func newTally() *tally { return &tally{n: map[string]int{}, first: map[string]string{}} }

func (c *tally) add(name string, err string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[name]++
	if err != "" && c.first[name] == "" {
		c.first[name] = err
	}
}

func (c *tally) get(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[name]
}

func (c *tally) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var parts []string
	for k, v := range c.n {
		s := fmt.Sprintf("%s=%d", k, v)
		if e := c.first[k]; e != "" {
			s += fmt.Sprintf(" (first: %s)", e)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

// b64 is standard padded base64, as KES bodies carry bytes.
func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// discoverVersionsRequest is a KMIP 1.4 request message asking DiscoverVersions, as bytes.
func discoverVersionsRequest(t *testing.T) []byte {
	t.Helper()
	msg := kmip.NewRequestMessage(kmip.V1_4, &payloads.DiscoverVersionsRequestPayload{})
	return ttlv.MarshalTTLV(&msg)
}

// readTTLV reads one TTLV message: the 8-byte header, then as many bytes as it announces.
func readTTLV(r io.Reader) ([]byte, error) {
	hdr := make([]byte, 8)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, err
	}
	n := int(hdr[4])<<24 | int(hdr[5])<<16 | int(hdr[6])<<8 | int(hdr[7])
	if n > 1<<20 {
		return nil, fmt.Errorf("response of %d bytes", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return append(hdr, body...), nil
}
