package signer

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/p11bridge/p11bridge/keymap"
)

// AttrRebuilt marks a row re-derived from a token rather than written when its key was made.
const AttrRebuilt = "p11.rebuilt"

// tokenObject is what a token says about one object.
type tokenObject struct {
	class, keyType uint
	tag            []byte
	label          string
	valueLen       int
	modulusLen     int
	ecParams       []byte
}

// scanTokenObjects lists the token objects under tag.
func (t *Token) scanTokenObjects(ctx context.Context, tag []byte) ([]tokenObject, error) {
	var objs []tokenObject
	err := t.do(ctx, func(sh pkcs11.SessionHandle) error {
		objs = objs[:0]
		for _, k := range []objKind{{class: ^uint(0)}, kindData} {
			hs, err := t.findAll(sh, tag, k)
			if err != nil {
				return err
			}
			for _, h := range hs {
				o, ok := t.describe(sh, h)
				if ok {
					objs = append(objs, o)
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, classify(err, fmt.Sprintf("signer %q: scan token", t.cfg.Name))
	}
	return objs, nil
}

// describe reads the attributes rebuild needs; attributes a class lacks are simply absent.
func (t *Token) describe(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) (tokenObject, bool) {
	get := func(ty uint) []byte {
		a, err := t.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(ty, nil)})
		if err != nil || len(a) == 0 {
			return nil
		}
		return a[0].Value
	}
	o := tokenObject{class: keyType(get(pkcs11.CKA_CLASS)), label: string(get(pkcs11.CKA_LABEL))}
	if o.class == pkcs11.CKO_DATA {
		tag, ok := dataTag(get(pkcs11.CKA_APPLICATION))
		o.tag = tag
		return o, ok
	}
	o.tag = get(pkcs11.CKA_ID)
	if len(o.tag) != TagSize {
		return o, false // not made by p11bridge
	}
	o.keyType = keyType(get(pkcs11.CKA_KEY_TYPE))
	o.valueLen = int(keyType(get(pkcs11.CKA_VALUE_LEN)))
	o.modulusLen = len(get(pkcs11.CKA_MODULUS)) * 8
	o.ecParams = get(pkcs11.CKA_EC_PARAMS)
	return o, true
}

// derive turns the objects of one tag into keymap rows, as the registry would have written them.
func (r *Registry) derive(ctx context.Context, t *Token, tag []byte, objs []tokenObject) []keymap.Record {
	now := time.Now().UTC()
	var recs []keymap.Record
	mk := func(publicHalf bool, class keymap.Class, alg string, size int, label string) keymap.Record {
		return keymap.Record{ID: ObjectID(tag, publicHalf), Tag: tag, Signer: t.cfg.Name, Class: class, Algorithm: alg, Size: size,
			Name: label, State: keymap.Active, Created: now, Attrs: map[string]string{AttrRebuilt: now.Format(time.RFC3339)}}
	}
	var aes, gen, priv, pub, cert, data *tokenObject
	for i := range objs {
		o := &objs[i]
		switch {
		case o.class == pkcs11.CKO_SECRET_KEY && o.keyType == pkcs11.CKK_AES:
			aes = o
		case o.class == pkcs11.CKO_SECRET_KEY && o.keyType == pkcs11.CKK_GENERIC_SECRET:
			gen = o
		case o.class == pkcs11.CKO_PRIVATE_KEY:
			priv = o
		case o.class == pkcs11.CKO_PUBLIC_KEY:
			pub = o
		case o.class == pkcs11.CKO_CERTIFICATE:
			cert = o
		case o.class == pkcs11.CKO_DATA:
			data = o
		}
	}
	switch {
	case aes != nil:
		rec := mk(false, keymap.SecretKey, AES, aes.valueLen*8, aes.label)
		if gen != nil {
			// Only KES create (and its rotation) makes an AES key with a companion HMAC key under
			// one tag: no KMIP request can, and a label can be set by anyone who may rename. So that
			// fact, not the label, marks a rebuilt KES key (an imported one needs keys share-kes).
			rec.Attrs[AttrHMACKey] = "1"
			if aes.label != "" {
				rec.Attrs[AttrKESName] = aes.label
				rec.Attrs[AttrBlockMode] = ModeGCM
			}
		}
		recs = append(recs, rec)
	case gen != nil:
		recs = append(recs, mk(false, keymap.SecretKey, HMAC, gen.valueLen*8, gen.label))
	}
	if priv != nil || pub != nil {
		half := pub
		if half == nil {
			half = priv
		}
		alg, size := RSA, half.modulusLen
		if half.keyType == pkcs11.CKK_EC {
			alg = EC
			size, _ = curveSize(half.ecParams)
		}
		var kid []byte
		if pk, err := t.publicKey(ctx, tag); err == nil {
			kid, _ = KeyIdentifier(pk)
			if k, ok := pk.(interface{ Size() int }); ok && alg == RSA {
				size = k.Size() * 8
			}
		}
		if priv != nil {
			rec := mk(false, keymap.PrivateKey, alg, size, priv.label)
			rec.KeyID = kid
			if pub != nil {
				rec.Attrs[AttrPublicKey] = ObjectID(tag, true)
			}
			recs = append(recs, rec)
		}
		if pub != nil {
			rec := mk(priv != nil, keymap.PublicKey, alg, size, pub.label)
			rec.KeyID = kid
			if priv != nil {
				rec.Attrs[AttrPrivateKey] = ObjectID(tag, false)
			}
			recs = append(recs, rec)
		}
	}
	if cert != nil {
		rec := mk(false, keymap.Certificate, "", 0, cert.label)
		rec.Attrs[AttrExportable] = "1"
		recs = append(recs, rec)
	}
	if data != nil {
		rec := mk(false, keymap.SecretData, "", 0, data.label)
		rec.Attrs[AttrExportable] = "1"
		recs = append(recs, rec)
	}
	return recs
}

// Rebuild re-derives keymap rows (tag, class, algorithm, size, key identifier, label) for the objects
// on signer's token that the keymap lacks, without touching rows it has. With dryRun nothing is
// written: the rows returned are the token's objects nobody acknowledged (orphans of a crash, or keys
// made by another instance). Rebuilt keys are Active, owned by nobody (so only the admin sees them over
// KMIP) and marked with AttrRebuilt.
func (r *Registry) Rebuild(ctx context.Context, signer string, dryRun bool) ([]keymap.Record, error) {
	t, err := r.Signer(signer)
	if err != nil {
		return nil, err
	}
	// Every object's class and tag first (one attribute read a key, as the index pass does); only
	// the tags whose rows the keymap lacks are read in full (describe).
	objs, err := t.scanKinds(ctx)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(objs, func(a, b kindedObject) int { return strings.Compare(a.tag, b.tag) })
	var out []keymap.Record
	r.recMu.Lock()
	defer r.recMu.Unlock()
	// Rows other instances committed count as present.
	if err := r.km.Sync(ctx); err != nil {
		return nil, r.storeErr(err, "rebuild: read keymap")
	}
	for i := 0; i < len(objs); {
		j := i + 1
		for j < len(objs) && objs[j].tag == objs[i].tag {
			j++
		}
		group := objs[i:j]
		i = j
		tag := []byte(group[0].tag)
		if r.rowsComplete(tag, group) {
			continue
		}
		full, err := t.describeAll(ctx, group)
		if err != nil {
			return out, err
		}
		for _, rec := range r.derive(ctx, t, tag, full) {
			if _, ok := r.km.Get(rec.ID); ok {
				continue
			}
			if !dryRun {
				// PutNew: a row another instance writes meanwhile is kept, not overwritten.
				if err := r.km.PutNew(rec); errors.Is(err, keymap.ErrExists) {
					continue
				} else if err != nil {
					return out, r.storeErr(err, "rebuild: write keymap")
				}
			}
			out = append(out, rec)
		}
	}
	return out, nil
}

// kindedObject is a token object's tag and class, and its handle.
type kindedObject struct {
	tag   string
	class uint
	h     pkcs11.ObjectHandle
}

// dataTag reads the tag of a data object from its CKA_APPLICATION (dataApplication).
func dataTag(app []byte) ([]byte, bool) {
	hexTag, ok := strings.CutPrefix(string(app), "p11bridge:")
	tag, err := hex.DecodeString(hexTag)
	if !ok || err != nil || len(tag) != TagSize {
		return nil, false
	}
	return tag, true
}

// scanKinds lists the token objects that carry a p11bridge tag, with their class.
func (t *Token) scanKinds(ctx context.Context) ([]kindedObject, error) {
	var objs []kindedObject
	err := t.do(ctx, func(sh pkcs11.SessionHandle) error {
		objs = objs[:0]
		hs, err := t.findAll(sh, nil, objKind{class: ^uint(0)})
		if err != nil {
			return err
		}
		for _, h := range hs {
			k, tag, ok, err := t.readKind(sh, h)
			if err != nil {
				return err // a scan that misses objects is no scan
			}
			if ok {
				objs = append(objs, kindedObject{tag: string(tag), class: k.class, h: h})
			}
		}
		return nil
	})
	if err != nil {
		return nil, classify(err, fmt.Sprintf("signer %q: scan token", t.cfg.Name))
	}
	return objs, nil
}

// describeAll reads what derive needs of the objects of one tag.
func (t *Token) describeAll(ctx context.Context, group []kindedObject) ([]tokenObject, error) {
	var out []tokenObject
	err := t.do(ctx, func(sh pkcs11.SessionHandle) error {
		out = out[:0]
		for _, o := range group {
			if d, ok := t.describe(sh, o.h); ok {
				out = append(out, d)
			}
		}
		return nil
	})
	if err != nil {
		return nil, classify(err, fmt.Sprintf("signer %q: scan token", t.cfg.Name))
	}
	return out, nil
}

// rowsComplete says whether the keymap has every row derive would make of a tag's objects: the
// object's row, and for a key pair the public half's as well.
func (r *Registry) rowsComplete(tag []byte, group []kindedObject) bool {
	var priv, pub bool
	for _, o := range group {
		priv = priv || o.class == pkcs11.CKO_PRIVATE_KEY
		pub = pub || o.class == pkcs11.CKO_PUBLIC_KEY
	}
	if _, ok := r.km.Get(ObjectID(tag, false)); !ok {
		return false
	}
	if priv && pub {
		if _, ok := r.km.Get(ObjectID(tag, true)); !ok {
			return false
		}
	}
	return true
}

// adopt looks for an identifier the keymap does not know on every signer's token, and records what
// it finds: several instances in front of one HSM then serve each other's keys.
func (r *Registry) adopt(ctx context.Context, id string) (keymap.Record, bool) {
	tag, _, err := ParseObjectID(id)
	if err != nil || len(tag) != TagSize {
		return keymap.Record{}, false
	}
	// A recent miss is not looked for again, and searches are rate-limited: unknown identifiers
	// (or forged ciphertexts naming random versions) must not turn into a token search each.
	r.missMu.Lock()
	if at, ok := r.misses[id]; ok && time.Since(at) < missTTL {
		r.missMu.Unlock()
		return keymap.Record{}, false
	}
	if !r.searchAllowed(time.Now()) {
		r.missMu.Unlock()
		return keymap.Record{}, false
	}
	r.missMu.Unlock()
	defer func() {
		r.missMu.Lock()
		defer r.missMu.Unlock()
		if _, ok := r.km.Get(id); ok {
			return
		}
		r.rememberMiss(id, time.Now())
	}()
	for _, t := range r.Signers() {
		objs, err := t.scanTokenObjects(ctx, tag)
		if err != nil || len(objs) == 0 {
			continue
		}
		r.recMu.Lock()
		var found keymap.Record
		ok := false
		for _, rec := range r.derive(ctx, t, tag, objs) {
			if _, have := r.km.Get(rec.ID); !have {
				// Another instance may adopt the same object at the same moment: its row wins.
				if err := r.km.PutNew(rec); errors.Is(err, keymap.ErrExists) {
					r.km.Sync(ctx)
				} else if err != nil {
					continue
				}
			}
			if got, have := r.km.Get(rec.ID); have {
				rec = got
			}
			if rec.ID == id {
				found, ok = rec, true
			}
		}
		r.recMu.Unlock()
		if ok {
			r.log.Info("adopted a key found on a token but not in the keymap", "id", id, "signer", t.cfg.Name)
			return found, true
		}
	}
	return keymap.Record{}, false
}

// missTTL and maxMisses bound the memory of identifiers found on no token; searchRate bounds the
// token searches for unknown identifiers per second.
const (
	missTTL    = 30 * time.Second
	maxMisses  = 10000
	searchRate = 20
)

// rememberMiss records a miss; past maxMisses the oldest goes first, so a flood of made-up
// identifiers does not wipe the memory of the others. Needs missMu.
func (r *Registry) rememberMiss(id string, now time.Time) {
	if r.misses == nil {
		r.misses = map[string]time.Time{}
	}
	if _, ok := r.misses[id]; !ok {
		r.missOrder = append(r.missOrder, id)
	}
	r.misses[id] = now
	for len(r.misses) > maxMisses && len(r.missOrder) > 0 {
		delete(r.misses, r.missOrder[0])
		r.missOrder = r.missOrder[1:]
	}
	if cap(r.missOrder) > 4*maxMisses {
		r.missOrder = append([]string(nil), r.missOrder...) // let the consumed front go
	}
}

// searchAllowed takes one of searchRate token searches per second. Needs missMu.
func (r *Registry) searchAllowed(now time.Time) bool {
	if now.Sub(r.searchWindow) >= time.Second {
		r.searchWindow, r.searches = now, 0
	}
	if r.searches >= searchRate {
		return false
	}
	r.searches++
	return true
}
