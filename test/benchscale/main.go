// Command benchscale measures how p11bridge's costs grow with the number of keys on one token
// (`make bench-scale`, docs/benchmarks.md). For each size it sets up a fresh dev-mode directory
// (a SoftHSM2 token, certificates, the config dev mode writes), creates that many AES-256 keys
// through the registry (in a process of its own, several at once), then measures the real binary:
// `keys rebuild --dry-run` and `keys list` (time and peak RSS), `p11bridge serve` from its start
// to /ready and to the end of the handle index pass, the first and the second use of sampled keys
// over KMIP, Locate by Name, Locate of every Active AES key a page at a time, /status, the
// server's RSS and the keymap's size. It prints a table per size and the ratio of each figure
// per 10× keys.
//
//	go build -o bin/p11bridge ./cmd/p11bridge
//	go run ./test/benchscale -bin bin/p11bridge -sizes 1000,10000,100000
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"

	"github.com/miekg/pkcs11"

	"github.com/p11bridge/p11bridge/conf"
	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/server"
	"github.com/p11bridge/p11bridge/signer"
	"github.com/p11bridge/p11bridge/test/benchproc"
)

func main() {
	bin := flag.String("bin", "bin/p11bridge", "the p11bridge binary to measure")
	sizes := flag.String("sizes", "1000,10000,100000", "numbers of keys, comma-separated")
	base := flag.String("dir", "", "where to put each size's directory (default: a new temporary directory, removed after)")
	workers := flag.Int("workers", 16, "keys created at once")
	sample := flag.Int("sample", 2000, "keys used once after the restart (first use) and again (warm)")
	create := flag.String("create", "", "internal: create keys for the config at this path")
	probe := flag.String("probe", "", "internal: measure the token of the config at this path with plain PKCS#11")
	n := flag.Int("n", 0, "internal: how many keys -create makes")
	flag.Parse()
	if *probe != "" {
		if err := probeToken(*probe); err != nil {
			fmt.Fprintln(os.Stderr, "benchscale:", err)
			os.Exit(1)
		}
		return
	}
	if *create != "" {
		if err := createKeys(*create, *n, *workers); err != nil {
			fmt.Fprintln(os.Stderr, "benchscale:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*bin, *sizes, *base, *workers, *sample); err != nil {
		fmt.Fprintln(os.Stderr, "benchscale:", err)
		os.Exit(1)
	}
}

// result is one size's figures. Durations in seconds unless the name says otherwise.
type result struct {
	keys                       int
	load                       []string // load averages before and after
	create                     float64
	tokOpen, tokList           float64 // s: plain PKCS#11, the reference for the start figures
	rebuild, rebuildRSS        float64 // s, MiB
	list, listRSS              float64 // s, MiB
	ready, warm                float64
	indexSeconds               float64
	indexObjects               int
	everP50, everP99           float64 // ms: first use ever (binds the block mode)
	firstP50, firstP99         float64 // ms
	warmP50, warmP99           float64 // ms
	rss, hwm                   float64 // MiB after the runs
	keymapMiB                  float64
	nameP50, nameP99           float64 // ms
	pageP50, pageP99, allPages float64 // ms, ms, s
	located                    int
	status                     float64 // ms
	searches                   int64
	startRSS                   float64 // MiB at the end of the index pass
	goHeap                     float64 // MiB of live Go heap after the runs (most of the rest of RSS is SoftHSM2's copy of the objects)
}

func run(bin, sizeList, base string, workers, sample int) error {
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("%s: %w (go build -o bin/p11bridge ./cmd/p11bridge)", bin, err)
	}
	if base == "" {
		if base, err = os.MkdirTemp("", "p11bridge-benchscale-"); err != nil {
			return err
		}
		defer os.RemoveAll(base)
	}
	var results []result
	for _, s := range strings.Split(sizeList, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			return fmt.Errorf("size %q: not a positive number", s)
		}
		r, err := measure(bin, filepath.Join(base, strconv.Itoa(n)), n, workers, sample)
		if err != nil {
			return fmt.Errorf("%d keys: %w", n, err)
		}
		results = append(results, r)
		printResult(r)
	}
	printRatios(results)
	return nil
}

func measure(bin, dir string, n, workers, sample int) (result, error) {
	r := result{keys: n, load: []string{benchproc.Loadavg()}}
	opts, err := benchproc.DevOptions(dir)
	if err != nil {
		return r, err
	}
	d, err := server.PrepareDev(opts)
	if err != nil {
		return r, err
	}
	env := append(os.Environ(), "SOFTHSM2_CONF="+d.Token.Conf)
	fmt.Printf("== %d keys in %s (load %s)\n", n, dir, r.load[0])

	// Keys are made by a process of its own: SoftHSM2 reads its configuration once per process.
	self, err := os.Executable()
	if err != nil {
		return r, err
	}
	t := time.Now()
	cmd := exec.Command(self, "-create", d.Config, "-n", strconv.Itoa(n), "-workers", strconv.Itoa(workers))
	cmd.Env, cmd.Stdout, cmd.Stderr = env, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return r, fmt.Errorf("create keys: %w", err)
	}
	r.create = time.Since(t).Seconds()

	// The commands, with the server stopped (rebuild on a CSV keymap takes its lock).
	var out string
	if r.rebuild, r.rebuildRSS, out, err = runCmd(bin, env, "keys", "rebuild", "--config", d.Config, "--signer", "dev", "--dry-run"); err != nil {
		return r, err
	}
	if !strings.Contains(out, "signer dev: 0 objects") {
		return r, fmt.Errorf("keys rebuild --dry-run found objects the keymap lacks:\n%s", tail(out))
	}
	if r.list, r.listRSS, out, err = runCmd(bin, env, "keys", "list", "--config", d.Config); err != nil {
		return r, err
	}
	if lines := strings.Count(out, "\n"); lines < n+2 {
		return r, fmt.Errorf("keys list printed %d lines for %d keys", lines, n)
	}

	// The token alone, through plain PKCS#11 in a process of its own: what any application pays.
	{
		cmd := exec.Command(self, "-probe", d.Config)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			return r, fmt.Errorf("probe: %v\n%s", err, out)
		}
		if _, err := fmt.Sscan(string(out), &r.tokOpen, &r.tokList); err != nil {
			return r, fmt.Errorf("probe answered %q: %v", out, err)
		}
	}

	// The server, twice: a first start, where the sample's keys are used for the first time ever
	// (which binds each key's block mode: a keymap write), then a restart, measured from its start,
	// where the same keys are used for the first time since the restart and again (warm).
	hc := &http.Client{Timeout: 5 * time.Second}
	ids, names, err := keyList(dir)
	if err != nil {
		return r, err
	}
	rnd := rand.New(rand.NewPCG(uint64(n), 16))
	rnd.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	rnd.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	// A connection and its first request cost what no later one does: one key not in the sample
	// goes first on each connection.
	spare := ids[len(ids)-1]
	ids = ids[:min(sample, len(ids)-1)]
	{
		srv, err := startServe(bin, env, dir, d.Config, opts.Ops, hc)
		if err != nil {
			return r, err
		}
		cl, err := dialKMIP(dir, opts.KMIP)
		if err == nil {
			if err = encryptWith(cl, spare); err == nil {
				r.everP50, r.everP99, err = timeEach(ids, func(id string) error { return encryptWith(cl, id) })
			}
			cl.Close()
		}
		srv.Stop()
		if err != nil {
			return r, fmt.Errorf("first use ever: %w", err)
		}
	}
	srv, err := startServe(bin, env, dir, d.Config, opts.Ops, hc)
	if err != nil {
		return r, err
	}
	defer srv.Stop()
	r.ready, r.warm = srv.ready, srv.warm
	r.indexSeconds, r.indexObjects = srv.indexSeconds, srv.indexObjects
	r.startRSS, _ = procMiB(srv.Pid(), "VmRSS")

	cl, err := dialKMIP(dir, opts.KMIP)
	if err != nil {
		return r, fmt.Errorf("KMIP client: %w", err)
	}
	defer cl.Close()
	use := func(id string) error { return encryptWith(cl, id) }
	if err := use(spare); err != nil {
		return r, fmt.Errorf("encrypt: %w", err)
	}
	if r.firstP50, r.firstP99, err = timeEach(ids, use); err != nil {
		return r, fmt.Errorf("first use: %w", err)
	}
	if r.warmP50, r.warmP99, err = timeEach(ids, use); err != nil {
		return r, fmt.Errorf("warm use: %w", err)
	}
	names = names[:min(1000, len(names))]
	if r.nameP50, r.nameP99, err = timeEach(names, func(name string) error {
		l, err := cl.Locate().WithName(name).Exec()
		if err == nil && len(l.UniqueIdentifier) != 1 {
			err = fmt.Errorf("Locate by Name %q: %d objects", name, len(l.UniqueIdentifier))
		}
		return err
	}); err != nil {
		return r, err
	}
	// Every Active AES key, a page of 1,000 (the server's cap) at a time.
	const pageItems = 1000
	var offsets []string
	for off := 0; off < n; off += pageItems {
		offsets = append(offsets, strconv.Itoa(off))
	}
	t = time.Now()
	var located atomic.Int64
	if r.pageP50, r.pageP99, err = timeEach(offsets, func(o string) error {
		off, _ := strconv.Atoi(o)
		l, err := cl.Locate().WithObjectType(kmip.ObjectTypeSymmetricKey).
			WithAttribute(kmip.AttributeNameCryptographicAlgorithm, kmip.CryptographicAlgorithmAES).
			WithAttribute(kmip.AttributeNameState, kmip.StateActive).
			WithMaxItems(pageItems).WithOffset(int32(off)).Exec()
		if err == nil {
			located.Add(int64(len(l.UniqueIdentifier)))
			if l.LocatedItems == nil || int(*l.LocatedItems) != n {
				err = fmt.Errorf("Locate of Active AES keys: Located Items %v, want %d", l.LocatedItems, n)
			}
		}
		return err
	}); err != nil {
		return r, err
	}
	r.allPages = time.Since(t).Seconds()
	if r.located = int(located.Load()); r.located != n {
		return r, fmt.Errorf("paging through Active AES keys reached %d of %d", r.located, n)
	}
	var sts []float64
	for range 5 {
		t := time.Now()
		if _, err := status(hc, opts.Ops); err != nil {
			return r, err
		}
		sts = append(sts, float64(time.Since(t).Microseconds())/1000)
	}
	slices.Sort(sts)
	r.status = sts[len(sts)/2]
	st, err := status(hc, opts.Ops)
	if err != nil {
		return r, err
	}
	r.searches = st.Signers[0].Index.Searches
	r.rss, _ = procMiB(srv.Pid(), "VmRSS")
	r.goHeap, _ = metric(hc, opts.Ops, "go_gc_heap_live_bytes")
	r.goHeap /= 1 << 20
	r.hwm, _ = procMiB(srv.Pid(), "VmHWM")
	if fi, err := os.Stat(filepath.Join(dir, "keymap.csv")); err == nil {
		r.keymapMiB = float64(fi.Size()) / (1 << 20)
	}
	r.load = append(r.load, benchproc.Loadavg())
	return r, nil
}

// createKeys makes n AES-256 keys (Active, named scale-NNNNNNN, owned by nobody: the admin's)
// through the registry for the config at path, workers at once; keys already in the keymap count.
func createKeys(path string, n, workers int) error {
	cfg, err := conf.Load(path)
	if err != nil {
		return err
	}
	quiet := slog.New(slog.DiscardHandler)
	km, err := keymap.Open(cfg.Keymap.Path, quiet)
	if err != nil {
		return err
	}
	defer km.Close()
	sc := server.SignerConfigs(cfg)
	for i := range sc {
		sc[i].MaxSessions = max(sc[i].MaxSessions, workers)
	}
	reg, err := signer.Open(signer.Options{Signers: sc, Default: cfg.DefaultSigner, Logger: quiet, NoIndex: true}, km)
	if err != nil {
		return err
	}
	defer reg.Close()
	var next atomic.Int64
	next.Store(int64(km.Len()))
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				if _, err := reg.Create(context.Background(), signer.Operator, signer.KeySpec{Algorithm: signer.AES, Size: 256},
					signer.Meta{Name: fmt.Sprintf("scale-%07d", i), State: keymap.Active}); err != nil {
					errs <- err
					return
				}
				if i%10000 == 0 {
					fmt.Printf("   %d keys made (%.0f s)\n", i, time.Since(start).Seconds())
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	fmt.Printf("   %d keys on the token, made in %.1f s (%d workers)\n", km.Len(), time.Since(start).Seconds(), workers)
	return nil
}

// runCmd runs the binary and returns its wall time, peak RSS (MiB) and output.
func runCmd(bin string, env []string, args ...string) (float64, float64, string, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	t := time.Now()
	err := cmd.Run()
	took := time.Since(t).Seconds()
	if err != nil {
		return 0, 0, "", fmt.Errorf("p11bridge %s: %v\n%s", strings.Join(args, " "), err, tail(out.String()))
	}
	rss := 0.0
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rss = float64(ru.Maxrss) / 1024 // KiB on Linux
	}
	return took, rss, out.String(), nil
}

func tail(s string) string {
	if len(s) > 2000 {
		return "…" + s[len(s)-2000:]
	}
	return s
}

// timeEach calls f with each item, one at a time, and returns the 50th and 99th percentile of the
// calls' durations in milliseconds.
func timeEach(items []string, f func(string) error) (p50, p99 float64, err error) {
	ds := make([]float64, 0, len(items))
	for _, it := range items {
		t := time.Now()
		if err := f(it); err != nil {
			return 0, 0, err
		}
		ds = append(ds, float64(time.Since(t).Nanoseconds())/1e6)
	}
	slices.Sort(ds)
	q := func(p float64) float64 { return ds[min(len(ds)-1, int(p*float64(len(ds))))] }
	return q(0.5), q(0.99), nil
}

type statusView struct {
	Signers []struct {
		Index server.IndexStatus `json:"handle_index"`
	} `json:"signers"`
}

func status(hc *http.Client, ops string) (statusView, error) {
	var st statusView
	resp, err := hc.Get("http://" + ops + "/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("/status: %s", resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// metric reads one unlabelled value from the ops listener's /metrics.
func metric(hc *http.Client, ops, name string) (float64, error) {
	resp, err := hc.Get("http://" + ops + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("%s not in /metrics", name)
}

// procMiB reads a memory figure (VmRSS, VmHWM) of a process.
func procMiB(pid int, field string) (float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("%s not in /proc/%d/status", field, pid)
}

// figures lists what the table prints, in order, with its unit.
func figures(r result) []struct {
	name string
	v    float64
	unit string
} {
	return []struct {
		name string
		v    float64
		unit string
	}{
		{"create keys (registry, 16 at once)", r.create, "s"},
		{"token alone: initialize, open a session, log in", r.tokOpen, "s"},
		{"token alone: list objects, read class and CKA_ID", r.tokList, "s"},
		{"serve: start to ready", r.ready, "s"},
		{"serve: start to every key warm (index pass done)", r.warm, "s"},
		{"  index pass alone", r.indexSeconds, "s"},
		{"  index pass per object", 1e6 * r.indexSeconds / float64(max(1, r.indexObjects)), "µs"},
		{"first use ever p50 (binds the mode: a keymap write)", r.everP50, "ms"},
		{"first use ever p99", r.everP99, "ms"},
		{"first use after restart p50", r.firstP50, "ms"},
		{"first use after restart p99", r.firstP99, "ms"},
		{"warm use p50", r.warmP50, "ms"},
		{"warm use p99", r.warmP99, "ms"},
		{"server RSS when warm", r.startRSS, "MiB"},
		{"server RSS after the runs", r.rss, "MiB"},
		{"server peak RSS", r.hwm, "MiB"},
		{"  of which live Go heap (after the last GC)", r.goHeap, "MiB"},
		{"keymap on disk", r.keymapMiB, "MiB"},
		{"Locate by Name p50", r.nameP50, "ms"},
		{"Locate by Name p99", r.nameP99, "ms"},
		{"Locate Active AES, one page of 1,000, p50", r.pageP50, "ms"},
		{"Locate Active AES, one page of 1,000, p99", r.pageP99, "ms"},
		{"Locate Active AES, every page", r.allPages, "s"},
		{"/status", r.status, "ms"},
		{"keys list", r.list, "s"},
		{"keys list peak RSS", r.listRSS, "MiB"},
		{"keys rebuild --dry-run", r.rebuild, "s"},
		{"keys rebuild --dry-run peak RSS", r.rebuildRSS, "MiB"},
	}
}

func printResult(r result) {
	fmt.Printf("\n%d keys (load average %s before, %s after; targeted token searches %d)\n", r.keys, r.load[0], r.load[len(r.load)-1], r.searches)
	for _, f := range figures(r) {
		fmt.Printf("  %-50s %10.3f %s\n", f.name, f.v, f.unit)
	}
	fmt.Printf("  %-50s %10.2f×\n", "first-use p99 / warm p99", r.firstP99/r.warmP99)
	fmt.Println()
}

// printRatios prints each figure side by side for every size, with its growth per 10× keys
// (scaled to 10× when sizes are not 10× apart).
func printRatios(rs []result) {
	if len(rs) < 2 {
		return
	}
	var w io.Writer = os.Stdout
	fmt.Fprintf(w, "%-50s", "figure")
	for _, r := range rs {
		fmt.Fprintf(w, " %12s", strconv.Itoa(r.keys))
	}
	for i := 1; i < len(rs); i++ {
		fmt.Fprintf(w, " %13s", fmt.Sprintf("×/10× (%dk)", rs[i].keys/1000))
	}
	fmt.Fprintln(w)
	for fi := range figures(rs[0]) {
		f0 := figures(rs[0])[fi]
		fmt.Fprintf(w, "%-50s", f0.name+" ("+f0.unit+")")
		for _, r := range rs {
			fmt.Fprintf(w, " %12.3f", figures(r)[fi].v)
		}
		for i := 1; i < len(rs); i++ {
			a, b := figures(rs[i-1])[fi].v, figures(rs[i])[fi].v
			k := float64(rs[i].keys) / float64(rs[i-1].keys)
			ratio := 0.0
			if a > 0 {
				ratio = b / a
			}
			// Growth scaled to 10× keys: per-key-linear figures read 10×.
			scaled := ratio
			if k != 10 && k > 1 && ratio > 0 {
				scaled = expScale(ratio, k)
			}
			mark := ""
			if scaled > 12 {
				mark = " !"
			}
			fmt.Fprintf(w, " %11.2f×%s", scaled, mark)
		}
		fmt.Fprintln(w)
	}
	last := rs[len(rs)-1]
	fmt.Fprintf(w, "\nfirst-use p99 / warm p99 at %d keys: %.2f× (goal ≤ 3×); ratios marked ! grow more than 12× per 10× keys\n",
		last.keys, last.firstP99/last.warmP99)
}

// expScale turns a ratio measured over k× keys into the ratio over 10× keys at the same exponent.
func expScale(ratio, k float64) float64 {
	return math.Pow(ratio, math.Log(10)/math.Log(k))
}

// serving is a running p11bridge serve and what its start took.
type serving struct {
	*benchproc.Serve
	ready, warm  float64 // s from the start to /ready, and to the handle index pass's end
	indexSeconds float64
	indexObjects int
}

// startServe starts `p11bridge serve` on dir's configuration and waits until it is ready and
// its handle index pass is done.
func startServe(bin string, env []string, dir, config, ops string, hc *http.Client) (*serving, error) {
	t := time.Now()
	srv, err := benchproc.StartServe(bin, config, env, filepath.Join(dir, "serve.log"), ops, 10*time.Minute)
	if err != nil {
		return nil, err
	}
	s := &serving{Serve: srv, ready: srv.Ready.Seconds()}
	for {
		st, err := status(hc, ops)
		if err == nil && len(st.Signers) > 0 && st.Signers[0].Index.Done {
			s.warm = time.Since(t).Seconds()
			s.indexSeconds, s.indexObjects = st.Signers[0].Index.Seconds, st.Signers[0].Index.Objects
			if st.Signers[0].Index.Error != "" {
				s.Stop()
				return nil, fmt.Errorf("index pass: %s", st.Signers[0].Index.Error)
			}
			return s, nil
		}
		time.Sleep(20 * time.Millisecond)
		if time.Since(t) > 20*time.Minute {
			s.Stop()
			return nil, fmt.Errorf("index pass not done after 20 minutes")
		}
	}
}

// keyList reads every key's identifier and name from dir's keymap file, as `keys list` reads it.
func keyList(dir string) (ids, names []string, err error) {
	km, err := keymap.OpenReadOnly(filepath.Join(dir, "keymap.csv"), slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, nil, err
	}
	defer km.Close()
	km.RangeViews(func(v keymap.View) bool {
		ids = append(ids, v.ID())
		names = append(names, v.Name())
		return true
	})
	return ids, names, nil
}

func dialKMIP(dir, addr string) (*kmipclient.Client, error) {
	return kmipclient.Dial(addr, kmipclient.WithRootCAFile(filepath.Join(dir, "tls", "ca.pem")),
		kmipclient.WithClientCertFiles(filepath.Join(dir, "tls", "admin.pem"), filepath.Join(dir, "tls", "admin-key.pem")),
		kmipclient.WithServerName("127.0.0.1"))
}

// encryptWith encrypts 32 bytes with key id in GCM (the server draws the IV in the token).
func encryptWith(cl *kmipclient.Client, id string) error {
	_, err := cl.Encrypt(id).WithCryptographicParameters(kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeGCM}).Data(make([]byte, 32)).Exec()
	return err
}

// probeToken measures, with plain PKCS#11 calls on the config's first signer, what opening the
// token costs (SoftHSM2 reads every object file at its first session) and what one pass over its
// objects reading class and CKA_ID costs; it prints the two in seconds.
func probeToken(path string) error {
	cfg, err := conf.Load(path)
	if err != nil {
		return err
	}
	sc := server.SignerConfigs(cfg)[0]
	t := time.Now()
	p := pkcs11.New(sc.Module)
	if p == nil {
		return fmt.Errorf("load %s", sc.Module)
	}
	if err := p.Initialize(); err != nil {
		return err
	}
	defer p.Finalize()
	slots, err := p.GetSlotList(true)
	if err != nil {
		return err
	}
	slot, found := uint(0), false
	for _, s := range slots {
		if ti, err := p.GetTokenInfo(s); err == nil && ti.Label == sc.TokenLabel {
			slot, found = s, true
		}
	}
	if !found {
		return fmt.Errorf("no token labelled %q", sc.TokenLabel)
	}
	sh, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		return err
	}
	if err := p.Login(sh, pkcs11.CKU_USER, sc.PIN); err != nil {
		return err
	}
	open := time.Since(t)
	t = time.Now()
	if err := p.FindObjectsInit(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)}); err != nil {
		return err
	}
	var all []pkcs11.ObjectHandle
	for {
		hs, _, err := p.FindObjects(sh, 1024)
		if err != nil {
			return err
		}
		if len(hs) == 0 {
			break
		}
		all = append(all, hs...)
	}
	if err := p.FindObjectsFinal(sh); err != nil {
		return err
	}
	for _, h := range all {
		if _, err := p.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil), pkcs11.NewAttribute(pkcs11.CKA_ID, nil)}); err != nil {
			return err
		}
	}
	fmt.Println(open.Seconds(), time.Since(t).Seconds())
	return nil
}
