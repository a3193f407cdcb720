package ttlv

import (
	"github.com/gemalto/kmip-go/kmip14"
	tt "github.com/gemalto/kmip-go/ttlv"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/signer"
)

// Key wrapping (Get with a Key Wrapping Specification, Register of a wrapped Key Block): the
// token wraps and unwraps (signer/export.go), so the key material is wrapped alone — the No
// Encoding option. TTLV encoding would wrap a structure built around the key in plaintext on the
// host, which is what wrapping in the token avoids.

// keyInfo is an Encryption Key Information structure.
type keyInfo struct {
	UID    *uidRef       `kmip:"UniqueIdentifier,required"`
	Params *cryptoParams `kmip:"CryptographicParameters"`
}

// keyWrapping is a Key Wrapping Specification (request) or Key Wrapping Data (key block).
type keyWrapping struct {
	Method   uint32   `kmip:"WrappingMethod,required"`
	EncKey   *keyInfo `kmip:"EncryptionKeyInformation"`
	MACKey   *node    `kmip:"MACSignatureKeyInformation"`
	MAC      []byte   `kmip:"MACSignature"`
	IV       []byte   `kmip:"IVCounterNonce"`
	Names    []*node  `kmip:"AttributeName"`
	Encoding *uint32  `kmip:"EncodingOption"`
}

// keyWrappingData is the Key Wrapping Data of a wrapped key block in an answer: what the client
// asked, as done.
type keyWrappingData struct {
	Method   uint32        `kmip:"WrappingMethod"`
	EncKey   *keyInfoReply `kmip:"EncryptionKeyInformation"`
	Encoding *uint32       `kmip:"EncodingOption"`
}

type keyInfoReply struct {
	UID    string        `kmip:"UniqueIdentifier"`
	Params *cryptoParams `kmip:"CryptographicParameters"`
}

// wrapping turns a Key Wrapping Specification (or Data) into the registry's Wrapping: the
// wrapping key (resolved like any identifier of the batch) and the mechanism from its
// Cryptographic Parameters, or from the wrapping key's own attribute when the request has none.
func (o *op) wrapping(w *keyWrapping) (signer.Wrapping, *cryptoParams, error) {
	if w.Method != uint32(kmip14.WrappingMethodEncrypt) {
		return signer.Wrapping{}, nil, kerr(rFeature, "wrapping method %s is not supported (Encrypt is)", tagEnumName(kmip14.TagWrappingMethod, w.Method))
	}
	if w.MACKey != nil || w.MAC != nil {
		return signer.Wrapping{}, nil, kerr(rFeature, "MAC or signature of wrapped keys is not supported")
	}
	if w.EncKey == nil {
		return signer.Wrapping{}, nil, kerr(rMissing, "the key wrapping has no Encryption Key Information")
	}
	if w.Encoding != nil && *w.Encoding != uint32(kmip14.EncodingOptionNoEncoding) {
		return signer.Wrapping{}, nil, kerr(rFeature, "wrapping with %s is not supported: the token wraps the key material alone (No Encoding)", tagEnumName(kmip14.TagEncodingOption, *w.Encoding))
	}
	key := o.key
	id, err := o.resolve(w.EncKey.UID)
	o.key = key
	if err != nil {
		return signer.Wrapping{}, nil, err
	}
	params := w.EncKey.Params
	if params == nil {
		// Like the cryptographic operations: the wrapping key's Cryptographic Parameters attribute.
		if rec, err := o.s.reg.Access(o.caller, id, signer.UseSee); err == nil {
			if vals := o.s.stored(rec, def(kmip14.TagCryptographicParameters), ""); len(vals) > 0 && vals[0] != nil {
				p := cryptoParams{}
				if decodeStruct(vals[0], &p) == nil {
					params = &p
				}
			}
		}
	}
	out := signer.Wrapping{Key: id}
	switch {
	case params != nil && params.BlockCipherMode != nil:
		switch kmip14.BlockCipherMode(*params.BlockCipherMode) {
		case kmip14.BlockCipherModeNISTKeyWrap:
			out.Mech = signer.WrapKW
		case kmip14.BlockCipherModeAESKeyWrapPadding:
			out.Mech = signer.WrapKWP
		default:
			return signer.Wrapping{}, nil, kerr(rBadParams, "key wrapping with block cipher mode %s is not supported (NISTKeyWrap, AESKeyWrapPadding and RSA-OAEP are)", tagEnumName(kmip14.TagBlockCipherMode, *params.BlockCipherMode))
		}
	case params != nil && params.PaddingMethod != nil:
		if kmip14.PaddingMethod(*params.PaddingMethod) != kmip14.PaddingMethodOAEP {
			return signer.Wrapping{}, nil, kerr(rBadParams, "key wrapping with padding %s is not supported (OAEP is, for RSA keys)", tagEnumName(kmip14.TagPaddingMethod, *params.PaddingMethod))
		}
		out.Mech = signer.WrapOAEP
		h, err := hashOf(params.HashingAlgorithm, 0)
		if err != nil {
			return signer.Wrapping{}, nil, err
		}
		if params.MaskGeneratorHashingAlgorithm != nil {
			mh, err := hashOf(params.MaskGeneratorHashingAlgorithm, 0)
			if err != nil {
				return signer.Wrapping{}, nil, err
			}
			if h != 0 && mh != h {
				return signer.Wrapping{}, nil, kerr(rBadParams, "OAEP with a mask generation hash different from the label hash is not supported")
			}
			h = mh
		}
		out.Hash = h
	default:
		// No word on the mechanism: RSA-OAEP under an RSA key, else AES key wrap with padding.
		out.Mech = signer.WrapKWP
		if rec, err := o.s.reg.Access(o.caller, id, signer.UseSee); err == nil && rec.Algorithm == signer.RSA {
			out.Mech = signer.WrapOAEP
		}
	}
	return out, params, nil
}

// wrappedBlock is the key block of a wrapped key: its format before wrapping, the wrapped bytes
// as the Key Material of the Key Value (No Encoding: the structure holds the wrapped material and
// no attributes; PyKMIP reads no other form, and the KMIP 1.4 wrapping test case answers so), and
// the Key Wrapping Data saying how.
func wrappedBlock(rec keymap.Record, kmipAlg uint32, wrapped []byte, kek string, params *cryptoParams, encoding *uint32) keyObject {
	format := uint32(kmip14.KeyFormatTypeRaw)
	if rec.Class == keymap.PrivateKey {
		format = uint32(kmip14.KeyFormatTypePKCS_8) // what a token wraps of a private key
	}
	kb := keyBlock{FormatType: format, Value: encodeStruct(kmip14.TagKeyValue, keyValue{Material: newBytes(kmip14.TagKeyMaterial, wrapped)}),
		Algorithm: ptr(kmipAlg), Length: ptr(int32(rec.Size))}
	kb.Wrapping = encodeStruct(kmip14.TagKeyWrappingData, keyWrappingData{
		Method: uint32(kmip14.WrappingMethodEncrypt), EncKey: &keyInfoReply{UID: kek, Params: params}, Encoding: encoding,
	})
	return keyObject{KeyBlock: kb}
}

// wrappedMaterial is the wrapped bytes of a Register request's key block: the Key Value itself
// (as Get answers) or the Key Material inside it (as some clients send).
func wrappedMaterial(kb keyBlock) ([]byte, error) {
	switch {
	case kb.Value == nil:
		return nil, kerr(rMissing, "KeyBlock has no KeyValue")
	case kb.Value.Type == tt.TypeByteString:
		return kb.Value.Raw, nil
	}
	if m := kb.Value.find(kmip14.TagKeyMaterial); m != nil && m.Type == tt.TypeByteString {
		return m.Raw, nil
	}
	return nil, kerr(rInvalidField, "a wrapped KeyValue must be a ByteString (or hold its Key Material as one)")
}
