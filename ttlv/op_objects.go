package ttlv

import (
	"crypto/x509"
	"errors"
	"strconv"

	"github.com/gemalto/kmip-go/kmip14"
	"github.com/gemalto/kmip-go/kmip20"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/signer"
)

func init() {
	register(kmip14.OperationRegister, v10, registerObject)
	register(kmip14.OperationGet, v10, get)
}

type registerRequest struct {
	ObjectType        uint32  `kmip:"ObjectType,required"`
	TemplateAttribute *node   `kmip:"TemplateAttribute"`
	Attributes        *node   `kmip:"Attributes"`
	Objects           []*node `kmip:",any"`
}

// registerObject stores a client's object in the token. The client knew the material already, so
// it stays retrievable with Get (imported exportable).
func registerObject(o *op, p *node) (any, error) {
	var req registerRequest
	if err := decodeStruct(p, &req); err != nil {
		return nil, err
	}
	ot := kmip14.ObjectType(req.ObjectType)
	tag, ok := objectTag[ot]
	if !ok {
		return nil, kerr(rFeature, "objects of type %s are not supported", tagEnumName(kmip14.TagObjectType, req.ObjectType))
	}
	var obj *node
	for _, n := range req.Objects {
		if n.Tag == tag {
			obj = n
		}
	}
	r, err := parseObject(ot, obj)
	if err != nil {
		return nil, err
	}
	t, err := parseTemplate(attrsNode(req.TemplateAttribute, req.Attributes))
	if err != nil {
		return nil, err
	}
	if ot == kmip14.ObjectTypeSymmetricKey && r.kmipAlg == 0 && t.alg != 0 {
		// The algorithm may come with the template rather than in the key block.
		r.kmipAlg = t.alg
		if r.m.Algorithm, err = symmetricAlgorithm(t.alg); err != nil {
			return nil, err
		}
	}
	if ot == kmip14.ObjectTypeSymmetricKey && r.m.Algorithm == "" {
		if r.m.Algorithm, err = symmetricAlgorithm(r.kmipAlg); err != nil {
			return nil, err
		}
	}
	meta, err := t.meta()
	if err != nil {
		return nil, err
	}
	if meta.Attrs == nil {
		meta.Attrs = map[string]string{}
	}
	for k, v := range r.extra {
		meta.Attrs[k] = v
	}
	if r.format != 0 {
		meta.Attrs[attrFormat] = strconv.FormatUint(uint64(r.format), 10)
	}
	switch kmip14.CryptographicAlgorithm(r.kmipAlg) {
	case 0, kmip14.CryptographicAlgorithmAES, kmip14.CryptographicAlgorithmRSA, kmip14.CryptographicAlgorithmEC:
	default:
		if err := withStored(&meta, kmip14.TagCryptographicAlgorithm, newEnum(kmip14.TagCryptographicAlgorithm, r.kmipAlg)); err != nil {
			return nil, err
		}
	}
	if ot == kmip14.ObjectTypeCertificate {
		if _, err := x509.ParseCertificate(r.m.Cert); err != nil {
			return nil, kerr(rInvalidField, "CertificateValue is not an X.509 certificate: %v", err)
		}
		if err := withStored(&meta, kmip14.TagCertificateLength, newInt(kmip14.TagCertificateLength, int32(len(r.m.Cert)))); err != nil {
			return nil, err
		}
	}
	rec, err := o.s.reg.Import(o.ctx, o.caller, r.m, meta, true, "")
	if err != nil {
		return nil, err
	}
	o.signer = rec.Signer
	o.created(rec.ID)
	o.produced(rec.ID, kmip20.UniqueIdentifierRegister)
	return uidResponse{UID: rec.ID}, nil
}

type getRequest struct {
	UID                      *uidRef `kmip:"UniqueIdentifier"`
	KeyFormatType            *uint32 `kmip:"KeyFormatType"`
	KeyWrapType              *uint32 `kmip:"KeyWrapType"`
	KeyCompressionType       *uint32 `kmip:"KeyCompressionType"`
	KeyWrappingSpecification *node   `kmip:"KeyWrappingSpecification"`
}

type getResponse struct {
	ObjectType uint32 `kmip:"ObjectType"`
	UID        string `kmip:"UniqueIdentifier"`
	Object     *node  `kmip:""`
}

// get returns an object's material: public keys always (PKCS#1 for RSA unless asked otherwise),
// registered objects as registered; generated private and secret keys never leave the token.
func get(o *op, p *node) (any, error) {
	var req getRequest
	if err := decodeStruct(p, &req); err != nil {
		return nil, err
	}
	if req.KeyWrappingSpecification != nil {
		return nil, kerr(rFeature, "key wrapping is not supported")
	}
	if req.KeyCompressionType != nil && *req.KeyCompressionType != uint32(kmip14.KeyCompressionTypeECPublicKeyTypeUncompressed) {
		return nil, kerr(uint32(kmip14.ResultReasonKeyCompressionTypeNotSupported), "only uncompressed EC points are supported")
	}
	rec, err := o.target(req.UID, signer.UseSee)
	if err != nil {
		return nil, err
	}
	m, err := o.s.reg.Export(o.ctx, o.caller, rec.ID)
	if err != nil {
		if errors.Is(err, signer.ErrNotExtractable) {
			return nil, withReason(err, rNotExtract, "Get %s: the key was generated in the token and its material never leaves it", rec.ID)
		}
		return nil, err
	}
	if rec.Class == keymap.PublicKey && m.Public == nil {
		return nil, kerr(rGeneral, "public key %s could not be read from its token", rec.ID)
	}
	alg, _ := o.s.kmipAlgorithm(rec, o.v)
	ot, obj, err := exportObject(rec, m, req.KeyFormatType, alg)
	if err != nil {
		return nil, err
	}
	return getResponse{ObjectType: uint32(ot), UID: rec.ID, Object: obj}, nil
}
