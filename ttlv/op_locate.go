package ttlv

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"sync/atomic"
	"time"

	"github.com/gemalto/kmip-go/kmip14"
	"github.com/gemalto/kmip-go/kmip20"
	tt "github.com/gemalto/kmip-go/ttlv"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/signer"
)

// Inverses of classTypes and stateEnums, for Locate's searches.
var (
	classOfType = map[kmip14.ObjectType]keymap.Class{}
	stateOfEnum = map[kmip14.State]keymap.State{}
)

func init() {
	for c, t := range classTypes {
		classOfType[t] = c
	}
	for s, e := range stateEnums {
		stateOfEnum[e] = s
	}
}

func init() {
	register(kmip14.OperationLocate, v10, locate)
}

type locateRequest struct {
	MaximumItems      *int32  `kmip:"MaximumItems"`
	OffsetItems       *int32  `kmip:"OffsetItems"`
	StorageStatusMask *int32  `kmip:"StorageStatusMask"`
	ObjectGroupMember *uint32 `kmip:"ObjectGroupMember"`
	Attributes1       []*node `kmip:"Attribute"`
	Attributes2       *node   `kmip:"Attributes"`
}

type locateResponse struct {
	LocatedItems *int32   `kmip:"LocatedItems"`
	UIDs         []string `kmip:"UniqueIdentifier"`
}

// storageDestroyed is KMIP 2.0's Destroyed Storage bit of the Storage Status Mask.
const storageDestroyed = 0x4

// filter is one attribute of a Locate request with all the instances given for it.
type filter struct {
	a    attr
	vals []*node
}

// locate finds the objects the caller may see whose attributes match every given attribute, most
// recently created first.
func locate(o *op, p *node) (any, error) {
	var req locateRequest
	if err := decodeStruct(p, &req); err != nil {
		return nil, err
	}
	var attrs []attr
	var err error
	if req.Attributes2 != nil {
		attrs, err = parseAttrs(true, req.Attributes2)
	} else {
		attrs, err = parseAttrs(false, newStruct(kmip14.TagTemplateAttribute, req.Attributes1...))
	}
	if err != nil {
		return nil, err
	}
	var filters []*filter
	byName := map[string]*filter{}
	for _, a := range attrs {
		f := byName[a.name]
		if f == nil {
			f = &filter{a: a}
			byName[a.name] = f
			filters = append(filters, f)
		}
		f.vals = append(f.vals, a.value)
	}
	// Destroyed objects keep their metadata but are found only when asked for: by a State filter
	// naming a destroyed state, or (2.0) a Storage Status Mask with Destroyed Storage.
	destroyed := req.StorageStatusMask != nil && *req.StorageStatusMask&storageDestroyed != 0
	if f := byName[def(kmip14.TagState).name]; f != nil {
		for _, v := range f.vals {
			switch kmip14.State(v.u32()) {
			case kmip14.StateDestroyed, kmip14.StateDestroyedCompromised:
				destroyed = true
			}
		}
	}
	// Filters that need the whole row (state, server-maintained attributes) come last: most rows
	// are rejected by the cheap ones, read in place, and are never copied.
	slices.SortStableFunc(filters, func(x, y *filter) int { return cmp.Compare(x.cost(), y.cost()) })
	// What another instance of a cluster just made, renamed or destroyed is found (or not) here too.
	if err := o.s.reg.Sync(context.Background()); err != nil {
		return nil, err
	}
	offset := 0
	if req.OffsetItems != nil && *req.OffsetItems > 0 {
		offset = int(*req.OffsetItems)
	}
	limit := o.s.opts.MaxLocateItems
	if req.MaximumItems != nil && *req.MaximumItems > 0 {
		limit = min(limit, int(*req.MaximumItems))
	}
	now := time.Now()
	// The changes counter is read before the search, so that a change made during it marks the
	// result as old.
	at := o.s.reg.Changes()
	var all []hit
	if offset > 0 {
		all = o.s.locates.get(locateKey(o, destroyed, filters), at, now)
	}
	var found []hit
	total := 0
	if all != nil {
		// A next page of a search made a moment ago: its items are checked again, one by one.
		total = len(all)
		for _, h := range all[min(offset, len(all)):min(offset+limit, len(all))] {
			if o.s.reg.Sees(o.caller, h.v) && (destroyed || signer.LiveState(h.v.State())) && o.matches(h.v, filters, now) {
				found = append(found, h)
			}
		}
	} else {
		found = o.search(filters, destroyed, now)
		total = len(found)
		slices.SortFunc(found, hitOrder)
		if total > limit {
			// More than one page: kept for the next pages.
			o.s.locates.put(o.caller.Identity, locateKey(o, destroyed, filters), at, now, found)
		}
		found = found[min(offset, total):min(offset+limit, total)]
	}
	resp := locateResponse{}
	if o.v.atLeast(1, 3) {
		resp.LocatedItems = ptr(int32(total))
	}
	for _, h := range found {
		resp.UIDs = append(resp.UIDs, h.v.ID())
	}
	if len(found) > 0 {
		o.produced(found[0].v.ID(), kmip20.UniqueIdentifierLocate)
	}
	return resp, nil
}

// search returns every row matching filters that the caller may see, in no order.
func (o *op) search(filters []*filter, destroyed bool, now time.Time) []hit {
	var found []hit
	plan := locatePlan(filters)
	if locateScanAll {
		plan = []branch{{}}
	}
	for _, b := range plan {
		o.s.reg.Scan(o.caller, b.q, func(v keymap.View) bool {
			if locateVisits != nil {
				locateVisits.Add(1)
			}
			if b.without != "" {
				if _, ok := v.Attr(b.without); ok {
					return true // another branch of the plan visits it
				}
			}
			if (destroyed || signer.LiveState(v.State())) && o.matches(v, filters, now) {
				r, _ := v.Attr(signer.AttrReplacement)
				found = append(found, hit{v.Created(), r != "", v})
			}
			return true
		})
	}
	return found
}

// locateKey names a search for the locate cache: the caller's identity and the configuration it
// was made under (a reload may change what it sees), the protocol version, whether destroyed
// objects count, and the filters with their values as encoded.
func locateKey(o *op, destroyed bool, filters []*filter) string {
	// Every part length-prefixed: custom attribute names may hold any byte.
	field := func(b, f []byte) []byte { return append(binary.AppendUvarint(b, uint64(len(f))), f...) }
	b := field(nil, []byte(o.caller.Identity))
	b = binary.BigEndian.AppendUint64(b, o.caller.Generation)
	b = append(b, byte(o.v.Major), byte(o.v.Minor))
	if destroyed {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	for _, f := range filters {
		b = field(b, []byte(f.a.name))
		b = binary.AppendUvarint(b, uint64(len(f.vals)))
		for _, v := range f.vals {
			b = field(b, v.encode(nil))
		}
	}
	// Kept hashed: the filters may fill a whole request.
	sum := sha256.Sum256(b)
	return string(sum[:])
}

// locateVisits, when set (tests), counts the rows Locate searches visit.
var locateVisits *atomic.Int64

// locateScanAll makes Locate visit every row (tests compare its answers with the plan's).
var locateScanAll bool

// branch is one search of a Locate: the rows the keymap files under q, less those with the
// attribute without (which another branch visits).
type branch struct {
	q       keymap.Query
	without string
}

// locatePlan turns filters into keymap searches whose rows include every row the filters can
// match; matches decides each row. The keymap indexes the row's first Name, class, stored state,
// registry algorithm and attribute names: a Name or an algorithm that a row may hold elsewhere
// (further Name instances, the KMIP algorithm a client asked for) gives a second branch over the
// rows that do.
func locatePlan(filters []*filter) []branch {
	var q keymap.Query
	var alt *branch
	// One condition may have a second branch; a Name's rows are fewer than an algorithm's, so a
	// Name takes it whichever comes first (filters are ordered by cost, algorithms first).
	named := slices.ContainsFunc(filters, func(f *filter) bool {
		return f.a.def != nil && f.a.def.tag == kmip14.TagName && f.vals[0].find(kmip14.TagNameValue) != nil
	})
	for _, f := range filters {
		if f.a.def == nil {
			q.Attrs = append(q.Attrs, storeKey(nil, f.a.name))
			continue
		}
		switch d := f.a.def; {
		case d.tag == kmip14.TagObjectType:
			c, ok := classOfType[kmip14.ObjectType(f.vals[0].u32())]
			if !ok {
				return nil // no row has it
			}
			q.Classes = []keymap.Class{c}
		case d.tag == kmip14.TagState:
			st, ok := stateOfEnum[kmip14.State(f.vals[0].u32())]
			if !ok {
				return nil
			}
			q.States = signer.StoredStates(st)
		case d.tag == kmip14.TagName && alt == nil:
			if nv := f.vals[0].find(kmip14.TagNameValue); nv != nil {
				q.Names = []string{nv.text()}
				alt = &branch{q: keymap.Query{Attrs: []string{moreNames}}}
			}
		case d.tag == kmip14.TagCryptographicAlgorithm && alt == nil && !named:
			if a, ok := registryAlgorithm(kmip14.CryptographicAlgorithm(f.vals[0].u32())); ok {
				q.Algorithms = []string{a}
				alt = &branch{q: keymap.Query{Attrs: []string{d.key}}}
			}
		case d.fact == "" && storedAlone(d) && d.tag != kmip14.TagName && d.tag != kmip14.TagCryptographicAlgorithm:
			// Read from the row's attribute alone: a row without it has no instance to match.
			q.Attrs = append(q.Attrs, d.key)
		}
	}
	if alt == nil {
		return []branch{{q: q}}
	}
	// The second branch keeps every other condition; the first leaves its rows to it.
	b2 := q
	b2.Names, b2.Algorithms = nil, nil
	b2.Attrs = append(slices.Clone(q.Attrs), alt.q.Attrs...)
	return []branch{{q: q, without: alt.q.Attrs[0]}, {q: b2}}
}

// registryAlgorithm is the registry algorithm of the rows that report a as their Cryptographic
// Algorithm without a stored one (kmipAlgorithm): registryKMIPAlgorithm read backwards, at
// either version's spelling.
func registryAlgorithm(a kmip14.CryptographicAlgorithm) (string, bool) {
	for _, alg := range []string{signer.AES, signer.RSA, signer.HMAC, signer.EC} {
		for _, v := range []ProtocolVersion{{1, 0}, {1, 2}} {
			if k, ok := registryKMIPAlgorithm(alg, v); ok && kmip14.CryptographicAlgorithm(k) == a {
				return alg, true
			}
		}
	}
	return "", false
}

// cost orders filters: those read from the row in place, then those that need a copy of it.
func (f *filter) cost() int {
	if f.a.def != nil {
		switch f.a.def.tag {
		case kmip14.TagObjectType, kmip14.TagCryptographicLength, kmip14.TagState, kmip14.TagCryptographicAlgorithm:
			return 0
		}
		if f.a.def.fact != "" || !storedAlone(f.a.def) {
			return 2
		}
	}
	return 1
}

// storedAlone says whether an attribute's instances are all in the row's stored form, so a filter
// on it needs no other attribute of the row.
func storedAlone(d *attrDef) bool {
	return d == nil || d.tag == kmip14.TagName || (d.access == clientRW && d.tag != kmip14.TagLink)
}

// matches says whether the row v satisfies every filter (ordered by cost).
func (o *op) matches(v keymap.View, filters []*filter, now time.Time) bool {
	if len(filters) == 0 {
		return true
	}
	var full *keymap.Record
	record := func() keymap.Record {
		if full == nil {
			r := v.Record()
			full = &r
		}
		return *full
	}
	var have map[string][]*node
	for _, f := range filters {
		if f.a.def != nil {
			switch f.a.def.tag {
			case kmip14.TagObjectType:
				if uint32(classTypes[v.Class()]) != f.vals[0].u32() {
					return false
				}
				continue
			case kmip14.TagState:
				if uint32(stateEnums[signer.EffectiveStateOf(v, now)]) != f.vals[0].u32() {
					return false
				}
				continue
			case kmip14.TagCryptographicAlgorithm:
				// Reported for keys only (attributesOf); every instance given must be the one.
				a, ok := o.s.viewAlgorithm(v, o.v)
				if !ok || !isKey(v.Class()) {
					return false
				}
				for _, want := range f.vals {
					if want.u32() != a {
						return false
					}
				}
				continue
			case kmip14.TagCryptographicLength:
				if int32(v.Size()) != int32(f.vals[0].u32()) {
					return false
				}
				continue
			}
		}
		if storedAlone(f.a.def) {
			// Stored attributes are read alone: no need to build the whole attribute list.
			var stored []*node
			if f.a.def != nil && f.a.def.fact != "" {
				stored = o.s.stored(record(), f.a.def, f.a.name)
			} else {
				raw, ok := v.Attr(storeKey(f.a.def, f.a.name))
				stored = o.s.storedValues(v.ID(), v.Name(), f.a.def, f.a.name, raw, ok)
			}
			var vals []*node
			for _, x := range stored {
				if x != nil {
					vals = append(vals, x)
				}
			}
			if !matchOne(f, vals) {
				return false
			}
			continue
		}
		if have == nil {
			have = map[string][]*node{}
			for _, a := range o.s.attributesOf(record(), o.v) {
				have[a.name] = append(have[a.name], a.value)
			}
		}
		if !matchOne(f, have[f.a.name]) {
			return false
		}
	}
	return true
}

// matchOne compares the instances an object has with those a filter gives: usage masks must
// include the given bits, two dates bound a range, Names compare by value, anything else must be
// equal to one of the object's instances.
func matchOne(f *filter, have []*node) bool {
	if len(have) == 0 {
		return false
	}
	if f.a.def != nil {
		switch {
		case f.a.def.tag == kmip14.TagCryptographicUsageMask:
			want := f.vals[0].u32()
			return have[0].u32()&want == want
		case f.a.def.typ == tt.TypeDateTime && len(f.vals) == 2:
			lo, hi := f.vals[0].dateTime(), f.vals[1].dateTime()
			if hi.Before(lo) {
				lo, hi = hi, lo
			}
			t := have[0].dateTime()
			return !t.Before(lo) && !t.After(hi)
		case f.a.def.tag == kmip14.TagName:
			for _, want := range f.vals {
				wv := want.find(kmip14.TagNameValue)
				ok := false
				for _, h := range have {
					if hv := h.find(kmip14.TagNameValue); hv != nil && wv != nil && hv.text() == wv.text() {
						ok = true
					}
				}
				if !ok {
					return false
				}
			}
			return true
		}
	}
	for _, want := range f.vals {
		ok := false
		for _, h := range have {
			if sameValue(h, want) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}
