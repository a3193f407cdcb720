package ttlv

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"
	"github.com/ovh/kmip-go/payloads"

	"github.com/p11bridge/p11bridge/keymap"
)

// ovhClient dials the server with github.com/ovh/kmip-go's client as a test identity.
func ovhClient(t testing.TB, who string, opts ...kmipclient.Option) *kmipclient.Client {
	t.Helper()
	c := env.clients[who]
	all := append([]kmipclient.Option{
		kmipclient.WithRootCAFile(env.caFile),
		kmipclient.WithClientCertFiles(c.certFile, c.keyFile),
		kmipclient.WithServerName("127.0.0.1"),
	}, opts...)
	cl, err := kmipclient.DialContext(context.Background(), env.addr, all...)
	if err != nil {
		t.Fatalf("ovh client dial as %s: %v", who, err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func must[T any](t testing.TB) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// kmipErr asserts that err is a KMIP failure with reason.
func kmipErr(t testing.TB, err error, reason kmip.ResultReason) {
	t.Helper()
	if err == nil {
		t.Fatalf("succeeded, want %v", reason)
	}
	if !strings.Contains(err.Error(), ttlvEnumStr(reason)) {
		t.Fatalf("got %v, want %v", err, reason)
	}
}

func ttlvEnumStr(r kmip.ResultReason) string {
	return strings.ReplaceAll(tagEnumName(0x42007e, uint32(r)), " ", "")
}

func attrValues(resp *payloads.GetAttributesResponsePayload, name kmip.AttributeName) []any {
	var out []any
	for _, a := range resp.Attribute {
		if a.AttributeName == name {
			out = append(out, a.AttributeValue)
		}
	}
	return out
}

func TestOVHVersion(t *testing.T) {
	cl := ovhClient(t, "ovh")
	if v := cl.Version(); v != kmip.V1_4 {
		t.Fatalf("negotiated %s, want 1.4 (the newest both speak)", v)
	}
	q := must[*payloads.QueryResponsePayload](t)(cl.Query().Operations().Objects().ServerInformation().Exec())
	if q.VendorIdentification != "p11bridge-test" || len(q.Operations) < 20 {
		t.Fatalf("query: %+v", q)
	}
}

func TestOVHSymmetricLifecycle(t *testing.T) {
	cl := ovhClient(t, "ovh")
	cr := must[*payloads.CreateResponsePayload](t)(cl.Create().AES(256, kmip.CryptographicUsageEncrypt|kmip.CryptographicUsageDecrypt).
		WithName("ovh-aes").WithAttribute("x-team", "payments").WithAttribute(kmip.AttributeNameContactInformation, "ops").Exec())
	id := cr.UniqueIdentifier
	must[*payloads.ActivateResponsePayload](t)(cl.Activate(id).Exec())

	// GCM at 1.4: tag in its own field, AAD checked.
	gcm := kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeGCM}
	enc := must[*payloads.EncryptResponsePayload](t)(cl.Encrypt(id).WithCryptographicParameters(gcm).WithAAD([]byte("hdr")).Data([]byte("hello")).Exec())
	if len(enc.Data) != 5 || len(enc.AuthenticatedEncryptionTag) != 16 || len(enc.IVCounterNonce) != 12 {
		t.Fatalf("GCM output: %d bytes, tag %d, IV %d", len(enc.Data), len(enc.AuthenticatedEncryptionTag), len(enc.IVCounterNonce))
	}
	dec := must[*payloads.DecryptResponsePayload](t)(cl.Decrypt(id).WithCryptographicParameters(gcm).WithAAD([]byte("hdr")).
		WithIvCounterNonce(enc.IVCounterNonce).WithAuthTag(enc.AuthenticatedEncryptionTag).Data(enc.Data).Exec())
	if string(dec.Data) != "hello" {
		t.Fatalf("GCM decrypt: %q", dec.Data)
	}
	genc := enc
	_, err := cl.Decrypt(id).WithCryptographicParameters(gcm).WithAAD([]byte("other")).
		WithIvCounterNonce(enc.IVCounterNonce).WithAuthTag(enc.AuthenticatedEncryptionTag).Data(enc.Data).Exec()
	kmipErr(t, err, kmip.ResultReasonCryptographicFailure)
	// One key serves one block mode family: the GCM key refuses CBC (KMIP 1.4 has no Incompatible
	// Cryptographic Usage Mask: Permission Denied). CBC with a client IV on a key of its own;
	// missing IV on decrypt.
	cbc := kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeCBC, PaddingMethod: kmip.PaddingMethodPKCS5}
	iv := bytes.Repeat([]byte{7}, 16)
	_, err = cl.Encrypt(id).WithCryptographicParameters(cbc).WithIvCounterNonce(iv).Data([]byte("x")).Exec()
	kmipErr(t, err, kmip.ResultReasonPermissionDenied)
	cbcID := must[*payloads.CreateResponsePayload](t)(cl.Create().AES(256, kmip.CryptographicUsageEncrypt|kmip.CryptographicUsageDecrypt).
		WithName("ovh-aes-cbc").Exec()).UniqueIdentifier
	must[*payloads.ActivateResponsePayload](t)(cl.Activate(cbcID).Exec())
	enc = must[*payloads.EncryptResponsePayload](t)(cl.Encrypt(cbcID).WithCryptographicParameters(cbc).WithIvCounterNonce(iv).Data([]byte("sixteen bytes!!!")).Exec())
	if len(enc.Data) != 32 || enc.IVCounterNonce != nil {
		t.Fatalf("CBC: %d bytes, IV %x", len(enc.Data), enc.IVCounterNonce)
	}
	_, err = cl.Decrypt(cbcID).WithCryptographicParameters(cbc).Data(enc.Data).Exec()
	kmipErr(t, err, kmip.ResultReasonInvalidMessage)
	_, err = cl.Encrypt(id).WithCryptographicParameters(kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeECB}).Data([]byte("x")).Exec()
	kmipErr(t, err, kmip.ResultReasonInvalidField)

	// Attributes: add a second name, modify by index, delete by index; custom x- attributes.
	add := must[*payloads.AddAttributeResponsePayload](t)(cl.AddAttribute(id, kmip.AttributeNameName, kmip.Name{NameValue: "ovh-aes-alias", NameType: kmip.NameTypeUninterpretedTextString}).Exec())
	if add.Attribute.AttributeIndex == nil || *add.Attribute.AttributeIndex != 1 {
		t.Fatalf("AddAttribute(Name) index %v", add.Attribute.AttributeIndex)
	}
	must[*payloads.ModifyAttributeResponsePayload](t)(cl.ModifyAttribute(id, kmip.AttributeNameName, kmip.Name{NameValue: "ovh-aes-alias2", NameType: kmip.NameTypeUninterpretedTextString}).WithIndex(1).Exec())
	must[*payloads.AddAttributeResponsePayload](t)(cl.AddAttribute(id, "x-env", "prod").Exec())
	_, err = cl.AddAttribute(id, kmip.AttributeNameContactInformation, "again").Exec()
	kmipErr(t, err, kmip.ResultReasonInvalidField)
	_, err = cl.AddAttribute(id, kmip.AttributeNameState, kmip.StateActive).Exec()
	kmipErr(t, err, kmip.ResultReasonPermissionDenied)
	ga := must[*payloads.GetAttributesResponsePayload](t)(cl.GetAttributes(id, kmip.AttributeNameName, "x-team", "x-env", kmip.AttributeNameLink).Exec())
	names := attrValues(ga, kmip.AttributeNameName)
	if len(names) != 2 || names[1].(kmip.Name).NameValue != "ovh-aes-alias2" {
		t.Fatalf("names: %v", names)
	}
	if v := attrValues(ga, "x-team"); len(v) != 1 || !strings.Contains(fmt.Sprint(v[0]), "payments") {
		t.Fatalf("x-team: %v", v)
	}
	must[*payloads.DeleteAttributeResponsePayload](t)(cl.DeleteAttribute(id, kmip.AttributeNameName).WithIndex(1).Exec())
	must[*payloads.DeleteAttributeResponsePayload](t)(cl.DeleteAttribute(id, "x-env").Exec())
	_, err = cl.DeleteAttribute(id, "x-env").Exec()
	kmipErr(t, err, kmip.ResultReasonInvalidField)
	rec, _ := env.km.Get(id)
	if rec.Name != "ovh-aes" || rec.Attrs["x.team"] == "" || rec.Attrs["x.env"] != "" {
		t.Fatalf("keymap row after attribute changes: name %q attrs %v", rec.Name, rec.Attrs)
	}

	// Locate by custom attribute, with offset and maximum.
	loc := must[*payloads.LocateResponsePayload](t)(cl.Locate().WithAttribute("x-team", "payments").Exec())
	if len(loc.UniqueIdentifier) != 1 || loc.UniqueIdentifier[0] != id || loc.LocatedItems == nil || *loc.LocatedItems != 1 {
		t.Fatalf("locate x-team: %+v", loc)
	}
	all := must[*payloads.LocateResponsePayload](t)(cl.Locate().WithObjectType(kmip.ObjectTypeSymmetricKey).Exec())
	page := must[*payloads.LocateResponsePayload](t)(cl.Locate().WithObjectType(kmip.ObjectTypeSymmetricKey).WithOffset(1).WithMaxItems(1).Exec())
	if len(all.UniqueIdentifier) < 1 || *page.LocatedItems != int32(len(all.UniqueIdentifier)) || (len(all.UniqueIdentifier) > 1 && page.UniqueIdentifier[0] != all.UniqueIdentifier[1]) {
		t.Fatalf("locate paging: all %v page %+v", all.UniqueIdentifier, page)
	}

	// ReKey: a linked, Active replacement on the same token.
	rk := must[*payloads.RekeyResponsePayload](t)(cl.Rekey(id).Exec())
	links := attrValues(must[*payloads.GetAttributesResponsePayload](t)(cl.GetAttributes(rk.UniqueIdentifier, kmip.AttributeNameLink, kmip.AttributeNameState).Exec()), kmip.AttributeNameLink)
	if len(links) != 1 || links[0].(kmip.Link).LinkType != kmip.LinkTypeReplacedObjectLink || links[0].(kmip.Link).LinkedObjectIdentifier != id {
		t.Fatalf("rekeyed links: %v", links)
	}
	old := attrValues(must[*payloads.GetAttributesResponsePayload](t)(cl.GetAttributes(id, kmip.AttributeNameLink).Exec()), kmip.AttributeNameLink)
	if len(old) != 1 || old[0].(kmip.Link).LinkType != kmip.LinkTypeReplacementObjectLink {
		t.Fatalf("old key links: %v", old)
	}

	// Lifecycle end.
	_, err = cl.Destroy(id).Exec()
	kmipErr(t, err, kmip.ResultReasonPermissionDenied)
	must[*payloads.RevokeResponsePayload](t)(cl.Revoke(id).WithRevocationReasonCode(kmip.RevocationReasonCodeSuperseded).Exec())
	// A deactivated key still decrypts (KMIP lets it process), but no longer encrypts.
	must[*payloads.DecryptResponsePayload](t)(cl.Decrypt(id).WithCryptographicParameters(gcm).WithAAD([]byte("hdr")).
		WithIvCounterNonce(genc.IVCounterNonce).WithAuthTag(genc.AuthenticatedEncryptionTag).Data(genc.Data).Exec())
	_, err = cl.Encrypt(id).WithCryptographicParameters(gcm).Data([]byte("x")).Exec()
	kmipErr(t, err, kmip.ResultReasonPermissionDenied)
	for _, k := range []string{id, rk.UniqueIdentifier} {
		must[*payloads.RevokeResponsePayload](t)(cl.Revoke(k).WithRevocationReasonCode(kmip.RevocationReasonCodeKeyCompromise).WithCompromiseOccurrenceDate(time.Now().Add(-time.Hour)).Exec())
		must[*payloads.DestroyResponsePayload](t)(cl.Destroy(k).Exec())
	}
}

func TestOVHKeyPairs(t *testing.T) {
	cl := ovhClient(t, "ovh")
	digest := sha256.Sum256([]byte("signed content"))
	type pair struct {
		name string
		mk   func() kmipclient.ExecCreateKeyPairAttr
	}
	for _, p := range []pair{
		{"rsa3072", func() kmipclient.ExecCreateKeyPairAttr {
			return cl.CreateKeyPair().RSA(3072, kmip.CryptographicUsageSign|kmip.CryptographicUsageDecrypt, kmip.CryptographicUsageVerify|kmip.CryptographicUsageEncrypt)
		}},
		{"p256", func() kmipclient.ExecCreateKeyPairAttr {
			return cl.CreateKeyPair().ECDSA(kmip.RecommendedCurveP_256, kmip.CryptographicUsageSign, kmip.CryptographicUsageVerify)
		}},
		{"p384", func() kmipclient.ExecCreateKeyPairAttr {
			return cl.CreateKeyPair().ECDSA(kmip.RecommendedCurveP_384, kmip.CryptographicUsageSign, kmip.CryptographicUsageVerify)
		}},
	} {
		t.Run(p.name, func(t *testing.T) {
			kp := must[*payloads.CreateKeyPairResponsePayload](t)(p.mk().Common().WithName("ovh-" + p.name).Exec())
			priv, pub := kp.PrivateKeyUniqueIdentifier, kp.PublicKeyUniqueIdentifier
			must[*payloads.ActivateResponsePayload](t)(cl.Activate(priv).Exec())
			must[*payloads.ActivateResponsePayload](t)(cl.Activate(pub).Exec())
			// The ovh crypto.Signer reads the attributes, follows the links and signs digests.
			s, err := cl.Signer(context.Background(), priv, "")
			if err != nil {
				t.Fatal(err)
			}
			sig := must[[]byte](t)(s.Sign(rand.Reader, digest[:], crypto.SHA256))
			switch k := s.Public().(type) {
			case *rsa.PublicKey:
				if err := rsa.VerifyPKCS1v15(k, crypto.SHA256, digest[:], sig); err != nil {
					t.Fatal(err)
				}
				pss := must[[]byte](t)(s.Sign(rand.Reader, digest[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}))
				if err := rsa.VerifyPSS(k, crypto.SHA256, digest[:], pss, nil); err != nil {
					t.Fatal(err)
				}
				// Formats of the public key: PKCS#1 by default, X.509 and Transparent on request.
				for _, f := range []kmip.KeyFormatType{kmip.KeyFormatTypeX_509, kmip.KeyFormatTypeTransparentRSAPublicKey} {
					g := must[*payloads.GetResponsePayload](t)(cl.Get(pub).WithKeyFormat(f).Exec())
					if g.Object.(*kmip.PublicKey).KeyBlock.KeyFormatType != f {
						t.Fatalf("asked %v", f)
					}
				}
				// RSA-OAEP (SHA-1: SoftHSM's only OAEP hash): encrypt with the public key, decrypt in the token.
				oaep := kmip.CryptographicParameters{PaddingMethod: kmip.PaddingMethodOAEP, HashingAlgorithm: kmip.HashingAlgorithmSHA_1}
				enc := must[*payloads.EncryptResponsePayload](t)(cl.Encrypt(pub).WithCryptographicParameters(oaep).Data([]byte("wrapped secret")).Exec())
				dec := must[*payloads.DecryptResponsePayload](t)(cl.Decrypt(priv).WithCryptographicParameters(oaep).Data(enc.Data).Exec())
				if string(dec.Data) != "wrapped secret" {
					t.Fatalf("OAEP: %q", dec.Data)
				}
			case *ecdsa.PublicKey:
				if !ecdsa.VerifyASN1(k, digest[:], sig) {
					t.Fatal("ECDSA signature does not verify")
				}
				g := must[*payloads.GetResponsePayload](t)(cl.Get(pub).Exec())
				if g.Object.(*kmip.PublicKey).KeyBlock.KeyFormatType != kmip.KeyFormatTypeX_509 {
					t.Fatal("EC public keys default to X.509")
				}
				must[*payloads.GetResponsePayload](t)(cl.Get(pub).WithKeyFormat(kmip.KeyFormatTypeTransparentECPublicKey).Exec())
				_, err := cl.Get(pub).WithKeyFormat(kmip.KeyFormatTypePKCS_1).Exec()
				kmipErr(t, err, kmip.ResultReasonKeyFormatTypeNotSupported)
			}
			vr := must[*payloads.SignatureVerifyResponsePayload](t)(cl.SignatureVerify(pub).WithCryptographicParameters(kmip.CryptographicParameters{HashingAlgorithm: kmip.HashingAlgorithmSHA_256}).
				DigestedData(digest[:]).Signature(sig).Exec())
			if vr.ValidityIndicator != kmip.ValidityIndicatorValid {
				t.Fatal("SignatureVerify says invalid")
			}
			// This identity has no export right: Permission Denied, whatever the key.
			_, err = cl.Get(priv).Exec()
			kmipErr(t, err, kmip.ResultReasonPermissionDenied)

			// ReKeyKeyPair: a new pair linked to the old one.
			rk := must[*payloads.RekeyKeyPairResponsePayload](t)(cl.RekeyKeyPair(priv).Exec())
			np, _ := env.km.Get(rk.PrivateKeyUniqueIdentifier)
			nq, _ := env.km.Get(rk.PublicKeyUniqueIdentifier)
			if np.Attrs["link.replaced"] != priv || nq.Attrs["link.replaced"] != pub || np.Attrs["link.public"] != nq.ID || np.Size != nq.Size {
				t.Fatalf("rekeyed pair rows: %+v / %+v", np, nq)
			}
			for _, id := range []string{priv, pub, rk.PrivateKeyUniqueIdentifier, rk.PublicKeyUniqueIdentifier} {
				must[*payloads.RevokeResponsePayload](t)(cl.Revoke(id).WithRevocationReasonCode(kmip.RevocationReasonCodeCessationOfOperation).Exec())
				must[*payloads.DestroyResponsePayload](t)(cl.Destroy(id).Exec())
			}
		})
	}
}

func TestOVHRegister(t *testing.T) {
	cl := ovhClient(t, "ovh")
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	check := func(id string, f kmip.KeyFormatType, want []byte) {
		t.Helper()
		g := must[*payloads.GetResponsePayload](t)(cl.Get(id).WithKeyFormat(f).Exec())
		var kb *kmip.KeyBlock
		switch o := g.Object.(type) {
		case *kmip.PrivateKey:
			kb = &o.KeyBlock
		case *kmip.PublicKey:
			kb = &o.KeyBlock
		case *kmip.SymmetricKey:
			kb = &o.KeyBlock
		}
		got, err := kb.GetBytes()
		if m, _ := kb.GetMaterial(); m.TransparentSymmetricKey != nil {
			got, err = m.TransparentSymmetricKey.Key, nil
		}
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s as %v: %x (%v), want %x", id, f, got, err, want)
		}
	}
	pkcs1 := x509.MarshalPKCS1PrivateKey(rk)
	id := must[*payloads.RegisterResponsePayload](t)(cl.Register().RsaPrivateKey(rk, kmip.CryptographicUsageSign).WithName("ovh-reg-rsa").Exec()).UniqueIdentifier
	check(id, kmip.KeyFormatTypePKCS_1, pkcs1)
	pkcs8 := must[[]byte](t)(x509.MarshalPKCS8PrivateKey(rk))
	check(id, kmip.KeyFormatTypePKCS_8, pkcs8)
	must[*payloads.GetResponsePayload](t)(cl.Get(id).WithKeyFormat(kmip.KeyFormatTypeTransparentRSAPrivateKey).Exec())
	// A registered private key signs in the token like a generated one.
	must[*payloads.ActivateResponsePayload](t)(cl.Activate(id).Exec())
	sig := must[*payloads.SignResponsePayload](t)(cl.Sign(id).WithCryptographicParameters(kmip.CryptographicParameters{PaddingMethod: kmip.PaddingMethodPKCS1V1_5, HashingAlgorithm: kmip.HashingAlgorithmSHA_256}).Data([]byte("m")).Exec())
	d := sha256.Sum256([]byte("m"))
	if err := rsa.VerifyPKCS1v15(&rk.PublicKey, crypto.SHA256, d[:], sig.SignatureData); err != nil {
		t.Fatal(err)
	}
	ecID := must[*payloads.RegisterResponsePayload](t)(cl.Register().EcdsaPrivateKey(ek, kmip.CryptographicUsageSign).Exec()).UniqueIdentifier
	sec1 := must[[]byte](t)(x509.MarshalECPrivateKey(ek))
	check(ecID, kmip.KeyFormatTypeECPrivateKey, sec1)
	pubID := must[*payloads.RegisterResponsePayload](t)(cl.Register().EcdsaPublicKey(&ek.PublicKey, kmip.CryptographicUsageVerify).Exec()).UniqueIdentifier
	spki := must[[]byte](t)(x509.MarshalPKIXPublicKey(&ek.PublicKey))
	check(pubID, kmip.KeyFormatTypeX_509, spki)
	aes := bytes.Repeat([]byte{0x42}, 32)
	aesID := must[*payloads.RegisterResponsePayload](t)(cl.Register().SymmetricKey(kmip.CryptographicAlgorithmAES, kmip.CryptographicUsageEncrypt, aes).Exec()).UniqueIdentifier
	check(aesID, kmip.KeyFormatTypeRaw, aes)
	check(aesID, kmip.KeyFormatTypeTransparentSymmetricKey, aes)
	_, err = cl.Register().SymmetricKey(kmip.CryptographicAlgorithm3DES, kmip.CryptographicUsageEncrypt, make([]byte, 24)).Exec()
	kmipErr(t, err, kmip.ResultReasonFeatureNotSupported)
	_, err = cl.Register().Certificate(kmip.CertificateTypeX_509, []byte("not a certificate")).Exec()
	kmipErr(t, err, kmip.ResultReasonInvalidField)
	certID := must[*payloads.RegisterResponsePayload](t)(cl.Register().X509Certificate(env.ca.Cert).Exec()).UniqueIdentifier
	g := must[*payloads.GetResponsePayload](t)(cl.Get(certID).Exec())
	if !bytes.Equal(g.Object.(*kmip.Certificate).CertificateValue, env.ca.Cert.Raw) {
		t.Fatal("certificate differs")
	}
	for _, x := range []string{id, ecID, pubID, aesID, certID} {
		_, _ = cl.Revoke(x).WithRevocationReasonCode(kmip.RevocationReasonCodeCessationOfOperation).Exec()
		must[*payloads.DestroyResponsePayload](t)(cl.Destroy(x).Exec())
	}
}

// TestOVHBatches sends multi-item batches: the ID placeholder carries the created key to the
// next items, and BatchErrorContinuationOption decides what happens after a failure.
func TestOVHBatches(t *testing.T) {
	cl := ovhClient(t, "ovh")
	ctx := context.Background()
	create := &payloads.CreateRequestPayload{ObjectType: kmip.ObjectTypeSymmetricKey, TemplateAttribute: kmip.TemplateAttribute{Attribute: []kmip.Attribute{
		{AttributeName: kmip.AttributeNameCryptographicAlgorithm, AttributeValue: kmip.CryptographicAlgorithmAES},
		{AttributeName: kmip.AttributeNameCryptographicLength, AttributeValue: int32(128)},
		{AttributeName: kmip.AttributeNameCryptographicUsageMask, AttributeValue: kmip.CryptographicUsageEncrypt}}}}
	res, err := cl.Batch(ctx, create, &payloads.ActivateRequestPayload{}, &payloads.GetAttributesRequestPayload{AttributeName: []kmip.AttributeName{kmip.AttributeNameState}})
	if err != nil {
		t.Fatal(err)
	}
	pls, err := res.Unwrap()
	if err != nil {
		t.Fatal(err)
	}
	id := pls[0].(*payloads.CreateResponsePayload).UniqueIdentifier
	if pls[1].(*payloads.ActivateResponsePayload).UniqueIdentifier != id {
		t.Fatal("Activate did not use the ID placeholder")
	}
	ga := pls[2].(*payloads.GetAttributesResponsePayload)
	if ga.UniqueIdentifier != id || attrValues(ga, kmip.AttributeNameState)[0] != kmip.StateActive {
		t.Fatalf("GetAttributes through the placeholder: %+v", ga)
	}

	// Stop (the default): later items are not run.
	missing := &payloads.GetAttributesRequestPayload{UniqueIdentifier: strings.Repeat("ab", 20)}
	res, err = cl.BatchOpt(ctx, []kmip.OperationPayload{missing, &payloads.ActivateRequestPayload{UniqueIdentifier: id}}, kmipclient.OnBatchErr(kmip.BatchErrorContinuationOptionStop))
	if err != nil {
		t.Fatal(err)
	}
	if res[0].ResultReason != kmip.ResultReasonItemNotFound || res[1].ResultReason != kmip.ResultReasonOperationCanceledByRequester {
		t.Fatalf("Stop: %v / %v", res[0].ResultReason, res[1].ResultReason)
	}
	// Continue: they are.
	res, err = cl.BatchOpt(ctx, []kmip.OperationPayload{missing, &payloads.GetAttributeListRequestPayload{UniqueIdentifier: id}}, kmipclient.OnBatchErr(kmip.BatchErrorContinuationOptionContinue))
	if err != nil || res[1].ResultStatus != kmip.ResultStatusSuccess {
		t.Fatalf("Continue: %v %+v", err, res)
	}
	// Undo: the created key is removed again and its item reports Operation Undone.
	res, err = cl.BatchOpt(ctx, []kmip.OperationPayload{create, &payloads.ActivateRequestPayload{}, missing}, kmipclient.OnBatchErr(kmip.BatchErrorContinuationOptionUndo))
	if err != nil {
		t.Fatal(err)
	}
	if res[0].ResultStatus != kmip.ResultStatusOperationUndone || res[1].ResultStatus != kmip.ResultStatusOperationUndone || res[2].ResultStatus != kmip.ResultStatusOperationFailed {
		t.Fatalf("Undo statuses: %v %v %v", res[0].ResultStatus, res[1].ResultStatus, res[2].ResultStatus)
	}
	// The undone key is gone: only the first batch's key carries this template.
	loc := must[*payloads.LocateResponsePayload](t)(cl.Locate().WithObjectType(kmip.ObjectTypeSymmetricKey).WithAttribute(kmip.AttributeNameCryptographicLength, int32(128)).Exec())
	for _, u := range loc.UniqueIdentifier {
		if rec, _ := env.km.Get(u); rec.State != "active" {
			t.Errorf("undone key %s survived (state %s)", u, rec.State)
		}
	}

	// Locate + Get in one batch: the located object becomes the placeholder.
	res, err = cl.Batch(ctx, &payloads.LocateRequestPayload{Attribute: []kmip.Attribute{{AttributeName: kmip.AttributeNameCryptographicLength, AttributeValue: int32(128)}}},
		&payloads.GetAttributesRequestPayload{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := res.Unwrap(); err != nil {
		t.Fatal(err)
	}
	must[*payloads.RevokeResponsePayload](t)(cl.Revoke(id).WithRevocationReasonCode(kmip.RevocationReasonCodeCessationOfOperation).Exec())
	must[*payloads.DestroyResponsePayload](t)(cl.Destroy(id).Exec())
}

// TestOVHMixedVersions sends requests of every 1.x version on one connection; each answer speaks
// the version of its request.
func TestOVHMixedVersions(t *testing.T) {
	cl := ovhClient(t, "ovh")
	for _, minor := range []int32{0, 1, 2, 3, 4, 2, 0} {
		v := kmip.ProtocolVersion{ProtocolVersionMajor: 1, ProtocolVersionMinor: minor}
		bi := roundtrip(t, cl, v, &payloads.QueryRequestPayload{QueryFunction: []kmip.QueryFunction{kmip.QueryFunctionOperations}})
		mustSucceed(t, bi)
		ops := bi.ResponsePayload.(*payloads.QueryResponsePayload).Operations
		ceiling := map[int32]kmip.Operation{0: 0x1c, 1: 0x1e, 2: 0x29, 3: 0x29, 4: 0x2b}[minor]
		for _, op := range ops {
			if op > ceiling {
				t.Errorf("1.%d lists %v", minor, op)
			}
		}
	}
	// An operation the version does not define is refused as not supported.
	bi := roundtrip(t, cl, kmip.V1_0, &payloads.DiscoverVersionsRequestPayload{})
	if bi.ResultReason != kmip.ResultReasonOperationNotSupported {
		t.Fatalf("DiscoverVersions at 1.0: %v", bi.ResultReason)
	}
}

// TestOwnership checks that objects belong to their creator: others get Item Not Found and do not
// locate them; an admin sees and manages everything; a limited identity is refused operations.
func TestOwnership(t *testing.T) {
	alice, bob, admin, limited := ovhClient(t, "alice"), ovhClient(t, "bob"), ovhClient(t, "admin"), ovhClient(t, "limited")
	id := must[*payloads.CreateResponsePayload](t)(alice.Create().AES(128, kmip.CryptographicUsageEncrypt).WithName("alice-only").Exec()).UniqueIdentifier
	_, err := bob.GetAttributes(id).Exec()
	kmipErr(t, err, kmip.ResultReasonItemNotFound)
	_, err = bob.Destroy(id).Exec()
	kmipErr(t, err, kmip.ResultReasonItemNotFound)
	_, err = bob.Activate(id).Exec()
	kmipErr(t, err, kmip.ResultReasonItemNotFound)
	if l := must[*payloads.LocateResponsePayload](t)(bob.Locate().WithName("alice-only").Exec()); len(l.UniqueIdentifier) != 0 {
		t.Fatalf("bob locates %v", l.UniqueIdentifier)
	}
	if l := must[*payloads.LocateResponsePayload](t)(admin.Locate().WithName("alice-only").Exec()); len(l.UniqueIdentifier) != 1 {
		t.Fatalf("admin locates %v", l.UniqueIdentifier)
	}
	if l := must[*payloads.LocateResponsePayload](t)(limited.Locate().WithName("alice-only").Exec()); len(l.UniqueIdentifier) != 0 {
		t.Fatalf("limited locates %v", l.UniqueIdentifier)
	}
	_, err = limited.Create().AES(128, kmip.CryptographicUsageEncrypt).Exec()
	kmipErr(t, err, kmip.ResultReasonPermissionDenied)
	must[*payloads.QueryResponsePayload](t)(limited.Query().Operations().Exec())
	must[*payloads.DestroyResponsePayload](t)(admin.Destroy(id).Exec())
	if rec, ok := env.km.Get(id); !ok || rec.State != keymap.Destroyed {
		t.Fatalf("admin's Destroy left %+v, want a Destroyed row", rec)
	}
}
