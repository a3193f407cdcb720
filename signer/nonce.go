package signer

import (
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/p11bridge/p11bridge/keymap"
)

// Rules that keep one identity's encrypt permission from becoming a decrypt (or forge) of what
// others sealed under a shared key: a client-chosen GCM IV that repeats a victim's gives its
// keystream, and AES-CBC with a chosen IV is a raw block oracle that yields the GCM hash key. Real
// clients do send their own IVs (OpenBao's KMIP seal, ceph-csi), so the rules limit them rather than
// forbid them:
//
//   - a client IV is taken only on a key whose users are the caller alone: its own key that no
//     policy's key patterns share with another identity (or an ownerless key, which only the admin
//     reaches), never a KES key version; a policy may allow it on shared keys
//     (client_iv_shared_keys = true) at the risk docs/guarantees.md states;
//   - each AES key serves one block mode family, GCM or CBC, set by its first use (or at creation:
//     KES keys are GCM), so a CBC oracle can never be turned against GCM ciphertexts;
//   - GCM seals are counted per key, and a key nearing 2^32 seals with random IVs (where the chance
//     of a repeated IV stops being negligible, NIST SP 800-38D 8.3) is reported.

// AttrBlockMode is the block mode family an AES key serves: "gcm" or "cbc".
const AttrBlockMode = "key.block-mode"

// Block mode families.
const (
	ModeGCM = "gcm"
	ModeCBC = "cbc"
)

// clientIV decides whether c may choose the IV of an encryption with rec.
func (c Caller) clientIV(rec keymap.Record) error {
	if isKESVersion(rec) {
		return errorf(ErrDenied, "object %q is a version of a KES key: it takes no client-chosen IV; leave the IV to the server", rec.ID)
	}
	if c.ClientIVShared {
		return nil
	}
	alone := rec.Owner == "" && c.Admin || rec.Owner != "" && rec.Owner == c.Identity
	if alone && (c.Shares == nil || !c.Shares(KeyName(rec), rec.Owner)) {
		return nil
	}
	return errorf(ErrDenied, "object %q: a client-chosen IV is taken only on the caller's own key that no policy shares with another identity; leave the IV to the server (or set client_iv_shared_keys in the policy)", rec.ID)
}

// bindMode makes rec serve mode from now on, or refuses when it serves the other family. The first
// use writes the binding to the keymap (once per key), through the store's atomic change of the
// row as committed, so that it can neither undo a change made meanwhile (a Revoke, a destroy,
// through another instance too) nor bind a key to both families.
func (r *Registry) bindMode(rec keymap.Record, mode string) error {
	if bound, err := boundTo(rec, mode); bound || err != nil {
		return err
	}
	_, err := r.km.Update(rec.ID, func(cur *keymap.Record) error {
		if bound, err := boundTo(*cur, mode); bound || err != nil {
			if err == nil {
				err = errAlreadyBound
			}
			return err // bound meanwhile
		}
		cur.Attrs = withAttr(cur.Attrs, AttrBlockMode, mode)
		cur.Updated = time.Time{}
		return nil
	})
	switch {
	case err == nil, errors.Is(err, errAlreadyBound):
		return nil
	case errors.Is(err, ErrUsage):
		return err
	case errors.Is(err, keymap.ErrNotFound):
		return notFound(rec.ID)
	}
	return r.storeErr(err, "object %q: write keymap", rec.ID)
}

// errAlreadyBound ends a binding that another use made first: nothing to write.
var errAlreadyBound = errors.New("already bound")

// boundTo says whether rec serves mode already, or (an error) the other family.
func boundTo(rec keymap.Record, mode string) (bool, error) {
	switch cur := rec.Attrs[AttrBlockMode]; cur {
	case mode:
		return true, nil
	case "":
		return false, nil
	default:
		return false, errorf(ErrUsage, "object %q serves AES-%s only: one key serves one block mode family, so that one mode cannot be turned against the other's ciphertexts", rec.ID, upper(cur))
	}
}

func upper(mode string) string {
	if mode == ModeCBC {
		return "CBC"
	}
	return "GCM"
}

// AttrSeals counts the GCM seals a key has made (written every sealFlush seals and at close).
const AttrSeals = "key.seals"

const (
	// sealFlush is how many seals of a key are counted in memory before the count is written: at
	// most this many per key go uncounted after a crash.
	sealFlush = 1 << 16
	// SealWarning is where a key is reported: half of 2^32, time enough to rotate it.
	SealWarning = 1 << 31
)

// sealCounts holds the seals not yet written, per key id, and the keys known past SealWarning.
type sealCounts struct {
	mu      sync.Mutex
	pending map[string]*atomic.Uint64
	heavy   map[string]uint64
	scanned bool // heavy holds what the keymap held at the first SealHeavy
}

// counted notes one seal by rec and writes the count every sealFlush seals.
func (r *Registry) counted(rec keymap.Record) {
	sc := &r.seals
	sc.mu.Lock()
	n := sc.pending[rec.ID]
	if n == nil {
		if sc.pending == nil {
			sc.pending = map[string]*atomic.Uint64{}
		}
		n = new(atomic.Uint64)
		sc.pending[rec.ID] = n
	}
	sc.mu.Unlock()
	if n.Add(1)%sealFlush == 0 {
		go r.flushSeals(rec.ID)
	}
}

// flushSeals adds the pending seals of id to its row, and warns once when it passes SealWarning.
func (r *Registry) flushSeals(id string) {
	r.seals.mu.Lock()
	n := r.seals.pending[id]
	r.seals.mu.Unlock()
	if n == nil {
		return
	}
	add := n.Swap(0)
	if add == 0 {
		return
	}
	rec, err := r.Update(Operator, id, func(x *keymap.Record) error {
		total, _ := strconv.ParseUint(x.Attrs[AttrSeals], 10, 64)
		x.Attrs = withAttr(x.Attrs, AttrSeals, strconv.FormatUint(total+add, 10))
		return nil
	})
	if err != nil {
		n.Add(add) // try again with the next flush
		return
	}
	if total := Seals(rec); total >= SealWarning {
		r.seals.mu.Lock()
		_, known := r.seals.heavy[id]
		if r.seals.heavy == nil {
			r.seals.heavy = map[string]uint64{}
		}
		r.seals.heavy[id] = total
		r.seals.mu.Unlock()
		if !known {
			r.log.Warn("key nears 2^32 AES-GCM seals with random IVs: rotate it (KES: p11bridge keys rotate; KMIP: ReKey)", "id", id, "name", rec.Name, "seals", total)
		}
	}
}

// flushAllSeals writes every pending count (at close).
func (r *Registry) flushAllSeals() {
	r.seals.mu.Lock()
	ids := make([]string, 0, len(r.seals.pending))
	for id := range r.seals.pending {
		ids = append(ids, id)
	}
	r.seals.mu.Unlock()
	for _, id := range ids {
		r.flushSeals(id)
	}
}

// Seals is the GCM seals rec has made as far as its row knows.
func Seals(rec keymap.Record) uint64 { return parseSeals(rec.Attrs[AttrSeals]) }

// parseSeals reads a seal count as the row keeps it (AttrSeals); none or a bad one is 0.
func parseSeals(s string) uint64 {
	n, _ := strconv.ParseUint(s, 10, 64)
	return n
}

// SealHeavy lists the keys at or past SealWarning seals, with their counts (for status and metrics).
// The keymap is read once; later counts come from the flushes.
func (r *Registry) SealHeavy() map[string]uint64 {
	r.seals.mu.Lock()
	scanned := r.seals.scanned
	r.seals.mu.Unlock()
	if !scanned {
		found := map[string]uint64{}
		r.km.Select(keymap.Query{Attrs: []string{AttrSeals}}, func(v keymap.View) bool {
			s, _ := v.Attr(AttrSeals)
			if n := parseSeals(s); n >= SealWarning {
				found[v.ID()] = n
			}
			return true
		})
		r.seals.mu.Lock()
		if r.seals.heavy == nil {
			r.seals.heavy = map[string]uint64{}
		}
		for id, n := range found {
			if n > r.seals.heavy[id] {
				r.seals.heavy[id] = n
			}
		}
		r.seals.scanned = true
		r.seals.mu.Unlock()
	}
	r.seals.mu.Lock()
	defer r.seals.mu.Unlock()
	out := make(map[string]uint64, len(r.seals.heavy))
	for id, n := range r.seals.heavy {
		out[id] = n
	}
	return out
}
