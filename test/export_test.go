package test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"
	"github.com/ovh/kmip-go/payloads"

	"github.com/p11bridge/p11bridge/signer"
)

// The flows storage arrays, databases and key-wrapping clients run, over mutual TLS with the ovh
// KMIP client against the binary, with policies as an operator writes them: "storage" may export
// (export = true), "plain" may run every operation but has no export right.

type exportEnv struct {
	t              *testing.T
	b              *bridge
	storage, plain *kmipclient.Client
}

func newExportEnv(t *testing.T) *exportEnv {
	b := newBridge(t, t.TempDir(), "exp")
	storage, plain := b.issueClient("storage-array"), b.issueClient("plain")
	b.writeConfig(hcfg{policies: fmt.Sprintf(`policy "storage" {
  kmip       = ["*"]
  export     = true
  identities = [%q]
}
policy "plain" {
  kmip       = ["*"]
  identities = [%q]
}
`, storage.id, plain.id)})
	b.startBin(binary)
	e := &exportEnv{t: t, b: b}
	var err error
	if e.storage, err = b.kmipAs(storage); err != nil {
		t.Fatal(err)
	}
	if e.plain, err = b.kmipAs(plain); err != nil {
		t.Fatal(err)
	}
	return e
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func keyBytes(t *testing.T, g *payloads.GetResponsePayload) []byte {
	t.Helper()
	var kb *kmip.KeyBlock
	switch o := g.Object.(type) {
	case *kmip.SymmetricKey:
		kb = &o.KeyBlock
	case *kmip.SecretData:
		kb = &o.KeyBlock
	default:
		t.Fatalf("Get answered a %T", g.Object)
	}
	if kb.KeyValue != nil && kb.KeyValue.Wrapped != nil {
		return *kb.KeyValue.Wrapped
	}
	b, err := kb.GetBytes()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func wantReason(t *testing.T, err error, reason, what string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("reason=%q", reason)) {
		t.Fatalf("%s: %v, want %s", what, err, reason)
	}
}

func cbcDecrypt(t *testing.T, key, iv, ct []byte) []byte {
	t.Helper()
	blk, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, len(ct))
	cipher.NewCBCDecrypter(blk, iv).CryptBlocks(out, ct)
	n := int(out[len(out)-1])
	return out[:len(out)-n]
}

// TestStorageArrayFlow: Create AES-256 with a Name, Activate, Get, Locate by Name, GetAttributes,
// ReKey, Get of the replacement, Revoke, Destroy, GetAttributes of the destroyed key.
func TestStorageArrayFlow(t *testing.T) {
	e := newExportEnv(t)
	c := e.storage
	name := "array-lun-7"
	id := must[*payloads.CreateResponsePayload](t)(c.Create().AES(256, kmip.CryptographicUsageEncrypt|kmip.CryptographicUsageDecrypt).WithName(name).Exec()).UniqueIdentifier
	must[*payloads.ActivateResponsePayload](t)(c.Activate(id).Exec())
	key := keyBytes(t, must[*payloads.GetResponsePayload](t)(c.Get(id).Exec()))
	if len(key) != 32 {
		t.Fatalf("Get gave %d bytes", len(key))
	}
	// The key Get gave is the key the token encrypts with.
	enc := must[*payloads.EncryptResponsePayload](t)(c.Encrypt(id).WithCryptographicParameters(kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeCBC, PaddingMethod: kmip.PaddingMethodPKCS5}).Data([]byte("block 0")).Exec())
	if got := cbcDecrypt(t, key, enc.IVCounterNonce, enc.Data); string(got) != "block 0" {
		t.Fatalf("the key from Get decrypts to %q", got)
	}
	if l := must[*payloads.LocateResponsePayload](t)(c.Locate().WithName(name).Exec()); !slices.Equal(l.UniqueIdentifier, []string{id}) {
		t.Fatalf("Locate by Name: %v", l.UniqueIdentifier)
	}
	ga := must[*payloads.GetAttributesResponsePayload](t)(c.GetAttributes(id, kmip.AttributeNameState, kmip.AttributeNameExtractable).Exec())
	if st := attrValue(ga, kmip.AttributeNameState); st != kmip.StateActive {
		t.Fatalf("State: %v", st)
	}
	if ex := attrValue(ga, kmip.AttributeNameExtractable); ex != true {
		t.Fatalf("Extractable: %v", ex)
	}
	nu := must[*payloads.RekeyResponsePayload](t)(c.Rekey(id).Exec()).UniqueIdentifier
	key2 := keyBytes(t, must[*payloads.GetResponsePayload](t)(c.Get(nu).Exec()))
	if len(key2) != 32 || bytes.Equal(key, key2) {
		t.Fatal("the replacement's Get gave no new key")
	}
	if l := must[*payloads.LocateResponsePayload](t)(c.Locate().WithName(name).Exec()); len(l.UniqueIdentifier) != 2 || l.UniqueIdentifier[0] != nu {
		t.Fatalf("Locate by Name after ReKey: %v, want the replacement %s first", l.UniqueIdentifier, nu)
	}
	must[*payloads.RevokeResponsePayload](t)(c.Revoke(id).WithRevocationReasonCode(kmip.RevocationReasonCodeCessationOfOperation).Exec())
	must[*payloads.DestroyResponsePayload](t)(c.Destroy(id).Exec())
	ga = must[*payloads.GetAttributesResponsePayload](t)(c.GetAttributes(id, kmip.AttributeNameState, kmip.AttributeNameDestroyDate, kmip.AttributeNameName).Exec())
	if st := attrValue(ga, kmip.AttributeNameState); st != kmip.StateDestroyed {
		t.Fatalf("State after Destroy: %v", st)
	}
	if d, ok := attrValue(ga, kmip.AttributeNameDestroyDate).(time.Time); !ok || time.Since(d) > time.Minute {
		t.Fatalf("Destroy Date: %v", attrValue(ga, kmip.AttributeNameDestroyDate))
	}
	_, err := c.Get(id).Exec()
	wantReason(t, err, "PermissionDenied", "Get of a destroyed key (1.4: lifecycle refusals are Permission Denied)")
	_, err = c.Destroy(id).Exec()
	wantReason(t, err, "PermissionDenied", "second Destroy")
	if l := must[*payloads.LocateResponsePayload](t)(c.Locate().WithName(name).Exec()); !slices.Equal(l.UniqueIdentifier, []string{nu}) {
		t.Fatalf("Locate by Name after Destroy: %v", l.UniqueIdentifier)
	}
	// Every export is an audit record of its own.
	audit, _ := os.ReadFile(filepath.Join(e.b.dir, "audit.log"))
	exports := 0
	for _, line := range strings.Split(string(audit), "\n") {
		var rec map[string]string
		if json.Unmarshal([]byte(line), &rec) == nil && rec["operation"] == "Export" && (rec["key"] == id || rec["key"] == nu) {
			exports++
			if !strings.Contains(rec["via"], "wrapped in the token") {
				t.Errorf("export record without how: %s", line)
			}
		}
	}
	if exports != 2 {
		t.Fatalf("%d export records for the two Gets", exports)
	}
	// Operators see which keys may leave: ops /status and keys list.
	resp, err := http.Get("http://" + e.b.ops + "/status")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Signers []struct {
			Exportable []string `json:"exportable_keys"`
			ExportWay  string   `json:"export_way"`
		} `json:"signers"`
	}
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if len(st.Signers) != 1 || !slices.Equal(st.Signers[0].Exportable, []string{nu}) || !strings.Contains(st.Signers[0].ExportWay, "wrapped") {
		t.Fatalf("/status: %+v, want the live exportable key %s", st, nu)
	}
	out, code := runCmd(t, e.b.env, "keys", "list", "--config", e.b.cfgPath)
	if code != 0 || !lineHas(out, nu, "yes") || !lineHas(out, id, "destroyed") {
		t.Fatalf("keys list:\n%s", out)
	}
	out, code = runCmd(t, e.b.env, "keys", "show", "--config", e.b.cfgPath, nu)
	if code != 0 || !strings.Contains(out, "exportable yes: made under the export right") {
		t.Fatalf("keys show:\n%s", out)
	}
}

func lineHas(out, id, word string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, id+" ") && strings.Contains(l, " "+word+" ") {
			return true
		}
	}
	return false
}

func attrValue(ga *payloads.GetAttributesResponsePayload, name kmip.AttributeName) any {
	for _, a := range ga.Attribute {
		if a.AttributeName == name {
			return a.AttributeValue
		}
	}
	return nil
}

// TestDatabaseFlow: Register a 96-byte Secret Data (a MongoDB master key), Activate, Get; Create
// an AES key and use it for AES-CBC in the server.
func TestDatabaseFlow(t *testing.T) {
	e := newExportEnv(t)
	c := e.storage
	master := randomBytes(t, 96)
	id := must[*payloads.RegisterResponsePayload](t)(c.Register().Secret(kmip.SecretDataTypeSeed, master).WithName("mongodb-master").Exec()).UniqueIdentifier
	must[*payloads.ActivateResponsePayload](t)(c.Activate(id).Exec())
	if got := keyBytes(t, must[*payloads.GetResponsePayload](t)(c.Get(id).Exec())); !bytes.Equal(got, master) {
		t.Fatal("96-byte secret data came back different")
	}
	// Over the cap: refused with the cap named.
	_, err := c.Register().Secret(kmip.SecretDataTypeSeed, make([]byte, signer.MaxSecretData+1)).Exec()
	if err == nil || !strings.Contains(err.Error(), fmt.Sprint(signer.MaxSecretData)) {
		t.Fatalf("secret data over the cap: %v", err)
	}
	k := must[*payloads.CreateResponsePayload](t)(c.Create().AES(256, kmip.CryptographicUsageEncrypt|kmip.CryptographicUsageDecrypt).WithName("mysql-tde").Exec()).UniqueIdentifier
	must[*payloads.ActivateResponsePayload](t)(c.Activate(k).Exec())
	cbc := kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeCBC, PaddingMethod: kmip.PaddingMethodPKCS5}
	iv := randomBytes(t, 16)
	enc := must[*payloads.EncryptResponsePayload](t)(c.Encrypt(k).WithCryptographicParameters(cbc).WithIvCounterNonce(iv).Data([]byte("tablespace key")).Exec())
	dec := must[*payloads.DecryptResponsePayload](t)(c.Decrypt(k).WithCryptographicParameters(cbc).WithIvCounterNonce(iv).Data(enc.Data).Exec())
	if string(dec.Data) != "tablespace key" {
		t.Fatalf("AES-CBC round trip: %q", dec.Data)
	}
}

// TestWrappedExportFlow: a KEK, an exportable key, Get wrapped under the KEK in the token; unwrap
// with the KEK's value where the KEK is exportable; else Register of the wrapped bytes (unwrapped
// into the token) and a decrypt round trip.
func TestWrappedExportFlow(t *testing.T) {
	e := newExportEnv(t)
	c := e.storage
	wrapMask := kmip.CryptographicUsageWrapKey | kmip.CryptographicUsageUnwrapKey
	kek := must[*payloads.CreateResponsePayload](t)(c.Create().AES(256, wrapMask).WithName("kek").Exec()).UniqueIdentifier
	must[*payloads.ActivateResponsePayload](t)(c.Activate(kek).Exec())
	dek := must[*payloads.CreateResponsePayload](t)(c.Create().AES(256, kmip.CryptographicUsageEncrypt|kmip.CryptographicUsageDecrypt).WithName("dek").Exec()).UniqueIdentifier
	must[*payloads.ActivateResponsePayload](t)(c.Activate(dek).Exec())
	spec := func(kek string, mode kmip.BlockCipherMode) kmip.KeyWrappingSpecification {
		return kmip.KeyWrappingSpecification{WrappingMethod: kmip.WrappingMethodEncrypt, EncodingOption: kmip.EncodingOptionNoEncoding,
			EncryptionKeyInformation: &kmip.EncryptionKeyInformation{UniqueIdentifier: kek, CryptographicParameters: &kmip.CryptographicParameters{BlockCipherMode: mode}}}
	}
	dekValue := keyBytes(t, must[*payloads.GetResponsePayload](t)(c.Get(dek).Exec()))
	kekValue := keyBytes(t, must[*payloads.GetResponsePayload](t)(c.Get(kek).Exec()))
	for _, w := range []struct {
		mode   kmip.BlockCipherMode
		unwrap func(kek, b []byte) ([]byte, error)
	}{{kmip.BlockCipherModeNISTKeyWrap, signer.AESKeyUnwrap}, {kmip.BlockCipherModeAESKeyWrapPadding, signer.AESKeyUnwrapPad}} {
		g := must[*payloads.GetResponsePayload](t)(c.Get(dek).WithKeyWrapping(spec(kek, w.mode)).Exec())
		wrapped := keyBytes(t, g)
		if bytes.Equal(wrapped, dekValue) {
			t.Fatalf("%v: the wrapped answer is the plain key", w.mode)
		}
		if kb := g.Object.(*kmip.SymmetricKey).KeyBlock; kb.KeyWrappingData == nil || kb.KeyWrappingData.EncryptionKeyInformation.UniqueIdentifier != kek {
			t.Fatalf("%v: Key Wrapping Data %+v", w.mode, kb.KeyWrappingData)
		}
		if back, err := w.unwrap(kekValue, wrapped); err != nil || !bytes.Equal(back, dekValue) {
			t.Fatalf("%v: unwrapped with the KEK's value: %x %v", w.mode, back, err)
		}
	}

	// A KEK that never leaves the token: the wrapped key, registered back, is unwrapped in the
	// token and decrypts what the original encrypted.
	sealed := must[*payloads.CreateResponsePayload](t)(c.Create().AES(256, wrapMask).WithName("kek-sealed").WithAttribute(kmip.AttributeNameExtractable, false).Exec()).UniqueIdentifier
	must[*payloads.ActivateResponsePayload](t)(c.Activate(sealed).Exec())
	_, err := c.Get(sealed).Exec()
	wantReason(t, err, "NotExtractable", "Get of a KEK made with Extractable false")
	g := must[*payloads.GetResponsePayload](t)(c.Get(dek).WithKeyWrapping(spec(sealed, kmip.BlockCipherModeAESKeyWrapPadding)).Exec())
	reg := must[*payloads.RegisterResponsePayload](t)(c.Register().Object(g.Object).WithAttribute(kmip.AttributeNameCryptographicUsageMask, kmip.CryptographicUsageEncrypt|kmip.CryptographicUsageDecrypt).Exec()).UniqueIdentifier
	must[*payloads.ActivateResponsePayload](t)(c.Activate(reg).Exec())
	cbc := kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeCBC, PaddingMethod: kmip.PaddingMethodPKCS5}
	enc := must[*payloads.EncryptResponsePayload](t)(c.Encrypt(dek).WithCryptographicParameters(cbc).Data([]byte("backup set 42")).Exec())
	dec := must[*payloads.DecryptResponsePayload](t)(c.Decrypt(reg).WithCryptographicParameters(cbc).WithIvCounterNonce(enc.IVCounterNonce).Data(enc.Data).Exec())
	if string(dec.Data) != "backup set 42" {
		t.Fatalf("decrypt with the key registered wrapped: %q", dec.Data)
	}
}

// TestExportPolicy: an identity without the export right gets Permission Denied for Get of a key
// the token made, its own included, and has no way around it: no wrap under a key it holds, no
// ReKey into an exportable key, no attribute change that makes one, no asking for one.
func TestExportPolicy(t *testing.T) {
	e := newExportEnv(t)
	c := e.plain
	id := must[*payloads.CreateResponsePayload](t)(c.Create().AES(256, kmip.CryptographicUsageEncrypt).WithName("plain-key").Exec()).UniqueIdentifier
	must[*payloads.ActivateResponsePayload](t)(c.Activate(id).Exec())
	_, err := c.Get(id).Exec()
	wantReason(t, err, "PermissionDenied", "Get of its own generated key without the export right")
	kek := must[*payloads.CreateResponsePayload](t)(c.Create().AES(256, kmip.CryptographicUsageWrapKey).WithName("plain-kek").Exec()).UniqueIdentifier
	must[*payloads.ActivateResponsePayload](t)(c.Activate(kek).Exec())
	_, err = c.Get(id).WithKeyWrapping(kmip.KeyWrappingSpecification{WrappingMethod: kmip.WrappingMethodEncrypt,
		EncryptionKeyInformation: &kmip.EncryptionKeyInformation{UniqueIdentifier: kek}}).Exec()
	wantReason(t, err, "PermissionDenied", "Get wrapped under its own KEK")
	_, err = c.Create().AES(256, kmip.CryptographicUsageEncrypt).WithName("plain-x").WithAttribute(kmip.AttributeNameExtractable, true).Exec()
	wantReason(t, err, "PermissionDenied", "Create with Extractable true")
	nu := must[*payloads.RekeyResponsePayload](t)(c.Rekey(id).Exec()).UniqueIdentifier
	_, err = c.Get(nu).Exec()
	wantReason(t, err, "PermissionDenied", "Get of the ReKey replacement")
	_, err = c.Rekey(id).WithAttribute(kmip.AttributeNameExtractable, true).Exec()
	wantReason(t, err, "PermissionDenied", "ReKey asking for an exportable replacement")
	_, err = c.ModifyAttribute(id, kmip.AttributeNameExtractable, true).Exec()
	wantReason(t, err, "PermissionDenied", "ModifyAttribute(Extractable)")
	_, err = c.AddAttribute(id, kmip.AttributeNameExtractable, true).Exec()
	wantReason(t, err, "PermissionDenied", "AddAttribute(Extractable)")
	ga := must[*payloads.GetAttributesResponsePayload](t)(c.GetAttributes(nu, kmip.AttributeNameExtractable, kmip.AttributeNameNeverExtractable).Exec())
	if attrValue(ga, kmip.AttributeNameExtractable) != false || attrValue(ga, kmip.AttributeNameNeverExtractable) != true {
		t.Fatalf("the replacement's Extractable/Never Extractable: %+v", ga.Attribute)
	}
	// Neither may the exporting identity take another's key out: it does not even see it.
	_, err = e.storage.Get(id).Exec()
	wantReason(t, err, "ItemNotFound", "another identity's key")
	// A 1.x request says nothing: the policy decides (export = true: the key may leave).
	sid := must[*payloads.CreateResponsePayload](t)(e.storage.Create().AES(128, kmip.CryptographicUsageEncrypt).WithName("storage-key").Exec()).UniqueIdentifier
	if len(keyBytes(t, must[*payloads.GetResponsePayload](t)(e.storage.Get(sid).Exec()))) != 16 {
		t.Fatal("the export policy's key does not come back")
	}
}
