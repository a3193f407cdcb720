package signer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"fmt"
	"math/big"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/p11bridge/p11bridge/keymap"
)

// KeyIdentifier is the X.509 SubjectKeyIdentifier of pub by RFC 5280 method 1: SHA-1 over the
// subjectPublicKey BIT STRING contents (PKCS#1 RSAPublicKey for RSA, the uncompressed point for EC).
func KeyIdentifier(pub crypto.PublicKey) ([]byte, error) {
	var bits []byte
	switch k := pub.(type) {
	case *rsa.PublicKey:
		bits = x509.MarshalPKCS1PublicKey(k)
	case *ecdsa.PublicKey:
		b, err := k.Bytes()
		if err != nil {
			return nil, errorf(ErrInvalid, "EC public key: %v", err)
		}
		bits = b
	default:
		return nil, errorf(ErrUnsupported, "key identifier of %T", pub)
	}
	sum := sha1.Sum(bits)
	return sum[:], nil
}

// PublicKey returns the public key of a key pair half (or a registered public key), read from the
// token once and cached: tokens hold it, the keymap does not. A public key may always be read by
// whoever may know of its object.
func (r *Registry) PublicKey(ctx context.Context, c Caller, id string) (crypto.PublicKey, error) {
	return r.publicKeyFor(ctx, c, id, UseSee)
}

// publicKeyFor is PublicKey for a use the key model decides on (verify and encrypt on the host).
func (r *Registry) publicKeyFor(ctx context.Context, c Caller, id string, u Use) (crypto.PublicKey, error) {
	row, err := r.row(c, id)
	if err != nil {
		return nil, err
	}
	rec := row.rec
	if err := allow(c, rec, row.f, u, time.Now()); err != nil {
		return nil, err
	}
	t, err := r.tokenOf(rec)
	if err != nil {
		return nil, err
	}
	if rec.Class != keymap.PrivateKey && rec.Class != keymap.PublicKey {
		return nil, errorf(ErrInvalid, "object %q is a %s, not an asymmetric key", id, rec.Class)
	}
	return t.publicKey(ctx, rec.Tag)
}

func (t *Token) publicKey(ctx context.Context, tag []byte) (crypto.PublicKey, error) {
	if pk, ok := t.pubs.Load(string(tag)); ok {
		return pk.(crypto.PublicKey), nil
	}
	h, err := t.find(ctx, tag, kindPublic)
	kind := kindPublic
	if err != nil {
		// An imported private key may stand alone; RSA private objects carry the public part.
		var perr error
		if h, perr = t.find(ctx, tag, kindPrivate); perr != nil {
			return nil, err
		}
		kind = kindPrivate
	}
	var pk crypto.PublicKey
	err = t.do(ctx, func(sh pkcs11.SessionHandle) error {
		var err error
		pk, err = t.readPublic(sh, h, kind)
		return err
	})
	if err != nil {
		return nil, classify(err, fmt.Sprintf("signer %q: read public key %s", t.cfg.Name, hex.EncodeToString(tag)))
	}
	t.pubs.Store(string(tag), pk)
	return pk, nil
}

// readPublic builds the Go public key from the object's attributes; many tokens do not serve
// CKA_PUBLIC_KEY_INFO, so the SPKI is made here.
func (t *Token) readPublic(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, kind objKind) (crypto.PublicKey, error) {
	attrs, err := t.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil)})
	if err != nil {
		return nil, err
	}
	switch keyType(attrs[0].Value) {
	case pkcs11.CKK_RSA:
		a, err := t.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil), pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil)})
		if err != nil {
			return nil, err
		}
		e := new(big.Int).SetBytes(a[1].Value)
		if !e.IsInt64() || e.Int64() > 1<<31-1 || e.Int64() < 3 {
			return nil, errorf(ErrUnsupported, "RSA public exponent out of range")
		}
		k := &rsa.PublicKey{N: new(big.Int).SetBytes(a[0].Value), E: int(e.Int64())}
		if err := CheckRSAPublic(k); err != nil {
			// A key another process or an earlier version put in the token: not used on the host.
			return nil, errorf(ErrUnsupported, "RSA public key in the token: %v", err)
		}
		return k, nil
	case pkcs11.CKK_EC:
		if kind != kindPublic {
			return nil, errorf(ErrNotFound, "EC private key without its public key object")
		}
		a, err := t.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil), pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
		if err != nil {
			return nil, err
		}
		size, err := curveSize(a[0].Value)
		if err != nil {
			return nil, err
		}
		return ecPublic(size, unwrapPoint(a[1].Value, size))
	}
	return nil, errorf(ErrUnsupported, "public key of type %d", keyType(attrs[0].Value))
}

// keyType decodes a CK_ULONG attribute in host byte order.
func keyType(b []byte) uint {
	var v uint
	for i := len(b) - 1; i >= 0; i-- {
		v = v<<8 | uint(b[i])
	}
	return v
}

func curveSize(params []byte) (int, error) {
	var oid asn1.ObjectIdentifier
	if _, err := asn1.Unmarshal(params, &oid); err != nil {
		return 0, errorf(ErrUnsupported, "EC parameters are not a named curve")
	}
	for size, o := range curveOIDs {
		if o.Equal(oid) {
			return size, nil
		}
	}
	return 0, errorf(ErrUnsupported, "EC curve %v", oid)
}

// unwrapPoint strips the DER OCTET STRING that PKCS#11 v2.20+ tokens (SoftHSM among them) put
// around CKA_EC_POINT; some tokens return the raw point.
func unwrapPoint(p []byte, size int) []byte {
	raw := 1 + 2*((size+7)/8)
	if len(p) == raw && p[0] == 4 {
		return p
	}
	var inner []byte
	if rest, err := asn1.Unmarshal(p, &inner); err == nil && len(rest) == 0 {
		return inner
	}
	return p
}

// MarshalSPKI exports a public key as a DER SubjectPublicKeyInfo.
func MarshalSPKI(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, errorf(ErrInvalid, "SubjectPublicKeyInfo: %v", err)
	}
	return der, nil
}
