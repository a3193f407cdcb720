package kes

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	kesclient "github.com/minio/kms-go/kes"

	"github.com/p11bridge/p11bridge/signer"
)

// do sends a raw request and returns status, content type and body.
func do(t *testing.T, c client, method, path string, body string) (int, string, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx(t), method, fx.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.raw.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Content-Type"), b
}

// wantSentinel checks status, content type and the exact {"message"} body.
func wantSentinel(t *testing.T, c client, method, path, body string, want kesclient.Error) {
	t.Helper()
	status, ct, b := do(t, c, method, path, body)
	var msg struct {
		Message string `json:"message"`
	}
	if err := json.Unmarshal(b, &msg); err != nil || status != want.Status() || ct != "application/json" || msg.Message != want.Error() {
		t.Fatalf("%s %s: %d %q %s, want %d %q", method, path, status, ct, b, want.Status(), want.Error())
	}
}

func TestSentinelsOnTheWire(t *testing.T) {
	name := uniq("wire")
	mustCreate(t, name)
	missing := uniq("missing")
	wantSentinel(t, fx.admin, "GET", "/v1/key/describe/"+missing, "", kesclient.ErrKeyNotFound)
	wantSentinel(t, fx.admin, "PUT", "/v1/key/generate/"+missing, "{}", kesclient.ErrKeyNotFound)
	wantSentinel(t, fx.admin, "DELETE", "/v1/key/delete/"+missing, "", kesclient.ErrKeyNotFound)
	wantSentinel(t, fx.admin, "POST", "/v1/key/create/"+name, "", kesclient.ErrKeyExists)
	wantSentinel(t, fx.stranger, "PUT", "/v1/key/generate/"+name, "{}", kesclient.ErrNotAllowed)
	wantSentinel(t, fx.admin, "PUT", "/v1/key/decrypt/"+name, `{"ciphertext":"AQID"}`, kesclient.ErrDecrypt)
	wantSentinel(t, fx.admin, "GET", "/v1/policy/describe/nope", "", kesclient.ErrPolicyNotFound)
	wantSentinel(t, fx.admin, "GET", "/v1/identity/describe/"+strings.Repeat("ab", 32), "", kesclient.ErrIdentityNotFound)
}

func TestPolicies(t *testing.T) {
	cx := ctx(t)
	name, secret := uniq("pol"), uniq("secret")
	mustCreate(t, secret)
	// The admin's key: MinIO's and the reader's patterns grant it to them.
	mustCreate(t, name)

	// MinIO's minimal policy: create, generate, decrypt, list, hmac, status, api, version.
	m := fx.minio.kes
	if err := m.CreateKey(cx, uniq("mio")); err != nil {
		t.Fatal(err)
	}
	dek, err := m.GenerateKey(cx, name, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Decrypt(cx, name, dek.Ciphertext, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := m.HMAC(cx, name, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.ListKeys(cx, "*", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Status(cx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.APIs(cx); err != nil {
		t.Fatal(err)
	}
	_, err = m.DescribeKey(cx, name)
	wantErr(t, "minio describe", err, kesclient.ErrNotAllowed)
	wantErr(t, "minio delete", m.DeleteKey(cx, name), kesclient.ErrNotAllowed)
	_, err = m.Encrypt(cx, name, []byte("x"), nil)
	wantErr(t, "minio encrypt", err, kesclient.ErrNotAllowed)
	wantErr(t, "minio import", m.ImportKey(cx, uniq("x"), &kesclient.ImportKeyRequest{Key: make([]byte, 32)}), kesclient.ErrNotAllowed)
	_, err = m.Metrics(cx)
	wantErr(t, "minio metrics", err, kesclient.ErrNotAllowed)
	_, err = m.DescribePolicy(cx, "minio")
	wantErr(t, "minio policy", err, kesclient.ErrNotAllowed)

	// Allow with a deny rule on top: deny wins.
	r := fx.reader.kes
	if _, err := r.DescribeKey(cx, name); err != nil {
		t.Fatalf("reader describe: %v", err)
	}
	_, err = r.DescribeKey(cx, secret)
	wantErr(t, "reader describe of a denied key", err, kesclient.ErrNotAllowed)
	_, err = r.GenerateKey(cx, name, nil)
	wantErr(t, "reader generate", err, kesclient.ErrNotAllowed)
	// The policy check runs before the key lookup: a client without rights learns nothing about
	// which keys exist.
	_, err = r.DescribeKey(cx, "secret-"+uniq("none"))
	wantErr(t, "reader describe of a denied missing key", err, kesclient.ErrNotAllowed)

	// No policy at all: only /version.
	s := fx.stranger.kes
	if _, err := s.Version(cx); err != nil {
		t.Fatal(err)
	}
	for what, err := range map[string]error{
		"create":   s.CreateKey(cx, uniq("s")),
		"status":   func() error { _, err := s.Status(cx); return err }(),
		"generate": func() error { _, err := s.GenerateKey(cx, name, nil); return err }(),
		"list":     func() error { _, _, err := s.ListKeys(cx, "*", 0); return err }(),
		"ready":    func() error { _, err := s.IsReady(cx); return err }(),
	} {
		wantErr(t, "stranger "+what, err, kesclient.ErrNotAllowed)
	}
	// Self-describe needs an identity, not a policy; an identity without one is unknown.
	_, _, err = s.DescribeSelf(cx)
	wantErr(t, "stranger self-describe", err, kesclient.ErrIdentityNotFound)

	// No certificate at all: /version only.
	anon := newClient("", tlsNoCert())
	if v, err := anon.kes.Version(cx); err != nil || v != "test-1.0" {
		t.Fatalf("anonymous version: %q %v", v, err)
	}
	_, err = anon.kes.Status(cx)
	wantErr(t, "anonymous status", err, kesclient.ErrNotAllowed)
	_, _, err = anon.kes.DescribeSelf(cx)
	wantErr(t, "anonymous self-describe", err, kesclient.ErrNotAllowed)
}

func TestIdentities(t *testing.T) {
	cx := ctx(t)
	// Certificate identity and API-key identity, as the client sees itself.
	info, pol, err := fx.admin.kes.DescribeSelf(cx)
	if err != nil || info.Identity.String() != fx.admin.id || !info.IsAdmin {
		t.Fatalf("admin self: %+v %v", info, err)
	}
	info, pol, err = fx.minio.kes.DescribeSelf(cx)
	if err != nil || info.Identity.String() != fx.minio.id || info.IsAdmin || info.Policy != "minio" {
		t.Fatalf("minio self: %+v %v", info, err)
	}
	if _, ok := pol.Allow["/v1/key/generate/*"]; !ok || len(pol.Allow) != 8 {
		t.Fatalf("minio policy as seen by itself: %+v", pol)
	}
	info, _, err = fx.reader.kes.DescribeSelf(cx)
	if err != nil || info.Identity.String() != fx.reader.id || info.Policy != "reader" {
		t.Fatalf("reader self: %+v %v", info, err)
	}

	a := fx.admin.kes
	if info, err := a.DescribeIdentity(cx, kesclient.Identity(fx.minio.id)); err != nil || info.Policy != "minio" || info.IsAdmin {
		t.Fatalf("describe minio: %+v %v", info, err)
	}
	if info, err := a.DescribeIdentity(cx, kesclient.Identity(fx.admin.id)); err != nil || !info.IsAdmin {
		t.Fatalf("describe admin: %+v %v", info, err)
	}
	_, err = a.DescribeIdentity(cx, kesclient.Identity(fx.stranger.id))
	wantErr(t, "describe stranger", err, kesclient.ErrIdentityNotFound)
	_, err = a.DescribeIdentity(cx, "not/an/identity")
	if err == nil || kesStatus(err) != http.StatusBadRequest {
		t.Fatalf("describe a bad identity: %v", err)
	}
	ids, _, err := a.ListIdentities(cx, "*", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{fx.admin.id, fx.minio.id, fx.reader.id} {
		if !slices.Contains(ids, kesclient.Identity(want)) {
			t.Fatalf("identity list lacks %s: %v", want, ids)
		}
	}
	if ids, _, _ := a.ListIdentities(cx, fx.minio.id[:6]+"*", 0); !slices.Contains(ids, kesclient.Identity(fx.minio.id)) {
		t.Fatalf("identity list by prefix: %v", ids)
	}

	// More identities than a page: kms-go's iterator walks them with continue_at.
	fx.auth.mu.Lock()
	for i := range 1500 {
		fx.auth.extra = append(fx.auth.extra, fmt.Sprintf("zz%04d", i))
	}
	fx.auth.mu.Unlock()
	defer func() { fx.auth.mu.Lock(); fx.auth.extra = nil; fx.auth.mu.Unlock() }()
	it := &kesclient.ListIter[kesclient.Identity]{NextFunc: a.ListIdentities}
	n := 0
	for _, err := it.SeekTo(cx, "zz"); ; _, err = it.Next(cx) {
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 1500 {
		t.Fatalf("paged identity listing: %d of 1500", n)
	}
	first, next, _ := a.ListIdentities(cx, "zz", 0)
	if len(first) != 1024 || next == "" {
		t.Fatalf("first identity page: %d, continue_at %q", len(first), next)
	}
}

func TestPolicyViews(t *testing.T) {
	cx := ctx(t)
	for _, c := range []client{fx.admin, fx.reader} {
		info, err := c.kes.DescribePolicy(cx, "minio")
		if err != nil || info.Name != "minio" || info.CreatedBy.String() != fx.admin.id || info.CreatedAt.IsZero() {
			t.Fatalf("describe policy: %+v %v", info, err)
		}
		p, err := c.kes.GetPolicy(cx, "reader")
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := p.Deny["/v1/key/describe/secret-*"]; !ok || len(p.Allow) != 6 {
			t.Fatalf("read policy: %+v", p)
		}
		names, _, err := c.kes.ListPolicies(cx, "*", 0)
		if err != nil || !slices.Equal(names, []string{"minio", "reader"}) {
			t.Fatalf("list policies: %v %v", names, err)
		}
		if names, _, _ := c.kes.ListPolicies(cx, "mi", 0); !slices.Equal(names, []string{"minio"}) {
			t.Fatalf("list policies mi: %v", names)
		}
		_, err = c.kes.GetPolicy(cx, "nope")
		wantErr(t, "read missing policy", err, kesclient.ErrPolicyNotFound)
		_, err = c.kes.DescribePolicy(cx, "nope")
		wantErr(t, "describe missing policy", err, kesclient.ErrPolicyNotFound)
	}
}

func TestAudit(t *testing.T) {
	fx.audit.take()
	name := uniq("aud")
	mustCreate(t, name)
	dek, err := fx.minio.kes.GenerateKey(ctx(t), name, []byte("c"))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = fx.stranger.kes.GenerateKey(ctx(t), name, nil)
	_, _ = fx.minio.kes.Status(ctx(t)) // not a key operation: no record
	recs := fx.audit.take()
	if len(recs) != 3 {
		t.Fatalf("%d audit records, want 3: %v", len(recs), recs)
	}
	k, _ := fx.reg.KESKey(signer.Operator, name)
	want := []map[string]string{
		{"identity": fx.admin.id, "operation": "key/create", "key": name, "version": k.Current().ID, "signer": "a", "status": "200"},
		{"identity": fx.minio.id, "operation": "key/generate", "key": name, "version": k.Current().ID, "signer": "a", "status": "200"},
		{"identity": fx.stranger.id, "operation": "key/generate", "key": "", "version": "", "signer": "", "status": "403"},
	}
	for i, w := range want {
		for f, v := range w {
			if recs[i][f] != v {
				t.Fatalf("audit record %d: %s = %q, want %q (%v)", i, f, recs[i][f], v, recs[i])
			}
		}
		if recs[i]["protocol"] != "kes" || recs[i]["latency"] == "" {
			t.Fatalf("audit record %d: %v", i, recs[i])
		}
		// Never key material: neither the data key nor its ciphertext, in any encoding.
		all, _ := json.Marshal(recs[i])
		for _, secret := range [][]byte{dek.Plaintext, dek.Ciphertext} {
			if bytes.Contains(all, []byte(b64(secret))) || bytes.Contains(all, []byte(hexs(secret))) {
				t.Fatalf("audit record %d carries key material", i)
			}
		}
	}
}
