package signer

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The examples of RFC 3394 (4.1, 4.6) and RFC 5649 (6), both ways, and damaged input refused.
func TestKeyWrapVectors(t *testing.T) {
	kw := []struct{ kek, key, wrapped string }{
		{"000102030405060708090a0b0c0d0e0f", "00112233445566778899aabbccddeeff", "1fa68b0a8112b447aef34bd8fb5a7b829d3e862371d2cfe5"},
		{"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", "00112233445566778899aabbccddeeff000102030405060708090a0b0c0d0e0f",
			"28c9f404c4b810f4cbccb35cfb87f8263f5786e2d80ed326cbc7f0e71a99f43bfb988b9b7a02dd21"},
	}
	for _, v := range kw {
		got, err := AESKeyWrap(unhex(t, v.kek), unhex(t, v.key))
		if err != nil || hex.EncodeToString(got) != v.wrapped {
			t.Errorf("AESKeyWrap: %x %v, want %s", got, err, v.wrapped)
		}
		back, err := AESKeyUnwrap(unhex(t, v.kek), unhex(t, v.wrapped))
		if err != nil || hex.EncodeToString(back) != v.key {
			t.Errorf("AESKeyUnwrap: %x %v, want %s", back, err, v.key)
		}
	}
	kwp := []struct{ kek, key, wrapped string }{
		{"5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8", "c37b7e6492584340bed12207808941155068f738", "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a"},
		{"5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8", "466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"},
	}
	for _, v := range kwp {
		got, err := AESKeyWrapPad(unhex(t, v.kek), unhex(t, v.key))
		if err != nil || hex.EncodeToString(got) != v.wrapped {
			t.Errorf("AESKeyWrapPad: %x %v, want %s", got, err, v.wrapped)
		}
		back, err := AESKeyUnwrapPad(unhex(t, v.kek), unhex(t, v.wrapped))
		if err != nil || hex.EncodeToString(back) != v.key {
			t.Errorf("AESKeyUnwrapPad: %x %v, want %s", back, err, v.key)
		}
		bad := unhex(t, v.wrapped)
		bad[len(bad)-1] ^= 1
		if _, err := AESKeyUnwrapPad(unhex(t, v.kek), bad); !errors.Is(err, ErrNotAuthentic) {
			t.Errorf("AESKeyUnwrapPad of damaged data: %v, want ErrNotAuthentic", err)
		}
	}
	kek := bytes.Repeat([]byte{7}, 32)
	for n := 1; n <= 70; n++ {
		key := bytes.Repeat([]byte{byte(n)}, n)
		w, err := AESKeyWrapPad(kek, key)
		if err != nil {
			t.Fatal(err)
		}
		if back, err := AESKeyUnwrapPad(kek, w); err != nil || !bytes.Equal(back, key) {
			t.Fatalf("%d bytes: round trip gave %x %v", n, back, err)
		}
		if _, err := AESKeyUnwrapPad(bytes.Repeat([]byte{8}, 32), w); !errors.Is(err, ErrNotAuthentic) {
			t.Fatalf("%d bytes: unwrap under another key: %v, want ErrNotAuthentic", n, err)
		}
	}
	if _, err := AESKeyUnwrap(kek, make([]byte, 20)); !errors.Is(err, ErrInvalid) {
		t.Errorf("AESKeyUnwrap of 20 bytes: %v, want ErrInvalid", err)
	}
}

// Exports unwrap RFC 5649, or what tokens whose CKM_AES_KEY_WRAP_PAD is PKCS#7 padding and RFC 3394
// give; anything else is an error, not a key.
func TestUnwrapExportForms(t *testing.T) {
	kek := bytes.Repeat([]byte{3}, 32)
	key := []byte("a 20-byte HMAC key!!")
	kwp, _ := AESKeyWrapPad(kek, key)
	padded := append(append([]byte{}, key...), bytes.Repeat([]byte{4}, 4)...)
	pkcs7, _ := AESKeyWrap(kek, padded)
	for name, w := range map[string][]byte{"RFC 5649": kwp, "PKCS#7 and RFC 3394": pkcs7} {
		if got, err := unwrapExport(kek, w); err != nil || !bytes.Equal(got, key) {
			t.Errorf("%s: %q %v", name, got, err)
		}
	}
	if _, err := unwrapExport(bytes.Repeat([]byte{5}, 32), kwp); err == nil {
		t.Error("unwrap under another key gave a key")
	}
}
