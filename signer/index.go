package signer

import (
	"context"
	"fmt"
	"time"

	"github.com/miekg/pkcs11"
)

// The handle index: a token's objects found in one pass, so that the first use of each key after
// a start does not search the token (on SoftHSM2, and on many HSMs, a search by CKA_ID walks every
// object: warming N keys one search each costs O(N²)). The pass runs in the background when a
// signer opens; requests are served meanwhile, a key not indexed yet found by its own search as
// before. Keys this process makes or destroys are added or dropped as it does (find, remember,
// forget), and a key the pass did not see (made by another process since) is found by a targeted
// search, once, and cached.

// indexBatch is how many handles one C_FindObjects returns in the pass.
const indexBatch = 1024

// IndexStats says what a signer's index pass did.
type IndexStats struct {
	Done    bool
	Objects int           // token objects seen
	Indexed int           // handles cached by it (objects carrying a p11bridge tag)
	Took    time.Duration // the whole pass
	Err     error
}

// startIndex runs the pass in the background; Index reports it.
func (t *Token) startIndex() {
	done := make(chan struct{})
	t.indexDone = done
	go func() {
		defer close(done)
		st := t.indexPass(context.Background())
		t.indexStats.Store(&st)
		if st.Err != nil {
			// A signer closed before its pass ended (`check` opens and closes at once) needs no
			// index: nothing to warn about, and the warning landed in check's output.
			if !t.closed.Load() {
				t.log.Warn("handle index pass failed; keys are found one search each", "err", st.Err)
			}
			return
		}
		t.log.Debug("handle index built", "objects", st.Objects, "indexed", st.Indexed, "took", st.Took)
	}()
}

// Index reports the index pass (Done false while it runs).
func (t *Token) Index() IndexStats {
	if st := t.indexStats.Load(); st != nil {
		return *st
	}
	return IndexStats{}
}

// WaitIndex waits until the pass has ended or ctx ends.
func (t *Token) WaitIndex(ctx context.Context) error {
	if t.indexDone == nil {
		return nil
	}
	select {
	case <-t.indexDone:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// indexPass lists every token object in batches and caches the handle of each object that carries
// a p11bridge tag, under the kinds lookups ask for. An object kind seen twice under one tag is left
// out, so find refuses it as it always did.
func (t *Token) indexPass(ctx context.Context) IndexStats {
	start := time.Now()
	st := IndexStats{}
	type entry struct {
		h     pkcs11.ObjectHandle
		twice bool
	}
	found := map[handleKey]*entry{}
	err := t.do(ctx, func(sh pkcs11.SessionHandle) error {
		clear(found)
		st.Objects = 0
		if err := t.ctx.FindObjectsInit(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)}); err != nil {
			return err
		}
		var all []pkcs11.ObjectHandle
		for {
			hs, _, err := t.ctx.FindObjects(sh, indexBatch)
			if err != nil {
				_ = t.ctx.FindObjectsFinal(sh)
				return err
			}
			if len(hs) == 0 {
				break
			}
			all = append(all, hs...)
		}
		if err := t.ctx.FindObjectsFinal(sh); err != nil {
			return err
		}
		for _, h := range all {
			if t.closed.Load() {
				return fmt.Errorf("signer closed")
			}
			st.Objects++
			k, tag, ok := t.kindOf(sh, h)
			if !ok {
				continue
			}
			key := handleKey{string(tag), k}
			if e := found[key]; e != nil {
				e.twice = true
				continue
			}
			found[key] = &entry{h: h}
		}
		return nil
	})
	if err != nil {
		st.Err = classify(err, fmt.Sprintf("signer %q: index token objects", t.cfg.Name))
		st.Done, st.Took = true, time.Since(start)
		return st
	}
	for key, e := range found {
		if e.twice {
			continue
		}
		// A lookup may have cached the handle meanwhile, or forgotten a destroyed key: a handle
		// the pass saw is only added where there is none, and it is checked before use later
		// like any cached handle whose last look is old (findCached).
		c := &cachedHandle{h: e.h}
		c.checked.Store(t.clock())
		if _, loaded := t.handles.LoadOrStore(key, c); !loaded {
			st.Indexed++
		}
	}
	st.Done, st.Took = true, time.Since(start)
	return st
}

// kindOf reads what a lookup needs of object h: its kind and its tag (CKA_ID, or CKA_APPLICATION
// for data objects). ok is false for objects p11bridge did not make.
func (t *Token) kindOf(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) (objKind, []byte, bool) {
	a, err := t.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil)})
	if err != nil || len(a) == 0 {
		return objKind{}, nil, false
	}
	class := keyType(a[0].Value)
	switch class {
	case pkcs11.CKO_DATA:
		o, ok := t.describe(sh, h)
		return kindData, o.tag, ok
	case pkcs11.CKO_SECRET_KEY:
		a, err := t.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil)})
		if err != nil || len(a[0].Value) != TagSize {
			return objKind{}, nil, false
		}
		kt := keyType(a[1].Value)
		if kt != pkcs11.CKK_AES && kt != pkcs11.CKK_GENERIC_SECRET {
			return objKind{}, nil, false
		}
		return objKind{class: class, keyType: kt}, a[0].Value, true
	case pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY, pkcs11.CKO_CERTIFICATE:
		a, err := t.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil)})
		if err != nil || len(a[0].Value) != TagSize {
			return objKind{}, nil, false
		}
		return objKind{class: class}, a[0].Value, true
	}
	return objKind{}, nil, false
}
