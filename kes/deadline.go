package kes

import (
	"context"
	"sync"
	"time"
)

// deadlineCtx is a request context with the route's KES timeout that arms no timer until
// somebody waits on it. Every key route has a timeout (15 s), but the only code that waits on the
// context is the signer's session pool, and only when every session is busy (the slow path of
// signer.Token.acquire). context.WithTimeout per request costs a timer, a cancel context and
// their bookkeeping in the runtime's timer heap — 1.4% of the server process's CPU in the profile
// of generate at concurrency 8, for a deadline that almost never matters. This one is a field of
// the call; Done turns it into a real context.WithDeadline the first time it is called, so a
// waiter still wakes at the deadline or when the client goes away.
type deadlineCtx struct {
	context.Context // the request's context
	deadline        time.Time

	mu     sync.Mutex
	armed  context.Context // nil until Done is called
	cancel context.CancelFunc
}

func (c *deadlineCtx) Deadline() (time.Time, bool) {
	if d, ok := c.Context.Deadline(); ok && d.Before(c.deadline) {
		return d, true
	}
	return c.deadline, true
}

func (c *deadlineCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.armed == nil {
		c.armed, c.cancel = context.WithDeadline(c.Context, c.deadline)
	}
	return c.armed.Done()
}

func (c *deadlineCtx) Err() error {
	c.mu.Lock()
	armed := c.armed
	c.mu.Unlock()
	if armed != nil {
		return armed.Err()
	}
	if err := c.Context.Err(); err != nil {
		return err
	}
	if !time.Now().Before(c.deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

// release frees the timer, if Done armed one; the request is over.
func (c *deadlineCtx) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cancel != nil {
		c.cancel()
	}
}
