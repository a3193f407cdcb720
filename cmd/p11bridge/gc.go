package main

import (
	"os"
	"runtime/debug"
)

// gcPercent is the GOGC that serve and dev run with when the environment sets none. A key
// operation allocates a few KiB (most of it in net/http and crypto/tls) against a live heap of a
// few MiB, so at Go's default of 100 the collector starts a cycle every few hundred requests under
// load, and each cycle scans every goroutine's stack. At 400 the heap may grow to five times the
// live data (tens of MiB more RSS) and the KES front end serves 5–10% more requests per second at
// concurrency 8 (docs/benchmarks.md). GOGC=100 in the environment restores Go's default; GOMEMLIMIT
// caps the heap as usual.
const gcPercent = 400

func tuneGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(gcPercent)
	}
}
