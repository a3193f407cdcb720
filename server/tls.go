package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"time"

	"golang.org/x/sys/cpu"

	"github.com/p11bridge/p11bridge/conf"
	"github.com/p11bridge/p11bridge/server/pki"
	"github.com/p11bridge/p11bridge/signer"
)

// tlsState is what one configuration says about TLS. A reload swaps it as a whole; handshakes in
// progress finish with the state they started with, established connections are not touched.
type tlsState struct {
	cert     *tls.Certificate
	cas      *x509.CertPool
	min      uint16
	fips     bool
	tokenKey *signer.TLSKey // nil when the key is a file
}

// FIPS 140-approved TLS (SP 800-52r2, and what Go's FIPS 140-3 mode allows): AES-GCM suites with
// ECDHE, the NIST curves and their ML-KEM hybrids. CBC suites are approved too but left out.
var (
	fipsSuites12 = []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	}
	fipsSuites13 = []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384}
	fipsCurves   = []tls.CurveID{tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024, tls.CurveP256, tls.CurveP384, tls.CurveP521}
)

// prepareTLS reads the certificate chain, the key (a file, or a key in a signer's token) and the
// client CA. It changes nothing: the caller installs the result.
func (s *Server) prepareTLS(cfg *conf.Config) (*tlsState, error) {
	st := &tlsState{min: cfg.TLS.MinVersion, fips: cfg.TLS.FIPS}
	if st.min == 0 {
		st.min = tls.VersionTLS12
	}
	if (cfg.Listen.KMIP == "" && cfg.Listen.KES == "") || (cfg.Listen.KMIP == "" && cfg.KES.Plaintext) {
		return st, nil
	}
	if cfg.TLS.KeyURI == "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLS.Cert, cfg.TLS.Key)
		if err != nil {
			return nil, fmt.Errorf("tls: load %s and %s: %w", cfg.TLS.Cert, cfg.TLS.Key, err)
		}
		st.cert = &cert
	} else {
		chain, err := readChain(cfg.TLS.Cert)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		key, err := s.reg.TLSKey(ctx, cfg.TLS.KeyURI, chain[0].PublicKey)
		if err != nil {
			return nil, fmt.Errorf("tls: the key for %s: %w", cfg.TLS.Cert, err)
		}
		st.tokenKey = key
		der := make([][]byte, len(chain))
		for i, c := range chain {
			der[i] = c.Raw
		}
		st.cert = &tls.Certificate{Certificate: der, PrivateKey: key, Leaf: chain[0]}
	}
	if st.fips {
		if leaf := st.cert.Leaf; leaf != nil && !fipsKeyAllowed(leaf.PublicKey) {
			return nil, fmt.Errorf("tls: fips = true, but the key of %s is not FIPS 140-approved for TLS (RSA ≥ 2048 bits, ECDSA P-256/384/521 or Ed25519)", cfg.TLS.Cert)
		}
	}
	if cfg.TLS.ClientCA != "" {
		pem, err := os.ReadFile(cfg.TLS.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("tls: client_ca: %w", err)
		}
		st.cas = x509.NewCertPool()
		if !st.cas.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls: client_ca %s holds no PEM certificate", cfg.TLS.ClientCA)
		}
	}
	return st, nil
}

// readChain reads a PEM file of certificates: the server's, then its intermediates.
func readChain(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	chain, err := pki.ParseCerts(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return chain, nil
}

func (s *Server) clientCAs() *x509.CertPool {
	if st := s.tls.Load(); st != nil {
		return st.cas
	}
	return nil
}

// tlsConfig is the listener's configuration. Each handshake gets one built from the TLS state of
// that moment, so a reload (certificate, key, client CA, min_version, fips) applies to new
// connections while established ones keep going.
//
// Every client must present a certificate; which ones are accepted is decided per connection or
// request by identify (chains against the client CA, or exactly configured identities such as
// KES API keys, whose self-signed Ed25519 certificates no CA could vouch for).
func (s *Server) tlsConfig(protos ...string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			return s.handshakeConfig(s.tls.Load(), hello, protos), nil
		},
	}
}

func (s *Server) handshakeConfig(st *tlsState, hello *tls.ClientHelloInfo, protos []string) *tls.Config {
	c := &tls.Config{
		MinVersion: st.min,
		ClientAuth: tls.RequireAnyClientCert,
		NextProtos: protos,
	}
	if st.cert != nil {
		c.Certificates = []tls.Certificate{*st.cert}
	}
	if !st.fips {
		return c
	}
	c.CipherSuites = fipsSuites12
	c.CurvePreferences = fipsCurves
	c.VerifyConnection = verifyFIPS
	// Go picks the TLS 1.3 suite itself, ChaCha20-Poly1305 when the client prefers it. Such a
	// client is kept to TLS 1.2, where the suites above apply; with min_version 1.3 it is
	// refused by verifyFIPS instead.
	if st.min <= tls.VersionTLS12 && slices.Contains(hello.SupportedVersions, tls.VersionTLS13) && !goPicksAESGCM13(hello.CipherSuites) {
		c.MaxVersion = tls.VersionTLS12
	}
	return c
}

// hasAESGCMHardware mirrors crypto/tls: with AES-GCM in hardware Go prefers it in TLS 1.3.
var hasAESGCMHardware = cpu.X86.HasAES && cpu.X86.HasPCLMULQDQ && cpu.X86.HasSSE41 && cpu.X86.HasSSSE3 ||
	cpu.ARM64.HasAES && cpu.ARM64.HasPMULL || cpu.S390X.HasAES && cpu.S390X.HasAESCTR && cpu.S390X.HasGHASH ||
	runtime.GOARCH == "ppc64" || runtime.GOARCH == "ppc64le"

// goPicksAESGCM13 predicts crypto/tls's TLS 1.3 suite choice for a client's list: AES-GCM unless
// the client offers ChaCha20-Poly1305 and either prefers it or the server lacks AES hardware. A
// wrong guess cannot weaken anything: verifyFIPS refuses what is not approved.
func goPicksAESGCM13(offered []uint16) bool {
	hasAES := slices.ContainsFunc(offered, func(id uint16) bool { return slices.Contains(fipsSuites13, id) })
	if !hasAES {
		return false
	}
	if !slices.Contains(offered, tls.TLS_CHACHA20_POLY1305_SHA256) {
		return true
	}
	if !hasAESGCMHardware {
		return false
	}
	known := map[uint16]bool{}
	for _, cs := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
		known[cs.ID] = true
	}
	// The client's first suite Go knows decides (crypto/tls isAESGCMPreferred).
	for _, id := range offered {
		if known[id] {
			return slices.Contains(fipsSuites13, id) || slices.Contains(fipsSuites12, id)
		}
	}
	return false
}

// errNotFIPS refuses a handshake that would not be FIPS 140-approved.
var errNotFIPS = errors.New("tls: fips = true")

// verifyFIPS is the last word on a handshake when fips is set: whatever was negotiated must be
// approved, or the connection is refused before any application data.
func verifyFIPS(cs tls.ConnectionState) error {
	switch cs.Version {
	case tls.VersionTLS13:
		if !slices.Contains(fipsSuites13, cs.CipherSuite) {
			return fmt.Errorf("%w: cipher suite %s is not FIPS 140-approved", errNotFIPS, tls.CipherSuiteName(cs.CipherSuite))
		}
	case tls.VersionTLS12:
		if !slices.Contains(fipsSuites12, cs.CipherSuite) {
			return fmt.Errorf("%w: cipher suite %s is not FIPS 140-approved", errNotFIPS, tls.CipherSuiteName(cs.CipherSuite))
		}
	default:
		return fmt.Errorf("%w: TLS version %x is not FIPS 140-approved", errNotFIPS, cs.Version)
	}
	if !slices.Contains(fipsCurves, cs.CurveID) {
		return fmt.Errorf("%w: key exchange %s is not FIPS 140-approved", errNotFIPS, cs.CurveID)
	}
	for _, c := range cs.PeerCertificates[:min(1, len(cs.PeerCertificates))] {
		if !fipsKeyAllowed(c.PublicKey) {
			return fmt.Errorf("%w: the client certificate's key is not FIPS 140-approved (RSA ≥ 2048, ECDSA P-256/384/521 or Ed25519)", errNotFIPS)
		}
	}
	return nil
}

// fipsKeyAllowed: RSA of at least 2048 bits, ECDSA on a NIST curve, or Ed25519 (FIPS 186-5; KES
// API keys are Ed25519).
func fipsKeyAllowed(pub any) bool {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return k.N.BitLen() >= 2048
	case *ecdsa.PublicKey:
		return k.Curve == elliptic.P256() || k.Curve == elliptic.P384() || k.Curve == elliptic.P521()
	case ed25519.PublicKey:
		return true
	}
	return false
}
