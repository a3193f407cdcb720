package signer

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/p11bridge/p11bridge/keymap"
)

// GCM parameters laid out by newGCMParams carry the IV and AAD to the token exactly, on both
// sides of the pooled block's capacity, and a block reused from the pool carries nothing over.
func TestGCMParams(t *testing.T) {
	k, err := testReg.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "gcm-params", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	room := int(gcmBlockSize - gcmAADAt)
	for _, n := range []int{0, 1, room - 1, room, room + 1, 5000} {
		for _, ivLen := range []int{12, 16} {
			t.Run(fmt.Sprintf("aad%d/iv%d", n, ivLen), func(t *testing.T) {
				aad := bytes.Repeat([]byte{byte(n)}, n)
				iv := bytes.Repeat([]byte{7}, ivLen)
				gotIV, ct, err := testReg.Seal(ctx, Operator, k.ID, iv, []byte("plaintext"), aad)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(gotIV, iv) {
					t.Fatalf("IV back %x, want %x", gotIV, iv)
				}
				pt, err := testReg.Open(ctx, Operator, k.ID, gotIV, ct, aad)
				if err != nil || string(pt) != "plaintext" {
					t.Fatalf("open: %q, %v", pt, err)
				}
				// The AAD's length counts: one byte more or less does not open.
				for _, other := range [][]byte{append(aad, 0), aad[:max(n-1, 0)]} {
					if len(other) == n {
						continue
					}
					if _, err := testReg.Open(ctx, Operator, k.ID, gotIV, ct, other); !errors.Is(err, ErrNotAuthentic) {
						t.Fatalf("open with %d bytes of AAD instead of %d: %v", len(other), n, err)
					}
				}
			})
		}
	}
}
