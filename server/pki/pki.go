// Package pki makes the certificates of dev mode and tests, and computes client identities.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"strings"
	"time"
)

// Identity is the lowercase hex SHA-256 of a certificate's SubjectPublicKeyInfo: the rule KES uses,
// and the one p11bridge applies to both protocols.
func Identity(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// PublicKeyIdentity is Identity for a bare public key.
func PublicKeyIdentity(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// APIKey makes a KES API key ("kes:v1:" + base64(0x00 ‖ Ed25519 seed)) and its identity. Clients turn
// the key into a self-signed Ed25519 certificate, whose SPKI hash is this identity.
func APIKey() (key, identity string, err error) {
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return "", "", err
	}
	priv := ed25519.NewKeyFromSeed(seed)
	identity, err = PublicKeyIdentity(priv.Public())
	if err != nil {
		return "", "", err
	}
	return "kes:v1:" + base64.StdEncoding.EncodeToString(append([]byte{0}, seed...)), identity, nil
}

// APIKeyIdentity recomputes the identity of a KES API key.
func APIKeyIdentity(key string) (string, error) {
	b64, ok := strings.CutPrefix(key, "kes:v1:")
	if !ok {
		return "", errors.New("not a kes:v1: API key")
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != 1+ed25519.SeedSize || raw[0] != 0 {
		return "", errors.New("malformed kes:v1: API key")
	}
	return PublicKeyIdentity(ed25519.NewKeyFromSeed(raw[1:]).Public())
}

// CA is a certificate authority for dev mode and tests.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewCA makes a self-signed P-256 CA valid for ten years.
func NewCA(cn string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          ski(&key.PublicKey),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key}, nil
}

// Usage of an issued certificate.
type Usage int

const (
	Server Usage = 1 << iota
	Client
)

// Issue makes a P-256 key and a certificate for cn. hosts become DNS or IP SANs.
func (ca *CA) Issue(cn string, hosts []string, usage Usage) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	cert, err := ca.IssueFor(cn, hosts, usage, &key.PublicKey)
	return cert, key, err
}

// IssueFor certifies a given public key (e.g. one that lives in a token).
func (ca *CA) IssueFor(cn string, hosts []string, usage Usage, pub crypto.PublicKey) (*x509.Certificate, error) {
	tmpl := &x509.Certificate{
		SerialNumber:   serial(),
		Subject:        pkix.Name{CommonName: cn},
		NotBefore:      time.Now().Add(-time.Hour),
		NotAfter:       time.Now().AddDate(2, 0, 0),
		KeyUsage:       x509.KeyUsageDigitalSignature,
		AuthorityKeyId: ca.Cert.SubjectKeyId,
		SubjectKeyId:   ski(pub),
	}
	if usage&Server != 0 {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if usage&Client != 0 {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// ski sets the SubjectKeyId explicitly: Go fills a missing one with a truncated SHA-256, while
// RFC 5280 method 1 (SHA-1 of the key bits) is what other tools compute.
func ski(pub crypto.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil
	}
	var spki struct {
		Algo      pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil
	}
	sum := sha1.Sum(spki.PublicKey.Bytes)
	return sum[:]
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

// CertPEM and KeyPEM encode for files.
func CertPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func KeyPEM(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// LoadCA reads a CA written by Save.
func LoadCA(certFile, keyFile string) (*CA, error) {
	cert, err := LoadCert(certFile)
	if err != nil {
		return nil, err
	}
	kb, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(kb)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM block", keyFile)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyFile, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: not a signing key", keyFile)
	}
	return &CA{Cert: cert, Key: s}, nil
}

// ParseCerts parses every CERTIFICATE block of PEM data, in order, skipping other blocks.
func ParseCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, data = pem.Decode(data)
		if blk == nil {
			return certs, nil
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
}

// LoadCert reads the first certificate of a PEM file.
func LoadCert(file string) (*x509.Certificate, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("%s: no CERTIFICATE PEM block", file)
		}
		if blk.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", file, err)
			}
			return c, nil
		}
	}
}

// WriteFiles writes cert and key PEM files; the key file is 0600.
func WriteFiles(cert *x509.Certificate, key crypto.Signer, certFile, keyFile string) error {
	if err := os.WriteFile(certFile, CertPEM(cert), 0o644); err != nil {
		return err
	}
	kp, err := KeyPEM(key)
	if err != nil {
		return err
	}
	return os.WriteFile(keyFile, kp, 0o600)
}
