package test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ovh/kmip-go"

	"github.com/p11bridge/p11bridge/keymap"
)

// TestRowsOfEarlierVersions: a keymap written before the key model keeps working. A KES key made
// then is still a KES key; a KMIP object that KES used by its Name no longer is, `check` lists it
// with the command that shares it, and after `keys share-kes` (audited) KES serves it again. A
// usage mask and dates stored in the earlier form (KMIP JSON under kmip.*) still restrict the key.
func TestRowsOfEarlierVersions(t *testing.T) {
	b := newBridge(t, t.TempDir(), "upgrade")
	kmipUser := b.issueClient("kmip-user")
	b.writeConfig(hcfg{signers: []string{"upgrade"}, policies: fmt.Sprintf("policy \"kmip\" {\n  kmip = [\"*\"]\n  identities = [%q]\n}\n", kmipUser.id)})
	b.startBin(binary)
	admin := b.kesAs(b.adminClient())
	if err := kesWant(admin, http.MethodPost, "/v1/key/create/old-kes", nil, http.StatusOK); err != nil {
		t.Fatal(err)
	}
	old, st, msg, err := admin.generate("old-kes", nil)
	if err != nil || st != http.StatusOK {
		t.Fatalf("generate: %d %s %v", st, msg, err)
	}
	c, err := b.kmipAs(kmipUser)
	if err != nil {
		t.Fatal(err)
	}
	byName, err := c.Create().AES(256, kmip.CryptographicUsageEncrypt|kmip.CryptographicUsageDecrypt).WithName("used-by-name").
		WithAttribute(kmip.AttributeNameActivationDate, time.Now().Add(-time.Minute)).Exec()
	if err != nil {
		t.Fatal(err)
	}
	masked, err := c.Create().AES(256, kmip.CryptographicUsageDecrypt).WithName("decrypt-only").
		WithAttribute(kmip.AttributeNameActivationDate, time.Now().Add(-time.Minute)).Exec()
	if err != nil {
		t.Fatal(err)
	}
	b.proc.stop(t)

	// Put the facts of "decrypt-only" back into the form earlier versions stored.
	km, err := keymap.Open(b.keymap, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec, ok := km.Get(masked.UniqueIdentifier)
	if !ok || rec.Attrs["key.usage"] != "8" || rec.Attrs["key.activation-date"] == "" {
		km.Close()
		t.Fatalf("row as written now: %+v", rec)
	}
	act, _ := time.Parse(time.RFC3339Nano, rec.Attrs["key.activation-date"])
	delete(rec.Attrs, "key.usage")
	delete(rec.Attrs, "key.activation-date")
	rec.Attrs["kmip.CryptographicUsageMask"] = `[{"tag":"CryptographicUsageMask","type":"Integer","value":"Decrypt"}]`
	rec.Attrs["kmip.ActivationDate"] = fmt.Sprintf(`[{"tag":"ActivationDate","type":"DateTime","value":%q}]`, act.UTC().Format(time.RFC3339))
	rec.Updated = time.Time{}
	err = km.Put(rec)
	km.Close()
	if err != nil {
		t.Fatal(err)
	}

	out, code := runCmd(t, b.env, "check", "--config", b.cfgPath)
	want := fmt.Sprintf("p11bridge keys share-kes --config %s %s used-by-name", b.cfgPath, byName.UniqueIdentifier)
	if code != 0 || !strings.Contains(out, want) || strings.Contains(out, "old-kes\"") {
		t.Fatalf("check (exit %d) does not list the object KES used by name with the command that shares it (%q):\n%s", code, want, out)
	}

	b.startBin(binary)
	admin = b.kesAs(b.adminClient())
	if pt, st, msg, err := admin.decrypt("old-kes", old.Ciphertext, nil); err != nil || st != http.StatusOK || string(pt) != string(old.Plaintext) {
		t.Fatalf("a KES key of before: decrypt %d %s %v", st, msg, err)
	}
	if _, st, msg, _ := admin.generate("used-by-name", nil); st != http.StatusNotFound || msg != "key does not exist" {
		t.Fatalf("KES generate with an unshared KMIP object's name: %d %s", st, msg)
	}
	c, err = b.kmipAs(kmipUser)
	if err != nil {
		t.Fatal(err)
	}
	gcm := kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeGCM, TagLength: 16}
	if _, err := c.Encrypt(masked.UniqueIdentifier).WithCryptographicParameters(gcm).Data([]byte("x")).Exec(); err == nil || !strings.Contains(err.Error(), "Usage Mask") {
		t.Fatalf("encrypt with a decrypt-only key stored the earlier way: %v", err)
	}
	attrs, err := c.GetAttributes(masked.UniqueIdentifier, kmip.AttributeNameCryptographicUsageMask, kmip.AttributeNameState).Exec()
	if err != nil {
		t.Fatal(err)
	}
	got := map[kmip.AttributeName]any{}
	for _, a := range attrs.Attribute {
		got[a.AttributeName] = a.AttributeValue
	}
	if got[kmip.AttributeNameCryptographicUsageMask] != kmip.CryptographicUsageDecrypt || got[kmip.AttributeNameState] != kmip.StateActive {
		t.Fatalf("attributes of a row stored the earlier way: %v", got)
	}
	b.proc.stop(t)

	out, code = runCmd(t, b.env, "keys", "share-kes", "--config", b.cfgPath, byName.UniqueIdentifier, "used-by-name")
	if code != 0 || !strings.Contains(out, "now serves KES key \"used-by-name\"") {
		t.Fatalf("keys share-kes: exit %d\n%s", code, out)
	}
	shared := false
	for _, l := range auditLines(t, b.dir+"/audit.log") {
		if l["operation"] == "keys/share-kes" && l["identity"] == "operator" && l["result"] == "success" &&
			strings.Contains(fmt.Sprint(l["key"]), byName.UniqueIdentifier) {
			shared = true
		}
	}
	if !shared {
		t.Fatal("keys share-kes left no audit record")
	}
	b.startBin(binary)
	admin = b.kesAs(b.adminClient())
	dk, st, msg, err := admin.generate("used-by-name", nil)
	if err != nil || st != http.StatusOK {
		t.Fatalf("KES generate once shared: %d %s %v", st, msg, err)
	}
	if pt, st, msg, err := admin.decrypt("used-by-name", dk.Ciphertext, nil); err != nil || st != http.StatusOK || string(pt) != string(dk.Plaintext) {
		t.Fatalf("KES decrypt once shared: %d %s %v", st, msg, err)
	}
	// It keeps its KMIP owner, who still reaches it.
	c, err = b.kmipAs(kmipUser)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetAttributes(byName.UniqueIdentifier).Exec(); err != nil {
		t.Fatalf("the owner's GetAttributes of the shared key: %v", err)
	}
}
