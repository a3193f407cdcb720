package kes

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	kesclient "github.com/minio/kms-go/kes"
)

// TestTokenDownAndRestart takes the signers away under a running handler (answers must be clear
// 503s, never key bytes), then closes the keymap too and reopens everything as a restarted process
// would: old ciphertexts of every version still decrypt and hmac is unchanged.
func TestTokenDownAndRestart(t *testing.T) {
	c, cx := fx.admin.kes, ctx(t)
	name, imported := uniq("restart"), uniq("restart-imp")
	mustCreate(t, name)
	d0, err := c.GenerateKey(cx, name, []byte("ctx"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Rotate(cx, fx.reg, name); err != nil {
		t.Fatal(err)
	}
	d1, _ := c.GenerateKey(cx, name, []byte("ctx"))
	mac, _ := c.HMAC(cx, name, []byte("root"))
	info, _ := c.DescribeKey(cx, name)
	key := make([]byte, 32)
	rand.Read(key)
	if err := c.ImportKey(cx, imported, &kesclient.ImportKeyRequest{Key: key}); err != nil {
		t.Fatal(err)
	}
	ci, _ := c.Encrypt(cx, imported, []byte("imported"), nil)
	imac, _ := c.HMAC(cx, imported, []byte("root"))

	// Signers gone, keymap still there. Raw requests: kms-go would retry the 503s for a while.
	fx.reg.Close()
	for _, r := range []struct{ method, path, body string }{
		{"PUT", "/v1/key/generate/" + name, `{}`},
		{"PUT", "/v1/key/encrypt/" + name, `{"plaintext":"YQ=="}`},
		{"PUT", "/v1/key/decrypt/" + name, `{"ciphertext":"` + b64(d0.Ciphertext) + `","context":"` + b64([]byte("ctx")) + `"}`},
		{"PUT", "/v1/key/hmac/" + name, `{"message":"YQ=="}`},
		{"PUT", "/v1/key/create/" + uniq("down"), ``},
		{"GET", "/v1/ready", ``},
	} {
		status, ct, body := do(t, fx.admin, r.method, r.path, r.body)
		var msg struct{ Message string }
		_ = json.Unmarshal(body, &msg)
		if status != http.StatusServiceUnavailable || ct != "application/json" || msg.Message == "" {
			t.Fatalf("%s %s with the token down: %d %s", r.method, r.path, status, body)
		}
		if bytes.Contains(body, []byte(b64(d0.Plaintext))) || strings.Contains(msg.Message, fx.tok.PIN) {
			t.Fatalf("%s: error leaks secrets: %s", r.path, body)
		}
	}
	_, _, body := do(t, fx.admin, "GET", "/v1/status", "")
	var st map[string]any
	if err := json.Unmarshal(body, &st); err != nil || st["keystore_unreachable"] != true || st["keystore_unavailable"] != true {
		t.Fatalf("status with the token down: %s", body)
	}
	if s, err := c.Status(cx); err != nil || s.KeyStoreReachable {
		t.Fatalf("kms-go status with the token down: %+v %v", s, err)
	}
	if _, err := c.DescribeKey(cx, name); err != nil {
		t.Fatalf("describe needs only the keymap: %v", err)
	}

	// Restart.
	fx.km.Close()
	if err := openRegistry(); err != nil {
		t.Fatal(err)
	}
	for i, d := range []kesclient.DEK{d0, d1} {
		pt, err := c.Decrypt(cx, name, d.Ciphertext, []byte("ctx"))
		if err != nil || !bytes.Equal(pt, d.Plaintext) {
			t.Fatalf("decrypt version %d after restart: %v", i, err)
		}
	}
	if m, err := c.HMAC(cx, name, []byte("root")); err != nil || !bytes.Equal(m, mac) {
		t.Fatalf("hmac after restart: %v", err)
	}
	if pt, err := c.Decrypt(cx, imported, ci, nil); err != nil || string(pt) != "imported" {
		t.Fatalf("imported key after restart: %v", err)
	}
	if m, err := c.HMAC(cx, imported, []byte("root")); err != nil || !bytes.Equal(m, imac) {
		t.Fatalf("imported key's hmac after restart: %v", err)
	}
	after, err := c.DescribeKey(cx, name)
	if err != nil || !after.CreatedAt.Equal(info.CreatedAt) {
		t.Fatalf("describe after restart: %+v %v", after, err)
	}
	d2, err := c.GenerateKey(cx, name, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := parseCiphertext(d2.Ciphertext)
	s1, _ := parseCiphertext(d1.Ciphertext)
	if !bytes.Equal(s.tag, s1.tag) {
		t.Fatal("generate after restart does not use the newest version")
	}
	if ok, err := c.IsReady(cx); !ok || err != nil {
		t.Fatalf("ready after restart: %v", err)
	}
}
