package signer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"encoding/asn1"
	"fmt"
	"math/big"
	"slices"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/p11bridge/p11bridge/keymap"
)

// Scheme is a signature scheme.
type Scheme int

const (
	PKCS1v15 Scheme = iota + 1
	PSS
	ECDSA
)

func (s Scheme) String() string {
	switch s {
	case PKCS1v15:
		return "RSA PKCS#1 v1.5"
	case PSS:
		return "RSA-PSS"
	case ECDSA:
		return "ECDSA"
	}
	return fmt.Sprintf("scheme %d", int(s))
}

// SignParams says how to sign. With Prehashed, data is already the digest of Hash.
// ECDSA signatures are ASN.1 DER (X9.62), as X.509 and most clients expect them.
type SignParams struct {
	Scheme    Scheme
	Hash      crypto.Hash
	Prehashed bool
	// SaltLength of PSS; 0 means the hash length.
	SaltLength int
	// AnySalt makes Verify accept a PSS signature whatever its salt length (as verifiers that
	// are not told one do).
	AnySalt bool
}

const sha1Len = 20

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// hashAllowed refuses SHA-1 signatures unless the caller's policy opts in: SHA-1 collisions are
// practical, so a signature over SHA-1 proves little.
func (c Caller) hashAllowed(h crypto.Hash) error {
	if h == crypto.SHA1 && !c.SHA1 {
		return errorf(ErrDenied, "SHA-1 signatures are refused unless the identity's policy sets sha1 = true")
	}
	return nil
}

type hashMechs struct {
	hash, rsaPKCS, rsaPSS, mgf, hmac uint
}

var hashes = map[crypto.Hash]hashMechs{
	crypto.SHA1:   {pkcs11.CKM_SHA_1, pkcs11.CKM_SHA1_RSA_PKCS, pkcs11.CKM_SHA1_RSA_PKCS_PSS, pkcs11.CKG_MGF1_SHA1, pkcs11.CKM_SHA_1_HMAC},
	crypto.SHA224: {pkcs11.CKM_SHA224, pkcs11.CKM_SHA224_RSA_PKCS, pkcs11.CKM_SHA224_RSA_PKCS_PSS, pkcs11.CKG_MGF1_SHA224, pkcs11.CKM_SHA224_HMAC},
	crypto.SHA256: {pkcs11.CKM_SHA256, pkcs11.CKM_SHA256_RSA_PKCS, pkcs11.CKM_SHA256_RSA_PKCS_PSS, pkcs11.CKG_MGF1_SHA256, pkcs11.CKM_SHA256_HMAC},
	crypto.SHA384: {pkcs11.CKM_SHA384, pkcs11.CKM_SHA384_RSA_PKCS, pkcs11.CKM_SHA384_RSA_PKCS_PSS, pkcs11.CKG_MGF1_SHA384, pkcs11.CKM_SHA384_HMAC},
	crypto.SHA512: {pkcs11.CKM_SHA512, pkcs11.CKM_SHA512_RSA_PKCS, pkcs11.CKM_SHA512_RSA_PKCS_PSS, pkcs11.CKG_MGF1_SHA512, pkcs11.CKM_SHA512_HMAC},
}

// digestInfo prefixes of PKCS#1 v1.5 (RFC 8017 §9.2 note 1), for signing a given digest with CKM_RSA_PKCS.
var digestInfo = map[crypto.Hash][]byte{
	crypto.SHA1:   {0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14},
	crypto.SHA224: {0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04, 0x05, 0x00, 0x04, 0x1c},
	crypto.SHA256: {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20},
	crypto.SHA384: {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30},
	crypto.SHA512: {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40},
}

// keyFor resolves id, asks the key model (access.go) whether c may do u with it now, and checks
// that it is of class and one of algs (none = any).
func (r *Registry) keyFor(c Caller, id string, u Use, class keymap.Class, algs ...string) (keymap.Record, *Token, error) {
	row, err := r.row(c, id)
	if err != nil {
		return keymap.Record{}, nil, err
	}
	rec := row.rec
	if err := allow(c, rec, row.f, u, time.Now()); err != nil {
		return keymap.Record{}, nil, err
	}
	op := u.String()
	t, err := r.tokenOf(rec)
	if err != nil {
		return rec, nil, err
	}
	if rec.Class != class {
		return rec, nil, errorf(ErrInvalid, "%s needs a %s; object %q is a %s", op, class, id, rec.Class)
	}
	if len(algs) > 0 && !slices.Contains(algs, rec.Algorithm) {
		return rec, nil, errorf(ErrInvalid, "%s cannot use object %q: it is a %s key", op, id, rec.Algorithm)
	}
	return rec, t, nil
}

// Sign signs data (or a digest, with p.Prehashed) with the private key id inside its token.
func (r *Registry) Sign(ctx context.Context, c Caller, id string, p SignParams, data []byte) ([]byte, error) {
	rec, t, err := r.keyFor(c, id, UseSign, keymap.PrivateKey, RSA, EC)
	if err != nil {
		return nil, err
	}
	if err := c.hashAllowed(p.Hash); err != nil {
		return nil, err
	}
	hm, ok := hashes[p.Hash]
	if !ok {
		return nil, errorf(ErrInvalid, "sign: unsupported hash %v", p.Hash)
	}
	if p.Prehashed && len(data) != p.Hash.Size() {
		return nil, errorf(ErrInvalid, "sign: a %v digest is %d bytes, got %d", p.Hash, p.Hash.Size(), len(data))
	}
	var mech *pkcs11.Mechanism
	msg := data
	switch {
	case rec.Algorithm == RSA && p.Scheme == PKCS1v15:
		if p.Prehashed {
			mech = pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil)
			msg = slices.Concat(digestInfo[p.Hash], data)
		} else {
			mech = pkcs11.NewMechanism(hm.rsaPKCS, nil)
		}
	case rec.Algorithm == RSA && p.Scheme == PSS:
		salt := p.SaltLength
		if salt <= 0 {
			salt = p.Hash.Size()
		}
		params := pkcs11.NewPSSParams(hm.hash, hm.mgf, uint(salt))
		if p.Prehashed {
			mech = pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_PSS, params)
		} else {
			mech = pkcs11.NewMechanism(hm.rsaPSS, params)
		}
	case rec.Algorithm == EC && p.Scheme == ECDSA:
		// ECDSA signs a digest as a number, whatever hash made it: a SHA-1 digest behind leading
		// zero bytes, given as a longer digest, is a SHA-1 signature. Without the opt-in, such a
		// digest (2^-96 by chance) is refused.
		if p.Prehashed && !c.SHA1 && len(data) > sha1Len && allZero(data[:len(data)-sha1Len]) {
			return nil, errorf(ErrDenied, "sign: the digest is a SHA-1 digest padded with zeros; SHA-1 signatures are refused unless the identity's policy sets sha1 = true")
		}
		// Hash on the host: CKM_ECDSA over a digest is the one ECDSA mechanism every token has.
		if !p.Prehashed {
			h := p.Hash.New()
			h.Write(data)
			msg = h.Sum(nil)
		}
		mech = pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)
	default:
		return nil, errorf(ErrInvalid, "sign: %s does not apply to %s key %q", p.Scheme, rec.Algorithm, id)
	}
	var sig []byte
	err = t.useKey(ctx, rec.Tag, kindPrivate, func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		sig, err = t.signOnce(sh, h, mech, msg)
		return err
	})
	if err != nil {
		return nil, classify(err, fmt.Sprintf("signer %q: sign with %s", t.cfg.Name, id))
	}
	if rec.Algorithm == EC {
		return ecdsaDER(sig)
	}
	return sig, nil
}

// signOnce signs (or MACs) msg with key h on session sh: C_SignInit, then one C_Sign.
func (t *Token) signOnce(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, mech *pkcs11.Mechanism, msg []byte) ([]byte, error) {
	if err := t.ctx.SignInit(sh, []*pkcs11.Mechanism{mech}, h); err != nil {
		return nil, err
	}
	return t.ctx.Sign(sh, msg)
}

// ecdsaDER turns PKCS#11's r‖s into the ASN.1 SEQUENCE{r, s} that verifiers expect.
func ecdsaDER(rs []byte) ([]byte, error) {
	if len(rs) == 0 || len(rs)%2 != 0 {
		return nil, errorf(ErrUnavailable, "token returned a malformed ECDSA signature of %d bytes", len(rs))
	}
	n := len(rs) / 2
	return asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(rs[:n]), new(big.Int).SetBytes(rs[n:])})
}

// Verify checks a signature on the host with the public key (of a pair half or a registered key):
// public-key operations need no token round trip.
func (r *Registry) Verify(ctx context.Context, c Caller, id string, p SignParams, data, sig []byte) error {
	pub, err := r.publicKeyFor(ctx, c, id, UseVerify)
	if err != nil {
		return err
	}
	if err := c.hashAllowed(p.Hash); err != nil {
		return err
	}
	return VerifyWith(pub, p, data, sig)
}

// VerifyWith checks sig over data with pub.
func VerifyWith(pub crypto.PublicKey, p SignParams, data, sig []byte) error {
	if _, ok := hashes[p.Hash]; !ok {
		return errorf(ErrInvalid, "verify: unsupported hash %v", p.Hash)
	}
	digest := data
	if !p.Prehashed {
		h := p.Hash.New()
		h.Write(data)
		digest = h.Sum(nil)
	} else if len(data) != p.Hash.Size() {
		return errorf(ErrInvalid, "verify: a %v digest is %d bytes, got %d", p.Hash, p.Hash.Size(), len(data))
	}
	var ok bool
	switch k := pub.(type) {
	case *rsa.PublicKey:
		switch p.Scheme {
		case PKCS1v15:
			ok = rsa.VerifyPKCS1v15(k, p.Hash, digest, sig) == nil
		case PSS:
			salt := p.SaltLength
			switch {
			case p.AnySalt:
				salt = rsa.PSSSaltLengthAuto
			case salt <= 0:
				salt = p.Hash.Size()
			}
			ok = rsa.VerifyPSS(k, p.Hash, digest, sig, &rsa.PSSOptions{SaltLength: salt, Hash: p.Hash}) == nil
		default:
			return errorf(ErrInvalid, "verify: %s does not apply to an RSA key", p.Scheme)
		}
	case *ecdsa.PublicKey:
		if p.Scheme != ECDSA {
			return errorf(ErrInvalid, "verify: %s does not apply to an EC key", p.Scheme)
		}
		ok = ecdsa.VerifyASN1(k, digest, sig)
	default:
		return errorf(ErrUnsupported, "verify with %T", pub)
	}
	if !ok {
		return errorf(ErrBadSignature, "verify")
	}
	return nil
}

// GCMNonceSize and GCMTagSize are the sizes Seal uses.
const (
	GCMNonceSize = 12
	GCMTagSize   = 16
)

// Seal encrypts with AES-GCM inside the token. With a nil iv a fresh 12-byte IV is drawn here
// (tokens differ in whether and how they make one). It returns the IV and ciphertext‖tag.
func (r *Registry) Seal(ctx context.Context, c Caller, id string, iv, plaintext, aad []byte) ([]byte, []byte, error) {
	_, iv, ct, err := r.seal(ctx, c, id, iv, plaintext, 0, aad)
	return iv, ct, err
}

// SealRandom draws n bytes from the RNG of the token that holds key id (through its reserve,
// random.go) and seals them with that key in the same session: a data key that nothing but the
// token's RNG made, and its ciphertext.
func (r *Registry) SealRandom(ctx context.Context, c Caller, id string, n int, aad []byte) (plaintext, iv, ciphertext []byte, err error) {
	if n < 1 || n > MaxRandom {
		return nil, nil, nil, errorf(ErrInvalid, "random: %d bytes asked, at least 1 and at most %d", n, MaxRandom)
	}
	return r.seal(ctx, c, id, nil, nil, n, aad)
}

// seal is Seal, or with n > 0 SealRandom of n bytes.
func (r *Registry) seal(ctx context.Context, c Caller, id string, iv, plaintext []byte, n int, aad []byte) ([]byte, []byte, []byte, error) {
	rec, t, err := r.keyFor(c, id, UseEncrypt, keymap.SecretKey, AES)
	if err != nil {
		return nil, nil, nil, err
	}
	if iv != nil {
		if err := c.clientIV(rec); err != nil {
			return nil, nil, nil, err
		}
	}
	if err := r.bindMode(rec, ModeGCM); err != nil {
		return nil, nil, nil, err
	}
	if iv == nil {
		iv = make([]byte, GCMNonceSize)
		if _, err := rand.Read(iv); err != nil {
			return nil, nil, nil, errorf(ErrUnavailable, "draw IV: %v", err)
		}
	} else if len(iv) < 1 || len(iv) > maxGCMIV {
		return nil, nil, nil, errorf(ErrInvalid, "encrypt: GCM IV of %d bytes", len(iv))
	}
	var ct []byte
	err = t.useKey(ctx, rec.Tag, kindAES, func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		if n > 0 {
			clear(plaintext) // a first attempt's, when the key's handle had to be looked up again
			var err error
			if plaintext, err = t.random.take(sh, n); err != nil {
				return err
			}
		}
		params := newGCMParams(iv, aad, GCMTagSize*8)
		defer params.release()
		if err := t.ctx.EncryptInit(sh, params.mechanism(), h); err != nil {
			return err
		}
		var err error
		if ct, err = t.ctx.Encrypt(sh, plaintext); err == nil {
			// HSMs in FIPS mode (CloudHSM, Luna) write an IV of their own over ours: keep theirs.
			iv = params.iv()
		}
		return err
	})
	if err != nil {
		if n > 0 {
			clear(plaintext)
		}
		return nil, nil, nil, classify(err, fmt.Sprintf("signer %q: encrypt with %s", t.cfg.Name, id))
	}
	r.counted(rec)
	return plaintext, iv, ct, nil
}

// Open decrypts ciphertext‖tag with AES-GCM inside the token. A wrong tag, IV, AAD or key gives
// ErrNotAuthentic (SoftHSM reports it as CKR_GENERAL_ERROR, others as CKR_ENCRYPTED_DATA_INVALID).
func (r *Registry) Open(ctx context.Context, c Caller, id string, iv, ciphertext, aad []byte) ([]byte, error) {
	rec, t, err := r.keyFor(c, id, UseDecrypt, keymap.SecretKey, AES)
	if err != nil {
		return nil, err
	}
	if err := r.bindMode(rec, ModeGCM); err != nil {
		return nil, err
	}
	if len(ciphertext) < GCMTagSize {
		return nil, errorf(ErrNotAuthentic, "decrypt with %s: ciphertext shorter than the tag", id)
	}
	if len(iv) < 1 || len(iv) > maxGCMIV {
		return nil, errorf(ErrInvalid, "decrypt: GCM IV of %d bytes", len(iv))
	}
	var pt []byte
	var opErr error
	err = t.useKey(ctx, rec.Tag, kindAES, func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		params := newGCMParams(iv, aad, GCMTagSize*8)
		defer params.release()
		if err := t.ctx.DecryptInit(sh, params.mechanism(), h); err != nil {
			return err
		}
		var err error
		pt, err = t.ctx.Decrypt(sh, ciphertext)
		switch ckr(err) {
		case pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE:
			// The operation has ended and the session is fine: a forged message is not a device fault.
			opErr = err
			return nil
		}
		return err
	})
	if err != nil {
		return nil, classify(err, fmt.Sprintf("signer %q: decrypt with %s", t.cfg.Name, id))
	}
	if opErr != nil {
		return nil, errorf(ErrNotAuthentic, "decrypt with %s", id)
	}
	return pt, nil
}

// EncryptCBC and DecryptCBC use AES-CBC with PKCS#7 padding inside the token (KMIP clients ask for it).
func (r *Registry) EncryptCBC(ctx context.Context, c Caller, id string, iv, plaintext []byte) ([]byte, []byte, error) {
	chosen := iv != nil
	if iv == nil {
		iv = make([]byte, 16)
		if _, err := rand.Read(iv); err != nil {
			return nil, nil, errorf(ErrUnavailable, "draw IV: %v", err)
		}
	}
	out, err := r.cbc(ctx, c, id, true, chosen, iv, plaintext)
	return iv, out, err
}

func (r *Registry) DecryptCBC(ctx context.Context, c Caller, id string, iv, ciphertext []byte) ([]byte, error) {
	return r.cbc(ctx, c, id, false, false, iv, ciphertext)
}

func (r *Registry) cbc(ctx context.Context, c Caller, id string, enc, chosenIV bool, iv, in []byte) ([]byte, error) {
	op, u := "decrypt", UseDecrypt
	if enc {
		op, u = "encrypt", UseEncrypt
	}
	rec, t, err := r.keyFor(c, id, u, keymap.SecretKey, AES)
	if err != nil {
		return nil, err
	}
	if chosenIV {
		if err := c.clientIV(rec); err != nil {
			return nil, err
		}
	}
	if err := r.bindMode(rec, ModeCBC); err != nil {
		return nil, err
	}
	if len(iv) != 16 {
		return nil, errorf(ErrInvalid, "%s: AES-CBC needs a 16-byte IV, got %d", op, len(iv))
	}
	if !enc && (len(in) == 0 || len(in)%16 != 0) {
		return nil, errorf(ErrInvalid, "decrypt: AES-CBC ciphertext of %d bytes is not whole blocks", len(in))
	}
	var out []byte
	err = t.useKey(ctx, rec.Tag, kindAES, func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		m := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_CBC_PAD, iv)}
		var err error
		if enc {
			if err = t.ctx.EncryptInit(sh, m, h); err == nil {
				out, err = t.ctx.Encrypt(sh, in)
			}
		} else if err = t.ctx.DecryptInit(sh, m, h); err == nil {
			out, err = t.ctx.Decrypt(sh, in)
		}
		return err
	})
	if err != nil {
		return nil, classify(err, fmt.Sprintf("signer %q: %s with %s", t.cfg.Name, op, id))
	}
	return out, nil
}

// DecryptOAEP decrypts RSA-OAEP inside the token.
func (r *Registry) DecryptOAEP(ctx context.Context, c Caller, id string, hash crypto.Hash, label, ciphertext []byte) ([]byte, error) {
	rec, t, err := r.keyFor(c, id, UseDecrypt, keymap.PrivateKey, RSA)
	if err != nil {
		return nil, err
	}
	hm, ok := hashes[hash]
	if !ok {
		return nil, errorf(ErrInvalid, "decrypt: unsupported OAEP hash %v", hash)
	}
	var pt []byte
	err = t.useKey(ctx, rec.Tag, kindPrivate, func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		params := pkcs11.NewOAEPParams(hm.hash, hm.mgf, pkcs11.CKZ_DATA_SPECIFIED, label)
		if err := t.ctx.DecryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP, params)}, h); err != nil {
			return err
		}
		var err error
		pt, err = t.ctx.Decrypt(sh, ciphertext)
		return err
	})
	if err != nil {
		return nil, classify(err, fmt.Sprintf("signer %q: RSA-OAEP decrypt with %s", t.cfg.Name, id))
	}
	return pt, nil
}

// EncryptOAEP encrypts with the public key on the host.
func (r *Registry) EncryptOAEP(ctx context.Context, c Caller, id string, hash crypto.Hash, label, plaintext []byte) ([]byte, error) {
	pub, err := r.publicKeyFor(ctx, c, id, UseEncrypt)
	if err != nil {
		return nil, err
	}
	k, ok := pub.(*rsa.PublicKey)
	if !ok {
		return nil, errorf(ErrInvalid, "encrypt: RSA-OAEP needs an RSA key; %q is not one", id)
	}
	if _, ok := hashes[hash]; !ok {
		return nil, errorf(ErrInvalid, "encrypt: unsupported OAEP hash %v", hash)
	}
	ct, err := rsa.EncryptOAEP(hash.New(), rand.Reader, k, plaintext, label)
	if err != nil {
		return nil, errorf(ErrInvalid, "encrypt: %v", err)
	}
	return ct, nil
}

// HMAC computes an HMAC inside the token with the generic-secret key under id's tag: an HMAC key,
// or the companion HMAC key of an AES key made WithHMAC.
func (r *Registry) HMAC(ctx context.Context, c Caller, id string, hash crypto.Hash, msg []byte) ([]byte, error) {
	return r.hmac(ctx, c, id, UseMAC, hash, msg)
}

func (r *Registry) hmac(ctx context.Context, c Caller, id string, u Use, hash crypto.Hash, msg []byte) ([]byte, error) {
	rec, t, err := r.keyFor(c, id, u, keymap.SecretKey, HMAC, AES)
	if err != nil {
		return nil, err
	}
	if rec.Algorithm == AES && rec.Attrs[AttrHMACKey] == "" {
		return nil, errorf(ErrInvalid, "mac: AES key %q has no HMAC key", id)
	}
	hm, ok := hashes[hash]
	if !ok {
		return nil, errorf(ErrInvalid, "mac: unsupported hash %v", hash)
	}
	var mac []byte
	err = t.useKey(ctx, rec.Tag, kindHMAC, func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		mac, err = t.signOnce(sh, h, pkcs11.NewMechanism(hm.hmac, nil), msg)
		return err
	})
	if err != nil {
		return nil, classify(err, fmt.Sprintf("signer %q: HMAC with %s", t.cfg.Name, id))
	}
	return mac, nil
}

// VerifyHMAC recomputes the MAC and compares in constant time.
func (r *Registry) VerifyHMAC(ctx context.Context, c Caller, id string, hash crypto.Hash, msg, mac []byte) error {
	want, err := r.hmac(ctx, c, id, UseMACVerify, hash, msg)
	if err != nil {
		return err
	}
	if !hmac.Equal(want, mac) {
		return errorf(ErrBadSignature, "MAC does not verify")
	}
	return nil
}

// MaxRandom bounds one Random call.
const MaxRandom = 1 << 16

// Random returns n bytes from the RNG of signer (default signer when empty).
func (r *Registry) Random(ctx context.Context, signer string, n int) ([]byte, error) {
	if n < 0 || n > MaxRandom {
		return nil, errorf(ErrInvalid, "random: %d bytes asked, at most %d", n, MaxRandom)
	}
	if signer == "" {
		signer = r.Default()
	}
	t, err := r.Signer(signer)
	if err != nil {
		return nil, err
	}
	var out []byte
	err = t.do(ctx, func(sh pkcs11.SessionHandle) error {
		var err error
		out, err = t.ctx.GenerateRandom(sh, n)
		return err
	})
	if err != nil {
		return nil, classify(err, fmt.Sprintf("signer %q: random", t.cfg.Name))
	}
	return out, nil
}
