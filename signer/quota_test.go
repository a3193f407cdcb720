package signer

import (
	"errors"
	"strings"
	"testing"

	"github.com/p11bridge/p11bridge/keymap"
)

// An identity keeps at most its quota of objects and of attribute bytes; the admin has none.
func TestQuotas(t *testing.T) {
	c := Caller{Identity: "quota-objects", Quota: Quota{Objects: 3}}
	for i := 0; i < 3; i++ {
		if _, err := testReg.Create(ctx, c, KeySpec{Algorithm: AES, Size: 128}, Meta{Name: "q"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := testReg.Create(ctx, c, KeySpec{Algorithm: AES, Size: 128}, Meta{Name: "q"}); !errors.Is(err, ErrQuota) {
		t.Fatalf("a fourth object of a quota of 3: %v", err)
	}
	if _, _, err := testReg.CreateKeyPair(ctx, c, KeySpec{Algorithm: EC, Size: 256}, Meta{Name: "q"}, Meta{Name: "q"}); !errors.Is(err, ErrQuota) {
		t.Fatalf("a key pair past the quota: %v", err)
	}
	b := Caller{Identity: "quota-bytes", Quota: Quota{AttrBytes: 3000}}
	big := map[string]string{"x.note": strings.Repeat("n", 1000)}
	k, err := testReg.Create(ctx, b, KeySpec{Algorithm: AES, Size: 128}, Meta{Name: "b", Attrs: big})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testReg.Create(ctx, b, KeySpec{Algorithm: AES, Size: 128}, Meta{Name: "b", Attrs: big}); err != nil {
		t.Fatal(err)
	}
	if _, err := testReg.Create(ctx, b, KeySpec{Algorithm: AES, Size: 128}, Meta{Name: "b", Attrs: big}); !errors.Is(err, ErrQuota) {
		t.Fatalf("attributes past the quota by a new object: %v", err)
	}
	if _, err := testReg.Update(b, k.ID, func(r *keymap.Record) error {
		r.Attrs["x.more"] = strings.Repeat("m", 1500)
		return nil
	}); !errors.Is(err, ErrQuota) {
		t.Fatalf("attributes past the quota by a change: %v", err)
	}
	if _, err := testReg.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 128}, Meta{Name: "admin-has-none", Attrs: big}); err != nil {
		t.Fatal(err)
	}
}
