package ttlv

import (
	"time"

	"github.com/gemalto/kmip-go/kmip14"
	"github.com/gemalto/kmip-go/kmip20"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/signer"
)

func init() {
	register(kmip14.OperationCreate, v10, create)
	register(kmip14.OperationCreateKeyPair, v10, createKeyPair)
	register(kmip14.OperationReKey, v10, reKey)
	register(kmip14.OperationReKeyKeyPair, v11, reKeyKeyPair)
}

// createRequest covers 1.x (TemplateAttribute) and 2.0 (Attributes).
type createRequest struct {
	ObjectType        uint32 `kmip:"ObjectType,required"`
	TemplateAttribute *node  `kmip:"TemplateAttribute"`
	Attributes        *node  `kmip:"Attributes"`
}

type createResponse struct {
	ObjectType uint32 `kmip:"ObjectType"`
	UID        string `kmip:"UniqueIdentifier"`
}

// attrsNode picks the attribute list of whichever form the client used.
func attrsNode(a, b *node) *node {
	if a != nil {
		return a
	}
	return b
}

// secretSpec maps a template to the registry's secret key generation.
func secretSpec(t *template) (signer.KeySpec, error) {
	alg, err := symmetricAlgorithm(t.alg)
	if err != nil {
		return signer.KeySpec{}, err
	}
	if t.length == 0 {
		return signer.KeySpec{}, kerr(rMissing, "Create needs a Cryptographic Length")
	}
	return signer.KeySpec{Algorithm: alg, Size: int(t.length)}, nil
}

// create generates a symmetric key (AES, or a generic secret for HMAC) in the token.
func create(o *op, p *node) (any, error) {
	var req createRequest
	if err := decodeStruct(p, &req); err != nil {
		return nil, err
	}
	if req.ObjectType != uint32(kmip14.ObjectTypeSymmetricKey) {
		return nil, kerr(rFeature, "Create makes symmetric keys only, not %s (use CreateKeyPair or Register)", tagEnumName(kmip14.TagObjectType, req.ObjectType))
	}
	t, err := parseTemplate(attrsNode(req.TemplateAttribute, req.Attributes))
	if err != nil {
		return nil, err
	}
	if t.objectType != 0 && t.objectType != req.ObjectType {
		return nil, kerr(rInvalidField, "the template's Object Type contradicts the request's")
	}
	spec, err := secretSpec(t)
	if err != nil {
		return nil, err
	}
	meta, err := t.meta(o.identity)
	if err != nil {
		return nil, err
	}
	if spec.Algorithm == signer.HMAC {
		// Remember which HMAC the client asked for: MAC uses its hash by default.
		if err := withStored(&meta, kmip14.TagCryptographicAlgorithm, newEnum(kmip14.TagCryptographicAlgorithm, t.alg)); err != nil {
			return nil, err
		}
	}
	rec, err := o.s.reg.Create(o.ctx, spec, meta)
	if err != nil {
		return nil, err
	}
	o.signer = rec.Signer
	o.created(rec.ID)
	o.produced(rec.ID, kmip20.UniqueIdentifierCreate)
	return createResponse{ObjectType: req.ObjectType, UID: rec.ID}, nil
}

// createKeyPairRequest covers CreateKeyPair and ReKeyKeyPair (which adds the first two fields) in
// 1.x and 2.0 forms, in the order the specification lists them.
type createKeyPairRequest struct {
	PrivateKeyUID *uidRef        `kmip:"PrivateKeyUniqueIdentifier"`
	Offset        *time.Duration `kmip:"Offset"`
	Common        *node          `kmip:"CommonTemplateAttribute"`
	Private       *node          `kmip:"PrivateKeyTemplateAttribute"`
	Public        *node          `kmip:"PublicKeyTemplateAttribute"`
	Common2       *node          `kmip:"CommonAttributes"`
	Private2      *node          `kmip:"PrivateKeyAttributes"`
	Public2       *node          `kmip:"PublicKeyAttributes"`
}

type createKeyPairResponse struct {
	PrivateUID string `kmip:"PrivateKeyUniqueIdentifier"`
	PublicUID  string `kmip:"PublicKeyUniqueIdentifier"`
}

// pairTemplates parses the three attribute lists of CreateKeyPair and ReKeyKeyPair.
func pairTemplates(req *createKeyPairRequest) (priv, pub *template, err error) {
	common, err := parseTemplate(attrsNode(req.Common, req.Common2))
	if err != nil {
		return nil, nil, err
	}
	p, err := parseTemplate(attrsNode(req.Private, req.Private2))
	if err != nil {
		return nil, nil, err
	}
	q, err := parseTemplate(attrsNode(req.Public, req.Public2))
	if err != nil {
		return nil, nil, err
	}
	return merge(common, p), merge(common, q), nil
}

// pairSpec maps a template to the registry's key pair generation.
func pairSpec(t *template) (signer.KeySpec, error) {
	switch kmip14.CryptographicAlgorithm(t.alg) {
	case kmip14.CryptographicAlgorithmRSA:
		if t.length == 0 {
			return signer.KeySpec{}, kerr(rMissing, "an RSA key pair needs a Cryptographic Length")
		}
		return signer.KeySpec{Algorithm: signer.RSA, Size: int(t.length)}, nil
	case kmip14.CryptographicAlgorithmEC, kmip14.CryptographicAlgorithmECDSA, kmip14.CryptographicAlgorithmECDH:
		size := int(t.length)
		switch kmip14.RecommendedCurve(t.curve) {
		case 0:
		case kmip14.RecommendedCurveP_256:
			size = 256
		case kmip14.RecommendedCurveP_384:
			size = 384
		default:
			return signer.KeySpec{}, kerr(rFeature, "curve %s is not supported (P-256 and P-384 are)", tagEnumName(kmip14.TagRecommendedCurve, t.curve))
		}
		if t.length != 0 && int(t.length) != size {
			return signer.KeySpec{}, kerr(rInvalidField, "Cryptographic Length %d contradicts the curve", t.length)
		}
		if size == 0 {
			return signer.KeySpec{}, kerr(rMissing, "an EC key pair needs a Cryptographic Length or a Recommended Curve")
		}
		return signer.KeySpec{Algorithm: signer.EC, Size: size}, nil
	case 0:
		return signer.KeySpec{}, kerr(rMissing, "CreateKeyPair needs a Cryptographic Algorithm")
	}
	return signer.KeySpec{}, kerr(rFeature, "key pairs of algorithm %s are not supported (RSA and EC are)", tagEnumName(kmip14.TagCryptographicAlgorithm, t.alg))
}

// pairMetas builds the metadata of both halves, remembering ECDSA/ECDH when the client said so.
func (o *op) pairMetas(priv, pub *template) (signer.Meta, signer.Meta, error) {
	pm, err := priv.meta(o.identity)
	if err != nil {
		return signer.Meta{}, signer.Meta{}, err
	}
	qm, err := pub.meta(o.identity)
	if err != nil {
		return signer.Meta{}, signer.Meta{}, err
	}
	for _, x := range []struct {
		m *signer.Meta
		t *template
	}{{&pm, priv}, {&qm, pub}} {
		if x.t.alg == uint32(kmip14.CryptographicAlgorithmECDSA) || x.t.alg == uint32(kmip14.CryptographicAlgorithmECDH) {
			if err := withStored(x.m, kmip14.TagCryptographicAlgorithm, newEnum(kmip14.TagCryptographicAlgorithm, x.t.alg)); err != nil {
				return signer.Meta{}, signer.Meta{}, err
			}
		}
	}
	return pm, qm, nil
}

// createKeyPair generates an RSA or EC key pair; the private half never leaves the token.
func createKeyPair(o *op, p *node) (any, error) {
	var req createKeyPairRequest
	if err := decodeStruct(p, &req); err != nil {
		return nil, err
	}
	priv, pub, err := pairTemplates(&req)
	if err != nil {
		return nil, err
	}
	spec, err := pairSpec(priv)
	if err != nil {
		return nil, err
	}
	if pub.alg != priv.alg && pub.alg != 0 && priv.alg != 0 {
		return nil, kerr(rInvalidField, "the private and public templates name different algorithms")
	}
	pm, qm, err := o.pairMetas(priv, pub)
	if err != nil {
		return nil, err
	}
	pr, pu, err := o.s.reg.CreateKeyPair(o.ctx, spec, pm, qm)
	if err != nil {
		return nil, err
	}
	o.signer = pr.Signer
	o.created(pu.ID, pr.ID)
	o.produced(pu.ID, kmip20.UniqueIdentifierCreateKeyPairPublicKey)
	o.produced(pr.ID, kmip20.UniqueIdentifierCreateKeyPair, kmip20.UniqueIdentifierCreateKeyPairPrivateKey)
	o.key = pr.ID
	return createKeyPairResponse{PrivateUID: pr.ID, PublicUID: pu.ID}, nil
}

type reKeyRequest struct {
	UID               *uidRef        `kmip:"UniqueIdentifier"`
	Offset            *time.Duration `kmip:"Offset"`
	TemplateAttribute *node          `kmip:"TemplateAttribute"`
	Attributes        *node          `kmip:"Attributes"`
}

type reKeyResponse struct {
	UID string `kmip:"UniqueIdentifier"`
}

// datesAfterReKey sets the lifecycle of a replacement key: with an Offset, the replacement
// activates that long after now; without one it is Active at once when the old key was Active
// (clients rekey keys in use), else Pre-Active. Dates copied from the old key are dropped.
func (o *op) datesAfterReKey(id string, oldState keymap.State, offset *time.Duration, t *template) error {
	now := time.Now()
	_, err := o.s.reg.Update(id, func(r *keymap.Record) error {
		for _, d := range []*attrDef{def(kmip14.TagActivationDate), def(kmip14.TagDeactivationDate), def(kmip14.TagCompromiseDate),
			def(kmip14.TagCompromiseOccurrenceDate), def(kmip14.TagRevocationReason), def(kmip14.TagProcessStartDate), def(kmip14.TagProtectStopDate)} {
			if t == nil || t.vals[storeKey(d, d.name)] == nil {
				delete(r.Attrs, storeKey(d, d.name))
			}
		}
		var act *time.Time
		switch {
		case t != nil && t.vals[storeKey(def(kmip14.TagActivationDate), "")] != nil:
			a := t.vals[storeKey(def(kmip14.TagActivationDate), "")][0].dateTime()
			act = &a
		case offset != nil:
			a := now.Add(*offset)
			act = &a
		case oldState == keymap.Active:
			act = &now
		}
		r.State = keymap.PreActive
		if act != nil {
			if !act.After(now) {
				r.State = keymap.Active
			}
			return setStored(r, def(kmip14.TagActivationDate), "", []*node{newDateTime(kmip14.TagActivationDate, *act)})
		}
		return nil
	})
	return err
}

// reKey replaces a symmetric key with a fresh one (on the rollover signer while one is set), linked
// to the old one; the old key keeps working for what it protected.
func reKey(o *op, p *node) (any, error) {
	var req reKeyRequest
	if err := decodeStruct(p, &req); err != nil {
		return nil, err
	}
	old, err := o.target(req.UID)
	if err != nil {
		return nil, err
	}
	if old.Class != keymap.SecretKey {
		return nil, kerr(rIllegal, "ReKey replaces symmetric keys; %s is a %s (use ReKeyKeyPair for key pairs)", old.ID, old.Class)
	}
	t, err := parseTemplate(attrsNode(req.TemplateAttribute, req.Attributes))
	if err != nil {
		return nil, err
	}
	if t.alg != 0 || t.length != 0 {
		return nil, kerr(rInvalidField, "ReKey keeps the algorithm and length of the old key")
	}
	meta, err := t.meta(o.identity)
	if err != nil {
		return nil, err
	}
	meta.Owner = old.Owner
	oldState := o.s.effectiveState(old, time.Now())
	rec, err := o.s.reg.ReKey(o.ctx, old.ID, signer.Meta{Name: meta.Name, Owner: meta.Owner, Attrs: meta.Attrs})
	if err != nil {
		return nil, err
	}
	o.created(rec.ID)
	if err := o.datesAfterReKey(rec.ID, oldState, req.Offset, t); err != nil {
		return nil, err
	}
	o.signer = rec.Signer
	o.produced(rec.ID, kmip20.UniqueIdentifierReKey)
	return reKeyResponse{UID: rec.ID}, nil
}

// reKeyKeyPair replaces a key pair like reKey does a symmetric key.
func reKeyKeyPair(o *op, p *node) (any, error) {
	var req createKeyPairRequest
	if err := decodeStruct(p, &req); err != nil {
		return nil, err
	}
	old, err := o.target(req.PrivateKeyUID)
	if err != nil {
		return nil, err
	}
	if old.Class != keymap.PrivateKey {
		return nil, kerr(rIllegal, "ReKeyKeyPair needs the private key of a pair; %s is a %s", old.ID, old.Class)
	}
	priv, pub, err := pairTemplates(&req)
	if err != nil {
		return nil, err
	}
	if priv.alg != 0 || priv.length != 0 || pub.alg != 0 || pub.length != 0 {
		return nil, kerr(rInvalidField, "ReKeyKeyPair keeps the algorithm and length of the old pair")
	}
	pm, qm, err := o.pairMetas(priv, pub)
	if err != nil {
		return nil, err
	}
	pm.Owner, qm.Owner = old.Owner, old.Owner
	oldState := o.s.effectiveState(old, time.Now())
	np, nq, err := o.s.reg.ReKeyKeyPair(o.ctx, old.ID, pm, qm)
	if err != nil {
		return nil, err
	}
	o.created(nq.ID, np.ID)
	if err := o.datesAfterReKey(np.ID, oldState, req.Offset, priv); err != nil {
		return nil, err
	}
	if err := o.datesAfterReKey(nq.ID, oldState, req.Offset, pub); err != nil {
		return nil, err
	}
	o.signer = np.Signer
	o.produced(nq.ID, kmip20.UniqueIdentifierReKeyKeyPairPublicKey)
	o.produced(np.ID, kmip20.UniqueIdentifierReKeyKeyPair, kmip20.UniqueIdentifierReKeyKeyPairPrivateKey)
	o.key = np.ID
	return createKeyPairResponse{PrivateUID: np.ID, PublicUID: nq.ID}, nil
}
