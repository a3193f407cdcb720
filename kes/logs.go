package kes

import (
	"net/http"
	"time"
)

func (h *Handler) errorLog(c *call) { h.stream(c, h.errLog) }
func (h *Handler) auditLog(c *call) { h.stream(c, h.auditLS) }

// stream sends JSON lines from src until the client goes away (or src ends). The headers go out at
// once so the client knows the subscription stands; each line is flushed as it arrives.
func (h *Handler) stream(c *call, src LogStream) {
	c.w.Header().Set("Content-Type", "application/x-ndjson")
	c.w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(c.w)
	// A stream lasts as long as its client listens: the server's read and write deadlines, there
	// against slow clients of ordinary requests, would cut it.
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	_ = rc.Flush()
	var lines <-chan []byte
	if src != nil {
		var cancel func()
		lines, cancel = src.Subscribe()
		defer cancel()
	}
	for {
		select {
		case <-c.r.Context().Done():
			return
		case line, ok := <-lines:
			if !ok {
				return
			}
			if len(line) == 0 {
				continue
			}
			if line[len(line)-1] != '\n' {
				line = append(line[:len(line):len(line)], '\n')
			}
			if _, err := c.w.Write(line); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
		}
	}
}
