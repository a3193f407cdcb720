package ttlv

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"math/big"
	"strings"
	"testing"

	"github.com/gemalto/kmip-go/kmip14"

	"github.com/p11bridge/p11bridge/signer"
)

// registerKey is a 1.x Register of one RSA key object in format f.
func registerKey(ot kmip14.ObjectType, f kmip14.KeyFormatType, mat *node) *node {
	return newStruct(0, newEnum(kmip14.TagObjectType, uint32(ot)), newStruct(kmip14.TagTemplateAttribute),
		encodeStruct(objectTag[ot], keyObject{KeyBlock: keyBlock{FormatType: uint32(f),
			Value:     encodeStruct(kmip14.TagKeyValue, keyValue{Material: mat}),
			Algorithm: ptr(uint32(kmip14.CryptographicAlgorithmRSA))}}))
}

// TestRegisterRSALimits: registered RSA keys (verified and encrypted to on the host) have at most
// 16,384 bits of modulus and an odd exponent from 3 to 2^31-1, in every format; a private key's
// encoding is bounded before it is parsed.
func TestRegisterRSALimits(t *testing.T) {
	r := newRaw(t, "raw")
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	// An odd number of 16,392 bits: not a real modulus, but the size is what is refused first.
	huge := new(big.Int).Add(new(big.Int).Lsh(big.NewInt(1), signer.MaxRSABits+7), big.NewInt(1))
	pub := func(n *big.Int, e int) []struct {
		f   kmip14.KeyFormatType
		mat *node
	} {
		k := &rsa.PublicKey{N: n, E: e}
		spki, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return []struct {
			f   kmip14.KeyFormatType
			mat *node
		}{
			{kmip14.KeyFormatTypePKCS_1, newBytes(kmip14.TagKeyMaterial, x509.MarshalPKCS1PublicKey(k))},
			{kmip14.KeyFormatTypeX_509, newBytes(kmip14.TagKeyMaterial, spki)},
			{kmip14.KeyFormatTypeTransparentRSAPublicKey, encodeStruct(kmip14.TagKeyMaterial, transparentRSAPublic{Modulus: n, PublicExponent: big.NewInt(int64(e))})},
		}
	}
	for _, c := range []struct {
		what string
		n    *big.Int
		e    int
	}{{"a 16,392-bit modulus", huge, 65537}, {"an even exponent", key.N, 65538}, {"exponent 1", key.N, 1}} {
		for _, m := range pub(c.n, c.e) {
			it := r.call(v14, kmip14.OperationRegister, registerKey(kmip14.ObjectTypePublicKey, m.f, m.mat))
			failed(t, it, rInvalidField)
			if !strings.Contains(*it.ResultMessage, "RSA") {
				t.Errorf("%s in %s: %q does not say why", c.what, tagEnumName(kmip14.TagKeyFormatType, uint32(m.f)), *it.ResultMessage)
			}
		}
	}
	// A key within the limits is taken in every format.
	for _, m := range pub(key.N, 65537) {
		ok(t, r.call(v14, kmip14.OperationRegister, registerKey(kmip14.ObjectTypePublicKey, m.f, m.mat)))
	}
	// Private keys: an encoding over 16 KiB is refused unparsed; a transparent key over the limit
	// before it is validated.
	oversized := newBytes(kmip14.TagKeyMaterial, make([]byte, 20000))
	failed(t, r.call(v14, kmip14.OperationRegister, registerKey(kmip14.ObjectTypePrivateKey, kmip14.KeyFormatTypePKCS_1, oversized)), rInvalidField)
	failed(t, r.call(v14, kmip14.OperationRegister, registerKey(kmip14.ObjectTypePrivateKey, kmip14.KeyFormatTypeTransparentRSAPrivateKey,
		encodeStruct(kmip14.TagKeyMaterial, transparentRSAPrivate{Modulus: huge, PrivateExponent: huge, PublicExponent: big.NewInt(65537), P: huge, Q: huge}))), rInvalidField)
}
