package kes

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	kesclient "github.com/minio/kms-go/kes"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/signer"
)

func TestKeyLifecycle(t *testing.T) {
	c, cx := fx.admin.kes, ctx(t)
	name := uniq("life")

	// What MinIO does at start: generate on the default key, create it on 404.
	_, err := c.GenerateKey(cx, name, []byte("{}"))
	wantErr(t, "generate before create", err, kesclient.ErrKeyNotFound)
	if err := c.CreateKey(cx, name); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "second create", c.CreateKey(cx, name), kesclient.ErrKeyExists)

	info, err := c.DescribeKey(cx, name)
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != name || info.Algorithm != kesclient.AES256 || info.CreatedBy.String() != fx.admin.id || info.CreatedAt.IsZero() {
		t.Fatalf("describe: %+v", info)
	}

	dek, err := c.GenerateKey(cx, name, []byte(`{"bucket":"b/o"}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(dek.Plaintext) != 32 || len(dek.Ciphertext) != minCiphertext+32 {
		t.Fatalf("generate: %d-byte plaintext, %d-byte ciphertext", len(dek.Plaintext), len(dek.Ciphertext))
	}
	pt, err := c.Decrypt(cx, name, dek.Ciphertext, []byte(`{"bucket":"b/o"}`))
	if err != nil || !bytes.Equal(pt, dek.Plaintext) {
		t.Fatalf("decrypt: %v", err)
	}
	msg := []byte("a message that is not a data key")
	ct, err := c.Encrypt(cx, name, msg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err = c.Decrypt(cx, name, ct, nil); err != nil || !bytes.Equal(pt, msg) {
		t.Fatalf("decrypt of encrypt: %v", err)
	}
	// An empty plaintext is a valid message.
	if ct, err = c.Encrypt(cx, name, []byte{}, []byte("ctx")); err != nil {
		t.Fatal(err)
	}
	if pt, err = c.Decrypt(cx, name, ct, []byte("ctx")); err != nil || len(pt) != 0 {
		t.Fatalf("empty plaintext round trip: %v %x", err, pt)
	}
	sum, err := c.HMAC(cx, name, []byte("root-credentials"))
	if err != nil || len(sum) != 32 {
		t.Fatalf("hmac: %v (%d bytes)", err, len(sum))
	}

	names, _, err := c.ListKeys(cx, name, 0)
	if err != nil || !slices.Equal(names, []string{name}) {
		t.Fatalf("list %s: %v %v", name, names, err)
	}

	if err := c.DeleteKey(cx, name); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "second delete", c.DeleteKey(cx, name), kesclient.ErrKeyNotFound)
	_, err = c.DescribeKey(cx, name)
	wantErr(t, "describe deleted", err, kesclient.ErrKeyNotFound)
	_, err = c.GenerateKey(cx, name, nil)
	wantErr(t, "generate deleted", err, kesclient.ErrKeyNotFound)
	_, err = c.Encrypt(cx, name, msg, nil)
	wantErr(t, "encrypt deleted", err, kesclient.ErrKeyNotFound)
	_, err = c.Decrypt(cx, name, dek.Ciphertext, []byte(`{"bucket":"b/o"}`))
	wantErr(t, "decrypt deleted", err, kesclient.ErrKeyNotFound)
	_, err = c.HMAC(cx, name, []byte("x"))
	wantErr(t, "hmac deleted", err, kesclient.ErrKeyNotFound)
	for _, rec := range fx.reg.ByName(name) {
		if signer.Live(rec) || rec.Attrs[signer.AttrDestroyDate] == "" {
			t.Fatalf("row after delete: %+v, want it Destroyed with its Destroy Date", rec)
		}
	}
}

func TestKeyRowAndToken(t *testing.T) {
	name := uniq("row")
	mustCreate(t, name)
	k, ok := fx.reg.KESKey(signer.Operator, name)
	if !ok || len(k.Versions) != 1 {
		t.Fatalf("lookup: %+v", k)
	}
	v := k.Versions[0]
	if v.Class != keymap.SecretKey || v.Algorithm != signer.AES || v.Size != 256 || v.State != keymap.Active ||
		v.Owner != fx.admin.id || v.Attrs[signer.AttrKESName] != name || v.Attrs[signer.AttrHMACKey] == "" || v.Signer != "a" {
		t.Fatalf("row: %+v", v)
	}
	// Generated keys never leave the token.
	if _, err := fx.reg.Export(ctx(t), signer.Operator, v.ID); !errors.Is(err, signer.ErrNotExtractable) {
		t.Fatalf("export of a KES key: %v", err)
	}
}

func TestConcurrentCreate(t *testing.T) {
	name := uniq("race")
	const n = 12
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			c := fx.admin.kes
			if i%2 == 1 {
				c = fx.minio.kes
			}
			errs[i] = c.CreateKey(ctx(t), name)
		}()
	}
	close(start)
	wg.Wait()
	created := 0
	for _, err := range errs {
		switch {
		case err == nil:
			created++
		case errors.Is(err, kesclient.ErrKeyExists):
		default:
			t.Fatalf("concurrent create: %v", err)
		}
	}
	if created != 1 {
		t.Fatalf("%d creates succeeded, want 1", created)
	}
	if k, _ := fx.reg.KESKey(signer.Operator, name); len(k.Versions) != 1 {
		t.Fatalf("%d versions after concurrent creates", len(k.Versions))
	}
}

func TestImport(t *testing.T) {
	c, cx := fx.admin.kes, ctx(t)
	name := uniq("imp")
	key := make([]byte, 32)
	rand.Read(key)
	if err := c.ImportKey(cx, name, &kesclient.ImportKeyRequest{Key: key, Cipher: kesclient.AES256}); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "import over existing", c.ImportKey(cx, name, &kesclient.ImportKeyRequest{Key: key}), kesclient.ErrKeyExists)
	wantErr(t, "create over import", c.CreateKey(cx, name), kesclient.ErrKeyExists)

	for _, bad := range []*kesclient.ImportKeyRequest{{Key: key[:16]}, {Key: key, Cipher: kesclient.ChaCha20}} {
		err := c.ImportKey(cx, uniq("imp-bad"), bad)
		var ke kesclient.Error
		if !errors.As(err, &ke) || ke.Status() != http.StatusNotAcceptable {
			t.Fatalf("import %d bytes %v: %v", len(bad.Key), bad.Cipher, err)
		}
	}

	ct, err := c.Encrypt(cx, name, []byte("hello"), []byte("c"))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := c.Decrypt(cx, name, ct, []byte("c")); err != nil || string(pt) != "hello" {
		t.Fatalf("decrypt: %v", err)
	}
	// The imported key really is the given key: open the ciphertext on the host.
	if pt := hostOpen(t, key, name, ct, []byte("c")); string(pt) != "hello" {
		t.Fatalf("host decrypt: %q", pt)
	}
	m1, err := c.HMAC(cx, name, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	m2, _ := c.HMAC(cx, name, []byte("m"))
	if len(m1) != 32 || !bytes.Equal(m1, m2) {
		t.Fatalf("hmac of imported key not deterministic")
	}
	k, _ := fx.reg.KESKey(signer.Operator, name)
	hid := k.Versions[0].Attrs[signer.AttrKESHMAC]
	hrec, err := fx.reg.Get(hid)
	if err != nil || hrec.Algorithm != signer.HMAC || hrec.Attrs[signer.AttrKESHMACOf] != k.Versions[0].ID {
		t.Fatalf("linked HMAC key: %+v %v", hrec, err)
	}
	if _, err := fx.reg.Export(cx, signer.Operator, k.Versions[0].ID); !errors.Is(err, signer.ErrNotExtractable) {
		t.Fatalf("imported KES key is exportable: %v", err)
	}
	if err := c.DeleteKey(cx, name); err != nil {
		t.Fatal(err)
	}
	if rec, err := fx.reg.Get(hid); err != nil || signer.Live(rec) {
		t.Fatalf("HMAC key of a deleted import survives: %+v %v", rec, err)
	}
}

func TestHMACWithoutCompanion(t *testing.T) {
	// An AES key made through KMIP (no companion HMAC key) is no KES key by its Name; once the
	// operator shares it, hmac answers 501, which MinIO handles, instead of an error it would misread.
	name := uniq("kmip")
	rec, err := fx.reg.Create(ctx(t), signer.Operator, signer.KeySpec{Algorithm: signer.AES, Size: 256}, signer.Meta{Name: name, State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fx.admin.kes.GenerateKey(ctx(t), name, nil); !errors.Is(err, kesclient.ErrKeyNotFound) {
		t.Fatalf("generate with an unshared KMIP-made key: %v, want %v", err, kesclient.ErrKeyNotFound)
	}
	if _, err := fx.reg.ShareKES(signer.Operator, rec.ID, name); err != nil {
		t.Fatal(err)
	}
	if _, err := fx.admin.kes.GenerateKey(ctx(t), name, nil); err != nil {
		t.Fatalf("generate with a shared KMIP-made key: %v", err)
	}
	_, err = fx.admin.kes.HMAC(ctx(t), name, []byte("m"))
	var ke kesclient.Error
	if !errors.As(err, &ke) || ke.Status() != http.StatusNotImplemented {
		t.Fatalf("hmac without HMAC key: %v", err)
	}
}

func TestHMACPerKey(t *testing.T) {
	a, b := uniq("hma"), uniq("hmb")
	mustCreate(t, a)
	mustCreate(t, b)
	ma, err := fx.minio.kes.HMAC(ctx(t), a, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := fx.minio.kes.HMAC(ctx(t), b, []byte("m"))
	ma2, _ := fx.minio.kes.HMAC(ctx(t), a, []byte("m2"))
	if bytes.Equal(ma, mb) || bytes.Equal(ma, ma2) {
		t.Fatal("hmac does not depend on key and message")
	}
}

func TestList(t *testing.T) {
	c, cx := fx.admin.kes, ctx(t)
	prefix := uniq("lst")
	var want []string
	for i := range 7 {
		n := prefix + "-" + string(rune('a'+i))
		mustCreate(t, n)
		want = append(want, n)
	}
	// A rotated key is listed once.
	if _, err := Rotate(cx, fx.reg, want[0]); err != nil {
		t.Fatal(err)
	}
	got, next, err := c.ListKeys(cx, prefix, 0)
	if err != nil || next != "" || !slices.Equal(got, want) {
		t.Fatalf("list %q: %v %q %v", prefix, got, next, err)
	}
	if got, _, _ = c.ListKeys(cx, prefix+"*", 0); !slices.Equal(got, want) {
		t.Fatalf("list %q*: %v", prefix, got)
	}
	// "" sends /v1/key/list, which answers 301 to /v1/key/list/ (MinIO relies on it); "*" is all.
	for _, all := range []string{"", "*"} {
		got, _, err := c.ListKeys(cx, all, 0)
		if err != nil {
			t.Fatalf("list %q: %v", all, err)
		}
		for _, n := range want {
			if !slices.Contains(got, n) {
				t.Fatalf("list %q lacks %s", all, n)
			}
		}
	}
	if got, _, _ := c.ListKeys(cx, prefix+"-zz", 0); len(got) != 0 {
		t.Fatalf("list of nothing: %v", got)
	}
	// Pages: the continuation token is a pattern kms-go's iterator sends back as is.
	defer func(n int) { pageSize = n }(pageSize)
	pageSize = 3
	it := &kesclient.ListIter[string]{NextFunc: c.ListKeys}
	var paged []string
	for n, err := it.SeekTo(cx, prefix); ; n, err = it.Next(cx) {
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			break
		}
		paged = append(paged, n)
	}
	if !slices.Equal(paged, want) {
		t.Fatalf("paged listing: %v", paged)
	}
	first, next, _ := c.ListKeys(cx, prefix, 0)
	if len(first) != 3 || next != prefix+"*"+want[3] {
		t.Fatalf("first page %v, continue_at %q", first, next)
	}
	// Patterns that are not names are refused.
	for _, bad := range []string{"a.b", "a*b*c", strings.Repeat("x", 200), "x*a"} {
		if _, _, err := c.ListKeys(cx, bad, 0); err == nil || !strings.Contains(err.Error(), "listing pattern") {
			t.Fatalf("list %q: %v", bad, err)
		}
	}
}
