package ttlv

import (
	"container/list"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gemalto/kmip-go/kmip14"
	tt "github.com/gemalto/kmip-go/ttlv"
)

// conn is one client connection: requests are read, answered and written strictly in order.
type conn struct {
	s        *Server
	nc       net.Conn
	remote   string
	source   string    // what the handshake bounds count against (sourceOf)
	accepted time.Time // when the connection came
	identity string

	// Owned by the server's mu: the connection's places in the lists of handshakes (nil once
	// out of them), and whether it holds a connection slot.
	inAll, inFrom *list.Element
	admitted      bool
	privileged    bool        // its identity may run some KMIP operation (seat)
	evicted       atomic.Bool // closed in its handshake for a newer connection

	mu     sync.Mutex
	idle   bool // waiting for the next message: Shutdown may close it
	closed bool
}

func (c *conn) setIdle(idle bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.idle = idle
	return !c.closed
}

// closeIfIdle closes the connection when no request is in flight (Shutdown).
func (c *conn) closeIfIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.idle && !c.closed {
		c.closed = true
		_ = c.nc.Close()
	}
}

func (c *conn) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.closed = true
		_ = c.nc.Close()
	}
}

func (c *conn) serve() {
	defer c.s.untrack(c)
	defer c.close()
	defer func() {
		// A bug must cost one connection, never the process.
		if r := recover(); r != nil {
			c.s.log.Error("kmip: connection handler panicked", "remote", c.remote, "identity", c.identity, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
	}()
	if !c.handshake() {
		return
	}
	for {
		if c.s.closing.Load() || !c.setIdle(true) {
			return
		}
		msg, verdict := c.readMessage()
		if msg == nil && verdict == nil {
			return
		}
		c.setIdle(false)
		var resp []byte
		if verdict != nil {
			resp = verdict.response
		} else {
			resp = c.s.handleMessage(c.s.base, c.identity, msg)
		}
		if len(resp) > 0 {
			_ = c.nc.SetWriteDeadline(time.Now().Add(c.s.opts.IdleTimeout))
			if _, err := c.nc.Write(resp); err != nil {
				c.s.log.Debug("kmip: write response failed", "remote", c.remote, "err", err)
				return
			}
		}
		if verdict != nil && verdict.close {
			return
		}
	}
}

// handshake completes TLS and identifies the client.
func (c *conn) handshake() bool {
	tc, ok := c.nc.(*tls.Conn)
	if !ok {
		c.s.log.Error("kmip: listener yields plain connections; KMIP needs TLS", "remote", c.remote)
		return false
	}
	_ = tc.SetDeadline(time.Now().Add(c.s.opts.HandshakeTimeout))
	if err := tc.Handshake(); err != nil {
		if c.evicted.Load() || errors.Is(err, os.ErrDeadlineExceeded) {
			// Silent connections: logged in bulk by evictLocked, not one line each.
			c.s.log.Debug("kmip: TLS handshake not finished", "remote", c.remote, "evicted", c.evicted.Load(), "err", err)
		} else {
			c.s.log.Info("kmip: TLS handshake failed", "remote", c.remote, "err", err)
		}
		return false
	}
	_ = tc.SetDeadline(time.Time{})
	cs := tc.ConnectionState()
	id, err := c.s.auth.Identify(&cs)
	if err != nil {
		c.s.log.Info("kmip: client refused", "remote", c.remote, "err", err)
		return false
	}
	c.identity = id
	c.privileged = c.s.auth.HasKMIP(id)
	if !c.s.seat(c) {
		return false
	}
	c.s.log.Debug("kmip: client connected", "remote", c.remote, "identity", id)
	return true
}

// verdict is an answer decided from the header alone (a message we will not read).
type verdict struct {
	response []byte
	close    bool
}

// readMessage reads one whole message. The length comes from the 8-byte header and is checked
// against the size cap before anything is allocated; the buffer then grows with what arrives. It returns (nil, nil) when the connection
// should just close: clean EOF, idle timeout, or bytes that are not KMIP at all.
func (c *conn) readMessage() ([]byte, *verdict) {
	_ = c.nc.SetReadDeadline(time.Now().Add(c.s.opts.IdleTimeout))
	var hdr [hdrLen]byte
	if _, err := io.ReadFull(c.nc, hdr[:]); err != nil {
		c.logReadEnd(err, "between messages")
		return nil, nil
	}
	// The message has started: it gets a deadline of its own.
	_ = c.nc.SetReadDeadline(time.Now().Add(c.s.opts.IdleTimeout))
	if hdr[0] != 0x42 && hdr[0] != 0x54 {
		c.s.log.Info("kmip: not a TTLV message; closing", "remote", c.remote, "identity", c.identity, "header", fmt.Sprintf("%x", hdr))
		return nil, nil
	}
	typ := tt.Type(hdr[3])
	l := uint64(binary.BigEndian.Uint32(hdr[4:]))
	switch typ {
	case tt.TypeStructure, tt.TypeBigInteger:
	case tt.TypeTextString, tt.TypeByteString:
		l = (l + 7) &^ 7
	case tt.TypeInteger, tt.TypeEnumeration, tt.TypeInterval, tt.TypeLongInteger, tt.TypeBoolean, tt.TypeDateTime, tt.TypeDateTimeExtended:
		l = 8
	default:
		c.s.log.Info("kmip: invalid TTLV type in message header; closing", "remote", c.remote, "identity", c.identity, "header", fmt.Sprintf("%x", hdr))
		return nil, nil
	}
	if max := uint64(c.s.opts.MaxMessageSize); l+hdrLen > max {
		c.s.log.Info("kmip: message too large; closing", "remote", c.remote, "identity", c.identity, "size", l+hdrLen, "limit", max)
		// The stream cannot be resynchronized without reading the whole body: answer and close.
		return nil, &verdict{close: true, response: failureResponse(ProtocolVersion{1, 0}, nil, rInvalidMsg,
			fmt.Sprintf("message of %d bytes exceeds the limit of %d bytes", l+hdrLen, max))}
	}
	buf, err := readBody(c.nc, hdr, int(l))
	if err != nil {
		c.logReadEnd(err, "inside a message")
		return nil, nil
	}
	if typ != tt.TypeStructure || tt.Tag(uint32(hdr[0])<<16|uint32(hdr[1])<<8|uint32(hdr[2])) != kmip14.TagRequestMessage {
		return nil, &verdict{response: failureResponse(ProtocolVersion{1, 0}, nil, rInvalidMsg,
			fmt.Sprintf("expected a RequestMessage structure, got %s %s", tagName(tt.Tag(uint32(hdr[0])<<16|uint32(hdr[1])<<8|uint32(hdr[2]))), typeName(typ)))}
	}
	return buf, nil
}

// firstChunk is the buffer a message body starts with: most requests fit.
const firstChunk = 4 << 10

// readBody reads the l bytes of a message body after its header into a buffer that grows, by
// doubling, with what has arrived: a client that declares a large message and sends little of it
// costs about what it sent, not what it declared.
func readBody(r io.Reader, hdr [hdrLen]byte, l int) ([]byte, error) {
	want := hdrLen + l
	buf := make([]byte, hdrLen, min(want, hdrLen+firstChunk))
	copy(buf, hdr[:])
	for len(buf) < want {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, min(len(buf), want-len(buf)))
		}
		n, err := r.Read(buf[len(buf):min(cap(buf), want)])
		buf = buf[:len(buf)+n]
		if err != nil && len(buf) < want {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return buf, nil
}

func (c *conn) logReadEnd(err error, where string) {
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		c.s.log.Debug("kmip: connection closed", "remote", c.remote, "identity", c.identity, "where", where)
	case errors.Is(err, os.ErrDeadlineExceeded):
		c.s.log.Debug("kmip: connection timed out", "remote", c.remote, "identity", c.identity, "where", where)
	default:
		c.s.log.Info("kmip: read failed", "remote", c.remote, "identity", c.identity, "where", where, "err", err)
	}
}
