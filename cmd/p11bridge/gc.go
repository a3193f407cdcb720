package main

import (
	"fmt"
	"os"
	"runtime/debug"
	"runtime/pprof"
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

// cpuProfile writes a CPU profile of serve, from its start to its stop, to the file that
// P11BRIDGE_CPU_PROFILE names (the KES comparison of `make bench` reads it with go tool pprof).
// Without it, it does nothing.
func cpuProfile() (stop func(), err error) {
	path := os.Getenv("P11BRIDGE_CPU_PROFILE")
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("P11BRIDGE_CPU_PROFILE: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("P11BRIDGE_CPU_PROFILE: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
