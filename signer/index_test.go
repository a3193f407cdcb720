package signer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/signer/softhsm"
)

// After a start, the first use of every key costs about the same however many keys the token
// holds: the index pass finds them all at once, instead of one token search per key (which on
// SoftHSM2 walks every object: O(N) a key, O(N²) for them all). The check is a ratio between two
// tokens of two sizes, not a time: warming 4× the keys may cost at most 10× the process's CPU time
// (SoftHSM2 runs in it; other processes' load does not count; linear is 4×, searches 16-21×), and
// no first use may search the token. The two are measured in turn, five times each, and the best
// of each compared.
func TestIndexWarmsLinearly(t *testing.T) {
	owner := Caller{Identity: "index"}
	const small = 400
	fill := func(name string, tok *softhsm.Token, n int) []string {
		r, err := Open(Options{Signers: []Config{cfgOf(name, tok)}, Default: name, Logger: quietLog()}, testKM)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		// Eight at once: the keymap's writers share fsyncs, and SoftHSM2 makes keys in parallel.
		ids := make([]string, n)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < n; i += 8 {
					k, err := r.Create(ctx, owner, KeySpec{Algorithm: AES, Size: 128}, Meta{Name: fmt.Sprintf("ix-%s-%d", name, i), State: keymap.Active})
					if err != nil {
						errs <- err
						return
					}
					ids[i] = k.ID
				}
			}()
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		return ids
	}
	// warm opens the token afresh (a restart), waits for its index, and uses every key once.
	warm := func(name string, tok *softhsm.Token, ids []string) (time.Duration, IndexStats) {
		r, err := Open(Options{Signers: []Config{cfgOf(name, tok)}, Logger: quietLog()}, testKM)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		tk, _ := r.Signer(name)
		if err := tk.WaitIndex(context.Background()); err != nil {
			t.Fatal(err)
		}
		start := cpuTime()
		for _, id := range ids {
			if _, _, err := r.Seal(ctx, owner, id, nil, []byte("x"), nil); err != nil {
				t.Fatal(err)
			}
		}
		return cpuTime() - start, tk.Index()
	}
	idsSmall, idsLarge := fill("ix-small", tokIxSmall, small), fill("ix-large", tokIxLarge, 4*small)
	tSmall, tLarge := time.Duration(1<<62), time.Duration(1<<62)
	var stSmall, stLarge IndexStats
	for range 5 {
		d, st := warm("ix-small", tokIxSmall, idsSmall)
		tSmall, stSmall = min(tSmall, d), st
		d, st = warm("ix-large", tokIxLarge, idsLarge)
		tLarge, stLarge = min(tLarge, d), st
	}
	ratio := float64(tLarge) / float64(tSmall)
	t.Logf("CPU of the first uses after a start: %d keys %v (%.0f µs a key; index pass %v over %d objects), %d keys %v (%.0f µs a key; index pass %v over %d objects): %.1f× for 4× the keys",
		small, tSmall, float64(tSmall.Microseconds())/small, stSmall.Took, stSmall.Objects,
		4*small, tLarge, float64(tLarge.Microseconds())/(4*small), stLarge.Took, stLarge.Objects, ratio)
	if stLarge.Err != nil || stLarge.Indexed < 4*small {
		t.Fatalf("index pass: %+v", stLarge)
	}
	if stLarge.Searches != 0 || stSmall.Searches != 0 {
		t.Fatalf("first uses after the pass searched the token (%d and %d searches)", stSmall.Searches, stLarge.Searches)
	}
	if ratio > 10 {
		t.Fatalf("warming 4× the keys cost %.1f× (linear is 4×): first uses search the token again", ratio)
	}
}

// A key the index pass did not see (made by another process since) is found by one targeted
// search and cached; a row whose token object is gone is searched for once per handleMissTTL, not
// on every use; keys this process makes are known without a search.
func TestIndexFallbackSearch(t *testing.T) {
	owner := Caller{Identity: "index-fallback"}
	r2, err := Open(Options{Signers: []Config{cfgOf("a", tokA)}, Logger: quietLog()}, testKM)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	tok2, _ := r2.Signer("a")
	if err := tok2.WaitIndex(ctx); err != nil {
		t.Fatal(err)
	}
	searches := func() int64 { return tok2.Index().Searches }
	before := searches()

	// Made by another registry (another process, as far as r2's index knows): one search, then cached.
	k, err := testReg.Create(ctx, owner, KeySpec{Algorithm: AES, Size: 128}, Meta{Name: "fallback-other", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, _, err := r2.Seal(ctx, owner, k.ID, nil, []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := searches() - before; n != 1 {
		t.Fatalf("a key made elsewhere, used 3 times: %d searches, want 1", n)
	}

	// Made here: no search at all.
	mine, err := r2.Create(ctx, owner, KeySpec{Algorithm: AES, Size: 128}, Meta{Name: "fallback-mine", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := r2.Seal(ctx, owner, mine.ID, nil, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	if n := searches() - before; n != 1 {
		t.Fatalf("a key made here: %d searches in all, want still 1", n)
	}

	// The object of a row vanishes behind r2's back (r2 never cached it): one search per
	// handleMissTTL however often the key is asked for.
	gone, err := testReg.Create(ctx, owner, KeySpec{Algorithm: AES, Size: 128}, Meta{Name: "fallback-gone", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	tok1, _ := testReg.Signer("a")
	if err := tok1.do(ctx, func(sh pkcs11.SessionHandle) error { return tok1.destroyTag(sh, gone.Tag) }); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for range 5 {
		if _, _, err := r2.Seal(ctx, owner, gone.ID, nil, []byte("x"), nil); !errors.Is(err, ErrNotFound) {
			t.Fatalf("seal with a vanished object: %v, want not found", err)
		}
	}
	if n := searches() - before; n != 2 && time.Since(start) < handleMissTTL {
		t.Fatalf("a vanished object asked for 5 times: %d searches in all, want 2", n)
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

// A handle the index pass published is not used before the pass ends: until every object has
// been read, a second object under the same CKA_ID (planted by someone with the token's PIN, with
// a value they know) may still come. A use while the pass runs searches instead, and the search
// refuses two objects under one tag; before, the pass's first handle was used at once, and a
// session copy made from it outlived the pass's discovery of the duplicate.
func TestPassHandleUsedOnlyAfterPass(t *testing.T) {
	owner := Caller{Identity: "index-planted"}
	victim, err := testReg.Create(ctx, owner, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "planted-victim", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := Open(Options{Signers: []Config{cfgOf("a", tokA)}, Logger: quietLog(), NoIndex: true}, testKM)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	tok2, _ := r2.Signer("a")
	var planted pkcs11.ObjectHandle
	if err := tok2.do(ctx, func(sh pkcs11.SessionHandle) error {
		planted, err = tok2.ctx.CreateObject(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_ID, victim.Tag), pkcs11.NewAttribute(pkcs11.CKA_VALUE, make([]byte, 32)),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true), pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer tok2.do(ctx, func(sh pkcs11.SessionHandle) error { return tok2.ctx.DestroyObject(sh, planted) })

	// The pass is under way and has published the planted object first.
	done := make(chan struct{})
	tok2.indexDone = done
	c := &cachedHandle{h: planted, fromPass: true}
	c.checked.Store(tok2.clock())
	key := handleKey{string(victim.Tag), kindAES}
	tok2.handles.Store(key, c)
	if _, _, err := r2.Seal(ctx, owner, victim.ID, nil, []byte("x"), nil); err == nil {
		t.Fatal("sealed while the pass ran, with the handle it published first (the planted key)")
	}
	if v, ok := tok2.copies.Load(key); ok && v.(*keyCopy) != nil {
		t.Fatal("a session copy was made while the pass ran")
	}
	// The pass reads the real object, withdraws the tag and ends: still refused.
	tok2.handles.Delete(key)
	close(done)
	if _, _, err := r2.Seal(ctx, owner, victim.ID, nil, []byte("x"), nil); err == nil {
		t.Fatal("sealed after the pass, with two objects under the key's tag")
	}
}

// A pass that fails part way has not read every object: the handles it published are withdrawn
// (their keys are then found by a search each), the others stay.
func TestFailedPassWithdrawsItsHandles(t *testing.T) {
	r2, err := Open(Options{Signers: []Config{cfgOf("a", tokA)}, Logger: quietLog(), NoIndex: true}, testKM)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	tok2, _ := r2.Signer("a")
	pass := handleKey{"pass-published-tag-0", kindAES}
	found := handleKey{"searched-for-tag-0000", kindAES}
	tok2.handles.Store(pass, &cachedHandle{h: 1, fromPass: true})
	tok2.handles.Store(found, &cachedHandle{h: 2})
	if n := tok2.withdrawPass(); n != 1 {
		t.Fatalf("withdrew %d handles, want 1", n)
	}
	if _, ok := tok2.handles.Load(pass); ok {
		t.Error("a failed pass's handle is still cached")
	}
	if _, ok := tok2.handles.Load(found); !ok {
		t.Error("a handle a search found was withdrawn with the pass's")
	}
}
