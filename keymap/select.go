package keymap

import (
	"math/bits"
	"slices"
	"strings"
)

// Select and its indexes. Besides the indexes by id, tag, key identifier and name, the map files
// every live record under its class, state, algorithm, owner, signer and the names of its
// attributes, so that a search by those (KMIP Locate, KES list, `keys list --signer`) visits the
// records of its most selective condition rather than every record.
//
// Each live record has a slot, a small integer (reused after a delete), and each indexed value a
// set of slots: a sorted list while it is small, a bitset once the list would take more memory
// than one bit per slot. Fields with a few values over many records (class, state, algorithm,
// signer) cost a few bits a record; values held by a few records each (owners, most attribute
// names) four bytes a record.

// Query selects live records. Every field that is set must match: a record matches a list when
// its value is one of the list (Attrs: when it has every attribute named).
type Query struct {
	Names      []string // the record's Name (the primary name)
	Classes    []Class
	States     []State
	Algorithms []string
	Owners     []string
	Signers    []string
	Attrs      []string // attribute keys the record must have
}

// Select calls fn with a view of each live record matching q (in no particular order) until fn
// returns false. It visits the records filed under the most selective condition of q only, and
// calls fn outside the map's lock: fn may use the map, writes included.
func (m *Map) Select(q Query, fn func(View) bool) {
	var found []*stored
	m.mu.RLock()
	m.eachLocked(q, func(st *stored) { found = append(found, st) })
	m.mu.RUnlock()
	for _, st := range found {
		if !fn(View{st}) {
			return
		}
	}
}

// Count returns how many live records match q, visiting the records of its most selective
// condition.
func (m *Map) Count(q Query) int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	n := 0
	m.eachLocked(q, func(*stored) { n++ })
	return n
}

// Census counts the live records per signer and state, from the indexes (a bitset intersection
// per pair where the sets are large): /status and the metrics ask for it often.
func (m *Map) Census() map[string]map[State]int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := map[string]map[State]int{}
	for sg, ps := range m.fields[fSigner].vals {
		c := map[State]int{}
		for st, pst := range m.fields[fState].vals {
			if n := ps.intersect(pst); n > 0 {
				c[State(st)] = n
			}
		}
		out[sg] = c
	}
	return out
}

// eachLocked calls fn with each live record matching q. Needs mu held.
func (m *Map) eachLocked(q Query, fn func(*stored)) {
	if q.Names != nil && !slices.Contains(q.Names, "") {
		// Names are a unique-ish key: its buckets are the smallest candidates there are. The
		// empty name is filed nowhere; a search for it walks another index or all rows.
		for _, n := range dedup(q.Names) {
			if e := m.byName.one[n]; e != nil {
				if st := e.st; st != nil && q.matches(st) {
					fn(st)
				}
				continue
			}
			for _, e := range m.byName.many[n] {
				if st := e.st; st != nil && q.matches(st) {
					fn(st)
				}
			}
		}
		return
	}
	// The condition with the fewest records filed under it drives the walk.
	var best []*postings
	bestN := -1
	consider := func(f *fieldIndex, vals []string) {
		var ps []*postings
		n := 0
		for _, v := range dedup(vals) {
			if p := f.vals[v]; p != nil && p.n > 0 {
				ps = append(ps, p)
				n += p.n
			}
		}
		if bestN < 0 || n < bestN {
			best, bestN = ps, n
		}
	}
	if q.Classes != nil {
		consider(&m.fields[fClass], strs(q.Classes))
	}
	if q.States != nil {
		consider(&m.fields[fState], strs(q.States))
	}
	if q.Algorithms != nil {
		consider(&m.fields[fAlg], q.Algorithms)
	}
	if q.Owners != nil {
		consider(&m.fields[fOwner], q.Owners)
	}
	if q.Signers != nil {
		consider(&m.fields[fSigner], q.Signers)
	}
	for _, a := range q.Attrs {
		consider(&m.fields[fAttr], []string{a})
	}
	if bestN < 0 {
		for _, e := range m.slots {
			if e != nil && e.st != nil && q.matches(e.st) {
				fn(e.st)
			}
		}
		return
	}
	for _, p := range best {
		p.each(func(s uint32) {
			if e := m.slots[s]; e != nil && e.st != nil && q.matches(e.st) {
				fn(e.st)
			}
		})
	}
}

// matches checks every condition of q on st.
func (q Query) matches(st *stored) bool {
	if q.Names != nil && !slices.Contains(q.Names, st.name) ||
		q.Classes != nil && !slices.Contains(q.Classes, st.class) ||
		q.States != nil && !slices.Contains(q.States, st.state) ||
		q.Algorithms != nil && !slices.Contains(q.Algorithms, st.alg) ||
		q.Owners != nil && !slices.Contains(q.Owners, st.owner) ||
		q.Signers != nil && !slices.Contains(q.Signers, st.signer) {
		return false
	}
	for _, a := range q.Attrs {
		if _, ok := slices.BinarySearchFunc(st.attrs, a, func(x kv, k string) int { return strings.Compare(x.k, k) }); !ok {
			return false
		}
	}
	return true
}

func strs[T ~string](xs []T) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = string(x)
	}
	return out
}

// dedup returns xs without repeated values (a value listed twice must not visit its records
// twice).
func dedup(xs []string) []string {
	if len(xs) < 2 {
		return xs
	}
	out := slices.Clone(xs)
	slices.Sort(out)
	return slices.Compact(out)
}

// The indexed fields.
const (
	fClass = iota
	fState
	fAlg
	fOwner
	fSigner
	fAttr // one value per attribute name the record has
	nFields
)

// fieldIndex files slots under values. The empty value (no state, no owner, …) is filed too: a search
// for records without an owner is a search like another.
type fieldIndex struct {
	vals map[string]*postings
}

func (f *fieldIndex) add(v string, s uint32, universe int) {
	p := f.vals[v]
	if p == nil {
		if f.vals == nil {
			f.vals = map[string]*postings{}
		}
		p = &postings{}
		f.vals[v] = p
	}
	p.add(s, universe)
}

func (f *fieldIndex) del(v string, s uint32, universe int) {
	p := f.vals[v]
	if p == nil {
		return
	}
	p.del(s, universe)
	if p.n == 0 {
		delete(f.vals, v)
	}
}

// fieldValue is what st files under field f (fAttr files one value per attribute instead).
func fieldValue(f int, st *stored) string {
	switch f {
	case fClass:
		return string(st.class)
	case fState:
		return string(st.state)
	case fAlg:
		return st.alg
	case fOwner:
		return st.owner
	case fSigner:
		return st.signer
	}
	return ""
}

// fileSlot files slot s under old's values no more and under next's (either may be nil); values
// that did not change are left alone. Needs mu held for writing.
func (m *Map) fileSlot(s uint32, old, next *stored) {
	u := len(m.slots)
	for f := range fAttr {
		ov, nv := "", ""
		if old != nil {
			ov = fieldValue(f, old)
		}
		if next != nil {
			nv = fieldValue(f, next)
		}
		if old != nil && next != nil && ov == nv {
			continue
		}
		if old != nil {
			m.fields[f].del(ov, s, u)
		}
		if next != nil {
			m.fields[f].add(nv, s, u)
		}
	}
	// Attribute names: both lists are sorted, so one merge finds what came and what went.
	var oa, na []kv
	if old != nil {
		oa = old.attrs
	}
	if next != nil {
		na = next.attrs
	}
	i, j := 0, 0
	for i < len(oa) || j < len(na) {
		switch {
		case j >= len(na) || i < len(oa) && oa[i].k < na[j].k:
			m.fields[fAttr].del(oa[i].k, s, u)
			i++
		case i >= len(oa) || na[j].k < oa[i].k:
			m.fields[fAttr].add(na[j].k, s, u)
			j++
		default:
			i, j = i+1, j+1
		}
	}
}

// newSlot gives e a slot. Needs mu held for writing.
func (m *Map) newSlot(e *entry) {
	if n := len(m.freeSlots); n > 0 {
		e.slot = m.freeSlots[n-1]
		m.freeSlots = m.freeSlots[:n-1]
		m.slots[e.slot] = e
		return
	}
	e.slot = uint32(len(m.slots))
	m.slots = append(m.slots, e)
}

// freeSlot takes e's slot back. Needs mu held for writing.
func (m *Map) freeSlot(e *entry) {
	m.slots[e.slot] = nil
	m.freeSlots = append(m.freeSlots, e.slot)
}

// buildFields files every live entry, in the order given, for Open.
func (m *Map) buildFields(entries []*entry) {
	m.slots = make([]*entry, 0, len(m.recs))
	for _, e := range entries {
		if e.st != nil {
			e.slot = uint32(len(m.slots))
			m.slots = append(m.slots, e)
		}
	}
	// The universe is known up front, so every set starts in the form it ends in.
	u := len(m.slots)
	for _, e := range m.slots {
		for f := range fAttr {
			m.fields[f].add(fieldValue(f, e.st), e.slot, u)
		}
		for _, a := range e.st.attrs {
			m.fields[fAttr].add(a.k, e.slot, u)
		}
	}
}

// postings is a set of slots: a sorted list, or a bitset (bits non-nil) once the list would take
// more memory than a bit per slot of the map.
type postings struct {
	list []uint32
	bits []uint64
	n    int
}

func (p *postings) add(s uint32, universe int) {
	if p.bits != nil {
		w := int(s / 64)
		if w >= len(p.bits) {
			p.bits = append(p.bits, make([]uint64, w+1-len(p.bits))...)
		}
		if p.bits[w]&(1<<(s%64)) == 0 {
			p.bits[w] |= 1 << (s % 64)
			p.n++
		}
		return
	}
	i, found := slices.BinarySearch(p.list, s)
	if found {
		return
	}
	p.list = slices.Insert(p.list, i, s)
	p.n++
	// A list of n slots takes 4n bytes, a bitset universe/8.
	if p.n > 64 && p.n*32 > universe {
		p.bits = make([]uint64, (universe+63)/64)
		for _, x := range p.list {
			if int(x/64) >= len(p.bits) {
				p.bits = append(p.bits, make([]uint64, int(x/64)+1-len(p.bits))...)
			}
			p.bits[x/64] |= 1 << (x % 64)
		}
		p.list = nil
	}
}

func (p *postings) del(s uint32, universe int) {
	if p.bits != nil {
		w := int(s / 64)
		if w < len(p.bits) && p.bits[w]&(1<<(s%64)) != 0 {
			p.bits[w] &^= 1 << (s % 64)
			p.n--
		}
		// Back to a list well below the point where it became a bitset, so a set near the
		// threshold does not flip at every change.
		if p.n*128 < universe {
			list := make([]uint32, 0, p.n)
			p.each(func(x uint32) { list = append(list, x) })
			p.list, p.bits = list, nil
		}
		return
	}
	if i, found := slices.BinarySearch(p.list, s); found {
		p.list = slices.Delete(p.list, i, i+1)
		p.n--
		if cap(p.list) > 64 && len(p.list) < cap(p.list)/4 {
			p.list = slices.Clone(p.list) // give back what deletes left unused
		}
	}
}

// has says whether s is in p.
func (p *postings) has(s uint32) bool {
	if p.bits != nil {
		w := int(s / 64)
		return w < len(p.bits) && p.bits[w]&(1<<(s%64)) != 0
	}
	_, found := slices.BinarySearch(p.list, s)
	return found
}

// intersect counts the slots in both p and q.
func (p *postings) intersect(q *postings) int {
	if p.bits != nil && q.bits != nil {
		n := 0
		for i := range min(len(p.bits), len(q.bits)) {
			n += bits.OnesCount64(p.bits[i] & q.bits[i])
		}
		return n
	}
	if q.n < p.n {
		p, q = q, p
	}
	n := 0
	p.each(func(s uint32) {
		if q.has(s) {
			n++
		}
	})
	return n
}

func (p *postings) each(fn func(uint32)) {
	if p.bits == nil {
		for _, s := range p.list {
			fn(s)
		}
		return
	}
	for w, word := range p.bits {
		for word != 0 {
			b := bits.TrailingZeros64(word)
			fn(uint32(w*64 + b))
			word &= word - 1
		}
	}
}
