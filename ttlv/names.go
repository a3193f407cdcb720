package ttlv

import (
	"github.com/gemalto/kmip-go/kmip14"
	"github.com/gemalto/kmip-go/kmip20"
	tt "github.com/gemalto/kmip-go/ttlv"
	"strings"
)

// tagEnumName is the normalized name of enumeration value v of the enumeration carried by tag.
func tagEnumName(tag tt.Tag, v uint32) string {
	return tt.DefaultRegistry.FormatEnum(tag, v)
}

// Tags of KMIP 2.0 used by the handlers.
var (
	tagAttributeReference = kmip20.TagAttributeReference
	tagAttributes         = kmip20.TagAttributes
	tagCommonAttributes   = kmip20.TagCommonAttributes
	tagPrivateAttributes  = kmip20.TagPrivateKeyAttributes
	tagPublicAttributes   = kmip20.TagPublicKeyAttributes
)

// tagMaskName renders a bit mask value of tag ("Sign|Verify").
func tagMaskName(tag tt.Tag, v uint32) string {
	return tt.DefaultRegistry.FormatInt(tag, int32(v))
}

// opName is the operation's KMIP name ("CreateKeyPair"; 2.0 operations such as "SetAttribute"
// by their 2.0 names), as Authorizer.AllowKMIP receives it.
func opName(v uint32) string {
	if s := kmip14.Operation(v).String(); !strings.HasPrefix(s, "0x") {
		return s
	}
	return kmip20.Operation(v).String()
}
