package signer

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/miekg/pkcs11"

	"github.com/p11bridge/p11bridge/keymap"
)

// objKind names one PKCS#11 object of a key: its class, and for secret keys its key type,
// because a KES key is an AES key and a generic-secret HMAC key under one CKA_ID.
type objKind struct {
	class   uint
	keyType uint // 0 = any
}

var (
	kindPrivate  = objKind{class: pkcs11.CKO_PRIVATE_KEY}
	kindPublic   = objKind{class: pkcs11.CKO_PUBLIC_KEY}
	kindAES      = objKind{class: pkcs11.CKO_SECRET_KEY, keyType: pkcs11.CKK_AES}
	kindHMAC     = objKind{class: pkcs11.CKO_SECRET_KEY, keyType: pkcs11.CKK_GENERIC_SECRET}
	kindCert     = objKind{class: pkcs11.CKO_CERTIFICATE}
	kindData     = objKind{class: pkcs11.CKO_DATA}
	kindAnySecet = objKind{class: pkcs11.CKO_SECRET_KEY}
)

type handleKey struct {
	tag  string
	kind objKind
}

// cachedHandle is a handle found for a tag, and when it was last seen to still carry that tag.
type cachedHandle struct {
	h       pkcs11.ObjectHandle
	checked atomic.Int64 // t.clock()
	// fromPass marks a handle the index pass published: trusted only once the pass has ended,
	// when a second object under the same tag (someone else wrote to the token) would have been
	// seen and the handle withdrawn (index.go).
	fromPass bool
}

// trusted says whether c may be used now.
func (t *Token) trusted(c *cachedHandle) bool { return !c.fromPass || t.indexEnded() }

// remember caches h as the object of tag and kind, just seen to carry the tag.
func (t *Token) remember(key handleKey, h pkcs11.ObjectHandle) {
	c := &cachedHandle{h: h}
	c.checked.Store(t.clock())
	t.handles.Store(key, c)
	t.forgetMiss(key)
}

// find returns the handle of the one object with tag and kind, from the cache when it can.
// Handles of token objects stay valid across sessions of this process, so one lookup serves all.
func (t *Token) find(ctx context.Context, tag []byte, k objKind) (pkcs11.ObjectHandle, error) {
	for attempt := 0; ; attempt++ {
		h, stale, err := t.findCached(ctx, tag, k)
		if err != nil || stale == nil {
			return h, err
		}
		// Callers use the handle on sessions of their own, so look here.
		err = t.do(ctx, func(sh pkcs11.SessionHandle) error { return t.confirm(sh, h, stale, tag, k) })
		if err == nil {
			return h, nil
		}
		if attempt == 0 && handleGone(err) {
			t.forget(tag, k)
			continue
		}
		return 0, classify(err, fmt.Sprintf("signer %q: find object %s", t.cfg.Name, hex.EncodeToString(tag)))
	}
}

// findCached is find, also saying whether the handle came from the cache unchecked for longer than
// copyRecheck: a module may give a destroyed object's handle number to a new object, so such a
// handle is checked to still carry the tag before it is used (sameObject).
func (t *Token) findCached(ctx context.Context, tag []byte, k objKind) (pkcs11.ObjectHandle, *cachedHandle, error) {
	key := handleKey{string(tag), k}
	fromCache := func(c *cachedHandle) (pkcs11.ObjectHandle, *cachedHandle, error) {
		if t.clock()-c.checked.Load() >= int64(copyRecheck) {
			return c.h, c, nil
		}
		return c.h, nil, nil
	}
	if v, ok := t.handles.Load(key); ok && t.trusted(v.(*cachedHandle)) {
		return fromCache(v.(*cachedHandle))
	}
	c, hs, err := t.search(ctx, key)
	if c != nil {
		return fromCache(c)
	}
	if err != nil {
		return 0, nil, classify(err, fmt.Sprintf("signer %q: find object %s", t.cfg.Name, hex.EncodeToString(tag)))
	}
	switch len(hs) {
	case 0:
		return 0, nil, errorf(ErrNotFound, "signer %q holds no %s with CKA_ID %s", t.cfg.Name, k, hex.EncodeToString(tag))
	case 1:
		t.remember(key, hs[0])
		return hs[0], nil, nil
	}
	// Tags are random 20-byte values; duplicates mean someone else wrote to the token. Refuse to
	// guess — unless the handles are one secret key seen twice: SoftHSM2's file store, written by
	// several processes at once (a cluster on one token), can index an object a second time
	// (storeGuard prevents it only within a process). Equal key check values (the same fixed
	// input processed by each) show that.
	if h, ok := t.sameSecret(ctx, hs, k); ok {
		t.remember(key, h)
		return h, nil, nil
	}
	return 0, nil, errorf(ErrInvalid, "signer %q holds %d objects of kind %s with CKA_ID %s; refusing to pick one", t.cfg.Name, len(hs), k, hex.EncodeToString(tag))
}

// confirm looks on session sh at a handle findCached returned as stale (not looked at for a
// while, or published by the index pass: it may name another object now) before it is used, and
// notes the look. A fresh handle (stale nil) passes.
func (t *Token) confirm(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, stale *cachedHandle, tag []byte, k objKind) error {
	if stale == nil {
		return nil
	}
	if err := t.sameObject(sh, h, tag, k); err != nil {
		return err
	}
	stale.checked.Store(t.clock())
	return nil
}

// handleGone says the token calls a handle invalid: its object is gone, or the handle names
// another object now (errOtherObject).
func handleGone(err error) bool {
	c := ckr(err)
	return c == pkcs11.CKR_OBJECT_HANDLE_INVALID || c == pkcs11.CKR_KEY_HANDLE_INVALID
}

// errOtherObject says a handle now names an object other than the one it was cached for; callers
// treat it like CKR_OBJECT_HANDLE_INVALID and look the object up again.
var errOtherObject = pkcs11.Error(pkcs11.CKR_OBJECT_HANDLE_INVALID)

// sameObject checks on session sh that handle h still names tag's object of kind k: its CKA_ID
// (CKA_APPLICATION for data objects) and class. A handle that went stale fails with the token's
// own error; one that names another object with errOtherObject.
func (t *Token) sameObject(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, tag []byte, k objKind) error {
	idAttr := uint(pkcs11.CKA_ID)
	want := tag
	if k == kindData {
		idAttr, want = pkcs11.CKA_APPLICATION, []byte(dataApplication(tag))
	}
	a, err := t.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(idAttr, nil), pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil)})
	if err != nil {
		return err
	}
	if !bytes.Equal(a[0].Value, want) || (k.class != ^uint(0) && keyType(a[1].Value) != k.class) {
		return errOtherObject
	}
	return nil
}

// findAll lists the objects with tag (nil = any) and kind on session sh.
func (t *Token) findAll(sh pkcs11.SessionHandle, tag []byte, k objKind) ([]pkcs11.ObjectHandle, error) {
	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)}
	switch {
	case tag != nil && k == kindData:
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, dataApplication(tag)))
	case tag != nil:
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_ID, tag))
	}
	if k.class != ^uint(0) {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_CLASS, k.class))
	}
	if k.keyType != 0 {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, k.keyType))
	}
	if err := t.ctx.FindObjectsInit(sh, tmpl); err != nil {
		return nil, err
	}
	var all []pkcs11.ObjectHandle
	for {
		hs, _, err := t.ctx.FindObjects(sh, findBatch)
		if err != nil {
			_ = t.ctx.FindObjectsFinal(sh)
			return nil, err
		}
		all = append(all, hs...)
		if len(hs) == 0 {
			break
		}
	}
	return all, t.ctx.FindObjectsFinal(sh)
}

// findBatch is how many handles one C_FindObjects asks for: a round trip each on a network HSM
// when the handle index pass lists the whole token.
const findBatch = 1024

// forget drops cached handles of tag (after destroy, or when the token says a handle is stale).
func (t *Token) forget(tag []byte, k objKind) {
	t.handles.Delete(handleKey{string(tag), k})
}

// withKey runs fn with the handle of tag/kind, looking the handle up again once if the
// cached one went stale (another process destroyed and re-created the object) or names another
// object now.
func (t *Token) withKey(ctx context.Context, tag []byte, k objKind, fn func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error) error {
	for attempt := 0; ; attempt++ {
		h, stale, err := t.findCached(ctx, tag, k)
		if err != nil {
			return err
		}
		err = t.do(ctx, func(sh pkcs11.SessionHandle) error {
			if err := t.confirm(sh, h, stale, tag, k); err != nil {
				return err
			}
			return fn(sh, h)
		})
		if attempt == 0 && handleGone(err) {
			t.forget(tag, k)
			continue
		}
		return err
	}
}

func (k objKind) String() string {
	switch k {
	case kindPrivate:
		return "private key"
	case kindPublic:
		return "public key"
	case kindAES:
		return "AES key"
	case kindHMAC:
		return "HMAC key"
	case kindCert:
		return "certificate"
	case kindData:
		return "data object"
	case kindAnySecet:
		return "secret key"
	}
	return fmt.Sprintf("object class %d type %d", k.class, k.keyType)
}

// dataApplication names a data object by its tag: PKCS#11 data objects have no CKA_ID, so the
// tag goes into CKA_APPLICATION instead.
func dataApplication(tag []byte) string { return "p11bridge:" + hex.EncodeToString(tag) }

// kindForClass is the token object that carries a row's key material (for a KES key, the AES key).
func kindForClass(rec keymap.Record) objKind {
	switch rec.Class {
	case keymap.SecretKey:
		if rec.Algorithm == HMAC {
			return kindHMAC
		}
		return kindAES
	case keymap.PrivateKey:
		return kindPrivate
	case keymap.PublicKey:
		return kindPublic
	case keymap.Certificate:
		return kindCert
	}
	return kindData
}

// sameSecret reports whether the AES or HMAC key handles hs all hold the same key, by comparing
// key check values: AES-ECB of a zero block, HMAC-SHA-256 of a fixed message. Keys whose usage
// forbids that are never taken for equal.
func (t *Token) sameSecret(ctx context.Context, hs []pkcs11.ObjectHandle, k objKind) (pkcs11.ObjectHandle, bool) {
	var mech *pkcs11.Mechanism
	switch k {
	case kindAES:
		mech = pkcs11.NewMechanism(pkcs11.CKM_AES_ECB, nil)
	case kindHMAC:
		mech = pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)
	default:
		return 0, false
	}
	var first []byte
	err := t.do(ctx, func(sh pkcs11.SessionHandle) error {
		for i, h := range hs {
			var kcv []byte
			var err error
			if k == kindAES {
				if err = t.ctx.EncryptInit(sh, []*pkcs11.Mechanism{mech}, h); err == nil {
					kcv, err = t.ctx.Encrypt(sh, make([]byte, 16))
				}
			} else if err = t.ctx.SignInit(sh, []*pkcs11.Mechanism{mech}, h); err == nil {
				kcv, err = t.ctx.Sign(sh, []byte("p11bridge key check value"))
			}
			if err != nil {
				return err
			}
			if i == 0 {
				first = kcv
			} else if !bytes.Equal(kcv, first) {
				return errNotSame
			}
		}
		return nil
	})
	if err != nil {
		return 0, false
	}
	t.log.Debug("the token lists one key twice under its tag; key check values are equal, using the first", "objects", len(hs))
	return hs[0], true
}

var errNotSame = errors.New("different keys")
