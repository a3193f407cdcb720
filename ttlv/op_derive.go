package ttlv

import (
	"github.com/gemalto/kmip-go/kmip14"
	"github.com/gemalto/kmip-go/kmip20"

	"github.com/p11bridge/p11bridge/signer"
)

func init() {
	register(kmip14.OperationDeriveKey, v12, deriveKey)
}

type deriveKeyRequest struct {
	ObjectType        uint32        `kmip:"ObjectType,required"`
	UIDs              []*uidRef     `kmip:"UniqueIdentifier"`
	Method            uint32        `kmip:"DerivationMethod,required"`
	Params            *deriveParams `kmip:"DerivationParameters,required"`
	TemplateAttribute *node         `kmip:"TemplateAttribute"`
	Attributes        *node         `kmip:"Attributes"`
}

type deriveParams struct {
	Crypto     *cryptoParams `kmip:"CryptographicParameters"`
	IV         []byte        `kmip:"InitializationVector"`
	Data       []byte        `kmip:"DerivationData"`
	Salt       []byte        `kmip:"Salt"`
	Iterations *int32        `kmip:"IterationCount"`
}

// deriveKey derives a symmetric key inside the token from a base AES key by encrypting the
// Derivation Data (Derivation Method Encrypt, AES-CBC or AES-ECB): what tokens can do. Other
// methods (PBKDF2, hash, HMAC, NIST SP 800-108, …) would compute the key on the host.
func deriveKey(o *op, p *node) (any, error) {
	var req deriveKeyRequest
	if err := decodeStruct(p, &req); err != nil {
		return nil, err
	}
	if req.ObjectType != uint32(kmip14.ObjectTypeSymmetricKey) {
		return nil, kerr(rFeature, "DeriveKey makes symmetric keys only, not %s", tagEnumName(kmip14.TagObjectType, req.ObjectType))
	}
	if kmip14.DerivationMethod(req.Method) != kmip14.DerivationMethodENCRYPT {
		return nil, kerr(rFeature, "derivation method %s is not supported: the token derives keys by encryption only (Derivation Method Encrypt with an AES key)",
			tagEnumName(kmip14.TagDerivationMethod, req.Method))
	}
	if len(req.UIDs) > 1 {
		return nil, kerr(rInvalidField, "derivation by encryption takes one base key, not %d", len(req.UIDs))
	}
	var ref *uidRef
	if len(req.UIDs) == 1 {
		ref = req.UIDs[0]
	}
	base, err := o.target(ref, signer.UseSee)
	if err != nil {
		return nil, err
	}
	d := signer.Derivation{Mode: "cbc", IV: req.Params.IV, Data: req.Params.Data}
	if c := req.Params.Crypto; c != nil {
		if c.BlockCipherMode != nil {
			switch kmip14.BlockCipherMode(*c.BlockCipherMode) {
			case kmip14.BlockCipherModeCBC:
			case kmip14.BlockCipherModeECB:
				d.Mode = "ecb"
			default:
				return nil, kerr(rBadParams, "derivation with block cipher mode %s is not supported (CBC and ECB are)", tagEnumName(kmip14.TagBlockCipherMode, *c.BlockCipherMode))
			}
		}
		// The token encrypts whole blocks without padding; with PKCS5 padding the first blocks
		// are the same, and they are all the key takes.
		if c.PaddingMethod != nil && *c.PaddingMethod != uint32(kmip14.PaddingMethodNone) && *c.PaddingMethod != uint32(kmip14.PaddingMethodPKCS5) {
			return nil, kerr(rBadParams, "derivation with padding %s is not supported", tagEnumName(kmip14.TagPaddingMethod, *c.PaddingMethod))
		}
		if c.CryptographicAlgorithm != nil && kmip14.CryptographicAlgorithm(*c.CryptographicAlgorithm) != kmip14.CryptographicAlgorithmAES {
			return nil, kerr(rBadParams, "derivation by %s encryption is not supported (AES is)", tagEnumName(kmip14.TagCryptographicAlgorithm, *c.CryptographicAlgorithm))
		}
	}
	if d.Data == nil {
		return nil, kerr(rMissing, "derivation by encryption needs Derivation Data")
	}
	t, err := parseTemplate(attrsNode(req.TemplateAttribute, req.Attributes))
	if err != nil {
		return nil, err
	}
	spec, meta, err := secretKey(t)
	if err != nil {
		return nil, err
	}
	rec, err := o.s.reg.Derive(o.ctx, o.caller, base.ID, d, spec, meta)
	if err != nil {
		return nil, err
	}
	o.key, o.signer = rec.ID, rec.Signer
	o.created(rec.ID)
	o.produced(rec.ID, kmip20.UniqueIdentifierDeriveKey)
	return uidResponse{UID: rec.ID}, nil
}
