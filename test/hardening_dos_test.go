package test

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
)

// TestHalfOpenConnections: 2,000 TCP connections that never start TLS — half of them from
// 127.0.0.1, the address the real client connects from, half from 40 other loopback addresses —
// do not keep a real client (github.com/ovh/kmip-go) from connecting, making a key pair and
// signing while they are held. Connections still in their handshake take no connection slot (the
// default 1,024 slots are fewer than the sockets); at most 64 per address and 256 in all are kept
// (over that the newest is refused while all are younger than a second, and after that the oldest
// is closed for the newest: the client comes once the sockets have had their second); and every
// one is closed once handshake_timeout (4 s here) has passed.
func TestHalfOpenConnections(t *testing.T) {
	b := newBridge(t, t.TempDir(), "halfopen")
	const timeout = 4 * time.Second
	b.writeConfig(hcfg{signers: []string{"halfopen"}, kmip: `handshake_timeout = "4s"`})
	b.startBin(binary)
	admin := b.adminClient()
	base := b.figures()

	const sockets = 2000
	held := make([]net.Conn, 0, sockets)
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for i := 0; i < sockets; i++ {
		d := net.Dialer{Timeout: 5 * time.Second}
		if i%2 == 1 {
			d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(1+i%80/2))}
		}
		c, err := d.Dial("tcp", b.kmip)
		if err != nil {
			t.Fatalf("raw socket %d: %v", i, err)
		}
		held = append(held, c)
	}
	opened := time.Now()
	// The held sockets have their second, after which they may be closed for newer connections.
	time.Sleep(1500 * time.Millisecond)
	during := b.figures()

	c, err := b.kmipAs(admin)
	if err != nil {
		t.Fatalf("the real client cannot connect beside %d half-open connections: %v", sockets, err)
	}
	kp, err := c.CreateKeyPair().RSA(2048, kmip.CryptographicUsageSign, kmip.CryptographicUsageVerify).Exec()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Activate(kp.PrivateKeyUniqueIdentifier).Exec(); err != nil {
		t.Fatal(err)
	}
	data := []byte("signed while 2,000 sockets wait")
	sig, err := kmipSign(c, kp.PrivateKeyUniqueIdentifier, data)
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyAny(publicKey(t, c, kp.PublicKeyUniqueIdentifier), data, sig); err != nil {
		t.Fatal(err)
	}
	signed := time.Since(opened)
	if signed > timeout {
		t.Logf("note: the client took %v, past the handshake timeout: the sockets may have been let go already", signed)
	}

	// Every held socket is closed by the server: at once when over the bounds (or for the client),
	// at the handshake timeout otherwise.
	var mu sync.Mutex
	closed, early := 0, 0
	var wg sync.WaitGroup
	for _, hc := range held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = hc.SetReadDeadline(opened.Add(timeout + 5*time.Second))
			_, err := hc.Read(make([]byte, 1))
			mu.Lock()
			defer mu.Unlock()
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || (err != nil && !errors.Is(err, os.ErrDeadlineExceeded)) {
				closed++
				if time.Since(opened) < timeout-time.Second {
					early++
				}
			}
		}()
	}
	wg.Wait()
	after := b.settledFigures()
	t.Logf("server before: %v; with %d sockets held: %v; after: %v", base, sockets, during, after)
	t.Logf("client connected, made an RSA-2048 pair and signed %.1f s after the sockets opened; %d sockets closed by the server, %d of them before the handshake timeout",
		signed.Seconds(), closed, early)
	if closed != sockets {
		t.Errorf("%d of %d half-open sockets were still open %v after the handshake timeout", sockets-closed, sockets, 5*time.Second)
	}
	// 256 handshakes at most, besides the process's own files and the client's connection.
	if extra := during.fds - base.fds; extra > 256+16 {
		t.Errorf("the server held %d more files with the sockets open; at most 256 handshakes should be kept", extra)
	}
}
