package ttlv

import (
	"fmt"

	"github.com/gemalto/kmip-go/kmip20"
	tt "github.com/gemalto/kmip-go/ttlv"
)

// uidRef is a Unique Identifier as a request carries it: text in every version, or in KMIP 2.0 an
// enumeration naming an identifier produced earlier in the batch.
type uidRef struct {
	text string
	enum kmip20.UniqueIdentifier
}

func (u *uidRef) decodeNode(n *node) error {
	switch n.Type {
	case tt.TypeTextString:
		u.text = n.text()
		if u.text == "" {
			return &decodeError{msg: "UniqueIdentifier is empty"}
		}
	case tt.TypeEnumeration:
		u.enum = kmip20.UniqueIdentifier(n.u32())
	default:
		return &decodeError{msg: fmt.Sprintf("UniqueIdentifier: expected TextString, got %s", typeName(n.Type))}
	}
	return nil
}

func (u uidRef) encodeNode(tag tt.Tag) *node { return newText(tag, u.text) }

// resolve turns a reference into an identifier: the text itself, or what an earlier item of the
// batch produced (the ID Placeholder when the field is absent).
func (o *op) resolve(u *uidRef) (string, error) {
	switch {
	case u != nil && u.text != "":
		o.key = u.text
		return u.text, nil
	case u == nil || u.enum == kmip20.UniqueIdentifierIDPlaceholder:
		if o.b.placeholder == "" {
			return "", kerr(rMissing, "no Unique Identifier given and no earlier batch item set the ID Placeholder")
		}
		o.key = o.b.placeholder
		return o.b.placeholder, nil
	}
	id, ok := o.b.last[u.enum]
	if !ok {
		return "", kerr(rMissing, "no earlier batch item produced a %s identifier", u.enum.String())
	}
	o.key = id
	return id, nil
}

// kName is the value of the Name attribute.
type kName struct {
	Value string `kmip:"NameValue,required"`
	Type  uint32 `kmip:"NameType,required"`
}

// kLink is the value of the Link attribute.
type kLink struct {
	Type uint32 `kmip:"LinkType,required"`
	ID   string `kmip:"LinkedObjectIdentifier,required"`
}

// cryptoParams is the Cryptographic Parameters structure (KMIP 1.0–2.0 fields).
type cryptoParams struct {
	BlockCipherMode               *uint32 `kmip:"BlockCipherMode"`
	PaddingMethod                 *uint32 `kmip:"PaddingMethod"`
	HashingAlgorithm              *uint32 `kmip:"HashingAlgorithm"`
	KeyRoleType                   *uint32 `kmip:"KeyRoleType"`
	DigitalSignatureAlgorithm     *uint32 `kmip:"DigitalSignatureAlgorithm"`
	CryptographicAlgorithm        *uint32 `kmip:"CryptographicAlgorithm"`
	RandomIV                      *bool   `kmip:"RandomIV"`
	IVLength                      *int32  `kmip:"IVLength"`
	TagLength                     *int32  `kmip:"TagLength"`
	FixedFieldLength              *int32  `kmip:"FixedFieldLength"`
	InvocationFieldLength         *int32  `kmip:"InvocationFieldLength"`
	CounterLength                 *int32  `kmip:"CounterLength"`
	InitialCounterValue           *int32  `kmip:"InitialCounterValue"`
	SaltLength                    *int32  `kmip:"SaltLength"`
	MaskGenerator                 *uint32 `kmip:"MaskGenerator"`
	MaskGeneratorHashingAlgorithm *uint32 `kmip:"MaskGeneratorHashingAlgorithm"`
	PSource                       []byte  `kmip:"PSource"`
	TrailerField                  *int32  `kmip:"TrailerField"`
}

// revocationReason is the Revocation Reason structure.
type revocationReason struct {
	Code    uint32  `kmip:"RevocationReasonCode,required"`
	Message *string `kmip:"RevocationMessage"`
}

// ptr returns a pointer to v (for optional response fields).
func ptr[T any](v T) *T { return &v }
