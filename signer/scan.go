package signer

import (
	"strings"

	"github.com/p11bridge/p11bridge/keymap"
)

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

// visibility is v as Caller.Sees needs it, without copying the bulk of the row: every field and
// the registry's own attributes (KES names and the like, which decide a key's name), but not the
// values a front end stores for clients ("kmip." and "x." attributes of the KMIP front end, which
// the key model never reads for visibility). TestScanSeesAsSees keeps it in step with Sees.
func visibility(v keymap.View) keymap.Record {
	rec := keymap.Record{ID: v.ID(), Signer: v.Signer(), Class: v.Class(), Algorithm: v.Algorithm(), Size: v.Size(),
		Name: v.Name(), State: v.State(), Owner: v.Owner(), Created: v.Created()}
	v.EachAttr(func(k, val string) bool {
		if !strings.HasPrefix(k, "kmip.") && !strings.HasPrefix(k, "x.") {
			if rec.Attrs == nil {
				rec.Attrs = map[string]string{}
			}
			rec.Attrs[k] = val
		}
		return true
	})
	return rec
}
