package kes

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/p11bridge/p11bridge/signer"
)

// fuzzAuth: "admin" may do everything except create, import or delete keys outside a few fixed
// names (so the fuzzer cannot fill the token); "limited" may only generate, encrypt and decrypt;
// requests marked anonymous have no identity.
type fuzzAuth struct{}

var fuzzNames = map[string]bool{"fz-a": true, "fz-b": true, "fz-c": true, "fz-d": true}

func (fuzzAuth) Identify(r *http.Request) (string, error) {
	if id := r.Header.Get("X-Fuzz-Identity"); id != "" {
		return id, nil
	}
	return "", errors.New("anonymous")
}

func (fuzzAuth) AllowKES(id, path string) bool {
	for _, p := range []string{"/v1/key/create/", "/v1/key/import/", "/v1/key/delete/"} {
		if rest, ok := strings.CutPrefix(path, p); ok {
			return id == "admin" && fuzzNames[rest]
		}
	}
	switch id {
	case "admin":
		return true
	case "limited":
		for _, p := range []string{"/v1/key/generate/fz-", "/v1/key/encrypt/fz-", "/v1/key/decrypt/fz-"} {
			if strings.HasPrefix(path, p) {
				return true
			}
		}
	}
	return false
}

func (fuzzAuth) IsAdmin(id string) bool { return id == "admin" }
func (fuzzAuth) Caller(id string) signer.Caller {
	return signer.Caller{Identity: id, Admin: id == "admin", Keys: []string{"*"}}
}
func (fuzzAuth) Policies() []Policy {
	return []Policy{{Name: "limited", Allow: []string{"/v1/key/generate/fz-*"}}}
}
func (fuzzAuth) PolicyOf(id string) (string, bool) { return "limited", id == "limited" }
func (fuzzAuth) Identities() []string              { return []string{"admin", "limited"} }

// FuzzRequest sends arbitrary methods, paths, bodies and identities through the handler (in
// process, on the SoftHSM-backed registry) and checks that every answer is well formed: a known
// status, KES's JSON error shape, no 5xx but 501 and no decrypt that succeeds for a ciphertext
// that is not the named key's.
func FuzzRequest(f *testing.F) {
	h := newHandler(Options{Registry: fx.reg, Auth: fuzzAuth{}, Log: quiet, Version: "fuzz"})
	serve := func(method, path string, body []byte, who byte) *httptest.ResponseRecorder {
		cx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if strings.Contains(path, "log/") { // also "v1/log/…" without the leading slash
			// Streams stay open until the client leaves; leave quickly.
			cx, cancel = context.WithTimeout(cx, 5*time.Millisecond)
			defer cancel()
		}
		r := (&http.Request{
			Method: method, URL: &url.URL{Path: path}, Proto: "HTTP/2.0", ProtoMajor: 2,
			Header: http.Header{}, Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body)),
			RemoteAddr: "192.0.2.1:1234", Host: "kes",
		}).WithContext(cx)
		switch who % 3 {
		case 0:
			r.Header.Set("X-Fuzz-Identity", "admin")
		case 1:
			r.Header.Set("X-Fuzz-Identity", "limited")
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	// Keys the inputs can refer to, and a real ciphertext to mutate.
	for _, n := range []string{"fz-a", "fz-b"} {
		if w := serve("PUT", "/v1/key/create/"+n, nil, 0); w.Code != 200 && w.Code != 400 {
			f.Fatalf("create %s: %d %s", n, w.Code, w.Body)
		}
	}
	w := serve("PUT", "/v1/key/generate/fz-a", []byte(`{"context":"Yw=="}`), 0)
	var dek struct{ Ciphertext []byte }
	if err := json.Unmarshal(w.Body.Bytes(), &dek); err != nil {
		f.Fatalf("generate: %d %s", w.Code, w.Body)
	}
	decryptBody, _ := json.Marshal(map[string][]byte{"ciphertext": dek.Ciphertext, "context": []byte("c")})
	f.Add("PUT", "/v1/key/decrypt/fz-a", decryptBody, byte(0))
	f.Add("POST", "/v1/key/decrypt/fz-b", decryptBody, byte(1))
	f.Add("PUT", "/v1/key/generate/fz-a", []byte(`{"context":"e30="}`), byte(1))
	f.Add("GET", "/v1/key/list/fz*", []byte(nil), byte(0))

	allowed := map[int]bool{200: true, 301: true, 400: true, 403: true, 404: true, 405: true, 406: true, 413: true, 501: true}
	f.Fuzz(func(t *testing.T, method, path string, body []byte, who byte) {
		// A time budget linear in the request's size (the token's work included); a request over
		// it is sent twice more and fails only when every run is over.
		start := time.Now()
		w := serve(method, path, body, who)
		timed := func() time.Duration { s := time.Now(); serve(method, path, body, who); return time.Since(s) }
		if budget := time.Second + time.Duration(len(path)+len(body))*50*time.Microsecond; time.Since(start) > budget && min(timed(), timed()) > budget {
			t.Fatalf("%s %q with %d bytes took longer than %v, three times", method, path, len(body), budget)
		}
		if !allowed[w.Code] {
			t.Fatalf("%s %q: status %d: %s", method, path, w.Code, w.Body)
		}
		if w.Code >= 400 {
			var msg struct {
				Message *string `json:"message"`
			}
			if w.Header().Get("Content-Type") != "application/json" || json.Unmarshal(w.Body.Bytes(), &msg) != nil || msg.Message == nil || *msg.Message == "" {
				t.Fatalf("%s %q: error %d is not KES-shaped: %q %q", method, path, w.Code, w.Header().Get("Content-Type"), w.Body)
			}
		}
		if w.Code == 200 && (method == "PUT" || method == "POST") && strings.HasPrefix(path, "/v1/key/decrypt/") {
			name := strings.TrimPrefix(path, "/v1/key/decrypt/")
			var req struct{ Ciphertext []byte }
			_ = json.Unmarshal(body, &req)
			s, ok := parseCiphertext(req.Ciphertext)
			if !ok {
				t.Fatalf("decrypt of an unparsable ciphertext succeeded")
			}
			rec, err := fx.reg.Get(signer.ObjectID(s.tag, false))
			if err != nil || !signer.IsKESVersionOf(rec, name) {
				t.Fatalf("decrypt under %q succeeded with a version of another key", name)
			}
		}
	})
}
