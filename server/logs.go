package server

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"sync"
)

// broadcast fans JSON lines out to the streams of /v1/log/error and /v1/log/audit. A slow
// subscriber loses lines rather than slowing down requests.
type broadcast struct {
	mu   sync.Mutex
	subs map[chan []byte]struct{}
}

func newBroadcast() *broadcast { return &broadcast{subs: map[chan []byte]struct{}{}} }

// Subscribe implements kes.LogStream.
func (b *broadcast) Subscribe() (<-chan []byte, func()) {
	ch := make(chan []byte, 256)
	b.mu.Lock()
	b.subs[ch] = struct{}{}
	b.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			b.mu.Lock()
			delete(b.subs, ch)
			b.mu.Unlock()
		})
	}
}

func (b *broadcast) send(line []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.subs) == 0 {
		return
	}
	line = bytes.Clone(line)
	for ch := range b.subs {
		select {
		case ch <- line:
		default:
		}
	}
}

// teeWriter writes log lines to w and to a broadcast.
type teeWriter struct {
	w io.Writer
	b *broadcast
}

func (t teeWriter) Write(p []byte) (int, error) {
	t.b.send(p)
	return t.w.Write(p)
}

// fileLog is an append-only log file that can be reopened (logrotate moves it, SIGHUP reopens).
type fileLog struct {
	mu   sync.Mutex
	path string
	f    *os.File
}

func openFileLog(path string) (*fileLog, error) {
	l := &fileLog{path: path}
	return l, l.Reopen()
}

func (l *fileLog) Reopen() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open log %s: %w", l.path, err)
	}
	l.mu.Lock()
	old := l.f
	l.f = f
	l.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

func (l *fileLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Write(p)
}

func (l *fileLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Close()
}
