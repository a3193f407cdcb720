package keymap

import (
	"slices"
	"strings"
	"time"
)

// View is a live record as the map holds it, read without copying: a scan that inspects every
// record (Locate) copies only those it keeps. The map never modifies what a View reads — a change
// stores a new record — so a View stays valid, and unchanged, after its record is replaced.
type View struct{ st *stored }

func (v View) ID() string        { return v.st.id }
func (v View) Signer() string    { return v.st.signer }
func (v View) Class() Class      { return v.st.class }
func (v View) Algorithm() string { return v.st.alg }
func (v View) Size() int         { return v.st.size }
func (v View) Name() string      { return v.st.name }
func (v View) State() State      { return v.st.state }
func (v View) Owner() string     { return v.st.owner }
func (v View) Created() time.Time {
	return v.st.created
}

// Attr returns one attribute of the record.
func (v View) Attr(k string) (string, bool) {
	i, ok := slices.BinarySearchFunc(v.st.attrs, k, func(a kv, k string) int { return strings.Compare(a.k, k) })
	if !ok {
		return "", false
	}
	return v.st.attrs[i].v, true
}

// EachAttr calls fn with each attribute of the record, in name order, until fn returns false.
func (v View) EachAttr(fn func(k, val string) bool) {
	for _, a := range v.st.attrs {
		if !fn(a.k, a.v) {
			return
		}
	}
}

// Record returns a deep copy of the record, as Get does.
func (v View) Record() Record { return v.st.record() }

// RangeViews calls fn with each live record in ID order until fn returns false, like Range, without
// copying the records.
func (m *Map) RangeViews(fn func(View) bool) {
	for _, st := range m.snapshot() {
		if !fn(View{st}) {
			return
		}
	}
}
