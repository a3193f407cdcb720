package kes

import (
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
)

// panicAuth panics (or exits the goroutine) in Identify, which every key route calls first.
type panicAuth struct {
	testAuth
	with any // nil: runtime.Goexit
}

func (a *panicAuth) Identify(*http.Request) (string, error) {
	if a.with == nil {
		runtime.Goexit()
	}
	panic(a.with)
}

// A panic on a worker must reach the request's goroutine, where net/http handles it, and must not
// leak the worker slot; the pool keeps serving afterwards.
func TestWorkerPanic(t *testing.T) {
	before := workers.n.Load()
	for _, tc := range []struct {
		with any
		want func(any) bool
	}{
		{"boom", func(p any) bool {
			s, ok := p.(string)
			return ok && strings.HasPrefix(s, "boom") && strings.Contains(s, "kes worker goroutine")
		}},
		{http.ErrAbortHandler, func(p any) bool { return p == http.ErrAbortHandler }},
		{nil, func(p any) bool { return p == http.ErrAbortHandler }}, // runtime.Goexit
	} {
		h := newHandler(Options{Registry: fx.reg, Auth: &panicAuth{with: tc.with}, Log: quiet})
		got := func() (p any) {
			defer func() { p = recover() }()
			h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("PUT", "/v1/key/generate/x", nil))
			return nil
		}()
		if !tc.want(got) {
			t.Errorf("panic %v: request goroutine got %#v", tc.with, got)
		}
	}
	if after := workers.n.Load(); after > before {
		t.Errorf("workers: %d before, %d after three panics", before, after)
	}
	// The pool still serves.
	rec := httptest.NewRecorder()
	newHandler(Options{Registry: fx.reg, Auth: fx.auth, Log: quiet}).ServeHTTP(rec, httptest.NewRequest("PUT", "/v1/key/generate/x", nil))
	if rec.Code != http.StatusForbidden {
		t.Errorf("after the panics: status %d, want 403 (no client certificate)", rec.Code)
	}
}
