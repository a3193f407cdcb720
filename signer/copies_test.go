package signer

import (
	"bytes"
	"crypto"
	"encoding/hex"
	"errors"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/p11bridge/p11bridge/keymap"
)

// sessionObjects lists this process's session objects with tag on tok: the copies.
func sessionObjects(t *testing.T, tok *Token, tag []byte) []pkcs11.ObjectHandle {
	t.Helper()
	var hs []pkcs11.ObjectHandle
	err := tok.do(ctx, func(sh pkcs11.SessionHandle) error {
		err := tok.ctx.FindObjectsInit(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_ID, tag)})
		if err != nil {
			return err
		}
		hs, _, err = tok.ctx.FindObjects(sh, 16)
		if ferr := tok.ctx.FindObjectsFinal(sh); err == nil {
			err = ferr
		}
		return err
	})
	if err != nil {
		t.Fatalf("find session objects: %v", err)
	}
	return hs
}

// A KES-style key (AES + HMAC) used once gets two session copies that are as locked as the
// token objects; what a copy seals the token object opens and back; destroying the key
// through the registry destroys the copies.
func TestKeyCopies(t *testing.T) {
	tok, _ := testReg.Signer("a")
	before := tok.Copies()
	k, err := testReg.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 256, WithHMAC: true}, Meta{Name: "copied", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(sessionObjects(t, tok, k.Tag)); n != 0 {
		t.Fatalf("%d copies before first use", n)
	}
	iv, ct, err := testReg.Seal(ctx, Operator, k.ID, nil, []byte("data key"), []byte("ctx"))
	if err != nil {
		t.Fatal(err)
	}
	mac, err := testReg.HMAC(ctx, Operator, k.ID, crypto.SHA256, []byte("msg"))
	if err != nil {
		t.Fatal(err)
	}
	copies := sessionObjects(t, tok, k.Tag)
	if len(copies) != 2 || tok.Copies() != before+2 {
		t.Fatalf("%d session objects and %d counted copies after using AES and HMAC, want 2 and %d", len(copies), tok.Copies(), before+2)
	}
	for _, h := range copies {
		var a []*pkcs11.Attribute
		err := tok.do(ctx, func(sh pkcs11.SessionHandle) error {
			var err error
			a, err = tok.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, nil)})
			if err != nil {
				return err
			}
			_, err = tok.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
			if ckr(err) != pkcs11.CKR_ATTRIBUTE_SENSITIVE {
				t.Errorf("reading the copy's CKA_VALUE: %v, want CKR_ATTRIBUTE_SENSITIVE", err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if boolAttr(a[0]) || !boolAttr(a[1]) || boolAttr(a[2]) || !boolAttr(a[3]) {
			t.Fatalf("copy: token=%v sensitive=%v extractable=%v private=%v; want a private, sensitive, non-extractable session object",
				boolAttr(a[0]), boolAttr(a[1]), boolAttr(a[2]), boolAttr(a[3]))
		}
	}

	// The same key without copies (a registry that keeps none, on the same token and keymap).
	plain, err := Open(Options{Signers: []Config{{Name: "a", Module: tokA.Module, TokenLabel: tokA.Label, PIN: tokA.PIN, MaxSessions: 2}}, Default: "a", Logger: quietLog()}, testKM)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	pt, err := plain.Open(ctx, Operator, k.ID, iv, ct, []byte("ctx"))
	if err != nil || string(pt) != "data key" {
		t.Fatalf("token object opens what the copy sealed: %q, %v", pt, err)
	}
	if mac2, err := plain.HMAC(ctx, Operator, k.ID, crypto.SHA256, []byte("msg")); err != nil || !bytes.Equal(mac, mac2) {
		t.Fatalf("token object's HMAC differs from the copy's: %v", err)
	}
	iv2, ct2, err := plain.Seal(ctx, Operator, k.ID, nil, []byte("other"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := testReg.Open(ctx, Operator, k.ID, iv2, ct2, nil); err != nil || string(pt) != "other" {
		t.Fatalf("copy opens what the token object sealed: %q, %v", pt, err)
	}
	if ptok, _ := plain.Signer("a"); ptok.Copies() != 0 {
		t.Fatalf("a signer with key_copies 0 made %d copies", ptok.Copies())
	}
	if _, err := testReg.Open(ctx, Operator, k.ID, iv, ct, []byte("other ctx")); !errors.Is(err, ErrNotAuthentic) {
		t.Fatalf("wrong AAD on the copy: %v", err)
	}

	if err := testReg.Destroy(ctx, Operator, k.ID); err != nil {
		t.Fatal(err)
	}
	if n := len(sessionObjects(t, tok, k.Tag)); n != 0 || tok.Copies() != before {
		t.Fatalf("%d copies left in the token and %d counted after destroy, want 0 and %d", n, tok.Copies(), before)
	}
	if _, _, err := testReg.Seal(ctx, Operator, k.ID, nil, []byte("x"), nil); !errors.Is(err, ErrWrongState) {
		t.Fatalf("seal after destroy: %v, want the Destroyed key refused", err)
	}
}

// A private key gets a copy on its first signature, as locked as the token object, and loses it
// with the key.
func TestKeyCopiesOfPrivateKeys(t *testing.T) {
	tok, _ := testReg.Signer("a")
	priv, pub, err := testReg.CreateKeyPair(ctx, Operator, KeySpec{Algorithm: EC, Size: 256}, Meta{Name: "copied-ec", State: keymap.Active}, Meta{Name: "copied-ec-pub", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	p := SignParams{Scheme: ECDSA, Hash: crypto.SHA256}
	for i := 0; i < 2; i++ {
		sig, err := testReg.Sign(ctx, Operator, priv.ID, p, []byte("msg"))
		if err != nil {
			t.Fatal(err)
		}
		if err := testReg.Verify(ctx, Operator, pub.ID, p, []byte("msg"), sig); err != nil {
			t.Fatalf("signature %d by the copy: %v", i, err)
		}
	}
	copies := sessionObjects(t, tok, priv.Tag)
	if len(copies) != 1 {
		t.Fatalf("%d session objects after signing twice, want 1", len(copies))
	}
	var a []*pkcs11.Attribute
	err = tok.do(ctx, func(sh pkcs11.SessionHandle) error {
		var err error
		a, err = tok.ctx.GetAttributeValue(sh, copies[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, nil)})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if a[0].Value[0] != byte(pkcs11.CKO_PRIVATE_KEY) || !boolAttr(a[1]) || boolAttr(a[2]) || !boolAttr(a[3]) {
		t.Fatalf("copy: class %v sensitive=%v extractable=%v private=%v", a[0].Value, boolAttr(a[1]), boolAttr(a[2]), boolAttr(a[3]))
	}
	if err := testReg.Destroy(ctx, Operator, priv.ID); err != nil {
		t.Fatal(err)
	}
	if n := len(sessionObjects(t, tok, priv.Tag)); n != 0 {
		t.Fatalf("%d copies left after destroy", n)
	}
	_ = testReg.Destroy(ctx, Operator, pub.ID)
}

// Another process destroys the key: the copy stops working within copyRecheck and is dropped.
func TestKeyCopyFollowsTokenObject(t *testing.T) {
	tok, _ := testReg.Signer("a")
	k, err := testReg.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "destroyed-elsewhere", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := testReg.Seal(ctx, Operator, k.ID, nil, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	if n := len(sessionObjects(t, tok, k.Tag)); n != 1 {
		t.Fatalf("%d copies after use, want 1", n)
	}
	out, err := exec.Command("pkcs11-tool", "--module", tokA.Module, "--token-label", tokA.Label, "--login", "--pin", tokA.PIN,
		"--delete-object", "--type", "secrkey", "--id", hex.EncodeToString(k.Tag)).CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool --delete-object: %v\n%s", err, out)
	}
	time.Sleep(copyRecheck + 100*time.Millisecond)
	if _, _, err := testReg.Seal(ctx, Operator, k.ID, nil, []byte("x"), nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("seal %s after the token object was destroyed by another process: %v, want ErrNotFound", copyRecheck, err)
	}
	if n := len(sessionObjects(t, tok, k.Tag)); n != 0 {
		t.Fatalf("%d copies left after the token object went away", n)
	}
	_ = testReg.Destroy(ctx, Operator, k.ID) // the keymap row
}

// key_copies bounds the copies; keys beyond it work on their token objects.
func TestKeyCopiesBounded(t *testing.T) {
	km, err := keymap.Open(filepath.Join(t.TempDir(), "km.csv"), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	c := cfgOf("b", tokB)
	c.KeyCopies = 1
	r, err := Open(Options{Signers: []Config{c}, Default: "b", Logger: quietLog()}, km)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	tok, _ := r.Signer("b")
	for i := 0; i < 3; i++ {
		k, err := r.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "bounded", State: keymap.Active})
		if err != nil {
			t.Fatal(err)
		}
		iv, ct, err := r.Seal(ctx, Operator, k.ID, nil, []byte("x"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if pt, err := r.Open(ctx, Operator, k.ID, iv, ct, nil); err != nil || string(pt) != "x" {
			t.Fatalf("key %d: %q, %v", i, pt, err)
		}
	}
	if n := tok.Copies(); n != 1 {
		t.Fatalf("%d copies with key_copies 1", n)
	}
}

// A module may give a destroyed object's handle number to another object. A cached handle, and
// the token object behind a session copy, are checked to still carry the key's tag before use
// (after copyRecheck), so an operation never runs with another key.
func TestReusedHandleIsNotTrusted(t *testing.T) {
	owner := Caller{Identity: "reuse"}
	a, err := testReg.Create(ctx, owner, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "reuse-a", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	b, err := testReg.Create(ctx, owner, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "reuse-b", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := testReg.Signer("a")
	iv, ct, err := testReg.Seal(ctx, owner, a.ID, nil, []byte("sealed under a"), nil)
	if err != nil {
		t.Fatal(err)
	}
	hb, err := tok.find(ctx, b.Tag, kindAES)
	if err != nil {
		t.Fatal(err)
	}
	keyA := handleKey{string(a.Tag), kindAES}
	for _, where := range []string{"session copy", "cached handle"} {
		// a's handle now names b's object, as if the module had reused the number; last checked long ago.
		if where == "session copy" {
			if _, err := testReg.Open(ctx, owner, a.ID, iv, ct, nil); err != nil {
				t.Fatal(err) // makes a's copy
			}
			v, ok := tok.copies.Load(keyA)
			if !ok || v.(*keyCopy) == nil {
				t.Fatal("no session copy of a")
			}
			c := v.(*keyCopy)
			c.src = hb
			c.checked.Store(tok.clock() - int64(2*copyRecheck))
		} else {
			tok.dropCopies(a.Tag)
			tok.copies.Store(keyA, (*keyCopy)(nil)) // a is used as a token object from now on
			c := &cachedHandle{h: hb}
			c.checked.Store(tok.clock() - int64(2*copyRecheck))
			tok.handles.Store(keyA, c)
		}
		pt, err := testReg.Open(ctx, owner, a.ID, iv, ct, nil)
		if err != nil || string(pt) != "sealed under a" {
			t.Fatalf("%s: open with a after its handle was reused: %q %v", where, pt, err)
		}
		if v, _ := tok.handles.Load(keyA); v.(*cachedHandle).h == hb {
			t.Fatalf("%s: a's cached handle still names b's object", where)
		}
		// A copy whose source handle names another object is dropped: were a destroyed elsewhere,
		// its copy must not keep it alive through a reused handle.
		if v, ok := tok.copies.Load(keyA); ok && v.(*keyCopy) != nil && v.(*keyCopy).src == hb {
			t.Fatalf("%s: a's session copy is still checked against b's object", where)
		}
	}
	// A copy is made from a cached handle only after the handle is seen to still name the key:
	// with no copy of a yet, a's stale handle names b's object.
	tok.copies.Delete(keyA)
	c := &cachedHandle{h: hb, fromPass: true}
	c.checked.Store(tok.clock() - int64(2*copyRecheck))
	tok.handles.Store(keyA, c)
	if pt, err := testReg.Open(ctx, owner, a.ID, iv, ct, nil); err != nil || string(pt) != "sealed under a" {
		t.Fatalf("new copy: open with a after its handle was reused: %q %v", pt, err)
	}
	if v, ok := tok.copies.Load(keyA); ok && v.(*keyCopy) != nil && v.(*keyCopy).src == hb {
		t.Fatal("a's session copy was made from b's object")
	}
	tok.copies.Delete(keyA)
}
