package ttlv

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gemalto/kmip-go/kmip14"
	tt "github.com/gemalto/kmip-go/ttlv"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/signer"
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

// createAES is a Create request (1.x) for an AES-256 key with extra template attributes.
func createAES(extra ...*node) *node {
	attrs := []*node{
		encodeStruct(kmip14.TagAttribute, attr1{Name: "Cryptographic Algorithm", Value: newEnum(kmip14.TagAttributeValue, uint32(kmip14.CryptographicAlgorithmAES))}),
		encodeStruct(kmip14.TagAttribute, attr1{Name: "Cryptographic Length", Value: newInt(kmip14.TagAttributeValue, 256)}),
	}
	return newStruct(0, newEnum(kmip14.TagObjectType, uint32(kmip14.ObjectTypeSymmetricKey)), newStruct(kmip14.TagTemplateAttribute, append(attrs, extra...)...))
}

// attribute1 is a KMIP 1.x Attribute structure.
func attribute1(name string, v *node) *node {
	return encodeStruct(kmip14.TagAttribute, attr1{Name: name, Value: retag(v, kmip14.TagAttributeValue)})
}

// nested is a custom structure levels deep around a text.
func nested(levels int) *node {
	n := newText(0x540002, "core")
	for i := 0; i < levels; i++ {
		n = newStruct(0x540001, n, newInt(0x540003, int32(i)))
	}
	return n
}

func createdID(t *testing.T, it ResponseBatchItem) string {
	t.Helper()
	var cr createResponse
	if err := decodeStruct(ok(t, it), &cr); err != nil {
		t.Fatal(err)
	}
	return cr.UID
}

func addAttr1(r *rawClient, id, name string, v *node) ResponseBatchItem {
	return r.call(v14, kmip14.OperationAddAttribute, newStruct(0, newText(kmip14.TagUniqueIdentifier, id), attribute1(name, v)))
}

// TestStoredAnswersAsBefore: a row holding attribute values written by an earlier version
// (oldStored) is answered by GetAttributes exactly as that version decoded them.
func TestStoredAnswersAsBefore(t *testing.T) {
	r := newRaw(t, "admin")
	id := createdID(t, r.call(v14, kmip14.OperationCreate, createAES()))
	keys := map[string]string{}
	for k, s := range oldStored {
		if k == "kmip.CryptographicUsageMaskOfAnOldRow" {
			k = "kmip.CryptographicUsageMask" // where rows before the registry's own form kept it
		}
		keys[k] = s
	}
	if _, err := env.reg.Update(signer.Operator, id, func(rec *keymap.Record) error {
		if rec.Attrs == nil {
			rec.Attrs = map[string]string{}
		}
		for k, s := range keys {
			rec.Attrs[k] = s
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var names []*node
	want := map[string][]*node{} // "name[index]" → value
	for k, s := range keys {
		vals, err := oldDecodeValues(s)
		if err != nil {
			t.Fatal(err)
		}
		name := "x-" + strings.TrimPrefix(k, customPrefix)
		if !strings.HasPrefix(k, customPrefix) {
			name = tt.DefaultRegistry.FormatTagCanonical(firstTag(vals))
		}
		names = append(names, newText(kmip14.TagAttributeName, name))
		for i, v := range vals {
			if v != nil {
				want[fmt.Sprintf("%s[%d]", name, i)] = []*node{v}
			}
		}
	}
	p := ok(t, r.call(v14, kmip14.OperationGetAttributes, newStruct(0, append([]*node{newText(kmip14.TagUniqueIdentifier, id)}, names...)...)))
	got := 0
	for _, k := range p.Kids {
		if k.Tag != kmip14.TagAttribute {
			continue
		}
		var a attr1
		if err := decodeStruct(k, &a); err != nil {
			t.Fatal(err)
		}
		idx := int32(0)
		if a.Index != nil {
			idx = *a.Index
		}
		key := fmt.Sprintf("%s[%d]", a.Name, idx)
		w, ok := want[key]
		if !ok {
			continue // Name[0] of the object itself, reported besides
		}
		if !bytes.Equal(a.Value.encodeAs(nil, 0), w[0].encodeAs(nil, 0)) {
			t.Errorf("%s answered %x, earlier versions %x", key, a.Value.encodeAs(nil, 0), w[0].encodeAs(nil, 0))
		}
		got++
	}
	if got != len(want) {
		t.Errorf("%d of the %d stored instances answered", got, len(want))
	}
}

// TestHostileAttributeValues: values that are deep, oversized or carry fields their attribute does
// not have are refused with a clear error before anything is stored; the limits per value and per
// object hold over both protocol versions.
func TestHostileAttributeValues(t *testing.T) {
	r := newRaw(t, "admin")
	// Custom attributes: four structure levels are stored and read back as given; five are not.
	fine := nested(maxValueDepth)
	id := createdID(t, r.call(v14, kmip14.OperationCreate, createAES(attribute1("x-fine", fine))))
	p := ok(t, r.call(v14, kmip14.OperationGetAttributes, newStruct(0, newText(kmip14.TagUniqueIdentifier, id), newText(kmip14.TagAttributeName, "x-fine"))))
	if a := p.find(kmip14.TagAttribute); a == nil || !bytes.Equal(a.find(kmip14.TagAttributeValue).encodeAs(nil, 0), fine.encodeAs(nil, 0)) {
		t.Fatalf("x-fine read back as %v", p)
	}
	it := r.call(v14, kmip14.OperationCreate, createAES(attribute1("x-deep", nested(20))))
	failed(t, it, rInvalidField)
	if !strings.Contains(*it.ResultMessage, "nested") {
		t.Errorf("message %q does not say why", *it.ResultMessage)
	}
	failed(t, addAttr1(r, id, "x-deep", nested(maxValueDepth+1)), rInvalidField)

	// Standard structure attributes: exactly their fields, nothing nested.
	deep := nested(25)
	extra := func(tag any, fields ...*node) *node { return newStruct(tag.(tt.Tag), append(fields, deep)...) }
	name := extra(kmip14.TagName, newText(kmip14.TagNameValue, "n"), newEnum(kmip14.TagNameType, 1))
	link := extra(kmip14.TagLink, newEnum(kmip14.TagLinkType, uint32(kmip14.LinkTypeParentLink)), newText(kmip14.TagLinkedObjectIdentifier, id))
	for _, c := range []struct {
		attr string
		v    *node
	}{
		{"Name", name},
		{"Link", link},
		{"Application Specific Information", extra(kmip14.TagApplicationSpecificInformation, newText(kmip14.TagApplicationNamespace, "ns"))},
		{"Alternative Name", extra(kmip14.TagAlternativeName, newText(kmip14.TagAlternativeNameValue, "a"), newEnum(kmip14.TagAlternativeNameType, 1))},
		{"Key Value Location", extra(kmip14.TagKeyValueLocation, newText(kmip14.TagKeyValueLocationValue, "l"), newEnum(kmip14.TagKeyValueLocationType, 1))},
		{"Usage Limits", extra(kmip14.TagUsageLimits, newLong(kmip14.TagUsageLimitsTotal, 5), newEnum(kmip14.TagUsageLimitsUnit, 1))},
		{"Cryptographic Parameters", extra(kmip14.TagCryptographicParameters, newEnum(kmip14.TagBlockCipherMode, uint32(kmip14.BlockCipherModeGCM)))},
		// A field given twice, and a field of the wrong type, are refused as well.
		{"Name", newStruct(kmip14.TagName, newText(kmip14.TagNameValue, "n"), newEnum(kmip14.TagNameType, 1), newText(kmip14.TagNameValue, "m"))},
		{"Application Specific Information", newStruct(kmip14.TagApplicationSpecificInformation, newBytes(kmip14.TagApplicationNamespace, []byte("ns")))},
	} {
		it := addAttr1(r, id, c.attr, c.v)
		failed(t, it, rInvalidField)
		t.Logf("%s: %s", c.attr, *it.ResultMessage)
		failed(t, r.call(v14, kmip14.OperationCreate, createAES(attribute1(c.attr, c.v))), rInvalidField)
	}
	failed(t, r.call(v14, kmip14.OperationCreate, createAES(attribute1("Cryptographic Domain Parameters",
		extra(kmip14.TagCryptographicDomainParameters, newEnum(kmip14.TagRecommendedCurve, uint32(kmip14.RecommendedCurveP_256)))))), rInvalidField)

	// One value of more than 16 KiB; an object whose attributes would pass 64 KiB.
	failed(t, addAttr1(r, id, "x-big", newText(0, strings.Repeat("b", maxValueBytes))), rInvalidField)
	chunk := strings.Repeat("c", 15000)
	added := 0
	for i := 0; i < 6; i++ {
		it := addAttr1(r, id, fmt.Sprintf("x-part%d", i), newText(0, chunk))
		if it.ResultStatus != uint32(kmip14.ResultStatusSuccess) {
			failed(t, it, rInvalidField)
			t.Logf("object limit: %s", *it.ResultMessage)
			break
		}
		added++
	}
	if added != 4 {
		t.Errorf("%d values of 15,000 bytes were added to one object; the limit of %d bytes allows 4", added, maxObjectAttrBytes)
	}
	rec, err := env.reg.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if n := attrBytes(rec.Attrs); n > maxObjectAttrBytes {
		t.Errorf("the object's attributes take %d bytes", n)
	}
	// Deleting still works on a full object.
	ok(t, r.call(v14, kmip14.OperationDeleteAttribute, newStruct(0, newText(kmip14.TagUniqueIdentifier, id), newText(kmip14.TagAttributeName, "x-part0"))))

	// KMIP 2.0 gets its own reasons.
	vendor := func(name string, v *node) *node {
		return newStruct(kmip14.TagAttribute, newText(kmip14.TagVendorIdentification, "x"), newText(kmip14.TagAttributeName, name), retag(v, kmip14.TagAttributeValue))
	}
	create2 := func(extra ...*node) *node {
		return newStruct(0, newEnum(kmip14.TagObjectType, uint32(kmip14.ObjectTypeSymmetricKey)), attrs2(nil, append([]*node{
			newEnum(kmip14.TagCryptographicAlgorithm, uint32(kmip14.CryptographicAlgorithmAES)), newInt(kmip14.TagCryptographicLength, 256)}, extra...)...))
	}
	failed(t, r.call(v20, kmip14.OperationCreate, create2(vendor("deep", nested(10)))), rBadValue)
	failed(t, r.call(v20, kmip14.OperationCreate, create2(name)), rBadValue)
	failed(t, r.call(v20, kmip14.OperationCreate, create2(vendor("big", newText(0, strings.Repeat("b", maxValueBytes))))), rLimit)
	var many []*node
	for i := 0; i < 5; i++ {
		many = append(many, vendor(fmt.Sprintf("part%d", i), newText(0, chunk)))
	}
	failed(t, r.call(v20, kmip14.OperationCreate, create2(many...)), rLimit)
}

// TestAttributeEncodedOutsideLock: while an attribute change encodes its value, no lock is held:
// another update of the same object goes through meanwhile (Registry.Update locks the row while
// its function runs), and the change is then made on top of it.
func TestAttributeEncodedOutsideLock(t *testing.T) {
	r := newRaw(t, "admin")
	a := createdID(t, r.call(v14, kmip14.OperationCreate, createAES()))
	var once sync.Once
	var otherDone atomic.Bool
	hook := func(name string) {
		if name != "x-lockcheck" {
			return
		}
		once.Do(func() {
			done := make(chan error, 1)
			go func() {
				_, err := env.reg.Update(signer.Operator, a, func(rec *keymap.Record) error {
					if rec.Attrs == nil {
						rec.Attrs = map[string]string{}
					}
					rec.Attrs["x.other"] = `[{"tag":"AttributeValue","type":"TextString","value":"meanwhile"}]`
					return nil
				})
				done <- err
			}()
			select {
			case err := <-done:
				otherDone.Store(err == nil)
			case <-time.After(10 * time.Second): // held: the change encodes under the row's lock
			}
		})
	}
	storeHook.Store(&hook)
	defer storeHook.Store(nil)
	ok(t, addAttr1(r, a, "x-lockcheck", newText(0, "value")))
	if !otherDone.Load() {
		t.Fatal("an update of the object waited while an attribute was encoded: its lock was held")
	}
	rec, err := env.reg.Get(a)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Attrs["x.other"] == "" || rec.Attrs["x.lockcheck"] == "" {
		t.Fatalf("both changes should be in the row: %v", rec.Attrs)
	}
}
