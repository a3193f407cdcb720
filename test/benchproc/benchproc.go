// Package benchproc runs the server processes the benchmark programs measure (`p11bridge serve`)
// and reads what they measure of processes and of the machine.
package benchproc

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/p11bridge/p11bridge/server"
)

// Serve is a running `p11bridge serve`.
type Serve struct {
	cmd    *exec.Cmd
	log    *os.File
	exited chan struct{}
	err    error // how it ended, once exited is closed
	Ready  time.Duration
}

// StartServe runs `bin serve --config config` with env, its output appended to logPath, and
// returns once the ops listener at ops answers /ready (Ready says how long that took) or fails
// after within.
func StartServe(bin, config string, env []string, logPath, ops string, within time.Duration) (*Serve, error) {
	start := time.Now()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	s := &Serve{cmd: exec.Command(bin, "serve", "--config", config), log: logf, exited: make(chan struct{})}
	s.cmd.Env = env
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = ChildAttr()
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	go func() { s.err = s.cmd.Wait(); close(s.exited) }()
	hc := &http.Client{Timeout: 2 * time.Second}
	for {
		if resp, err := hc.Get("http://" + ops + "/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				s.Ready = time.Since(start)
				return s, nil
			}
		}
		select {
		case <-s.exited:
			s.Stop()
			return nil, fmt.Errorf("p11bridge serve exited at start: %v (log: %s)", s.err, logPath)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Since(start) > within {
			s.Stop()
			return nil, fmt.Errorf("p11bridge serve not ready after %v (log: %s)", within, logPath)
		}
	}
}

// Pid is the server's process id (for its CPU time and memory in /proc).
func (s *Serve) Pid() int { return s.cmd.Process.Pid }

// Stop ends the server with SIGTERM (SIGKILL after 30 s) and waits for it.
func (s *Serve) Stop() {
	Stop(s.cmd.Process, s.exited, syscall.SIGTERM, 30*time.Second)
	s.log.Close()
}

// Stop sends p sig and waits until exited is closed, killing p after grace.
func Stop(p *os.Process, exited <-chan struct{}, sig os.Signal, grace time.Duration) {
	_ = p.Signal(sig)
	select {
	case <-exited:
	case <-time.After(grace):
		_ = p.Kill()
		<-exited
	}
}

// FreeAddr asks the kernel for a free loopback port. Servers take an address, not a listener, so
// the port is released before the server binds it; nothing else on 127.0.0.1 races for it in
// practice.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

// DevOptions is dev mode's setup in dir on three free loopback ports (KMIP, KES, ops).
func DevOptions(dir string) (server.DevOptions, error) {
	o := server.DevOptions{Dir: dir}
	for _, a := range []*string{&o.KMIP, &o.KES, &o.Ops} {
		var err error
		if *a, err = FreeAddr(); err != nil {
			return o, err
		}
	}
	return o, nil
}

// Loadavg is the machine's 1, 5 and 15 minute load average, "?" where there is none.
func Loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
