package signer

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/p11bridge/p11bridge/keymap"
)

// checkLocked asserts what DESIGN.md promises of every generated private or secret key: on the
// token, private, sensitive, never extractable, with the tag as CKA_ID and the name as CKA_LABEL.
func checkLocked(t *testing.T, rec keymap.Record, k objKind, wantObjects int) {
	t.Helper()
	tok, err := testReg.Signer(rec.Signer)
	if err != nil {
		t.Fatal(err)
	}
	objs := attrs(t, tok, rec.Tag, k, pkcs11.CKA_ID, pkcs11.CKA_LABEL, pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE,
		pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE)
	if len(objs) != wantObjects {
		t.Fatalf("%s: %d objects of kind %s on the token, want %d", rec.ID, len(objs), k, wantObjects)
	}
	for _, a := range objs {
		if !bytes.Equal(a[0].Value, rec.Tag) || len(rec.Tag) != TagSize {
			t.Errorf("%s: CKA_ID %x, want tag %x", rec.ID, a[0].Value, rec.Tag)
		}
		if string(a[1].Value) != rec.Name {
			t.Errorf("%s: CKA_LABEL %q, want %q", rec.ID, a[1].Value, rec.Name)
		}
		for i, name := range []string{"CKA_TOKEN", "CKA_PRIVATE", "CKA_SENSITIVE"} {
			if !boolAttr(a[2+i]) {
				t.Errorf("%s: %s is false", rec.ID, name)
			}
		}
		if boolAttr(a[5]) {
			t.Errorf("%s: CKA_EXTRACTABLE is true", rec.ID)
		}
	}
}

func TestCreateSecretKeys(t *testing.T) {
	for _, c := range []struct {
		alg      string
		size     int
		withHMAC bool
	}{{AES, 128, false}, {AES, 192, false}, {AES, 256, false}, {AES, 256, true}, {HMAC, 256, false}, {HMAC, 512, false}} {
		t.Run(fmt.Sprintf("%s-%d-hmac=%v", c.alg, c.size, c.withHMAC), func(t *testing.T) {
			name := fmt.Sprintf("secret-%s-%d-%v", c.alg, c.size, c.withHMAC)
			rec, err := testReg.Create(ctx, Caller{Identity: "tester"}, KeySpec{Algorithm: c.alg, Size: c.size, WithHMAC: c.withHMAC}, Meta{Name: name})
			if err != nil {
				t.Fatal(err)
			}
			if rec.ID != hex.EncodeToString(rec.Tag) || rec.Signer != "a" || rec.Class != keymap.SecretKey ||
				rec.Algorithm != c.alg || rec.Size != c.size || rec.State != keymap.PreActive || rec.Owner != "tester" {
				t.Fatalf("record %+v", rec)
			}
			if got, err := testReg.Get(rec.ID); err != nil || got.Name != name {
				t.Fatalf("keymap row: %+v %v", got, err)
			}
			switch {
			case c.alg == AES && c.withHMAC:
				checkLocked(t, rec, kindAES, 1)
				checkLocked(t, rec, kindHMAC, 1)
			case c.alg == AES:
				checkLocked(t, rec, kindAES, 1)
				checkLocked(t, rec, kindHMAC, 0)
			default:
				checkLocked(t, rec, kindHMAC, 1)
			}
			tok, _ := testReg.Signer("a")
			vl := attrs(t, tok, rec.Tag, kindAnySecet, pkcs11.CKA_VALUE_LEN)
			want := c.size / 8
			if len(vl) == 0 || keyType(vl[0][0].Value) != uint(want) && keyType(vl[len(vl)-1][0].Value) != uint(want) {
				t.Errorf("CKA_VALUE_LEN does not show %d bytes", want)
			}
		})
	}
}

func TestCreateRejectsBadSpecs(t *testing.T) {
	for _, s := range []KeySpec{{AES, 100, "", false}, {HMAC, 128, "", false}, {RSA, 2048, "", false}, {"DES", 64, "", false}, {AES, 256, "nope", false}} {
		if _, err := testReg.Create(ctx, Operator, s, Meta{Name: "bad", State: keymap.Active}); err == nil {
			t.Errorf("Create(%+v) succeeded", s)
		}
	}
	for _, s := range []KeySpec{{RSA, 1024, "", false}, {EC, 521, "", false}, {AES, 256, "", false}} {
		if _, _, err := testReg.CreateKeyPair(ctx, Operator, s, Meta{}, Meta{}); !errors.Is(err, ErrInvalid) {
			t.Errorf("CreateKeyPair(%+v): %v, want ErrInvalid", s, err)
		}
	}
}

// opensslKeyID has openssl compute the RFC 5280 method-1 key identifier of a public key, by
// certifying it with a throwaway key and reading the SubjectKeyIdentifier it put in.
func opensslKeyID(t *testing.T, pub crypto.PublicKey) []byte {
	t.Helper()
	dir := t.TempDir()
	spki, err := MarshalSPKI(pub)
	if err != nil {
		t.Fatal(err)
	}
	pubFile := filepath.Join(dir, "pub.pem")
	os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}), 0o600)
	os.WriteFile(filepath.Join(dir, "ext"), []byte("subjectKeyIdentifier=hash\n"), 0o600)
	run := func(args ...string) string {
		out, err := exec.Command("openssl", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", filepath.Join(dir, "k.pem"))
	out := run("x509", "-new", "-subj", "/CN=kid", "-key", filepath.Join(dir, "k.pem"), "-force_pubkey", pubFile,
		"-extfile", filepath.Join(dir, "ext"), "-noout", "-ext", "subjectKeyIdentifier")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	kid, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(lines[len(lines)-1]), ":", ""))
	if err != nil {
		t.Fatalf("parse openssl output %q: %v", out, err)
	}
	return kid
}

func TestCreateKeyPairs(t *testing.T) {
	for _, c := range []struct {
		alg  string
		size int
	}{{RSA, 2048}, {RSA, 3072}, {RSA, 4096}, {EC, 256}, {EC, 384}} {
		t.Run(fmt.Sprintf("%s-%d", c.alg, c.size), func(t *testing.T) {
			priv, pub, err := testReg.CreateKeyPair(ctx, Operator, KeySpec{Algorithm: c.alg, Size: c.size},
				Meta{Name: fmt.Sprintf("pair-%d-priv", c.size), State: keymap.Active}, Meta{Name: fmt.Sprintf("pair-%d-pub", c.size), State: keymap.Active})
			if err != nil {
				t.Fatal(err)
			}
			if priv.ID == pub.ID || !bytes.Equal(priv.Tag, pub.Tag) || priv.Class != keymap.PrivateKey || pub.Class != keymap.PublicKey {
				t.Fatalf("records %+v / %+v", priv, pub)
			}
			if priv.Attrs[AttrPublicKey] != pub.ID || pub.Attrs[AttrPrivateKey] != priv.ID {
				t.Errorf("pair links missing: %v / %v", priv.Attrs, pub.Attrs)
			}
			checkLocked(t, priv, kindPrivate, 1)
			tok, _ := testReg.Signer("a")
			pa := attrs(t, tok, pub.Tag, kindPublic, pkcs11.CKA_ID, pkcs11.CKA_LABEL)
			if len(pa) != 1 || !bytes.Equal(pa[0][0].Value, pub.Tag) || string(pa[0][1].Value) != pub.Name {
				t.Fatalf("public object: %v", pa)
			}
			pk, err := testReg.PublicKey(ctx, Operator, pub.ID)
			if err != nil {
				t.Fatal(err)
			}
			if want := opensslKeyID(t, pk); !bytes.Equal(priv.KeyID, want) || !bytes.Equal(pub.KeyID, want) {
				t.Errorf("key identifier %x, openssl says %x", priv.KeyID, want)
			}
			if got := testReg.ByKeyID(priv.KeyID); len(got) != 2 {
				t.Errorf("ByKeyID found %d rows, want 2", len(got))
			}
			scheme := PKCS1v15
			if c.alg == EC {
				scheme = ECDSA
			}
			p := SignParams{Scheme: scheme, Hash: crypto.SHA256}
			msg := []byte("p11bridge signs this")
			sig, err := testReg.Sign(ctx, Operator, priv.ID, p, msg)
			if err != nil {
				t.Fatal(err)
			}
			if err := testReg.Verify(ctx, Operator, pub.ID, p, msg, sig); err != nil {
				t.Fatal(err)
			}
			if err := testReg.Verify(ctx, Operator, pub.ID, p, []byte("something else"), sig); !errors.Is(err, ErrBadSignature) {
				t.Fatalf("verify of other data: %v", err)
			}
			opensslVerify(t, pk, msg, sig)
		})
	}
}

// opensslVerify checks a SHA-256 signature (PKCS#1 v1.5 or ECDSA DER) with openssl dgst.
func opensslVerify(t *testing.T, pub crypto.PublicKey, msg, sig []byte) {
	t.Helper()
	dir := t.TempDir()
	spki, _ := MarshalSPKI(pub)
	files := map[string][]byte{"pub.pem": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}), "msg": msg, "sig": sig}
	for n, b := range files {
		os.WriteFile(filepath.Join(dir, n), b, 0o600)
	}
	out, err := exec.Command("openssl", "dgst", "-sha256", "-verify", filepath.Join(dir, "pub.pem"),
		"-signature", filepath.Join(dir, "sig"), filepath.Join(dir, "msg")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Verified OK") {
		t.Fatalf("openssl dgst -verify: %v: %s", err, out)
	}
}

func TestImportAndExport(t *testing.T) {
	aesKey := bytes.Repeat([]byte{7}, 32)
	rec, err := testReg.Import(ctx, Operator, Material{Class: keymap.SecretKey, Algorithm: AES, Secret: aesKey}, Meta{Name: "imp-aes", State: keymap.Active}, true, "")
	if err != nil {
		t.Fatal(err)
	}
	m, err := testReg.Export(ctx, Operator, rec.ID)
	if err != nil || !bytes.Equal(m.Secret, aesKey) {
		t.Fatalf("export of exportable AES key: %x %v", m.Secret, err)
	}
	locked, err := testReg.Import(ctx, Operator, Material{Class: keymap.SecretKey, Algorithm: AES, Secret: aesKey}, Meta{Name: "imp-aes-locked", State: keymap.Active}, false, "")
	if err != nil {
		t.Fatal(err)
	}
	checkLocked(t, locked, kindAES, 1)
	if _, err := testReg.Export(ctx, Operator, locked.ID); !errors.Is(err, ErrNotExtractable) {
		t.Fatalf("export of locked import: %v", err)
	}
	gen, err := testReg.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "gen", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testReg.Export(ctx, Operator, gen.ID); !errors.Is(err, ErrNotExtractable) {
		t.Fatalf("export of generated key: %v", err)
	}

	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for _, k := range []crypto.Signer{rsaKey, ecKey} {
		rec, err := testReg.Import(ctx, Operator, Material{Class: keymap.PrivateKey, Private: k}, Meta{Name: fmt.Sprintf("imp-%T", k), State: keymap.Active}, true, "")
		if err != nil {
			t.Fatal(err)
		}
		scheme := PKCS1v15
		if _, ok := k.(*ecdsa.PrivateKey); ok {
			scheme = ECDSA
		}
		p := SignParams{Scheme: scheme, Hash: crypto.SHA384}
		sig, err := testReg.Sign(ctx, Operator, rec.ID, p, []byte("imported"))
		if err != nil {
			t.Fatal(err)
		}
		if err := VerifyWith(k.Public(), p, []byte("imported"), sig); err != nil {
			t.Fatalf("signature by imported %T: %v", k, err)
		}
		m, err := testReg.Export(ctx, Operator, rec.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !m.Private.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(k.Public()) {
			t.Fatalf("exported %T differs", k)
		}
		kid, _ := KeyIdentifier(k.Public())
		if !bytes.Equal(rec.KeyID, kid) {
			t.Errorf("imported key identifier %x, want %x", rec.KeyID, kid)
		}
		pub, err := testReg.Import(ctx, Operator, Material{Class: keymap.PublicKey, Public: k.Public()}, Meta{Name: "imp-pub", State: keymap.Active}, true, "")
		if err != nil {
			t.Fatal(err)
		}
		if pk, err := testReg.PublicKey(ctx, Operator, pub.ID); err != nil || !pk.(interface{ Equal(crypto.PublicKey) bool }).Equal(k.Public()) {
			t.Fatalf("imported public key: %v", err)
		}
		if err := testReg.Verify(ctx, Operator, pub.ID, p, []byte("imported"), sig); err != nil {
			t.Fatalf("verify with imported public key: %v", err)
		}
	}

	for _, class := range []keymap.Class{keymap.SecretData, keymap.Opaque} {
		data := []byte("registered " + string(class))
		rec, err := testReg.Import(ctx, Operator, Material{Class: class, Secret: data}, Meta{Name: "imp-" + string(class), State: keymap.Active}, false, "")
		if err != nil {
			t.Fatal(err)
		}
		if m, err := testReg.Export(ctx, Operator, rec.ID); err != nil || !bytes.Equal(m.Secret, data) {
			t.Fatalf("%s export: %q %v", class, m.Secret, err)
		}
	}
	if _, err := testReg.Import(ctx, Operator, Material{Class: keymap.SecretKey, Algorithm: AES, Secret: []byte("short")}, Meta{}, true, ""); !errors.Is(err, ErrInvalid) {
		t.Fatalf("short AES import: %v", err)
	}
	if _, err := testReg.Import(ctx, Operator, Material{Class: keymap.Certificate, Cert: []byte("not der")}, Meta{}, true, ""); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad certificate import: %v", err)
	}
}

func TestImportCertificate(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der := selfSigned(t, key)
	rec, err := testReg.Import(ctx, Operator, Material{Class: keymap.Certificate, Cert: der}, Meta{Name: "cert", State: keymap.Active}, false, "")
	if err != nil {
		t.Fatal(err)
	}
	m, err := testReg.Export(ctx, Operator, rec.ID)
	if err != nil || !bytes.Equal(m.Cert, der) {
		t.Fatalf("certificate export: %v", err)
	}
}

func selfSigned(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "registered"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), SubjectKeyId: []byte{1}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestDestroy(t *testing.T) {
	priv, pub, err := testReg.CreateKeyPair(ctx, Operator, KeySpec{Algorithm: EC, Size: 256}, Meta{Name: "doomed", State: keymap.Active}, Meta{Name: "doomed-pub", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testReg.Sign(ctx, Operator, priv.ID, SignParams{Scheme: ECDSA, Hash: crypto.SHA256}, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := testReg.Destroy(ctx, Operator, pub.ID); err != nil {
		t.Fatal(err)
	}
	if err := testReg.Destroy(ctx, Operator, priv.ID); err != nil {
		t.Fatal(err)
	}
	tok, _ := testReg.Signer("a")
	if n := len(attrs(t, tok, priv.Tag, kindPrivate, pkcs11.CKA_ID)) + len(attrs(t, tok, priv.Tag, kindPublic, pkcs11.CKA_ID)); n != 0 {
		t.Fatalf("%d objects left on the token", n)
	}
	// The metadata stays: a Destroyed row with its Destroy Date, which nothing can use.
	rec, err := testReg.Get(priv.ID)
	if err != nil || rec.State != keymap.Destroyed || rec.Attrs[AttrDestroyDate] == "" || rec.Attrs[AttrDestroying] != "" || rec.Name != "doomed" {
		t.Fatalf("row after destroy: %+v %v", rec, err)
	}
	if _, err := testReg.Sign(ctx, Operator, priv.ID, SignParams{Scheme: ECDSA, Hash: crypto.SHA256}, []byte("x")); !errors.Is(err, ErrWrongState) {
		t.Fatalf("Sign after destroy: %v", err)
	}
	if _, err := testReg.Export(ctx, Operator, pub.ID); !errors.Is(err, ErrWrongState) {
		t.Fatalf("Export of a destroyed public key: %v", err)
	}
	if err := testReg.Destroy(ctx, Operator, priv.ID); !errors.Is(err, ErrWrongState) {
		t.Fatalf("second destroy: %v", err)
	}
	if _, err := testReg.Update(Operator, priv.ID, func(r *keymap.Record) error { r.State = keymap.Active; return nil }); !errors.Is(err, ErrDenied) {
		t.Fatalf("bringing a destroyed key back: %v", err)
	}
	// A compromised key is Destroyed Compromised.
	k, err := testReg.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 128}, Meta{Name: "doomed-compromised", State: keymap.Compromised})
	if err != nil {
		t.Fatal(err)
	}
	if err := testReg.Destroy(ctx, Operator, k.ID); err != nil {
		t.Fatal(err)
	}
	if rec, _ := testReg.Get(k.ID); rec.State != keymap.DestroyedCompromised {
		t.Fatalf("destroyed compromised key is %s", rec.State)
	}
}

func TestReKey(t *testing.T) {
	old, err := testReg.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 256, WithHMAC: true}, Meta{Name: "rotating", State: keymap.Active, Attrs: map[string]string{"kes.name": "rotating"}})
	if err != nil {
		t.Fatal(err)
	}
	nu, err := testReg.ReKey(ctx, Operator, old.ID, Meta{State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	if nu.Name != "rotating" || nu.Attrs["kes.name"] != "rotating" || nu.Attrs[AttrReplaced] != old.ID || nu.Attrs[AttrHMACKey] == "" {
		t.Fatalf("new version %+v", nu)
	}
	if o, _ := testReg.Get(old.ID); o.Attrs[AttrReplacement] != nu.ID {
		t.Fatalf("old version not linked: %v", o.Attrs)
	}
	iv, ct, err := testReg.Seal(ctx, Operator, old.ID, nil, []byte("old data"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := testReg.Open(ctx, Operator, old.ID, iv, ct, nil); err != nil || string(pt) != "old data" {
		t.Fatalf("old version no longer decrypts: %v", err)
	}
	priv, _, err := testReg.CreateKeyPair(ctx, Operator, KeySpec{Algorithm: EC, Size: 256}, Meta{Name: "rk", State: keymap.Active}, Meta{Name: "rk-pub", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	np, nq, err := testReg.ReKeyKeyPair(ctx, Operator, priv.ID, Meta{}, Meta{})
	if err != nil {
		t.Fatal(err)
	}
	if np.Name != "rk" || nq.Name != "rk-pub" || np.Attrs[AttrReplaced] != priv.ID || bytes.Equal(np.KeyID, priv.KeyID) {
		t.Fatalf("rekeyed pair %+v / %+v", np, nq)
	}
}

func TestRenameReachesTheToken(t *testing.T) {
	rec, err := testReg.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 128}, Meta{Name: "before", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testReg.Update(Operator, rec.ID, func(r *keymap.Record) error { r.Name = "after"; return nil }); err != nil {
		t.Fatal(err)
	}
	tok, _ := testReg.Signer("a")
	if l := attrs(t, tok, rec.Tag, kindAES, pkcs11.CKA_LABEL); len(l) != 1 || string(l[0][0].Value) != "after" {
		t.Fatalf("CKA_LABEL after rename: %v", l)
	}
	if got := testReg.ByName("after"); len(got) != 1 || got[0].ID != rec.ID {
		t.Fatalf("ByName after rename: %v", got)
	}
}

// TestImportRSALimits: RSA public keys (used on the host for verify and OAEP encryption) are taken
// in with at most MaxRSABits of modulus and an odd exponent from 3 to MaxRSAExponent, alone or as
// the public half of a private key; one over the limit that is already in the token (put there by
// another process or an earlier version) is not used on the host.
func TestImportRSALimits(t *testing.T) {
	huge := new(big.Int).Add(new(big.Int).Lsh(big.NewInt(1), MaxRSABits+7), big.NewInt(1))
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what string
		pub  *rsa.PublicKey
	}{
		{"a 16,392-bit modulus", &rsa.PublicKey{N: huge, E: 65537}},
		{"an even exponent", &rsa.PublicKey{N: key.N, E: 65538}},
		{"exponent 1", &rsa.PublicKey{N: key.N, E: 1}},
	} {
		_, err := testReg.Import(ctx, Operator, Material{Class: keymap.PublicKey, Public: c.pub}, Meta{Name: "rsa-limit"}, true, "")
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "RSA") {
			t.Errorf("%s: %v", c.what, err)
		}
	}
	if _, err := testReg.Import(ctx, Operator, Material{Class: keymap.PublicKey, Public: &key.PublicKey}, Meta{Name: "rsa-ok"}, true, ""); err != nil {
		t.Errorf("a 2048-bit key: %v", err)
	}
	odd := *key
	odd.PublicKey.E = 4
	if _, err := testReg.Import(ctx, Operator, Material{Class: keymap.PrivateKey, Private: &odd}, Meta{Name: "rsa-limit-priv"}, true, ""); !errors.Is(err, ErrInvalid) {
		t.Errorf("a private key with an even exponent: %v", err)
	}

	tok, err := testReg.Signer("a")
	if err != nil {
		t.Fatal(err)
	}
	tag, err := NewTag()
	if err != nil {
		t.Fatal(err)
	}
	var made pkcs11.ObjectHandle
	defer func() {
		_ = tok.do(ctx, func(sh pkcs11.SessionHandle) error { return tok.ctx.DestroyObject(sh, made) })
	}()
	err = tok.do(ctx, func(sh pkcs11.SessionHandle) error {
		var err error
		made, err = tok.ctx.CreateObject(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_ID, tag),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS, huge.Bytes()), pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true)})
		return err
	})
	if err != nil {
		t.Fatalf("make an oversized key in the token: %v", err)
	}
	if _, err := tok.publicKey(ctx, tag); !errors.Is(err, ErrUnsupported) {
		t.Errorf("an oversized key in the token is read for use on the host: %v", err)
	}
}
