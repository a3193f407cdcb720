package ttlv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
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
