package ttlv

import (
	"strings"
	"time"

	tt "github.com/gemalto/kmip-go/ttlv"

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

// secretKey is the key and metadata a template asks for of a secret key made in the token
// (Create, DeriveKey).
func secretKey(t *template) (signer.KeySpec, signer.Meta, error) {
	spec, err := secretSpec(t)
	if err != nil {
		return spec, signer.Meta{}, err
	}
	meta, err := t.meta()
	if err != nil {
		return spec, meta, err
	}
	if spec.Algorithm == signer.HMAC {
		// Remember which HMAC the client asked for: MAC uses its hash by default.
		err = withStored(&meta, kmip14.TagCryptographicAlgorithm, newEnum(kmip14.TagCryptographicAlgorithm, t.alg))
	}
	return spec, meta, err
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
	spec, meta, err := secretKey(t)
	if err != nil {
		return nil, err
	}
	rec, err := o.s.reg.Create(o.ctx, o.caller, spec, meta)
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
	pm, err := priv.meta()
	if err != nil {
		return signer.Meta{}, signer.Meta{}, err
	}
	qm, err := pub.meta()
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
	pr, pu, err := o.s.reg.CreateKeyPair(o.ctx, o.caller, spec, pm, qm)
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

// datesAfterReKey gives a replacement key the old key's life cycle (KMIP Re-key): its Activation
// Date is the new Initial Date plus the Offset, or without one plus the old key's delay between
// creation and activation; Deactivation, Process Start and Protect Stop Dates keep their distance
// from activation. An old key without an Activation Date passes on its state (Active stays
// Active). Dates given in the request's attributes win.
func (o *op) datesAfterReKey(id string, old keymap.Record, offset *time.Duration, t *template) error {
	now := time.Now()
	oldAct, hasAct := o.s.storedDate(old, kmip14.TagActivationDate)
	oldState := signer.EffectiveState(old, now)
	given := func(tag tt.Tag) []*node {
		if t == nil {
			return nil
		}
		return t.vals[storeKey(def(tag), "")]
	}
	// The changes are made here, outside the registry's lock; the update only assigns them.
	var changes []storedChange
	set := func(tag tt.Tag, vals []*node) error {
		c, err := prepareStored(def(tag), "", vals)
		changes = append(changes, c)
		return err
	}
	for _, tag := range []tt.Tag{kmip14.TagActivationDate, kmip14.TagDeactivationDate, kmip14.TagCompromiseDate,
		kmip14.TagCompromiseOccurrenceDate, kmip14.TagRevocationReason, kmip14.TagProcessStartDate, kmip14.TagProtectStopDate} {
		if given(tag) == nil {
			if err := set(tag, nil); err != nil {
				return err
			}
		}
	}
	var act *time.Time
	switch {
	case given(kmip14.TagActivationDate) != nil:
		a := given(kmip14.TagActivationDate)[0].dateTime()
		act = &a
	case offset != nil:
		a := now.Add(*offset)
		act = &a
	case hasAct:
		a := now.Add(oldAct.Sub(old.Created))
		act = &a
	case oldState == keymap.Active:
		act = &now
	}
	state := keymap.PreActive
	if act != nil {
		if !act.After(now) {
			state = keymap.Active
		}
		if err := set(kmip14.TagActivationDate, []*node{newDateTime(kmip14.TagActivationDate, *act)}); err != nil {
			return err
		}
		if hasAct {
			for _, tag := range []tt.Tag{kmip14.TagDeactivationDate, kmip14.TagProcessStartDate, kmip14.TagProtectStopDate} {
				if d, ok := o.s.storedDate(old, tag); ok && given(tag) == nil {
					if err := set(tag, []*node{newDateTime(tag, act.Add(d.Sub(oldAct)))}); err != nil {
						return err
					}
				}
			}
		}
	}
	_, err := o.s.reg.Update(o.caller, id, func(r *keymap.Record) error {
		r.State = state
		for _, c := range changes {
			c.apply(r)
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
	old, err := o.target(req.UID, signer.UseManage)
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
	meta, err := o.s.reKeyMeta(old, t)
	if err != nil {
		return nil, err
	}
	meta.Extractable = t.extractable // the registry decides (an exportable key's replacement is one)
	rec, err := o.s.reg.ReKey(o.ctx, o.caller, old.ID, meta)
	if err != nil {
		return nil, err
	}
	o.created(rec.ID)
	if err := o.datesAfterReKey(rec.ID, old, req.Offset, t); err != nil {
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
	old, err := o.target(req.PrivateKeyUID, signer.UseManage)
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
	pm, err := o.s.reKeyMeta(old, priv)
	if err != nil {
		return nil, err
	}
	pm.Extractable = priv.extractable
	var qm signer.Meta
	oldPub, pubErr := o.s.reg.Access(o.caller, old.Attrs[signer.AttrPublicKey], signer.UseSee)
	if pubErr == nil {
		qm, err = o.s.reKeyMeta(oldPub, pub)
	} else {
		qm, err = pub.meta()
	}
	if err != nil {
		return nil, err
	}
	np, nq, err := o.s.reg.ReKeyKeyPair(o.ctx, o.caller, old.ID, pm, qm)
	if err != nil {
		return nil, err
	}
	o.created(nq.ID, np.ID)
	if err := o.datesAfterReKey(np.ID, old, req.Offset, priv); err != nil {
		return nil, err
	}
	if oldPub.ID == "" {
		oldPub = old
	}
	if err := o.datesAfterReKey(nq.ID, oldPub, req.Offset, pub); err != nil {
		return nil, err
	}
	o.signer = np.Signer
	o.produced(nq.ID, kmip20.UniqueIdentifierReKeyKeyPairPublicKey)
	o.produced(np.ID, kmip20.UniqueIdentifierReKeyKeyPair, kmip20.UniqueIdentifierReKeyKeyPairPrivateKey)
	o.key = np.ID
	return createKeyPairResponse{PrivateUID: np.ID, PublicUID: nq.ID}, nil
}

// reKeyMeta is the metadata of a replacement key: the old key's KMIP attributes, with the
// template's single-valued attributes replacing and its multi-valued ones (a new Name) added after
// the old instances, as the OASIS re-key test cases expect.
func (s *Server) reKeyMeta(old keymap.Record, t *template) (signer.Meta, error) {
	rec := keymap.Record{Attrs: map[string]string{}}
	for k, v := range old.Attrs {
		if strings.HasPrefix(k, attrPrefix) || strings.HasPrefix(k, customPrefix) {
			rec.Attrs[k] = v
		}
	}
	nameDef := def(kmip14.TagName)
	if err := setStored(&rec, nameDef, nameDef.name, s.stored(old, nameDef, nameDef.name)); err != nil {
		return signer.Meta{}, err
	}
	for _, k := range t.order {
		d, vals := t.defs[k], t.vals[k]
		name := ""
		if d == nil {
			name = "x-" + strings.TrimPrefix(k, customPrefix)
		} else {
			name = d.name
			if d.multi {
				vals = append(s.stored(rec, d, name), vals...)
			}
		}
		if err := setStored(&rec, d, name, vals); err != nil {
			return signer.Meta{}, err
		}
	}
	if err := checkObjectSize(attrBytes(rec.Attrs), attrBytes(old.Attrs)); err != nil {
		return signer.Meta{}, err
	}
	return signer.Meta{Name: rec.Name, Names: names(s.stored(rec, nameDef, nameDef.name)), Attrs: rec.Attrs}, nil
}
