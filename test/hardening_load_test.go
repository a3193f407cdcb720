package test

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"
)

// waitForBenchmarks holds a heavy test while a benchmark runs on the machine: the project's
// benchmark figures are published, and a load test beside them would skew both. The wait is
// bounded so that it ends well inside go test's -timeout (18 min in make test): all heavy tests of
// a run together wait at most benchWaitBudget, and each at most a quarter of the time left before
// the deadline; then they go ahead beside the benchmark.
func waitForBenchmarks(t *testing.T) {
	t.Helper()
	limit := benchWait.take()
	if dl, ok := t.Deadline(); ok {
		limit = min(limit, time.Until(dl)/4)
	}
	start := time.Now()
	defer func() { benchWait.spent(time.Since(start)) }()
	for {
		out, _ := exec.Command("pgrep", "-f", "test.*-bench").Output()
		var others []string
		for _, pid := range strings.Fields(string(out)) {
			if pid != fmt.Sprint(os.Getpid()) {
				others = append(others, pid)
			}
		}
		if len(others) == 0 {
			if d := time.Since(start); d > time.Second {
				t.Logf("waited %s for benchmarks to finish", d.Round(time.Second))
			}
			return
		}
		if time.Since(start) >= limit {
			t.Logf("benchmarks still running after %s (pids %v); going ahead", limit.Round(time.Second), others)
			return
		}
		time.Sleep(min(5*time.Second, limit-time.Since(start)))
	}
}

// benchWaitBudget bounds the waits of waitForBenchmarks in one go test run, together.
const benchWaitBudget = 2 * time.Minute

var benchWait = waitBudget{left: benchWaitBudget}

type waitBudget struct {
	mu   sync.Mutex
	left time.Duration
}

func (b *waitBudget) take() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	return max(b.left, 0)
}

func (b *waitBudget) spent(d time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.left -= d
}

// loadDuration is 60 s, or P11BRIDGE_SOAK_DURATION under make soak.
func loadDuration(t *testing.T) time.Duration {
	t.Helper()
	if s := os.Getenv("P11BRIDGE_SOAK_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 20*time.Second {
			t.Fatalf("P11BRIDGE_SOAK_DURATION=%q: want a Go duration of at least 20s", s)
		}
		return d
	}
	return 60 * time.Second
}

// loadKeys are the keys one identity's load runs on.
type loadKeys struct {
	id              clientID
	ec, ecPub, aes  string
	aesName, kesKey string
}

// TestLoad runs 200 KMIP connections (Sign, Encrypt, Get, Locate in turn) and 64 KES clients
// (generate then decrypt), split over two identities, for 60 s (P11BRIDGE_SOAK_DURATION under
// make soak). No request may fail, and the server's RSS, goroutines and open files must be flat
// from second 10 to the end (goroutines as the least of five samples, so that requests in flight
// at the instant of a sample do not count); the figures are printed every 10 s.
func TestLoad(t *testing.T) {
	waitForBenchmarks(t)
	dur := loadDuration(t)
	b := newBridge(t, t.TempDir(), "load")
	loader := b.issueClient("loader")
	b.writeConfig(hcfg{signers: []string{"load"}, policies: fmt.Sprintf("policy \"loader\" {\n  allow = [\"/v1/key/*\"]\n  kmip = [\"*\"]\n  identities = [%q]\n}\n", loader.id)})
	b.startBin(binary)

	var keys []loadKeys
	for i, id := range []clientID{b.adminClient(), loader} {
		c, err := b.kmipAs(id)
		if err != nil {
			t.Fatal(err)
		}
		k := loadKeys{id: id, aesName: fmt.Sprintf("load-aes-%d", i), kesKey: fmt.Sprintf("load-kes-%d", i)}
		kp, err := c.CreateKeyPair().ECDSA(kmip.RecommendedCurveP_256, kmip.CryptographicUsageSign, kmip.CryptographicUsageVerify).Exec()
		if err != nil {
			t.Fatal(err)
		}
		k.ec, k.ecPub = kp.PrivateKeyUniqueIdentifier, kp.PublicKeyUniqueIdentifier
		if _, err := c.Activate(k.ec).Exec(); err != nil {
			t.Fatal(err)
		}
		aes, err := c.Create().AES(256, kmip.CryptographicUsageEncrypt|kmip.CryptographicUsageDecrypt).WithName(k.aesName).
			WithAttribute(kmip.AttributeNameActivationDate, time.Now().Add(-time.Minute)).Exec()
		if err != nil {
			t.Fatal(err)
		}
		k.aes = aes.UniqueIdentifier
		if err := kesWant(b.kesAs(id), http.MethodPost, "/v1/key/create/"+k.kesKey, nil, http.StatusOK); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}

	const kmipConns, kesClients = 200, 64
	ops := newTally()
	var stop atomic.Bool
	var wg sync.WaitGroup
	kmipErr := func(op string, err error) {
		if err != nil {
			ops.add(op+" errors", err.Error())
		} else {
			ops.add(op, "")
		}
	}
	// Connections first, so that every client runs for the whole measured time.
	var kmipCs []*kmipclient.Client
	for i := 0; i < kmipConns; i++ {
		c, err := b.kmipAs(keys[i%2].id)
		if err != nil {
			t.Fatalf("KMIP connection %d: %v", i, err)
		}
		kmipCs = append(kmipCs, c)
	}
	gcm := kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeGCM, TagLength: 16}
	ecdsa := kmip.CryptographicParameters{DigitalSignatureAlgorithm: kmip.DigitalSignatureAlgorithmECDSAWithSHA256}
	for i, c := range kmipCs {
		k := keys[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := i; !stop.Load(); n++ {
				switch n % 4 {
				case 0:
					_, err := c.Sign(k.ec).WithCryptographicParameters(ecdsa).Data([]byte("load")).Exec()
					kmipErr("kmip sign", err)
				case 1:
					_, err := c.Encrypt(k.aes).WithCryptographicParameters(gcm).Data([]byte("load")).Exec()
					kmipErr("kmip encrypt", err)
				case 2:
					_, err := c.Get(k.ecPub).Exec()
					kmipErr("kmip get", err)
				case 3:
					r, err := c.Locate().WithName(k.aesName).Exec()
					if err == nil && (len(r.UniqueIdentifier) != 1 || r.UniqueIdentifier[0] != k.aes) {
						err = fmt.Errorf("Locate found %v", r.UniqueIdentifier)
					}
					kmipErr("kmip locate", err)
				}
			}
		}()
	}
	for i := 0; i < kesClients; i++ {
		k := keys[i%2]
		kc := b.kesAs(k.id)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; !stop.Load(); n++ {
				ctx := []byte(fmt.Sprintf(`{"bucket":"b/%d/%d"}`, i, n))
				dk, st, msg, err := kc.generate(k.kesKey, ctx)
				if err != nil || st != http.StatusOK {
					ops.add("kes generate errors", fmt.Sprintf("%d %s %v", st, msg, err))
					continue
				}
				ops.add("kes generate", "")
				pt, st, msg, err := kc.decrypt(k.kesKey, dk.Ciphertext, ctx)
				if err != nil || st != http.StatusOK || !bytes.Equal(pt, dk.Plaintext) {
					ops.add("kes decrypt errors", fmt.Sprintf("%d %s %v", st, msg, err))
					continue
				}
				ops.add("kes decrypt", "")
			}
		}()
	}

	start := time.Now()
	samples := map[time.Duration]procFigures{}
	var order []time.Duration
	for at := 10 * time.Second; at <= dur; at += 10 * time.Second {
		time.Sleep(time.Until(start.Add(at)))
		f := b.settledFigures()
		samples[at] = f
		order = append(order, at)
		t.Logf("s%-4.0f %s; requests so far: %d KMIP, %d KES", at.Seconds(), f,
			ops.get("kmip sign")+ops.get("kmip encrypt")+ops.get("kmip get")+ops.get("kmip locate"), ops.get("kes generate")+ops.get("kes decrypt"))
	}
	stop.Store(true)
	wg.Wait()
	elapsed := time.Since(start)

	errs := 0
	for _, op := range []string{"kmip sign", "kmip encrypt", "kmip get", "kmip locate", "kes generate", "kes decrypt"} {
		errs += ops.get(op + " errors")
		t.Logf("%-13s %8d (%6.0f/s), %d errors", op, ops.get(op), float64(ops.get(op))/elapsed.Seconds(), ops.get(op+" errors"))
	}
	if errs > 0 {
		t.Errorf("%d requests failed: %s", errs, ops)
	}
	first, last := samples[10*time.Second], samples[order[len(order)-1]]
	t.Logf("from s10 to s%.0f: RSS %+.1f MiB (%.1f → %.1f), goroutines %+d (%d → %d), open files %+d (%d → %d)",
		order[len(order)-1].Seconds(), float64(last.rssKB-first.rssKB)/1024, float64(first.rssKB)/1024, float64(last.rssKB)/1024,
		last.goroutines-first.goroutines, first.goroutines, last.goroutines, last.fds-first.fds, first.fds, last.fds)
	// Flat: the connections are the same throughout, so the goroutines that stay (the least of five
	// samples) and the files must not move beyond a few transient ones (HTTP/2 streams of requests
	// in flight); memory may settle but not keep growing.
	// Fewer goroutines at the end is no leak (fewer KES streams happened to be in flight).
	if d := last.goroutines - first.goroutines; d > 32 {
		t.Errorf("goroutines grew by %d under steady load", d)
	}
	if d := last.fds - first.fds; d > 5 || d < -5 {
		t.Errorf("open files moved by %d under steady load", d)
	}
	if grow := last.rssKB - first.rssKB; grow > first.rssKB/5+16<<10 {
		t.Errorf("RSS grew by %.1f MiB under steady load", float64(grow)/1024)
	}
}

// TestIdleKMIPConnections opens 1,000 KMIP connections that complete TLS, ask one DiscoverVersions
// and then stay idle, and prints what each costs the server in RSS, goroutines and files; then
// closes them and checks the server lets them all go.
func TestIdleKMIPConnections(t *testing.T) {
	waitForBenchmarks(t)
	const n = 1000
	b := newBridge(t, t.TempDir(), "idle")
	b.writeConfig(hcfg{signers: []string{"idle"}, kmip: "max_connections = 1100\n  max_connections_per_identity = 1100"})
	b.startBin(binary)
	admin := b.adminClient()
	before := b.figures()
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	req := discoverVersionsRequest(t)
	for i := 0; i < n; i++ {
		c, err := tls.Dial("tcp", b.kmip, b.tlsFor(admin))
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
		if _, err := c.Write(req); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if _, err := readTTLV(c); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	time.Sleep(2 * time.Second) // let the runtime settle
	during := b.figures()
	perConn := float64(during.rssKB-before.rssKB) / n
	t.Logf("before: %s", before)
	t.Logf("with %d idle KMIP connections: %s", n, during)
	t.Logf("per idle connection: %.1f KiB RSS, %.2f goroutines, %.2f open files",
		perConn, float64(during.goroutines-before.goroutines)/n, float64(during.fds-before.fds)/n)
	if d := during.fds - before.fds; d < n {
		t.Errorf("the server holds %d more files with %d connections open", d, n)
	}
	if perConn > 128 {
		t.Errorf("an idle KMIP connection costs %.1f KiB", perConn)
	}
	// A live request still gets through.
	c, err := b.kmipAs(admin)
	if err != nil {
		t.Fatalf("a new client beside %d idle ones: %v", n, err)
	}
	if _, err := c.Create().AES(256, kmip.CryptographicUsageEncrypt).Exec(); err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	deadline := time.Now().Add(15 * time.Second)
	var after procFigures
	for time.Now().Before(deadline) {
		after = b.figures()
		if after.fds <= before.fds+2 && after.goroutines <= before.goroutines+5 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("after closing them: %s", after)
	if after.fds > before.fds+2 || after.goroutines > before.goroutines+5 {
		t.Errorf("closed connections left %d files and %d goroutines behind", after.fds-before.fds, after.goroutines-before.goroutines)
	}
}
