package kes

import (
	"fmt"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
)

// Key operations run on a small pool of long-lived goroutines instead of the one net/http starts
// for each request (each HTTP/2 stream). A fresh goroutine starts with a small stack, and a key
// operation goes deep — JSON, the registry, the keymap, cgo into the PKCS#11 module, slog — so its
// stack is copied each time it doubles on the way down. The CPU profile of generate at
// concurrency 8 (client and server in one process) put those copies (runtime.newstack/copystack
// under our handler) at 4–5% of all the CPU a request costs, more than the handler's JSON work;
// with the pool that profile's CPU per request fell by about 8%. A worker keeps its grown stack
// (the GC halves an idle worker's stack at most once per cycle, so it regrows rarely), and handing
// a request over costs two goroutine switches — plus, in a process with idle threads, the wakeup
// of one that finds nothing to do, which is why the gain is smaller (within this machine's noise
// at concurrency 1) when the server runs in a process of its own and is not saturated.
// gRPC-Go's server has the same device (ServerOption NumStreamWorkers) for the same reason.
//
// The pool is package-wide, not per Handler, so handlers made by reloads and tests share it and
// none leaks goroutines. It has at most maxWorkers goroutines; when none is idle the request runs
// on its own goroutine, as without the pool, so the pool never queues or limits requests.
const maxWorkers = 64

var workers struct {
	n     atomic.Int32
	queue chan *job // unbuffered: a send succeeds only when a worker is waiting for work
}

func init() { workers.queue = make(chan *job) }

// job is one request handed to a worker; done is buffered so the worker never waits on the
// request's goroutine.
type job struct {
	h     *Handler
	w     http.ResponseWriter
	r     *http.Request
	done  chan struct{}
	panic any
}

var jobs = sync.Pool{New: func() any { return &job{done: make(chan struct{}, 1)} }}

// onWorker runs h.serve(w, r) on a pooled goroutine and waits for it. A panic in the handler is
// carried back and raised again on the request's goroutine, where net/http expects it (it logs it
// and resets the stream; http.ErrAbortHandler keeps its meaning).
func (h *Handler) onWorker(w http.ResponseWriter, r *http.Request) {
	j := jobs.Get().(*job)
	j.h, j.w, j.r = h, w, r
	select {
	case workers.queue <- j:
	default:
		if workers.n.Add(1) > maxWorkers {
			workers.n.Add(-1)
			j.h, j.w, j.r = nil, nil, nil
			jobs.Put(j)
			h.serve(w, r)
			return
		}
		go worker(j)
	}
	<-j.done
	p := j.panic
	j.h, j.w, j.r, j.panic = nil, nil, nil, nil
	jobs.Put(j)
	if p != nil {
		panic(p)
	}
}

// worker serves jobs until one panics (or calls runtime.Goexit); then it leaves, since its stack
// may be in any shape, and a later request starts a fresh worker.
func worker(j *job) {
	var depth [workerDepth]byte
	depth[0] = 1 // used, so that the frame keeps it
	for j.run() {
		j.done <- struct{}{}
		j = <-workers.queue
	}
	if depth[0] != 1 {
		panic("kes: worker stack overwritten")
	}
}

// workerDepth is stack a worker holds above its loop, so that a parked worker sits at about a
// request's depth. The runtime starts each new goroutine with a stack the size of the average
// stack in use at the last GC (adaptive stack start, Go 1.19), and net/http starts three for
// every HTTP/2 request: the stream's handler and the writers of its HEADERS frame and its flush.
// With workers parked shallow that average was the 2 KiB minimum, and copying those three stacks
// as they grew was 8% of the server's CPU on a generate at concurrency 8 (runtime.newstack in the
// profile). With workers parked at this depth new goroutines start at 4–8 KiB while the workers are
// several (under load); among many idle connections the average falls back and so does the size.
// KES generate at concurrency 8: server CPU per request about 60 µs without it, 55–57 µs with it.
const workerDepth = 8 << 10

// run serves the job and reports whether it returned normally. Otherwise the deferred function
// keeps the panic for the waiting request goroutine and wakes it, also when the handler called
// runtime.Goexit, after which nothing past the defers runs on this goroutine.
func (j *job) run() (ok bool) {
	defer func() {
		if ok {
			return
		}
		switch p := recover(); p {
		case nil: // runtime.Goexit: abort the request, as net/http does for its own goroutine
			j.panic = http.ErrAbortHandler
		case http.ErrAbortHandler:
			j.panic = p
		default:
			// The request goroutine re-panics with its own stack; this one is where it happened.
			j.panic = fmt.Sprintf("%v\n\nkes worker goroutine:\n%s", p, debug.Stack())
		}
		workers.n.Add(-1)
		j.done <- struct{}{}
	}()
	j.h.serve(j.w, j.r)
	return true
}
