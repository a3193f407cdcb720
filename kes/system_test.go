package kes

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	kesclient "github.com/minio/kms-go/kes"

	"github.com/p11bridge/p11bridge/signer"
)

func TestVersionStatusReady(t *testing.T) {
	cx := ctx(t)
	v, err := fx.admin.kes.Version(cx)
	if err != nil || v != "test-1.0" {
		t.Fatalf("version: %q %v", v, err)
	}
	st, err := fx.minio.kes.Status(cx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Version != "test-1.0" || st.OS == "" || st.Arch == "" || st.CPUs < 1 || st.UsableCPUs < 1 ||
		st.HeapAlloc == 0 || st.StackAlloc == 0 || !st.KeyStoreReachable || !st.KeystoreAvailable || st.KeyStoreLatency <= 0 {
		t.Fatalf("status: %+v", st)
	}
	// The wire form: KES's names and units (latency in whole milliseconds, at least 1).
	_, _, body := do(t, fx.admin, "GET", "/v1/status", "")
	var raw map[string]any
	if err := json.Unmarshal(body, &raw); err != nil || raw["keystore_latency"].(float64) < 1 || raw["uptime"] == nil {
		t.Fatalf("status JSON: %s", body)
	}
	if ok, err := fx.reader.kes.IsReady(cx); !ok || err != nil {
		t.Fatalf("ready: %v %v", ok, err)
	}
}

func TestAPIList(t *testing.T) {
	apis, err := fx.minio.kes.APIs(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(apis) != 22 {
		t.Fatalf("%d routes, want 22", len(apis))
	}
	byPath := map[string]kesclient.API{}
	for _, a := range apis {
		byPath[a.Path] = a
	}
	for path, method := range map[string]string{
		"/version": "GET", "/v1/status": "GET", "/v1/ready": "GET", "/v1/metrics": "GET", "/v1/api": "GET",
		"/v1/key/create/": "PUT", "/v1/key/import/": "PUT", "/v1/key/describe/": "GET", "/v1/key/delete/": "DELETE",
		"/v1/key/list/": "GET", "/v1/key/generate/": "PUT", "/v1/key/encrypt/": "PUT", "/v1/key/decrypt/": "PUT",
		"/v1/key/hmac/": "PUT", "/v1/policy/describe/": "GET", "/v1/policy/read/": "GET", "/v1/policy/list/": "GET",
		"/v1/identity/describe/": "GET", "/v1/identity/list/": "GET", "/v1/identity/self/describe": "GET",
		"/v1/log/error": "GET", "/v1/log/audit": "GET",
	} {
		a, ok := byPath[path]
		if !ok || a.Method != method {
			t.Fatalf("route %s: %+v", path, a)
		}
	}
	if a := byPath["/v1/key/generate/"]; a.MaxBody != DefaultMaxBody || a.Timeout != 15*time.Second {
		t.Fatalf("generate route: %+v", a)
	}
}

func TestRoutingAndMethods(t *testing.T) {
	name := uniq("rt")
	mustCreate(t, name)
	a := fx.admin
	// Both PUT and POST on mutating routes; anything else is 405 with Allow.
	for _, m := range []string{"PUT", "POST"} {
		if st, _, b := do(t, a, m, "/v1/key/generate/"+name, `{"context":"YQ=="}`); st != 200 {
			t.Fatalf("%s generate: %d %s", m, st, b)
		}
	}
	for _, c := range []struct{ method, path string }{
		{"GET", "/v1/key/generate/" + name}, {"DELETE", "/v1/key/create/" + name}, {"POST", "/v1/status"},
		{"PUT", "/v1/key/describe/" + name}, {"GET", "/v1/key/delete/" + name}, {"PATCH", "/v1/key/hmac/" + name},
		{"POST", "/version"}, {"DELETE", "/v1/log/audit"},
	} {
		status, ct, b := do(t, a, c.method, c.path, "")
		if status != http.StatusMethodNotAllowed || ct != "application/json" || !strings.Contains(string(b), "expected") {
			t.Fatalf("%s %s: %d %s", c.method, c.path, status, b)
		}
	}
	// Unknown paths.
	for _, p := range []string{"/", "/v1", "/v1/key", "/v1/key/rotate/" + name, "/v2/status", "/v1/statusx", "/version/"} {
		if status, _, b := do(t, a, "GET", p, ""); status != http.StatusNotFound {
			t.Fatalf("GET %s: %d %s", p, status, b)
		}
	}
	// /v1/key/list without its slash: 301 to the slashed path, as KES (a ServeMux) does.
	req, _ := http.NewRequest("GET", fx.srv.URL+"/v1/key/list", nil)
	resp, err := a.raw.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/v1/key/list/" {
		t.Fatalf("list without slash: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	// Key names: [0-9A-Za-z_-], at most 80.
	for _, bad := range []string{"", "a.b", "a%2Fb", "a%20b", "%C3%A4", strings.Repeat("k", 81), "a*"} {
		status, _, b := do(t, a, "PUT", "/v1/key/create/"+bad, "")
		if status != http.StatusBadRequest || !strings.Contains(string(b), "invalid characters") {
			t.Fatalf("create %q: %d %s", bad, status, b)
		}
	}
	if status, _, b := do(t, a, "PUT", "/v1/key/create/"+strings.Repeat("k", 80), ""); status != 200 {
		t.Fatalf("80-character name: %d %s", status, b)
	}
	// Bodies: over the limit is 413; not JSON, bad base64 or trailing data is 400.
	big := `{"plaintext":"` + strings.Repeat("A", DefaultMaxBody) + `"}`
	if status, _, b := do(t, a, "PUT", "/v1/key/encrypt/"+name, big); status != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized body: %d %s", status, b)
	}
	for _, body := range []string{`{`, `{"plaintext":"not base64!"}`, `{"plaintext":"YQ=="} {}`, `[1]`, `"x"`} {
		if status, _, b := do(t, a, "PUT", "/v1/key/encrypt/"+name, body); status != http.StatusBadRequest {
			t.Fatalf("encrypt body %q: %d %s", body, status, b)
		}
	}
	// generate takes an empty body (no context), decrypt does not.
	if status, _, b := do(t, a, "PUT", "/v1/key/generate/"+name, ""); status != 200 {
		t.Fatalf("generate without body: %d %s", status, b)
	}
	if status, _, _ := do(t, a, "PUT", "/v1/key/decrypt/"+name, ""); status != http.StatusBadRequest {
		t.Fatalf("decrypt without body: %d", status)
	}
	// HTTP/2 is what the client negotiates.
	req, _ = http.NewRequest("GET", fx.srv.URL+"/version", nil)
	if resp, err = a.raw.Do(req); err != nil || resp.ProtoMajor != 2 {
		t.Fatalf("protocol: %v %v", resp.Proto, err)
	}
	resp.Body.Close()
}

func TestMetrics(t *testing.T) {
	name := uniq("met")
	mustCreate(t, name)
	_, _ = fx.minio.kes.GenerateKey(ctx(t), name, nil)
	_, _ = fx.stranger.kes.GenerateKey(ctx(t), name, nil)
	// kms-go sends no Accept header and gets the KES families it can parse.
	m, err := fx.reader.kes.Metrics(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if m.RequestOK == 0 || m.RequestErr == 0 || m.RequestActive < 1 || m.CPUs < 1 || m.HeapAlloc == 0 || len(m.LatencyHistogram) == 0 {
		t.Fatalf("metrics: %+v", m)
	}
	// Prometheus (Accept set) also gets per-route, per-signer latencies and signer health.
	req, _ := http.NewRequest("GET", fx.srv.URL+"/v1/metrics", nil)
	req.Header.Set("Accept", "text/plain")
	resp, err := fx.reader.raw.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	text := string(body)
	for _, want := range []string{
		`p11bridge_kes_request_duration_seconds_bucket{route="key/generate",signer="a",le=`,
		`kes_http_request_success{route="key/create",signer="a"}`,
		`kes_http_request_error{route="key/generate",signer=""}`,
		`p11bridge_kes_signer_up{default="true",signer="a"} 1`,
		`kes_system_num_cpu `,
	} {
		if !strings.Contains(text, want) {
			t.Fatalf("metrics lack %q:\n%s", want, text)
		}
	}
}

func TestLogStreams(t *testing.T) {
	cx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	as, err := fx.reader.kes.AuditLog(cx)
	wantErr(t, "reader audit log", err, kesclient.ErrNotAllowed)
	as, err = fx.admin.kes.AuditLog(cx)
	if err != nil {
		t.Fatal(err)
	}
	defer as.Close()
	es, err := fx.admin.kes.ErrorLog(cx)
	if err != nil {
		t.Fatal(err)
	}
	defer es.Close()
	fx.auditLS.waitSubscribers(t, 1)
	fx.errLog.waitSubscribers(t, 1)
	fx.auditLS.send(`{"time":"2026-01-02T03:04:05Z","request":{"ip":"127.0.0.1","path":"/v1/key/generate/k","identity":"abc"},"response":{"code":200,"time":1000}}`)
	fx.errLog.send(`{"message":"token hiccup"}` + "\n")
	if !as.Next() || as.Event().APIPath != "/v1/key/generate/k" || as.Event().StatusCode != 200 {
		t.Fatalf("audit event: %+v", as.Event())
	}
	if !es.Next() || es.Message() != "token hiccup" {
		t.Fatalf("error event: %q", es.Message())
	}
	as.Close()
	es.Close()
	// Closing the stream ends the subscription on the server.
	deadline := time.Now().Add(5 * time.Second)
	for fx.auditLS.send(`{}`)+fx.errLog.send(`{}`) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("subscriptions outlive their clients")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestNilLogStream(t *testing.T) {
	h := newHandler(Options{Registry: fx.reg, Auth: allowAll{}, Log: quiet})
	cx, cancel := context.WithCancel(context.Background())
	req := httptest.NewRequestWithContext(cx, "GET", "/v1/log/error", nil)
	w := httptest.NewRecorder()
	done := make(chan struct{})
	go func() { h.ServeHTTP(w, req); close(done) }()
	time.Sleep(50 * time.Millisecond)
	select {
	case <-done:
		t.Fatal("nil stream ended before the client went away")
	default:
	}
	cancel()
	<-done
	if w.Code != 200 || w.Header().Get("Content-Type") != "application/x-ndjson" || w.Body.Len() != 0 {
		t.Fatalf("nil stream: %d %q %q", w.Code, w.Header().Get("Content-Type"), w.Body.String())
	}
}

// allowAll identifies every request as "admin" and allows it: for in-process tests.
type allowAll struct{}

func (allowAll) Identify(*http.Request) (string, error) { return "admin", nil }
func (allowAll) AllowKES(string, string) bool           { return true }
func (allowAll) IsAdmin(id string) bool                 { return id == "admin" }
func (allowAll) Caller(id string) signer.Caller {
	return signer.Caller{Identity: id, Admin: id == "admin"}
}
func (allowAll) Policies() []Policy             { return nil }
func (allowAll) PolicyOf(string) (string, bool) { return "", false }
func (allowAll) Identities() []string           { return []string{"admin"} }
