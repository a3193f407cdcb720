package kes

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"testing"
	"time"

	kesclient "github.com/minio/kms-go/kes"

	"github.com/p11bridge/p11bridge/signer"
)

// hostOpen decrypts a v1 ciphertext with a known key on the host: proof of the format.
func hostOpen(t *testing.T, key []byte, name string, ct, context []byte) []byte {
	t.Helper()
	s, ok := parseCiphertext(ct)
	if !ok {
		t.Fatalf("ciphertext does not parse")
	}
	b, _ := aes.NewCipher(key)
	g, _ := cipher.NewGCM(b)
	pt, err := g.Open(nil, s.iv, s.body, aad(name, s.tag, context))
	if err != nil {
		t.Fatalf("host open: %v", err)
	}
	return pt
}

func TestContextMismatch(t *testing.T) {
	c, cx := fx.minio.kes, ctx(t)
	name := uniq("ctx")
	mustCreate(t, name)
	dek, err := c.GenerateKey(cx, name, []byte(`{"bucket":"a/b"}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, wrong := range [][]byte{nil, []byte(`{"bucket":"a/c"}`), []byte(`{"bucket":"a/b"} `)} {
		_, err := c.Decrypt(cx, name, dek.Ciphertext, wrong)
		wantErr(t, "decrypt with context "+string(wrong), err, kesclient.ErrDecrypt)
	}
	// No context and an empty one are the same thing (JSON cannot tell them apart either).
	dek, _ = c.GenerateKey(cx, name, nil)
	if _, err := c.Decrypt(cx, name, dek.Ciphertext, []byte{}); err != nil {
		t.Fatalf("nil vs empty context: %v", err)
	}
	// MinIO's health probe context.
	dek, _ = c.GenerateKey(cx, name, []byte(`{"healthcheck":""}`))
	if _, err := c.Decrypt(cx, name, dek.Ciphertext, []byte(`{"healthcheck":""}`)); err != nil {
		t.Fatal(err)
	}
}

func TestTamperedCiphertext(t *testing.T) {
	c, cx := fx.admin.kes, ctx(t)
	name := uniq("tamper")
	mustCreate(t, name)
	context := []byte("ctx")
	dek, err := c.GenerateKey(cx, name, context)
	if err != nil {
		t.Fatal(err)
	}
	ct := dek.Ciphertext
	regions := map[string][2]int{
		"format byte":  {0, 1},
		"version tag":  {1, 1 + signer.TagSize},
		"IV":           {1 + signer.TagSize, headerLen},
		"body":         {headerLen, len(ct) - signer.GCMTagSize},
		"GCM auth tag": {len(ct) - signer.GCMTagSize, len(ct)},
	}
	for region, r := range regions {
		for i := r[0]; i < r[1]; i++ {
			for _, bit := range []byte{0x01, 0x80} {
				bad := bytes.Clone(ct)
				bad[i] ^= bit
				_, err := c.Decrypt(cx, name, bad, context)
				if !errors.Is(err, kesclient.ErrDecrypt) {
					t.Fatalf("%s byte %d bit %#x flipped: %v", region, i, bit, err)
				}
			}
		}
	}
	for what, bad := range map[string][]byte{
		"empty":           {},
		"format only":     {formatV1},
		"header only":     ct[:headerLen],
		"one byte short":  ct[:len(ct)-1],
		"one byte more":   append(bytes.Clone(ct), 0),
		"no tag":          ct[:len(ct)-signer.GCMTagSize],
		"unknown version": append([]byte{0x02}, ct[1:]...),
		"garbage":         bytes.Repeat([]byte{0xA5}, 80),
	} {
		_, err := c.Decrypt(cx, name, bad, context)
		wantErr(t, "decrypt "+what, err, kesclient.ErrDecrypt)
	}
	// And the original still opens.
	if _, err := c.Decrypt(cx, name, ct, context); err != nil {
		t.Fatal(err)
	}
}

func TestCrossKey(t *testing.T) {
	c, cx := fx.admin.kes, ctx(t)
	a, b := uniq("cross-a"), uniq("cross-b")
	mustCreate(t, a)
	mustCreate(t, b)
	dek, err := c.GenerateKey(cx, a, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Decrypt(cx, b, dek.Ciphertext, nil)
	wantErr(t, "A's ciphertext under B", err, kesclient.ErrDecrypt)

	// Even when B's version tag is written into A's ciphertext the name in the AAD stops it.
	kb, _ := fx.reg.KESKey(signer.Operator, b)
	forged := bytes.Clone(dek.Ciphertext)
	copy(forged[1:], kb.Current().Tag)
	_, err = c.Decrypt(cx, b, forged, nil)
	wantErr(t, "forged version tag", err, kesclient.ErrDecrypt)

	// A ciphertext sealed with B's key but bound to name A (what a confused deputy could try).
	iv, body, err := fx.reg.Seal(cx, signer.Operator, kb.Current().ID, nil, []byte("x"), aad(a, kb.Current().Tag, nil))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Decrypt(cx, b, encodeCiphertext(kb.Current().Tag, iv, body), nil)
	wantErr(t, "sealed for another name", err, kesclient.ErrDecrypt)
	_, err = c.Decrypt(cx, a, encodeCiphertext(kb.Current().Tag, iv, body), nil)
	wantErr(t, "B's version under A", err, kesclient.ErrDecrypt)
}

func TestRotation(t *testing.T) {
	c, cx := fx.minio.kes, ctx(t)
	name := uniq("rot")
	mustCreate(t, name)
	before, err := fx.admin.kes.DescribeKey(cx, name)
	if err != nil {
		t.Fatal(err)
	}
	mac0, _ := c.HMAC(cx, name, []byte("root"))
	d0, err := c.GenerateKey(cx, name, []byte("c"))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Millisecond) // versions are ordered by creation time
	v1, err := Rotate(cx, fx.reg, name)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := c.GenerateKey(cx, name, []byte("c"))
	time.Sleep(time.Millisecond)
	if _, err := Rotate(cx, fx.h.reg, name); err != nil {
		t.Fatal(err)
	}
	d2, _ := c.GenerateKey(cx, name, []byte("c"))

	k, _ := fx.reg.KESKey(signer.Operator, name)
	if len(k.Versions) != 3 || k.Versions[1].ID != v1 || k.Current().ID != k.Versions[2].ID {
		t.Fatalf("versions: %+v", k.Versions)
	}
	if k.Versions[0].Attrs[signer.AttrReplacement] != v1 || k.Versions[1].Attrs[signer.AttrReplaced] != k.Versions[0].ID {
		t.Fatalf("versions are not linked")
	}
	if k.Versions[2].State != "active" || k.Versions[2].Attrs[signer.AttrKESName] != name || k.Versions[2].Owner != fx.admin.id {
		t.Fatalf("new version row: %+v", k.Versions[2])
	}
	// Each ciphertext names the version that made it; all still decrypt.
	for i, d := range []kesclient.DEK{d0, d1, d2} {
		s, _ := parseCiphertext(d.Ciphertext)
		if id := signer.ObjectID(s.tag, false); id != k.Versions[i].ID {
			t.Fatalf("ciphertext %d made by %s, want %s", i, id, k.Versions[i].ID)
		}
		pt, err := c.Decrypt(cx, name, d.Ciphertext, []byte("c"))
		if err != nil || !bytes.Equal(pt, d.Plaintext) {
			t.Fatalf("decrypt version %d after rotation: %v", i, err)
		}
	}
	// hmac and describe stay those of the original key.
	if mac, _ := c.HMAC(cx, name, []byte("root")); !bytes.Equal(mac, mac0) {
		t.Fatal("hmac changed with rotation")
	}
	after, _ := fx.admin.kes.DescribeKey(cx, name)
	if !after.CreatedAt.Equal(before.CreatedAt) || after.CreatedBy != before.CreatedBy {
		t.Fatalf("describe changed with rotation: %+v vs %+v", after, before)
	}
	if _, err := Rotate(cx, fx.reg, uniq("nokey")); !errors.Is(err, signer.ErrNotFound) {
		t.Fatalf("rotate of a missing key: %v", err)
	}
	if _, err := Rotate(cx, fx.reg, "bad/name"); !errors.Is(err, signer.ErrInvalid) {
		t.Fatalf("rotate with a bad name: %v", err)
	}
	// Delete takes every version: each keeps a Destroyed row, as a KMIP Destroy leaves.
	if err := fx.admin.kes.DeleteKey(cx, name); err != nil {
		t.Fatal(err)
	}
	for _, v := range k.Versions {
		if rec, err := fx.reg.Get(v.ID); err != nil || signer.Live(rec) {
			t.Fatalf("version %s after delete: %+v %v", v.ID, rec, err)
		}
	}
}
