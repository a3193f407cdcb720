package ttlv

import (
	"bytes"
	"testing"
	"time"

	"github.com/gemalto/kmip-go/kmip14"
)

// TestStoredValuesRoundTrip checks that every kind of attribute value survives the JSON form the
// keymap keeps, holes (deleted instances) included.
func TestStoredValuesRoundTrip(t *testing.T) {
	now := time.Unix(time.Now().Unix(), 0)
	for _, c := range []struct {
		tag  any
		vals []*node
	}{
		{kmip14.TagName, []*node{encodeStruct(kmip14.TagName, kName{Value: "a", Type: 1}), nil, encodeStruct(kmip14.TagName, kName{Value: "c", Type: 2})}},
		{kmip14.TagCryptographicUsageMask, []*node{usage(kmip14.CryptographicUsageMaskSign | kmip14.CryptographicUsageMaskVerify)}},
		{kmip14.TagCryptographicUsageMask, []*node{usage(0x7fffffff)}},
		{kmip14.TagActivationDate, []*node{newDateTime(kmip14.TagActivationDate, now)}},
		{kmip14.TagProcessStartDate, []*node{newDateTime(kmip14.TagProcessStartDate, now.Add(time.Hour))}},
		{kmip14.TagState, []*node{newEnum(kmip14.TagState, 3)}},
		{kmip14.TagCryptographicAlgorithm, []*node{newEnum(kmip14.TagCryptographicAlgorithm, 0x77)}},
		{kmip14.TagContactInformation, []*node{newText(kmip14.TagContactInformation, "ops \"quoted\" ünïcode")}},
		{kmip14.TagCryptographicParameters, []*node{encodeStruct(kmip14.TagCryptographicParameters, cryptoParams{PaddingMethod: ptr(uint32(10)), RandomIV: ptr(true), TagLength: ptr(int32(16)), PSource: []byte{1, 2}})}},
		{kmip14.TagLeaseTime, []*node{newInterval(kmip14.TagLeaseTime, time.Hour)}},
		{kmip14.TagAttributeValue, []*node{newLong(kmip14.TagAttributeValue, -5), newBool(kmip14.TagAttributeValue, true), newBytes(kmip14.TagAttributeValue, []byte{0, 255})}},
	} {
		tag := c.tag.(interface{ String() string })
		d := defByTag[c.vals[0].Tag]
		s, err := encodeValues(c.vals[0].Tag, c.vals)
		if err != nil {
			t.Fatalf("%s: %v", tag, err)
		}
		got, err := decodeValues(s)
		if err != nil {
			t.Fatalf("%s: decode %s: %v", tag, s, err)
		}
		if len(got) != len(c.vals) {
			t.Fatalf("%s: %d values back from %s", tag, len(got), s)
		}
		for i := range got {
			if (got[i] == nil) != (c.vals[i] == nil) || (got[i] != nil && !bytes.Equal(got[i].bytes(), c.vals[i].bytes())) {
				t.Errorf("%s[%d]: %s gave back %v", tag, i, s, got[i])
			}
		}
		_ = d
	}
}
