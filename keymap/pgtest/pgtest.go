// Package pgtest runs a real PostgreSQL server for tests: initdb in a temporary directory, the
// server on a free 127.0.0.1 port, password authentication over TCP. It uses the binaries of
// Debian's postgresql package (scripts/deps.sh test installs it); a missing binary fails the
// test, it is never skipped.
//
// initdb and postgres refuse to run as root. As root, the server runs as the unprivileged user
// p11bridge-pgtest, created with useradd when it does not exist; its directory is made and given
// to that user, and the processes are started with that user's credentials (no su or sudo).
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// User is the account the server runs as when the tests run as root.
const User = "p11bridge-pgtest"

// Server is one PostgreSQL server.
type Server struct {
	Dir      string // data directory and logs, removed by Stop
	Port     int
	Password string
	bin      string
	cred     *syscall.Credential
	mu       sync.Mutex
	stopped  bool
}

// Bin finds the directory of initdb, pg_ctl and postgres: $P11BRIDGE_PG_BIN, the newest
// /usr/lib/postgresql/*/bin, or the PATH.
func Bin() (string, error) {
	if d := os.Getenv("P11BRIDGE_PG_BIN"); d != "" {
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", fmt.Errorf("PostgreSQL server binaries not found (initdb in /usr/lib/postgresql/*/bin or the PATH): run scripts/deps.sh test, which installs Debian's postgresql")
}

func version(dir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return n
}

// Start initializes and starts a server; t fails when it cannot. The server is stopped when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// New initializes and starts a server; the caller stops it.
func New() (*Server, error) {
	bin, err := Bin()
	if err != nil {
		return nil, err
	}
	s := &Server{bin: bin}
	dir, err := os.MkdirTemp("", "p11bridge-pg-")
	if err != nil {
		return nil, err
	}
	s.Dir = dir
	if os.Geteuid() == 0 {
		if s.cred, err = unprivileged(); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		if err := os.Chown(dir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	pw := make([]byte, 12)
	rand.Read(pw)
	s.Password = hex.EncodeToString(pw)
	pwFile := filepath.Join(dir, "pw")
	if err := s.writeFile(pwFile, s.Password+"\n"); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if out, err := s.run("initdb", "-D", filepath.Join(dir, "data"), "-U", "p11bridge", "--pwfile", pwFile,
		"--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	os.Remove(pwFile)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s.Port = l.Addr().(*net.TCPAddr).Port
	l.Close()
	if err := s.Start(); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// unprivileged returns the credentials of User, creating the account when missing.
func unprivileged() (*syscall.Credential, error) {
	u, err := user.Lookup(User)
	if err != nil {
		out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", User).CombinedOutput()
		if err != nil && !strings.Contains(string(out), "already exists") {
			return nil, fmt.Errorf("useradd %s (initdb refuses to run as root): %v: %s", User, err, out)
		}
		if u, err = user.Lookup(User); err != nil {
			return nil, err
		}
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func (s *Server) writeFile(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return err
	}
	if s.cred != nil {
		return os.Chown(path, int(s.cred.Uid), int(s.cred.Gid))
	}
	return nil
}

func (s *Server) run(name string, args ...string) ([]byte, error) {
	cmd := exec.Command(filepath.Join(s.bin, name), args...)
	cmd.Dir = s.Dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if s.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	}
	return cmd.CombinedOutput()
}

// Start starts the (stopped) server and waits until it accepts connections.
func (s *Server) Start() error {
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=200", s.Port, s.Dir)
	out, err := s.run("pg_ctl", "-D", filepath.Join(s.Dir, "data"), "-l", filepath.Join(s.Dir, "server.log"), "-o", opts, "-w", "-t", "60", "start")
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(s.Dir, "server.log"))
		return fmt.Errorf("pg_ctl start: %v\n%s\n%s", err, out, log)
	}
	s.mu.Lock()
	s.stopped = false
	s.mu.Unlock()
	return nil
}

// Halt stops the server: mode "fast" (clients disconnected, clean shutdown) or "immediate" (as a
// crash: no checkpoint, recovery from the WAL at the next start).
func (s *Server) Halt(mode string) error {
	out, err := s.run("pg_ctl", "-D", filepath.Join(s.Dir, "data"), "-m", mode, "-w", "-t", "60", "stop")
	if err != nil {
		return fmt.Errorf("pg_ctl stop -m %s: %v\n%s", mode, err, out)
	}
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	return nil
}

// Stop stops the server and removes its directory.
func (s *Server) Stop() {
	s.mu.Lock()
	stopped := s.stopped
	s.mu.Unlock()
	if !stopped && s.Port != 0 {
		s.Halt("immediate")
	}
	os.RemoveAll(s.Dir)
}

// DSN is the connection URI of database db.
func (s *Server) DSN(db string) string {
	return fmt.Sprintf("postgres://p11bridge:%s@127.0.0.1:%d/%s?sslmode=disable", s.Password, s.Port, db)
}

// NewDatabase creates an empty database and returns its connection URI.
func (s *Server) NewDatabase(name string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return "", err
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", err
	}
	return s.DSN(name), nil
}

var (
	sharedMu sync.Mutex
	shared   *Server
)

// Shared is one server for every test of a package, started at the first call; StopShared (from
// TestMain) stops it. Each test takes a database of its own with NewDatabase.
func Shared(t testing.TB) *Server {
	t.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared == nil {
		s, err := New()
		if err != nil {
			t.Fatal(err)
		}
		shared = s
	}
	return shared
}

// StopShared stops the server Shared started, if any.
func StopShared() {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared != nil {
		shared.Stop()
		shared = nil
	}
}

// Database is a fresh database on the shared server, for one test.
func Database(t testing.TB) string {
	t.Helper()
	s := Shared(t)
	name := strings.ToLower(strings.NewReplacer("/", "_", " ", "_", "-", "_").Replace(t.Name()))
	if len(name) > 40 {
		name = name[:40]
	}
	b := make([]byte, 4)
	rand.Read(b)
	dsn, err := s.NewDatabase(fmt.Sprintf("t_%s_%x", name, b))
	if err != nil {
		t.Fatal(err)
	}
	return dsn
}
