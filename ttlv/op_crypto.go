package ttlv

import (
	"bytes"
	"crypto"
	"errors"

	"github.com/gemalto/kmip-go/kmip14"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/signer"
)

func init() {
	register(kmip14.OperationEncrypt, v12, encrypt)
	register(kmip14.OperationDecrypt, v12, decrypt)
	register(kmip14.OperationSign, v12, sign)
	register(kmip14.OperationSignatureVerify, v12, signatureVerify)
	register(kmip14.OperationMAC, v12, mac)
	register(kmip14.OperationMACVerify, v12, macVerify)
	register(kmip14.OperationRNGRetrieve, v12, rngRetrieve)
}

// cryptoRequest covers the payloads of Encrypt, Decrypt, Sign, SignatureVerify, MAC and MACVerify.
type cryptoRequest struct {
	UID         *uidRef       `kmip:"UniqueIdentifier"`
	Params      *cryptoParams `kmip:"CryptographicParameters"`
	Data        *[]byte       `kmip:"Data"`
	Digested    *[]byte       `kmip:"DigestedData"`
	Signature   []byte        `kmip:"SignatureData"`
	MAC         []byte        `kmip:"MACData"`
	IV          []byte        `kmip:"IVCounterNonce"`
	Correlation []byte        `kmip:"CorrelationValue"`
	Init        *bool         `kmip:"InitIndicator"`
	Final       *bool         `kmip:"FinalIndicator"`
	AAD         []byte        `kmip:"AuthenticatedEncryptionAdditionalData"`
	Tag         []byte        `kmip:"AuthenticatedEncryptionTag"`
}

type encryptResponse struct {
	UID  string `kmip:"UniqueIdentifier"`
	Data []byte `kmip:"Data"`
	IV   []byte `kmip:"IVCounterNonce"`
	Tag  []byte `kmip:"AuthenticatedEncryptionTag"`
}

type dataResponse struct {
	UID  string `kmip:"UniqueIdentifier"`
	Data []byte `kmip:"Data"`
}

type signResponse struct {
	UID       string `kmip:"UniqueIdentifier"`
	Signature []byte `kmip:"SignatureData"`
}

type verifyResponse struct {
	UID      string `kmip:"UniqueIdentifier"`
	Validity uint32 `kmip:"ValidityIndicator"`
}

type macResponse struct {
	UID string `kmip:"UniqueIdentifier"`
	MAC []byte `kmip:"MACData"`
}

var rMissingIV = uint32(0x34) // KMIP 2.0 Missing Initialization Vector

// prepare decodes a crypto request and asks the registry's key model whether the caller may do u
// with its key now (state, dates, usage mask, owner): before the parameters are looked at, so a
// refused key is refused whatever the request says. The registry asks again when the operation runs.
func (o *op) prepare(p *node, u signer.Use) (*cryptoRequest, keymap.Record, cryptoParams, error) {
	var req cryptoRequest
	if err := decodeStruct(p, &req); err != nil {
		return nil, keymap.Record{}, cryptoParams{}, err
	}
	// One-shot requests carry neither indicator, or both set; anything else is part of a series.
	oneShot := (req.Init == nil && req.Final == nil) || (req.Init != nil && *req.Init && req.Final != nil && *req.Final)
	if req.Correlation != nil || !oneShot {
		return nil, keymap.Record{}, cryptoParams{}, kerr(rFeature, "multi-part (streaming) cryptographic operations are not supported")
	}
	rec, err := o.target(req.UID, u)
	if err != nil {
		return nil, rec, cryptoParams{}, err
	}
	params := cryptoParams{}
	if req.Params != nil {
		params = *req.Params
	} else if vals := o.s.stored(rec, def(kmip14.TagCryptographicParameters), ""); len(vals) > 0 && vals[0] != nil {
		// No parameters in the request: use the key's Cryptographic Parameters attribute.
		_ = decodeStruct(vals[0], &params)
	}
	return &req, rec, params, nil
}

func data(b *[]byte) []byte {
	if b == nil {
		return nil
	}
	return *b
}

var hashes = map[kmip14.HashingAlgorithm]crypto.Hash{
	kmip14.HashingAlgorithmSHA_1:   crypto.SHA1,
	kmip14.HashingAlgorithmSHA_224: crypto.SHA224,
	kmip14.HashingAlgorithmSHA_256: crypto.SHA256,
	kmip14.HashingAlgorithmSHA_384: crypto.SHA384,
	kmip14.HashingAlgorithmSHA_512: crypto.SHA512,
}

func hashOf(h *uint32, def crypto.Hash) (crypto.Hash, error) {
	if h == nil {
		return def, nil
	}
	if c, ok := hashes[kmip14.HashingAlgorithm(*h)]; ok {
		return c, nil
	}
	return 0, kerr(rBadParams, "hashing algorithm %s is not supported (SHA-1, SHA-224, SHA-256, SHA-384, SHA-512 are)", tagEnumName(kmip14.TagHashingAlgorithm, *h))
}

func isRSA(rec keymap.Record) bool {
	return rec.Algorithm == signer.RSA && (rec.Class == keymap.PrivateKey || rec.Class == keymap.PublicKey)
}

// aesMode is the block cipher mode of a request: CBC with PKCS#5 padding unless it says otherwise.
func aesMode(p cryptoParams) (kmip14.BlockCipherMode, error) {
	mode := kmip14.BlockCipherModeCBC
	if p.BlockCipherMode != nil {
		mode = kmip14.BlockCipherMode(*p.BlockCipherMode)
	}
	switch mode {
	case kmip14.BlockCipherModeGCM:
		if p.TagLength != nil && *p.TagLength != signer.GCMTagSize {
			return 0, kerr(rBadParams, "GCM tag length %d is not supported: tags are %d bytes", *p.TagLength, signer.GCMTagSize)
		}
	case kmip14.BlockCipherModeCBC:
		if p.PaddingMethod != nil && *p.PaddingMethod != uint32(kmip14.PaddingMethodPKCS5) {
			return 0, kerr(rBadParams, "AES-CBC with padding %s is not supported (PKCS5 is)", tagEnumName(kmip14.TagPaddingMethod, *p.PaddingMethod))
		}
	default:
		return 0, kerr(rBadParams, "block cipher mode %s is not supported (CBC and GCM are)", tagEnumName(kmip14.TagBlockCipherMode, uint32(mode)))
	}
	return mode, nil
}

// oaep reads RSA-OAEP parameters; PKCS#1 v1.5 encryption is not offered.
func oaep(p cryptoParams) (crypto.Hash, []byte, error) {
	if p.PaddingMethod != nil && *p.PaddingMethod != uint32(kmip14.PaddingMethodOAEP) {
		return 0, nil, kerr(rBadParams, "RSA encryption with padding %s is not supported (OAEP is)", tagEnumName(kmip14.TagPaddingMethod, *p.PaddingMethod))
	}
	h, err := hashOf(p.HashingAlgorithm, crypto.SHA1)
	if err != nil {
		return 0, nil, err
	}
	if p.MaskGeneratorHashingAlgorithm != nil {
		mh, err := hashOf(p.MaskGeneratorHashingAlgorithm, h)
		if err != nil {
			return 0, nil, err
		}
		if mh != h {
			return 0, nil, kerr(rBadParams, "OAEP with a mask generation hash different from the label hash is not supported")
		}
	}
	return h, p.PSource, nil
}

func encrypt(o *op, p *node) (any, error) {
	req, rec, params, err := o.prepare(p, signer.UseEncrypt)
	if err != nil {
		return nil, err
	}
	plain := data(req.Data)
	if isRSA(rec) {
		h, label, err := oaep(params)
		if err != nil {
			return nil, err
		}
		ct, err := o.s.reg.EncryptOAEP(o.ctx, o.caller, rec.ID, h, label, plain)
		if err != nil {
			return nil, err
		}
		return encryptResponse{UID: rec.ID, Data: ct}, nil
	}
	if rec.Class != keymap.SecretKey || rec.Algorithm != signer.AES {
		return nil, kerr(rIllegal, "Encrypt needs an AES or RSA key; %s is a %s %s", rec.ID, rec.Algorithm, rec.Class)
	}
	mode, err := aesMode(params)
	if err != nil {
		return nil, err
	}
	iv := req.IV
	if iv == nil && params.RandomIV != nil && !*params.RandomIV {
		return nil, kerr(rMissingIV, "missing IV: RandomIV is false and no IVCounterNonce was given")
	}
	resp := encryptResponse{UID: rec.ID}
	if mode == kmip14.BlockCipherModeGCM {
		ivOut, ct, err := o.s.reg.Seal(o.ctx, o.caller, rec.ID, iv, plain, req.AAD)
		if err != nil {
			return nil, err
		}
		resp.Data = ct
		if o.v.atLeast(1, 4) {
			// 1.4 carries the tag in its own field; older versions append it to the ciphertext.
			n := len(ct) - signer.GCMTagSize
			resp.Data, resp.Tag = append([]byte{}, ct[:n]...), ct[n:]
		}
		if iv == nil || !bytes.Equal(ivOut, iv) {
			// Drawn here, or the client's replaced by the token's own (FIPS-mode HSMs do): without
			// it the client could not decrypt.
			resp.IV = ivOut
		}
		return resp, nil
	}
	ivOut, ct, err := o.s.reg.EncryptCBC(o.ctx, o.caller, rec.ID, iv, plain)
	if err != nil {
		return nil, err
	}
	resp.Data = ct
	if iv == nil {
		resp.IV = ivOut
	}
	return resp, nil
}

func decrypt(o *op, p *node) (any, error) {
	req, rec, params, err := o.prepare(p, signer.UseDecrypt)
	if err != nil {
		return nil, err
	}
	ct := data(req.Data)
	if isRSA(rec) {
		h, label, err := oaep(params)
		if err != nil {
			return nil, err
		}
		pt, err := o.s.reg.DecryptOAEP(o.ctx, o.caller, rec.ID, h, label, ct)
		if err != nil {
			return nil, err
		}
		return dataResponse{UID: rec.ID, Data: pt}, nil
	}
	if rec.Class != keymap.SecretKey || rec.Algorithm != signer.AES {
		return nil, kerr(rIllegal, "Decrypt needs an AES or RSA key; %s is a %s %s", rec.ID, rec.Algorithm, rec.Class)
	}
	mode, err := aesMode(params)
	if err != nil {
		return nil, err
	}
	if len(req.IV) == 0 {
		return nil, kerr(rMissingIV, "missing IV: Decrypt needs the IVCounterNonce used to encrypt")
	}
	if mode == kmip14.BlockCipherModeCBC && len(req.IV) != 16 {
		return nil, kerr(rInvalidField, "AES-CBC needs a 16-byte IV, got %d bytes", len(req.IV))
	}
	var pt []byte
	if mode == kmip14.BlockCipherModeGCM {
		if req.Tag != nil {
			if len(req.Tag) != signer.GCMTagSize {
				return nil, kerr(rBadParams, "GCM tag of %d bytes: tags are %d bytes", len(req.Tag), signer.GCMTagSize)
			}
			ct = append(append([]byte{}, ct...), req.Tag...)
		}
		pt, err = o.s.reg.Open(o.ctx, o.caller, rec.ID, req.IV, ct, req.AAD)
	} else {
		pt, err = o.s.reg.DecryptCBC(o.ctx, o.caller, rec.ID, req.IV, ct)
	}
	if err != nil {
		if errors.Is(err, signer.ErrNotAuthentic) || (mode == kmip14.BlockCipherModeCBC && errors.Is(err, signer.ErrInvalid)) {
			return nil, withReason(err, rCrypto, "Decrypt")
		}
		return nil, err
	}
	if pt == nil {
		pt = []byte{}
	}
	return dataResponse{UID: rec.ID, Data: pt}, nil
}

// signParams maps Cryptographic Parameters to a signature scheme for the key's algorithm:
// PKCS#1 v1.5 with SHA-256 for RSA and ECDSA with SHA-256 for EC unless the request says otherwise.
func signParams(rec keymap.Record, p cryptoParams) (signer.SignParams, error) {
	var sp signer.SignParams
	hash := p.HashingAlgorithm
	if a := p.CryptographicAlgorithm; a != nil {
		switch kmip14.CryptographicAlgorithm(*a) {
		case kmip14.CryptographicAlgorithmRSA:
			if rec.Algorithm != signer.RSA {
				return sp, kerr(rBadParams, "the request names RSA but %s is an %s key", rec.ID, rec.Algorithm)
			}
		case kmip14.CryptographicAlgorithmEC, kmip14.CryptographicAlgorithmECDSA:
			if rec.Algorithm != signer.EC {
				return sp, kerr(rBadParams, "the request names EC but %s is an %s key", rec.ID, rec.Algorithm)
			}
		default:
			return sp, kerr(rBadParams, "signatures with %s are not supported", tagEnumName(kmip14.TagCryptographicAlgorithm, *a))
		}
	}
	if rec.Algorithm == signer.EC {
		sp.Scheme = signer.ECDSA
	} else {
		sp.Scheme = signer.PKCS1v15
		if p.PaddingMethod != nil {
			switch kmip14.PaddingMethod(*p.PaddingMethod) {
			case kmip14.PaddingMethodPKCS1V1_5:
			case kmip14.PaddingMethodPSS:
				sp.Scheme = signer.PSS
			default:
				return sp, kerr(rBadParams, "RSA signatures with padding %s are not supported (PKCS1 v1.5 and PSS are)", tagEnumName(kmip14.TagPaddingMethod, *p.PaddingMethod))
			}
		}
	}
	if d := p.DigitalSignatureAlgorithm; d != nil {
		var h kmip14.HashingAlgorithm
		scheme := signer.PKCS1v15
		switch kmip14.DigitalSignatureAlgorithm(*d) {
		case kmip14.DigitalSignatureAlgorithmSHA_1WithRSAEncryption:
			h = kmip14.HashingAlgorithmSHA_1
		case kmip14.DigitalSignatureAlgorithmSHA_224WithRSAEncryption:
			h = kmip14.HashingAlgorithmSHA_224
		case kmip14.DigitalSignatureAlgorithmSHA_256WithRSAEncryption:
			h = kmip14.HashingAlgorithmSHA_256
		case kmip14.DigitalSignatureAlgorithmSHA_384WithRSAEncryption:
			h = kmip14.HashingAlgorithmSHA_384
		case kmip14.DigitalSignatureAlgorithmSHA_512WithRSAEncryption:
			h = kmip14.HashingAlgorithmSHA_512
		case kmip14.DigitalSignatureAlgorithmRSASSA_PSS:
			scheme = signer.PSS
		case kmip14.DigitalSignatureAlgorithmECDSAWithSHA_1:
			scheme, h = signer.ECDSA, kmip14.HashingAlgorithmSHA_1
		case kmip14.DigitalSignatureAlgorithmECDSAWithSHA224:
			scheme, h = signer.ECDSA, kmip14.HashingAlgorithmSHA_224
		case kmip14.DigitalSignatureAlgorithmECDSAWithSHA256:
			scheme, h = signer.ECDSA, kmip14.HashingAlgorithmSHA_256
		case kmip14.DigitalSignatureAlgorithmECDSAWithSHA384:
			scheme, h = signer.ECDSA, kmip14.HashingAlgorithmSHA_384
		case kmip14.DigitalSignatureAlgorithmECDSAWithSHA512:
			scheme, h = signer.ECDSA, kmip14.HashingAlgorithmSHA_512
		default:
			return sp, kerr(rBadParams, "digital signature algorithm %s is not supported", tagEnumName(kmip14.TagDigitalSignatureAlgorithm, *d))
		}
		if (scheme == signer.ECDSA) != (rec.Algorithm == signer.EC) {
			return sp, kerr(rBadParams, "digital signature algorithm %s does not apply to %s key %s", tagEnumName(kmip14.TagDigitalSignatureAlgorithm, *d), rec.Algorithm, rec.ID)
		}
		sp.Scheme = scheme
		if h != 0 {
			hv := uint32(h)
			hash = &hv
		}
	}
	var err error
	if sp.Hash, err = hashOf(hash, crypto.SHA256); err != nil {
		return sp, err
	}
	if m := p.MaskGeneratorHashingAlgorithm; m != nil && sp.Scheme == signer.PSS {
		if mh, err := hashOf(m, sp.Hash); err != nil || mh != sp.Hash {
			return sp, kerr(rBadParams, "PSS with a mask generation hash different from the message hash is not supported")
		}
	}
	if p.SaltLength != nil {
		sp.SaltLength = int(*p.SaltLength)
	}
	return sp, nil
}

// message is what to sign or verify: the data (the server hashes) or a digest.
func message(req *cryptoRequest, sp *signer.SignParams) ([]byte, error) {
	switch {
	case req.Digested != nil:
		sp.Prehashed = true
		return *req.Digested, nil
	case req.Data != nil:
		return *req.Data, nil
	}
	return nil, kerr(rMissing, "the request carries neither Data nor DigestedData")
}

func sign(o *op, p *node) (any, error) {
	req, rec, params, err := o.prepare(p, signer.UseSign)
	if err != nil {
		return nil, err
	}
	sp, err := signParams(rec, params)
	if err != nil {
		return nil, err
	}
	msg, err := message(req, &sp)
	if err != nil {
		return nil, err
	}
	sig, err := o.s.reg.Sign(o.ctx, o.caller, rec.ID, sp, msg)
	if err != nil {
		return nil, err
	}
	return signResponse{UID: rec.ID, Signature: sig}, nil
}

func signatureVerify(o *op, p *node) (any, error) {
	req, rec, params, err := o.prepare(p, signer.UseVerify)
	if err != nil {
		return nil, err
	}
	if req.Signature == nil {
		return nil, kerr(rMissing, "SignatureVerify needs SignatureData")
	}
	sp, err := signParams(rec, params)
	if err != nil {
		return nil, err
	}
	msg, err := message(req, &sp)
	if err != nil {
		return nil, err
	}
	// Without a salt length, accept any (as verifiers do).
	sp.AnySalt = sp.Scheme == signer.PSS && params.SaltLength == nil
	err = o.s.reg.Verify(o.ctx, o.caller, rec.ID, sp, msg, req.Signature)
	if err != nil && !errors.Is(err, signer.ErrBadSignature) {
		return nil, err
	}
	return verifyResponse{UID: rec.ID, Validity: validity(err)}, nil
}

// validity turns a verification result into a ValidityIndicator; other errors stay errors.
func validity(err error) uint32 {
	if err == nil {
		return uint32(kmip14.ValidityIndicatorValid)
	}
	return uint32(kmip14.ValidityIndicatorInvalid)
}

// macHash picks the HMAC hash: the request's hashing algorithm, else its HMAC algorithm, else the
// algorithm the key was created with.
func (o *op) macHash(rec keymap.Record, p cryptoParams) (crypto.Hash, error) {
	if p.HashingAlgorithm != nil {
		return hashOf(p.HashingAlgorithm, 0)
	}
	alg := p.CryptographicAlgorithm
	if alg == nil {
		if a, ok := o.s.kmipAlgorithm(rec, o.v); ok {
			alg = &a
		}
	}
	if alg != nil {
		switch kmip14.CryptographicAlgorithm(*alg) {
		case kmip14.CryptographicAlgorithmHMAC_SHA1:
			return crypto.SHA1, nil
		case kmip14.CryptographicAlgorithmHMAC_SHA224:
			return crypto.SHA224, nil
		case kmip14.CryptographicAlgorithmHMAC_SHA256:
			return crypto.SHA256, nil
		case kmip14.CryptographicAlgorithmHMAC_SHA384:
			return crypto.SHA384, nil
		case kmip14.CryptographicAlgorithmHMAC_SHA512:
			return crypto.SHA512, nil
		}
	}
	return crypto.SHA256, nil
}

func mac(o *op, p *node) (any, error) {
	req, rec, params, err := o.prepare(p, signer.UseMAC)
	if err != nil {
		return nil, err
	}
	h, err := o.macHash(rec, params)
	if err != nil {
		return nil, err
	}
	if req.Data == nil {
		return nil, kerr(rMissing, "MAC needs Data")
	}
	m, err := o.s.reg.HMAC(o.ctx, o.caller, rec.ID, h, *req.Data)
	if err != nil {
		return nil, err
	}
	return macResponse{UID: rec.ID, MAC: m}, nil
}

func macVerify(o *op, p *node) (any, error) {
	req, rec, params, err := o.prepare(p, signer.UseMACVerify)
	if err != nil {
		return nil, err
	}
	h, err := o.macHash(rec, params)
	if err != nil {
		return nil, err
	}
	if req.Data == nil || req.MAC == nil {
		return nil, kerr(rMissing, "MACVerify needs Data and MACData")
	}
	err = o.s.reg.VerifyHMAC(o.ctx, o.caller, rec.ID, h, *req.Data, req.MAC)
	if err != nil && !errors.Is(err, signer.ErrBadSignature) {
		return nil, err
	}
	return verifyResponse{UID: rec.ID, Validity: validity(err)}, nil
}

type rngRequest struct {
	Length int32 `kmip:"DataLength,required"`
}

func rngRetrieve(o *op, p *node) (any, error) {
	var req rngRequest
	if err := decodeStruct(p, &req); err != nil {
		return nil, err
	}
	if req.Length <= 0 || req.Length > signer.MaxRandom {
		return nil, kerr(rInvalidField, "DataLength %d: ask for 1 to %d bytes", req.Length, signer.MaxRandom)
	}
	b, err := o.s.reg.Random(o.ctx, "", int(req.Length))
	if err != nil {
		return nil, err
	}
	return rngResponse{Data: b}, nil
}

type rngResponse struct {
	Data []byte `kmip:"Data"`
}
