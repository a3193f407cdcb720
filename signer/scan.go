package signer

import (
	"github.com/p11bridge/p11bridge/keymap"
)

// Scan calls fn, in no particular order, with each row matching q that c may see (Caller.Sees)
// until fn returns false. It visits the rows the keymap files under q's most selective condition
// (keymap.Select), q narrowed by what c may see at all (Caller.narrow), and decides on each row
// where the keymap keeps it: a caller that inspects many rows (KMIP Locate) copies only those it
// keeps (View.Record).
func (r *Registry) Scan(c Caller, q keymap.Query, fn func(keymap.View) bool) {
	r.km.Select(c.narrow(q), func(v keymap.View) bool {
		if !c.reachesRow(v) {
			return true
		}
		return fn(v)
	})
}

// Sees says whether c may see row v (the check Scan makes on each row).
func (r *Registry) Sees(c Caller, v keymap.View) bool { return c.reachesRow(v) }
