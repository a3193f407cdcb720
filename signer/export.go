package signer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/p11bridge/p11bridge/keymap"
)

// Key material leaves a token in two ways, both decided by the key model (access.go, mayExport):
//
//   - Export (KMIP Get): the token wraps the key (AES key wrap with padding, kwpMech) under the
//     signer's export key, a session object made from 32 random bytes that only this process
//     knows, and the registry unwraps it here. Only a token without that mechanism has its
//     exportable keys made readable (not sensitive) and read as CKA_VALUE (check says which).
//   - ExportWrapped (KMIP Get with a Key Wrapping Specification): the token wraps the key under a
//     key the client names (AES key wrap, with or without padding, or RSA-OAEP under a public
//     key), and the wrapped bytes are the answer: the key is never in plaintext outside the token.
//
// ImportWrapped is the way back: wrapped material unwrapped inside the token (C_UnwrapKey).

// How Export took a key's material out of its token (for the audit record and check).
const (
	ViaWrapped = "wrapped in the token (AES-KWP) under the signer's export key, unwrapped by p11bridge"
	ViaValue   = "read from the token (CKA_VALUE)"
	ViaPublic  = "public"
)

// exportKey is a signer's own wrapping key for Export: its value is known to this process only.
type exportKey struct {
	h     pkcs11.ObjectHandle
	value []byte
}

// ckmAESKeyWrapKWP is PKCS#11 3.x's RFC 5649 mechanism. 2.40's CKM_AES_KEY_WRAP_PAD (0x210A) is RFC
// 5649 in SoftHSM2 but PKCS#7 padding and RFC 3394 in other tokens; Thales Luna names RFC 5649 with
// this one.
const ckmAESKeyWrapKWP = 0x210B

// kwpMech is the token's AES key wrap with padding: CKM_AES_KEY_WRAP_KWP where offered, else
// CKM_AES_KEY_WRAP_PAD; 0 when it has neither.
func (t *Token) kwpMech() uint {
	switch {
	case t.mechs[ckmAESKeyWrapKWP]:
		return ckmAESKeyWrapKWP
	case t.mechs[pkcs11.CKM_AES_KEY_WRAP_PAD]:
		return pkcs11.CKM_AES_KEY_WRAP_PAD
	}
	return 0
}

// wrapsExports says whether the token can wrap keys out with padding: then exportable keys stay
// sensitive (never readable as CKA_VALUE).
func (t *Token) wrapsExports() bool { return t.kwpMech() != 0 }

// ExportWay says, for `check`, how exportable keys leave this signer's token.
func (t *Token) ExportWay() string {
	if t.wrapsExports() {
		return "exportable keys are made sensitive and leave the token wrapped (AES key wrap with padding) under a session key only p11bridge knows"
	}
	return "the token cannot wrap keys with padding (CKM_AES_KEY_WRAP_KWP or _PAD): exportable keys are made readable (not sensitive) and read as CKA_VALUE"
}

// exportWrapKey returns the signer's export key, making it on first use: a session object on the
// anchor session (visible to this process's sessions, gone when the signer closes).
func (t *Token) exportWrapKey() (*exportKey, error) {
	t.exportMu.Lock()
	defer t.exportMu.Unlock()
	if t.export != nil {
		return t.export, nil
	}
	v := make([]byte, 32)
	if _, err := rand.Read(v); err != nil {
		return nil, errorf(ErrUnavailable, "signer %q: draw the export key: %v", t.cfg.Name, err)
	}
	t.copyMu.Lock() // the anchor session is used under copyMu
	h, err := t.ctx.CreateObject(t.anchor, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, "p11bridge export wrapping key"),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, v),
	})
	t.copyMu.Unlock()
	if err != nil {
		clear(v)
		return nil, classify(err, fmt.Sprintf("signer %q: make the export key", t.cfg.Name))
	}
	t.export = &exportKey{h: h, value: v}
	return t.export, nil
}

// dropExportKey forgets k (its session object went away); the next export makes a new one.
func (t *Token) dropExportKey(k *exportKey) {
	t.exportMu.Lock()
	defer t.exportMu.Unlock()
	if t.export == k {
		t.export = nil
		clear(k.value)
	}
}

// wipeExportKey clears the export key's value when the signer closes (its object goes with the
// anchor session).
func (t *Token) wipeExportKey() {
	t.exportMu.Lock()
	defer t.exportMu.Unlock()
	if t.export != nil {
		clear(t.export.value)
		t.export = nil
	}
}

// wrapOut takes the material of tag's object of kind k out of the token: wrapped inside it under
// the export key, unwrapped here. Errors are the token's (classified by the caller).
func (t *Token) wrapOut(ctx context.Context, tag []byte, k objKind) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		ek, err := t.exportWrapKey()
		if err != nil {
			return nil, err
		}
		var wrapped []byte
		err = t.withKey(ctx, tag, k, func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
			var err error
			wrapped, err = t.ctx.WrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(t.kwpMech(), nil)}, ek.h, h)
			return err
		})
		if attempt == 0 && ckr(err) == pkcs11.CKR_WRAPPING_KEY_HANDLE_INVALID {
			t.dropExportKey(ek)
			continue
		}
		if err != nil {
			return nil, err
		}
		return unwrapExport(ek.value, wrapped)
	}
}

// unwrapExport undoes the token's wrap with padding: RFC 5649, or, from a token whose
// CKM_AES_KEY_WRAP_PAD is PKCS#7 padding and RFC 3394, that. Both check their integrity, so a
// wrong guess is an error, never a wrong key.
func unwrapExport(kek, wrapped []byte) ([]byte, error) {
	if k, err := AESKeyUnwrapPad(kek, wrapped); err == nil {
		return k, nil
	}
	k, err := AESKeyUnwrap(kek, wrapped)
	if err != nil {
		return nil, errorf(ErrUnavailable, "the token's key wrap with padding is neither RFC 5649 nor PKCS#7 and RFC 3394")
	}
	n := int(k[len(k)-1])
	if n < 1 || n > 8 || n > len(k) {
		clear(k)
		return nil, errorf(ErrUnavailable, "the token's key wrap with padding left a bad PKCS#7 padding")
	}
	return k[:len(k)-n], nil
}

// Export gives back an object's material: a public key, what a client registered, or a key made
// exportable under the export right, as the key model allows c (ErrDenied without the right,
// ErrNotExtractable for a key that never leaves the token). Material.Via says how it left.
func (r *Registry) Export(ctx context.Context, c Caller, id string) (Material, error) {
	rec, err := r.Access(c, id, UseExport)
	if err != nil {
		return Material{}, err
	}
	t, err := r.tokenOf(rec)
	if err != nil {
		return Material{}, err
	}
	m := Material{Class: rec.Class, Algorithm: rec.Algorithm}
	if rec.Class == keymap.PublicKey {
		m.Via = ViaPublic
		m.Public, err = t.publicKey(ctx, rec.Tag)
		return m, err
	}
	if (rec.Class == keymap.SecretKey || rec.Class == keymap.PrivateKey) && t.wrapsExports() {
		raw, err := t.wrapOut(ctx, rec.Tag, kindForClass(rec))
		switch code := ckr(err); {
		case err == nil:
			m.Via = ViaWrapped
			if rec.Class == keymap.SecretKey {
				m.Secret = raw
				return m, nil
			}
			m.Private, err = parsePKCS8Signer(raw)
			clear(raw)
			if err != nil {
				return Material{}, errorf(ErrUnavailable, "signer %q: export %s: the token wrapped a private key that does not parse: %v", t.cfg.Name, id, err)
			}
			return m, nil
		case code == pkcs11.CKR_KEY_UNEXTRACTABLE || code == pkcs11.CKR_KEY_NOT_WRAPPABLE:
			return Material{}, errorf(ErrNotExtractable, "object %q: its token holds it as not extractable", id)
		case code != pkcs11.CKR_MECHANISM_INVALID && code != pkcs11.CKR_KEY_TYPE_INCONSISTENT && code != pkcs11.CKR_FUNCTION_NOT_SUPPORTED:
			return Material{}, classify(err, fmt.Sprintf("signer %q: export %s", t.cfg.Name, id))
		}
		// The token cannot wrap this kind of key: read it as it allows.
	}
	m.Via = ViaValue
	err = t.withKey(ctx, rec.Tag, kindForClass(rec), func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		if rec.Class != keymap.PrivateKey {
			a, err := t.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
			if err != nil {
				return err
			}
			switch rec.Class {
			case keymap.Certificate:
				m.Cert = a[0].Value
			default:
				m.Secret = a[0].Value
			}
			return nil
		}
		var err error
		m.Private, err = t.readPrivate(sh, h, rec)
		return err
	})
	if err != nil {
		if ckr(err) == pkcs11.CKR_ATTRIBUTE_SENSITIVE {
			return Material{}, errorf(ErrNotExtractable, "object %q is sensitive in its token", id)
		}
		return Material{}, classify(err, fmt.Sprintf("signer %q: export %s", t.cfg.Name, id))
	}
	return m, nil
}

func parsePKCS8Signer(der []byte) (crypto.Signer, error) {
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, err
	}
	switch s := k.(type) {
	case *rsa.PrivateKey:
		return s, nil
	case *ecdsa.PrivateKey:
		return s, nil
	}
	return nil, fmt.Errorf("private key of type %T", k)
}

// WrapMech is how a key is wrapped under another.
type WrapMech uint8

const (
	// WrapKWP is AES key wrap with padding (RFC 5649), WrapKW AES key wrap (RFC 3394), WrapOAEP
	// RSA-OAEP under a public key.
	WrapKWP WrapMech = iota + 1
	WrapKW
	WrapOAEP
)

func (w WrapMech) String() string {
	switch w {
	case WrapKWP:
		return "AES key wrap with padding (RFC 5649)"
	case WrapKW:
		return "AES key wrap (RFC 3394)"
	case WrapOAEP:
		return "RSA-OAEP"
	}
	return fmt.Sprintf("wrapping %d", uint8(w))
}

// Wrapping names a wrapping key (an object identifier) and how to wrap under it. Hash is OAEP's
// (and its mask generation function's) hash, SHA-1 when zero.
type Wrapping struct {
	Key  string
	Mech WrapMech
	Hash crypto.Hash
}

// mechanism is the PKCS#11 mechanism of w.
func (w Wrapping) mechanism(t *Token) ([]*pkcs11.Mechanism, error) {
	kwp := t.kwpMech()
	if kwp == 0 {
		kwp = pkcs11.CKM_AES_KEY_WRAP_PAD
	}
	switch w.Mech {
	case WrapKWP:
		// RFC 5649 where the token names it KWP; else 0x210A, which is RFC 5649 in SoftHSM2.
		return []*pkcs11.Mechanism{pkcs11.NewMechanism(kwp, nil)}, nil
	case WrapKW:
		return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP, nil)}, nil
	case WrapOAEP:
		h := w.Hash
		if h == 0 {
			h = crypto.SHA1
		}
		hm, ok := hashes[h]
		if !ok {
			return nil, errorf(ErrInvalid, "RSA-OAEP key wrapping with hash %v", h)
		}
		return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP, pkcs11.NewOAEPParams(hm.hash, hm.mgf, pkcs11.CKZ_DATA_SPECIFIED, nil))}, nil
	}
	return nil, errorf(ErrUnsupported, "key wrapping method %d", uint8(w.Mech))
}

// wrapKeyRow resolves the wrapping key of w for c and u (UseWrap or UseUnwrap): an AES key for AES
// key wrap; for RSA-OAEP the public key when wrapping, the private key when unwrapping.
func (r *Registry) wrapKeyRow(c Caller, w Wrapping, u Use) (keymap.Record, *Token, error) {
	switch {
	case w.Mech == WrapOAEP && u == UseWrap:
		return r.keyFor(c, w.Key, u, keymap.PublicKey, RSA)
	case w.Mech == WrapOAEP:
		return r.keyFor(c, w.Key, u, keymap.PrivateKey, RSA)
	}
	return r.keyFor(c, w.Key, u, keymap.SecretKey, AES)
}

// wrapErr words the token's refusals of a wrap or unwrap.
func wrapErr(err error, kek keymap.Record, w Wrapping, what string) error {
	switch ckr(err) {
	case pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED:
		bit := "Wrap Key"
		if what == "unwrap" {
			bit = "Unwrap Key"
		}
		return errorf(ErrUsage, "object %q cannot %s keys: it was made without %s in its Cryptographic Usage Mask", kek.ID, what, bit)
	case pkcs11.CKR_KEY_UNEXTRACTABLE, pkcs11.CKR_KEY_NOT_WRAPPABLE:
		return errorf(ErrNotExtractable, "%s: the token holds the key as not extractable", what)
	case pkcs11.CKR_KEY_SIZE_RANGE, pkcs11.CKR_DATA_LEN_RANGE:
		if w.Mech == WrapKW {
			return errorf(ErrInvalid, "%s: %s takes keys of a multiple of 8 bytes; use AES key wrap with padding", what, w.Mech)
		}
		return errorf(ErrInvalid, "%s under %q with %s: the key does not fit", what, kek.ID, w.Mech)
	case pkcs11.CKR_WRAPPED_KEY_INVALID, pkcs11.CKR_WRAPPED_KEY_LEN_RANGE, pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE:
		return errorf(ErrNotAuthentic, "%s: the wrapped key does not unwrap under %q with %s", what, kek.ID, w.Mech)
	}
	return classify(err, fmt.Sprintf("signer %q: %s under %s with %s", kek.Signer, what, kek.ID, w.Mech))
}

// ExportWrapped wraps the material of id inside its token under the key w names and returns the
// wrapped bytes: the key never exists in plaintext outside the token. c must be allowed to export
// id (the same rule as Export, but for KMIP Sensitive keys) and to wrap with the wrapping key, which
// must live on the same token.
func (r *Registry) ExportWrapped(ctx context.Context, c Caller, id string, w Wrapping) (keymap.Record, []byte, error) {
	rec, err := r.Access(c, id, UseExportWrapped)
	if err != nil {
		return keymap.Record{}, nil, err
	}
	if rec.Class != keymap.SecretKey && rec.Class != keymap.PrivateKey {
		return keymap.Record{}, nil, errorf(ErrUnsupported, "object %q is a %s: the token wraps secret and private keys only", id, rec.Class)
	}
	if w.Key == rec.ID {
		return keymap.Record{}, nil, errorf(ErrInvalid, "object %q cannot be wrapped under itself", id)
	}
	kek, t, err := r.wrapKeyRow(c, w, UseWrap)
	if err != nil {
		return keymap.Record{}, nil, err
	}
	if kek.Signer != rec.Signer {
		return keymap.Record{}, nil, errorf(ErrUnsupported, "object %q lives on signer %q and the wrapping key %q on %q: a token wraps only under its own keys", id, rec.Signer, kek.ID, kek.Signer)
	}
	mech, err := w.mechanism(t)
	if err != nil {
		return keymap.Record{}, nil, err
	}
	var wrapped []byte
	for attempt := 0; ; attempt++ {
		kh, ferr := t.find(ctx, kek.Tag, kindForClass(kek))
		if ferr != nil {
			return keymap.Record{}, nil, ferr
		}
		err = t.withKey(ctx, rec.Tag, kindForClass(rec), func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
			var err error
			wrapped, err = t.ctx.WrapKey(sh, mech, kh, h)
			return err
		})
		if attempt == 0 && ckr(err) == pkcs11.CKR_WRAPPING_KEY_HANDLE_INVALID {
			t.forget(kek.Tag, kindForClass(kek))
			continue
		}
		break
	}
	if err != nil {
		return keymap.Record{}, nil, wrapErr(err, kek, w, "wrap")
	}
	return kek, wrapped, nil
}

// checkUnwrapped checks that an unwrapped key is what it was declared to be: the token's own word
// on its length where it keeps one, and for AES an encryption, which a token refuses with a key of
// the wrong length.
func (t *Token) checkUnwrapped(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, alg string, size int) error {
	a, err := t.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, nil)})
	if err == nil {
		if n := int(keyType(a[0].Value)); n != 0 && n != size {
			return errorf(ErrInvalid, "the unwrapped key is %d bytes, not the %d its Cryptographic Length says", n, size)
		}
	}
	if alg != AES || !t.mechs[pkcs11.CKM_AES_ECB] {
		return nil // no way to ask; the key's first use will tell
	}
	// SoftHSM2 answers CKR_MECHANISM_INVALID for an AES key of a length AES has not.
	if err := t.ctx.EncryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_ECB, nil)}, h); err != nil {
		return errorf(ErrInvalid, "the unwrapped material is not an AES key of %d bytes: %v", size, err)
	}
	_, err = t.ctx.Encrypt(sh, make([]byte, 16))
	if err != nil {
		return errorf(ErrInvalid, "the unwrapped material is not an AES key of %d bytes: %v", size, err)
	}
	return nil
}

// AttrWrappedAs records how a key registered wrapped came (JSON of Wrapping), so that it can be
// given back as registered: wrapped again under the same key, in the token.
const AttrWrappedAs = "p11.wrapped-as"

type wrappedAs struct {
	Key  string `json:"key"`
	Mech uint8  `json:"mech"`
	Hash uint   `json:"hash,omitempty"`
}

// WrappedAs is how rec was registered wrapped; ok is false when it was not.
func WrappedAs(rec keymap.Record) (Wrapping, bool) {
	s, ok := rec.Attrs[AttrWrappedAs]
	if !ok {
		return Wrapping{}, false
	}
	var w wrappedAs
	if json.Unmarshal([]byte(s), &w) != nil || w.Key == "" {
		return Wrapping{}, false
	}
	return Wrapping{Key: w.Key, Mech: WrapMech(w.Mech), Hash: crypto.Hash(w.Hash)}, true
}

// ImportWrapped unwraps wrapped key material into the token of the key w names (C_UnwrapKey) as a
// new secret key of alg (AES or HMAC) for c: the material is never in plaintext outside the token.
// The new key may leave the token again as a generated key would (newExportable); it is recorded
// with how it came (AttrWrappedAs).
func (r *Registry) ImportWrapped(ctx context.Context, c Caller, wrapped []byte, w Wrapping, alg string, bits int, meta Meta) (keymap.Record, error) {
	if alg != AES && alg != HMAC {
		return keymap.Record{}, errorf(ErrUnsupported, "wrapped %s keys: only AES and HMAC keys are unwrapped into the token", alg)
	}
	if len(wrapped) == 0 {
		return keymap.Record{}, errorf(ErrInvalid, "no wrapped key material")
	}
	// Tokens do not all record the length of what they unwrap (SoftHSM2 leaves CKA_VALUE_LEN 0 and
	// refuses it in the template), so it is given: the request's Cryptographic Length, else what
	// AES key wrap's output implies (exactly for RFC 3394; for RFC 5649 one of 8 lengths, of which
	// one at most is an AES key's).
	size := bits / 8
	if size == 0 && len(wrapped)%8 == 0 && (w.Mech == WrapKW || w.Mech == WrapKWP && alg == AES) {
		size = len(wrapped) - 8
	}
	if bits%8 != 0 || size == 0 {
		return keymap.Record{}, errorf(ErrInvalid, "wrapped %s key: give its Cryptographic Length in whole bytes", alg)
	}
	if err := checkSecretSize(alg, 0, size); err != nil {
		return keymap.Record{}, err
	}
	err := r.admitNew(c, &meta)
	if err != nil {
		return keymap.Record{}, err
	}
	kek, t, err := r.wrapKeyRow(c, w, UseUnwrap)
	if err != nil {
		return keymap.Record{}, err
	}
	mech, err := w.mechanism(t)
	if err != nil {
		return keymap.Record{}, err
	}
	flags, err := t.flagsFor(c, &meta)
	if err != nil {
		return keymap.Record{}, err
	}
	tag, err := NewTag()
	if err != nil {
		return keymap.Record{}, err
	}
	kt := secretKeyType(alg)
	kh, err := t.find(ctx, kek.Tag, kindForClass(kek))
	if err != nil {
		return keymap.Record{}, err
	}
	var opErr error
	err = t.do(ctx, func(sh pkcs11.SessionHandle) error {
		h, err := t.ctx.UnwrapKey(sh, mech, kh, wrapped, secretTemplate(tag, meta.Name, kt, 0, flags))
		switch ckr(err) {
		case 0:
		case pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_WRAPPED_KEY_INVALID, pkcs11.CKR_ENCRYPTED_DATA_INVALID:
			// SoftHSM2 reports a failed integrity check as CKR_GENERAL_ERROR: the session is fine,
			// and wrong bytes are the client's mistake, not a device fault.
			opErr = err
			return nil
		default:
			return err
		}
		if err := t.checkUnwrapped(sh, h, alg, size); err != nil {
			_ = t.ctx.DestroyObject(sh, h)
			return err
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, ErrInvalid) {
			return keymap.Record{}, err // the unwrapped key's size, worded by checkUnwrapped
		}
		return keymap.Record{}, wrapErr(err, kek, w, "unwrap")
	}
	if opErr != nil {
		return keymap.Record{}, errorf(ErrNotAuthentic, "unwrap: the wrapped key does not unwrap under %q with %s", kek.ID, w.Mech)
	}
	as, _ := json.Marshal(wrappedAs{Key: kek.ID, Mech: uint8(w.Mech), Hash: uint(w.Hash)})
	meta.Attrs = withAttr(meta.Attrs, AttrWrappedAs, string(as))
	rec := newRecord(tag, false, t.cfg.Name, keymap.SecretKey, alg, size*8, nil, meta)
	return rec, r.put(rec)
}
