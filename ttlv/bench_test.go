package ttlv

import (
	"context"
	"testing"

	"github.com/gemalto/kmip-go/kmip14"
)

// BenchmarkEncryptMessage measures one AES-GCM Encrypt request through parser, dispatcher and
// handler on the real token (no TLS): the front end's share of a KMIP round trip.
func BenchmarkEncryptMessage(b *testing.B) {
	r := newRaw(b, "raw")
	create := newStruct(0, newEnum(kmip14.TagObjectType, uint32(kmip14.ObjectTypeSymmetricKey)), newStruct(kmip14.TagTemplateAttribute,
		encodeStruct(kmip14.TagAttribute, attr1{Name: "Cryptographic Algorithm", Value: newEnum(kmip14.TagAttributeValue, uint32(kmip14.CryptographicAlgorithmAES))}),
		encodeStruct(kmip14.TagAttribute, attr1{Name: "Cryptographic Length", Value: newInt(kmip14.TagAttributeValue, 256)}),
		encodeStruct(kmip14.TagAttribute, attr1{Name: "Cryptographic Usage Mask", Value: &node{Tag: kmip14.TagAttributeValue, Type: tInt, Raw: newInt(0, 12).Raw}}),
		encodeStruct(kmip14.TagAttribute, attr1{Name: "Activation Date", Value: newDateTime(kmip14.TagAttributeValue, nowMinus(60))})))
	var cr createResponse
	_ = decodeStruct(ok(b, r.call(v14, kmip14.OperationCreate, create)), &cr)
	msg := request(v14, kmip14.OperationEncrypt, newStruct(0, newText(kmip14.TagUniqueIdentifier, cr.UID),
		encodeStruct(kmip14.TagCryptographicParameters, cryptoParams{BlockCipherMode: ptr(uint32(kmip14.BlockCipherModeGCM))}),
		newBytes(kmip14.TagData, make([]byte, 32)))).encode()
	id := env.clients["raw"].identity
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		env.srv.handleMessage(context.Background(), id, msg)
	}
}
