package keymap

import (
	"path/filepath"
	"testing"
)

// A cached row is served until the map changes; then the next Get reads the map again.
func TestCacheFollowsChanges(t *testing.T) {
	m := mustOpen(t, filepath.Join(t.TempDir(), "km.csv"))
	defer m.Close()
	r := rec(1)
	mustPut(t, m, r)
	c := NewCache[Record](2)
	loads := 0
	get := func(id string) (Record, bool) {
		return c.Get(m.Changes(), id, func() (Record, bool) { loads++; return m.Get(id) })
	}
	for i := 0; i < 3; i++ {
		if got, ok := get(r.ID); !ok || got.Name != r.Name {
			t.Fatalf("get %d: %v %v", i, got, ok)
		}
	}
	if loads != 1 {
		t.Fatalf("%d loads for three gets of an unchanged map, want 1", loads)
	}
	// Misses are not cached: a row that appears later is seen at once.
	if _, ok := get("missing"); ok {
		t.Fatal("found a missing row")
	}
	if _, ok := get("missing"); ok || loads != 3 {
		t.Fatalf("a miss was cached (%d loads)", loads)
	}
	renamed := r
	renamed.Name = "renamed"
	mustPut(t, m, renamed)
	if got, _ := get(r.ID); got.Name != "renamed" {
		t.Fatalf("after a change the cache still serves %q", got.Name)
	}
	if err := m.Delete(r.ID); err != nil {
		t.Fatal(err)
	}
	if _, ok := get(r.ID); ok {
		t.Fatal("a deleted row is still served")
	}
	// A load that read an older state than the cache holds is not kept.
	mustPut(t, m, rec(2))
	mustPut(t, m, rec(3))
	now := m.Changes()
	get(rec(2).ID)
	c.Get(now-1, rec(3).ID, func() (Record, bool) { return Record{ID: "old read"}, true })
	loads = 0
	if got, _ := get(rec(3).ID); got.ID != rec(3).ID || loads != 1 {
		t.Fatalf("an older read was kept: %q, %d loads", got.ID, loads)
	}
	// At most max values: a full cache starts over.
	mustPut(t, m, rec(4))
	for i := 2; i <= 4; i++ {
		get(rec(i).ID)
	}
	if n := len(c.m); n > 2 {
		t.Fatalf("%d values cached, max 2", n)
	}
}
