package kes

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	kesclient "github.com/minio/kms-go/kes"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/server/pki"
	"github.com/p11bridge/p11bridge/signer"
)

// The "kes" subject of the benchmarks is p11bridge's KES front end in a process of its own, as in
// production and as the KES reference runs: the test binary started again with
// benchServerEnv set, serving the fixture's token through an http.Server wired the way
// server.Start wires it (TLS asking for any client certificate, HTTP/2 via ALPN, ServeTLS, the
// same header, read, write and idle timeouts, the per-identity bound on operations in flight, the
// audit check, audit records JSON-encoded to an append-only file). A client and
// a server sharing one Go runtime hand requests to each other without waking another process;
// measured that way a request cost p11bridge 20–40% less CPU than with the same server on its
// own, which would flatter it against KES. The in-process variant stays as "kes-inproc": its CPU
// profile (-cpuprofile) covers client and server, and it isolates the cost of the process
// boundary. The server process writes its own CPU profile next to -cpuprofile's, suffixed
// ".kes-server".

const benchServerEnv = "P11BRIDGE_KES_BENCH_SERVER"

// benchServerConfig is what the parent hands the server process (as JSON in benchServerEnv).
type benchServerConfig struct {
	Module, Label, PIN string
	Keymap             string   // a copy of the fixture's keymap: the file is locked while open
	Cert, Key          string   // PEM files of the server certificate
	Client             string   // identity of the benchmark client
	Allow              []string // its policy
	Audit              string   // audit log file
	Profile            string   // CPU profile to write, "" for none
}

// runBenchServer is the server process. It prints its address on stdout and serves until stdin
// closes (the parent finished or died).
func runBenchServer(spec string) int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "kes bench server:", err)
		return 1
	}
	// As p11bridge serve runs when GOGC is not set (cmd/p11bridge/gc.go). KES runs with Go's default.
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(400)
	}
	var c benchServerConfig
	if err := json.Unmarshal([]byte(spec), &c); err != nil {
		return fail(err)
	}
	km, err := keymap.Open(c.Keymap, quiet)
	if err != nil {
		return fail(err)
	}
	defer km.Close()
	reg, err := signer.Open(signer.Options{
		Signers: []signer.Config{{Name: "a", Module: c.Module, TokenLabel: c.Label, PIN: c.PIN, MaxSessions: 8, KeyCopies: 1024}},
		Default: "a", Logger: quiet,
	}, km)
	if err != nil {
		return fail(err)
	}
	defer reg.Close()
	audit, err := os.OpenFile(c.Audit, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fail(err)
	}
	defer audit.Close()
	cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return fail(err)
	}
	var auditFailed atomic.Bool // the server's audit writer: refuse key operations once writing failed
	h := New(Options{
		Registry: reg, Auth: &benchAuth{client: c.Client, allow: c.Allow, inFlight: map[string]int{}}, Log: quiet,
		Audit: slog.New(slog.NewJSONHandler(audit, nil)), Version: "bench",
		AuditCheck: func() error {
			if auditFailed.Load() {
				return errors.New("audit log unavailable")
			}
			return nil
		},
	})
	srv := &http.Server{
		Handler: h,
		TLSConfig: &tls.Config{
			MinVersion: tls.VersionTLS12, ClientAuth: tls.RequireAnyClientCert, NextProtos: []string{"h2", "http/1.1"},
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil },
		},
		ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 20 * time.Second, WriteTimeout: 30 * time.Second,
		IdleTimeout: 2 * time.Minute, ErrorLog: log.New(io.Discard, "", 0),
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fail(err)
	}
	if c.Profile != "" {
		f, err := os.Create(c.Profile)
		if err != nil {
			return fail(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fail(err)
		}
		defer pprof.StopCPUProfile()
	}
	go func() { _ = srv.ServeTLS(l, "", "") }()
	fmt.Println(l.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	_ = srv.Close()
	return 0
}

// benchAuth is the server process's Authorizer: one client with one policy, identified as the
// server package identifies clients, and with its per-identity bound on operations in flight (a
// mutex and a map, as there).
type benchAuth struct {
	client string
	allow  []string

	mu       sync.Mutex
	inFlight map[string]int
}

func (a *benchAuth) Identify(r *http.Request) (string, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return "", errors.New("no client certificate")
	}
	return pki.Identity(r.TLS.PeerCertificates[0]), nil
}

func (a *benchAuth) AllowKES(id, path string) bool {
	if id != a.client {
		return false
	}
	for _, p := range a.allow {
		if matchPattern(p, path) {
			return true
		}
	}
	return false
}

func (a *benchAuth) Admit(id string) (func(), error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.inFlight[id] >= 256 {
		return nil, errors.New("too many requests in flight")
	}
	a.inFlight[id]++
	return func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.inFlight[id]--; a.inFlight[id] <= 0 {
			delete(a.inFlight, id)
		}
	}, nil
}

func (a *benchAuth) IsAdmin(string) bool { return false }
func (a *benchAuth) Caller(id string) signer.Caller {
	return signer.Caller{Identity: id, Keys: []string{"*"}}
}
func (a *benchAuth) Policies() []Policy                { return []Policy{{Name: "minio", Allow: a.allow}} }
func (a *benchAuth) PolicyOf(id string) (string, bool) { return "minio", id == a.client }
func (a *benchAuth) Identities() []string              { return []string{a.client} }

var benchSrv struct {
	once   sync.Once
	err    error
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	exited chan struct{}
	client *kesclient.Client
}

// benchKeyNames are the keys the benchmarks use; they must exist before the server process copies
// the keymap.
var benchKeyNames = []string{"bench-generate", "bench-decrypt"}

// benchServerClient returns a kms-go client of the server process, starting it on first use.
func benchServerClient() (*kesclient.Client, error) {
	benchSrv.once.Do(func() { benchSrv.err = startBenchServer() })
	return benchSrv.client, benchSrv.err
}

func startBenchServer() error {
	for _, n := range benchKeyNames {
		if _, ok := fx.reg.KESKey(signer.Operator, n); !ok {
			if err := fx.admin.kes.CreateKey(context.Background(), n); err != nil {
				return err
			}
		}
	}
	dir := filepath.Join(fx.dir, "kes-bench-server")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// A copy, so the server process sees the same keys (same ids, same token objects): the
	// keymap file is locked by the process that has it open.
	rows, err := os.ReadFile(filepath.Join(fx.dir, "keymap.csv"))
	if err != nil {
		return err
	}
	kmCopy := filepath.Join(dir, "keymap.csv")
	if err := os.WriteFile(kmCopy, rows, 0o600); err != nil {
		return err
	}
	cert, key, err := fx.ca.Issue("localhost", []string{"127.0.0.1", "localhost"}, pki.Server)
	if err != nil {
		return err
	}
	c := benchServerConfig{
		Module: fx.tok.Module, Label: fx.tok.Label, PIN: fx.tok.PIN, Keymap: kmCopy,
		Cert: filepath.Join(dir, "server.crt"), Key: filepath.Join(dir, "server.key"),
		Allow: minioPolicy, Audit: filepath.Join(dir, "audit.log"), Profile: profileBeside(".kes-server"),
	}
	if err := pki.WriteFiles(cert, key, c.Cert, c.Key); err != nil {
		return err
	}
	apiKey, id, err := pki.APIKey()
	if err != nil {
		return err
	}
	c.Client = id
	spec, err := json.Marshal(c)
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	stderrFile := filepath.Join(dir, "stderr.log")
	errLog, err := os.Create(stderrFile)
	if err != nil {
		return err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), benchServerEnv+"="+string(spec)) // SOFTHSM2_CONF is inherited
	cmd.Stderr = errLog
	cmd.SysProcAttr = childAttr()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		errLog.Close()
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		errLog.Close()
		return err
	}
	if err := cmd.Start(); err != nil {
		errLog.Close()
		return err
	}
	benchSrv.cmd, benchSrv.stdin, benchSrv.exited = cmd, stdin, make(chan struct{})
	addrc := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		addrc <- strings.TrimSpace(line)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	go func() {
		_ = cmd.Wait()
		errLog.Close()
		close(benchSrv.exited)
	}()
	var addr string
	select {
	case addr = <-addrc:
	case <-time.After(30 * time.Second):
	}
	if addr == "" {
		stopBenchServer()
		out, _ := os.ReadFile(stderrFile)
		return fmt.Errorf("kes bench server did not start: %s", out)
	}
	ak, err := kesclient.ParseAPIKey(apiKey)
	if err != nil {
		return err
	}
	ccert, err := kesclient.GenerateCertificate(ak)
	if err != nil {
		return err
	}
	benchSrv.client = kesclient.NewClientWithConfig("https://"+addr, &tls.Config{Certificates: []tls.Certificate{ccert}, RootCAs: fx.roots})
	return nil
}

// stopBenchServer ends the server process, if one was started (called from TestMain).
func stopBenchServer() {
	if benchSrv.cmd == nil || benchSrv.cmd.Process == nil {
		return
	}
	benchSrv.stdin.Close()
	select {
	case <-benchSrv.exited:
	case <-time.After(5 * time.Second):
		_ = benchSrv.cmd.Process.Kill()
		<-benchSrv.exited
	}
}

// profileBeside names a file next to the -test.cpuprofile output, or "" when none is asked for.
func profileBeside(suffix string) string {
	f := flag.Lookup("test.cpuprofile")
	if f == nil || f.Value.String() == "" {
		return ""
	}
	p := f.Value.String() + suffix
	if !filepath.IsAbs(p) {
		// The go command passes -test.outputdir; testing resolves the profile's path against it.
		if d := flag.Lookup("test.outputdir"); d != nil && d.Value.String() != "" {
			p = filepath.Join(d.Value.String(), p)
		}
	}
	return p
}
