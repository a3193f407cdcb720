package signer

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/p11bridge/p11bridge/keymap"
)

// After a start, the first use of every key costs about the same however many keys the token
// holds: the index pass finds them all at once, instead of one token search per key (which on
// SoftHSM2 walks every object: O(N) a key, O(N²) for them all). The check is a ratio between two
// sizes of the process's CPU time (SoftHSM2 runs in it; other processes' load does not count):
// warming 4× the keys may cost at most 10× (linear is 4×; with searches it was 21×).
func TestIndexWarmsLinearly(t *testing.T) {
	owner := Caller{Identity: "index"}
	var ids []string
	create := func(n int) {
		for len(ids) < n {
			k, err := testReg.Create(ctx, owner, KeySpec{Algorithm: AES, Size: 128}, Meta{Name: fmt.Sprintf("ix-%d", len(ids)), State: keymap.Active})
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, k.ID)
		}
	}
	// warm opens the token afresh (a restart), waits for its index, and uses every key once; the
	// best of three runs.
	warm := func() (time.Duration, IndexStats) {
		best := time.Duration(1 << 62)
		var st IndexStats
		for run := 0; run < 3; run++ {
			r, err := Open(Options{Signers: []Config{cfgOf("a", tokA)}, Logger: quietLog()}, testKM)
			if err != nil {
				t.Fatal(err)
			}
			tok, _ := r.Signer("a")
			if err := tok.WaitIndex(context.Background()); err != nil {
				t.Fatal(err)
			}
			st = tok.Index()
			start := cpuTime()
			for _, id := range ids {
				if _, _, err := r.Seal(ctx, owner, id, nil, []byte("x"), nil); err != nil {
					t.Fatal(err)
				}
			}
			best = min(best, cpuTime()-start)
			r.Close()
		}
		return best, st
	}
	const small = 400
	create(small)
	tSmall, stSmall := warm()
	create(4 * small)
	tLarge, stLarge := warm()
	ratio := float64(tLarge) / float64(tSmall)
	t.Logf("CPU of the first uses after a start: %d keys %v (%.0f µs a key; index pass %v over %d objects), %d keys %v (%.0f µs a key; index pass %v over %d objects): %.1f× for 4× the keys",
		small, tSmall, float64(tSmall.Microseconds())/small, stSmall.Took, stSmall.Objects,
		4*small, tLarge, float64(tLarge.Microseconds())/(4*small), stLarge.Took, stLarge.Objects, ratio)
	if stLarge.Err != nil || stLarge.Indexed < 4*small {
		t.Fatalf("index pass: %+v", stLarge)
	}
	if ratio > 10 {
		t.Fatalf("warming 4× the keys cost %.1f× (linear is 4×): first uses search the token again", ratio)
	}
}

// cpuTime is the CPU time (user + system) the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
