package test

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
)

// auditFields are what every audit line carries (KES lines also carry version, status and remote).
var auditFields = []string{"time", "identity", "protocol", "operation", "key", "signer", "result", "latency"}

// TestAuditEveryKeyOperation: each key operation on either front end writes one JSON line with
// time, identity, protocol, operation, key, signer, result and latency, and the line is in the file
// by the time the client has its answer — failures and refusals included.
func TestAuditEveryKeyOperation(t *testing.T) {
	b := newBridge(t, t.TempDir(), "audit")
	b.writeConfig(hcfg{signers: []string{"audit"}})
	b.startBin(binary)
	path := filepath.Join(b.dir, "audit.log")
	admin := b.adminClient()
	c, err := b.kmipAs(admin)
	if err != nil {
		t.Fatal(err)
	}
	k := b.kesAs(admin)
	strangerID := b.issueClient("stranger") // chains to the client CA, but no policy names it
	stranger := b.kesAs(strangerID)

	type step struct {
		protocol, operation string
		do                  func() error // returns an error only for a failure of the test itself
	}
	var aesID string
	steps := []step{
		{"kmip", "Create", func() error {
			r, err := c.Create().AES(256, kmip.CryptographicUsageEncrypt|kmip.CryptographicUsageDecrypt).WithName("audited").Exec()
			if err == nil {
				aesID = r.UniqueIdentifier
			}
			return err
		}},
		{"kmip", "Activate", func() error { _, err := c.Activate(aesID).Exec(); return err }},
		{"kmip", "Encrypt", func() error {
			_, err := c.Encrypt(aesID).WithCryptographicParameters(kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeGCM, TagLength: 16}).Data([]byte("x")).Exec()
			return err
		}},
		{"kmip", "Get", func() error {
			if _, err := c.Get("00000000000000000000000000000000000000aa").Exec(); err == nil {
				return fmt.Errorf("Get of an unknown id succeeded")
			}
			return nil
		}},
		{"kmip", "Locate", func() error { _, err := c.Locate().WithName("audited").Exec(); return err }},
		{"kes", "key/create", func() error { return kesWant(k, http.MethodPost, "/v1/key/create/audited-kes", nil, 200) }},
		{"kes", "key/generate", func() error {
			return kesWant(k, http.MethodPost, "/v1/key/generate/audited-kes", map[string]any{}, 200)
		}},
		{"kes", "key/decrypt", func() error {
			return kesWant(k, http.MethodPost, "/v1/key/decrypt/audited-kes", map[string]any{"ciphertext": []byte("not a ciphertext")}, 400)
		}},
		{"kes", "key/describe", func() error { return kesWant(k, http.MethodGet, "/v1/key/describe/audited-kes", nil, 200) }},
		{"kes", "key/generate", func() error { return kesWant(stranger, http.MethodPost, "/v1/key/generate/audited-kes", nil, 403) }},
	}
	base := len(auditLines(t, path)) // the KMIP client's DiscoverVersions at dial
	for i, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("step %d (%s %s): %v", i+1, s.protocol, s.operation, err)
		}
		// The line must be there now, without waiting.
		lines := auditLines(t, path)[base:]
		if len(lines) != i+1 {
			t.Fatalf("after %d key operations the audit log holds %d new lines", i+1, len(lines))
		}
		l := lines[i]
		for _, f := range auditFields {
			if _, ok := l[f]; !ok {
				t.Errorf("line %d (%s %s) lacks %q: %v", i+1, s.protocol, s.operation, f, l)
			}
		}
		if l["protocol"] != s.protocol || l["operation"] != s.operation {
			t.Errorf("line %d is %v %v, want %s %s", i+1, l["protocol"], l["operation"], s.protocol, s.operation)
		}
		wantID := admin.id
		if i == len(steps)-1 {
			wantID = strangerID.id
		}
		if l["identity"] != wantID {
			t.Errorf("line %d identity %v, want %s", i+1, l["identity"], wantID)
		}
	}
	lines := auditLines(t, path)[base:]
	if r := lines[3]["result"]; r != "ItemNotFound" {
		t.Errorf("the failed Get is audited with result %v", r)
	}
	if r := lines[7]["result"]; r != "failure" || lines[7]["status"] != float64(400) {
		t.Errorf("the refused decrypt is audited with result %v status %v", lines[7]["result"], lines[7]["status"])
	}
	if r := lines[9]["result"]; r != "failure" || lines[9]["status"] != float64(403) {
		t.Errorf("the forbidden generate is audited with result %v status %v", lines[9]["result"], lines[9]["status"])
	}
	if lines[0]["key"] != aesID || lines[0]["signer"] != "audit" || lines[5]["key"] != "audited-kes" || lines[6]["signer"] != "audit" {
		t.Errorf("key and signer not recorded: %v / %v", lines[0], lines[6])
	}
	t.Logf("%d key operations (5 KMIP, 5 KES, 3 of them failures), %d audit lines, each in the file when its answer arrived", len(steps), len(lines))
}

// kesWant sends a request and checks its status.
func kesWant(k *kesHTTP, method, path string, body any, want int) error {
	st, out, err := k.do(method, path, body)
	if err != nil {
		return err
	}
	if st != want {
		return fmt.Errorf("%s %s: %d %s, want %d", method, path, st, out, want)
	}
	return nil
}

// TestAuditReopenedOnSIGHUP is logrotate's way: rename the file, send SIGHUP, and the lines of
// later operations go to a new file at the configured path.
func TestAuditReopenedOnSIGHUP(t *testing.T) {
	b := newBridge(t, t.TempDir(), "rotate")
	b.writeConfig(hcfg{signers: []string{"rotate"}})
	b.startBin(binary)
	path := filepath.Join(b.dir, "audit.log")
	k := b.kesAs(b.adminClient())
	if err := kesWant(k, http.MethodPost, "/v1/key/create/rotated", nil, 200); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	// Between the rename and the signal lines still go to the renamed file, as logrotate expects.
	if err := kesWant(k, http.MethodPost, "/v1/key/generate/rotated", nil, 200); err != nil {
		t.Fatal(err)
	}
	// SIGHUP (through the CLI, which waits for the server to log the outcome: the file is reopened
	// before the configuration is read again).
	if ok, log := b.reload(); !ok {
		t.Fatalf("reload: %s", log)
	}
	for i := 0; i < 3; i++ {
		if err := kesWant(k, http.MethodPost, "/v1/key/generate/rotated", nil, 200); err != nil {
			t.Fatal(err)
		}
	}
	old, cur := auditLines(t, path+".1"), auditLines(t, path)
	if len(old) != 2 || len(cur) != 3 {
		t.Fatalf("renamed file holds %d lines (want 2), new file %d (want 3)", len(old), len(cur))
	}
	t.Logf("after rename and SIGHUP: 2 lines in the renamed file, 3 in the new one")
}

// TestAuditRequired: with audit { required = true }, a key operation whose record cannot be written
// fails (KMIP: the operation's item; KES: the request itself, its answer withheld), later ones are refused
// before they touch a key (no key is created), and service resumes once the log can be written
// again. With required = false the same failure is only reported in the server's log.
func TestAuditRequired(t *testing.T) {
	b := newBridge(t, t.TempDir(), "required")
	dir := b.dir
	target := filepath.Join(dir, "audit-real.log")
	link := filepath.Join(dir, "audit.log")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	pointAt := func(dest string) {
		os.Remove(link + ".new")
		if err := os.Symlink(dest, link+".new"); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(link+".new", link); err != nil {
			t.Fatal(err)
		}
	}
	b.writeConfig(hcfg{signers: []string{"required"}, auditPath: link, auditRequired: true})
	b.startBin(binary)
	admin := b.adminClient()
	c, err := b.kmipAs(admin)
	if err != nil {
		t.Fatal(err)
	}
	k := b.kesAs(admin)
	if err := kesWant(k, http.MethodPost, "/v1/key/create/req-kes", nil, 200); err != nil {
		t.Fatal(err)
	}

	// The disk fills up: /dev/full refuses every write with ENOSPC.
	pointAt("/dev/full")
	if ok, log := b.reload(); !ok {
		t.Fatalf("reload: %s", log)
	}
	_, err = c.Create().AES(256, kmip.CryptographicUsageEncrypt).WithName("made-while-unaudited").Exec()
	if err == nil || !strings.Contains(err.Error(), "GeneralFailure") || !strings.Contains(err.Error(), "could not be audited") {
		t.Fatalf("KMIP Create whose record could not be written: %v", err)
	}
	_, err = c.Create().AES(256, kmip.CryptographicUsageEncrypt).WithName("refused-while-unaudited").Exec()
	if err == nil || !strings.Contains(err.Error(), "audit log cannot be written") {
		t.Fatalf("KMIP Create while the audit log is failing: %v", err)
	}
	st, body, err := k.do(http.MethodPost, "/v1/key/create/refused-kes", nil)
	if err != nil || st != http.StatusServiceUnavailable || !strings.Contains(kesMessage(body), "audit log cannot be written") {
		t.Fatalf("KES create while the audit log is failing: %d %s %v", st, body, err)
	}
	if _, st, msg, _ := k.generate("req-kes", nil); st != http.StatusServiceUnavailable {
		t.Fatalf("KES generate while the audit log is failing: %d %s", st, msg)
	}
	if !strings.Contains(b.proc.Output(), "audit log cannot be written") {
		t.Error("the server's log does not report the failing audit log")
	}

	// Space again.
	pointAt(target)
	if ok, log := b.reload(); !ok {
		t.Fatalf("reload: %s", log)
	}
	if _, st, msg, err := k.generate("req-kes", nil); err != nil || st != http.StatusOK {
		t.Fatalf("KES generate after the audit log recovered: %d %s %v", st, msg, err)
	}
	if err := kesWant(k, http.MethodGet, "/v1/key/describe/refused-kes", nil, 404); err != nil {
		t.Fatalf("a KES key was created while its creation was refused: %v", err)
	}
	loc, err := c.Locate().WithName("refused-while-unaudited").Exec()
	if err != nil || len(loc.UniqueIdentifier) != 0 {
		t.Fatalf("a KMIP key was created while its creation was refused: %v %v", loc, err)
	}

	// The first KES request whose own record cannot be written is answered 503: its data key
	// is withheld rather than handed out unrecorded.
	pointAt("/dev/full")
	if ok, log := b.reload(); !ok {
		t.Fatalf("reload: %s", log)
	}
	if _, st, msg, _ := k.generate("req-kes", nil); st != http.StatusServiceUnavailable || !strings.Contains(msg, "audit log cannot be written") {
		t.Fatalf("KES generate whose record could not be written: %d %s", st, msg)
	}
	pointAt(target)
	if ok, log := b.reload(); !ok {
		t.Fatalf("reload: %s", log)
	}

	// Not required: the failure is reported, requests go on.
	b.writeConfig(hcfg{signers: []string{"required"}, auditPath: link, auditRequired: false})
	pointAt("/dev/full")
	if ok, log := b.reload(); !ok {
		t.Fatalf("reload: %s", log)
	}
	for i := 0; i < 3; i++ {
		if _, st, msg, err := k.generate("req-kes", nil); err != nil || st != http.StatusOK {
			t.Fatalf("KES generate with a failing audit log that is not required: %d %s %v", st, msg, err)
		}
	}
	if _, err := c.Create().AES(256, kmip.CryptographicUsageEncrypt).WithName("not-required").Exec(); err != nil {
		t.Fatalf("KMIP Create with a failing audit log that is not required: %v", err)
	}
	t.Logf("required: the KMIP Create whose record failed was answered General Failure, later KMIP and KES key operations were refused without creating keys, service resumed after SIGHUP; not required: operations went on")
}

// auditPipe is an audit sink that can go away and come back while the server keeps its file
// open: a FIFO. While the test holds it open for reading (and drains it), the server's writes
// succeed; once the test closes it, they fail with EPIPE; when the test opens it again, they
// succeed again — without the server reopening anything.
type auditPipe struct {
	t     *testing.T
	path  string
	mu    sync.Mutex
	r     *os.File
	lines bytes.Buffer
	done  chan struct{}
}

func newAuditPipe(t *testing.T, path string) *auditPipe {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatalf("mkfifo %s: %v", path, err)
	}
	p := &auditPipe{t: t, path: path}
	p.open()
	t.Cleanup(p.close)
	return p
}

// open makes the sink writable again. O_RDWR: opening a FIFO that way never blocks, and the test's
// own end keeps the drain from seeing end-of-file while the server reopens its end.
func (p *auditPipe) open() {
	p.t.Helper()
	r, err := os.OpenFile(p.path, os.O_RDWR, 0)
	if err != nil {
		p.t.Fatalf("open %s: %v", p.path, err)
	}
	done := make(chan struct{})
	p.mu.Lock()
	p.r, p.done = r, done
	p.mu.Unlock()
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			n, err := r.Read(buf)
			p.mu.Lock()
			p.lines.Write(buf[:n])
			p.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
}

// close takes the reader away: the server's next write fails.
func (p *auditPipe) close() {
	p.mu.Lock()
	r, done := p.r, p.done
	p.r = nil
	p.mu.Unlock()
	if r != nil {
		r.Close()
		<-done
	}
}

func (p *auditPipe) count(s string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Count(p.lines.String(), s)
}

// waitOutput waits until the server's log holds want more than n times.
func waitOutput(t *testing.T, b *bridge, want string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(b.proc.Output(), want) <= n {
		if time.Now().After(deadline) {
			t.Fatalf("the server's log does not say %q (%d times before)\n%s", want, n, b.proc.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAuditResumesWithoutSIGHUP: the audit sink fails and comes back while the server keeps it
// open (a FIFO whose reader goes away and returns). With audit { required = true }, key operations
// are refused while it fails and served again as soon as a line can be written — no SIGHUP: the
// refusal itself is the line that gets through. With required = false requests go on and the
// server's log says "audit log cannot be written" once for the whole failure, and "audit log
// writable again" when it ends.
func TestAuditResumesWithoutSIGHUP(t *testing.T) {
	b := newBridge(t, t.TempDir(), "resume")
	fifo := filepath.Join(b.dir, "audit.fifo")
	sink := newAuditPipe(t, fifo)
	b.writeConfig(hcfg{signers: []string{"resume"}, auditPath: fifo, auditRequired: true})
	b.startBin(binary)
	admin := b.adminClient()
	c, err := b.kmipAs(admin)
	if err != nil {
		t.Fatal(err)
	}
	k := b.kesAs(admin)
	if err := kesWant(k, http.MethodPost, "/v1/key/create/resume-kes", nil, 200); err != nil {
		t.Fatal(err)
	}
	if _, st, msg, err := k.generate("resume-kes", nil); err != nil || st != http.StatusOK {
		t.Fatalf("KES generate with a working audit sink: %d %s %v", st, msg, err)
	}
	// The line is in the pipe by the time the answer came; the drain may take a moment more.
	for deadline := time.Now().Add(10 * time.Second); sink.count(`"operation":"key/generate"`) == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no audit line came through the FIFO in 10 s")
		}
	}
	reloads := strings.Count(b.proc.Output(), "configuration reloaded")

	// Required: the sink goes away.
	sink.close()
	_, err = c.Create().AES(256, kmip.CryptographicUsageEncrypt).WithName("resume-unaudited").Exec()
	if err == nil || !strings.Contains(err.Error(), "could not be audited") {
		t.Fatalf("KMIP Create whose record could not be written: %v", err)
	}
	if _, st, msg, _ := k.generate("resume-kes", nil); st != http.StatusServiceUnavailable || !strings.Contains(msg, "audit log cannot be written") {
		t.Fatalf("KES generate while the audit sink is gone: %d %s", st, msg)
	}
	// It comes back. The next request is still refused (the last write failed), but its refusal is
	// audited, that line is written, and the one after is served.
	sink.open()
	if _, st, msg, _ := k.generate("resume-kes", nil); st != http.StatusServiceUnavailable {
		t.Fatalf("first KES generate once the sink is back: %d %s; want the refusal whose record gets through", st, msg)
	}
	if _, st, msg, err := k.generate("resume-kes", nil); err != nil || st != http.StatusOK {
		t.Fatalf("KES generate after a line could be written again: %d %s %v; service must resume without SIGHUP", st, msg, err)
	}
	if _, err := c.Create().AES(256, kmip.CryptographicUsageEncrypt).WithName("resume-audited").Exec(); err != nil {
		t.Fatalf("KMIP Create after a line could be written again: %v", err)
	}
	if n := strings.Count(b.proc.Output(), "configuration reloaded"); n != reloads {
		t.Fatalf("the server reloaded meanwhile (%d reloads, %d before): this must resume without SIGHUP", n, reloads)
	}

	// Not required: one "cannot be written" for the whole failure, then "writable again".
	b.writeConfig(hcfg{signers: []string{"resume"}, auditPath: fifo, auditRequired: false})
	if ok, log := b.reload(); !ok {
		t.Fatalf("reload: %s", log)
	}
	failing := strings.Count(b.proc.Output(), "audit log cannot be written")
	again := strings.Count(b.proc.Output(), "audit log writable again")
	sink.close()
	for i := range 3 {
		if _, st, msg, err := k.generate("resume-kes", nil); err != nil || st != http.StatusOK {
			t.Fatalf("KES generate %d with a failing audit sink that is not required: %d %s %v", i, st, msg, err)
		}
	}
	if _, err := c.Create().AES(256, kmip.CryptographicUsageEncrypt).WithName("resume-not-required").Exec(); err != nil {
		t.Fatalf("KMIP Create with a failing audit sink that is not required: %v", err)
	}
	waitOutput(t, b, "audit log cannot be written", failing)
	if n := strings.Count(b.proc.Output(), "audit log cannot be written") - failing; n != 1 {
		t.Fatalf("the server's log says \"audit log cannot be written\" %d times for one failure of 4 records; want once", n)
	}
	if strings.Count(b.proc.Output(), "audit log writable again") != again {
		t.Fatal("\"audit log writable again\" logged while the sink was still gone")
	}
	sink.open()
	if _, st, msg, err := k.generate("resume-kes", nil); err != nil || st != http.StatusOK {
		t.Fatalf("KES generate once the sink is back: %d %s %v", st, msg, err)
	}
	waitOutput(t, b, "audit log writable again", again)
	if n := strings.Count(b.proc.Output(), "audit log cannot be written") - failing; n != 1 {
		t.Fatalf("\"audit log cannot be written\" logged %d times in all; want once", n)
	}
}
