package signer

import (
	"sync"
	"time"

	"github.com/p11bridge/p11bridge/keymap"
)

// Quotas bound what one identity keeps in the tokens and the keymap: its live objects, and the
// bytes of their attributes (names and values as stored). Without them one identity allowed Create
// or Register could fill the HSM and every instance's memory.
type Quota struct {
	Objects   int // live objects it owns; 0 = DefaultQuotaObjects
	AttrBytes int // bytes of their attributes; 0 = DefaultQuotaAttrBytes
}

// Default quotas: well above what a storage array or a MinIO makes, far below what fills an HSM.
const (
	DefaultQuotaObjects   = 100_000
	DefaultQuotaAttrBytes = 256 << 20
)

// usageRefresh is how old the per-owner counts may be before a new object is checked against
// them. Between refreshes this process counts what it makes; other instances' objects show up at
// the next refresh, so a cluster may overshoot a quota by what the others make meanwhile.
const usageRefresh = 5 * time.Second

type ownerUsage struct{ objects, attrBytes int }

type usageCounts struct {
	mu    sync.Mutex
	at    time.Time
	by    map[string]ownerUsage
	extra map[string]ownerUsage // made here since the last count
}

// checkQuota refuses new objects of c's that would take it past its quota. The admin and the
// operator have none.
func (r *Registry) checkQuota(c Caller, recs ...keymap.Record) error {
	add := ownerUsage{objects: len(recs)}
	for _, rec := range recs {
		add.attrBytes += attrBytes(rec.Name, rec.Attrs)
	}
	return r.takeQuota(c, add)
}

// takeQuota refuses add to what c holds when it would take it past its quota, and counts it.
func (r *Registry) takeQuota(c Caller, add ownerUsage) error {
	if c.Admin || c.Identity == "" {
		return nil
	}
	q := c.Quota
	if q.Objects <= 0 {
		q.Objects = DefaultQuotaObjects
	}
	if q.AttrBytes <= 0 {
		q.AttrBytes = DefaultQuotaAttrBytes
	}
	u := r.usageOf(c.Identity)
	switch {
	case u.objects+add.objects > q.Objects:
		return errorf(ErrQuota, "this identity owns %d objects, its quota is %d: destroy some, or ask for a larger quota (max_objects in its policy)", u.objects, q.Objects)
	case u.attrBytes+add.attrBytes > q.AttrBytes:
		return errorf(ErrQuota, "this identity's objects hold %d bytes of attributes, its quota is %d: delete some, or ask for a larger quota (max_attribute_bytes in its policy)", u.attrBytes, q.AttrBytes)
	}
	r.usage.mu.Lock()
	if r.usage.extra == nil {
		r.usage.extra = map[string]ownerUsage{}
	}
	e := r.usage.extra[c.Identity]
	e.objects += add.objects
	e.attrBytes += add.attrBytes
	r.usage.extra[c.Identity] = e
	r.usage.mu.Unlock()
	return nil
}

// usageOf is what owner holds, counted over every live row at most usageRefresh ago, plus what
// this process made since.
func (r *Registry) usageOf(owner string) ownerUsage {
	r.usage.mu.Lock()
	defer r.usage.mu.Unlock()
	if r.usage.by == nil || time.Since(r.usage.at) > usageRefresh {
		by := map[string]ownerUsage{}
		r.km.RangeViews(func(v keymap.View) bool {
			if o := v.Owner(); o != "" && LiveState(v.State()) {
				u := by[o]
				u.objects++
				u.attrBytes += len(v.Name())
				v.EachAttr(func(k, val string) bool { u.attrBytes += len(k) + len(val); return true })
				by[o] = u
			}
			return true
		})
		r.usage.by, r.usage.at, r.usage.extra = by, time.Now(), nil
	}
	u, e := r.usage.by[owner], r.usage.extra[owner]
	return ownerUsage{u.objects + e.objects, u.attrBytes + e.attrBytes}
}

func attrBytes(name string, attrs map[string]string) int {
	n := len(name)
	for k, v := range attrs {
		n += len(k) + len(v)
	}
	return n
}

// admitNew is what the key model asks of the objects c is about to make, before the token makes
// them: their owner (c, or nobody for the admin), names c may take, and room in c's quota for all
// of them. It sets each meta's owner.
func (r *Registry) admitNew(c Caller, metas ...*Meta) error {
	recs := make([]keymap.Record, len(metas))
	for i, m := range metas {
		*m = c.own(*m)
		recs[i] = keymap.Record{Name: m.Name, Attrs: m.Attrs}
		if err := r.checkNew(c, recs[i], m.Names...); err != nil {
			return err
		}
	}
	return r.checkQuota(c, recs...)
}
