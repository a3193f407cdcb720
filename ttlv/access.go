package ttlv

import (
	"context"
	"maps"
	"time"

	"github.com/gemalto/kmip-go/kmip14"

	"github.com/p11bridge/p11bridge/keymap"
)

// visible says whether the caller may see rec: objects belong to the identity that made them;
// admins see everything. Objects without an owner (made outside KMIP by the CLI) are admin-only.
func (o *op) visible(rec keymap.Record) bool {
	return o.admin || (rec.Owner != "" && rec.Owner == o.identity)
}

// lookup returns the row of id when the caller may see it. Others' objects are reported exactly
// like missing ones, so identifiers cannot be probed.
func (o *op) lookup(id string) (keymap.Record, error) {
	rec, err := o.s.reg.Get(id)
	if err == nil && !o.visible(rec) {
		err = kerr(rNotFound, "no object with identifier %q", id)
	}
	if err != nil {
		return keymap.Record{}, err
	}
	o.key, o.signer = rec.ID, rec.Signer
	return rec, nil
}

// target resolves a request's Unique Identifier (or the ID Placeholder) and looks it up.
func (o *op) target(u *uidRef) (keymap.Record, error) {
	id, err := o.resolve(u)
	if err != nil {
		return keymap.Record{}, err
	}
	return o.lookup(id)
}

// wrongState refuses an operation in the object's current lifecycle state. KMIP 2.0 has a reason
// for it; the 1.x test vectors expect Permission Denied.
func wrongState(rec keymap.Record, st keymap.State, what string) error {
	return kerr(rWrongState, "object %s is %s: %s", rec.ID, stateName(st), what)
}

func stateName(st keymap.State) string {
	return kmip14.State(stateEnums[st]).String()
}

// requireState checks that rec is now in one of the states.
func (o *op) requireState(rec keymap.Record, what string, states ...keymap.State) error {
	st := o.s.effectiveState(rec, time.Now())
	for _, s := range states {
		if st == s {
			return nil
		}
	}
	return wrongState(rec, st, what)
}

// requireUsage checks the Cryptographic Usage Mask when the object has one (objects made outside
// KMIP have none and are not restricted here). any lists acceptable bits; one is enough.
func (o *op) requireUsage(rec keymap.Record, what string, any ...kmip14.CryptographicUsageMask) error {
	mask, ok := o.s.storedInt(rec, kmip14.TagCryptographicUsageMask)
	if !ok {
		return nil
	}
	for _, b := range any {
		if mask&uint32(b) != 0 {
			return nil
		}
	}
	return kerr(rUsageMask, "object %s: its Cryptographic Usage Mask (%s) does not allow %s",
		rec.ID, tagMaskName(kmip14.TagCryptographicUsageMask, mask), what)
}

// update changes a row through the registry and registers the reverse change for Undo.
func (o *op) update(id string, fn func(*keymap.Record) error) (keymap.Record, error) {
	before, err := o.s.reg.Get(id)
	if err != nil {
		return keymap.Record{}, err
	}
	rec, err := o.s.reg.Update(id, fn)
	if err != nil {
		return keymap.Record{}, err
	}
	o.onUndo(func(ctx context.Context) error {
		_, err := o.s.reg.Update(id, func(r *keymap.Record) error {
			r.Name, r.State, r.Owner, r.Attrs = before.Name, before.State, before.Owner, maps.Clone(before.Attrs)
			return nil
		})
		return err
	})
	return rec, nil
}

// created registers the removal of a new object for Undo.
func (o *op) created(ids ...string) {
	o.onUndo(func(ctx context.Context) error {
		for _, id := range ids {
			if err := o.s.reg.Destroy(ctx, id); err != nil {
				return err
			}
		}
		return nil
	})
}
