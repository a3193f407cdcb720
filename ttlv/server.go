package ttlv

import (
	"container/list"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/netip"
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
	// HasKMIP says whether identity may run any KMIP operation at all (connection slots).
	HasKMIP(identity string) bool
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
	Log            *slog.Logger // operational log
	Audit          *slog.Logger // one record per operation; never key bytes, data or PINs
	MaxMessageSize int          // 0 = 1 MiB
	MaxConnections int          // authenticated connections; 0 = 1024
	// MaxConnectionsPerIdentity bounds one identity's, so that one cannot take every slot; 0 = a
	// quarter of MaxConnections. Identities without KMIP rights (Authorizer.HasKMIP) share
	// unprivilegedConns slots of their own instead: they are let in to be told Permission Denied,
	// and cannot crowd out clients that have work to do.
	MaxConnectionsPerIdentity int
	IdleTimeout               time.Duration // 0 = 2 min; also the read deadline of a message once it started
	// HandshakeTimeout bounds the TLS handshake and identification of a new connection; 0 = 10 s.
	HandshakeTimeout time.Duration
	// MaxHandshakes bounds the connections still in their handshake, beside the MaxConnections
	// authenticated ones; 0 = 256. MaxHandshakesPerAddress bounds them per source address (IPv6:
	// per /64); 0 = 64. Over either bound the oldest unfinished handshake is closed for the new
	// connection once it has had a second (real clients finish in milliseconds), and the new one
	// is refused while all are younger (a burst of real clients is not cut short by itself).
	MaxHandshakes           int
	MaxHandshakesPerAddress int
	// MaxLocateItems caps the identifiers one Locate answers; 0 = 1000.
	MaxLocateItems int
	ServerName     string // Query: VendorIdentification and ServerInformation
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
	// DefaultHandshakeTimeout leaves room for a client certificate check on a slow client, and
	// makes a silent connection cost 10 s rather than an idle timeout.
	DefaultHandshakeTimeout        = 10 * time.Second
	DefaultMaxHandshakes           = 256
	DefaultMaxHandshakesPerAddress = 64
	// DefaultMaxLocateItems keeps a Locate answer to some 50 KB; clients page with Offset Items.
	DefaultMaxLocateItems = 1000
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

	locates locateCache // recent Locate results, for their next pages

	// base is cancelled when Shutdown gives up waiting, to abort requests still running.
	base   context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	// Connections in their handshake, oldest first: all of them, and per source address.
	pending      list.List
	pendingFrom  map[string]*list.List
	established  int            // authenticated connections of identities with KMIP rights, bounded by MaxConnections
	byIdentity   map[string]int // their connections per identity, bounded by MaxConnectionsPerIdentity
	unprivileged int            // connections of identities without KMIP rights, bounded by unprivilegedConns
	evicted      int            // handshakes closed for newer ones since the last warning
	refusedHS    int            // connections refused over the handshake bounds since the last warning
	evictWarned  time.Time
	closing      atomic.Bool
	active       sync.WaitGroup // connection goroutines
}

// New makes a server; Serve starts it on a listener.
func New(opts Options) *Server {
	if opts.MaxMessageSize <= 0 {
		opts.MaxMessageSize = DefaultMaxMessageSize
	}
	if opts.MaxConnections <= 0 {
		opts.MaxConnections = DefaultMaxConnections
	}
	if opts.MaxConnectionsPerIdentity <= 0 {
		opts.MaxConnectionsPerIdentity = max(1, opts.MaxConnections/4)
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if opts.MaxHandshakes <= 0 {
		opts.MaxHandshakes = DefaultMaxHandshakes
	}
	if opts.MaxHandshakesPerAddress <= 0 {
		opts.MaxHandshakesPerAddress = DefaultMaxHandshakesPerAddress
	}
	if opts.MaxLocateItems <= 0 {
		opts.MaxLocateItems = DefaultMaxLocateItems
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
		listeners: map[net.Listener]struct{}{}, conns: map[*conn]struct{}{}, pendingFrom: map[string]*list.List{}, byIdentity: map[string]int{},
	}
	s.admit, _ = opts.Auth.(Admitter)
	s.base, s.cancel = context.WithCancel(context.Background())
	if s.reg != nil {
		s.markFurtherNames()
	}
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
			if errors.Is(err, net.ErrClosed) {
				return merry.Prepend(err, "kmip: accept")
			}
			// Out of file descriptors (EMFILE, ENFILE), a connection reset before it was taken
			// (ECONNABORTED) and the like pass: wait a little rather than spin, and never stop
			// listening for them, which would end the KMIP service until a restart.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("kmip: accept failed; retrying", "err", err, "in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		c, ok := s.track(nc)
		if !ok {
			continue
		}
		go c.serve()
	}
}

// handshakeGrace is how long a handshake is safe from being closed for a newer connection: a
// client finishes in milliseconds, so one still unfinished after a second is a client that is not
// trying, and a burst of real clients is not cut short by its own later members.
const handshakeGrace = time.Second

// track registers a new connection, in its handshake, or closes it when the server is full of
// authenticated connections or stopping. Over the bounds on unfinished handshakes, of its source
// address or of the server, the oldest is closed to make room if it has had handshakeGrace, and
// the new connection is refused otherwise.
func (s *Server) track(nc net.Conn) (*conn, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		_ = nc.Close()
		return nil, false
	}
	if s.established >= s.opts.MaxConnections {
		s.log.Warn("kmip: connection limit reached; refusing connection", "remote", nc.RemoteAddr().String(), "limit", s.opts.MaxConnections)
		_ = nc.Close()
		return nil, false
	}
	c := &conn{s: s, nc: nc, remote: nc.RemoteAddr().String(), source: sourceOf(nc.RemoteAddr()), idle: true, accepted: time.Now()}
	from := s.pendingFrom[c.source]
	if (from != nil && from.Len() >= s.opts.MaxHandshakesPerAddress && !s.evictOldestLocked(from, c.accepted)) ||
		(s.pending.Len() >= s.opts.MaxHandshakes && !s.evictOldestLocked(&s.pending, c.accepted)) {
		s.refusedHS++
		s.warnHandshakesLocked(c.source)
		_ = nc.Close()
		return nil, false
	}
	if from = s.pendingFrom[c.source]; from == nil {
		from = &list.List{}
		s.pendingFrom[c.source] = from
	}
	c.inAll, c.inFrom = s.pending.PushBack(c), from.PushBack(c)
	s.conns[c] = struct{}{}
	s.active.Add(1)
	return c, true
}

// evictOldestLocked closes the oldest handshake of l for a connection that came at now, if it has
// had handshakeGrace. Needs mu.
func (s *Server) evictOldestLocked(l *list.List, now time.Time) bool {
	c := l.Front().Value.(*conn)
	if now.Sub(c.accepted) < handshakeGrace {
		return false
	}
	s.unpendLocked(c)
	c.evicted.Store(true)
	c.close()
	s.evicted++
	s.warnHandshakesLocked(c.source)
	return true
}

// warnHandshakesLocked reports handshakes closed and connections refused over the bounds, once
// per 10 s at most: a flood of silent connections must not flood the log too. Needs mu.
func (s *Server) warnHandshakesLocked(source string) {
	if now := time.Now(); now.Sub(s.evictWarned) >= 10*time.Second {
		s.log.Warn("kmip: too many unfinished TLS handshakes; closing the oldest, refusing new ones while all are recent",
			"closed", s.evicted, "refused", s.refusedHS, "per_address", s.opts.MaxHandshakesPerAddress, "total", s.opts.MaxHandshakes, "latest_from", source)
		s.evicted, s.refusedHS, s.evictWarned = 0, 0, now
	}
}

// unpendLocked takes c off the lists of handshakes. Needs mu.
func (s *Server) unpendLocked(c *conn) {
	if c.inAll == nil {
		return
	}
	s.pending.Remove(c.inAll)
	from := s.pendingFrom[c.source]
	from.Remove(c.inFrom)
	if from.Len() == 0 {
		delete(s.pendingFrom, c.source)
	}
	c.inAll, c.inFrom = nil, nil
}

// seat moves c, now authenticated, from the handshakes to a connection slot; false when every
// slot is taken (or c was closed meanwhile).
func (s *Server) seat(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.inAll == nil {
		return false
	}
	s.unpendLocked(c)
	if !c.privileged {
		if s.unprivileged >= unprivilegedConns {
			s.log.Info("kmip: connection of an identity without KMIP rights refused: too many such", "remote", c.remote, "identity", c.identity, "limit", unprivilegedConns)
			return false
		}
		s.unprivileged++
		c.admitted = true
		return true
	}
	if s.established >= s.opts.MaxConnections {
		s.log.Warn("kmip: connection limit reached; refusing connection", "remote", c.remote, "identity", c.identity, "limit", s.opts.MaxConnections)
		return false
	}
	if s.byIdentity[c.identity] >= s.opts.MaxConnectionsPerIdentity {
		s.log.Warn("kmip: connection limit of the identity reached; refusing connection", "remote", c.remote, "identity", c.identity, "limit", s.opts.MaxConnectionsPerIdentity)
		return false
	}
	s.established++
	s.byIdentity[c.identity]++
	c.admitted = true
	return true
}

// unprivilegedConns is how many connections identities without KMIP rights may hold together.
const unprivilegedConns = 64

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.unpendLocked(c)
	switch {
	case c.admitted && !c.privileged:
		s.unprivileged--
	case c.admitted:
		s.established--
		if s.byIdentity[c.identity]--; s.byIdentity[c.identity] <= 0 {
			delete(s.byIdentity, c.identity)
		}
	}
	s.mu.Unlock()
	s.active.Done()
}

// sourceOf is the source a connection counts against: its IP address, for IPv6 its /64 (one
// host commonly holds a whole /64).
func sourceOf(a net.Addr) string {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return a.String()
	}
	ip := ap.Addr().Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
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
