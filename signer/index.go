package signer

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"
)

// The handle index: a token's objects found in one pass, so that the first use of each key after
// a start does not search the token (on SoftHSM2, and on many HSMs, a search by CKA_ID walks every
// object: warming N keys one search each costs O(N²)). The pass runs in the background when a
// signer opens; requests are served meanwhile. Keys this process makes or destroys are added or
// dropped as it does (remember, forget).
//
// The pass's handles are used once it has ended: an object is known to be the only one under its
// tag only when every object has been read (someone with the token's PIN could have put a second
// object under a key's CKA_ID, which the pass then withdraws and a search refuses). A lookup the
// index cannot answer — the pass has not ended, or another process made the key since — goes
// through search: one targeted search at a time per token (the gate), so a burst of first uses
// costs the token one walk at a time, not one each at once; while the pass runs, a waiting lookup
// is also woken by its end and usually finds its key then. A tag searched for and
// not found is remembered for handleMissTTL, so a row whose object is gone does not search on
// every use.

// handleMissTTL is how long a tag searched for in vain is not searched for again; maxHandleMisses
// bounds how many are remembered (beyond it the expired go, then others until half remain).
const (
	handleMissTTL   = time.Second
	maxHandleMisses = 4096
)

// IndexStats says what a signer's index pass did.
type IndexStats struct {
	Done    bool
	Objects int           // token objects seen
	Indexed int           // handles cached by it (objects carrying a p11bridge tag)
	Took    time.Duration // the whole pass
	Err     error
	// Searches counts the targeted searches made since the signer opened (lookups the index
	// could not answer).
	Searches int64
}

// startIndex runs the pass in the background; Index reports it.
func (t *Token) startIndex() {
	done := make(chan struct{})
	t.indexDone = done
	go func() {
		defer close(done)
		st := t.indexPass(context.Background())
		if st.Err != nil {
			st.Indexed -= t.withdrawPass()
		}
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

// withdrawPass drops the handles a pass that failed part way published, and says how many: it
// did not read every object, so another object under one of their tags may be among those it
// missed. Their keys are found by a search each, which refuses two objects under one tag.
func (t *Token) withdrawPass() int {
	n := 0
	t.handles.Range(func(k, v any) bool {
		if v.(*cachedHandle).fromPass && t.handles.CompareAndDelete(k, v) {
			n++
		}
		return true
	})
	return n
}

// Index reports the index pass (Done false while it runs).
func (t *Token) Index() IndexStats {
	var st IndexStats
	if p := t.indexStats.Load(); p != nil {
		st = *p
	}
	st.Searches = t.searches.Load()
	return st
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

// indexPass lists every token object and caches the handle of each object that carries a
// p11bridge tag, under the kinds lookups ask for. The objects are read by indexWorkers sessions at
// once (SoftHSM2 spends most of a pass loading each object's file, which runs in parallel), and
// published a batch at a time (used once the pass has ended: trusted). An object
// kind seen twice under one tag is left out (dropped again if already published), so find
// refuses it as it always did.
func (t *Token) indexPass(ctx context.Context) IndexStats {
	start := time.Now()
	st := IndexStats{}
	var all []pkcs11.ObjectHandle
	err := t.do(ctx, func(sh pkcs11.SessionHandle) error {
		var err error
		all, err = t.findAll(sh, nil, objKind{class: ^uint(0)})
		return err
	})
	if err != nil {
		st.Err = classify(err, fmt.Sprintf("signer %q: index token objects", t.cfg.Name))
		st.Done, st.Took = true, time.Since(start)
		return st
	}
	st.Objects = len(all)

	type seen struct {
		c     *cachedHandle // what the pass published, nil when a lookup had cached one first
		twice bool
	}
	var mu sync.Mutex
	found := make(map[handleKey]*seen, len(all))
	type object struct {
		key handleKey
		h   pkcs11.ObjectHandle
	}
	publish := func(batch []object) {
		mu.Lock()
		defer mu.Unlock()
		for _, o := range batch {
			if e := found[o.key]; e != nil {
				if !e.twice && e.c != nil {
					t.handles.CompareAndDelete(o.key, e.c)
					st.Indexed--
				}
				e.twice = true
				continue
			}
			// A lookup may have cached the handle meanwhile, or forgotten a destroyed key: a
			// handle the pass saw is only added where there is none. It is used only once the
			// pass has ended (a second object under the tag, later in the listing, withdraws it
			// first), and checked at its first use as if its last look were old (findCached).
			c := &cachedHandle{h: o.h, fromPass: true}
			c.checked.Store(t.clock() - int64(copyRecheck))
			e := &seen{}
			if _, loaded := t.handles.LoadOrStore(o.key, c); !loaded {
				e.c = c
				st.Indexed++
			}
			found[o.key] = e
		}
	}
	var next atomic.Int64
	errs := make(chan error, indexWorkers)
	for range indexWorkers {
		go func() {
			errs <- t.do(ctx, func(sh pkcs11.SessionHandle) error {
				batch := make([]object, 0, indexPublish)
				for {
					i := int(next.Add(indexPublish)) - indexPublish
					if i >= len(all) {
						return nil
					}
					if t.closed.Load() {
						return fmt.Errorf("signer closed")
					}
					batch = batch[:0]
					for _, h := range all[i:min(i+indexPublish, len(all))] {
						// An object left unread fails the pass, whose handles are then
						// withdrawn: another object under one of their tags may be this one.
						k, tag, ok, err := t.readKind(sh, h)
						if err != nil {
							return err
						}
						if ok {
							batch = append(batch, object{handleKey{string(tag), k}, h})
						}
					}
					publish(batch)
				}
			})
		}()
	}
	for range indexWorkers {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	if err != nil {
		st.Err = classify(err, fmt.Sprintf("signer %q: index token objects", t.cfg.Name))
	}
	st.Done, st.Took = true, time.Since(start)
	return st
}

// indexWorkers sessions read objects in the pass, publishing what they found every indexPublish
// objects.
const (
	indexWorkers = 2
	indexPublish = 256
)

// readKind is kindOf tried once more after a failed read, for the walks over every object of the
// token (the handle index pass, rebuild's scan), which fail when one is left unread.
func (t *Token) readKind(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) (objKind, []byte, bool, error) {
	k, tag, ok, err := t.kindOf(sh, h)
	if err != nil {
		if k, tag, ok, err = t.kindOf(sh, h); err != nil {
			return objKind{}, nil, false, fmt.Errorf("read object %d: %w", h, err)
		}
	}
	return k, tag, ok, nil
}

// kindOf reads what a lookup needs of object h: its kind and its tag (CKA_ID, or CKA_APPLICATION
// for data objects). ok is false for objects p11bridge did not make; err is a read that failed
// otherwise than for an attribute the object lacks (a device or session fault), which leaves the
// object unknown. Keys answer class, CKA_ID and key type in one call; other objects (certificates,
// data) lack an attribute of the three, fail that call, and are read one attribute at a time.
func (t *Token) kindOf(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) (objKind, []byte, bool, error) {
	read := func(types ...uint) ([]*pkcs11.Attribute, error) {
		tmpl := make([]*pkcs11.Attribute, len(types))
		for i, ty := range types {
			tmpl[i] = pkcs11.NewAttribute(ty, nil)
		}
		a, err := t.ctx.GetAttributeValue(sh, h, tmpl)
		if err == nil && len(a) != len(types) {
			err = fmt.Errorf("object %d: %d attributes read of %d", h, len(a), len(types))
		}
		return a, err
	}
	lacks := func(err error) bool {
		c := ckr(err)
		return c == pkcs11.CKR_ATTRIBUTE_TYPE_INVALID || c == pkcs11.CKR_ATTRIBUTE_SENSITIVE
	}
	a, err := read(pkcs11.CKA_CLASS, pkcs11.CKA_ID, pkcs11.CKA_KEY_TYPE)
	if err == nil {
		k, tag, ok := keyKind(keyType(a[0].Value), keyType(a[2].Value), a[1].Value)
		return k, tag, ok, nil
	}
	if !lacks(err) {
		return objKind{}, nil, false, err
	}
	if a, err = read(pkcs11.CKA_CLASS); err != nil {
		return objKind{}, nil, false, err
	}
	class, idAttr := keyType(a[0].Value), uint(pkcs11.CKA_ID)
	switch class {
	case pkcs11.CKO_DATA:
		idAttr = pkcs11.CKA_APPLICATION
	case pkcs11.CKO_CERTIFICATE:
	default:
		return objKind{}, nil, false, nil
	}
	if a, err = read(idAttr); err != nil {
		if lacks(err) {
			err = nil // not one of ours
		}
		return objKind{}, nil, false, err
	}
	if class == pkcs11.CKO_DATA {
		tag, ok := dataTag(a[0].Value)
		return kindData, tag, ok, nil
	}
	k, tag, ok := keyKind(class, 0, a[0].Value)
	return k, tag, ok, nil
}

// keyKind is the kind under which lookups ask for an object of class and key type with CKA_ID id;
// ok is false for objects p11bridge did not make.
func keyKind(class, kt uint, id []byte) (objKind, []byte, bool) {
	if len(id) != TagSize {
		return objKind{}, nil, false
	}
	switch class {
	case pkcs11.CKO_SECRET_KEY:
		if kt != pkcs11.CKK_AES && kt != pkcs11.CKK_GENERIC_SECRET {
			return objKind{}, nil, false
		}
		return objKind{class: class, keyType: kt}, id, true
	case pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY, pkcs11.CKO_CERTIFICATE:
		return objKind{class: class}, id, true
	}
	return objKind{}, nil, false
}

// kindOfTemplate is the kind of the object a creation template makes (imports).
func kindOfTemplate(tmpl []*pkcs11.Attribute) objKind {
	var class, kt uint
	for _, a := range tmpl {
		switch a.Type {
		case pkcs11.CKA_CLASS:
			class = keyType(a.Value)
		case pkcs11.CKA_KEY_TYPE:
			kt = keyType(a.Value)
		}
	}
	switch class {
	case pkcs11.CKO_SECRET_KEY:
		return objKind{class: class, keyType: kt}
	case pkcs11.CKO_DATA:
		return kindData
	}
	return objKind{class: class}
}

// indexEnded says whether the index pass has ended (or never ran).
func (t *Token) indexEnded() bool {
	if t.indexDone == nil {
		return true
	}
	select {
	case <-t.indexDone:
		return true
	default:
		return false
	}
}

// indexing returns a channel closed when the pass ends (its handles are used from then on), or
// nil when it has ended.
func (t *Token) indexing() <-chan struct{} {
	if t.indexEnded() {
		return nil
	}
	return t.indexDone
}

// search looks for tag's object of kind k for a lookup the cache could not answer: cached when
// another search or the pass found it meanwhile, else one targeted search under the token's gate.
// A tag found missing within handleMissTTL is not searched again.
func (t *Token) search(ctx context.Context, key handleKey) (cached *cachedHandle, hs []pkcs11.ObjectHandle, err error) {
	for {
		if v, ok := t.handles.Load(key); ok && t.trusted(v.(*cachedHandle)) {
			return v.(*cachedHandle), nil, nil
		}
		if t.missedRecently(key) {
			return nil, nil, nil
		}
		select {
		case t.searchGate <- struct{}{}:
		case <-t.indexing():
			continue // the pass ended: the key may be cached now
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
		if v, ok := t.handles.Load(key); ok && t.trusted(v.(*cachedHandle)) {
			<-t.searchGate
			return v.(*cachedHandle), nil, nil
		}
		t.searches.Add(1)
		err = t.do(ctx, func(sh pkcs11.SessionHandle) error {
			var err error
			if hs, err = t.findAll(sh, []byte(key.tag), key.kind); err != nil || len(hs) > 0 || key.kind.class == pkcs11.CKO_PUBLIC_KEY {
				return err
			}
			// Private objects are invisible without a login: tell a lost login from a missing key.
			if si, err := t.ctx.GetSessionInfo(sh); err == nil && si.State != pkcs11.CKS_RW_USER_FUNCTIONS && si.State != pkcs11.CKS_RO_USER_FUNCTIONS {
				return pkcs11.Error(pkcs11.CKR_USER_NOT_LOGGED_IN)
			}
			return nil
		})
		if err == nil && len(hs) == 0 {
			t.rememberMiss(key)
		}
		<-t.searchGate
		return nil, hs, err
	}
}

// missedRecently says whether a search for key found nothing within handleMissTTL.
func (t *Token) missedRecently(key handleKey) bool {
	t.missMu.Lock()
	defer t.missMu.Unlock()
	at, ok := t.misses[key]
	return ok && t.clock()-at < int64(handleMissTTL)
}

func (t *Token) rememberMiss(key handleKey) {
	t.missMu.Lock()
	defer t.missMu.Unlock()
	if t.misses == nil {
		t.misses = map[handleKey]int64{}
	}
	if len(t.misses) >= maxHandleMisses {
		now := t.clock()
		for k, at := range t.misses {
			if now-at >= int64(handleMissTTL) || len(t.misses) >= maxHandleMisses/2 {
				delete(t.misses, k)
			}
		}
	}
	t.misses[key] = t.clock()
}

// forgetMiss drops a remembered miss: the object was just made or found.
func (t *Token) forgetMiss(key handleKey) {
	t.missMu.Lock()
	delete(t.misses, key)
	t.missMu.Unlock()
}
