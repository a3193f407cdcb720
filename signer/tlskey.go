package signer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/miekg/pkcs11"
	pkcs11uri "github.com/stefanberger/go-pkcs11uri"
)

// TLSKey is a private key in the token of a configured signer that signs TLS handshakes (it is a
// crypto.Signer for tls.Certificate.PrivateKey), so the server's own key need not sit on disk. It
// signs through the registry: the signer's login, session pool and handle cache.
//
// The key is found by an RFC 7512 URI: token, serial, slot-id, manufacturer and model select the
// token (of one configured signer), object (CKA_LABEL) and id (CKA_ID) the private key on it.
// Because a reload may reopen that signer, every signature looks the token up again by its
// serial and label.
type TLSKey struct {
	reg    *Registry
	uri    string
	serial string // of the token, to find its signer again after a reload
	label  string
	id     []byte // CKA_ID of the private key
	pub    crypto.PublicKey
}

// tlsSignTimeout bounds how long a handshake waits for a session and a signature.
const tlsSignTimeout = 30 * time.Second

// TLSKey finds the private key that uri names and checks it against certPub, the public key of
// the certificate it will serve with (nil to take the token's). The check is a signature made in
// the token and verified on the host: it proves the login, the mechanism and the pairing before
// any client connects.
func (r *Registry) TLSKey(ctx context.Context, uri string, certPub crypto.PublicKey) (*TLSKey, error) {
	u := pkcs11uri.New()
	if err := u.Parse(uri); err != nil {
		return nil, errorf(ErrConfig, "tls key %q: %v", uri, err)
	}
	object, hasObject := u.GetPathAttribute("object", false)
	id, hasID := u.GetPathAttribute("id", false)
	if !hasObject && !hasID {
		return nil, errorf(ErrConfig, "tls key %q: the URI names no key (object= or id=)", uri)
	}
	var found []*Token
	var present []string
	for _, t := range r.Signers() {
		present = append(present, fmt.Sprintf("signer %q: token %q serial %q", t.cfg.Name, t.info.Label, t.info.SerialNumber))
		if uriMatches(u, t.slot, t.info) {
			found = append(found, t)
		}
	}
	switch len(found) {
	case 0:
		return nil, errorf(ErrConfig, "tls key %q: no configured signer serves that token (%s)", uri, strings.Join(present, "; "))
	case 1:
	default:
		return nil, errorf(ErrConfig, "tls key %q: %d signers serve matching tokens; add serial= to the URI", uri, len(found))
	}
	t := found[0]
	where := fmt.Sprintf("tls key %q (signer %q)", uri, t.cfg.Name)

	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY)}
	if hasObject {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_LABEL, object))
	}
	if hasID {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(id)))
	}
	var tag []byte
	var canSign bool
	var n int
	err := t.do(ctx, func(sh pkcs11.SessionHandle) error {
		if err := t.ctx.FindObjectsInit(sh, tmpl); err != nil {
			return err
		}
		hs, _, err := t.ctx.FindObjects(sh, 2)
		if ferr := t.ctx.FindObjectsFinal(sh); err == nil {
			err = ferr
		}
		if err != nil {
			return err
		}
		if n = len(hs); n != 1 {
			return nil
		}
		a, err := t.ctx.GetAttributeValue(sh, hs[0], []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_ID, nil), pkcs11.NewAttribute(pkcs11.CKA_SIGN, nil)})
		if err != nil {
			return err
		}
		tag, canSign = a[0].Value, len(a[1].Value) == 1 && a[1].Value[0] == 1
		return nil
	})
	if err != nil {
		return nil, classify(err, where+": find the private key")
	}
	switch {
	case n == 0:
		return nil, errorf(ErrNotFound, "%s: the token holds no private key with %s (is the signer's PIN the key owner's?)", where, describeKey(object, hasObject, id, hasID))
	case n > 1:
		return nil, errorf(ErrConfig, "%s: several private keys have %s; name the key by id= as well", where, describeKey(object, hasObject, id, hasID))
	case len(tag) == 0:
		// Handles, the public key and the stale-handle retry all go by CKA_ID.
		return nil, errorf(ErrConfig, "%s: the key has no CKA_ID; give it one (pkcs11-tool --id) and name it by id=", where)
	case !canSign:
		return nil, errorf(ErrConfig, "%s: the key may not sign (CKA_SIGN is false)", where)
	}
	// find refuses a CKA_ID shared by several private keys, which id-based lookups could not tell apart.
	if _, err := t.find(ctx, tag, kindPrivate); err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	k := &TLSKey{reg: r, uri: uri, serial: t.info.SerialNumber, label: t.info.Label, id: tag}
	pub, perr := t.publicKey(ctx, tag)
	switch {
	case perr == nil && certPub != nil && !samePublic(pub, certPub):
		return nil, errorf(ErrConfig, "%s: the key in the token does not match the certificate's public key", where)
	case perr == nil:
		k.pub = pub
	case certPub != nil:
		// EC keys carry no public point on the private object; without a public key object the
		// certificate says what it is, and the test signature below proves the pairing.
		k.pub = certPub
	default:
		return nil, fmt.Errorf("%s: read its public key: %w", where, perr)
	}
	switch k.pub.(type) {
	case *rsa.PublicKey, *ecdsa.PublicKey:
	default:
		return nil, errorf(ErrUnsupported, "%s: a %T key cannot sign TLS handshakes here (RSA and ECDSA can)", where, k.pub)
	}
	if err := k.selfTest(); err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return k, nil
}

func describeKey(object string, hasObject bool, id string, hasID bool) string {
	var parts []string
	if hasObject {
		parts = append(parts, fmt.Sprintf("CKA_LABEL %q", object))
	}
	if hasID {
		parts = append(parts, "CKA_ID "+hex.EncodeToString([]byte(id)))
	}
	return strings.Join(parts, " and ")
}

func samePublic(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}

// selfTest signs a random digest in the token and verifies it against the public key.
func (k *TLSKey) selfTest() error {
	digest := make([]byte, crypto.SHA256.Size())
	if _, err := rand.Read(digest); err != nil {
		return err
	}
	var opts crypto.SignerOpts = crypto.SHA256
	if _, ok := k.pub.(*rsa.PublicKey); ok {
		opts = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	}
	sig, err := k.Sign(nil, digest, opts)
	if err != nil {
		return fmt.Errorf("test signature: %w", err)
	}
	switch pub := k.pub.(type) {
	case *rsa.PublicKey:
		err = rsa.VerifyPSS(pub, crypto.SHA256, digest, sig, opts.(*rsa.PSSOptions))
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(pub, digest, sig) {
			err = fmt.Errorf("ECDSA verification failed")
		}
	}
	if err != nil {
		return errorf(ErrConfig, "the token's signature does not verify with the certificate's public key: the key and the certificate do not belong together (%v)", err)
	}
	return nil
}

// Public is the key's public half, as the certificate holds it.
func (k *TLSKey) Public() crypto.PublicKey { return k.pub }

// ID is the key's CKA_ID.
func (k *TLSKey) ID() []byte { return append([]byte(nil), k.id...) }

// String names the key for logs.
func (k *TLSKey) String() string {
	return fmt.Sprintf("%s (token %q serial %s, CKA_ID %s)", k.uri, k.label, k.serial, hex.EncodeToString(k.id))
}

// token finds the signer that serves the key's token now.
func (k *TLSKey) token() (*Token, error) {
	for _, t := range k.reg.Signers() {
		if t.info.SerialNumber == k.serial && t.info.Label == k.label {
			return t, nil
		}
	}
	return nil, errorf(ErrUnavailable, "tls key %s: no configured signer serves its token any more", k.uri)
}

// Sign implements crypto.Signer: RSA PKCS#1 v1.5 (TLS 1.2) and PSS (TLS 1.2 and 1.3) over a
// digest with CKM_RSA_PKCS (DigestInfo added here) or CKM_RSA_PKCS_PSS, ECDSA with CKM_ECDSA
// (DER output). The token draws its own randomness; rand is ignored.
func (k *TLSKey) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	h := opts.HashFunc()
	if h != 0 && len(digest) != h.Size() {
		return nil, errorf(ErrInvalid, "tls key: a %v digest is %d bytes, got %d", h, h.Size(), len(digest))
	}
	var mech *pkcs11.Mechanism
	msg := digest
	switch pub := k.pub.(type) {
	case *rsa.PublicKey:
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			hm, ok := hashes[h]
			if !ok {
				return nil, errorf(ErrUnsupported, "tls key: RSA-PSS with %v", h)
			}
			salt := pss.SaltLength
			switch salt {
			case rsa.PSSSaltLengthEqualsHash:
				salt = h.Size()
			case rsa.PSSSaltLengthAuto:
				// The largest salt the modulus allows, as crypto/rsa signs with Auto.
				salt = (pub.N.BitLen()-1+7)/8 - h.Size() - 2
			}
			if salt < 0 {
				return nil, errorf(ErrInvalid, "tls key: RSA-PSS salt length %d", pss.SaltLength)
			}
			mech = pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_PSS, pkcs11.NewPSSParams(hm.hash, hm.mgf, uint(salt)))
			break
		}
		if h != 0 && h != crypto.MD5SHA1 {
			prefix, ok := digestInfo[h]
			if !ok {
				return nil, errorf(ErrUnsupported, "tls key: RSA PKCS#1 v1.5 with %v", h)
			}
			msg = slices.Concat(prefix, digest)
		}
		mech = pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil)
	case *ecdsa.PublicKey:
		mech = pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)
	}
	t, err := k.token()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), tlsSignTimeout)
	defer cancel()
	var sig []byte
	err = t.withKey(ctx, k.id, kindPrivate, func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		sig, err = t.signOnce(sh, h, mech, msg)
		return err
	})
	if err != nil {
		return nil, classify(err, fmt.Sprintf("signer %q: TLS handshake signature with %s", t.cfg.Name, k.uri))
	}
	if _, ok := k.pub.(*ecdsa.PublicKey); ok {
		return ecdsaDER(sig)
	}
	return sig, nil
}
