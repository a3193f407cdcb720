package signer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"math/big"

	"github.com/ansel1/merry/v2"
	"github.com/miekg/pkcs11"

	"github.com/p11bridge/p11bridge/keymap"
)

// Material is key material or data a client brings (Import) or gets back (Export).
type Material struct {
	Class     keymap.Class
	Algorithm string           // AES or HMAC for secret keys; RSA or EC for key halves
	Secret    []byte           // secret key value, or the bytes of secret data and opaque objects
	Private   crypto.Signer    // *rsa.PrivateKey or *ecdsa.PrivateKey
	Public    crypto.PublicKey // *rsa.PublicKey or *ecdsa.PublicKey
	Cert      []byte           // X.509 DER
	// Hash is the hash an HMAC key is for (its shortest length is the hash's), 0 if not known.
	Hash crypto.Hash
	// Via says how Export took the material out of the token (ViaWrapped, ViaValue, ViaPublic).
	Via string
}

// AttrExportable marks an object whose material may leave the token (KMIP Get): ExportRegistered
// for what a client registered, ExportByPolicy for a key made exportable under the export right
// (access.go, mayExport).
const AttrExportable = "p11.exportable"

// MaxSecretData bounds a Secret Data or Opaque object: passwords, seeds and database master keys
// (MongoDB's are 96 bytes) are far smaller, and each is a token object.
const MaxSecretData = 64 << 10

// checkSecretSize refuses secret key lengths (bytes) the token would not take for alg, naming the
// ones it takes. hash narrows an HMAC key's shortest length (the hash's length; tokens refuse
// shorter HMAC keys, SoftHSM2 among them), 0 when unknown.
func checkSecretSize(alg string, hash crypto.Hash, n int) error {
	switch alg {
	case AES:
		if n != 16 && n != 24 && n != 32 {
			return errorf(ErrInvalid, "an AES key is 16, 24 or 32 bytes (128, 192 or 256 bits), not %d bytes", n)
		}
	case HMAC:
		min := 20
		if hash != 0 {
			min = hash.Size()
		}
		if n < min || n > 512 {
			name := "an HMAC key"
			if hash != 0 {
				name = "an HMAC-" + hash.String() + " key"
			}
			return errorf(ErrInvalid, "%s is %d to 512 bytes, not %d bytes", name, min, n)
		}
	default:
		return errorf(ErrInvalid, "secret keys are AES or HMAC, not %q", alg)
	}
	return nil
}

// Import stores client-supplied material in a token (C_CreateObject). The client knew it already, so
// with exportable it may be given back (Get); otherwise it is not extractable like a generated key.
// Either way secret and private keys are sensitive where the token can wrap them out (export.go).
// A private key gets its public object under the same tag, so verify, export of the public key and
// rebuild from the token work as for generated pairs.
func (r *Registry) Import(ctx context.Context, c Caller, m Material, meta Meta, exportable bool, signer string) (keymap.Record, error) {
	err := r.admitNew(c, &meta)
	if err != nil {
		return keymap.Record{}, err
	}
	t, err := r.target(signer)
	if err != nil {
		return keymap.Record{}, err
	}
	var wrap, unwrap bool
	if mask, ok := UsageMask(keymap.Record{Attrs: meta.Attrs}); ok {
		wrap, unwrap = mask&UsageWrapKey != 0, mask&(UsageUnwrapKey|UsageWrapKey) != 0
	}
	tag, err := NewTag()
	if err != nil {
		return keymap.Record{}, err
	}
	base := func(class uint) []*pkcs11.Attribute {
		a := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, meta.Name),
		}
		if class != pkcs11.CKO_DATA {
			a = append(a, pkcs11.NewAttribute(pkcs11.CKA_ID, tag))
		}
		return a
	}
	secretAttrs := func() []*pkcs11.Attribute {
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, !exportable || t.wrapsExports()),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, exportable),
		}
	}
	var templates [][]*pkcs11.Attribute
	var size int
	var kid []byte
	alg := m.Algorithm
	switch m.Class {
	case keymap.SecretKey:
		if err := checkSecretSize(alg, m.Hash, len(m.Secret)); err != nil {
			return keymap.Record{}, fmt.Errorf("import: %w", err)
		}
		switch alg {
		case AES:
			templates = append(templates, append(append(base(pkcs11.CKO_SECRET_KEY), secretAttrs()...),
				pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES), pkcs11.NewAttribute(pkcs11.CKA_VALUE, m.Secret),
				pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true), pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
				pkcs11.NewAttribute(pkcs11.CKA_WRAP, wrap), pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, unwrap)))
		case HMAC:
			templates = append(templates, append(append(base(pkcs11.CKO_SECRET_KEY), secretAttrs()...),
				pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET), pkcs11.NewAttribute(pkcs11.CKA_VALUE, m.Secret),
				pkcs11.NewAttribute(pkcs11.CKA_SIGN, true), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true)))
		default:
			return keymap.Record{}, errorf(ErrInvalid, "import: secret keys are AES or HMAC, not %q", alg)
		}
		size = len(m.Secret) * 8
	case keymap.PrivateKey:
		if m.Private == nil {
			return keymap.Record{}, errorf(ErrInvalid, "import: no private key given")
		}
		priv, err := privateTemplate(m.Private)
		if err != nil {
			return keymap.Record{}, err
		}
		pub, a, n, err := publicTemplate(m.Private.Public())
		if err != nil {
			return keymap.Record{}, err
		}
		alg, size = a, n
		if alg == RSA {
			priv = append(priv, pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, unwrap))
			pub = append(pub, pkcs11.NewAttribute(pkcs11.CKA_WRAP, wrap))
		}
		templates = append(templates,
			append(append(append(base(pkcs11.CKO_PRIVATE_KEY), secretAttrs()...), pkcs11.NewAttribute(pkcs11.CKA_SIGN, true)), priv...),
			append(base(pkcs11.CKO_PUBLIC_KEY), pub...))
		if kid, err = KeyIdentifier(m.Private.Public()); err != nil {
			return keymap.Record{}, err
		}
	case keymap.PublicKey:
		pub, a, n, err := publicTemplate(m.Public)
		if err != nil {
			return keymap.Record{}, err
		}
		alg, size = a, n
		if alg == RSA {
			pub = append(pub, pkcs11.NewAttribute(pkcs11.CKA_WRAP, wrap))
		}
		templates = append(templates, append(base(pkcs11.CKO_PUBLIC_KEY), pub...))
		if kid, err = KeyIdentifier(m.Public); err != nil {
			return keymap.Record{}, err
		}
	case keymap.Certificate:
		c, err := x509.ParseCertificate(m.Cert)
		if err != nil {
			return keymap.Record{}, errorf(ErrInvalid, "import: not an X.509 certificate: %v", err)
		}
		serial, _ := asn1.Marshal(c.SerialNumber)
		templates = append(templates, append(base(pkcs11.CKO_CERTIFICATE),
			pkcs11.NewAttribute(pkcs11.CKA_CERTIFICATE_TYPE, pkcs11.CKC_X_509),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, m.Cert),
			pkcs11.NewAttribute(pkcs11.CKA_SUBJECT, c.RawSubject),
			pkcs11.NewAttribute(pkcs11.CKA_ISSUER, c.RawIssuer),
			pkcs11.NewAttribute(pkcs11.CKA_SERIAL_NUMBER, serial)))
		kid, _ = KeyIdentifier(c.PublicKey)
		exportable = true
		alg = ""
	case keymap.SecretData, keymap.Opaque:
		if len(m.Secret) == 0 || len(m.Secret) > MaxSecretData {
			return keymap.Record{}, errorf(ErrInvalid, "import: %s of %d bytes; it holds 1 to %d bytes", m.Class, len(m.Secret), MaxSecretData)
		}
		templates = append(templates, append(base(pkcs11.CKO_DATA),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, dataApplication(tag)),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, m.Secret)))
		exportable = true
		alg = ""
	default:
		return keymap.Record{}, errorf(ErrInvalid, "import: unsupported object class %q", m.Class)
	}
	var made []pkcs11.ObjectHandle
	err = t.do(ctx, func(sh pkcs11.SessionHandle) error {
		made = made[:0]
		for _, tmpl := range templates {
			h, err := t.ctx.CreateObject(sh, tmpl)
			if err != nil {
				for _, h := range made {
					_ = t.ctx.DestroyObject(sh, h)
				}
				return err
			}
			made = append(made, h)
		}
		return nil
	})
	if err != nil {
		return keymap.Record{}, classify(err, fmt.Sprintf("signer %q: import %s", t.cfg.Name, m.Class))
	}
	for i, h := range made {
		t.remember(handleKey{string(tag), kindOfTemplate(templates[i])}, h)
	}
	rec := newRecord(tag, false, t.cfg.Name, m.Class, alg, size, kid, meta)
	if exportable {
		rec.Attrs = withAttr(rec.Attrs, AttrExportable, ExportRegistered)
	}
	if meta.newKES {
		return rec, r.putKES(ctx, t, rec)
	}
	return rec, r.put(rec)
}

// Limits of RSA keys the registry takes in. Verification and OAEP encryption run on the host, in
// time that grows with the square of the modulus and with the exponent's length: a registered
// key of a few megabits would make each Verify a denial of service.
const (
	MaxRSABits     = 16384
	MaxRSAExponent = 1<<31 - 1 // as crypto/rsa accepts
)

// CheckRSAPublic refuses an RSA public key over the limits, or one no RSA operation accepts: the
// modulus at most MaxRSABits, the exponent odd, from 3 to MaxRSAExponent.
func CheckRSAPublic(k *rsa.PublicKey) error {
	if k.N == nil || k.N.Sign() <= 0 {
		return errorf(ErrInvalid, "RSA public key without a positive modulus")
	}
	if n := k.N.BitLen(); n > MaxRSABits {
		return errorf(ErrInvalid, "RSA modulus of %d bits exceeds the limit of %d bits", n, MaxRSABits)
	}
	if k.E < 3 || k.E > MaxRSAExponent || k.E%2 == 0 {
		return errorf(ErrInvalid, "RSA public exponent %d: it must be odd, from 3 to %d", k.E, MaxRSAExponent)
	}
	return nil
}

func publicTemplate(pub crypto.PublicKey) ([]*pkcs11.Attribute, string, int, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if err := CheckRSAPublic(k); err != nil {
			return nil, "", 0, merry.Prepend(err, "import")
		}
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS, k.N.Bytes()),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, big.NewInt(int64(k.E)).Bytes()),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
		}, RSA, k.N.BitLen(), nil
	case *ecdsa.PublicKey:
		size := k.Curve.Params().BitSize
		oid := curveOIDs[size]
		if oid == nil {
			return nil, "", 0, errorf(ErrUnsupported, "import: EC curve %s", k.Curve.Params().Name)
		}
		params, _ := asn1.Marshal(oid)
		raw, err := k.Bytes()
		if err != nil {
			return nil, "", 0, errorf(ErrInvalid, "import: %v", err)
		}
		point, _ := asn1.Marshal(raw)
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
			pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, point),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		}, EC, size, nil
	}
	return nil, "", 0, errorf(ErrUnsupported, "import: public key of type %T", pub)
}

func privateTemplate(priv crypto.Signer) ([]*pkcs11.Attribute, error) {
	switch k := priv.(type) {
	case *rsa.PrivateKey:
		if len(k.Primes) != 2 {
			return nil, errorf(ErrUnsupported, "import: multi-prime RSA keys")
		}
		k.Precompute()
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS, k.N.Bytes()),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, big.NewInt(int64(k.E)).Bytes()),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE_EXPONENT, k.D.Bytes()),
			pkcs11.NewAttribute(pkcs11.CKA_PRIME_1, k.Primes[0].Bytes()),
			pkcs11.NewAttribute(pkcs11.CKA_PRIME_2, k.Primes[1].Bytes()),
			pkcs11.NewAttribute(pkcs11.CKA_EXPONENT_1, k.Precomputed.Dp.Bytes()),
			pkcs11.NewAttribute(pkcs11.CKA_EXPONENT_2, k.Precomputed.Dq.Bytes()),
			pkcs11.NewAttribute(pkcs11.CKA_COEFFICIENT, k.Precomputed.Qinv.Bytes()),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
		}, nil
	case *ecdsa.PrivateKey:
		size := k.Curve.Params().BitSize
		oid := curveOIDs[size]
		if oid == nil {
			return nil, errorf(ErrUnsupported, "import: EC curve %s", k.Curve.Params().Name)
		}
		params, _ := asn1.Marshal(oid)
		d, err := k.Bytes()
		if err != nil {
			return nil, errorf(ErrInvalid, "import: %v", err)
		}
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, d),
		}, nil
	}
	return nil, errorf(ErrUnsupported, "import: private key of type %T", priv)
}

func (t *Token) readPrivate(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, rec keymap.Record) (crypto.Signer, error) {
	if rec.Algorithm == RSA {
		a, err := t.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil), pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE_EXPONENT, nil), pkcs11.NewAttribute(pkcs11.CKA_PRIME_1, nil),
			pkcs11.NewAttribute(pkcs11.CKA_PRIME_2, nil)})
		if err != nil {
			return nil, err
		}
		n := func(i int) *big.Int { return new(big.Int).SetBytes(a[i].Value) }
		k := &rsa.PrivateKey{PublicKey: rsa.PublicKey{N: n(0), E: int(n(1).Int64())}, D: n(2), Primes: []*big.Int{n(3), n(4)}}
		if err := k.Validate(); err != nil {
			return nil, errorf(ErrUnavailable, "RSA key read from the token does not validate: %v", err)
		}
		k.Precompute()
		return k, nil
	}
	a, err := t.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil), pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
	if err != nil {
		return nil, err
	}
	size, err := curveSize(a[0].Value)
	if err != nil {
		return nil, err
	}
	k, err := ecdsa.ParseRawPrivateKey(curves[size], a[1].Value)
	if err != nil {
		return nil, errorf(ErrUnavailable, "EC key read from the token: %v", err)
	}
	return k, nil
}
