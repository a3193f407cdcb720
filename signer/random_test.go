package signer

import (
	"bytes"
	"errors"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/p11bridge/p11bridge/keymap"
)

// The reserve draws from the token a kilobyte at a time, hands every byte out once, clears what
// it handed out, serves large requests directly, and passes a token failure on.
func TestRandomReserve(t *testing.T) {
	tok, _ := testReg.Signer("a")
	var draws []int
	var fail error
	r := reserve{draw: func(sh pkcs11.SessionHandle, n int) ([]byte, error) {
		draws = append(draws, n)
		if fail != nil {
			return nil, fail
		}
		return tok.ctx.GenerateRandom(sh, n)
	}}
	seen := map[string]bool{}
	err := tok.do(ctx, func(sh pkcs11.SessionHandle) error {
		for i := 0; i < reserveSize/32+1; i++ {
			b, err := r.take(sh, 32)
			if err != nil {
				return err
			}
			if len(b) != 32 || seen[string(b)] {
				t.Fatalf("take %d: %d bytes, repeated %v", i, len(b), seen[string(b)])
			}
			seen[string(b)] = true
			if i < reserveSize/32 && !bytes.Equal(r.buf[:r.off], make([]byte, r.off)) {
				t.Fatalf("take %d: the bytes handed out are still in the reserve", i)
			}
		}
		if len(draws) != 2 || draws[0] != reserveSize || draws[1] != reserveSize {
			t.Fatalf("draws %v for %d takes of 32 bytes, want two of %d", draws, reserveSize/32+1, reserveSize)
		}
		big, err := r.take(sh, maxReserved+1)
		if err != nil || len(big) != maxReserved+1 || draws[2] != maxReserved+1 {
			t.Fatalf("large take: %d bytes, %v, draws %v", len(big), err, draws)
		}
		r.buf, r.off = nil, 0
		fail = errors.New("token gone")
		if _, err := r.take(sh, 32); err != fail {
			t.Fatalf("take on a failing token: %v", err)
		}
		if r.buf != nil {
			t.Fatal("a failed refill left a reserve")
		}
		fail = nil
		if _, err := r.take(sh, 32); err != nil {
			t.Fatal(err)
		}
		left := r.buf
		r.wipe()
		if !bytes.Equal(left, make([]byte, len(left))) {
			t.Fatal("wipe left random in the reserve")
		}
		if _, err := r.take(sh, 32); !errors.Is(err, ErrUnavailable) || r.buf != nil {
			t.Fatalf("take after wipe: %v, %d bytes in the reserve", err, len(r.buf))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Data keys from SealRandom differ and each opens with its key and AAD.
func TestSealRandomKeysDiffer(t *testing.T) {
	k, err := testReg.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "sealrandom", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i := 0; i < 2*reserveSize/32; i++ {
		dk, iv, ct, err := testReg.SealRandom(ctx, Operator, k.ID, 32, []byte("ad"))
		if err != nil {
			t.Fatal(err)
		}
		if seen[string(dk)] || bytes.Equal(dk, make([]byte, 32)) {
			t.Fatalf("data key %d repeats or is zero", i)
		}
		seen[string(dk)] = true
		pt, err := testReg.Open(ctx, Operator, k.ID, iv, ct, []byte("ad"))
		if err != nil || !bytes.Equal(pt, dk) {
			t.Fatalf("open data key %d: %v", i, err)
		}
	}
}
