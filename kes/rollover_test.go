package kes

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/p11bridge/p11bridge/signer"
)

// TestRollover adds a second token as rollover signer: new keys and new versions go there, old
// ciphertexts still open on the first token, and metrics count per signer.
func TestRollover(t *testing.T) {
	tokB := fx.tokB
	cfgA := signer.Config{Name: "a", Module: fx.tok.Module, TokenLabel: fx.tok.Label, PIN: fx.tok.PIN, MaxSessions: 8, KeyCopies: 1024}
	cfgB := signer.Config{Name: "b", Module: tokB.Module, TokenLabel: tokB.Label, PIN: tokB.PIN, MaxSessions: 4, KeyCopies: 1024}
	c, cx := fx.admin.kes, ctx(t)
	name := uniq("roll")
	mustCreate(t, name)
	d0, err := c.GenerateKey(cx, name, nil)
	if err != nil {
		t.Fatal(err)
	}

	if err := fx.reg.Reconfigure(signer.Options{Signers: []signer.Config{cfgA, cfgB}, Default: "a", Rollover: "b", Logger: quiet}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := fx.reg.Reconfigure(signer.Options{Signers: []signer.Config{cfgA}, Default: "a", Logger: quiet}); err != nil {
			t.Errorf("restore signers: %v", err)
		}
	})
	fresh := uniq("roll-new")
	mustCreate(t, fresh)
	if k, _ := fx.reg.KESKey(signer.Operator, fresh); k.Current().Signer != "b" {
		t.Fatalf("new key on signer %q, want the rollover signer", k.Current().Signer)
	}
	if _, err := Rotate(cx, fx.reg, name); err != nil {
		t.Fatal(err)
	}
	k, _ := fx.reg.KESKey(signer.Operator, name)
	if k.Original().Signer != "a" || k.Current().Signer != "b" {
		t.Fatalf("versions on %q and %q, want a then b", k.Original().Signer, k.Current().Signer)
	}
	d1, err := c.GenerateKey(cx, name, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range [][]byte{d0.Ciphertext, d1.Ciphertext} {
		if _, err := c.Decrypt(cx, name, d, nil); err != nil {
			t.Fatalf("decrypt %d across signers: %v", i, err)
		}
	}
	// hmac stays on the original version, on the old signer.
	if _, err := c.HMAC(cx, name, []byte("m")); err != nil {
		t.Fatal(err)
	}
	if ok, err := c.IsReady(cx); !ok || err != nil {
		t.Fatalf("ready with two signers: %v", err)
	}
	req, _ := http.NewRequest("GET", fx.srv.URL+"/v1/metrics", nil)
	req.Header.Set("Accept", "text/plain")
	resp, err := fx.admin.raw.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`kes_http_request_success{route="key/generate",signer="b"}`,
		`kes_http_request_success{route="key/decrypt",signer="a"}`,
		`p11bridge_kes_signer_up{default="false",signer="b"} 1`,
	} {
		if !bytes.Contains(body, []byte(want)) {
			t.Fatalf("metrics lack %s", want)
		}
	}
	if !strings.Contains(string(body), `p11bridge_kes_request_duration_seconds_count{route="key/generate",signer="b"}`) {
		t.Fatal("no per-signer latency")
	}
}
