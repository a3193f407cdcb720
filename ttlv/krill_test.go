package ttlv

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"
	"github.com/ovh/kmip-go/payloads"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/signer"
)

// roundtrip sends one operation at an explicit protocol version over an existing connection and
// checks what every KMIP client relies on: the response speaks the request's version, has one batch
// item and echoes the operation.
func roundtrip(t *testing.T, cl *kmipclient.Client, v kmip.ProtocolVersion, pl kmip.OperationPayload) *kmip.ResponseBatchItem {
	t.Helper()
	msg := kmip.NewRequestMessage(v, pl)
	resp, err := cl.Roundtrip(context.Background(), &msg)
	if err != nil {
		t.Fatalf("%v at %v: %v", pl.Operation(), v, err)
	}
	if resp.Header.ProtocolVersion != v {
		t.Fatalf("%v at %v: response speaks %v", pl.Operation(), v, resp.Header.ProtocolVersion)
	}
	if resp.Header.BatchCount != 1 || len(resp.BatchItem) != 1 {
		t.Fatalf("%v: %d batch items", pl.Operation(), len(resp.BatchItem))
	}
	bi := &resp.BatchItem[0]
	if bi.Operation != pl.Operation() {
		t.Fatalf("%v: response echoes operation %v", pl.Operation(), bi.Operation)
	}
	return bi
}

func mustSucceed(t *testing.T, bi *kmip.ResponseBatchItem) {
	t.Helper()
	if err := bi.Err(); err != nil {
		t.Fatalf("%v: %v", bi.Operation, err)
	}
}

func nameAttr(n string) kmip.Attribute {
	return kmip.Attribute{AttributeName: kmip.AttributeNameName, AttributeValue: kmip.Name{NameValue: n, NameType: kmip.NameTypeUninterpretedTextString}}
}

// TestKrillSequence replays what an NLnet Labs Krill CA does with a KMIP signer, mixing 1.0 and
// 1.2 on one connection, and checks the signature with openssl.
func TestKrillSequence(t *testing.T) {
	v10, v12 := kmip.ProtocolVersion{ProtocolVersionMajor: 1, ProtocolVersionMinor: 0}, kmip.ProtocolVersion{ProtocolVersionMajor: 1, ProtocolVersionMinor: 2}
	cl := ovhClient(t, "krill", kmipclient.EnforceVersion(v10))

	// Query at 1.2: the operations Krill needs, nothing above 0x29, object types ≤ 9.
	bi := roundtrip(t, cl, v12, &payloads.QueryRequestPayload{QueryFunction: []kmip.QueryFunction{
		kmip.QueryFunctionOperations, kmip.QueryFunctionObjects, kmip.QueryFunctionServerInformation}})
	mustSucceed(t, bi)
	q := bi.ResponsePayload.(*payloads.QueryResponsePayload)
	have := map[kmip.Operation]bool{}
	for _, op := range q.Operations {
		have[op] = true
		if op > 0x29 {
			t.Errorf("Query at 1.2 lists operation %#x", uint32(op))
		}
	}
	for _, op := range []kmip.Operation{kmip.OperationCreateKeyPair, kmip.OperationActivate, kmip.OperationSign, kmip.OperationRevoke,
		kmip.OperationDestroy, kmip.OperationGet, kmip.OperationModifyAttribute} {
		if !have[op] {
			t.Errorf("Query lacks %v", op)
		}
	}
	for _, ot := range q.ObjectType {
		if ot > 9 {
			t.Errorf("Query at 1.2 lists object type %#x", uint32(ot))
		}
	}

	// CreateKeyPair at 1.0: RSA-2048, names and usage masks (Integers) per half.
	stamp := time.Now().Unix()
	bi = roundtrip(t, cl, v10, &payloads.CreateKeyPairRequestPayload{
		CommonTemplateAttribute: &kmip.TemplateAttribute{Attribute: []kmip.Attribute{
			{AttributeName: kmip.AttributeNameCryptographicAlgorithm, AttributeValue: kmip.CryptographicAlgorithmRSA},
			{AttributeName: kmip.AttributeNameCryptographicLength, AttributeValue: int32(2048)}}},
		PrivateKeyTemplateAttribute: &kmip.TemplateAttribute{Attribute: []kmip.Attribute{
			nameAttr(fmt.Sprintf("krill_new_key_%d_priv", stamp)),
			{AttributeName: kmip.AttributeNameCryptographicUsageMask, AttributeValue: kmip.CryptographicUsageSign}}},
		PublicKeyTemplateAttribute: &kmip.TemplateAttribute{Attribute: []kmip.Attribute{
			nameAttr(fmt.Sprintf("krill_new_key_%d_pub", stamp)),
			{AttributeName: kmip.AttributeNameCryptographicUsageMask, AttributeValue: kmip.CryptographicUsageVerify}}},
	})
	mustSucceed(t, bi)
	kp := bi.ResponsePayload.(*payloads.CreateKeyPairResponsePayload)
	priv, pub := kp.PrivateKeyUniqueIdentifier, kp.PublicKeyUniqueIdentifier

	// Get(public) without a format: PKCS#1 RSAPublicKey.
	bi = roundtrip(t, cl, v10, &payloads.GetRequestPayload{UniqueIdentifier: pub})
	mustSucceed(t, bi)
	g := bi.ResponsePayload.(*payloads.GetResponsePayload)
	pk, ok := g.Object.(*kmip.PublicKey)
	if !ok {
		t.Fatalf("Get(public) returned %T", g.Object)
	}
	if pk.KeyBlock.KeyFormatType != kmip.KeyFormatTypePKCS_1 {
		t.Fatalf("public key format %v, want PKCS#1", pk.KeyBlock.KeyFormatType)
	}
	der, err := pk.KeyBlock.GetBytes()
	if err != nil {
		t.Fatal(err)
	}
	rsaPub, err := x509.ParsePKCS1PublicKey(der)
	if err != nil {
		t.Fatalf("public key is not PKCS#1: %v", err)
	}
	ski := sha1.Sum(der)

	// Rename both halves the way Krill does: ModifyAttribute(Name) without an index.
	for id, name := range map[string]string{pub: "krill-public-key-" + hex.EncodeToString(ski[:]), priv: "krill-private-key-" + hex.EncodeToString(ski[:])} {
		bi = roundtrip(t, cl, v10, &payloads.ModifyAttributeRequestPayload{UniqueIdentifier: id, Attribute: nameAttr(name)})
		mustSucceed(t, bi)
		if got := env.reg.ByName(name); len(got) != 1 || got[0].ID != id {
			t.Errorf("after rename, ByName(%q) = %v", name, got)
		}
	}

	// Activate the private key, then sign at 1.2 with PKCS#1 v1.5 over SHA-256 of raw data.
	mustSucceed(t, roundtrip(t, cl, v10, &payloads.ActivateRequestPayload{UniqueIdentifier: priv}))
	data := []byte("RPKI manifest to sign " + time.Now().String())
	var sig []byte
	for i := 0; i < 3; i++ {
		bi = roundtrip(t, cl, v12, &payloads.SignRequestPayload{UniqueIdentifier: priv, Data: data, CryptographicParameters: &kmip.CryptographicParameters{
			PaddingMethod: kmip.PaddingMethodPKCS1V1_5, HashingAlgorithm: kmip.HashingAlgorithmSHA_256, CryptographicAlgorithm: kmip.CryptographicAlgorithmRSA}})
		mustSucceed(t, bi)
		sig = bi.ResponsePayload.(*payloads.SignResponsePayload).SignatureData
	}
	opensslVerify(t, rsaPub, data, sig)

	// The keymap ties the tag to the key identifier (SHA-1 of the PKCS#1 bytes).
	for _, id := range []string{priv, pub} {
		rec, ok := env.km.Get(id)
		if !ok {
			t.Fatalf("%s not in the keymap", id)
		}
		tag, _, err := signer.ParseObjectID(id)
		if err != nil || !bytes.Equal(rec.Tag, tag) || !bytes.Equal(rec.KeyID, ski[:]) {
			t.Errorf("%s: tag %x key id %x, want tag %x key id %x", id, rec.Tag, rec.KeyID, tag, ski)
		}
		if rec.Owner != env.clients["krill"].identity {
			t.Errorf("%s owned by %q", id, rec.Owner)
		}
	}
	if recs := env.reg.ByKeyID(ski[:]); len(recs) != 2 {
		t.Errorf("ByKeyID finds %d rows, want the two halves", len(recs))
	}

	// Cleanup as Krill does it: Destroy(public, still Pre-Active), Revoke(private), Destroy(private).
	mustSucceed(t, roundtrip(t, cl, v10, &payloads.DestroyRequestPayload{UniqueIdentifier: pub}))
	bi = roundtrip(t, cl, v10, &payloads.DestroyRequestPayload{UniqueIdentifier: priv})
	if bi.ResultStatus != kmip.ResultStatusOperationFailed || bi.ResultReason != kmip.ResultReasonPermissionDenied || bi.ResultMessage == "" {
		t.Errorf("Destroy of an Active key at 1.0: %v %v %q", bi.ResultStatus, bi.ResultReason, bi.ResultMessage)
	}
	mustSucceed(t, roundtrip(t, cl, v10, &payloads.RevokeRequestPayload{UniqueIdentifier: priv,
		RevocationReason: kmip.RevocationReason{RevocationReasonCode: kmip.RevocationReasonCodeCessationOfOperation}}))
	if rec, _ := env.km.Get(priv); rec.State != keymap.Deactivated {
		t.Errorf("state after revoke: %s", rec.State)
	}
	mustSucceed(t, roundtrip(t, cl, v10, &payloads.DestroyRequestPayload{UniqueIdentifier: priv}))
	for _, id := range []string{priv, pub} {
		if rec, ok := env.km.Get(id); !ok || rec.State != keymap.Destroyed {
			t.Errorf("%s after Destroy: %+v, want its Destroyed row", id, rec)
		}
	}
	// The material is gone: Get is refused for the state (Permission Denied in 1.x).
	bi = roundtrip(t, cl, v10, &payloads.GetRequestPayload{UniqueIdentifier: pub})
	if bi.ResultReason != kmip.ResultReasonPermissionDenied || !strings.Contains(bi.ResultMessage, "Destroyed") {
		t.Errorf("Get after Destroy: %v %q", bi.ResultReason, bi.ResultMessage)
	}
}

// opensslVerify checks an RSA PKCS#1 v1.5 SHA-256 signature with the openssl command.
func opensslVerify(t *testing.T, pub any, data, sig []byte) {
	t.Helper()
	dir := t.TempDir()
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		"pub.pem":  pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}),
		"data.bin": data,
		"sig.bin":  sig,
	}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command("openssl", "dgst", "-sha256", "-verify", filepath.Join(dir, "pub.pem"),
		"-signature", filepath.Join(dir, "sig.bin"), filepath.Join(dir, "data.bin")).CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("Verified OK")) {
		t.Fatalf("openssl does not verify the signature: %v: %s", err, out)
	}
}
