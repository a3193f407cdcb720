package signer

import (
	"bytes"
	"crypto"
	"crypto/hmac"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/p11bridge/p11bridge/keymap"
)

func TestSignSchemes(t *testing.T) {
	priv, pub, err := testReg.CreateKeyPair(ctx, Operator, KeySpec{Algorithm: RSA, Size: 2048}, Meta{Name: "schemes", State: keymap.Active}, Meta{Name: "schemes-pub", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("sign me in every way")
	for _, scheme := range []Scheme{PKCS1v15, PSS} {
		for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512} {
			for _, pre := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s-%v-prehashed=%v", scheme, h, pre), func(t *testing.T) {
					data := msg
					if pre {
						d := h.New()
						d.Write(msg)
						data = d.Sum(nil)
					}
					p := SignParams{Scheme: scheme, Hash: h, Prehashed: pre}
					sig, err := testReg.Sign(ctx, Operator, priv.ID, p, data)
					if err != nil {
						t.Fatal(err)
					}
					// Both forms verify the same way: a signature over data equals one over its digest.
					if err := testReg.Verify(ctx, Operator, pub.ID, SignParams{Scheme: scheme, Hash: h}, msg, sig); err != nil {
						t.Fatal(err)
					}
					sig[len(sig)/2] ^= 1
					if err := testReg.Verify(ctx, Operator, pub.ID, p, data, sig); !errors.Is(err, ErrBadSignature) {
						t.Fatalf("tampered signature: %v", err)
					}
				})
			}
		}
	}
	if _, err := testReg.Sign(ctx, Operator, priv.ID, SignParams{Scheme: ECDSA, Hash: crypto.SHA256}, msg); !errors.Is(err, ErrInvalid) {
		t.Fatalf("ECDSA with an RSA key: %v", err)
	}
	if _, err := testReg.Sign(ctx, Operator, priv.ID, SignParams{Scheme: PKCS1v15, Hash: crypto.SHA256, Prehashed: true}, msg); !errors.Is(err, ErrInvalid) {
		t.Fatalf("digest of the wrong length: %v", err)
	}
	if _, err := testReg.Sign(ctx, Operator, pub.ID, SignParams{Scheme: PKCS1v15, Hash: crypto.SHA256}, msg); !errors.Is(err, ErrInvalid) {
		t.Fatalf("sign with a public key: %v", err)
	}
}

func TestAESGCM(t *testing.T) {
	k, err := testReg.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "gcm", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	aad := []byte(`{"bucket":"b/o"}`)
	iv, ct, err := testReg.Seal(ctx, Operator, k.ID, nil, []byte("data key"), aad)
	if err != nil {
		t.Fatal(err)
	}
	if len(iv) != GCMNonceSize || len(ct) != len("data key")+GCMTagSize {
		t.Fatalf("iv %d bytes, ciphertext %d bytes", len(iv), len(ct))
	}
	iv2, _, _ := testReg.Seal(ctx, Operator, k.ID, nil, []byte("data key"), aad)
	if bytes.Equal(iv, iv2) {
		t.Fatal("two seals drew the same IV")
	}
	pt, err := testReg.Open(ctx, Operator, k.ID, iv, ct, aad)
	if err != nil || string(pt) != "data key" {
		t.Fatalf("open: %q %v", pt, err)
	}
	bad := [][]byte{append([]byte{}, ct...), append([]byte{}, ct...)}
	bad[0][0] ^= 1
	bad[1][len(ct)-1] ^= 1
	for i, c := range bad {
		if _, err := testReg.Open(ctx, Operator, k.ID, iv, c, aad); !errors.Is(err, ErrNotAuthentic) {
			t.Fatalf("tampered ciphertext %d: %v", i, err)
		}
	}
	if _, err := testReg.Open(ctx, Operator, k.ID, iv, ct, []byte("other context")); !errors.Is(err, ErrNotAuthentic) {
		t.Fatalf("other AAD: %v", err)
	}
	if _, err := testReg.Open(ctx, Operator, k.ID, iv, ct[:5], aad); !errors.Is(err, ErrNotAuthentic) {
		t.Fatalf("short ciphertext: %v", err)
	}
	// A forged message is not a token fault: the signer stays healthy and keeps working.
	tok, _ := testReg.Signer("a")
	if !tok.Healthy() {
		t.Fatal("signer marked unhealthy by a forged ciphertext")
	}
	if pt, err := testReg.Open(ctx, Operator, k.ID, iv, ct, aad); err != nil || string(pt) != "data key" {
		t.Fatalf("open after failures: %v", err)
	}
	given := bytes.Repeat([]byte{9}, 12)
	if iv, _, err := testReg.Seal(ctx, Operator, k.ID, given, []byte("x"), nil); err != nil || !bytes.Equal(iv, given) {
		t.Fatalf("seal with a given IV: %v", err)
	}
}

func TestAESCBC(t *testing.T) {
	k, err := testReg.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 128}, Meta{Name: "cbc", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 1, 15, 16, 17, 1000} {
		pt := bytes.Repeat([]byte{byte(n)}, n)
		iv, ct, err := testReg.EncryptCBC(ctx, Operator, k.ID, nil, pt)
		if err != nil {
			t.Fatal(err)
		}
		if len(ct)%16 != 0 || len(ct) <= n {
			t.Fatalf("%d bytes → %d bytes of ciphertext", n, len(ct))
		}
		got, err := testReg.DecryptCBC(ctx, Operator, k.ID, iv, ct)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("round trip of %d bytes: %v", n, err)
		}
	}
	if _, err := testReg.DecryptCBC(ctx, Operator, k.ID, make([]byte, 16), []byte("not blocks")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("partial block: %v", err)
	}
}

func TestRSAOAEP(t *testing.T) {
	priv, pub, err := testReg.CreateKeyPair(ctx, Operator, KeySpec{Algorithm: RSA, Size: 2048}, Meta{Name: "oaep", State: keymap.Active}, Meta{Name: "oaep-pub", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	// SoftHSM 2.6 does OAEP with SHA-1 only.
	ct, err := testReg.EncryptOAEP(ctx, Operator, pub.ID, crypto.SHA1, nil, []byte("wrapped secret"))
	if err != nil {
		t.Fatal(err)
	}
	pt, err := testReg.DecryptOAEP(ctx, Operator, priv.ID, crypto.SHA1, nil, ct)
	if err != nil || string(pt) != "wrapped secret" {
		t.Fatalf("OAEP round trip: %q %v", pt, err)
	}
}

func TestHMAC(t *testing.T) {
	// SoftHSM wants an HMAC key at least as long as the hash output.
	key := bytes.Repeat([]byte{0x42}, 64)
	rec, err := testReg.Import(ctx, Operator, Material{Class: keymap.SecretKey, Algorithm: HMAC, Secret: key}, Meta{Name: "hmac-known", State: keymap.Active}, false, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512} {
		mac, err := testReg.HMAC(ctx, Operator, rec.ID, h, []byte("message"))
		if err != nil {
			t.Fatal(err)
		}
		want := hmac.New(h.New, key)
		want.Write([]byte("message"))
		if !bytes.Equal(mac, want.Sum(nil)) {
			t.Fatalf("%v: token HMAC differs from crypto/hmac", h)
		}
		if err := testReg.VerifyHMAC(ctx, Operator, rec.ID, h, []byte("message"), mac); err != nil {
			t.Fatal(err)
		}
		if err := testReg.VerifyHMAC(ctx, Operator, rec.ID, h, []byte("massage"), mac); !errors.Is(err, ErrBadSignature) {
			t.Fatalf("wrong message: %v", err)
		}
	}
	kes, err := testReg.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 256, WithHMAC: true}, Meta{Name: "kes-like", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	m1, err1 := testReg.HMAC(ctx, Operator, kes.ID, crypto.SHA256, []byte("root"))
	m2, err2 := testReg.HMAC(ctx, Operator, kes.ID, crypto.SHA256, []byte("root"))
	if err1 != nil || err2 != nil || len(m1) != 32 || !bytes.Equal(m1, m2) {
		t.Fatalf("companion HMAC not deterministic: %v %v", err1, err2)
	}
	plain, _ := testReg.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "no-hmac", State: keymap.Active})
	if _, err := testReg.HMAC(ctx, Operator, plain.ID, crypto.SHA256, []byte("x")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("HMAC with an AES key without companion: %v", err)
	}
}

func TestRandom(t *testing.T) {
	a, err := testReg.Random(ctx, "", 32)
	if err != nil || len(a) != 32 {
		t.Fatalf("%d bytes, %v", len(a), err)
	}
	b, _ := testReg.Random(ctx, "b", 32)
	if bytes.Equal(a, b) || bytes.Equal(a, make([]byte, 32)) {
		t.Fatal("random bytes repeat")
	}
	if _, err := testReg.Random(ctx, "", MaxRandom+1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("oversized request: %v", err)
	}
}

func TestConcurrentUse(t *testing.T) {
	priv, _, err := testReg.CreateKeyPair(ctx, Operator, KeySpec{Algorithm: EC, Size: 256}, Meta{Name: "busy", State: keymap.Active}, Meta{Name: "busy-pub", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	aes, err := testReg.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "busy-aes", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 30; i++ {
				if _, err := testReg.Sign(ctx, Operator, priv.ID, SignParams{Scheme: ECDSA, Hash: crypto.SHA256}, []byte("m")); err != nil {
					errs <- err
					return
				}
				iv, ct, err := testReg.Seal(ctx, Operator, aes.ID, nil, []byte("m"), nil)
				if err == nil {
					_, err = testReg.Open(ctx, Operator, aes.ID, iv, ct, nil)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
