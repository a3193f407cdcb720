package kes

import (
	"errors"
	"net/http"
	"slices"
	"testing"

	kesclient "github.com/minio/kms-go/kes"
)

// KES keys belong to the identity that made them, as KMIP objects do (signer/access.go): another
// identity with the same route rights but no key pattern granting them gets "key does not exist"
// for every key route, exactly as for a missing key, and cannot list, use or delete it.
func TestOwnership(t *testing.T) {
	cx := ctx(t)
	other, err := certClient("other-minio")
	if err != nil {
		t.Fatal(err)
	}
	fx.auth.setPolicy(Policy{Name: "other", Allow: append(slices.Clone(minioPolicy), "/v1/key/delete/*", "/v1/key/describe/*", "/v1/key/encrypt/*")}, other.id)

	name := uniq("own")
	if err := fx.minio.kes.CreateKey(cx, name); err != nil {
		t.Fatal(err)
	}
	dek, err := fx.minio.kes.GenerateKey(cx, name, []byte("c"))
	if err != nil {
		t.Fatal(err)
	}
	o := other.kes
	_, err = o.GenerateKey(cx, name, nil)
	wantErr(t, "other generate", err, kesclient.ErrKeyNotFound)
	_, err = o.Encrypt(cx, name, []byte("x"), nil)
	wantErr(t, "other encrypt", err, kesclient.ErrKeyNotFound)
	_, err = o.Decrypt(cx, name, dek.Ciphertext, []byte("c"))
	wantErr(t, "other decrypt", err, kesclient.ErrKeyNotFound)
	_, err = o.HMAC(cx, name, []byte("m"))
	wantErr(t, "other hmac", err, kesclient.ErrKeyNotFound)
	_, err = o.DescribeKey(cx, name)
	wantErr(t, "other describe", err, kesclient.ErrKeyNotFound)
	wantErr(t, "other delete", o.DeleteKey(cx, name), kesclient.ErrKeyNotFound)
	// MinIO's policy here names every key (keys = ["*"]): its name space, where no other policy's
	// identity makes keys.
	wantErr(t, "other create", o.CreateKey(cx, name), kesclient.ErrNotAllowed)
	wantErr(t, "other create of a fresh name", o.CreateKey(cx, uniq("own")), kesclient.ErrNotAllowed)
	names, _, err := o.ListKeys(cx, "own-*", 0)
	if err != nil || slices.Contains(names, name) {
		t.Fatalf("other lists %v (%v)", names, err)
	}
	// The owner's key still works, and the admin sees it.
	if pt, err := fx.minio.kes.Decrypt(cx, name, dek.Ciphertext, []byte("c")); err != nil || string(pt) != string(dek.Plaintext) {
		t.Fatalf("owner decrypt: %v", err)
	}
	if info, err := fx.admin.kes.DescribeKey(cx, name); err != nil || info.CreatedBy.String() != fx.minio.id {
		t.Fatalf("admin describe: %+v %v", info, err)
	}

	// A key pattern grants use, not management: MinIO's policy here has keys = ["*"], which grants
	// it the admin's keys.
	mine := uniq("own")
	mustCreate(t, mine)
	if _, err := fx.minio.kes.GenerateKey(cx, mine, nil); err != nil {
		t.Fatalf("granted generate: %v", err)
	}
	fx.auth.setPolicy(Policy{Name: "minio", Allow: append(slices.Clone(minioPolicy), "/v1/key/delete/*"), CreatedBy: fx.admin.id}, fx.minio.id)
	defer fx.auth.setPolicy(Policy{Name: "minio", Allow: minioPolicy, CreatedBy: fx.admin.id}, fx.minio.id)
	err = fx.minio.kes.DeleteKey(cx, mine)
	var ke kesclient.Error
	if !errors.As(err, &ke) || ke.Status() != http.StatusForbidden {
		t.Fatalf("granted delete: %v, want 403", err)
	}
	if err := fx.admin.kes.DeleteKey(cx, mine); err != nil {
		t.Fatalf("owner delete: %v", err)
	}
}
