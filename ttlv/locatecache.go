package ttlv

import (
	"strings"
	"sync"
	"time"

	"github.com/p11bridge/p11bridge/keymap"
)

// The ordered matches of recent Locates that answered one page of several, so that the next pages
// of the same search (Offset Items) cost their own items instead of a new search over every
// matching row: paging through N matches costs O(N) in all, not O(N) a page (at 100,000 Active AES
// keys, 100 pages of 1,000 took 4.7 s, each page a search of all 100,000).
//
// A result is the identity's own and its configuration's (the key holds both: a reload starts
// over), and good while the keymap's change counter stays where it was when the search ran, for
// locateCacheTTL at most. A first page (no Offset Items) always searches. Each item of a later
// page taken from a result is checked again — the caller's visibility, the storage status and
// every filter, states by date included — so a page never holds an object that no longer matches;
// Located Items may count one until the result expires.

// hit is one match of a Locate: its creation time held beside it, so that ordering a large result
// compares times in one array, not rows spread over the keymap's memory (at 100,000 matches,
// 250 ms a Locate against a few).
type hit struct {
	created  time.Time
	replaced bool // ReKey replaced it
	v        keymap.View
}

// hitOrder is Locate's order: keys in use first (a key not replaced before one that was: Locate
// by Name after a ReKey answers the current key first), then the newest first.
func hitOrder(a, b hit) int {
	if a.replaced != b.replaced {
		if a.replaced {
			return 1
		}
		return -1
	}
	if c := b.created.Compare(a.created); c != 0 {
		return c // newest first
	}
	return strings.Compare(a.v.ID(), b.v.ID())
}

const (
	locateCacheTTL = 30 * time.Second
	// maxCachedHits bounds the items all results hold together (~40 bytes each).
	maxCachedHits = 1 << 20
	// maxCachedLocates bounds the results: a few clients paging at once;
	// maxLocatesPerIdentity keeps one identity from pushing out the others'.
	maxCachedLocates      = 16
	maxLocatesPerIdentity = 4
)

type locateResult struct {
	who  string // the identity that searched
	at   uint64 // the keymap's Changes() when the search ran
	made time.Time
	hits []hit // in hitOrder
}

type locateCache struct {
	mu   sync.Mutex
	m    map[string]*locateResult
	held int // hits held by all results
}

// get returns the result of key made at changes at, if it is still good.
func (c *locateCache) get(key string, at uint64, now time.Time) []hit {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.m[key]
	if r != nil && r.at != at {
		// The keymap changed: every result made before is old, and holds rows it replaced.
		for k, r := range c.m {
			if r.at != at {
				c.drop(k)
			}
		}
		return nil
	}
	if r == nil || now.Sub(r.made) >= locateCacheTTL {
		if r != nil {
			c.drop(key)
		}
		return nil
	}
	return r.hits
}

// put keeps hits (ordered) as key's result for identity who, made at changes at; results that
// expired or are older go first, then who's oldest beyond its share, then the oldest of all.
func (c *locateCache) put(who, key string, at uint64, now time.Time, hits []hit) {
	if len(hits) > maxCachedHits {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]*locateResult{}
	}
	c.drop(key)
	for k, r := range c.m {
		if r.at != at || now.Sub(r.made) >= locateCacheTTL {
			c.drop(k)
		}
	}
	oldest := func(of string) (string, int) {
		k, n := "", 0
		for kk, r := range c.m {
			if of != "" && r.who != of {
				continue
			}
			n++
			if k == "" || r.made.Before(c.m[k].made) {
				k = kk
			}
		}
		return k, n
	}
	if k, n := oldest(who); n >= maxLocatesPerIdentity {
		c.drop(k)
	}
	for len(c.m) >= maxCachedLocates || c.held+len(hits) > maxCachedHits {
		k, _ := oldest("")
		c.drop(k)
	}
	c.m[key] = &locateResult{who: who, at: at, made: now, hits: hits}
	c.held += len(hits)
}

func (c *locateCache) drop(key string) {
	if r := c.m[key]; r != nil {
		c.held -= len(r.hits)
		delete(c.m, key)
	}
}
