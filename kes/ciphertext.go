package kes

import (
	"github.com/p11bridge/p11bridge/signer"
)

// Ciphertext format v1 (ours; MinIO stores it opaquely):
//
//	0x01 ‖ tag (20 bytes, the CKA_ID of the key version) ‖ IV (12 bytes) ‖ AES-256-GCM ciphertext ‖ GCM tag (16 bytes)
//
// The AAD is aadLabel ‖ 0x01 ‖ tag ‖ len(name) as one byte ‖ name ‖ context, so a ciphertext
// only opens under the version and key name it was made for, with the caller's context.
const (
	formatV1  byte = 0x01
	headerLen      = 1 + signer.TagSize + signer.GCMNonceSize
	// minCiphertext is a header and an empty message's GCM tag.
	minCiphertext = headerLen + signer.GCMTagSize
)

const aadLabel = "p11bridge/kes/ciphertext"

// sealed is a parsed ciphertext.
type sealed struct {
	tag, iv, body []byte
}

// encodeCiphertext lays out a v1 ciphertext.
func encodeCiphertext(tag, iv, body []byte) []byte {
	out := make([]byte, 0, headerLen+len(body))
	out = append(out, formatV1)
	out = append(out, tag...)
	out = append(out, iv...)
	return append(out, body...)
}

// parseCiphertext splits a v1 ciphertext; ok is false for anything else. The caller answers every
// failure with the one "not authentic" sentinel, so nothing tells a prober which part was wrong.
func parseCiphertext(b []byte) (sealed, bool) {
	if len(b) < minCiphertext || b[0] != formatV1 {
		return sealed{}, false
	}
	return sealed{
		tag:  b[1 : 1+signer.TagSize],
		iv:   b[1+signer.TagSize : headerLen],
		body: b[headerLen:],
	}, true
}

// aad binds a ciphertext to the key name and version besides the caller's context. name is at
// most 80 bytes (validName), so one length byte is enough and the encoding is unambiguous.
func aad(name string, tag, context []byte) []byte {
	out := make([]byte, 0, len(aadLabel)+2+len(tag)+len(name)+len(context))
	out = append(out, aadLabel...)
	out = append(out, formatV1)
	out = append(out, tag...)
	out = append(out, byte(len(name)))
	out = append(out, name...)
	return append(out, context...)
}
