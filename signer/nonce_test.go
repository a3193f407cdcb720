package signer

import (
	"errors"
	"strconv"
	"testing"

	"github.com/p11bridge/p11bridge/keymap"
)

// A client IV is taken only on a key whose users are the caller alone; each AES key serves one
// block mode family; seals are counted.
func TestNonceRules(t *testing.T) {
	alice := Caller{Identity: "n-alice"}
	k, err := testReg.Create(ctx, alice, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "nonce-own", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	iv := make([]byte, 12)
	if _, _, err := testReg.Seal(ctx, alice, k.ID, iv, []byte("x"), nil); err != nil {
		t.Fatalf("client IV on the caller's own key: %v", err)
	}
	// The same key, once a policy shares it: the owner may no longer choose IVs, nor may the grantee.
	shared := alice
	shared.Shares = func(name, owner string) bool { return name == "nonce-own" }
	if _, _, err := testReg.Seal(ctx, shared, k.ID, iv, []byte("x"), nil); !errors.Is(err, ErrDenied) {
		t.Errorf("client IV on a shared key: %v", err)
	}
	grantee := Caller{Identity: "n-bob", Keys: []string{"nonce-*"}, Team: func(o string) bool { return o == "n-alice" }}
	if _, _, err := testReg.Seal(ctx, grantee, k.ID, iv, []byte("x"), nil); !errors.Is(err, ErrDenied) {
		t.Errorf("client IV on another's key: %v", err)
	}
	if _, _, err := testReg.Seal(ctx, grantee, k.ID, nil, []byte("x"), nil); err != nil {
		t.Errorf("server IV on a granted key: %v", err)
	}
	if _, _, err := testReg.Seal(ctx, Operator, k.ID, iv, []byte("x"), nil); !errors.Is(err, ErrDenied) {
		t.Errorf("the admin's client IV on a user's key: %v", err)
	}
	grantee.ClientIVShared = true
	if _, _, err := testReg.Seal(ctx, grantee, k.ID, iv, []byte("x"), nil); err != nil {
		t.Errorf("client IV where the policy allows it on shared keys: %v", err)
	}
	// GCM first: CBC is refused either way, with or without an IV.
	if _, _, err := testReg.EncryptCBC(ctx, alice, k.ID, nil, []byte("x")); !errors.Is(err, ErrUsage) {
		t.Errorf("CBC on a GCM key: %v", err)
	}
	if _, err := testReg.DecryptCBC(ctx, alice, k.ID, make([]byte, 16), make([]byte, 16)); !errors.Is(err, ErrUsage) {
		t.Errorf("CBC decrypt on a GCM key: %v", err)
	}
	c, err := testReg.Create(ctx, alice, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "nonce-cbc", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := testReg.EncryptCBC(ctx, alice, c.ID, make([]byte, 16), []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := testReg.Seal(ctx, alice, c.ID, nil, []byte("x"), nil); !errors.Is(err, ErrUsage) {
		t.Errorf("GCM on a CBC key: %v", err)
	}
	if got, _ := testReg.Get(c.ID); got.Attrs[AttrBlockMode] != ModeCBC {
		t.Errorf("binding not stored: %v", got.Attrs)
	}
	// A KES key version takes no client IV, even from its owner, and is GCM from the start.
	kv, err := testReg.CreateKESKey(ctx, alice, "nonce-kes")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := testReg.Seal(ctx, alice, kv.ID, iv, []byte("x"), nil); !errors.Is(err, ErrDenied) {
		t.Errorf("client IV on a KES key version: %v", err)
	}
	if _, _, err := testReg.EncryptCBC(ctx, alice, kv.ID, nil, []byte("x")); !errors.Is(err, ErrUsage) {
		t.Errorf("CBC with a KES key version: %v", err)
	}

	// Counting: the seals made so far reach the row when flushed, and a key past the warning mark
	// is reported.
	testReg.flushSeals(k.ID)
	got, _ := testReg.Get(k.ID)
	if n := Seals(got); n != 3 {
		t.Errorf("seals counted for the key: %d, want 3 (the ones that went through)", n)
	}
	if _, err := testReg.Update(Operator, k.ID, func(r *keymap.Record) error {
		r.Attrs[AttrSeals] = strconv.FormatUint(SealWarning-1, 10)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := testReg.Seal(ctx, alice, k.ID, nil, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	testReg.flushSeals(k.ID)
	if n := testReg.SealHeavy()[k.ID]; n != SealWarning {
		t.Errorf("heavy keys: %v, want %s at %d", testReg.SealHeavy(), k.ID, uint64(SealWarning))
	}
	// A replacement starts from nothing.
	nk, err := testReg.ReKey(ctx, alice, k.ID, Meta{})
	if err != nil {
		t.Fatal(err)
	}
	if Seals(nk) != 0 {
		t.Errorf("the replacement inherits %d seals", Seals(nk))
	}
}

// The block mode a key's first use binds is written through the store's atomic change: it never
// writes back an older row over a Revoke made at the same moment.
func TestFirstUseKeepsConcurrentRevoke(t *testing.T) {
	lost := 0
	for i := 0; i < 200; i++ {
		k, err := testReg.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 128}, Meta{Name: "bind-race", State: keymap.Active})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			testReg.Update(Operator, k.ID, func(r *keymap.Record) error { r.State = keymap.Compromised; return nil })
		}()
		testReg.Seal(ctx, Operator, k.ID, nil, []byte("x"), nil)
		<-done
		if r, _ := testReg.Get(k.ID); r.State != keymap.Compromised {
			lost++
		}
	}
	if lost > 0 {
		t.Errorf("%d of 200 compromises undone by a first use binding its block mode at the same moment", lost)
	}
}
