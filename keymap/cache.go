package keymap

import "sync"

// Cache keeps values derived from a map's rows (a row itself, or the versions of a key) for
// hot read paths, where copying rows out of the map on every request was a large part of what
// a request allocated. Every value is good only while the map's Changes() stays what it was
// when the value was read: any change empties the cache. Only values that exist are kept, so
// keys made up by clients cannot fill it, and at most max are kept.
//
// Values are shared between callers: they must not be modified.
type Cache[V any] struct {
	mu  sync.RWMutex
	at  uint64 // Changes() when the entries were read
	m   map[string]V
	max int
}

// NewCache returns a cache that holds at most max values.
func NewCache[V any](max int) *Cache[V] { return &Cache[V]{max: max} }

// Get returns the value of key, calling load when the cache has none read at Changes() now;
// ok is load's. now must be read before load runs, so that a change made meanwhile marks what
// load read as old.
func (c *Cache[V]) Get(now uint64, key string, load func() (V, bool)) (V, bool) {
	c.mu.RLock()
	v, ok := c.m[key]
	fresh := c.at == now
	c.mu.RUnlock()
	if ok && fresh {
		return v, true
	}
	if v, ok = load(); !ok {
		return v, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case now < c.at:
		return v, true // the cache holds newer reads; this one is not kept
	case now > c.at || c.m == nil || len(c.m) >= c.max:
		c.m, c.at = make(map[string]V), now
	}
	c.m[key] = v
	return v, true
}
