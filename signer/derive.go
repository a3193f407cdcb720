package signer

/*
#include <stdlib.h>

// CK_AES_CBC_ENCRYPT_DATA_PARAMS and CK_KEY_DERIVATION_STRING_DATA of PKCS#11 v2.40, with CK_ULONG
// as unsigned long (the layout gcm.go checks for).
typedef struct {
	unsigned char iv[16];
	unsigned char *pData;
	unsigned long length;
} p11b_cbc_data_params;

typedef struct {
	unsigned char *pData;
	unsigned long ulLen;
} p11b_string_data;
*/
import "C"

import (
	"context"
	"fmt"
	"runtime"
	"unsafe"

	"github.com/miekg/pkcs11"

	"github.com/p11bridge/p11bridge/keymap"
)

// Key derivation inside the token: a new key whose value is the encryption of the client's data
// under a base AES key (CKM_AES_CBC_ENCRYPT_DATA, CKM_AES_ECB_ENCRYPT_DATA), which is what tokens
// offer (SoftHSM2 has no HMAC- or hash-based derivation). The derived value is an encryption of
// chosen data, so the nonce rules apply to the base key as to a client-chosen CBC IV (nonce.go):
// the caller's own unshared key only, and a key of the CBC family.

// Derivation says how to derive: Mode "cbc" (with a 16-byte IV) or "ecb", over Data (a multiple of
// 16 bytes, at least as long as the new key).
type Derivation struct {
	Mode string
	IV   []byte
	Data []byte
}

// AttrDerivedFrom links a derived key to its base key.
const AttrDerivedFrom = "link.derived-from"

// Derive makes a new secret key (spec: AES or HMAC, Size in bits) in the token of base key baseID
// from the encryption of d.Data under it, for c, who must be allowed to derive with the base key.
// The new key belongs to c and may leave the token as a generated key may (newExportable).
func (r *Registry) Derive(ctx context.Context, c Caller, baseID string, d Derivation, spec KeySpec, meta Meta) (keymap.Record, error) {
	if spec.Algorithm != AES && spec.Algorithm != HMAC {
		return keymap.Record{}, errorf(ErrUnsupported, "derived %s keys: the token derives AES and HMAC keys", spec.Algorithm)
	}
	if err := checkSecretSize(spec.Algorithm, 0, spec.Size/8); err != nil || spec.Size%8 != 0 {
		if err == nil {
			err = errorf(ErrInvalid, "a key of %d bits is not whole bytes", spec.Size)
		}
		return keymap.Record{}, err
	}
	base, t, err := r.keyFor(c, baseID, UseDerive, keymap.SecretKey, AES)
	if err != nil {
		return keymap.Record{}, err
	}
	if err := c.clientIV(base); err != nil {
		return keymap.Record{}, fmt.Errorf("derive: the derivation data is chosen like an IV: %w", err)
	}
	if len(d.Data) == 0 || len(d.Data)%16 != 0 || len(d.Data) < spec.Size/8 {
		return keymap.Record{}, errorf(ErrInvalid, "derive: derivation data of %d bytes; it must be whole 16-byte blocks, at least as long as the new key (%d bytes)", len(d.Data), spec.Size/8)
	}
	var mech uint
	switch d.Mode {
	case "cbc":
		if len(d.IV) != 16 {
			return keymap.Record{}, errorf(ErrInvalid, "derive: AES-CBC derivation needs a 16-byte IV, got %d", len(d.IV))
		}
		mech = pkcs11.CKM_AES_CBC_ENCRYPT_DATA
	case "ecb":
		mech = pkcs11.CKM_AES_ECB_ENCRYPT_DATA
	default:
		return keymap.Record{}, errorf(ErrUnsupported, "derive: AES-%s derivation (CBC and ECB are offered)", d.Mode)
	}
	if !t.mechs[mech] {
		return keymap.Record{}, errorf(ErrUnsupported, "derive: signer %q has no AES-%s encryption-based derivation", t.cfg.Name, d.Mode)
	}
	// The derived value is an encryption under the base key, like CBC: the base key serves the CBC
	// family from now on, so a derivation can never stand in for an oracle on GCM ciphertexts.
	if err := r.bindMode(base, ModeCBC); err != nil {
		return keymap.Record{}, err
	}
	err = r.admitNew(c, &meta)
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
	kt := secretKeyType(spec.Algorithm)
	// The data goes to C memory: the mechanism parameters point at it.
	block := newCBlock(C.sizeof_p11b_cbc_data_params + uintptr(len(d.Data)))
	defer block.free()
	dataAt := uintptr(C.sizeof_p11b_cbc_data_params)
	copy(block.bytes(dataAt, uintptr(len(d.Data))), d.Data)
	dataPtr := (*C.uchar)(unsafe.Add(block.p, dataAt))
	var param []byte
	if d.Mode == "cbc" {
		p := (*C.p11b_cbc_data_params)(block.p)
		for i, b := range d.IV {
			p.iv[i] = C.uchar(b)
		}
		p.pData, p.length = dataPtr, C.ulong(len(d.Data))
		param = block.bytes(0, C.sizeof_p11b_cbc_data_params)
	} else {
		p := (*C.p11b_string_data)(block.p)
		p.pData, p.ulLen = dataPtr, C.ulong(len(d.Data))
		param = block.bytes(0, C.sizeof_p11b_string_data)
	}
	err = t.withKey(ctx, base.Tag, kindAES, func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		_, err := t.ctx.DeriveKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, param)}, h, secretTemplate(tag, meta.Name, kt, spec.Size/8, flags))
		return err
	})
	runtime.KeepAlive(block)
	if err != nil {
		if ckr(err) == pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED {
			return keymap.Record{}, errorf(ErrUsage, "object %q cannot derive keys: it was made without Derive Key in its Cryptographic Usage Mask", baseID)
		}
		return keymap.Record{}, classify(err, fmt.Sprintf("signer %q: derive from %s", t.cfg.Name, baseID))
	}
	meta.Attrs = withAttr(meta.Attrs, AttrDerivedFrom, base.ID)
	rec := newRecord(tag, false, t.cfg.Name, keymap.SecretKey, spec.Algorithm, spec.Size, nil, meta)
	return rec, r.put(rec)
}
