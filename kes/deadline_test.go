package kes

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestDeadlineCtx(t *testing.T) {
	// Expires by itself: Err without Done, then Done closes at the deadline.
	c := &deadlineCtx{Context: context.Background(), deadline: time.Now().Add(30 * time.Millisecond)}
	if d, ok := c.Deadline(); !ok || !d.Equal(c.deadline) {
		t.Fatalf("Deadline = %v, %v", d, ok)
	}
	if err := c.Err(); err != nil {
		t.Fatalf("Err before the deadline: %v", err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after the deadline")
	}
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Fatalf("Err after the deadline: %v", c.Err())
	}
	c.release()

	// Past the deadline without anybody waiting: Err says so without a timer.
	c = &deadlineCtx{Context: context.Background(), deadline: time.Now().Add(-time.Second)}
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Fatalf("Err past the deadline: %v", c.Err())
	}

	// The request's context ends first: both Err and Done follow it.
	parent, cancel := context.WithCancel(context.Background())
	c = &deadlineCtx{Context: parent, deadline: time.Now().Add(time.Hour)}
	done := c.Done()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed when the parent was canceled")
	}
	if !errors.Is(c.Err(), context.Canceled) {
		t.Fatalf("Err after the parent's cancel: %v", c.Err())
	}
	c.release()
	parent2, cancel2 := context.WithCancel(context.Background())
	c = &deadlineCtx{Context: parent2, deadline: time.Now().Add(time.Hour)}
	cancel2()
	if !errors.Is(c.Err(), context.Canceled) {
		t.Fatalf("Err after the parent's cancel, unarmed: %v", c.Err())
	}

	// An earlier parent deadline wins.
	early := time.Now().Add(time.Minute)
	parent3, cancel3 := context.WithDeadline(context.Background(), early)
	defer cancel3()
	c = &deadlineCtx{Context: parent3, deadline: time.Now().Add(time.Hour)}
	if d, _ := c.Deadline(); !d.Equal(early) {
		t.Fatalf("Deadline = %v, want the parent's %v", d, early)
	}
}
