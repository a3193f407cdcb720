package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"

	"github.com/p11bridge/p11bridge/server/pki"
)

// The policy matrix of docs/guarantees.md is the specification this test runs: every row is a
// request, every column an identity, every cell what the server must do.
//
//	yes          served: any answer but a refusal (a KMIP item may still fail for another reason,
//	             e.g. Get of a non-extractable key or Destroy of an active one)
//	no           refused by policy: KES 403 "not authorized: insufficient permissions", KMIP
//	             Permission Denied "identity … may not run …"
//	hidden       KMIP Item Not Found (KES 404 "key does not exist") for an object that exists but
//	             belongs to another identity; Locate does not return it
//	unsupported  KMIP Operation Not Supported, whoever asks
const matrixDoc = "../docs/guarantees.md"

var matrixColumns = []string{"admin", "minio", "kmip-only", "unknown"}

// kmipOnlyOps is the KMIP policy of the kmip-only identity in the matrix (docs/guarantees.md says
// the same in words).
var kmipOnlyOps = []string{"Create", "CreateKeyPair", "Register", "Locate", "Get", "GetAttributes", "Activate", "Revoke",
	"Destroy", "Encrypt", "Decrypt", "Sign", "SignatureVerify", "Query", "DiscoverVersions", "ModifyAttribute"}

// minioAllow is dev mode's MinIO policy (server/dev.go).
var minioAllow = []string{"/v1/key/create/*", "/v1/key/generate/*", "/v1/key/decrypt/*", "/v1/key/list/*", "/v1/key/describe/*",
	"/v1/key/hmac/*", "/v1/status", "/v1/api", "/v1/metrics", "/version"}

type matrixRow struct {
	line                  int
	frontEnd, req, object string
	want                  map[string]string // column → cell
}

// readMatrix parses the table between the policy-matrix markers.
func readMatrix(t *testing.T) []matrixRow { return readTable(t, "policy-matrix", matrixColumns) }

// matrixEnv is the running server and the four identities of the matrix.
type matrixEnv struct {
	t     *testing.T
	b     *bridge
	ids   map[string]clientID
	kes   map[string]*kesHTTP
	kmip  map[string]*kmipclient.Client
	n     atomic.Int64 // for fresh names
	cts   map[string][]byte
	names map[string]string // KES key of each owner: "minio's key" → name
}

// TestPolicyMatrix runs every row of the matrix in docs/guarantees.md — every KES route, every
// KMIP operation, on objects of the identity itself and of another — as each of the admin, a
// MinIO API key with dev mode's MinIO policy, a KMIP-only identity, and an unknown CA-issued
// certificate, and compares each outcome with the cell. It also checks that the table leaves out no
// KES route (GET /v1/api) and no KMIP operation the server lists (Query).
func TestPolicyMatrix(t *testing.T) {
	rows := readMatrix(t)
	b := newBridge(t, t.TempDir(), "matrix")
	apiKey, minioID, err := pki.APIKey()
	if err != nil {
		t.Fatal(err)
	}
	kmipOnly := b.issueClient("kmip-only")
	quote := func(list []string) string {
		q := make([]string, len(list))
		for i, s := range list {
			q[i] = fmt.Sprintf("%q", s)
		}
		return strings.Join(q, ", ")
	}
	b.writeConfig(hcfg{signers: []string{"matrix"}, policies: fmt.Sprintf(`policy "minio" {
  allow      = [%s]
  identities = [%q]
}
policy "kmip-only" {
  kmip       = [%s]
  identities = [%q]
}
`, quote(minioAllow), minioID, quote(kmipOnlyOps), kmipOnly.id)})
	b.startBin(binary)

	e := &matrixEnv{t: t, b: b, ids: map[string]clientID{
		"admin": b.adminClient(), "minio": apiKeyClient(t, apiKey), "kmip-only": kmipOnly, "unknown": b.issueClient("unknown"),
	}, kes: map[string]*kesHTTP{}, kmip: map[string]*kmipclient.Client{}, cts: map[string][]byte{}, names: map[string]string{}}
	for name, id := range e.ids {
		e.kes[name] = b.kesAs(id)
		c, err := kmipclient.Dial(b.kmip, kmipclient.WithTlsConfig(b.tlsFor(id)), kmipclient.EnforceVersion(kmip.V1_4))
		if err != nil {
			t.Fatalf("KMIP dial as %s: %v", name, err)
		}
		t.Cleanup(func() { closeKMIP(c) })
		e.kmip[name] = c
	}
	// The KES keys of two owners, and a ciphertext of each.
	for owner, who := range map[string]string{"minio's key": "minio", "admin's key": "admin"} {
		e.names[owner] = e.kesKey(who)
		dk, st, msg, err := e.kes["admin"].generate(e.names[owner], nil)
		if err != nil || st != http.StatusOK {
			t.Fatalf("generate: %d %s %v", st, msg, err)
		}
		e.cts[owner] = dk.Ciphertext
	}

	// Completeness: every route and every listed operation has a row.
	have := map[string]bool{}
	for _, r := range rows {
		have[r.frontEnd+" "+r.req] = true
	}
	st, body, err := e.kes["admin"].do(http.MethodGet, "/v1/api", nil)
	if err != nil || st != http.StatusOK {
		t.Fatalf("/v1/api: %d %v", st, err)
	}
	var api []struct{ Method, Path string }
	if err := json.Unmarshal(body, &api); err != nil {
		t.Fatal(err)
	}
	for _, a := range api {
		if !matrixHasRoute(have, a.Method, a.Path) {
			t.Errorf("the matrix has no row for KES %s %s", a.Method, a.Path)
		}
	}
	q, err := e.kmip["admin"].Request(context.Background(), &payloads.QueryRequestPayload{QueryFunction: []kmip.QueryFunction{kmip.QueryFunctionOperations}})
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range q.(*payloads.QueryResponsePayload).Operations {
		name := ttlv.EnumStr(op)
		if !have["KMIP "+name] && !have["KMIP "+name+" (2.0)"] {
			t.Errorf("the matrix has no row for KMIP %s", name)
		}
	}

	mismatches, cells := 0, 0
	for _, r := range rows {
		for _, col := range matrixColumns {
			got := e.run(r, col)
			cells++
			if got != r.want[col] {
				mismatches++
				t.Errorf("%s:%d %s %s (%s) as %s: got %s, the table says %s", matrixDoc, r.line, r.frontEnd, r.req, r.object, col, got, r.want[col])
			}
		}
	}
	t.Logf("policy matrix: %d rows × %d identities = %d cells, %d differ from %s", len(rows), len(matrixColumns), cells, mismatches, matrixDoc)
}

// matrixHasRoute says whether a route of /v1/api ("/v1/key/create/") has a row
// ("PUT /v1/key/create/{name}").
func matrixHasRoute(have map[string]bool, method, path string) bool {
	for k := range have {
		req, ok := strings.CutPrefix(k, "KES ")
		if !ok {
			continue
		}
		m, p, _ := strings.Cut(req, " ")
		if i := strings.Index(p, "{"); i >= 0 {
			p = p[:i]
		}
		if m == method && p == path {
			return true
		}
	}
	return false
}

// kesKey creates a fresh KES key as who and returns its name.
func (e *matrixEnv) kesKey(who string) string {
	e.t.Helper()
	name := fmt.Sprintf("mx-%s-%d", strings.ReplaceAll(who, "-", ""), e.n.Add(1))
	if err := kesWant(e.kes[who], http.MethodPost, "/v1/key/create/"+name, nil, http.StatusOK); err != nil {
		e.t.Fatalf("create KES key as %s: %v", who, err)
	}
	return name
}

// run makes the request of row r as col and classifies the outcome.
func (e *matrixEnv) run(r matrixRow, col string) string {
	e.t.Helper()
	if r.frontEnd == "KES" {
		return e.runKES(r, col)
	}
	return e.runKMIP(r, col)
}

func (e *matrixEnv) runKES(r matrixRow, col string) string {
	method, path, _ := strings.Cut(r.req, " ")
	var body any
	name := ""
	switch r.object {
	case "new name":
		name = fmt.Sprintf("mx-new-%d", e.n.Add(1))
	case "minio's key", "admin's key":
		name = e.names[r.object]
		if strings.Contains(path, "/delete/") {
			// Deleting is for good: each cell gets a key of its own, of the same owner.
			name = e.kesKey(map[string]string{"minio's key": "minio", "admin's key": "admin"}[r.object])
		}
	}
	switch {
	case strings.Contains(path, "/import/"):
		body = map[string]any{"key": randomBytes(e.t, 32), "cipher": "AES256"}
	case strings.Contains(path, "/encrypt/"):
		body = map[string]any{"plaintext": []byte("x")}
	case strings.Contains(path, "/decrypt/"):
		body = map[string]any{"ciphertext": e.cts[r.object]}
	case strings.Contains(path, "/hmac/"):
		body = map[string]any{"message": []byte("x")}
	case strings.Contains(path, "/generate/"):
		body = map[string]any{}
	}
	if strings.Contains(r.req, "{name}") && name == "" {
		e.t.Fatalf("%s:%d: route %s needs an object (\"new name\", \"minio's key\" or \"admin's key\")", matrixDoc, r.line, r.req)
	}
	arg := map[string]string{"{name}": name, "{pattern}": "*", "{identity}": e.ids["admin"].id, "{policy}": "minio"}
	for k, v := range arg {
		path = strings.ReplaceAll(path, k, v)
	}
	var st int
	var out []byte
	var err error
	if strings.HasPrefix(path, "/v1/log/") {
		// A stream: its status is all there is to see.
		st, err = e.streamStatus(col, path)
	} else {
		st, out, err = e.kes[col].do(method, path, body)
	}
	switch {
	case err != nil:
		return "error: " + err.Error()
	case st == http.StatusForbidden && (out == nil || kesMessage(out) == "not authorized: insufficient permissions"):
		return "no" // a stream's body is not read: its status says it
	case st == http.StatusForbidden:
		return "forbidden with another message: " + string(out)
	case st == http.StatusNotFound && kesMessage(out) == "key does not exist" && name != "":
		return "hidden" // another identity's key answers as a missing one
	}
	return "yes"
}

// streamStatus opens a log stream and closes it once the status is in.
func (e *matrixEnv) streamStatus(col, path string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.kes[col].base+path, nil)
	resp, err := e.kes[col].c.Do(req)
	if err != nil {
		return 0, err
	}
	cancel()
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// kmipObject makes a fresh object of the kind op needs, owned by owner, and returns its
// identifier and name.
func (e *matrixEnv) kmipObject(op, owner string) (string, string) {
	e.t.Helper()
	c := e.kmip[owner]
	name := fmt.Sprintf("mx-obj-%d", e.n.Add(1))
	switch op {
	case "Sign", "SignatureVerify", "ReKeyKeyPair":
		resp, err := c.CreateKeyPair().ECDSA(kmip.RecommendedCurveP_256, kmip.CryptographicUsageSign, kmip.CryptographicUsageVerify).
			PrivateKey().WithName(name).PublicKey().WithName(name + "-pub").Exec()
		if err != nil {
			e.t.Fatalf("CreateKeyPair as %s: %v", owner, err)
		}
		if _, err := c.Activate(resp.PrivateKeyUniqueIdentifier).Exec(); err != nil {
			e.t.Fatalf("Activate as %s: %v", owner, err)
		}
		return resp.PrivateKeyUniqueIdentifier, name
	case "MAC", "MACVerify":
		resp, err := c.Create().SymmetricKey(kmip.CryptographicAlgorithmHMACSHA256, 256, kmip.CryptographicUsageMACGenerate|kmip.CryptographicUsageMACVerify).
			WithName(name).WithAttribute(kmip.AttributeNameActivationDate, time.Now().Add(-time.Minute)).Exec()
		if err != nil {
			e.t.Fatalf("Create HMAC as %s: %v", owner, err)
		}
		return resp.UniqueIdentifier, name
	}
	resp, err := c.Create().AES(256, kmip.CryptographicUsageEncrypt|kmip.CryptographicUsageDecrypt).
		WithName(name).WithAttribute(kmip.AttributeNameActivationDate, time.Now().Add(-time.Minute)).Exec()
	if err != nil {
		e.t.Fatalf("Create AES as %s: %v", owner, err)
	}
	return resp.UniqueIdentifier, name
}

func (e *matrixEnv) runKMIP(r matrixRow, col string) string {
	c := e.kmip[col]
	op := strings.TrimSuffix(r.req, " (2.0)")
	var id, name string
	switch r.object {
	case "kmip-only's object":
		id, name = e.kmipObject(op, "kmip-only")
	case "admin's object":
		id, name = e.kmipObject(op, "admin")
	case "–":
	default:
		e.t.Fatalf("%s:%d: unknown object %q", matrixDoc, r.line, r.object)
	}
	gcm := kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeGCM, TagLength: 16}
	uid := ttlv.Value{Tag: kmip.TagUniqueIdentifier, Value: id}
	var err error
	switch op {
	case "Query":
		_, err = c.Request(context.Background(), &payloads.QueryRequestPayload{QueryFunction: []kmip.QueryFunction{kmip.QueryFunctionOperations}})
	case "DiscoverVersions":
		_, err = c.Request(context.Background(), &payloads.DiscoverVersionsRequestPayload{})
	case "Create":
		_, err = c.Create().AES(256, kmip.CryptographicUsageEncrypt).Exec()
	case "CreateKeyPair":
		_, err = c.CreateKeyPair().ECDSA(kmip.RecommendedCurveP_256, kmip.CryptographicUsageSign, kmip.CryptographicUsageVerify).Exec()
	case "Register":
		_, err = c.Register().SymmetricKey(kmip.CryptographicAlgorithmAES, kmip.CryptographicUsageEncrypt, randomBytes(e.t, 32)).Exec()
	case "RNGRetrieve":
		_, err = c.Request(context.Background(), kmip.NewUnknownPayload(kmip.OperationRNGRetrieve, ttlv.Value{Tag: kmip.TagDataLength, Value: int32(16)}))
	case "Locate":
		resp, lerr := c.Locate().WithName(name).Exec()
		if lerr == nil && len(resp.UniqueIdentifier) == 0 {
			return "hidden"
		}
		err = lerr
	case "Check":
		_, err = c.Request(context.Background(), kmip.NewUnknownPayload(kmip.OperationCheck, uid))
	case "Get":
		_, err = c.Get(id).Exec()
	case "GetAttributes":
		_, err = c.GetAttributes(id).Exec()
	case "GetAttributeList":
		_, err = c.GetAttributeList(id).Exec()
	case "AddAttribute":
		_, err = c.AddAttribute(id, kmip.AttributeNameObjectGroup, "matrix").Exec()
	case "ModifyAttribute":
		_, err = c.ModifyAttribute(id, kmip.AttributeNameName, kmip.Name{NameValue: name + "-renamed", NameType: kmip.NameTypeUninterpretedTextString}).Exec()
	case "DeleteAttribute":
		_, err = c.DeleteAttribute(id, kmip.AttributeNameObjectGroup).Exec()
	case "SetAttribute":
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
	case "Decrypt":
		_, err = c.Decrypt(id).WithCryptographicParameters(gcm).WithIvCounterNonce(make([]byte, 12)).WithAuthTag(make([]byte, 16)).Data([]byte("x")).Exec()
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
	case "DeriveKey":
		_, err = c.Request(context.Background(), kmip.NewUnknownPayload(kmip.OperationDeriveKey,
			ttlv.Value{Tag: kmip.TagObjectType, Value: ttlv.Enum(kmip.ObjectTypeSymmetricKey)}, uid,
			ttlv.Value{Tag: kmip.TagDerivationMethod, Value: ttlv.Enum(4)},
			ttlv.Value{Tag: kmip.TagDerivationParameters, Value: ttlv.Struct{
				{Tag: kmip.TagCryptographicParameters, Value: ttlv.Struct{{Tag: kmip.TagBlockCipherMode, Value: ttlv.Enum(kmip.BlockCipherModeECB)}}},
				{Tag: kmip.TagDerivationData, Value: make([]byte, 32)}}},
			ttlv.Value{Tag: kmip.TagTemplateAttribute, Value: ttlv.Struct{
				{Tag: kmip.TagAttribute, Value: ttlv.Struct{{Tag: kmip.TagAttributeName, Value: "Cryptographic Algorithm"}, {Tag: kmip.TagAttributeValue, Value: ttlv.Enum(kmip.CryptographicAlgorithmAES)}}},
				{Tag: kmip.TagAttribute, Value: ttlv.Struct{{Tag: kmip.TagAttributeName, Value: "Cryptographic Length"}, {Tag: kmip.TagAttributeValue, Value: int32(128)}}},
				{Tag: kmip.TagAttribute, Value: ttlv.Struct{{Tag: kmip.TagAttributeName, Value: "Name"}, {Tag: kmip.TagAttributeValue, Value: ttlv.Struct{{Tag: kmip.TagNameValue, Value: name + "-derived"}, {Tag: kmip.TagNameType, Value: ttlv.Enum(kmip.NameTypeUninterpretedTextString)}}}}}}}))
	default:
		if !strings.HasPrefix(op, "any other operation") {
			e.t.Fatalf("%s:%d: the test does not know KMIP %s", matrixDoc, r.line, op)
		}
		return e.unimplemented(c)
	}
	return classifyKMIP(err)
}

// classifyKMIP turns an ovh client result into a cell.
func classifyKMIP(err error) string {
	if err == nil {
		return "yes"
	}
	s := err.Error()
	switch {
	case strings.Contains(s, `reason="PermissionDenied"`) && strings.Contains(s, "may not run"):
		return "no"
	case strings.Contains(s, `reason="ItemNotFound"`):
		return "hidden"
	case strings.Contains(s, `reason="OperationNotSupported"`):
		return "unsupported"
	case strings.Contains(s, "failed (status="):
		return "yes"
	}
	return "error: " + s
}

// unimplemented sends every KMIP 1.4 operation the server does not list, with an empty payload;
// the cell holds when all of them get the same answer.
func (e *matrixEnv) unimplemented(c *kmipclient.Client) string {
	implemented := map[string]bool{}
	for _, op := range append(kmipOnlyOps, "GetAttributeList", "AddAttribute", "DeleteAttribute", "Check", "ReKey", "ReKeyKeyPair", "MAC", "MACVerify", "RNGRetrieve", "DeriveKey") {
		implemented[op] = true
	}
	seen := map[string][]string{}
	for code := kmip.Operation(1); code <= 0x2B; code++ {
		name := ttlv.EnumStr(code)
		if implemented[name] {
			continue
		}
		_, err := c.Request(context.Background(), kmip.NewUnknownPayload(code))
		got := classifyKMIP(err)
		seen[got] = append(seen[got], name)
	}
	if len(seen) != 1 {
		var parts []string
		for k, v := range seen {
			sort.Strings(v)
			parts = append(parts, fmt.Sprintf("%s for %s", k, strings.Join(v, ", ")))
		}
		return strings.Join(parts, "; ")
	}
	for k := range seen {
		return k
	}
	return "none"
}
