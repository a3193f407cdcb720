package signer

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/p11bridge/p11bridge/keymap"
)

// TestScanSeesAsSees: Scan visits exactly the rows Caller.Sees allows on the full record, for
// owners, other identities, key-name patterns granting a team's keys, the admin and KES keys.
func TestScanSeesAsSees(t *testing.T) {
	alice := Caller{Identity: "scan-alice"}
	if _, err := testReg.Create(ctx, alice, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "scan-a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := testReg.Create(ctx, Caller{Identity: "scan-bob"}, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "scan-b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := testReg.CreateKESKey(ctx, alice, "scan-kes"); err != nil {
		t.Fatal(err)
	}
	// An imported KES key has a separate HMAC key, named by the KES key's name.
	if _, err := testReg.ImportKESKey(ctx, alice, "scan-imported", make([]byte, 32)); err != nil {
		t.Fatal(err)
	}
	team := func(owner string) bool { return owner == "scan-alice" || owner == "scan-bob" }
	for _, c := range []Caller{alice, {Identity: "scan-bob"}, {Identity: "nobody"}, {Identity: "scan-carol", Keys: []string{"scan-*"}, Team: team},
		{Identity: "scan-alice", Keys: []string{"scan-kes"}}, {Identity: "scan-alice", Keys: []string{"scan-imported"}}, {Admin: true}} {
		var want, got []string
		testReg.Range(func(rec keymap.Record) bool {
			if c.Sees(rec) {
				want = append(want, rec.ID)
			}
			return true
		})
		testReg.Scan(c, keymap.Query{}, func(v keymap.View) bool {
			got = append(got, v.ID())
			return true
		})
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("%+v: Scan visits %v, Sees allows %v", c, got, want)
		}
		if c.Identity == "scan-carol" && len(got) < 3 {
			t.Errorf("the pattern scan-* reaches %d rows, want at least 3", len(got))
		}
	}
}

// StoredStates lists every stored state from which a row can be in a given state now, whatever
// its dates: a Locate by State that looks only at rows stored in those states misses none.
func TestStoredStatesCoverEffective(t *testing.T) {
	now := time.Now()
	past, future := now.Add(-time.Hour), now.Add(time.Hour)
	dates := []time.Time{{}, past, future}
	n := 0
	for _, st := range []keymap.State{"", keymap.PreActive, keymap.Active, keymap.Deactivated, keymap.Compromised, keymap.Destroyed, keymap.DestroyedCompromised} {
		for _, act := range dates {
			for _, deact := range dates {
				rec := keymap.Record{State: st}
				SetDate(&rec, AttrActivationDate, act, !act.IsZero())
				SetDate(&rec, AttrDeactivationDate, deact, !deact.IsZero())
				eff := EffectiveState(rec, now)
				if !slices.Contains(StoredStates(eff), st) {
					t.Errorf("stored %q, activation %v, deactivation %v: %q now, but StoredStates(%q) = %v", st, act, deact, eff, eff, StoredStates(eff))
				}
				// The same row read in place.
				rec.ID, rec.Tag, rec.Class, rec.Name = fmt.Sprintf("eff-%d", n), []byte(fmt.Sprintf("eff-%d", n)), keymap.SecretKey, fmt.Sprintf("eff-%d", n)
				n++
				if err := testKM.Put(rec); err != nil {
					t.Fatal(err)
				}
				testKM.Select(keymap.Query{Names: []string{rec.Name}}, func(v keymap.View) bool {
					if got := EffectiveStateOf(v, now); got != eff {
						t.Errorf("stored %q, activation %v, deactivation %v: EffectiveStateOf %q, EffectiveState %q", st, act, deact, got, eff)
					}
					return true
				})
			}
		}
	}
}

// narrow only drops rows Sees would refuse.
func TestNarrowKeepsWhatSeesAllows(t *testing.T) {
	rows := []keymap.Record{{ID: "1", Owner: "a", Name: "k"}, {ID: "2", Owner: "b", Name: "k"}, {ID: "3", Name: "k"}}
	for _, c := range []Caller{{Identity: "a"}, {Identity: ""}, {Identity: "a", Keys: []string{"k"}, Team: func(string) bool { return true }}, {Admin: true}} {
		for _, q := range []keymap.Query{{}, {Owners: []string{"b"}}, {Owners: []string{"a", "b"}}} {
			n := c.narrow(q)
			for _, r := range rows {
				inQ := q.Owners == nil || slices.Contains(q.Owners, r.Owner)
				inN := n.Owners == nil || slices.Contains(n.Owners, r.Owner)
				if inQ && c.Sees(r) && !inN {
					t.Errorf("%+v, %+v: narrowed to %+v, which drops row %s that the caller sees", c, q, n, r.ID)
				}
			}
		}
	}
}
