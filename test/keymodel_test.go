package test

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"
)

// The key matrix of docs/guarantees.md ("One key model for both protocols") is the specification
// this test runs: KMIP objects and KES keys of one identity, used through both protocols by that
// identity, another with the same rights, the admin, and an identity whose policy's keys pattern
// names the keys. See the section's text for the cells.

var keyMatrixColumns = []string{"owner", "other", "admin", "granted"}

// readTable parses the rows of a matrix between <!-- marker:start --> and <!-- marker:end -->:
// front end, request, object, then one cell per column.
func readTable(t *testing.T, marker string, columns []string) []matrixRow {
	t.Helper()
	data, err := os.ReadFile(matrixDoc)
	if err != nil {
		t.Fatal(err)
	}
	var rows []matrixRow
	in := false
	for i, l := range strings.Split(string(data), "\n") {
		switch strings.TrimSpace(l) {
		case "<!-- " + marker + ":start -->":
			in = true
			continue
		case "<!-- " + marker + ":end -->":
			in = false
			continue
		}
		if !in || !strings.HasPrefix(l, "|") || strings.HasPrefix(l, "|---") || strings.Contains(l, "| front end |") {
			continue
		}
		cells := strings.Split(strings.Trim(strings.TrimSpace(l), "|"), "|")
		for j := range cells {
			cells[j] = strings.Trim(strings.TrimSpace(cells[j]), "`")
		}
		if len(cells) != 3+len(columns) {
			t.Fatalf("%s:%d: %d cells, want %d", matrixDoc, i+1, len(cells), 3+len(columns))
		}
		r := matrixRow{line: i + 1, frontEnd: cells[0], req: cells[1], object: cells[2], want: map[string]string{}}
		for j, col := range columns {
			r.want[col] = cells[3+j]
		}
		rows = append(rows, r)
	}
	if len(rows) == 0 {
		t.Fatalf("%s has no table between <!-- %s:start --> and <!-- %s:end -->", matrixDoc, marker, marker)
	}
	return rows
}

type keyEnv struct {
	t    *testing.T
	b    *bridge
	kes  map[string]*kesHTTP
	kmip map[string]*kmipclient.Client
	n    atomic.Int64
}

// fullRights are the rights of owner, granted and other: every KMIP operation and KES key route.
const fullRights = `allow = ["/v1/key/*"]
  kmip  = ["*"]`

func TestKeyMatrix(t *testing.T) {
	rows := readTable(t, "key-matrix", keyMatrixColumns)
	b := newBridge(t, t.TempDir(), "keys")
	ids := map[string]clientID{"owner": b.issueClient("owner"), "other": b.issueClient("other"), "admin": b.adminClient(), "granted": b.issueClient("granted")}
	b.writeConfig(hcfg{signers: []string{"keys"}, policies: fmt.Sprintf(`policy "team" {
  %s
  keys  = ["mx-*"]
  identities = [%q, %q]
}
policy "full" {
  %s
  identities = [%q]
}
`, fullRights, ids["owner"].id, ids["granted"].id, fullRights, ids["other"].id)})
	b.startBin(binary)
	e := &keyEnv{t: t, b: b, kes: map[string]*kesHTTP{}, kmip: map[string]*kmipclient.Client{}}
	for name, id := range ids {
		e.kes[name] = b.kesAs(id)
		c, err := kmipclient.Dial(b.kmip, kmipclient.WithTlsConfig(b.tlsFor(id)), kmipclient.EnforceVersion(kmip.V1_4))
		if err != nil {
			t.Fatalf("KMIP dial as %s: %v", name, err)
		}
		t.Cleanup(func() { closeKMIP(c) })
		e.kmip[name] = c
	}
	mismatches := 0
	for _, r := range rows {
		for _, col := range keyMatrixColumns {
			var got string
			if r.frontEnd == "KES" {
				got = e.runKES(r, col)
			} else {
				got = e.runKMIP(r, col)
			}
			if got != r.want[col] {
				mismatches++
				t.Errorf("%s:%d %s %s (%s) as %s: got %s, the table says %s", matrixDoc, r.line, r.frontEnd, r.req, r.object, col, got, r.want[col])
			}
		}
	}
	t.Logf("key matrix: %d rows × %d identities, %d cells differ from %s", len(rows), len(keyMatrixColumns), mismatches, matrixDoc)
}

func (e *keyEnv) name(kind string) string { return fmt.Sprintf("mx-%s-%d", kind, e.n.Add(1)) }

// kmipKey makes an AES-256 KMIP object of owner's: Active unless preActive.
func (e *keyEnv) kmipKey(preActive bool) (id, name string) {
	e.t.Helper()
	name = e.name("obj")
	ex := e.kmip["owner"].Create().AES(256, kmip.CryptographicUsageEncrypt|kmip.CryptographicUsageDecrypt).WithName(name)
	if !preActive {
		ex = ex.WithAttribute(kmip.AttributeNameActivationDate, time.Now().Add(-time.Minute))
	}
	resp, err := ex.Exec()
	if err != nil {
		e.t.Fatalf("Create AES as owner: %v", err)
	}
	return resp.UniqueIdentifier, name
}

// kesKey makes a KES key of owner's and returns its name and the KMIP id of its version.
func (e *keyEnv) kesKey() (name, id string) {
	e.t.Helper()
	name = e.name("kes")
	if err := kesWant(e.kes["owner"], http.MethodPost, "/v1/key/create/"+name, nil, http.StatusOK); err != nil {
		e.t.Fatalf("KES create as owner: %v", err)
	}
	resp, err := e.kmip["owner"].Locate().WithName(name).Exec()
	if err != nil || len(resp.UniqueIdentifier) != 1 {
		e.t.Fatalf("Locate of the KES key's version as owner: %+v %v", resp, err)
	}
	return name, resp.UniqueIdentifier[0]
}

func (e *keyEnv) runKES(r matrixRow, col string) string {
	method, path, _ := strings.Cut(r.req, " ")
	k := e.kes[col]
	var name string
	var ct []byte
	switch r.object {
	case "name of a KMIP object":
		_, name = e.kmipKey(false)
	case "KES key", "KES key revoked over KMIP":
		var id string
		name, id = e.kesKey()
		dk, st, msg, err := e.kes["owner"].generate(name, nil)
		if err != nil || st != http.StatusOK {
			e.t.Fatalf("generate as owner: %d %s %v", st, msg, err)
		}
		ct = dk.Ciphertext
		if r.object == "KES key revoked over KMIP" {
			if _, err := e.kmip["owner"].Revoke(id).WithRevocationReasonCode(kmip.RevocationReasonCodeCessationOfOperation).Exec(); err != nil {
				e.t.Fatalf("KMIP Revoke of the KES key's version as owner: %v", err)
			}
		}
	default:
		e.t.Fatalf("%s:%d: unknown object %q", matrixDoc, r.line, r.object)
	}
	var body any
	switch {
	case strings.Contains(path, "/import/"):
		body = map[string]any{"key": randomBytes(e.t, 32), "cipher": "AES256"}
	case strings.Contains(path, "/encrypt/"):
		body = map[string]any{"plaintext": []byte("x")}
	case strings.Contains(path, "/decrypt/"):
		if ct == nil {
			// A KMIP object's name: a ciphertext of another key, so only the name decides.
			_, other := e.kesKey()
			dk, _, _, _ := e.kes["owner"].generate(other, nil)
			ct = dk.Ciphertext
		}
		body = map[string]any{"ciphertext": ct}
	case strings.Contains(path, "/hmac/"):
		body = map[string]any{"message": []byte("x")}
	case strings.Contains(path, "/generate/"):
		body = map[string]any{}
	}
	if strings.Contains(path, "/list/") {
		st, out, err := k.do(http.MethodGet, "/v1/key/list/"+name, nil)
		if err != nil || st != http.StatusOK {
			return fmt.Sprintf("list: %d %s %v", st, out, err)
		}
		var l struct{ Names []string }
		if err := json.Unmarshal(out, &l); err != nil {
			return "list: " + err.Error()
		}
		if slices.Contains(l.Names, name) {
			return "listed"
		}
		return "unlisted"
	}
	path = strings.ReplaceAll(path, "{name}", name)
	st, out, err := k.do(method, path, body)
	msg := kesMessage(out)
	switch {
	case err != nil:
		return "error: " + err.Error()
	case st == http.StatusOK:
		return "yes"
	case st == http.StatusNotFound && msg == "key does not exist":
		return "hidden"
	case st == http.StatusForbidden && msg == "not authorized: insufficient permissions":
		return "denied"
	case st == http.StatusConflict && (strings.Contains(msg, "must be Active") || strings.Contains(msg, "Deactivated")):
		return "state"
	case st == http.StatusBadRequest && msg == "key already exists":
		return "exists"
	}
	return fmt.Sprintf("%d %s", st, msg)
}

func (e *keyEnv) runKMIP(r matrixRow, col string) string {
	c := e.kmip[col]
	op, _, _ := strings.Cut(r.req, " (")
	var id, name string
	switch {
	case r.object == "KES key":
		name, id = e.kesKey()
	case op == "Sign" || op == "SignatureVerify" || op == "ReKeyKeyPair":
		name = e.name("pair")
		resp, err := e.kmip["owner"].CreateKeyPair().ECDSA(kmip.RecommendedCurveP_256, kmip.CryptographicUsageSign, kmip.CryptographicUsageVerify).
			PrivateKey().WithName(name).PublicKey().WithName(name + "-pub").Exec()
		if err != nil {
			e.t.Fatalf("CreateKeyPair as owner: %v", err)
		}
		id = resp.PrivateKeyUniqueIdentifier
		if _, err := e.kmip["owner"].Activate(id).Exec(); err != nil {
			e.t.Fatalf("Activate as owner: %v", err)
		}
	case op == "MAC" || op == "MACVerify":
		name = e.name("hmac")
		resp, err := e.kmip["owner"].Create().SymmetricKey(kmip.CryptographicAlgorithmHMACSHA256, 256, kmip.CryptographicUsageMACGenerate|kmip.CryptographicUsageMACVerify).
			WithName(name).WithAttribute(kmip.AttributeNameActivationDate, time.Now().Add(-time.Minute)).Exec()
		if err != nil {
			e.t.Fatalf("Create HMAC as owner: %v", err)
		}
		id = resp.UniqueIdentifier
	default:
		id, name = e.kmipKey(op == "Activate" || op == "Destroy")
	}
	gcm := kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeGCM, TagLength: 16}
	uid := ttlv.Value{Tag: kmip.TagUniqueIdentifier, Value: id}
	var err error
	switch r.req {
	case "Create (Name of a KES key)":
		_, err = c.Create().AES(256, kmip.CryptographicUsageEncrypt).WithName(name).Exec()
	case "Register (Name of a KES key)":
		_, err = c.Register().SymmetricKey(kmip.CryptographicAlgorithmAES, kmip.CryptographicUsageEncrypt, randomBytes(e.t, 32)).WithName(name).Exec()
	case "Locate":
		resp, lerr := c.Locate().WithName(name).Exec()
		if lerr == nil && !slices.Contains(resp.UniqueIdentifier, id) {
			return "hidden"
		}
		err = lerr
	case "Check":
		_, err = c.Request(context.Background(), kmip.NewUnknownPayload(kmip.OperationCheck, uid))
	case "Get":
		_, err = c.Get(id).Exec()
	case "Get (wrapped under the caller's key)":
		// A KEK of the caller's own, named where its policy lets it make keys.
		kekName := e.name("kek")
		if col == "other" {
			kekName = "other-" + kekName
		}
		kek, kerr := c.Create().AES(256, kmip.CryptographicUsageWrapKey).WithName(kekName).
			WithAttribute(kmip.AttributeNameActivationDate, time.Now().Add(-time.Minute)).Exec()
		if kerr != nil {
			e.t.Fatalf("Create a KEK as %s: %v", col, kerr)
		}
		_, err = c.Get(id).WithKeyWrapping(kmip.KeyWrappingSpecification{WrappingMethod: kmip.WrappingMethodEncrypt,
			EncryptionKeyInformation: &kmip.EncryptionKeyInformation{UniqueIdentifier: kek.UniqueIdentifier}}).Exec()
	case "GetAttributes":
		_, err = c.GetAttributes(id).Exec()
	case "GetAttributeList":
		_, err = c.GetAttributeList(id).Exec()
	case "AddAttribute":
		_, err = c.AddAttribute(id, kmip.AttributeNameObjectGroup, "matrix").Exec()
	case "ModifyAttribute":
		_, err = c.ModifyAttribute(id, kmip.AttributeNameName, kmip.Name{NameValue: e.name("renamed"), NameType: kmip.NameTypeUninterpretedTextString}).Exec()
	case "ModifyAttribute (Name of a KES key)":
		taken, _ := e.kesKey()
		_, err = c.ModifyAttribute(id, kmip.AttributeNameName, kmip.Name{NameValue: taken, NameType: kmip.NameTypeUninterpretedTextString}).Exec()
	case "DeleteAttribute":
		if _, aerr := e.kmip["owner"].AddAttribute(id, kmip.AttributeNameObjectGroup, "matrix").Exec(); aerr != nil {
			e.t.Fatalf("AddAttribute as owner: %v", aerr)
		}
		_, err = c.DeleteAttribute(id, kmip.AttributeNameObjectGroup).Exec()
	case "SetAttribute (2.0)":
		msg := kmip.NewRequestMessage(kmip.V2_0, kmip.NewUnknownPayload(kmip.Operation(0x31), uid,
			ttlv.Value{Tag: 0x42013d, Value: ttlv.Struct{{Tag: kmip.TagContactInformation, Value: "matrix"}}}))
		resp, rerr := c.Roundtrip(context.Background(), &msg)
		if err = rerr; err == nil {
			err = resp.BatchItem[0].Err()
		}
	case "Activate":
		_, err = c.Activate(id).Exec()
	case "Revoke":
		_, err = c.Revoke(id).WithRevocationReasonCode(kmip.RevocationReasonCodeCessationOfOperation).Exec()
	case "Destroy":
		_, err = c.Destroy(id).Exec()
	case "ReKey":
		_, err = c.Rekey(id).Exec()
	case "Encrypt":
		_, err = c.Encrypt(id).WithCryptographicParameters(gcm).Data([]byte("x")).Exec()
	case "Encrypt (client IV)":
		_, err = c.Encrypt(id).WithCryptographicParameters(gcm).WithIvCounterNonce(make([]byte, 12)).Data([]byte("x")).Exec()
	case "Encrypt (CBC after GCM)":
		if _, eerr := e.kmip["owner"].Encrypt(id).WithCryptographicParameters(gcm).Data([]byte("x")).Exec(); eerr != nil {
			e.t.Fatalf("Encrypt as owner: %v", eerr)
		}
		_, err = c.Encrypt(id).WithCryptographicParameters(kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeCBC, PaddingMethod: kmip.PaddingMethodPKCS5}).Data([]byte("x")).Exec()
	case "Decrypt":
		enc, eerr := e.kmip["owner"].Encrypt(id).WithCryptographicParameters(gcm).Data([]byte("matrix")).Exec()
		if eerr != nil {
			e.t.Fatalf("Encrypt as owner: %v", eerr)
		}
		var out *payloads.DecryptResponsePayload
		out, err = c.Decrypt(id).WithCryptographicParameters(gcm).WithIvCounterNonce(enc.IVCounterNonce).WithAuthTag(enc.AuthenticatedEncryptionTag).Data(enc.Data).Exec()
		if err == nil && string(out.Data) != "matrix" {
			return fmt.Sprintf("decrypt gave %q", out.Data)
		}
	case "MAC":
		_, err = c.Request(context.Background(), kmip.NewUnknownPayload(kmip.OperationMAC, uid, ttlv.Value{Tag: kmip.TagData, Value: []byte("x")}))
	case "MACVerify":
		_, err = c.Request(context.Background(), kmip.NewUnknownPayload(kmip.OperationMACVerify, uid,
			ttlv.Value{Tag: kmip.TagData, Value: []byte("x")}, ttlv.Value{Tag: kmip.TagMACData, Value: make([]byte, 32)}))
	case "Sign":
		_, err = c.Sign(id).WithCryptographicParameters(kmip.CryptographicParameters{DigitalSignatureAlgorithm: kmip.DigitalSignatureAlgorithmECDSAWithSHA256}).Data([]byte("x")).Exec()
	case "SignatureVerify":
		_, err = c.SignatureVerify(id).WithCryptographicParameters(kmip.CryptographicParameters{DigitalSignatureAlgorithm: kmip.DigitalSignatureAlgorithmECDSAWithSHA256}).
			Data([]byte("x")).Signature(make([]byte, 64)).Exec()
	case "ReKeyKeyPair":
		_, err = c.RekeyKeyPair(id).Exec()
	default:
		e.t.Fatalf("%s:%d: the test does not know KMIP %s", matrixDoc, r.line, r.req)
	}
	return classifyKeyModel(err)
}

// classifyKeyModel turns an ovh client result into a key-matrix cell. KMIP 1.4 has no Wrong Key
// Lifecycle State: the server answers Permission Denied, and the message tells the two apart.
func classifyKeyModel(err error) string {
	if err == nil {
		return "yes"
	}
	s := err.Error()
	switch {
	case strings.Contains(s, `reason="ItemNotFound"`):
		return "hidden"
	case strings.Contains(s, `reason="PermissionDenied"`) && strings.Contains(s, "may not run"):
		return "no"
	case strings.Contains(s, `reason="PermissionDenied"`) && strings.Contains(s, "client-chosen IV"):
		return "iv"
	case strings.Contains(s, `reason="PermissionDenied"`) && strings.Contains(s, "one block mode family"):
		return "mode"
	case strings.Contains(s, `reason="PermissionDenied"`) && (strings.Contains(s, "only its owner or the admin") || strings.Contains(s, "not the caller's to change") || strings.Contains(s, "reserved by another policy")):
		return "denied"
	case strings.Contains(s, `reason="PermissionDenied"`) && (strings.Contains(s, "must be Active") || strings.Contains(s, "is Active:") || strings.Contains(s, "Pre-Active objects")):
		return "state"
	case strings.Contains(s, `reason="InvalidField"`) && (strings.Contains(s, "belongs to a KES key") || strings.Contains(s, "its Name stays")):
		return "name"
	case strings.Contains(s, `reason="NotExtractable"`):
		return "sealed"
	case strings.Contains(s, `reason="PermissionDenied"`) && strings.Contains(s, "does not allow keys to leave the token"):
		return "noexport"
	}
	return "error: " + s
}

// TestKESTakeoverRefused runs, over the wire, the ways a KMIP identity could once take over or break
// MinIO's KES key (its Name was enough to be a version of it), and checks that each is refused with
// the documented error and that MinIO's next data key is still sealed under MinIO's own key.
func TestKESTakeoverRefused(t *testing.T) {
	b := newBridge(t, t.TempDir(), "takeover")
	minio, attacker, named := b.issueClient("minio"), b.issueClient("attacker"), b.issueClient("minio-named")
	b.writeConfig(hcfg{signers: []string{"takeover"}, policies: fmt.Sprintf(`policy "minio" {
  allow = ["/v1/key/create/*", "/v1/key/generate/*", "/v1/key/decrypt/*", "/v1/key/describe/*", "/v1/key/list/*", "/v1/key/hmac/*"]
  identities = [%q]
}
policy "minio-named" {
  allow = ["/v1/key/create/*", "/v1/key/generate/*", "/v1/key/decrypt/*"]
  keys  = ["named-*"]
  identities = [%q]
}
policy "attacker" {
  %s
  identities = [%q]
}
`, minio.id, named.id, fullRights, attacker.id)})
	b.startBin(binary)
	km, ka := b.kesAs(minio), b.kesAs(attacker)
	ca, err := b.kmipAs(attacker)
	if err != nil {
		t.Fatal(err)
	}
	const name = "minio-default-key"
	known := randomBytes(t, 32) // AES bytes the attacker chose

	// 1. The attacker registers its bytes under MinIO's key name before MinIO starts.
	squat, err := ca.Register().SymmetricKey(kmip.CryptographicAlgorithmAES, kmip.CryptographicUsageEncrypt|kmip.CryptographicUsageDecrypt, known).WithName(name).Exec()
	if err != nil {
		t.Fatalf("register before any KES key has the name: %v", err)
	}
	if _, err := ca.Activate(squat.UniqueIdentifier).Exec(); err != nil {
		t.Fatal(err)
	}
	// MinIO starts: generate says 404, MinIO creates the key — not blocked by the KMIP object.
	if _, st, msg, _ := km.generate(name, []byte("{}")); st != http.StatusNotFound || msg != "key does not exist" {
		t.Fatalf("MinIO's first generate: %d %s, want 404 key does not exist (a KMIP object is no KES key)", st, msg)
	}
	if err := kesWant(km, http.MethodPost, "/v1/key/create/"+name, nil, http.StatusOK); err != nil {
		t.Fatalf("MinIO creates its key beside the KMIP object of the name: %v", err)
	}

	// 2. Now that MinIO's key holds the name, no KMIP object can take it.
	_, err = ca.Register().SymmetricKey(kmip.CryptographicAlgorithmAES, kmip.CryptographicUsageEncrypt, known).WithName(name).Exec()
	wantKMIPName(t, "Register under a KES key's name", err)
	other, err := ca.Create().AES(256, kmip.CryptographicUsageEncrypt).WithName("innocent").Exec()
	if err != nil {
		t.Fatal(err)
	}
	_, err = ca.ModifyAttribute(other.UniqueIdentifier, kmip.AttributeNameName, kmip.Name{NameValue: name, NameType: kmip.NameTypeUninterpretedTextString}).Exec()
	wantKMIPName(t, "rename into a KES key's name", err)
	_, err = ca.Rekey(squat.UniqueIdentifier).Exec()
	wantKMIPName(t, "ReKey of the squatting object (its replacement would take the name)", err)

	// 3. KES with the attacker's identity: MinIO's key answers as a missing one on every route.
	for _, route := range []string{"generate", "decrypt", "describe", "hmac", "encrypt"} {
		method, body := http.MethodPost, any(map[string]any{"plaintext": []byte("x"), "ciphertext": []byte("x"), "message": []byte("x")})
		if route == "describe" {
			method, body = http.MethodGet, nil
		}
		st, out, err := ka.do(method, "/v1/key/"+route+"/"+name, body)
		if err != nil || st != http.StatusNotFound || kesMessage(out) != "key does not exist" {
			t.Errorf("attacker %s of MinIO's key: %d %s %v, want 404 key does not exist", route, st, out, err)
		}
	}
	st, out, err := ka.do(http.MethodDelete, "/v1/key/delete/"+name, nil)
	if err != nil || st != http.StatusNotFound || kesMessage(out) != "key does not exist" {
		t.Errorf("attacker deletes MinIO's key: %d %s %v", st, out, err)
	}

	// 4. KMIP with the attacker's identity: MinIO's version is invisible, so it cannot be revoked,
	// destroyed or renamed; Locate by the name finds only the attacker's own object.
	loc, err := ca.Locate().WithName(name).Exec()
	if err != nil || len(loc.UniqueIdentifier) != 1 || loc.UniqueIdentifier[0] != squat.UniqueIdentifier {
		t.Fatalf("attacker locates %q: %+v %v, want only its own object", name, loc, err)
	}
	version := kesVersionOf(t, b, name)
	_, err = ca.Revoke(version).WithRevocationReasonCode(kmip.RevocationReasonCodeKeyCompromise).Exec()
	wantKMIPHidden(t, "Revoke of MinIO's version", err)
	_, err = ca.Destroy(version).Exec()
	wantKMIPHidden(t, "Destroy of MinIO's version", err)
	_, err = ca.GetAttributes(version).Exec()
	wantKMIPHidden(t, "GetAttributes of MinIO's version", err)
	// Another owner's object answers the very bytes of a missing one (but for the identifier).
	missing := strings.Repeat("5a", 20)
	_, errMissing := ca.GetAttributes(missing).Exec()
	if err == nil || errMissing == nil || strings.ReplaceAll(err.Error(), version, missing) != errMissing.Error() {
		t.Errorf("another owner's object: %v\na missing one:        %v", err, errMissing)
	}
	// The attacker's own object goes away; MinIO's key is not touched.
	if _, err := ca.Revoke(squat.UniqueIdentifier).WithRevocationReasonCode(kmip.RevocationReasonCodeCessationOfOperation).Exec(); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Destroy(squat.UniqueIdentifier).Exec(); err != nil {
		t.Fatal(err)
	}

	// 5. MinIO's next data key is sealed under MinIO's key: it decrypts, the attacker's bytes do not
	// open it, and its version is the one MinIO made.
	dk, st, msg, err := km.generate(name, []byte(`{"bucket":"b/o"}`))
	if err != nil || st != http.StatusOK {
		t.Fatalf("MinIO generate after the attacks: %d %s %v", st, msg, err)
	}
	if pt, st, msg, err := km.decrypt(name, dk.Ciphertext, []byte(`{"bucket":"b/o"}`)); err != nil || st != http.StatusOK || string(pt) != string(dk.Plaintext) {
		t.Fatalf("MinIO decrypt: %d %s %v", st, msg, err)
	}
	if openWith(known, name, dk.Ciphertext, []byte(`{"bucket":"b/o"}`)) {
		t.Fatal("MinIO's data key opens with the attacker's bytes")
	}
	// openWith does open what was sealed under the attacker's bytes (so the check above can fail).
	if !openWith(known, name, sealWith(t, known, name, []byte(`{"bucket":"b/o"}`)), []byte(`{"bucket":"b/o"}`)) {
		t.Fatal("openWith does not open a ciphertext sealed under its key")
	}
	if got := ciphertextVersion(dk.Ciphertext); got != version {
		t.Fatalf("data key sealed under %s, MinIO's version is %s", got, version)
	}

	// 6. A MinIO whose policy names its keys (keys = ["named-*"]): that name space is its policy's,
	// so the attacker cannot plant a key there that the pattern would grant — over KES or KMIP.
	for _, route := range []string{"create", "import"} {
		st, out, err := ka.do(http.MethodPost, "/v1/key/"+route+"/named-default", map[string]any{"key": known, "cipher": "AES256"})
		if err != nil || st != http.StatusForbidden || kesMessage(out) != "not authorized: insufficient permissions" {
			t.Errorf("attacker KES %s in another policy's name space: %d %s %v", route, st, out, err)
		}
	}
	_, err = ca.Register().SymmetricKey(kmip.CryptographicAlgorithmAES, kmip.CryptographicUsageEncrypt, known).WithName("named-default").Exec()
	if err == nil || !strings.Contains(err.Error(), "reserved by another policy") {
		t.Errorf("attacker KMIP Register in another policy's name space: %v", err)
	}
	kn := b.kesAs(named)
	if err := kesWant(kn, http.MethodPost, "/v1/key/create/named-default", nil, http.StatusOK); err != nil {
		t.Fatalf("the policy's own identity creates in its name space: %v", err)
	}
	if _, st, msg, err := kn.generate("named-default", nil); err != nil || st != http.StatusOK {
		t.Fatalf("generate in its name space: %d %s %v", st, msg, err)
	}
}

// kesVersionOf is the id of the KES key's version: the admin's data key names it (ciphertext
// format: a format byte, then the version's 20-byte tag), and it must be one of the objects of that
// name the admin locates.
func kesVersionOf(t *testing.T, b *bridge, name string) string {
	t.Helper()
	c, err := b.kmipAs(b.adminClient())
	if err != nil {
		t.Fatal(err)
	}
	loc, err := c.Locate().WithName(name).Exec()
	if err != nil {
		t.Fatal(err)
	}
	dk, st, msg, err := b.kesAs(b.adminClient()).generate(name, nil)
	if err != nil || st != http.StatusOK {
		t.Fatalf("admin generate: %d %s %v", st, msg, err)
	}
	v := ciphertextVersion(dk.Ciphertext)
	if !slices.Contains(loc.UniqueIdentifier, v) {
		t.Fatalf("version %s of the ciphertext is not among the objects named %q: %v", v, name, loc.UniqueIdentifier)
	}
	return v
}

// ciphertextVersion reads the key version out of a KES ciphertext (docs/kes.md: 0x01, the
// version's 20-byte tag, the 12-byte IV, the sealed data key and its GCM tag).
func ciphertextVersion(ct []byte) string {
	if len(ct) < 21 {
		return ""
	}
	return fmt.Sprintf("%x", ct[1:21])
}

// openWith opens a KES ciphertext as whoever knows the AES key would: the format and its AAD
// (label, format byte, tag, name length and name, context) are public in docs/kes.md.
func openWith(key []byte, name string, ct, context []byte) bool {
	if len(ct) < 1+20+12+16 {
		return false
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return false
	}
	g, err := cipher.NewGCM(block)
	if err != nil {
		return false
	}
	ad := append([]byte("p11bridge/kes/ciphertext\x01"), ct[1:21]...)
	ad = append(append(append(ad, byte(len(name))), name...), context...)
	_, err = g.Open(nil, ct[21:33], ct[33:], ad)
	return err == nil
}

// sealWith makes a KES ciphertext under key, as the server would with a version of that key.
func sealWith(t *testing.T, key []byte, name string, context []byte) []byte {
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	g, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	tag, iv := randomBytes(t, 20), randomBytes(t, 12)
	ad := append([]byte("p11bridge/kes/ciphertext\x01"), tag...)
	ad = append(append(append(ad, byte(len(name))), name...), context...)
	ct := append(append([]byte{1}, tag...), iv...)
	return g.Seal(ct, iv, randomBytes(t, 32), ad)
}

func wantKMIPName(t *testing.T, what string, err error) {
	t.Helper()
	if got := classifyKeyModel(err); got != "name" {
		t.Errorf("%s: %v, want Invalid Field naming the KES key", what, err)
	}
}

func wantKMIPHidden(t *testing.T, what string, err error) {
	t.Helper()
	if got := classifyKeyModel(err); got != "hidden" {
		t.Errorf("%s: %v, want Item Not Found", what, err)
	}
}
