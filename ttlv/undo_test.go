package ttlv

import (
	"context"
	"testing"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/signer"
)

// Undo (BatchErrorContinuationOption) takes back only what its item wrote: not over a change made
// since by someone else (an admin's Revoke as Compromised, say), never a compromise, and never a new
// version of a KES key (KES may have sealed data keys with it already).
func TestUndoTakesBackOnlyItsOwn(t *testing.T) {
	ctx := context.Background()
	alice := signer.Caller{Identity: "undo-alice"}
	k, err := env.reg.Create(ctx, alice, signer.KeySpec{Algorithm: signer.AES, Size: 256}, signer.Meta{Name: "undo-k", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	o := &op{ctx: ctx, s: env.srv, caller: alice, identity: alice.Identity, b: &batch{}}
	if _, err := o.update(k.ID, func(r *keymap.Record) error { r.Name = "undo-k-renamed"; return nil }); err != nil {
		t.Fatal(err)
	}
	// Meanwhile the admin marks the key compromised.
	if _, err := env.reg.Update(signer.Operator, k.ID, func(r *keymap.Record) error { r.State = keymap.Compromised; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := o.undo[0](ctx); err == nil {
		t.Fatal("undo overwrote a change made after its item")
	}
	if got, _ := env.reg.Get(k.ID); got.State != keymap.Compromised {
		t.Fatalf("state after the refused undo: %s", got.State)
	}

	// An item that itself marked a key compromised is not undone.
	k2, err := env.reg.Create(ctx, alice, signer.KeySpec{Algorithm: signer.AES, Size: 256}, signer.Meta{Name: "undo-k2", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	o = &op{ctx: ctx, s: env.srv, caller: alice, identity: alice.Identity, b: &batch{}}
	if _, err := o.update(k2.ID, func(r *keymap.Record) error { r.State = keymap.Compromised; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := o.undo[0](ctx); err == nil {
		t.Fatal("undo took a compromise back")
	}
	if got, _ := env.reg.Get(k2.ID); got.State != keymap.Compromised {
		t.Fatalf("state after the refused undo: %s", got.State)
	}

	// A new version of a KES key stays.
	v, err := env.reg.CreateKESKey(ctx, alice, "undo-kes")
	if err != nil {
		t.Fatal(err)
	}
	o = &op{ctx: ctx, s: env.srv, caller: alice, identity: alice.Identity, b: &batch{}}
	o.created(v.ID)
	if err := o.undo[0](ctx); err == nil {
		t.Fatal("undo destroyed a KES key version")
	}
	if _, err := env.reg.Get(v.ID); err != nil {
		t.Fatalf("KES version after the refused undo: %v", err)
	}
}
