package keymap

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
)

// Select answers exactly what a walk over every record filtered by the same conditions answers,
// through puts, changes of every indexed field, attribute changes and deletes, on sets small
// enough to stay lists and large enough to become bitsets and back.
func TestSelectAgreesWithScan(t *testing.T) {
	m := newMemory("select-test", nil)
	rnd := rand.New(rand.NewPCG(1, 2))
	classes := []Class{SecretKey, PrivateKey, PublicKey}
	states := []State{"", PreActive, Active, Deactivated}
	algs := []string{"AES", "RSA", "EC", ""}
	owners := []string{"", "o1", "o2"}
	for i := range 40 {
		owners = append(owners, fmt.Sprintf("rare-%d", i))
	}
	attrKeys := []string{"kmip.Name", "x.tenant", "x.rare", "key.usage"}
	random := func(id string) Record {
		r := Record{ID: id, Tag: []byte(id), Signer: []string{"a", "b"}[rnd.IntN(2)],
			Class: classes[rnd.IntN(len(classes))], State: states[rnd.IntN(len(states))],
			Algorithm: algs[rnd.IntN(len(algs))], Owner: owners[rnd.IntN(len(owners))],
			Name: fmt.Sprintf("n-%d", rnd.IntN(300)), Attrs: map[string]string{}}
		if rnd.IntN(10) == 0 {
			r.Name = "" // filed under no name
		}
		for _, k := range attrKeys {
			if rnd.IntN(3) == 0 || k == "x.rare" && rnd.IntN(20) != 0 {
				continue
			}
			r.Attrs[k] = "v"
		}
		return r
	}
	queries := []Query{
		{},
		{Classes: []Class{SecretKey}},
		{Classes: []Class{SecretKey}, Algorithms: []string{"AES"}, States: []State{Active, PreActive, ""}},
		{States: []State{Deactivated}, Owners: []string{"o1"}},
		{Owners: []string{"rare-3", "rare-7", "rare-3"}},
		{Attrs: []string{"x.rare"}},
		{Attrs: []string{"x.tenant", "kmip.Name"}, Signers: []string{"b"}},
		{Names: []string{"n-5", "n-6"}},
		{Names: []string{"n-7"}, Classes: []Class{PublicKey}},
		{Names: []string{"", "n-5"}},
		{Algorithms: []string{"nothing"}},
		{Owners: []string{}},
	}
	check := func(step int) {
		t.Helper()
		for qi, q := range queries {
			var want []string
			m.RangeViews(func(v View) bool {
				if q.matches(v.st) {
					want = append(want, v.ID())
				}
				return true
			})
			var got []string
			m.Select(q, func(v View) bool { got = append(got, v.ID()); return true })
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Fatalf("step %d, query %d %+v: Select found %d records, a scan %d", step, qi, q, len(got), len(want))
			}
			if n := m.Count(q); n != len(want) {
				t.Fatalf("step %d, query %d: Count %d, want %d", step, qi, n, len(want))
			}
		}
		census := map[string]map[State]int{}
		m.RangeViews(func(v View) bool {
			if census[v.Signer()] == nil {
				census[v.Signer()] = map[State]int{}
			}
			census[v.Signer()][v.State()]++
			return true
		})
		if got := m.Census(); !maps.EqualFunc(got, census, maps.Equal) {
			t.Fatalf("step %d: Census %v, counted %v", step, got, census)
		}
	}
	// forms counts the sets seen as lists and as bitsets, to show both were exercised.
	forms := [2]int{}
	countForms := func() {
		for f := range m.fields {
			for _, p := range m.fields[f].vals {
				if p.bits != nil {
					forms[1]++
				} else if p.n > 64 {
					forms[0]++
				}
			}
		}
	}
	live := map[string]bool{}
	next := 0
	for step := range 12000 {
		// The map grows, shrinks to a tenth and grows again, so big sets turn into bitsets and
		// back into lists.
		put, upd := 7, 9
		if step >= 6000 && step < 9000 {
			put, upd = 1, 2
		}
		switch op := rnd.IntN(10); {
		case op < put || len(live) < 50:
			id := fmt.Sprintf("id-%05d", next)
			next++
			r := random(id)
			if err := m.set(id, &r); err != nil {
				t.Fatal(err)
			}
			live[id] = true
		case op < upd:
			for id := range live {
				r := random(id)
				if err := m.set(id, &r); err != nil {
					t.Fatal(err)
				}
				break
			}
		default:
			for id := range live {
				m.set(id, nil)
				delete(live, id)
				break
			}
		}
		if step%1000 == 0 {
			check(step)
			countForms()
		}
	}
	check(-1)
	if forms[0] == 0 || forms[1] == 0 {
		t.Fatalf("sets of more than 64 records seen as lists %d times, as bitsets %d times: both forms must be exercised", forms[0], forms[1])
	}

	// What Open builds from a file answers the same.
	path := filepath.Join(t.TempDir(), "k.csv")
	writeFile(t, path, 3000)
	f := mustOpen(t, path)
	defer f.Close()
	n := 0
	f.Select(Query{Classes: []Class{PrivateKey}, Algorithms: []string{"RSA"}}, func(View) bool { n++; return true })
	if n != 1500 {
		t.Fatalf("after Open: %d RSA private keys, want 1500", n)
	}
	if c := f.Count(Query{Owners: []string{"3f2e9c1b8a7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f"}, Attrs: []string{"usage"}}); c != 3000 {
		t.Fatalf("after Open: %d records of the owner with a usage attribute, want 3000", c)
	}
}
