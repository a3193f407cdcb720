package keymap

import (
	"path/filepath"
	"reflect"
	"testing"
)

// TestRangeViews: a view reads what Get copies, attribute by attribute, in Range's order, and
// keeps reading the record it was taken from after that record is replaced.
func TestRangeViews(t *testing.T) {
	m := mustOpen(t, filepath.Join(t.TempDir(), "k.csv"))
	defer m.Close()
	for _, i := range []int{5, 3, 9, 1, 7} {
		r := rec(i)
		r.Attrs = map[string]string{"b": "2", "a": "1", "z.last": "26"}
		mustPut(t, m, r)
	}
	var ids []string
	var views []View
	m.RangeViews(func(v View) bool {
		ids = append(ids, v.ID())
		views = append(views, v)
		return true
	})
	var want []string
	m.Range(func(r Record) bool { want = append(want, r.ID); return true })
	if !reflect.DeepEqual(ids, want) {
		t.Fatalf("order %v, Range's %v", ids, want)
	}
	for _, v := range views {
		got, _ := m.Get(v.ID())
		if r := v.Record(); !reflect.DeepEqual(r, got) {
			t.Errorf("%s: view record %+v, Get %+v", v.ID(), r, got)
		}
		if v.Name() != got.Name || v.Class() != got.Class || v.State() != got.State || v.Owner() != got.Owner ||
			v.Size() != got.Size || !v.Created().Equal(got.Created) || v.Signer() != got.Signer || v.Algorithm() != got.Algorithm {
			t.Errorf("%s: view fields differ from %+v", v.ID(), got)
		}
		for k, val := range got.Attrs {
			if s, ok := v.Attr(k); !ok || s != val {
				t.Errorf("%s: Attr(%q) = %q, %v", v.ID(), k, s, ok)
			}
		}
		if _, ok := v.Attr("missing"); ok {
			t.Errorf("%s: an attribute it does not have", v.ID())
		}
	}
	r := rec(5)
	r.Name = "renamed"
	mustPut(t, m, r)
	if views[2].Name() == "renamed" {
		t.Error("a view changed with its record")
	}
}
