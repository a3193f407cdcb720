package ttlv

import (
	"crypto/x509"
	"errors"
	"fmt"
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
	if r.wrapped != nil {
		return o.registerWrapped(r, t, meta)
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
	// The client knew the material: it may have it back, unless it says Extractable = false.
	rec, err := o.s.reg.Import(o.ctx, o.caller, r.m, meta, meta.Extractable == nil || *meta.Extractable, "")
	if err != nil {
		return nil, err
	}
	o.signer = rec.Signer
	o.created(rec.ID)
	o.produced(rec.ID, kmip20.UniqueIdentifierRegister)
	return uidResponse{UID: rec.ID}, nil
}

// registerWrapped registers a wrapped symmetric key: unwrapped into the token under the key its
// Key Wrapping Data names, so the material is never in plaintext outside it. It may leave the
// token again as a generated key may.
func (o *op) registerWrapped(r *registered, t *template, meta signer.Meta) (any, error) {
	w, _, err := o.wrapping(r.wrapping)
	if err != nil {
		return nil, err
	}
	a := r.kmipAlg
	if a == 0 {
		a = t.alg
	}
	alg, err := symmetricAlgorithm(a)
	if err != nil {
		return nil, err
	}
	bits := int(r.length)
	if bits == 0 {
		bits = int(t.length)
	}
	if kmip14.KeyFormatType(r.format) != kmip14.KeyFormatTypeRaw {
		return nil, badFormat("wrapped symmetric keys (Raw is)", r.format)
	}
	if alg == signer.HMAC || a != uint32(kmip14.CryptographicAlgorithmAES) {
		if err := withStored(&meta, kmip14.TagCryptographicAlgorithm, newEnum(kmip14.TagCryptographicAlgorithm, a)); err != nil {
			return nil, err
		}
	}
	rec, err := o.s.reg.ImportWrapped(o.ctx, o.caller, r.wrapped, w, alg, bits, meta)
	if err != nil {
		return nil, err
	}
	o.signer = rec.Signer
	o.created(rec.ID)
	o.produced(rec.ID, kmip20.UniqueIdentifierRegister)
	return uidResponse{UID: rec.ID}, nil
}

type getRequest struct {
	UID                      *uidRef      `kmip:"UniqueIdentifier"`
	KeyFormatType            *uint32      `kmip:"KeyFormatType"`
	KeyWrapType              *uint32      `kmip:"KeyWrapType"`
	KeyCompressionType       *uint32      `kmip:"KeyCompressionType"`
	KeyWrappingSpecification *keyWrapping `kmip:"KeyWrappingSpecification"`
}

type getResponse struct {
	ObjectType uint32 `kmip:"ObjectType"`
	UID        string `kmip:"UniqueIdentifier"`
	Object     *node  `kmip:""`
}

// get returns an object's material as the registry's key model allows the caller: public keys
// always (PKCS#1 for RSA unless asked otherwise), registered objects as registered, keys made
// exportable under the export right; wrapped in the token under a key the client names when it
// gives a Key Wrapping Specification (or asks for a wrapped registration As Registered).
func get(o *op, p *node) (any, error) {
	var req getRequest
	if err := decodeStruct(p, &req); err != nil {
		return nil, err
	}
	if req.KeyCompressionType != nil && *req.KeyCompressionType != uint32(kmip14.KeyCompressionTypeECPublicKeyTypeUncompressed) {
		return nil, kerr(uint32(kmip14.ResultReasonKeyCompressionTypeNotSupported), "only uncompressed EC points are supported")
	}
	rec, err := o.target(req.UID, signer.UseSee)
	if err != nil {
		return nil, err
	}
	alg, _ := o.s.kmipAlgorithm(rec, o.v)
	spec := req.KeyWrappingSpecification
	var asRegistered *signer.Wrapping
	if spec == nil && req.KeyWrapType != nil && *req.KeyWrapType == uint32(kmip14.KeyWrapTypeAsRegistered) {
		if w, ok := signer.WrappedAs(rec); ok {
			asRegistered = &w
		}
	}
	if spec != nil || asRegistered != nil {
		return o.getWrapped(rec, alg, spec, asRegistered, req.KeyFormatType)
	}
	m, err := o.s.reg.Export(o.ctx, o.caller, rec.ID)
	if err != nil {
		return nil, exportRefusal(err, fmt.Sprintf("Get %s", rec.ID), ": its material never leaves the token")
	}
	if rec.Class == keymap.PublicKey && m.Public == nil {
		return nil, kerr(rGeneral, "public key %s could not be read from its token", rec.ID)
	}
	if m.Via != signer.ViaPublic && rec.Class != keymap.Certificate {
		o.exported(rec.ID, m.Via)
	}
	ot, obj, err := exportObject(rec, m, req.KeyFormatType, alg)
	if err != nil {
		return nil, err
	}
	return getResponse{ObjectType: uint32(ot), UID: rec.ID, Object: obj}, nil
}

// getWrapped answers a Get of a key wrapped in its token under another key: the one the Key
// Wrapping Specification names, or for As Registered the one it was registered under.
func (o *op) getWrapped(rec keymap.Record, alg uint32, spec *keyWrapping, as *signer.Wrapping, format *uint32) (any, error) {
	var w signer.Wrapping
	var params *cryptoParams
	var encoding *uint32
	if spec != nil {
		var err error
		if w, params, err = o.wrapping(spec); err != nil {
			return nil, err
		}
		encoding = spec.Encoding
	} else {
		w = *as
		encoding = ptr(uint32(kmip14.EncodingOptionNoEncoding))
		switch w.Mech {
		case signer.WrapKW:
			params = &cryptoParams{BlockCipherMode: ptr(uint32(kmip14.BlockCipherModeNISTKeyWrap))}
		case signer.WrapKWP:
			params = &cryptoParams{BlockCipherMode: ptr(uint32(kmip14.BlockCipherModeAESKeyWrapPadding))}
		case signer.WrapOAEP:
			params = &cryptoParams{PaddingMethod: ptr(uint32(kmip14.PaddingMethodOAEP))}
		}
	}
	if format != nil {
		want := uint32(kmip14.KeyFormatTypeRaw)
		if rec.Class == keymap.PrivateKey {
			want = uint32(kmip14.KeyFormatTypePKCS_8)
		}
		if *format != want {
			return nil, kerr(rFormat, "a wrapped %s is wrapped as %s (what the token wraps), not %s", rec.Class,
				tagEnumName(kmip14.TagKeyFormatType, want), tagEnumName(kmip14.TagKeyFormatType, *format))
		}
	}
	kek, wrapped, err := o.s.reg.ExportWrapped(o.ctx, o.caller, rec.ID, w)
	if err != nil {
		return nil, exportRefusal(err, fmt.Sprintf("Get %s wrapped", rec.ID), "")
	}
	o.exported(rec.ID, "wrapped in the token under "+kek.ID+" with "+w.Mech.String())
	ot := classTypes[rec.Class]
	return getResponse{ObjectType: uint32(ot), UID: rec.ID, Object: encodeStruct(objectTag[ot], wrappedBlock(rec, alg, wrapped, kek.ID, params, encoding))}, nil
}

// exportRefusal gives the registry's refusals of an export their KMIP reasons: Key Value Not
// Extractable for material that never leaves the token (notExtractable says why, after what),
// Permission Denied for a caller without the right.
func exportRefusal(err error, what, notExtractable string) error {
	switch {
	case errors.Is(err, signer.ErrNotExtractable):
		return withReason(err, rNotExtract, "%s%s", what, notExtractable)
	case errors.Is(err, signer.ErrDenied):
		return withReason(err, rDenied, "%s", what)
	}
	return err
}
