package ttlv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/gemalto/kmip-go/kmip14"
)

// gateAuth holds every operation at AllowKMIP until released: a request stays in flight as long
// as a test wants.
type gateAuth struct {
	*testAuth
	entered chan struct{}
	release chan struct{}
}

func (g *gateAuth) AllowKMIP(identity, op string) bool {
	g.entered <- struct{}{}
	<-g.release
	return true
}

// startServer runs a second server on the shared registry with its own options.
func startServer(t *testing.T, opts Options) (*Server, string, chan error) {
	t.Helper()
	if opts.Auth == nil {
		opts.Auth = env.auth
	}
	opts.Registry = env.reg
	opts.Log = slog.New(slog.DiscardHandler)
	s := New(opts)
	l, err := tls.Listen("tcp", "127.0.0.1:0", serverTLS())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return s, l.Addr().String(), done
}

func dialAt(addr, who string) (*rawClient, error) {
	pool := x509.NewCertPool()
	pool.AddCert(env.ca.Cert)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{Certificates: []tls.Certificate{env.clients[who].tls}, RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		return nil, err
	}
	if err := c.Handshake(); err != nil {
		c.Close()
		return nil, err
	}
	return &rawClient{c: c}, nil
}

func TestConnectionLimit(t *testing.T) {
	_, addr, _ := startServer(t, Options{MaxConnections: 1})
	a, err := dialAt(addr, "raw")
	if err != nil {
		t.Fatal(err)
	}
	a.t = t
	defer a.c.Close()
	stillServes(t, a)
	// The second connection is closed at once; TLS 1.3 may finish the client side of the handshake
	// first, so the refusal shows on the first read.
	if b, err := dialAt(addr, "raw"); err == nil {
		b.t = t
		_ = b.c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = b.c.Write(queryReq(v14).encode())
		if _, ok := b.read(); ok {
			t.Fatal("a connection over the limit was served")
		}
		b.c.Close()
	}
	stillServes(t, a)
}

func TestIdleTimeout(t *testing.T) {
	_, addr, _ := startServer(t, Options{IdleTimeout: 300 * time.Millisecond})
	r, err := dialAt(addr, "raw")
	if err != nil {
		t.Fatal(err)
	}
	r.t = t
	stillServes(t, r)
	start := time.Now()
	_ = r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.c.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("idle connection: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("idle connection closed after %v", d)
	}
	// A message that starts but never finishes is cut off by the same deadline.
	r, err = dialAt(addr, "raw")
	if err != nil {
		t.Fatal(err)
	}
	b := queryReq(v14).encode()
	_, _ = r.c.Write(b[:12])
	_ = r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && err == nil {
		t.Fatalf("half a message kept the connection: %v", err)
	}
}

// TestShutdown: Shutdown stops accepting, closes idle connections at once, lets the request in
// flight finish and answer, and Serve returns nil.
func TestShutdown(t *testing.T) {
	g := &gateAuth{testAuth: env.auth, entered: make(chan struct{}), release: make(chan struct{})}
	s, addr, served := startServer(t, Options{Auth: g})
	idle, err := dialAt(addr, "raw")
	if err != nil {
		t.Fatal(err)
	}
	busy, err := dialAt(addr, "raw")
	if err != nil {
		t.Fatal(err)
	}
	busy.t = t
	reply := make(chan []byte, 1)
	go func() {
		out, _ := busy.send(queryReq(v14).encode())
		reply <- out
	}()
	<-g.entered
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stopped <- s.Shutdown(ctx)
	}()
	_ = idle.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idle.c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("idle connection not closed by Shutdown: %v", err)
	}
	if _, err := dialAt(addr, "raw"); err == nil {
		t.Fatal("new connection accepted after Shutdown")
	}
	select {
	case err := <-stopped:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(g.release)
	out := <-reply
	if out == nil {
		t.Fatal("the request in flight got no answer")
	}
	ok(t, mustDecodeResponse(t, out).Items[0])
	if err := <-stopped; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve after Shutdown: %v", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestPanicRecovery: a panicking operation fails its item with General Failure; the connection
// and the server carry on.
func TestPanicRecovery(t *testing.T) {
	const boom = kmip14.Operation(0x7ffffff0)
	register(boom, v10, func(*op, *node) (any, error) { panic("boom") })
	defer delete(handlers, boom)
	r := newRaw(t, "raw")
	failed(t, r.call(v14, boom, newStruct(0)), rGeneral)
	stillServes(t, r)
}

// TestDeclaredLengthNotAllocated: clients that declare a message of almost 1 MiB and send 10
// bytes of it cost the server about what they sent. Twenty such clients, then twenty that declare
// 18 bytes and send the same 10, are let go at the idle deadline; the bytes the process allocated
// for each group are compared (allocations, not time: TLS and the test's own work cost the same
// in both).
func TestDeclaredLengthNotAllocated(t *testing.T) {
	_, addr, _ := startServer(t, Options{IdleTimeout: time.Second})
	const clients = 20
	allocated := func(declared uint32) uint64 {
		conns := make([]*rawClient, clients)
		for i := range conns {
			r, err := dialAt(addr, "raw")
			if err != nil {
				t.Fatal(err)
			}
			defer r.c.Close()
			conns[i] = r
		}
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		hdr := []byte{0x42, 0x00, 0x78, 0x01, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(hdr[4:], declared)
		for _, r := range conns {
			if _, err := r.c.Write(append(hdr, "0123456789"...)); err != nil {
				t.Fatal(err)
			}
		}
		// The server closes each connection when its message deadline passes.
		for _, r := range conns {
			_ = r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := r.c.Read(make([]byte, 1)); isTimeout(err) {
				t.Fatal("the server kept a connection with an unfinished message")
			}
		}
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	small := allocated(18)
	large := allocated(DefaultMaxMessageSize - hdrLen)
	perClient := (int64(large) - int64(small)) / clients
	t.Logf("allocated: %d bytes for %d clients declaring 18 bytes, %d declaring %d bytes: %d bytes more per client",
		small, clients, large, DefaultMaxMessageSize-hdrLen, perClient)
	if perClient > 64<<10 {
		t.Errorf("a client that sent 10 bytes of a declared 1 MiB message cost the server %d bytes more than one declaring 18", perClient)
	}
	// A message that does arrive whole is read whole, however large.
	r, err := dialAt(addr, "raw")
	if err != nil {
		t.Fatal(err)
	}
	r.t = t
	defer r.c.Close()
	big := request(v14, kmip14.OperationCreate, customAttrs(benchMessageSize, func(int) *node { return newText(0, "v") })).encode()
	out, ok := r.send(big)
	if !ok {
		t.Fatalf("no answer to a message of %d bytes", len(big))
	}
	failed(t, mustDecodeResponse(t, out).Items[0], rInvalidField) // the object's attribute limit
}

// TestSourceOf: handshakes are bounded per IPv4 address and per IPv6 /64.
func TestSourceOf(t *testing.T) {
	for addr, want := range map[string]string{
		"192.0.2.7:5696":                    "192.0.2.7",
		"[::ffff:192.0.2.7]:5696":           "192.0.2.7",
		"[2001:db8:1:2:aaaa::1]:40000":      "2001:db8:1:2::/64",
		"[2001:db8:1:2:bbbb:cccc::9]:40001": "2001:db8:1:2::/64",
	} {
		a, err := net.ResolveTCPAddr("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := sourceOf(a); got != want {
			t.Errorf("%s counts as %s, want %s", addr, got, want)
		}
	}
}

// TestHandshakeBounds: with 8 unfinished handshakes allowed per address, 8 silent TCP connections
// from the clients' own address first refuse newcomers (all are younger than a second), then give
// way to a burst of 8 real clients, who all get in, silent ones closed for them.
func TestHandshakeBounds(t *testing.T) {
	_, addr, _ := startServer(t, Options{MaxHandshakesPerAddress: 8, HandshakeTimeout: time.Minute})
	var silent []net.Conn
	for i := 0; i < 8; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		silent = append(silent, c)
	}
	time.Sleep(200 * time.Millisecond) // accepted
	if _, err := dialAt(addr, "raw"); err == nil {
		t.Error("a ninth handshake from the address got in while the eight were younger than a second")
	}
	time.Sleep(handshakeGrace)
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		go func() {
			r, err := dialAt(addr, "raw")
			if err == nil {
				r.t = t
				_ = r.c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, ok := r.send(queryReq(v14).encode()); !ok {
					err = errors.New("no answer")
				}
				r.c.Close()
			}
			errs <- err
		}()
	}
	for i := 0; i < 8; i++ {
		if err := <-errs; err != nil {
			t.Errorf("a real client beside old silent connections: %v", err)
		}
	}
	// The first real client found the eight silent ones in place and closed one; the rest closed
	// as many as they needed, which depends on how soon the earlier ones were through.
	closed := 0
	for _, c := range silent {
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.Read(make([]byte, 1)); !isTimeout(err) {
			closed++
		}
	}
	t.Logf("%d of the 8 silent connections were closed for the real clients", closed)
	if closed == 0 {
		t.Error("no silent connection was closed, yet the real clients got in past the bound")
	}
}
