package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// An audit file that cannot be written fails the records (and so the requests) only when records
// are required; check refuses until a write succeeds again.
func TestAuditWriterRequired(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(dir, "audit.log")
	if err := os.Symlink("/dev/full", link); err != nil {
		t.Fatal(err)
	}
	f, err := openFileLog(link)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := &auditWriter{file: f, stream: newBroadcast(), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	h := slog.NewJSONHandler(w, nil)
	record := func() error {
		return h.Handle(context.Background(), slog.NewRecord(time.Now(), slog.LevelInfo, "op", 0))
	}

	if err := record(); err != nil {
		t.Fatalf("not required: a failed write reached the caller: %v", err)
	}
	if err := w.check(); err != nil {
		t.Fatalf("not required: check refuses: %v", err)
	}
	w.required.Store(true)
	if err := record(); err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("required: the failed write was not reported: %v", err)
	}
	if err := w.check(); !errors.Is(err, errAuditUnavailable) {
		t.Fatalf("required: check after a failed write: %v", err)
	}
	// The disk has space again (the link now points to a file): a reopen ends the refusals.
	os.Remove(link)
	if err := os.Symlink(filepath.Join(dir, "real.log"), link); err != nil {
		t.Fatal(err)
	}
	if err := w.reopen(); err != nil {
		t.Fatal(err)
	}
	if err := w.check(); err != nil {
		t.Fatalf("check after a reopen: %v", err)
	}
	if err := record(); err != nil {
		t.Fatalf("record after a reopen: %v", err)
	}
}

func TestInFlightBudget(t *testing.T) {
	l := newInFlight(2)
	r1, err1 := l.admit("a")
	r2, err2 := l.admit("a")
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if _, err := l.admit("a"); err == nil {
		t.Fatal("a third operation of the same identity was admitted")
	}
	rb, err := l.admit("b")
	if err != nil {
		t.Fatalf("another identity refused: %v", err)
	}
	r1()
	r3, err := l.admit("a")
	if err != nil {
		t.Fatalf("refused after a release: %v", err)
	}
	r2()
	r3()
	rb()
	if len(l.n) != 0 {
		t.Fatalf("identities left in the map: %v", l.n)
	}
}
