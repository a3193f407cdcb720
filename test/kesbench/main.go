// Command kesbench compares the real p11bridge server with KES v0.24.0 the way a MinIO user would
// meet them (`make bench`, docs/benchmarks.md): p11bridge as `p11bridge serve` on the setup dev mode
// makes (a SoftHSM2 token, the audit log on, MinIO's API key from minio.env and its policy), KES
// with its file key store and its audit log on, given the same API key and policy. Both servers run
// at once; MinIO's client (kms-go v0.3.1) calls generate or decrypt on one of them for a slice of
// time, then on the other, alternating, several rounds per case. Each round gives a ratio of
// throughputs (p11bridge over KES, so > 1 is p11bridge ahead); the table shows their medians and
// each server process's CPU time per request (from /proc).
//
//	go build -o bin/p11bridge ./cmd/p11bridge
//	go run ./test/kesbench -bin bin/p11bridge [-rounds 6] [-slice 3s] [-profile DIR]
//
// With -profile, p11bridge writes a CPU profile of the run to DIR/p11bridge.pprof
// (P11BRIDGE_CPU_PROFILE): go tool pprof -top bin/p11bridge DIR/p11bridge.pprof.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	kesclient "github.com/minio/kms-go/kes"

	"github.com/p11bridge/p11bridge/server"
	"github.com/p11bridge/p11bridge/server/pki"
	"github.com/p11bridge/p11bridge/test/benchproc"
	"github.com/p11bridge/p11bridge/test/kesref"
)

func main() {
	bin := flag.String("bin", "bin/p11bridge", "the p11bridge binary to measure")
	rounds := flag.Int("rounds", 6, "alternations per case")
	slice := flag.Duration("slice", 3*time.Second, "time on one server before switching to the other")
	concs := flag.String("conc", "1,8", "concurrencies (goroutines sharing one client)")
	opsFlag := flag.String("ops", "generate,decrypt", "operations")
	profile := flag.String("profile", "", "directory for p11bridge's CPU profile of the run")
	keep := flag.String("dir", "", "directory for the servers' files (default: temporary, removed after)")
	buildOnly := flag.Bool("build-kes", false, "only find or build the KES binary")
	bBin := flag.String("b-bin", "", "tuning: a second p11bridge binary, measured in turn with the first and KES")
	bEnv := flag.String("b-env", "", "tuning: environment (K=V,K=V) of a second p11bridge run of -bin (or -b-bin)")
	flag.Parse()
	if *buildOnly {
		bin, err := kesref.Binary()
		if err != nil {
			fmt.Fprintln(os.Stderr, "kesbench:", err)
			os.Exit(1)
		}
		fmt.Println("KES", kesref.Version, "at", bin)
		return
	}
	if err := run(*bin, *rounds, *slice, *concs, *opsFlag, *profile, *keep, *bBin, *bEnv); err != nil {
		fmt.Fprintln(os.Stderr, "kesbench:", err)
		os.Exit(1)
	}
}

// policy is dev mode's MinIO policy (server/dev.go), given to the API key on both servers.
var policy = []string{
	"/v1/key/create/*", "/v1/key/generate/*", "/v1/key/decrypt/*", "/v1/key/list/*", "/v1/key/describe/*",
	"/v1/key/hmac/*", "/v1/status", "/v1/api", "/v1/metrics", "/version",
}

// bind is the context MinIO binds a data key to for an object.
var bind = []byte(`{"bucket":"bucket/object"}`)

const keyName = "bench-key"

type subject struct {
	name   string
	client *kesclient.Client
	pid    int
	dek    []byte // a ciphertext of keyName's, for decrypt
}

func run(bin string, rounds int, slice time.Duration, concList, opList, profile, dir, bBin, bEnv string) error {
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	kesBin, err := kesref.Binary()
	if err != nil {
		return fmt.Errorf("reference KES: %w", err)
	}
	if dir == "" {
		if dir, err = os.MkdirTemp("", "p11bridge-kesbench-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	started := time.Now().UTC()
	load0 := benchproc.Loadavg()

	// p11bridge: dev mode's setup, run by serve.
	d, endpoint, srv, err := startP11(bin, filepath.Join(dir, "p11bridge"), nil, profile)
	if err != nil {
		return err
	}
	defer srv.Stop()
	env, err := readEnv(filepath.Join(d.Dir, "minio.env"))
	if err != nil {
		return err
	}

	// KES with the same API key, policy and certificate authority.
	ca, err := pki.LoadCA(filepath.Join(d.Dir, "tls", "ca.pem"), filepath.Join(d.Dir, "tls", "ca-key.pem"))
	if err != nil {
		return err
	}
	kesDir := filepath.Join(dir, "kes")
	if err := os.MkdirAll(kesDir, 0o700); err != nil {
		return err
	}
	cert, key, err := ca.Issue("localhost", []string{"127.0.0.1", "localhost"}, pki.Server)
	if err != nil {
		return err
	}
	certFile, keyFile := filepath.Join(kesDir, "server.crt"), filepath.Join(kesDir, "server.key")
	if err := pki.WriteFiles(cert, key, certFile, keyFile); err != nil {
		return err
	}
	id, err := pki.APIKeyIdentity(env["MINIO_KMS_KES_API_KEY"])
	if err != nil {
		return err
	}
	ref, err := kesref.Start(kesBin, kesref.Options{Dir: kesDir, Cert: certFile, Key: keyFile, Allow: policy, Identity: id})
	if err != nil {
		return err
	}
	defer ref.Stop()

	// One client per server, as MinIO holds one: the API key's certificate, the dev CA.
	ak, err := kesclient.ParseAPIKey(env["MINIO_KMS_KES_API_KEY"])
	if err != nil {
		return err
	}
	ccert, err := kesclient.GenerateCertificate(ak)
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(env["MINIO_KMS_KES_CAPATH"])
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	newClient := func(endpoint string) *kesclient.Client {
		return kesclient.NewClientWithConfig(endpoint, &tls.Config{Certificates: []tls.Certificate{ccert}, RootCAs: roots})
	}
	subjects := []*subject{
		{name: "p11bridge", client: newClient(endpoint), pid: srv.Pid()},
		{name: "kes-v0.24", client: newClient("https://" + ref.Addr), pid: ref.Pid()},
	}
	if bBin != "" || bEnv != "" {
		// A second p11bridge on a setup of its own, with the same API key (its minio.key copied in
		// before the setup reads it), for comparing two builds or settings in one run.
		bDir := filepath.Join(dir, "p11bridge-b")
		if err := os.MkdirAll(bDir, 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(bDir, "minio.key"), []byte(env["MINIO_KMS_KES_API_KEY"]+"\n"), 0o600); err != nil {
			return err
		}
		if bBin == "" {
			bBin = bin
		}
		var extra []string
		if bEnv != "" {
			extra = strings.Split(bEnv, ",")
		}
		bd, bEndpoint, bSrv, err := startP11(bBin, bDir, extra, "")
		if err != nil {
			return err
		}
		defer bSrv.Stop()
		bCA, err := os.ReadFile(filepath.Join(bd.Dir, "tls", "ca.pem"))
		if err != nil {
			return err
		}
		bRoots := x509.NewCertPool()
		bRoots.AppendCertsFromPEM(bCA)
		bc := kesclient.NewClientWithConfig(bEndpoint, &tls.Config{Certificates: []tls.Certificate{ccert}, RootCAs: bRoots})
		subjects = append(subjects, &subject{name: "p11bridge-b", client: bc, pid: bSrv.Pid()})
	}
	cx := context.Background()
	for _, s := range subjects {
		if err := s.client.CreateKey(cx, keyName); err != nil && !errors.Is(err, kesclient.ErrKeyExists) {
			return fmt.Errorf("%s: create key: %w", s.name, err)
		}
		dek, err := s.client.GenerateKey(cx, keyName, bind)
		if err != nil {
			return fmt.Errorf("%s: generate: %w", s.name, err)
		}
		s.dek = dek.Ciphertext
	}
	ops := map[string]func(context.Context, *subject) error{
		"generate": func(cx context.Context, s *subject) error {
			_, err := s.client.GenerateKey(cx, keyName, bind)
			return err
		},
		"decrypt": func(cx context.Context, s *subject) error {
			_, err := s.client.Decrypt(cx, keyName, s.dek, bind)
			return err
		},
	}

	fmt.Printf("p11bridge (%s serve, dev mode's setup, audit on) against KES %s (fs key store, audit on), kms-go v0.3.1 client\n", bin, kesref.Version)
	fmt.Printf("%s, load average %s; %d rounds of %v on each server per case, alternating\n\n", started.Format("2006-01-02 15:04 UTC"), load0, rounds, slice)
	fmt.Printf("%-9s %-4s %12s %12s %22s %16s %16s %14s\n", "operation", "conc", "p11 ops/s", "KES ops/s", "ratio median (range)", "p11 srv µs/op", "KES srv µs/op", "client µs/op")
	for _, opName := range strings.Split(opList, ",") {
		op := ops[opName]
		if op == nil {
			return fmt.Errorf("unknown operation %q", opName)
		}
		for _, cs := range strings.Split(concList, ",") {
			conc, err := strconv.Atoi(cs)
			if err != nil {
				return err
			}
			var ratios []float64
			rate := map[string][]float64{}
			srvCPU := map[string][]float64{}
			cliCPU := map[string][]float64{}
			// A second on each first: connections, the key's session copy, the servers' heaps.
			for _, s := range subjects {
				if _, err := measure(s, op, conc, time.Second); err != nil {
					return err
				}
			}
			var bRatios []float64
			for r := range rounds {
				// Each round in another order, so that no subject always follows the same one.
				order := slices.Clone(subjects)
				if r%2 == 1 {
					slices.Reverse(order)
				}
				got := map[string]float64{}
				for _, s := range order {
					m, err := measure(s, op, conc, slice)
					if err != nil {
						return err
					}
					got[s.name] = m.rate
					rate[s.name] = append(rate[s.name], m.rate)
					srvCPU[s.name] = append(srvCPU[s.name], m.srvPerOp)
					cliCPU[s.name] = append(cliCPU[s.name], m.cliPerOp)
				}
				ratios = append(ratios, got["p11bridge"]/got["kes-v0.24"])
				if len(subjects) > 2 {
					bRatios = append(bRatios, got["p11bridge-b"]/got["kes-v0.24"])
				}
			}
			lo, hi := slices.Min(ratios), slices.Max(ratios)
			fmt.Printf("%-9s c%-3d %12.0f %12.0f %10.2f× (%.2f–%.2f) %16.1f %16.1f %6.1f / %-6.1f\n", opName, conc,
				median(rate["p11bridge"]), median(rate["kes-v0.24"]), median(ratios), lo, hi,
				median(srvCPU["p11bridge"]), median(srvCPU["kes-v0.24"]), median(cliCPU["p11bridge"]), median(cliCPU["kes-v0.24"]))
			if len(bRatios) > 0 {
				fmt.Printf("%-9s c%-3d %12.0f %12s %10.2f× (%.2f–%.2f) %16.1f   (second p11bridge)\n", opName, conc,
					median(rate["p11bridge-b"]), "", median(bRatios), slices.Min(bRatios), slices.Max(bRatios), median(srvCPU["p11bridge-b"]))
			}
		}
	}
	fmt.Printf("\nload average %s at the end (%s); ratio = p11bridge ops/s ÷ KES ops/s in adjacent slices; srv µs/op = each server process's CPU per request; client µs/op = this process's, against p11bridge / KES\n",
		benchproc.Loadavg(), time.Now().UTC().Format("15:04 UTC"))
	return nil
}

// startP11 prepares dev mode's setup in dir and runs `bin serve` on it with extra environment
// (and a CPU profile into profile, when set); it returns once /ready answers.
func startP11(bin, dir string, extra []string, profile string) (*server.DevSetup, string, *benchproc.Serve, error) {
	opts, err := benchproc.DevOptions(dir)
	if err != nil {
		return nil, "", nil, err
	}
	d, err := server.PrepareDev(opts)
	if err != nil {
		return nil, "", nil, err
	}
	env := append(os.Environ(), "SOFTHSM2_CONF="+d.Token.Conf)
	env = append(env, extra...)
	if profile != "" {
		if err := os.MkdirAll(profile, 0o755); err != nil {
			return nil, "", nil, err
		}
		p, _ := filepath.Abs(filepath.Join(profile, "p11bridge.pprof"))
		env = append(env, "P11BRIDGE_CPU_PROFILE="+p)
	}
	srv, err := benchproc.StartServe(bin, d.Config, env, filepath.Join(dir, "serve.log"), opts.Ops, time.Minute)
	if err != nil {
		return nil, "", nil, err
	}
	return d, "https://" + opts.KES, srv, nil
}

type measurement struct {
	rate               float64 // ops/s
	srvPerOp, cliPerOp float64 // µs of CPU per request
}

// measure runs op on conc goroutines against s for d and reads the CPU both processes used.
func measure(s *subject, op func(context.Context, *subject) error, conc int, d time.Duration) (measurement, error) {
	srv0, err := procCPU(s.pid)
	if err != nil {
		return measurement{}, err
	}
	cli0 := selfCPU()
	var n atomic.Int64
	var failed atomic.Pointer[error]
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cx := context.Background()
			for time.Now().Before(deadline) {
				if err := op(cx, s); err != nil {
					failed.Store(&err)
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	if e := failed.Load(); e != nil {
		return measurement{}, fmt.Errorf("%s: %w", s.name, *e)
	}
	srv1, err := procCPU(s.pid)
	if err != nil {
		return measurement{}, err
	}
	cli1 := selfCPU()
	ops := float64(n.Load())
	return measurement{
		rate:     ops / took.Seconds(),
		srvPerOp: float64((srv1 - srv0).Microseconds()) / ops,
		cliPerOp: float64((cli1 - cli0).Microseconds()) / ops,
	}, nil
}

// procCPU is the user and system CPU time a process has used (/proc/PID/stat, in clock ticks of
// 10 ms).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces: fields count from after it.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %v %v", pid, err1, err2)
	}
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// readEnv reads dev mode's minio.env (NAME=value lines).
func readEnv(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			out[k] = v
		}
	}
	for _, k := range []string{"MINIO_KMS_KES_ENDPOINT", "MINIO_KMS_KES_API_KEY", "MINIO_KMS_KES_CAPATH"} {
		if out[k] == "" {
			return nil, fmt.Errorf("%s: no %s", path, k)
		}
	}
	return out, sc.Err()
}
