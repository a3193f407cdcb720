package ttlv

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ansel1/merry/v2"

	"github.com/p11bridge/p11bridge/signer"
)

// Authorizer decides who a client is and what it may do. The server package implements it from
// the configured policies.
type Authorizer interface {
	// Identify names the client of a TLS connection; an error refuses the connection.
	Identify(cs *tls.ConnectionState) (identity string, err error)
	// AllowKMIP says whether identity may run operation, named as kmip14.Operation's String()
	// ("Create", "CreateKeyPair", "SignatureVerify", …).
	AllowKMIP(identity, operation string) bool
	// Caller is identity as the registry's key model sees it: admin or not, its policy's key
	// patterns. The registry decides every question about a key with it.
	Caller(identity string) signer.Caller
}

// Admitter is an optional part of an Authorizer: it bounds the operations one identity has running
// at once. Admit returns a function to call when the operation ends, or an error refusing it.
type Admitter interface {
	Admit(identity string) (release func(), err error)
}

// Options configure a Server.
type Options struct {
	Registry       *signer.Registry
	Auth           Authorizer
	Log            *slog.Logger  // operational log
	Audit          *slog.Logger  // one record per operation; never key bytes, data or PINs
	MaxMessageSize int           // 0 = 1 MiB
	MaxConnections int           // 0 = 1024
	IdleTimeout    time.Duration // 0 = 2 min; also the read deadline of a message once it started
	ServerName     string        // Query: VendorIdentification and ServerInformation
	// AuditCheck, when set, is asked before every operation; an error refuses it (the audit log
	// cannot be written and must be). An audit record that fails to be written also fails its
	// operation: the Audit handler returns the error only when records are required.
	AuditCheck func() error
}

// Defaults of Options.
const (
	DefaultMaxMessageSize = 1 << 20
	DefaultMaxConnections = 1024
	DefaultIdleTimeout    = 2 * time.Minute
	defaultServerName     = "p11bridge"
)

// Server answers KMIP requests over TLS connections.
type Server struct {
	opts  Options
	reg   *signer.Registry
	auth  Authorizer
	admit Admitter // nil when Auth does not bound operations per identity
	log   *slog.Logger
	audit *slog.Logger

	// base is cancelled when Shutdown gives up waiting, to abort requests still running.
	base   context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	closing   atomic.Bool
	active    sync.WaitGroup // connection goroutines
}

// New makes a server; Serve starts it on a listener.
func New(opts Options) *Server {
	if opts.MaxMessageSize <= 0 {
		opts.MaxMessageSize = DefaultMaxMessageSize
	}
	if opts.MaxConnections <= 0 {
		opts.MaxConnections = DefaultMaxConnections
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	if opts.ServerName == "" {
		opts.ServerName = defaultServerName
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Audit == nil {
		opts.Audit = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		opts: opts, reg: opts.Registry, auth: opts.Auth, log: opts.Log, audit: opts.Audit,
		listeners: map[net.Listener]struct{}{}, conns: map[*conn]struct{}{},
	}
	s.admit, _ = opts.Auth.(Admitter)
	s.base, s.cancel = context.WithCancel(context.Background())
	return s
}

// Serve accepts connections on l (which yields *tls.Conn) until Shutdown, then returns nil.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		_ = l.Close()
		return nil
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.closing.Load() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Out of file descriptors and the like: wait a little rather than spin.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("kmip: accept failed; retrying", "err", err, "in", backoff)
				time.Sleep(backoff)
				continue
			}
			return merry.Prepend(err, "kmip: accept")
		}
		backoff = 0
		c, ok := s.track(nc)
		if !ok {
			continue
		}
		go c.serve()
	}
}

// track registers a new connection, or closes it when the server is full or stopping.
func (s *Server) track(nc net.Conn) (*conn, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		_ = nc.Close()
		return nil, false
	}
	if len(s.conns) >= s.opts.MaxConnections {
		s.log.Warn("kmip: connection limit reached; refusing connection", "remote", nc.RemoteAddr().String(), "limit", s.opts.MaxConnections)
		_ = nc.Close()
		return nil, false
	}
	c := &conn{s: s, nc: nc, remote: nc.RemoteAddr().String(), idle: true}
	s.conns[c] = struct{}{}
	s.active.Add(1)
	return c, true
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.active.Done()
}

// Shutdown stops accepting, closes idle connections, and waits for requests in flight to be
// answered. When ctx ends first it closes everything and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	for l := range s.listeners {
		_ = l.Close()
	}
	for c := range s.conns {
		c.closeIfIdle()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.active.Wait()
		close(done)
	}()
	// Connections that were busy close themselves after answering; poll for ones that went idle
	// between the sweep above and their next read.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-done:
			s.cancel()
			return nil
		case <-ctx.Done():
			s.cancel()
			s.mu.Lock()
			for c := range s.conns {
				_ = c.nc.Close()
			}
			s.mu.Unlock()
			return ctx.Err()
		case <-tick.C:
			s.mu.Lock()
			for c := range s.conns {
				c.closeIfIdle()
			}
			s.mu.Unlock()
		}
	}
}
