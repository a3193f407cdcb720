// Package test holds the end-to-end tests: the real p11bridge binary against real peers
// (SoftHSM2, PyKMIP, the KES client, openssl, pkcs11-tool).
package test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binary is the p11bridge under test; faultBinary is the same built with -tags p11fault, whose ops
// listener serves /debug/fault to make the token fail on demand (hardening_fault_test.go).
var binary, faultBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "p11bridge-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "p11bridge")
	out, err := exec.Command("go", "build", "-o", binary, "../cmd/p11bridge").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build p11bridge: %v\n%s", err, out)
		os.Exit(1)
	}
	faultBinary = filepath.Join(dir, "p11bridge-fault")
	out, err = exec.Command("go", "build", "-tags", "p11fault", "-o", faultBinary, "../cmd/p11bridge").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build p11bridge -tags p11fault: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freeAddr returns a loopback address nobody listens on right now, and none it returned before:
// the kernel may give a port just closed to the next Listen, and two listeners of one server
// given the same address refuse to start.
func freeAddr(t *testing.T) string {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	// Listeners on ports handed out before stay open until a new one is found, so the kernel
	// cannot give the same one again meanwhile.
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, l)
		if addr := l.Addr().String(); !handedOut.addrs[addr] {
			handedOut.addrs[addr] = true
			return addr
		}
	}
}

var handedOut = struct {
	sync.Mutex
	addrs map[string]bool
}{addrs: map[string]bool{}}

// proc is a running p11bridge with its output captured.
type proc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// start runs the binary with args and stops it (SIGTERM, then SIGKILL) when the test ends.
func start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(binary, args...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop sends SIGTERM and waits for a graceful exit.
func (p *proc) stop(t *testing.T) {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		t.Errorf("p11bridge did not stop within 20 s of SIGTERM\n%s", p.Output())
	}
}

// waitReady polls the ops listener's /ready until it answers 200.
func waitReady(t *testing.T, p *proc, ops string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			t.Fatalf("p11bridge exited: %v\n%s", p.cmd.ProcessState, p.Output())
		default:
		}
		resp, err := http.Get("http://" + ops + "/ready")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("p11bridge not ready after 30 s\n%s", p.Output())
}

// runTool runs another program to completion and returns its combined output and exit code.
func runTool(t *testing.T, env []string, name string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// runCmd runs the binary to completion and returns its combined output and exit code.
func runCmd(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.CommandContext(context.Background(), binary, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatal(err)
		}
		code = ee.ExitCode()
	}
	return string(out), code
}

// readEnvFile parses KEY=VALUE lines.
func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			env[k] = v
		}
	}
	return env
}
