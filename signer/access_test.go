package signer

import (
	"crypto"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/p11bridge/p11bridge/keymap"
)

// The key model (access.go) decided in the registry: every cell names the sentinel the registry
// answers, or nil.
func TestKeyModelOwnersAndPatterns(t *testing.T) {
	alice := Caller{Identity: "alice"}
	bob := Caller{Identity: "bob"}
	admin := Caller{Identity: "root", Admin: true, Export: true}
	// carol's policy names shared-* and has alice in it: its patterns grant alice's keys.
	granted := Caller{Identity: "carol", Keys: []string{"shared-*"}, Team: func(o string) bool { return o == "alice" || o == "carol" }}
	outsider := Caller{Identity: "dave", Keys: []string{"shared-*"}, Team: func(o string) bool { return o == "dave" }}
	limited := Caller{Identity: "alice", Keys: []string{"other-*"}} // alice, limited to other names

	shared, err := testReg.Create(ctx, alice, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "shared-km", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	if shared.Owner != "alice" {
		t.Fatalf("owner %q, want the caller", shared.Owner)
	}
	for _, c := range []struct {
		who  string
		c    Caller
		u    Use
		want error
	}{
		{"owner sees", alice, UseSee, nil},
		{"owner manages", alice, UseManage, nil},
		{"owner encrypts", alice, UseEncrypt, nil},
		{"other sees nothing", bob, UseSee, ErrNotFound},
		{"other cannot encrypt", bob, UseEncrypt, ErrNotFound},
		{"other cannot manage", bob, UseManage, ErrNotFound},
		{"admin manages", admin, UseManage, nil},
		{"granted sees", granted, UseSee, nil},
		{"granted encrypts", granted, UseEncrypt, nil},
		{"granted may not manage", granted, UseManage, ErrDenied},
		{"patterns hide even own keys", limited, UseSee, ErrNotFound},
		{"patterns grant no key of another policy's identity", outsider, UseEncrypt, ErrNotFound},
		{"no export without the export right", alice, UseExport, ErrDenied},
		{"no wrapped export without the export right", alice, UseExportWrapped, ErrDenied},
		{"no export of a key made in the token", admin, UseExport, ErrNotExtractable},
	} {
		_, err := testReg.Access(c.c, shared.ID, c.u)
		if !errIs(err, c.want) {
			t.Errorf("%s: %v, want %v", c.who, err, c.want)
		}
	}
	// Another owner's object and a missing one answer the same bytes.
	_, other := testReg.Access(bob, shared.ID, UseSee)
	missingID := strings.Repeat("ab", TagSize)
	_, missing := testReg.Access(bob, missingID, UseSee)
	if strings.ReplaceAll(other.Error(), shared.ID, missingID) != missing.Error() {
		t.Errorf("another's object answers %q, a missing one %q", other, missing)
	}
	// Crypto goes through the same decision.
	if _, _, err := testReg.Seal(ctx, bob, shared.ID, nil, []byte("x"), nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("bob seals with alice's key: %v", err)
	}
	if err := testReg.Destroy(ctx, granted, shared.ID); !errors.Is(err, ErrDenied) {
		t.Errorf("granted destroys: %v", err)
	}
	if _, err := testReg.Update(granted, shared.ID, func(r *keymap.Record) error { r.State = keymap.Compromised; return nil }); !errors.Is(err, ErrDenied) {
		t.Errorf("granted revokes: %v", err)
	}
	// Only the admin hands a key to someone else.
	if _, err := testReg.Update(alice, shared.ID, func(r *keymap.Record) error { r.Owner = "bob"; return nil }); !errors.Is(err, ErrDenied) {
		t.Errorf("owner gives the key away: %v", err)
	}
	// A caller limited by patterns may only make keys it may name.
	if _, err := testReg.Create(ctx, limited, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "shared-no"}); !errors.Is(err, ErrDenied) {
		t.Errorf("create outside the patterns: %v", err)
	}
	if _, err := testReg.Create(ctx, limited, KeySpec{Algorithm: AES, Size: 256}, Meta{}); !errors.Is(err, ErrDenied) {
		t.Errorf("create without a name under patterns: %v", err)
	}
	// Names another policy's patterns name are that policy's to give: nobody else plants a key there.
	squatter := Caller{Identity: "eve", Reserved: func(n string) bool { return strings.HasPrefix(n, "shared-") }}
	if _, err := testReg.Create(ctx, squatter, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "shared-planted"}); !errors.Is(err, ErrDenied) {
		t.Errorf("create under another policy's name space: %v", err)
	}
	if _, err := testReg.CreateKESKey(ctx, squatter, "shared-planted"); !errors.Is(err, ErrDenied) {
		t.Errorf("KES create under another policy's name space: %v", err)
	}
	// Keys that belong to nobody stay the admin's, patterns or not.
	orphan, err := testReg.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "shared-orphan", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	every := Caller{Identity: "carol", Keys: []string{"*"}, Team: func(string) bool { return true }}
	if _, err := testReg.Access(every, orphan.ID, UseSee); !errors.Is(err, ErrNotFound) {
		t.Errorf("an ownerless key reached through a pattern: %v", err)
	}
	mine, err := testReg.Create(ctx, limited, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "other-ok"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testReg.Update(limited, mine.ID, func(r *keymap.Record) error { r.Name = "shared-x"; return nil }); !errors.Is(err, ErrDenied) {
		t.Errorf("rename out of the patterns: %v", err)
	}
}

func errIs(err, want error) bool {
	if want == nil {
		return err == nil
	}
	return errors.Is(err, want)
}

// Protect needs Active (before the Protect Stop Date), process also takes Deactivated and
// Compromised (from the Process Start Date); the usage mask must allow the use.
func TestKeyModelLifecycle(t *testing.T) {
	owner := Caller{Identity: "lc"}
	now := time.Now()
	for i, c := range []struct {
		state            keymap.State
		set              func(r *keymap.Record)
		encrypt, decrypt error
	}{
		{keymap.Active, nil, nil, nil},
		{keymap.PreActive, nil, ErrWrongState, ErrWrongState},
		{keymap.PreActive, func(r *keymap.Record) { SetDate(r, AttrActivationDate, now.Add(-time.Minute), true) }, nil, nil},
		{keymap.Active, func(r *keymap.Record) { SetDate(r, AttrDeactivationDate, now.Add(-time.Minute), true) }, ErrWrongState, nil},
		{keymap.Deactivated, nil, ErrWrongState, nil},
		{keymap.Compromised, nil, ErrWrongState, nil},
		{keymap.Active, func(r *keymap.Record) { SetDate(r, AttrProtectStopDate, now.Add(-time.Minute), true) }, ErrWrongState, nil},
		{keymap.Active, func(r *keymap.Record) { SetDate(r, AttrProcessStartDate, now.Add(time.Hour), true) }, nil, ErrWrongState},
		{keymap.Active, func(r *keymap.Record) { SetUsageMask(r, UsageEncrypt, true) }, nil, ErrUsage},
		{keymap.Active, func(r *keymap.Record) { SetUsageMask(r, UsageDecrypt, true) }, ErrUsage, nil},
	} {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			k, err := testReg.Create(ctx, owner, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: fmt.Sprintf("lc-%d", i), State: keymap.Active})
			if err != nil {
				t.Fatal(err)
			}
			iv, ct, err := testReg.Seal(ctx, owner, k.ID, nil, []byte("x"), nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := testReg.Update(owner, k.ID, func(r *keymap.Record) error {
				r.State = c.state
				if c.set != nil {
					c.set(r)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if _, _, err := testReg.Seal(ctx, owner, k.ID, nil, []byte("x"), nil); !errIs(err, c.encrypt) {
				t.Errorf("%s: encrypt: %v, want %v", c.state, err, c.encrypt)
			}
			if _, err := testReg.Open(ctx, owner, k.ID, iv, ct, nil); !errIs(err, c.decrypt) {
				t.Errorf("%s: decrypt: %v, want %v", c.state, err, c.decrypt)
			}
			// The admin is bound by the life cycle too.
			if _, _, err := testReg.Seal(ctx, Operator, k.ID, nil, []byte("x"), nil); !errIs(err, c.encrypt) {
				t.Errorf("%s: admin encrypt: %v, want %v", c.state, err, c.encrypt)
			}
		})
	}
}

// Rows written before the registry kept its own lifecycle facts carry them as KMIP JSON; they keep
// restricting the key.
func TestKeyModelLegacyFacts(t *testing.T) {
	owner := Caller{Identity: "legacy"}
	k, err := testReg.Create(ctx, owner, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "legacy", State: keymap.Active, Attrs: map[string]string{
		"kmip.CryptographicUsageMask": `[{"tag":"CryptographicUsageMask","type":"Integer","value":"Decrypt"}]`,
		"kmip.ProcessStartDate":       `[{"tag":"ProcessStartDate","type":"DateTime","value":"2001-01-01T00:00:00Z"}]`,
	}})
	if err != nil {
		t.Fatal(err)
	}
	if m, ok := UsageMask(k); !ok || m != UsageDecrypt {
		t.Fatalf("legacy usage mask read as %x %v", m, ok)
	}
	if d, ok := Date(k, AttrProcessStartDate); !ok || d.Year() != 2001 {
		t.Fatalf("legacy date read as %v %v", d, ok)
	}
	if _, _, err := testReg.Seal(ctx, owner, k.ID, nil, []byte("x"), nil); !errors.Is(err, ErrUsage) {
		t.Fatalf("encrypt with a legacy decrypt-only key: %v", err)
	}
	// Setting the fact writes the registry's form and drops the legacy one.
	k, err = testReg.Update(owner, k.ID, func(r *keymap.Record) error { SetUsageMask(r, UsageEncrypt|UsageDecrypt, true); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if _, legacy := k.Attrs["kmip.CryptographicUsageMask"]; legacy || k.Attrs[AttrUsageMask] != "12" {
		t.Fatalf("attrs after the change: %v", k.Attrs)
	}
	if _, _, err := testReg.Seal(ctx, owner, k.ID, nil, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
}

// KES names bind only to KES keys: a KMIP object of the name is not a version, does not block
// create, and no object may take a name a KES key holds.
func TestKESNamesBindOnlyKESKeys(t *testing.T) {
	minio := Caller{Identity: "minio"}
	attacker := Caller{Identity: "attacker"}
	// The attacker's object comes first, with the name MinIO will use.
	squat, err := testReg.Create(ctx, attacker, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "minio-default", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := testReg.KESKey(Operator, "minio-default"); ok {
		t.Fatal("a KMIP object became a KES key by its name")
	}
	real, err := testReg.CreateKESKey(ctx, minio, "minio-default")
	if err != nil {
		t.Fatalf("KES create blocked by a KMIP object of the name: %v", err)
	}
	k, ok := testReg.KESKey(minio, "minio-default")
	if !ok || len(k.Versions) != 1 || k.Current().ID != real.ID {
		t.Fatalf("KES key %+v", k)
	}
	if _, ok := testReg.KESKey(attacker, "minio-default"); ok {
		t.Fatal("another identity sees MinIO's key")
	}
	if _, err := testReg.CreateKESKey(ctx, attacker, "minio-default"); !errors.Is(err, ErrExists) {
		t.Fatalf("second KES create: %v", err)
	}
	// No object takes the name now: not by create, register, rename or rekey.
	if _, err := testReg.Create(ctx, attacker, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "minio-default"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("create into a KES name: %v", err)
	}
	if _, err := testReg.Import(ctx, attacker, Material{Class: keymap.SecretKey, Algorithm: AES, Secret: make([]byte, 32)}, Meta{Name: "minio-default"}, true, ""); !errors.Is(err, ErrInvalid) {
		t.Errorf("register into a KES name: %v", err)
	}
	other, err := testReg.Create(ctx, attacker, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "innocent", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testReg.Update(attacker, other.ID, func(r *keymap.Record) error { r.Name = "minio-default"; return nil }); !errors.Is(err, ErrInvalid) {
		t.Errorf("rename into a KES name: %v", err)
	}
	if _, err := testReg.ReKey(ctx, attacker, squat.ID, Meta{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("rekey of the squatter (keeps the KES name): %v", err)
	}
	if _, err := testReg.Update(attacker, other.ID, func(r *keymap.Record) error { r.Attrs = withAttr(r.Attrs, AttrKESName, "innocent"); return nil }); !errors.Is(err, ErrDenied) {
		t.Errorf("a client marks its object as a KES key: %v", err)
	}
	// A further Name instance may not be a KES key's name either (KMIP AddAttribute of Name).
	if err := testReg.CheckNames(other.ID, "", []string{"innocent", "minio-default"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("a second name equal to a KES key's: %v", err)
	}
	// The owner may not rename a KES version away from its key.
	if _, err := testReg.Update(minio, real.ID, func(r *keymap.Record) error { r.Name = "elsewhere"; return nil }); !errors.Is(err, ErrInvalid) {
		t.Errorf("rename of a KES version: %v", err)
	}
	// Revoking the version through the registry (as KMIP Revoke does) stops generate at once.
	if _, _, _, err := testReg.SealRandom(ctx, minio, real.ID, 32, nil); err != nil {
		t.Fatal(err)
	}
	iv, ct, err := testReg.Seal(ctx, minio, real.ID, nil, []byte("dk"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testReg.Update(minio, real.ID, func(r *keymap.Record) error { r.State = keymap.Compromised; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := testReg.SealRandom(ctx, minio, real.ID, 32, nil); !errors.Is(err, ErrWrongState) {
		t.Errorf("generate with a compromised version: %v", err)
	}
	if pt, err := testReg.Open(ctx, minio, real.ID, iv, ct, nil); err != nil || string(pt) != "dk" {
		t.Errorf("decrypt with a compromised version: %q %v", pt, err)
	}
	// Rotation makes an Active version of MinIO's, which takes over none of the old version's life
	// cycle: revoked over KMIP (a Deactivation Date and a Protect Stop Date past), the key rotates
	// into a version that generates.
	if _, err := testReg.Update(minio, real.ID, func(r *keymap.Record) error {
		SetDate(r, AttrDeactivationDate, time.Now().Add(-time.Minute), true)
		SetDate(r, AttrProtectStopDate, time.Now().Add(-time.Minute), true)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	nv, err := testReg.RotateKESKey(ctx, Operator, "minio-default")
	if err != nil || nv.Owner != "minio" || nv.Attrs[AttrKESName] != "minio-default" || nv.State != keymap.Active {
		t.Fatalf("rotate: %+v %v", nv, err)
	}
	if _, _, _, err := testReg.SealRandom(ctx, minio, nv.ID, 32, nil); err != nil {
		t.Fatalf("generate with the version rotated in after a revoke: %v", err)
	}
	// The operator shares a KMIP-made key explicitly.
	kmipKey, err := testReg.Create(ctx, attacker, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "to-share", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	if c := UnsharedKESCandidates(testKM, func(string) bool { return true }); !containsID(c, kmipKey.ID) || containsID(c, squat.ID) {
		t.Errorf("candidates for sharing: %d rows; want the free name, not the taken one", len(c))
	}
	if _, err := testReg.ShareKES(attacker, kmipKey.ID, "to-share"); !errors.Is(err, ErrDenied) {
		t.Errorf("a client shares: %v", err)
	}
	exportable, err := testReg.Import(ctx, attacker, Material{Class: keymap.SecretKey, Algorithm: AES, Secret: make([]byte, 32)}, Meta{Name: "exportable", State: keymap.Active}, true, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testReg.ShareKES(Operator, exportable.ID, "exportable"); !errors.Is(err, ErrInvalid) {
		t.Errorf("share of an exportable key: %v", err)
	}
	if _, err := testReg.Update(attacker, kmipKey.ID, func(r *keymap.Record) error {
		r.Attrs = withAttr(r.Attrs, "kmip.Name", `[{"tag":"Name"}]`) // a KMIP name list, as the front end keeps one
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sharedRec, err := testReg.ShareKES(Operator, kmipKey.ID, "to-share")
	if err != nil {
		t.Fatal(err)
	}
	if _, stale := sharedRec.Attrs["kmip.Name"]; stale || sharedRec.Name != "to-share" {
		t.Errorf("shared row keeps other names: %v", sharedRec.Attrs)
	}
	if k, ok := testReg.KESKey(attacker, "to-share"); !ok || k.Current().ID != kmipKey.ID {
		t.Fatalf("shared key: %+v", k)
	}
	// Deleting is the owner's: the same record as a KMIP Destroy is left behind (a Destroyed row).
	if err := testReg.DeleteKESKey(ctx, attacker, "minio-default", nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("another identity deletes MinIO's key: %v", err)
	}
	if err := testReg.DeleteKESKey(ctx, minio, "minio-default", nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := testReg.KESKey(Operator, "minio-default"); ok {
		t.Error("deleted KES key still there")
	}
	if rec, err := testReg.Get(real.ID); err != nil || Live(rec) || rec.Attrs[AttrDestroyDate] == "" {
		t.Errorf("deleted version's row: %+v %v, want it Destroyed with its Destroy Date", rec, err)
	}
	if _, err := testReg.CreateKESKey(ctx, minio, "minio-default"); err != nil {
		t.Errorf("KES create of a deleted key's name: %v (a Destroyed version binds no name)", err)
	}
}

func containsID(recs []keymap.Record, id string) bool {
	for _, r := range recs {
		if r.ID == id {
			return true
		}
	}
	return false
}

// SHA-1 signatures are the policy's opt-in.
func TestSHA1IsOptIn(t *testing.T) {
	owner := Caller{Identity: "sha"}
	priv, _, err := testReg.CreateKeyPair(ctx, owner, KeySpec{Algorithm: EC, Size: 256}, Meta{Name: "sha1", State: keymap.Active}, Meta{Name: "sha1-pub", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testReg.Sign(ctx, owner, priv.ID, SignParams{Scheme: ECDSA, Hash: crypto.SHA1}, []byte("x")); !errors.Is(err, ErrDenied) {
		t.Fatalf("SHA-1 without the opt-in: %v", err)
	}
	// ECDSA signs a digest as a number: a SHA-1 digest behind zeros, given as SHA-256, is one too.
	padded := append(make([]byte, 12), make([]byte, 20)...)
	padded[12] = 0xab
	if _, err := testReg.Sign(ctx, owner, priv.ID, SignParams{Scheme: ECDSA, Hash: crypto.SHA256, Prehashed: true}, padded); !errors.Is(err, ErrDenied) {
		t.Fatalf("SHA-1 digest passed off as SHA-256: %v", err)
	}
	owner.SHA1 = true
	if _, err := testReg.Sign(ctx, owner, priv.ID, SignParams{Scheme: ECDSA, Hash: crypto.SHA1}, []byte("x")); err != nil {
		t.Fatalf("SHA-1 with the opt-in: %v", err)
	}
}

// A version found on a token (rebuilt or adopted: dated when found, owned by nobody) does not
// become the one new data keys are sealed under while a version KES made is there.
func TestRebuiltVersionIsNotCurrent(t *testing.T) {
	made := keymap.Record{ID: "made", Created: time.Unix(100, 0)}
	found := keymap.Record{ID: "found", Created: time.Unix(200, 0), Attrs: map[string]string{AttrRebuilt: "x"}}
	if c := (KESKey{Versions: []keymap.Record{made, found}}).Current(); c.ID != "made" {
		t.Fatalf("current is %s", c.ID)
	}
	if c := (KESKey{Versions: []keymap.Record{found}}).Current(); c.ID != "found" {
		t.Fatalf("current of a rebuilt key alone is %s", c.ID)
	}
}

// A name the keymap could not store is refused before a key is made for it: no orphan is left on
// the token.
func TestUnstorableNameRefusedFirst(t *testing.T) {
	owner := Caller{Identity: "names"}
	tok, _ := testReg.Signer("a")
	before := len(attrs(t, tok, nil, objKind{class: ^uint(0)}, 0))
	for _, name := range []string{"nul\x00name", "bad\xffutf8", strings.Repeat("n", MaxNameLen+1)} {
		if _, err := testReg.Create(ctx, owner, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: name}); !errors.Is(err, ErrInvalid) {
			t.Errorf("create named %q: %v", name, err)
		}
		if _, _, err := testReg.CreateKeyPair(ctx, owner, KeySpec{Algorithm: EC, Size: 256}, Meta{Name: "ok"}, Meta{Name: name}); !errors.Is(err, ErrInvalid) {
			t.Errorf("key pair with a public half named %q: %v", name, err)
		}
	}
	if after := len(attrs(t, tok, nil, objKind{class: ^uint(0)}, 0)); after != before {
		t.Fatalf("%d token objects before, %d after refused creates", before, after)
	}
}

// A store failure reaches the client with its cause but not where the store lives (a file path, a
// database's host and name): that is the operator's, in the log.
func TestStoreFailureKeepsLocationOut(t *testing.T) {
	dir := t.TempDir()
	km, err := keymap.Open(filepath.Join(dir, "closed.csv"), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(Options{Signers: []Config{cfgOf("b", tokB)}, Logger: quietLog()}, km)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	km.Close()
	_, err = r.Create(ctx, Caller{Identity: "x"}, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "unstored"})
	if err == nil || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("create with the keymap closed: %v", err)
	}
	if strings.Contains(err.Error(), dir) {
		t.Fatalf("the error names the store's location: %v", err)
	}
}
