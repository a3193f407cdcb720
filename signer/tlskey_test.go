package signer

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
)

// genTLSKeyPair makes a key pair on tok the way an operator's tool would (pkcs11-tool
// --keypairgen --label … --id …): token objects, the private one sensitive and able to sign.
// With pubObject false only the private object stays, as some tokens keep EC keys; the public
// key is read before its object goes, as an operator has it in the certificate.
func genTLSKeyPair(t *testing.T, tok *Token, alg string, bits int, label string, id []byte, pubObject bool) crypto.PublicKey {
	t.Helper()
	pub := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label), pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	}
	priv := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true), pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label), pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	}
	var mech uint
	switch alg {
	case RSA:
		mech = pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN
		pub = append(pub, pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, bits), pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}))
	case EC:
		mech = pkcs11.CKM_EC_KEY_PAIR_GEN
		params, err := asn1.Marshal(curveOIDs[bits])
		if err != nil {
			t.Fatal(err)
		}
		pub = append(pub, pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params))
	}
	var pk crypto.PublicKey
	err := tok.do(ctx, func(sh pkcs11.SessionHandle) error {
		ph, _, err := tok.ctx.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, pub, priv)
		if err != nil {
			return err
		}
		if pk, err = tok.readPublic(sh, ph, kindPublic); err != nil {
			return err
		}
		if !pubObject {
			err = tok.ctx.DestroyObject(sh, ph)
		}
		return err
	})
	if err != nil {
		t.Fatalf("generate %s-%d %q: %v", alg, bits, label, err)
	}
	return pk
}

// certifyTLSKey certifies pub with a throw-away host CA, as an operator's CA would.
func certifyTLSKey(t *testing.T, pub crypto.PublicKey) (*x509.Certificate, *x509.CertPool) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tlskey test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "server"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return cert, pool
}

// tlsHandshake serves one TLS connection with key at version and checks the client verified it.
func tlsHandshake(t *testing.T, key crypto.Signer, cert *x509.Certificate, pool *x509.CertPool, version uint16) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	srv := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}},
		MinVersion: version, MaxVersion: version}
	done := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		tc := tls.Server(c, srv)
		if err := tc.Handshake(); err != nil {
			done <- err
			return
		}
		_, err = io.Copy(tc, tc)
		done <- err
	}()
	c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: pool, MinVersion: version, MaxVersion: version})
	if err != nil {
		t.Fatalf("TLS %x handshake with a token key: %v", version, err)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: %q %v", buf, err)
	}
	c.Close()
	if err := <-done; err != nil && !errors.Is(err, io.EOF) {
		t.Logf("server side: %v", err)
	}
}

func keyURI(label string, parts ...string) string {
	return "pkcs11:" + strings.Join(append([]string{"token=" + url.PathEscape(label)}, parts...), ";")
}

// TestTLSKey: RSA and EC keys in a token sign TLS 1.2 and 1.3 handshakes through the registry,
// found by label or by id, with or without a public key object.
func TestTLSKey(t *testing.T) {
	ta, _ := testReg.Signer("a")
	for _, c := range []struct {
		alg       string
		bits      int
		label     string
		id        []byte
		pubObject bool
		uri       string
	}{
		{RSA, 2048, "tls-rsa", []byte{0x7e, 0x01}, true, keyURI(tokA.Label, "object=tls-rsa")},
		{RSA, 3072, "tls-rsa-3072", []byte{0x7e, 0x02}, true, keyURI(tokA.Label, "id=%7e%02", "type=private")},
		{EC, 256, "tls-p256", []byte{0x7e, 0x03}, true, keyURI(tokA.Label, "object=tls-p256", "id=%7E%03")},
		{EC, 384, "tls-p384", []byte{0x7e, 0x04}, false, "pkcs11:serial=" + tokA.Serial + ";object=tls-p384"},
	} {
		t.Run(fmt.Sprintf("%s-%d", c.alg, c.bits), func(t *testing.T) {
			certPub := genTLSKeyPair(t, ta, c.alg, c.bits, c.label, c.id, c.pubObject)
			if c.pubObject {
				// Without a certificate the token's public key is taken.
				k, err := testReg.TLSKey(ctx, c.uri, nil)
				if err != nil {
					t.Fatal(err)
				}
				if !samePublic(k.Public(), certPub) {
					t.Fatal("Public() is not the token's public key")
				}
			} else if _, err := testReg.TLSKey(ctx, c.uri, nil); err == nil || !strings.Contains(err.Error(), "read its public key") {
				t.Fatalf("an EC key without public object and without certificate: %v", err)
			}
			cert, pool := certifyTLSKey(t, certPub)
			k, err := testReg.TLSKey(ctx, c.uri, cert.PublicKey)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(k.ID(), c.id) || !strings.Contains(k.String(), tokA.Label) {
				t.Errorf("ID %x, String %s", k.ID(), k)
			}
			sum := sha256.Sum256([]byte("message"))
			switch pub := certPub.(type) {
			case *rsa.PublicKey:
				sig, err := k.Sign(rand.Reader, sum[:], crypto.SHA256)
				if err != nil || rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], sig) != nil {
					t.Fatalf("PKCS#1 v1.5: %v", err)
				}
				for _, salt := range []int{rsa.PSSSaltLengthEqualsHash, rsa.PSSSaltLengthAuto, 20} {
					opts := &rsa.PSSOptions{SaltLength: salt, Hash: crypto.SHA256}
					sig, err := k.Sign(rand.Reader, sum[:], opts)
					if err != nil || rsa.VerifyPSS(pub, crypto.SHA256, sum[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto}) != nil {
						t.Fatalf("PSS salt %d: %v", salt, err)
					}
				}
			case *ecdsa.PublicKey:
				sig, err := k.Sign(rand.Reader, sum[:], crypto.SHA256)
				if err != nil || !ecdsa.VerifyASN1(pub, sum[:], sig) {
					t.Fatalf("ECDSA: %v", err)
				}
			}
			if _, err := k.Sign(rand.Reader, sum[:20], crypto.SHA256); err == nil {
				t.Error("a digest of the wrong length was signed")
			}
			tlsHandshake(t, k, cert, pool, tls.VersionTLS12)
			tlsHandshake(t, k, cert, pool, tls.VersionTLS13)
		})
	}
}

// TestTLSKeyRefusals: every way of naming a key wrongly says what is wrong.
func TestTLSKeyRefusals(t *testing.T) {
	ta, _ := testReg.Signer("a")
	genTLSKeyPair(t, ta, EC, 256, "tls-dup", []byte{0x7f, 0x01}, true)
	genTLSKeyPair(t, ta, EC, 256, "tls-dup", []byte{0x7f, 0x02}, true)
	genTLSKeyPair(t, ta, EC, 256, "tls-other", []byte{0x7f, 0x03}, true)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for _, c := range []struct{ uri, want string }{
		{keyURI(tokA.Label), "names no key"},
		{"pkcs11:token=no-such-token;object=x", `no configured signer serves that token (signer "a": token "` + tokA.Label + `"`},
		{"pkcs11:model=SoftHSM%20v2;object=x", "2 signers serve matching tokens; add serial="},
		{keyURI(tokA.Label, "object=nothing"), `holds no private key with CKA_LABEL "nothing"`},
		{keyURI(tokA.Label, "object=tls-dup"), `several private keys have CKA_LABEL "tls-dup"; name the key by id= as well`},
		{keyURI(tokB.Label, "object=tls-other"), `holds no private key`},
		{keyURI(tokA.Label, "object=tls-other"), "does not match the certificate's public key"},
		{"pkcs11:token", "malformed"},
	} {
		_, err := testReg.TLSKey(ctx, c.uri, &other.PublicKey)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want …%s…", c.uri, err, c.want)
		}
	}
	if k, err := testReg.TLSKey(ctx, keyURI(tokA.Label, "object=tls-dup", "id=%7f%02"), nil); err != nil || !bytes.Equal(k.ID(), []byte{0x7f, 0x02}) {
		t.Errorf("label and id together pick one: %v", err)
	}
}

// TestTLSKeySurvivesReconfigure: a reload that reopens the key's signer (a changed session
// limit) leaves the key signing, through the new sessions.
func TestTLSKeySurvivesReconfigure(t *testing.T) {
	reg, err := Open(Options{Signers: []Config{cfgOf("x", tokB)}, Default: "x", Logger: quietLog()}, testKM)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	tb, _ := reg.Signer("x")
	genTLSKeyPair(t, tb, RSA, 2048, "tls-reload", []byte{0x7d}, true)
	k, err := reg.TLSKey(ctx, keyURI(tokB.Label, "object=tls-reload"), nil)
	if err != nil {
		t.Fatal(err)
	}
	c := cfgOf("x", tokB)
	c.MaxSessions = 3
	if err := reg.Reconfigure(Options{Signers: []Config{c}, Default: "x"}); err != nil {
		t.Fatal(err)
	}
	if now, _ := reg.Signer("x"); now == tb {
		t.Fatal("the signer was not reopened")
	}
	sum := sha256.Sum256([]byte("after reload"))
	sig, err := k.Sign(nil, sum[:], crypto.SHA256)
	if err != nil || rsa.VerifyPKCS1v15(k.Public().(*rsa.PublicKey), crypto.SHA256, sum[:], sig) != nil {
		t.Fatalf("sign after the signer was reopened: %v", err)
	}
	c.Name = "renamed"
	if err := reg.Reconfigure(Options{Signers: []Config{c}, Default: "renamed"}); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Sign(nil, sum[:], crypto.SHA256); err != nil {
		t.Fatalf("sign after the signer was renamed: %v", err)
	}
	if err := reg.Reconfigure(Options{Signers: []Config{cfgOf("y", tokA)}, Default: "y"}); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Sign(nil, sum[:], crypto.SHA256); err == nil || !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "no configured signer serves its token") {
		t.Fatalf("sign with the token gone: %v", err)
	}
}
