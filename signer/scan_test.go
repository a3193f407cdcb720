package signer

import (
	"slices"
	"testing"

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
		testReg.Scan(c, func(v keymap.View) bool {
			got = append(got, v.ID())
			return true
		})
		if !slices.Equal(got, want) {
			t.Errorf("%+v: Scan visits %v, Sees allows %v", c, got, want)
		}
		if c.Identity == "scan-carol" && len(got) < 3 {
			t.Errorf("the pattern scan-* reaches %d rows, want at least 3", len(got))
		}
	}
}
