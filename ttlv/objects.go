package ttlv

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"math/big"
	"strconv"

	"github.com/gemalto/kmip-go/kmip14"
	tt "github.com/gemalto/kmip-go/ttlv"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/signer"
)

// Managed object structures (KMIP 1.0–2.0 §2.2).

type keyBlock struct {
	FormatType  uint32  `kmip:"KeyFormatType,required"`
	Compression *uint32 `kmip:"KeyCompressionType"`
	Value       *node   `kmip:"KeyValue"`
	Algorithm   *uint32 `kmip:"CryptographicAlgorithm"`
	Length      *int32  `kmip:"CryptographicLength"`
	Wrapping    *node   `kmip:"KeyWrappingData"`
}

type keyValue struct {
	Material   *node   `kmip:"KeyMaterial,required"`
	Attributes []*node `kmip:"Attribute"`
}

type keyObject struct {
	KeyBlock keyBlock `kmip:"KeyBlock,required"`
}

type secretDataObject struct {
	Type     uint32   `kmip:"SecretDataType,required"`
	KeyBlock keyBlock `kmip:"KeyBlock,required"`
}

type certificateObject struct {
	Type  uint32 `kmip:"CertificateType,required"`
	Value []byte `kmip:"CertificateValue,required"`
}

type opaqueObject struct {
	Type  uint32 `kmip:"OpaqueDataType,required"`
	Value []byte `kmip:"OpaqueDataValue,required"`
}

type transparentSymmetric struct {
	Key []byte `kmip:"Key,required"`
}

type transparentRSAPublic struct {
	Modulus        *big.Int `kmip:"Modulus,required"`
	PublicExponent *big.Int `kmip:"PublicExponent,required"`
}

type transparentRSAPrivate struct {
	Modulus         *big.Int `kmip:"Modulus,required"`
	PrivateExponent *big.Int `kmip:"PrivateExponent"`
	PublicExponent  *big.Int `kmip:"PublicExponent"`
	P               *big.Int `kmip:"P"`
	Q               *big.Int `kmip:"Q"`
	PrimeExponentP  *big.Int `kmip:"PrimeExponentP"`
	PrimeExponentQ  *big.Int `kmip:"PrimeExponentQ"`
	CRTCoefficient  *big.Int `kmip:"CRTCoefficient"`
}

type transparentECPublic struct {
	Curve   uint32 `kmip:"RecommendedCurve,required"`
	QString []byte `kmip:"QString,required"`
}

type transparentECPrivate struct {
	Curve uint32   `kmip:"RecommendedCurve,required"`
	D     *big.Int `kmip:"D,required"`
}

// objectTag is the payload tag of each object type.
var objectTag = map[kmip14.ObjectType]tt.Tag{
	kmip14.ObjectTypeSymmetricKey: kmip14.TagSymmetricKey,
	kmip14.ObjectTypePublicKey:    kmip14.TagPublicKey,
	kmip14.ObjectTypePrivateKey:   kmip14.TagPrivateKey,
	kmip14.ObjectTypeCertificate:  kmip14.TagCertificate,
	kmip14.ObjectTypeSecretData:   kmip14.TagSecretData,
	kmip14.ObjectTypeOpaqueObject: kmip14.TagOpaqueObject,
}

var curveEnums = map[elliptic.Curve]kmip14.RecommendedCurve{
	elliptic.P256(): kmip14.RecommendedCurveP_256,
	elliptic.P384(): kmip14.RecommendedCurveP_384,
	elliptic.P521(): kmip14.RecommendedCurveP_521,
}

func curveOf(e uint32) elliptic.Curve {
	for c, v := range curveEnums {
		if uint32(v) == e {
			return c
		}
	}
	return nil
}

// Keys under which Register remembers how an object came, so Get returns it the same way.
const (
	attrFormat         = attrPrefix + "KeyFormatType"
	attrSecretDataType = attrPrefix + "SecretDataType"
	attrOpaqueDataType = attrPrefix + "OpaqueDataType"
)

// registered is what Register extracts from a managed object.
type registered struct {
	m         signer.Material
	format    uint32
	kmipAlg   uint32 // as the client named it (HMAC-SHA384, ECDSA, …), 0 if none
	length    int32
	extra     map[string]string
	objectTyp kmip14.ObjectType
	// wrapped is the material of a wrapped key block and wrapping how it was wrapped (nil when
	// the block is not wrapped).
	wrapped  []byte
	wrapping *keyWrapping
}

// parseObject decodes the managed object of a Register request.
func parseObject(ot kmip14.ObjectType, n *node) (*registered, error) {
	if n == nil {
		return nil, kerr(rMissing, "Register: no %s object in the request", tagName(objectTag[ot]))
	}
	r := &registered{objectTyp: ot, extra: map[string]string{}}
	switch ot {
	case kmip14.ObjectTypeCertificate:
		var c certificateObject
		if err := decodeStruct(n, &c); err != nil {
			return nil, err
		}
		if c.Type != uint32(kmip14.CertificateTypeX_509) {
			return nil, kerr(rFeature, "only X.509 certificates are supported, not %s", tagEnumName(kmip14.TagCertificateType, c.Type))
		}
		r.m = signer.Material{Class: keymap.Certificate, Cert: c.Value}
		return r, nil
	case kmip14.ObjectTypeOpaqueObject:
		var o opaqueObject
		if err := decodeStruct(n, &o); err != nil {
			return nil, err
		}
		r.m = signer.Material{Class: keymap.Opaque, Secret: o.Value}
		r.extra[attrOpaqueDataType] = strconv.FormatUint(uint64(o.Type), 10)
		return r, nil
	case kmip14.ObjectTypeSecretData:
		var o secretDataObject
		if err := decodeStruct(n, &o); err != nil {
			return nil, err
		}
		b, err := rawMaterial(o.KeyBlock)
		if err != nil {
			return nil, err
		}
		r.m = signer.Material{Class: keymap.SecretData, Secret: b}
		r.format = o.KeyBlock.FormatType
		r.extra[attrSecretDataType] = strconv.FormatUint(uint64(o.Type), 10)
		return r, nil
	case kmip14.ObjectTypeSymmetricKey, kmip14.ObjectTypePublicKey, kmip14.ObjectTypePrivateKey:
	default:
		return nil, kerr(rFeature, "objects of type %s are not supported", tagEnumName(kmip14.TagObjectType, uint32(ot)))
	}
	var k keyObject
	if err := decodeStruct(n, &k); err != nil {
		return nil, err
	}
	kb := k.KeyBlock
	if kb.Wrapping != nil {
		// Unwrapped into the token by the registry (registerWrapped).
		if ot != kmip14.ObjectTypeSymmetricKey {
			return nil, kerr(rFeature, "wrapped %s material is not supported (wrapped symmetric keys are)", tagEnumName(kmip14.TagObjectType, uint32(ot)))
		}
		var w keyWrapping
		if err := decodeStruct(kb.Wrapping, &w); err != nil {
			return nil, err
		}
		b, err := wrappedMaterial(kb)
		if err != nil {
			return nil, err
		}
		r.wrapped, r.wrapping, r.format = b, &w, kb.FormatType
		if kb.Algorithm != nil {
			r.kmipAlg = *kb.Algorithm
		}
		if kb.Length != nil {
			r.length = *kb.Length
		}
		r.m = signer.Material{Class: keymap.SecretKey}
		return r, nil
	}
	if kb.Value == nil {
		return nil, kerr(rMissing, "KeyBlock has no KeyValue")
	}
	if kb.Value.Type != tt.TypeStructure {
		return nil, kerr(rInvalidField, "KeyValue must be a structure (wrapped keys are not supported)")
	}
	var kv keyValue
	if err := decodeStruct(kb.Value, &kv); err != nil {
		return nil, err
	}
	r.format = kb.FormatType
	if kb.Algorithm != nil {
		r.kmipAlg = *kb.Algorithm
	}
	if kb.Length != nil {
		r.length = *kb.Length
	}
	var err error
	switch ot {
	case kmip14.ObjectTypeSymmetricKey:
		err = r.parseSymmetric(kv.Material)
	case kmip14.ObjectTypePublicKey:
		err = r.parsePublic(kv.Material)
	case kmip14.ObjectTypePrivateKey:
		err = r.parsePrivate(kv.Material)
	}
	return r, err
}

// rawMaterial is the byte-string key material of a Raw or Opaque key block.
func rawMaterial(kb keyBlock) ([]byte, error) {
	if kb.Value == nil || kb.Value.Type != tt.TypeStructure {
		return nil, kerr(rInvalidField, "KeyValue must be a structure holding KeyMaterial")
	}
	var kv keyValue
	if err := decodeStruct(kb.Value, &kv); err != nil {
		return nil, err
	}
	if kv.Material.Type != tt.TypeByteString {
		return nil, kerr(rInvalidField, "KeyMaterial of format %s must be a ByteString", tagEnumName(kmip14.TagKeyFormatType, kb.FormatType))
	}
	return kv.Material.Raw, nil
}

func badFormat(what string, f uint32) error {
	return kerr(rFormat, "key format %s is not supported for %s", tagEnumName(kmip14.TagKeyFormatType, f), what)
}

func (r *registered) parseSymmetric(mat *node) error {
	var key []byte
	switch kmip14.KeyFormatType(r.format) {
	case kmip14.KeyFormatTypeRaw, kmip14.KeyFormatTypeOpaque:
		if mat.Type != tt.TypeByteString {
			return kerr(rInvalidField, "KeyMaterial must be a ByteString")
		}
		key = mat.Raw
	case kmip14.KeyFormatTypeTransparentSymmetricKey:
		var t transparentSymmetric
		if err := decodeStruct(mat, &t); err != nil {
			return err
		}
		key = t.Key
	default:
		return badFormat("symmetric keys", r.format)
	}
	alg, err := symmetricAlgorithm(r.kmipAlg)
	if err != nil {
		return err
	}
	if r.length != 0 && int(r.length) != 8*len(key) {
		return kerr(rInvalidField, "the key block's Cryptographic Length (%d) is not the key's (%d bits)", r.length, 8*len(key))
	}
	r.m = signer.Material{Class: keymap.SecretKey, Algorithm: alg, Secret: append([]byte(nil), key...), Hash: hmacHash(r.kmipAlg)}
	return nil
}

// hmacHash is the hash an HMAC algorithm names (0 for others): an HMAC key is at least as long.
func hmacHash(a uint32) crypto.Hash {
	switch kmip14.CryptographicAlgorithm(a) {
	case kmip14.CryptographicAlgorithmHMAC_SHA1:
		return crypto.SHA1
	case kmip14.CryptographicAlgorithmHMAC_SHA224:
		return crypto.SHA224
	case kmip14.CryptographicAlgorithmHMAC_SHA256:
		return crypto.SHA256
	case kmip14.CryptographicAlgorithmHMAC_SHA384:
		return crypto.SHA384
	case kmip14.CryptographicAlgorithmHMAC_SHA512:
		return crypto.SHA512
	}
	return 0
}

// symmetricAlgorithm maps a KMIP algorithm to the registry's secret key algorithms.
func symmetricAlgorithm(a uint32) (string, error) {
	switch kmip14.CryptographicAlgorithm(a) {
	case kmip14.CryptographicAlgorithmAES:
		return signer.AES, nil
	case kmip14.CryptographicAlgorithmHMAC_SHA1, kmip14.CryptographicAlgorithmHMAC_SHA224, kmip14.CryptographicAlgorithmHMAC_SHA256,
		kmip14.CryptographicAlgorithmHMAC_SHA384, kmip14.CryptographicAlgorithmHMAC_SHA512:
		return signer.HMAC, nil
	case 0:
		return "", kerr(rMissing, "a symmetric key needs a Cryptographic Algorithm")
	}
	return "", kerr(rFeature, "symmetric keys of algorithm %s are not supported (AES and HMAC-SHA* are)", tagEnumName(kmip14.TagCryptographicAlgorithm, a))
}

func (r *registered) parsePublic(mat *node) error {
	var pub crypto.PublicKey
	var err error
	switch kmip14.KeyFormatType(r.format) {
	case kmip14.KeyFormatTypePKCS_1:
		pub, err = x509.ParsePKCS1PublicKey(mat.Raw)
	case kmip14.KeyFormatTypeX_509:
		pub, err = x509.ParsePKIXPublicKey(mat.Raw)
	case kmip14.KeyFormatTypeTransparentRSAPublicKey:
		var t transparentRSAPublic
		if err := decodeStruct(mat, &t); err != nil {
			return err
		}
		if !t.PublicExponent.IsInt64() || t.PublicExponent.Int64() < 3 || t.PublicExponent.Int64() > 1<<31-1 {
			return kerr(rInvalidField, "RSA public exponent out of range")
		}
		pub = &rsa.PublicKey{N: t.Modulus, E: int(t.PublicExponent.Int64())}
	case kmip14.KeyFormatTypeTransparentECPublicKey, kmip14.KeyFormatTypeTransparentECDSAPublicKey:
		var t transparentECPublic
		if err := decodeStruct(mat, &t); err != nil {
			return err
		}
		c := curveOf(t.Curve)
		if c == nil {
			return kerr(rFeature, "curve %s is not supported", tagEnumName(kmip14.TagRecommendedCurve, t.Curve))
		}
		pub, err = ecdsa.ParseUncompressedPublicKey(c, t.QString)
	default:
		return badFormat("public keys", r.format)
	}
	if err == nil && mat.Type != tt.TypeByteString && (r.format == uint32(kmip14.KeyFormatTypePKCS_1) || r.format == uint32(kmip14.KeyFormatTypeX_509)) {
		err = fmt.Errorf("KeyMaterial must be a ByteString")
	}
	if k, ok := pub.(*rsa.PublicKey); ok && err == nil {
		err = signer.CheckRSAPublic(k)
	}
	if err != nil {
		return kerr(rInvalidField, "public key in format %s: %v", tagEnumName(kmip14.TagKeyFormatType, r.format), err)
	}
	r.m = signer.Material{Class: keymap.PublicKey, Public: pub}
	return nil
}

// maxPrivateKeyDER bounds an encoded private key before it is parsed: parsing validates and
// precomputes an RSA key, in time that grows with its size. An RSA key of MaxRSABits takes about
// 9.3 KB in PKCS#1.
const maxPrivateKeyDER = 16 << 10

func (r *registered) parsePrivate(mat *node) error {
	var priv any
	var err error
	if mat.Type == tt.TypeByteString && len(mat.Raw) > maxPrivateKeyDER {
		return kerr(rInvalidField, "a private key of %d bytes exceeds the limit of %d bytes (RSA keys up to %d bits)", len(mat.Raw), maxPrivateKeyDER, signer.MaxRSABits)
	}
	switch kmip14.KeyFormatType(r.format) {
	case kmip14.KeyFormatTypePKCS_1, kmip14.KeyFormatTypePKCS_8, kmip14.KeyFormatTypeECPrivateKey:
		if mat.Type != tt.TypeByteString {
			return kerr(rInvalidField, "KeyMaterial of format %s must be a ByteString", tagEnumName(kmip14.TagKeyFormatType, r.format))
		}
		priv, err = parsePrivateDER(kmip14.KeyFormatType(r.format), mat.Raw)
	case kmip14.KeyFormatTypeTransparentRSAPrivateKey:
		var t transparentRSAPrivate
		if err := decodeStruct(mat, &t); err != nil {
			return err
		}
		priv, err = rsaFromTransparent(t)
	case kmip14.KeyFormatTypeTransparentECPrivateKey, kmip14.KeyFormatTypeTransparentECDSAPrivateKey:
		var t transparentECPrivate
		if err := decodeStruct(mat, &t); err != nil {
			return err
		}
		c := curveOf(t.Curve)
		if c == nil {
			return kerr(rFeature, "curve %s is not supported", tagEnumName(kmip14.TagRecommendedCurve, t.Curve))
		}
		size := (c.Params().BitSize + 7) / 8
		if t.D.Sign() <= 0 || len(t.D.Bytes()) > size {
			return kerr(rInvalidField, "EC private value out of range")
		}
		priv, err = ecdsa.ParseRawPrivateKey(c, t.D.FillBytes(make([]byte, size)))
	default:
		return badFormat("private keys", r.format)
	}
	if err != nil {
		return kerr(rInvalidField, "private key in format %s: %v", tagEnumName(kmip14.TagKeyFormatType, r.format), err)
	}
	s, ok := priv.(crypto.Signer)
	if !ok {
		return kerr(rFeature, "private keys of type %T are not supported", priv)
	}
	switch s.(type) {
	case *rsa.PrivateKey, *ecdsa.PrivateKey:
	default:
		return kerr(rFeature, "private keys of type %T are not supported (RSA and EC are)", priv)
	}
	r.m = signer.Material{Class: keymap.PrivateKey, Private: s}
	return nil
}

// parsePrivateDER reads a DER private key whatever encoding the client labelled it with: clients
// send PKCS#1 bytes as PKCS_8 and SEC1 as PKCS_8 and the other way round (PyKMIP's own examples
// do). The label is tried first; the error of the label's parser is the one reported.
func parsePrivateDER(label kmip14.KeyFormatType, der []byte) (any, error) {
	parsers := map[kmip14.KeyFormatType]func([]byte) (any, error){
		kmip14.KeyFormatTypePKCS_8:       x509.ParsePKCS8PrivateKey,
		kmip14.KeyFormatTypePKCS_1:       func(b []byte) (any, error) { return x509.ParsePKCS1PrivateKey(b) },
		kmip14.KeyFormatTypeECPrivateKey: func(b []byte) (any, error) { return x509.ParseECPrivateKey(b) },
	}
	k, first := parsers[label](der)
	if first == nil {
		return k, nil
	}
	for _, f := range []kmip14.KeyFormatType{kmip14.KeyFormatTypePKCS_8, kmip14.KeyFormatTypePKCS_1, kmip14.KeyFormatTypeECPrivateKey} {
		if f == label {
			continue
		}
		if k, err := parsers[f](der); err == nil {
			return k, nil
		}
	}
	return nil, fmt.Errorf("not a PKCS#8, PKCS#1 or SEC1 private key: %v", first)
}

func rsaFromTransparent(t transparentRSAPrivate) (*rsa.PrivateKey, error) {
	if t.PrivateExponent == nil || t.PublicExponent == nil || t.P == nil || t.Q == nil {
		return nil, fmt.Errorf("a transparent RSA private key needs the public and private exponents and both primes")
	}
	if !t.PublicExponent.IsInt64() || t.PublicExponent.Int64() > 1<<31-1 {
		return nil, fmt.Errorf("public exponent out of range")
	}
	k := &rsa.PrivateKey{PublicKey: rsa.PublicKey{N: t.Modulus, E: int(t.PublicExponent.Int64())}, D: t.PrivateExponent, Primes: []*big.Int{t.P, t.Q}}
	// Checked before Validate, whose cost grows with the numbers' size.
	if err := signer.CheckRSAPublic(&k.PublicKey); err != nil {
		return nil, err
	}
	for _, x := range []*big.Int{t.PrivateExponent, t.P, t.Q} {
		if x.BitLen() > t.Modulus.BitLen() {
			return nil, fmt.Errorf("private values larger than the modulus")
		}
	}
	if err := k.Validate(); err != nil {
		return nil, err
	}
	k.Precompute()
	return k, nil
}

// exportObject renders material for Get in the requested (or the default) key format.
func exportObject(rec keymap.Record, m signer.Material, want *uint32, kmipAlg uint32) (kmip14.ObjectType, *node, error) {
	ot := classTypes[rec.Class]
	tag := objectTag[ot]
	stored := func(key string, def uint32) uint32 {
		if s, ok := rec.Attrs[key]; ok {
			if v, err := strconv.ParseUint(s, 10, 32); err == nil {
				return uint32(v)
			}
		}
		return def
	}
	format := func(def uint32) uint32 {
		if want != nil {
			return *want
		}
		return stored(attrFormat, def)
	}
	block := func(f uint32, mat *node, withAlg bool) keyObject {
		kb := keyBlock{FormatType: f, Value: encodeStruct(kmip14.TagKeyValue, keyValue{Material: mat})}
		if withAlg {
			kb.Algorithm = ptr(kmipAlg)
			kb.Length = ptr(int32(rec.Size))
		}
		return keyObject{KeyBlock: kb}
	}
	switch rec.Class {
	case keymap.Certificate:
		return ot, encodeStruct(tag, certificateObject{Type: uint32(kmip14.CertificateTypeX_509), Value: m.Cert}), nil
	case keymap.Opaque:
		return ot, encodeStruct(tag, opaqueObject{Type: stored(attrOpaqueDataType, 0x80000001), Value: m.Secret}), nil
	case keymap.SecretData:
		f := format(uint32(kmip14.KeyFormatTypeOpaque))
		if f != uint32(kmip14.KeyFormatTypeOpaque) && f != uint32(kmip14.KeyFormatTypeRaw) {
			return 0, nil, badFormat("secret data", f)
		}
		kb := block(f, newBytes(kmip14.TagKeyMaterial, m.Secret), false)
		return ot, encodeStruct(tag, secretDataObject{Type: stored(attrSecretDataType, uint32(kmip14.SecretDataTypePassword)), KeyBlock: kb.KeyBlock}), nil
	case keymap.SecretKey:
		f := format(uint32(kmip14.KeyFormatTypeRaw))
		var mat *node
		switch kmip14.KeyFormatType(f) {
		case kmip14.KeyFormatTypeRaw, kmip14.KeyFormatTypeOpaque:
			mat = newBytes(kmip14.TagKeyMaterial, m.Secret)
		case kmip14.KeyFormatTypeTransparentSymmetricKey:
			mat = encodeStruct(kmip14.TagKeyMaterial, transparentSymmetric{Key: m.Secret})
		default:
			return 0, nil, badFormat("symmetric keys", f)
		}
		return ot, encodeStruct(tag, block(f, mat, true)), nil
	case keymap.PublicKey:
		def := uint32(kmip14.KeyFormatTypePKCS_1) // what Krill-style clients insist on for RSA
		if _, ok := m.Public.(*ecdsa.PublicKey); ok {
			def = uint32(kmip14.KeyFormatTypeX_509)
		}
		f := format(def)
		mat, err := publicMaterial(m.Public, f)
		if err != nil {
			return 0, nil, err
		}
		return ot, encodeStruct(tag, block(f, mat, true)), nil
	case keymap.PrivateKey:
		f := format(uint32(kmip14.KeyFormatTypePKCS_8))
		mat, err := privateMaterial(m.Private, f)
		if err != nil {
			return 0, nil, err
		}
		return ot, encodeStruct(tag, block(f, mat, true)), nil
	}
	return 0, nil, kerr(rFeature, "objects of class %s cannot be returned", rec.Class)
}

func publicMaterial(pub crypto.PublicKey, f uint32) (*node, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		switch kmip14.KeyFormatType(f) {
		case kmip14.KeyFormatTypePKCS_1:
			return newBytes(kmip14.TagKeyMaterial, x509.MarshalPKCS1PublicKey(k)), nil
		case kmip14.KeyFormatTypeX_509:
			b, err := x509.MarshalPKIXPublicKey(k)
			return newBytes(kmip14.TagKeyMaterial, b), err
		case kmip14.KeyFormatTypeTransparentRSAPublicKey:
			return encodeStruct(kmip14.TagKeyMaterial, transparentRSAPublic{Modulus: k.N, PublicExponent: big.NewInt(int64(k.E))}), nil
		}
		return nil, badFormat("RSA public keys", f)
	case *ecdsa.PublicKey:
		switch kmip14.KeyFormatType(f) {
		case kmip14.KeyFormatTypeX_509:
			b, err := x509.MarshalPKIXPublicKey(k)
			return newBytes(kmip14.TagKeyMaterial, b), err
		case kmip14.KeyFormatTypeTransparentECPublicKey, kmip14.KeyFormatTypeTransparentECDSAPublicKey:
			q, err := k.Bytes()
			if err != nil {
				return nil, err
			}
			return encodeStruct(kmip14.TagKeyMaterial, transparentECPublic{Curve: uint32(curveEnums[k.Curve]), QString: q}), nil
		}
		return nil, badFormat("EC public keys", f)
	}
	return nil, kerr(rFeature, "public keys of type %T", pub)
}

func privateMaterial(priv crypto.Signer, f uint32) (*node, error) {
	switch k := priv.(type) {
	case *rsa.PrivateKey:
		switch kmip14.KeyFormatType(f) {
		case kmip14.KeyFormatTypePKCS_1:
			return newBytes(kmip14.TagKeyMaterial, x509.MarshalPKCS1PrivateKey(k)), nil
		case kmip14.KeyFormatTypePKCS_8:
			b, err := x509.MarshalPKCS8PrivateKey(k)
			return newBytes(kmip14.TagKeyMaterial, b), err
		case kmip14.KeyFormatTypeTransparentRSAPrivateKey:
			k.Precompute()
			return encodeStruct(kmip14.TagKeyMaterial, transparentRSAPrivate{
				Modulus: k.N, PrivateExponent: k.D, PublicExponent: big.NewInt(int64(k.E)), P: k.Primes[0], Q: k.Primes[1],
				PrimeExponentP: k.Precomputed.Dp, PrimeExponentQ: k.Precomputed.Dq, CRTCoefficient: k.Precomputed.Qinv}), nil
		}
		return nil, badFormat("RSA private keys", f)
	case *ecdsa.PrivateKey:
		switch kmip14.KeyFormatType(f) {
		case kmip14.KeyFormatTypePKCS_8:
			b, err := x509.MarshalPKCS8PrivateKey(k)
			return newBytes(kmip14.TagKeyMaterial, b), err
		case kmip14.KeyFormatTypeECPrivateKey:
			b, err := x509.MarshalECPrivateKey(k)
			return newBytes(kmip14.TagKeyMaterial, b), err
		case kmip14.KeyFormatTypeTransparentECPrivateKey, kmip14.KeyFormatTypeTransparentECDSAPrivateKey:
			d, err := k.Bytes()
			if err != nil {
				return nil, err
			}
			return encodeStruct(kmip14.TagKeyMaterial, transparentECPrivate{Curve: uint32(curveEnums[k.Curve]), D: new(big.Int).SetBytes(d)}), nil
		}
		return nil, badFormat("EC private keys", f)
	}
	return nil, kerr(rFeature, "private keys of type %T", priv)
}
