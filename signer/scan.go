package signer

import "github.com/p11bridge/p11bridge/keymap"

// Scan calls fn, in identifier order, with each row c may see (Caller.Sees) until fn returns
// false. The rows are the keymap's own, read through views without a copy: a caller that
// inspects every row (KMIP Locate) copies only those it keeps (View.Record).
func (r *Registry) Scan(c Caller, fn func(keymap.View) bool) {
	r.km.RangeViews(func(v keymap.View) bool {
		if !c.Sees(visibility(v)) {
			return true
		}
		return fn(v)
	})
}

// visibility is the part of v that Caller.Sees reads — name, KES name and owner — as a record,
// without copying the rest. TestScanSeesAsSees keeps it in step with Sees.
func visibility(v keymap.View) keymap.Record {
	rec := keymap.Record{ID: v.ID(), Signer: v.Signer(), Class: v.Class(), Name: v.Name(), State: v.State(), Owner: v.Owner()}
	if kn, ok := v.Attr(AttrKESName); ok {
		rec.Attrs = map[string]string{AttrKESName: kn}
	}
	return rec
}
