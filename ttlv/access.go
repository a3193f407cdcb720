package ttlv

import (
	"context"
	"maps"

	"github.com/gemalto/kmip-go/kmip14"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/signer"
)

// Who may do what with an object is the registry's key model (signer/access.go); these helpers
// only turn a request into its questions. An object the caller may not know of answers exactly as
// a missing one, so identifiers cannot be probed.

// lookup returns the row of id when the caller may do u with it.
func (o *op) lookup(id string, u signer.Use) (keymap.Record, error) {
	rec, err := o.s.reg.Access(o.caller, id, u)
	if err != nil {
		return keymap.Record{}, err
	}
	o.key, o.signer = rec.ID, rec.Signer
	return rec, nil
}

// target resolves a request's Unique Identifier (or the ID Placeholder) and looks it up for u.
func (o *op) target(u *uidRef, use signer.Use) (keymap.Record, error) {
	id, err := o.resolve(u)
	if err != nil {
		return keymap.Record{}, err
	}
	return o.lookup(id, use)
}

// wrongState refuses an operation in the object's current lifecycle state. KMIP 2.0 has a reason
// for it; the 1.x test vectors expect Permission Denied.
func wrongState(rec keymap.Record, st keymap.State, what string) error {
	return kerr(rWrongState, "object %s is %s: %s", rec.ID, stateName(st), what)
}

func stateName(st keymap.State) string {
	return kmip14.State(stateEnums[st]).String()
}

// update changes a row through the registry and registers the reverse change for Undo.
func (o *op) update(id string, fn func(*keymap.Record) error) (keymap.Record, error) {
	before, err := o.s.reg.Access(o.caller, id, signer.UseManage)
	if err != nil {
		return keymap.Record{}, err
	}
	rec, err := o.s.reg.Update(o.caller, id, fn)
	if err != nil {
		return keymap.Record{}, err
	}
	o.onUndo(func(ctx context.Context) error {
		_, err := o.s.reg.Update(o.caller, id, func(r *keymap.Record) error {
			// Only what this item wrote is undone: a change made since (another client's Revoke,
			// say) is not overwritten with an older row, and a compromise is never taken back.
			if !sameMeta(*r, rec) {
				return kerr(rGeneral, "object %s changed after this item; it is not undone", id)
			}
			if r.State == keymap.Compromised && before.State != keymap.Compromised {
				return kerr(rGeneral, "object %s was marked compromised; that is not undone", id)
			}
			r.Name, r.State, r.Owner, r.Attrs = before.Name, before.State, before.Owner, maps.Clone(before.Attrs)
			return nil
		})
		return err
	})
	return rec, nil
}

// sameMeta says whether a and b hold the same metadata, but for the facts the registry updates by
// itself as keys are used (seal counts, the block mode bound at first use).
func sameMeta(a, b keymap.Record) bool {
	if a.Name != b.Name || a.State != b.State || a.Owner != b.Owner {
		return false
	}
	return maps.EqualFunc(withoutUsageFacts(a.Attrs), withoutUsageFacts(b.Attrs), func(x, y string) bool { return x == y })
}

func withoutUsageFacts(m map[string]string) map[string]string {
	out := maps.Clone(m)
	delete(out, signer.AttrSeals)
	delete(out, signer.AttrBlockMode)
	return out
}

// created registers the removal of a new object for Undo. A new version of a KES key is left in
// place: KES may have sealed data keys with it already, and destroying it would lose them.
func (o *op) created(ids ...string) {
	o.onUndo(func(ctx context.Context) error {
		for _, id := range ids {
			if rec, err := o.s.reg.Access(o.caller, id, signer.UseSee); err == nil && rec.Attrs[signer.AttrKESName] != "" {
				return kerr(rGeneral, "object %s is a new version of KES key %q; it is not undone", id, rec.Attrs[signer.AttrKESName])
			}
			if err := o.s.reg.Destroy(ctx, o.caller, id); err != nil {
				return err
			}
		}
		return nil
	})
}
