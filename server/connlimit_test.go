package server

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// The KES listener's bounds: connections past the per-address (or total) bound are closed at once,
// and a closed connection frees its place.
func TestConnLimit(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := newConnLimit(inner, 10, 3, slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer l.Close()
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	var clients []net.Conn
	for i := 0; i < 5; i++ {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	var held []net.Conn
	for len(held) < 3 {
		select {
		case c := <-accepted:
			held = append(held, c)
		case <-time.After(5 * time.Second):
			t.Fatalf("%d connections accepted, want 3", len(held))
		}
	}
	// The fourth and fifth are closed by the server: reading them ends.
	closed := 0
	for _, c := range clients[3:] {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == io.EOF {
			closed++
		}
	}
	if closed != 2 {
		t.Fatalf("%d of the connections past the bound closed, want 2", closed)
	}
	select {
	case c := <-accepted:
		t.Fatalf("a connection past the bound was handed on: %v", c.RemoteAddr())
	case <-time.After(100 * time.Millisecond):
	}
	held[0].Close()
	c, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("a place freed by a closed connection was not taken again")
	}
}

// A listener whose serving ended with an error makes the process not ready, so a load balancer
// sends its clients elsewhere.
func TestReadyFailsWhenAListenerStopped(t *testing.T) {
	s := &Server{metrics: newStoreMetrics()}
	s.stoppedListeners.Store("kmip", errors.New("accept: boom"))
	rec := httptest.NewRecorder()
	s.opsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/ready", nil))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "kmip listener has stopped") {
		t.Fatalf("/ready: %d %q", rec.Code, rec.Body.String())
	}
}
