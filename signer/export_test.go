package signer

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"errors"
	"strconv"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/p11bridge/p11bridge/keymap"
)

func usage(bits uint32) map[string]string {
	return map[string]string{AttrUsageMask: strconv.FormatUint(uint64(bits), 10)}
}

func yes() *bool { t := true; return &t }

// gcmOpenHost opens what the token sealed, on the host, with key: the exported value is the key.
func gcmOpenHost(t *testing.T, key, iv, ct []byte) []byte {
	t.Helper()
	b, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	g, _ := cipher.NewGCM(b)
	pt, err := g.Open(nil, iv, ct, nil)
	if err != nil {
		t.Fatalf("the exported key does not open what the token sealed: %v", err)
	}
	return pt
}

// Exportable keys by policy: made in the token extractable and sensitive, given back wrapped in
// the token and unwrapped here, only to callers holding the export right; never by default, and
// no way around it (ReKey, attribute changes, wrapping under a key the caller holds).
func TestExportByPolicy(t *testing.T) {
	team := func(owner string) bool { return owner == "db1" || owner == "db2" || owner == "root" }
	db1 := Caller{Identity: "db1", Export: true, Keys: []string{"db-*"}, Team: team}
	db2 := Caller{Identity: "db2", Keys: []string{"db-*"}, Team: team} // same policy's patterns, no export right
	plain := Caller{Identity: "plain"}
	admin := Caller{Identity: "root", Admin: true, Export: true}
	tok, _ := testReg.Signer("a")
	if !tok.wrapsExports() {
		t.Fatal("SoftHSM2 offers CKM_AES_KEY_WRAP_PAD; the signer does not see it")
	}

	// The export right's default: exportable; the token object extractable but sensitive.
	k, err := testReg.Create(ctx, db1, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "db-key", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	if k.Attrs[AttrExportable] != ExportByPolicy {
		t.Fatalf("key of an identity with the export right: exportable %q", k.Attrs[AttrExportable])
	}
	a := attrs(t, tok, k.Tag, kindAES, pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_SENSITIVE)
	if len(a) != 1 || !boolAttr(a[0][0]) || !boolAttr(a[0][1]) {
		t.Fatalf("token object of an exportable key: extractable/sensitive %v", a)
	}
	iv, ct, err := testReg.Seal(ctx, db1, k.ID, nil, []byte("row 1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := testReg.Export(ctx, db1, k.ID)
	if err != nil || m.Via != ViaWrapped || len(m.Secret) != 32 {
		t.Fatalf("export: %d bytes via %q, %v", len(m.Secret), m.Via, err)
	}
	if pt := gcmOpenHost(t, m.Secret, iv, ct); string(pt) != "row 1" {
		t.Fatalf("opened %q", pt)
	}

	// Without the right: the same key is refused (Permission Denied), its own keys stay in the
	// token, and asking for an exportable one is refused.
	if _, err := testReg.Export(ctx, db2, k.ID); !errors.Is(err, ErrDenied) {
		t.Fatalf("export by an identity without the right: %v", err)
	}
	own, err := testReg.Create(ctx, plain, KeySpec{Algorithm: AES, Size: 128}, Meta{Name: "plain-key", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	if own.Attrs[AttrExportable] != "" {
		t.Fatal("a key made without the export right is exportable")
	}
	if a := attrs(t, tok, own.Tag, kindAES, pkcs11.CKA_EXTRACTABLE); boolAttr(a[0][0]) {
		t.Fatal("a key made without the export right is extractable in the token")
	}
	if _, err := testReg.Export(ctx, plain, own.ID); !errors.Is(err, ErrDenied) {
		t.Fatalf("export of its own generated key without the right: %v", err)
	}
	if _, err := testReg.Create(ctx, plain, KeySpec{Algorithm: AES, Size: 128}, Meta{Name: "plain-x", Extractable: yes()}); !errors.Is(err, ErrDenied) {
		t.Fatalf("asking for an exportable key without the right: %v", err)
	}
	// The admin has the right, but keeps keys in the token unless it asks; such a key never leaves.
	ak, err := testReg.Create(ctx, admin, KeySpec{Algorithm: AES, Size: 128}, Meta{Name: "admin-key", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testReg.Export(ctx, admin, ak.ID); !errors.Is(err, ErrNotExtractable) {
		t.Fatalf("admin export of a key made in the token: %v", err)
	}

	// No way around it.
	// 1. No ReKey into an exportable key: the replacement of a non-exportable key stays, and a
	//    replacement of an exportable key made without the right stays in the token.
	if _, err := testReg.ReKey(ctx, plain, own.ID, Meta{Extractable: yes()}); !errors.Is(err, ErrDenied) {
		t.Fatalf("ReKey asking for an exportable replacement without the right: %v", err)
	}
	nu, err := testReg.ReKey(ctx, plain, own.ID, Meta{State: keymap.Active})
	if err != nil || nu.Attrs[AttrExportable] != "" {
		t.Fatalf("ReKey of a non-exportable key: %+v %v", nu.Attrs, err)
	}
	// 2. No attribute change flips it, not even by the admin.
	for _, c := range []Caller{plain, admin} {
		if _, err := testReg.Update(c, own.ID, func(r *keymap.Record) error {
			r.Attrs[AttrExportable] = ExportRegistered
			return nil
		}); !errors.Is(err, ErrDenied) {
			t.Fatalf("%s makes a key exportable: %v", c.Identity, err)
		}
	}
	// 3. No wrapping under a key the caller holds and can read.
	kek, err := testReg.Create(ctx, db1, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "db-kek", State: keymap.Active,
		Attrs: usage(UsageWrapKey | UsageUnwrapKey)})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := testReg.ExportWrapped(ctx, admin, ak.ID, Wrapping{Key: kek.ID, Mech: WrapKWP}); !errors.Is(err, ErrNotExtractable) {
		t.Fatalf("wrapping a non-exportable key under an exportable one: %v", err)
	}
	pkek, err := testReg.Create(ctx, plain, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "plain-kek", State: keymap.Active, Attrs: usage(UsageWrapKey)})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := testReg.ExportWrapped(ctx, plain, own.ID, Wrapping{Key: pkek.ID, Mech: WrapKWP}); !errors.Is(err, ErrDenied) {
		t.Fatalf("wrapping its own key under its own key without the right: %v", err)
	}
	// The token agrees: a non-extractable key does not wrap, whatever the registry says.
	kh, _ := tok.find(ctx, pkek.Tag, kindAES)
	werr := tok.withKey(ctx, own.Tag, kindAES, func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		_, err := tok.ctx.WrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, kh, h)
		return err
	})
	if ckr(werr) != pkcs11.CKR_KEY_UNEXTRACTABLE {
		t.Fatalf("the token wraps a non-extractable key: %v", werr)
	}

	// ReKey of an exportable key by the right's holder: an exportable replacement, linked.
	rk, err := testReg.ReKey(ctx, db1, k.ID, Meta{State: keymap.Active})
	if err != nil || rk.Attrs[AttrExportable] != ExportByPolicy || rk.Attrs[AttrReplaced] != k.ID {
		t.Fatalf("ReKey of an exportable key: %+v %v", rk.Attrs, err)
	}
	if old, _ := testReg.Get(k.ID); old.Attrs[AttrReplacement] != rk.ID {
		t.Fatalf("old key's replacement link: %q", old.Attrs[AttrReplacement])
	}
	if m2, err := testReg.Export(ctx, db1, rk.ID); err != nil || bytes.Equal(m2.Secret, m.Secret) {
		t.Fatalf("export of the replacement: %v (same value: %v)", err, bytes.Equal(m2.Secret, m.Secret))
	}

	// Key pairs: the private half leaves as PKCS#8, wrapped in the token.
	for _, spec := range []KeySpec{{Algorithm: EC, Size: 256}, {Algorithm: RSA, Size: 2048}} {
		priv, pub, err := testReg.CreateKeyPair(ctx, db1, spec, Meta{Name: "db-pair", State: keymap.Active}, Meta{Name: "db-pair-pub", State: keymap.Active})
		if err != nil {
			t.Fatal(err)
		}
		pm, err := testReg.Export(ctx, db1, priv.ID)
		if err != nil || pm.Via != ViaWrapped {
			t.Fatalf("export of an exportable %s private key: %v", spec.Algorithm, err)
		}
		qm, _ := testReg.Export(ctx, db1, pub.ID)
		if !pm.Private.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(qm.Public) {
			t.Fatalf("%s private key exported does not match its public half", spec.Algorithm)
		}
		if _, ok := pm.Private.(*ecdsa.PrivateKey); ok != (spec.Algorithm == EC) {
			t.Fatalf("%s exported as %T", spec.Algorithm, pm.Private)
		}
	}

	// KMIP Sensitive: leaves wrapped only.
	wo, err := testReg.Create(ctx, db1, KeySpec{Algorithm: AES, Size: 128}, Meta{Name: "db-sensitive", State: keymap.Active, Sensitive: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testReg.Export(ctx, db1, wo.ID); !errors.Is(err, ErrNotExtractable) {
		t.Fatalf("plain export of a Sensitive key: %v", err)
	}
	if _, _, err := testReg.ExportWrapped(ctx, db1, wo.ID, Wrapping{Key: kek.ID, Mech: WrapKWP}); err != nil {
		t.Fatalf("wrapped export of a Sensitive key: %v", err)
	}
}

// Wrapping under a client's key happens in the token; the host-side RFC 3394/5649 code and
// SoftHSM2's agree on a key of known value, and wrapped material registered back is unwrapped
// into the token and works.
func TestWrappedExportAndImport(t *testing.T) {
	owner := Caller{Identity: "wrapper", Export: true}
	kekValue := bytes.Repeat([]byte{0x42}, 32)
	kek, err := testReg.Import(ctx, owner, Material{Class: keymap.SecretKey, Algorithm: AES, Secret: kekValue},
		Meta{Name: "w-kek", State: keymap.Active, Attrs: usage(UsageWrapKey | UsageUnwrapKey)}, true, "")
	if err != nil {
		t.Fatal(err)
	}
	value := []byte("0123456789abcdef0123456789abcdef")
	dek, err := testReg.Import(ctx, owner, Material{Class: keymap.SecretKey, Algorithm: AES, Secret: value}, Meta{Name: "w-dek", State: keymap.Active}, true, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		mech WrapMech
		host func(kek, key []byte) ([]byte, error)
	}{{WrapKWP, AESKeyWrapPad}, {WrapKW, AESKeyWrap}} {
		got, wrapped, err := testReg.ExportWrapped(ctx, owner, dek.ID, Wrapping{Key: kek.ID, Mech: c.mech})
		if err != nil || got.ID != kek.ID {
			t.Fatalf("%s: %v", c.mech, err)
		}
		want, _ := c.host(kekValue, value)
		if !bytes.Equal(wrapped, want) {
			t.Fatalf("%s: the token wrapped %x, the host %x", c.mech, wrapped, want)
		}
	}
	// A generated exportable key under a generated KEK: the KEK's own export unwraps it.
	gen, err := testReg.Create(ctx, owner, KeySpec{Algorithm: AES, Size: 192}, Meta{Name: "w-gen", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	_, wrapped, err := testReg.ExportWrapped(ctx, owner, gen.ID, Wrapping{Key: kek.ID, Mech: WrapKWP})
	if err != nil {
		t.Fatal(err)
	}
	plainGen, _ := testReg.Export(ctx, owner, gen.ID)
	if back, err := AESKeyUnwrapPad(kekValue, wrapped); err != nil || !bytes.Equal(back, plainGen.Secret) {
		t.Fatalf("unwrap with the KEK's value: %v", err)
	}

	// A KEK without Wrap Key in its usage mask does not wrap.
	noWrap, err := testReg.Create(ctx, owner, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "w-nowrap", State: keymap.Active, Attrs: usage(UsageEncrypt)})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := testReg.ExportWrapped(ctx, owner, dek.ID, Wrapping{Key: noWrap.ID, Mech: WrapKWP}); !errors.Is(err, ErrUsage) {
		t.Fatalf("wrapping under a key without Wrap Key: %v", err)
	}
	// Nor does a key without a usage mask: CKA_WRAP follows the mask.
	bare, _ := testReg.Create(ctx, owner, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "w-bare", State: keymap.Active})
	if _, _, err := testReg.ExportWrapped(ctx, owner, dek.ID, Wrapping{Key: bare.ID, Mech: WrapKWP}); !errors.Is(err, ErrUsage) {
		t.Fatalf("wrapping under a key without a usage mask: %v", err)
	}

	// RSA-OAEP under a public key; the exported private half unwraps it.
	priv, pub, err := testReg.CreateKeyPair(ctx, owner, KeySpec{Algorithm: RSA, Size: 2048},
		Meta{Name: "w-rsa", State: keymap.Active, Attrs: usage(UsageUnwrapKey | UsageDecrypt)}, Meta{Name: "w-rsa-pub", State: keymap.Active, Attrs: usage(UsageWrapKey | UsageEncrypt)})
	if err != nil {
		t.Fatal(err)
	}
	_, ow, err := testReg.ExportWrapped(ctx, owner, dek.ID, Wrapping{Key: pub.ID, Mech: WrapOAEP})
	if err != nil {
		t.Fatalf("RSA-OAEP wrap: %v", err)
	}
	pm, err := testReg.Export(ctx, owner, priv.ID)
	if err != nil {
		t.Fatal(err)
	}
	if back, err := rsa.DecryptOAEP(sha1.New(), nil, pm.Private.(*rsa.PrivateKey), ow, nil); err != nil || !bytes.Equal(back, value) {
		t.Fatalf("RSA-OAEP unwrap on the host: %v", err)
	}

	// Register of wrapped material: unwrapped into the token, where it encrypts; it may leave
	// again only as a generated key may.
	known := make([]byte, 32)
	rand.Read(known)
	for _, w := range []struct {
		mech WrapMech
		key  string
		data func() []byte
	}{
		{WrapKWP, kek.ID, func() []byte { b, _ := AESKeyWrapPad(kekValue, known); return b }},
		{WrapKW, kek.ID, func() []byte { b, _ := AESKeyWrap(kekValue, known); return b }},
		{WrapOAEP, priv.ID, func() []byte {
			b, _ := rsa.EncryptOAEP(sha1.New(), rand.Reader, pm.Private.Public().(*rsa.PublicKey), known, nil)
			return b
		}},
	} {
		rec, err := testReg.ImportWrapped(ctx, owner, w.data(), Wrapping{Key: w.key, Mech: w.mech}, AES, 256, Meta{Name: "w-unwrapped", State: keymap.Active})
		if err != nil {
			t.Fatalf("%s: register wrapped: %v", w.mech, err)
		}
		if rec.Size != 256 || rec.Attrs[AttrExportable] != ExportByPolicy {
			t.Fatalf("%s: unwrapped row %+v", w.mech, rec)
		}
		if as, ok := WrappedAs(rec); !ok || as.Key != w.key || as.Mech != w.mech {
			t.Fatalf("%s: recorded as %+v", w.mech, as)
		}
		iv, ct, err := testReg.Seal(ctx, owner, rec.ID, nil, []byte("db page"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if pt := gcmOpenHost(t, known, iv, ct); string(pt) != "db page" {
			t.Fatalf("%s: opened %q", w.mech, pt)
		}
	}
	bad, _ := AESKeyWrapPad(bytes.Repeat([]byte{1}, 32), known)
	if _, err := testReg.ImportWrapped(ctx, owner, bad, Wrapping{Key: kek.ID, Mech: WrapKWP}, AES, 0, Meta{Name: "w-bad"}); !errors.Is(err, ErrNotAuthentic) {
		t.Fatalf("register of material wrapped under another key: %v", err)
	}
	short, _ := AESKeyWrapPad(kekValue, known[:20])
	if _, err := testReg.ImportWrapped(ctx, owner, short, Wrapping{Key: kek.ID, Mech: WrapKWP}, AES, 0, Meta{Name: "w-short"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("register of a wrapped 20-byte AES key: %v", err)
	}
	plain := Caller{Identity: "wrapper-plain"}
	if rec, err := testReg.ImportWrapped(ctx, owner, bad, Wrapping{Key: kek.ID, Mech: WrapKWP}, AES, 0, Meta{Name: "w-other"}); err == nil {
		t.Fatalf("unexpected success: %+v", rec)
	}
	if _, err := testReg.ImportWrapped(ctx, plain, bad, Wrapping{Key: kek.ID, Mech: WrapKWP}, AES, 0, Meta{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("another identity unwraps under the owner's key: %v", err)
	}
}

// DeriveKey: the new key is the base key's encryption of the data, made in the token; the rules
// of client-chosen IVs and block mode families hold for the base key.
func TestDerive(t *testing.T) {
	c := Caller{Identity: "deriver", Export: true}
	base, err := testReg.Create(ctx, c, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "d-base", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	bm, err := testReg.Export(ctx, c, base.ID)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := aes.NewCipher(bm.Secret)
	data := bytes.Repeat([]byte("derivation data!"), 2)
	iv := bytes.Repeat([]byte{9}, 16)
	for _, mode := range []string{"cbc", "ecb"} {
		d, err := testReg.Derive(ctx, c, base.ID, Derivation{Mode: mode, IV: iv, Data: data}, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "d-" + mode, State: keymap.Active})
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		if d.Attrs[AttrDerivedFrom] != base.ID || d.Size != 256 || d.Owner != "deriver" {
			t.Fatalf("%s: derived row %+v", mode, d)
		}
		want := make([]byte, len(data))
		if mode == "cbc" {
			cipher.NewCBCEncrypter(blk, iv).CryptBlocks(want, data)
		} else {
			for i := 0; i < len(data); i += 16 {
				blk.Encrypt(want[i:i+16], data[i:i+16])
			}
		}
		dm, err := testReg.Export(ctx, c, d.ID)
		if err != nil || !bytes.Equal(dm.Secret, want[:32]) {
			t.Fatalf("%s: derived value %x %v, want %x", mode, dm.Secret, err, want[:32])
		}
	}
	if b, _ := testReg.Get(base.ID); b.Attrs[AttrBlockMode] != ModeCBC {
		t.Fatalf("base key's block mode after derivation: %q", b.Attrs[AttrBlockMode])
	}
	// A GCM key derives nothing: its encryptions must not be had for chosen data.
	g, _ := testReg.Create(ctx, c, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "d-gcm", State: keymap.Active})
	if _, _, err := testReg.Seal(ctx, c, g.ID, nil, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := testReg.Derive(ctx, c, g.ID, Derivation{Mode: "cbc", IV: iv, Data: data}, KeySpec{Algorithm: AES, Size: 128}, Meta{Name: "d-x"}); !errors.Is(err, ErrUsage) {
		t.Fatalf("derivation from a GCM key: %v", err)
	}
	// The usage mask decides, and the data must cover the key.
	nod, _ := testReg.Create(ctx, c, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "d-noderive", State: keymap.Active, Attrs: usage(UsageEncrypt)})
	if _, err := testReg.Derive(ctx, c, nod.ID, Derivation{Mode: "ecb", Data: data}, KeySpec{Algorithm: AES, Size: 128}, Meta{Name: "d-y"}); !errors.Is(err, ErrUsage) {
		t.Fatalf("derivation from a key without Derive Key: %v", err)
	}
	if _, err := testReg.Derive(ctx, c, base.ID, Derivation{Mode: "ecb", Data: data[:16]}, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "d-z"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("16 bytes of data for a 32-byte key: %v", err)
	}
	// Another identity's key derives nothing for it.
	if _, err := testReg.Derive(ctx, Caller{Identity: "stranger"}, base.ID, Derivation{Mode: "ecb", Data: data}, KeySpec{Algorithm: AES, Size: 128}, Meta{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("derivation from another identity's key: %v", err)
	}
}
