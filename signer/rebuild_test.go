package signer

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/p11bridge/p11bridge/keymap"
)

// TestRebuildFromToken: a lost keymap is re-derived from the token with the same identifiers and key
// identifiers, and every key works again; a second keymap in front of the same token adopts keys it
// is asked for.
func TestRebuildFromToken(t *testing.T) {
	dir := t.TempDir()
	km1, _ := keymap.Open(filepath.Join(dir, "one.csv"), quietLog())
	r1, err := Open(Options{Signers: []Config{cfgOf("b", tokB)}, Logger: quietLog()}, km1)
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	priv, pub, err := r1.CreateKeyPair(ctx, Operator, KeySpec{Algorithm: RSA, Size: 2048}, Meta{Name: "rb-priv", State: keymap.Active}, Meta{Name: "rb-pub", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	ecPriv, _, err := r1.CreateKeyPair(ctx, Operator, KeySpec{Algorithm: EC, Size: 384}, Meta{Name: "rb-ec", State: keymap.Active}, Meta{Name: "rb-ec-pub", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	kesKey, err := r1.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 256, WithHMAC: true}, Meta{Name: "rb-kes", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	iv, ct, err := r1.Seal(ctx, Operator, kesKey.ID, nil, []byte("before"), nil)
	if err != nil {
		t.Fatal(err)
	}
	data, err := r1.Import(ctx, Operator, Material{Class: keymap.SecretData, Secret: []byte("s3cr3t")}, Meta{Name: "rb-data", State: keymap.Active}, true, "")
	if err != nil {
		t.Fatal(err)
	}
	// An AES key of KMIP's, labelled like a KES key: no companion HMAC key, so no KES key after a rebuild.
	plainAES, err := r1.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "rb-kes-lookalike", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}

	// A second, empty keymap on the same token: the CSV was lost.
	km2, _ := keymap.Open(filepath.Join(dir, "two.csv"), quietLog())
	r2, err := Open(Options{Signers: []Config{cfgOf("b", tokB)}, Logger: quietLog()}, km2)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	orphans, err := r2.Rebuild(ctx, "b", true)
	if err != nil {
		t.Fatal(err)
	}
	if km2.Len() != 0 {
		t.Fatal("a dry run wrote rows")
	}
	got, err := r2.Rebuild(ctx, "b", false)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(orphans) {
		t.Fatalf("dry run reported %d rows, rebuild wrote %d", len(orphans), len(got))
	}
	for _, want := range []keymap.Record{priv, pub, ecPriv, kesKey, data} {
		rec, ok := km2.Get(want.ID)
		if !ok {
			t.Fatalf("rebuild lost %s (%s)", want.ID, want.Name)
		}
		if rec.Class != want.Class || rec.Algorithm != want.Algorithm || rec.Size != want.Size || !bytes.Equal(rec.KeyID, want.KeyID) || rec.Name != want.Name {
			t.Errorf("rebuilt %+v\nwant      %+v", rec, want)
		}
	}
	sig, err := r2.Sign(ctx, Operator, priv.ID, SignParams{Scheme: PKCS1v15, Hash: crypto.SHA256}, []byte("after"))
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.Verify(ctx, Operator, pub.ID, SignParams{Scheme: PKCS1v15, Hash: crypto.SHA256}, []byte("after"), sig); err != nil {
		t.Fatal(err)
	}
	if pt, err := r2.Open(ctx, Operator, kesKey.ID, iv, ct, nil); err != nil || string(pt) != "before" {
		t.Fatalf("decrypt after rebuild: %v", err)
	}
	if _, err := r2.HMAC(ctx, Operator, kesKey.ID, crypto.SHA256, []byte("m")); err != nil {
		t.Fatalf("hmac after rebuild: %v", err)
	}
	if m, err := r2.Export(ctx, Operator, data.ID); err != nil || string(m.Secret) != "s3cr3t" {
		t.Fatalf("data after rebuild: %v", err)
	}
	if rec, _ := km2.Get(kesKey.ID); rec.Attrs[AttrKESName] != "rb-kes" {
		t.Errorf("a rebuilt AES key with a companion HMAC key is no KES key: %v", rec.Attrs)
	}
	if rec, _ := km2.Get(plainAES.ID); rec.Attrs[AttrKESName] != "" {
		t.Errorf("a rebuilt AES key without a companion became KES key %q by its label", rec.Attrs[AttrKESName])
	}
	again, _ := r2.Rebuild(ctx, "b", false)
	if len(again) != 0 {
		t.Fatalf("a second rebuild added %d rows", len(again))
	}

	// A third instance never rebuilt: it adopts what it is asked for.
	km3, _ := keymap.Open(filepath.Join(dir, "three.csv"), quietLog())
	r3, err := Open(Options{Signers: []Config{cfgOf("b", tokB)}, Logger: quietLog()}, km3)
	if err != nil {
		t.Fatal(err)
	}
	defer r3.Close()
	if _, err := r3.Sign(ctx, Operator, ecPriv.ID, SignParams{Scheme: ECDSA, Hash: crypto.SHA256}, []byte("x")); err != nil {
		t.Fatalf("sign with a key another instance made: %v", err)
	}
	var ids []string
	km3.Range(func(r keymap.Record) bool { ids = append(ids, r.ID); return true })
	sort.Strings(ids)
	if len(ids) != 2 {
		t.Fatalf("adopting one key pair wrote rows %v", ids)
	}
	if _, err := r3.Get("00112233445566778899aabbccddeeff00112233"); err == nil {
		t.Fatal("an unknown tag was adopted")
	}
}

// Only the admin's lookups search the tokens for identifiers the keymap lacks (an adopted row
// belongs to nobody); a non-admin's unknown identifier costs no search, like another owner's
// object. Searches are rate-limited, and the memory of misses keeps the newest.
func TestAdoptionAdminOnlyAndBounded(t *testing.T) {
	dir := t.TempDir()
	km1, _ := keymap.Open(filepath.Join(dir, "made.csv"), quietLog())
	r1, err := Open(Options{Signers: []Config{cfgOf("b", tokB)}, Logger: quietLog()}, km1)
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	k, err := r1.Create(ctx, Caller{Identity: "elsewhere"}, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "adopt-me", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	km2, _ := keymap.Open(filepath.Join(dir, "other.csv"), quietLog())
	r2, err := Open(Options{Signers: []Config{cfgOf("b", tokB)}, Logger: quietLog()}, km2)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if _, err := r2.Access(Caller{Identity: "elsewhere"}, k.ID, UseSee); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a non-admin's lookup of another instance's key: %v", err)
	}
	if km2.Len() != 0 {
		t.Fatal("a non-admin's lookup adopted a key")
	}
	if rec, err := r2.Access(Operator, k.ID, UseSee); err != nil || rec.Owner != "" {
		t.Fatalf("the admin's lookup: %+v %v", rec, err)
	}

	r := &Registry{}
	now := time.Now()
	allowed := 0
	for i := 0; i < 3*searchRate; i++ {
		if r.searchAllowed(now) {
			allowed++
		}
	}
	if allowed != searchRate || !r.searchAllowed(now.Add(time.Second)) {
		t.Fatalf("%d searches allowed in a second, want %d, and more the next second", allowed, searchRate)
	}
	for i := 0; i < maxMisses+10; i++ {
		r.rememberMiss(fmt.Sprint(i), now)
	}
	if _, ok := r.misses["0"]; ok || len(r.misses) != maxMisses {
		t.Fatalf("%d misses kept, oldest kept: %v", len(r.misses), ok)
	}
	if _, ok := r.misses[fmt.Sprint(maxMisses+9)]; !ok {
		t.Fatal("the newest miss was dropped")
	}
}
