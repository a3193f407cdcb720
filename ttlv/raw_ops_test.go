package ttlv

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	tt "github.com/gemalto/kmip-go/ttlv"
	"strings"
	"testing"
	"time"

	"github.com/gemalto/kmip-go/kmip14"
	"github.com/gemalto/kmip-go/kmip20"
)

var v20 = ProtocolVersion{2, 0}

// attrs2 builds a KMIP 2.0 Attributes structure.
func attrs2(tag any, items ...*node) *node {
	return newStruct(tagAttributes, items...)
}

func usage(m kmip14.CryptographicUsageMask) *node {
	return &node{Tag: kmip14.TagCryptographicUsageMask, Type: tInt, Raw: newInt(0, int32(m)).Raw}
}

// TestKMIP20 runs a 2.0 session from Go: Attributes instead of TemplateAttribute, attribute
// references as enumerations, the 2.0 ID placeholder enumeration, SetAttribute.
func TestKMIP20(t *testing.T) {
	r := newRaw(t, "raw")
	name := encodeStruct(kmip14.TagName, kName{Value: "v20-key", Type: uint32(kmip14.NameTypeUninterpretedTextString)})
	create := newStruct(0, newEnum(kmip14.TagObjectType, uint32(kmip14.ObjectTypeSymmetricKey)), attrs2(nil,
		newEnum(kmip14.TagCryptographicAlgorithm, uint32(kmip14.CryptographicAlgorithmAES)), newInt(kmip14.TagCryptographicLength, 256),
		usage(kmip14.CryptographicUsageMaskEncrypt|kmip14.CryptographicUsageMaskDecrypt), name))
	// Create, then Activate through the ID Placeholder enumeration, then GetAttributes (placeholder).
	m := request(v20, kmip14.OperationCreate, create,
		kmip14.OperationActivate, newStruct(0, newEnum(kmip14.TagUniqueIdentifier, uint32(kmip20.UniqueIdentifierIDPlaceholder))),
		kmip14.OperationGetAttributes, newStruct(0, newEnum(tagAttributeReference, uint32(kmip14.TagState)), newEnum(tagAttributeReference, uint32(kmip14.TagName))))
	resp := r.roundtrip(m)
	var cr createResponse
	if err := decodeStruct(ok(t, resp.Items[0]), &cr); err != nil {
		t.Fatal(err)
	}
	ok(t, resp.Items[1])
	ga := ok(t, resp.Items[2])
	a := ga.find(tagAttributes)
	if a == nil || len(a.Kids) != 2 || a.find(kmip14.TagState).u32() != uint32(kmip14.StateActive) || a.find(kmip14.TagName) == nil {
		t.Fatalf("2.0 GetAttributes: %v", tt.TTLV(ga.bytes()))
	}
	id := cr.UID

	// SetAttribute (single-valued), refused for multi-valued and server attributes.
	set := func(v *node) ResponseBatchItem {
		return r.call(v20, kmip14.Operation(kmip20.OperationSetAttribute), newStruct(0, newText(kmip14.TagUniqueIdentifier, id), newStruct(kmip20.TagNewAttribute, v)))
	}
	ok(t, set(newText(kmip14.TagContactInformation, "sec@example.org")))
	failed(t, set(name), uint32(kmip20.ResultReasonMultiValuedAttribute))
	failed(t, set(newEnum(kmip14.TagState, 1)), rReadOnly)
	// GetAttributeList answers with attribute references.
	gl := ok(t, r.call(v20, kmip14.OperationGetAttributeList, newStruct(0, newText(kmip14.TagUniqueIdentifier, id))))
	refs := 0
	for _, k := range gl.Kids {
		if k.Tag == tagAttributeReference && k.Type == tEnum {
			refs++
		}
	}
	if refs < 8 {
		t.Fatalf("GetAttributeList gave %d references", refs)
	}
	// Delete by reference; Locate with 2.0 Attributes.
	ok(t, r.call(v20, kmip14.OperationDeleteAttribute, newStruct(0, newText(kmip14.TagUniqueIdentifier, id), newEnum(tagAttributeReference, uint32(kmip14.TagContactInformation)))))
	loc := ok(t, r.call(v20, kmip14.OperationLocate, newStruct(0, attrs2(nil, name))))
	if u := loc.find(kmip14.TagUniqueIdentifier); u == nil || u.text() != id {
		t.Fatalf("2.0 Locate: %v", tt.TTLV(loc.bytes()))
	}
	// Lifecycle errors use 2.0's reason.
	failed(t, r.call(v20, kmip14.OperationDestroy, newStruct(0, newText(kmip14.TagUniqueIdentifier, id))), rWrongState)
	ok(t, r.call(v20, kmip14.OperationRevoke, newStruct(0, newText(kmip14.TagUniqueIdentifier, id),
		encodeStruct(kmip14.TagRevocationReason, revocationReason{Code: uint32(kmip14.RevocationReasonCodeCessationOfOperation)}))))
	ok(t, r.call(v20, kmip14.OperationDestroy, newStruct(0, newText(kmip14.TagUniqueIdentifier, id))))
}

// TestMACAndRNG covers what neither client library sends: MAC, MACVerify and RNGRetrieve.
func TestMACAndRNG(t *testing.T) {
	r := newRaw(t, "raw")
	key := []byte(strings.Repeat("k", 64))
	reg := newStruct(0, newEnum(kmip14.TagObjectType, uint32(kmip14.ObjectTypeSymmetricKey)),
		newStruct(kmip14.TagTemplateAttribute),
		encodeStruct(kmip14.TagSymmetricKey, keyObject{KeyBlock: keyBlock{FormatType: uint32(kmip14.KeyFormatTypeRaw),
			Value:     encodeStruct(kmip14.TagKeyValue, keyValue{Material: newBytes(kmip14.TagKeyMaterial, key)}),
			Algorithm: ptr(uint32(kmip14.CryptographicAlgorithmHMAC_SHA256)), Length: ptr(int32(512))}}))
	var rr uidResponse
	if err := decodeStruct(ok(t, r.call(v14, kmip14.OperationRegister, reg)), &rr); err != nil {
		t.Fatal(err)
	}
	uid := newText(kmip14.TagUniqueIdentifier, rr.UID)
	data := []byte("authenticate me")
	failed(t, r.call(v14, kmip14.OperationMAC, newStruct(0, uid, newBytes(kmip14.TagData, data))), rDenied)
	ok(t, r.call(v14, kmip14.OperationActivate, newStruct(0, uid)))
	var mr macResponse
	if err := decodeStruct(ok(t, r.call(v14, kmip14.OperationMAC, newStruct(0, uid, newBytes(kmip14.TagData, data)))), &mr); err != nil {
		t.Fatal(err)
	}
	h := hmac.New(sha256.New, key)
	h.Write(data)
	if !hmac.Equal(mr.MAC, h.Sum(nil)) {
		t.Fatal("MAC differs from HMAC-SHA256")
	}
	for _, c := range []struct {
		mac  []byte
		want kmip14.ValidityIndicator
	}{{mr.MAC, kmip14.ValidityIndicatorValid}, {append([]byte{1}, mr.MAC[1:]...), kmip14.ValidityIndicatorInvalid}} {
		var vr verifyResponse
		_ = decodeStruct(ok(t, r.call(v14, kmip14.OperationMACVerify, newStruct(0, uid, newBytes(kmip14.TagData, data), newBytes(kmip14.TagMACData, c.mac)))), &vr)
		if vr.Validity != uint32(c.want) {
			t.Fatalf("MACVerify: %d, want %d", vr.Validity, c.want)
		}
	}
	var rng rngResponse
	_ = decodeStruct(ok(t, r.call(v14, kmip14.OperationRNGRetrieve, newStruct(0, newInt(kmip14.TagDataLength, 48)))), &rng)
	if len(rng.Data) != 48 {
		t.Fatalf("RNGRetrieve gave %d bytes", len(rng.Data))
	}
	failed(t, r.call(v14, kmip14.OperationRNGRetrieve, newStruct(0, newInt(kmip14.TagDataLength, 1<<20))), rInvalidField)
}

// TestAudit checks that every operation leaves one audit record naming identity, operation, key
// and result, and that no record carries the data of a request.
func TestAudit(t *testing.T) {
	r := newRaw(t, "raw")
	secret := "audit-must-not-see-this"
	create := newStruct(0, newEnum(kmip14.TagObjectType, uint32(kmip14.ObjectTypeSymmetricKey)), newStruct(kmip14.TagTemplateAttribute,
		encodeStruct(kmip14.TagAttribute, attr1{Name: "Cryptographic Algorithm", Value: newEnum(kmip14.TagAttributeValue, uint32(kmip14.CryptographicAlgorithmAES))}),
		encodeStruct(kmip14.TagAttribute, attr1{Name: "Cryptographic Length", Value: newInt(kmip14.TagAttributeValue, 128)}),
		encodeStruct(kmip14.TagAttribute, attr1{Name: "Activation Date", Value: newDateTime(kmip14.TagAttributeValue, nowMinus(60))})))
	var cr createResponse
	_ = decodeStruct(ok(t, r.call(v14, kmip14.OperationCreate, create)), &cr)
	uid := newText(kmip14.TagUniqueIdentifier, cr.UID)
	// The Activation Date in the past made it Active at once.
	ok(t, r.call(v14, kmip14.OperationEncrypt, newStruct(0, uid, newBytes(kmip14.TagData, []byte(secret)))))
	failed(t, r.call(v14, kmip14.OperationGet, newStruct(0, newText(kmip14.TagUniqueIdentifier, "00ff"))), rNotFound)
	log := env.audit.String()
	if strings.Contains(log, secret) || strings.Contains(log, "61756469742d") {
		t.Fatal("the audit log carries request data")
	}
	found := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		if rec["identity"] != env.clients["raw"].identity || rec["protocol"] != "kmip" {
			continue
		}
		for _, k := range []string{"operation", "key", "signer", "result", "latency"} {
			if _, ok := rec[k]; !ok {
				t.Fatalf("audit record without %s: %s", k, line)
			}
		}
		found[rec["operation"].(string)+"/"+rec["result"].(string)+"/"+rec["key"].(string)] = true
	}
	for _, want := range []string{"Create/success/" + cr.UID, "Encrypt/success/" + cr.UID, "Get/ItemNotFound/00ff"} {
		if !found[want] {
			t.Errorf("no audit record %s in %v", want, found)
		}
	}
}

func nowMinus(sec int) time.Time { return time.Now().Add(-time.Duration(sec) * time.Second) }
