package ttlv

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// failingListener fails its first Accepts as a process out of file descriptors does.
type failingListener struct {
	net.Listener
	fails    atomic.Int32
	accepted atomic.Int32
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: errors.New("accept4: too many open files")}
	}
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

// An accept that fails for want of file descriptors (no timeout error) does not end the KMIP
// service: it is retried, and connections are taken again once descriptors are free.
func TestAcceptErrorsDoNotStopListening(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &failingListener{Listener: inner}
	l.fails.Store(3)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := New(Options{Registry: env.reg, Auth: fuzzAuth{}, Log: quiet, Audit: quiet})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	defer srv.Shutdown(context.Background())
	c, err := net.DialTimeout("tcp", inner.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case err := <-done:
		t.Fatalf("Serve returned after accept errors: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	taken := func() int { return int(l.accepted.Load()) }
	deadline := time.Now().Add(5 * time.Second)
	for taken() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if taken() == 0 {
		t.Fatal("the connection after the failed accepts was never taken")
	}
}
