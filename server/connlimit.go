package server

import (
	"log/slog"
	"net"
	"sync"
	"time"
)

// Bounds of the KES listener's connections. HTTP/2 clients such as MinIO keep one or a few.
const (
	kesMaxConns      = 4096
	kesMaxPerAddress = 256
)

// connLimit is a listener that holds at most max connections open, at most perAddr from one
// address (an IPv6 address counted by its /64), closing what is beyond at once rather than
// leaving it in the kernel's queue. It keeps a flood of connections that never speak from taking
// every file descriptor of the process; net/http lets each go at its header deadline.
type connLimit struct {
	net.Listener
	max, perAddr int
	log          *slog.Logger

	mu      sync.Mutex
	open    int
	byAddr  map[string]int
	lastLog time.Time
}

func newConnLimit(l net.Listener, max, perAddr int, log *slog.Logger) net.Listener {
	return &connLimit{Listener: l, max: max, perAddr: perAddr, log: log, byAddr: map[string]int{}}
}

func (l *connLimit) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := sourceKey(c.RemoteAddr())
		l.mu.Lock()
		full := l.open >= l.max || l.byAddr[src] >= l.perAddr
		if !full {
			l.open++
			l.byAddr[src]++
		}
		logNow := full && time.Since(l.lastLog) > 10*time.Second
		if logNow {
			l.lastLog = time.Now()
		}
		l.mu.Unlock()
		if full {
			if logNow {
				l.log.Warn("connections refused: too many open", "open", l.open, "max", l.max, "from", src, "max_per_address", l.perAddr)
			}
			_ = c.Close()
			continue
		}
		return &limitedConn{Conn: c, l: l, src: src}, nil
	}
}

func (l *connLimit) release(src string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.byAddr[src]--; l.byAddr[src] <= 0 {
		delete(l.byAddr, src)
	}
}

type limitedConn struct {
	net.Conn
	l    *connLimit
	src  string
	once sync.Once
}

func (c *limitedConn) Close() error {
	c.once.Do(func() { c.l.release(c.src) })
	return c.Conn.Close()
}

// sourceKey is the address a connection counts against: the IP, or an IPv6 address's /64 (one
// host may hold a whole /64).
func sourceKey(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	if ip4 := ta.IP.To4(); ip4 != nil {
		return ip4.String()
	}
	return ta.IP.Mask(net.CIDRMask(64, 128)).String()
}
