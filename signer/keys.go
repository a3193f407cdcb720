package signer

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/p11bridge/p11bridge/keymap"
)

// Algorithms the registry generates and imports.
const (
	AES  = "AES"
	HMAC = "HMAC"
	RSA  = "RSA"
	EC   = "EC"
)

// KeySpec says what to generate and, optionally, on which signer (empty: rollover or default).
type KeySpec struct {
	Algorithm string
	// Size is bits: AES 128/192/256, HMAC ≥ 256, RSA 2048/3072/4096, EC 256/384.
	Size   int
	Signer string
	// WithHMAC also generates a generic-secret HMAC key under the same tag (a KES key's hmac).
	WithHMAC bool
}

// Meta is what the caller decides about a new object. Its owner is the caller (Caller.Identity);
// a replacement (ReKey) keeps the owner of the key it replaces.
type Meta struct {
	Name string
	// Names are every name the object will have when the front end keeps several (KMIP Name
	// instances); Name is the first. The registry checks them all (checkNew).
	Names []string
	State keymap.State
	Attrs map[string]string
	// Extractable is what the request says about the key leaving the token (KMIP Extractable);
	// nil when it says nothing (newExportable decides). Sensitive keeps an exportable key to
	// leaving wrapped only (KMIP Sensitive).
	Extractable *bool
	Sensitive   bool
	owner       string
	// newKES: the row is the first version of a new KES key, written with PutNewKES (putKES).
	newKES bool
}

var curveOIDs = map[int]asn1.ObjectIdentifier{
	256: {1, 2, 840, 10045, 3, 1, 7},
	384: {1, 3, 132, 0, 34},
}

var curves = map[int]elliptic.Curve{256: elliptic.P256(), 384: elliptic.P384()}

func (s KeySpec) check(pair bool) error {
	bad := func() error {
		return errorf(ErrInvalid, "unsupported %s key size %d", s.Algorithm, s.Size)
	}
	switch s.Algorithm {
	case AES:
		if pair {
			return errorf(ErrInvalid, "AES is not a key pair algorithm")
		}
		if s.Size != 128 && s.Size != 192 && s.Size != 256 {
			return bad()
		}
	case HMAC:
		if pair {
			return errorf(ErrInvalid, "HMAC is not a key pair algorithm")
		}
		// Tokens refuse CKM_SHA256_HMAC with shorter generic-secret keys; 512 bytes is plenty.
		if s.Size < 256 || s.Size > 4096 || s.Size%8 != 0 {
			return errorf(ErrInvalid, "HMAC key size %d: use 256 to 4096 bits in whole bytes", s.Size)
		}
	case RSA:
		if !pair {
			return errorf(ErrInvalid, "RSA keys are generated as key pairs")
		}
		if s.Size != 2048 && s.Size != 3072 && s.Size != 4096 {
			return bad()
		}
	case EC:
		if !pair {
			return errorf(ErrInvalid, "EC keys are generated as key pairs")
		}
		if curveOIDs[s.Size] == nil {
			return errorf(ErrInvalid, "unsupported EC curve size %d (P-256 or P-384)", s.Size)
		}
	default:
		return errorf(ErrInvalid, "unsupported algorithm %q", s.Algorithm)
	}
	return nil
}

// keyFlags is what a new key's token objects may do beyond their main use: leave the token
// (extractable; sensitive unless the token cannot wrap it out, exportSensitive), and wrap or unwrap
// other keys (from the usage mask's Wrap Key and Unwrap Key bits).
type keyFlags struct {
	exportable, sensitive bool
	wrap, unwrap, derive  bool
}

// flagsFor works out the flags of a new key of c from its metadata; the row's exportability
// follows.
func (t *Token) flagsFor(c Caller, meta *Meta) (keyFlags, error) {
	ex, err := c.newExportable(meta.Extractable)
	if err != nil {
		return keyFlags{}, err
	}
	f := keyFlags{exportable: ex, sensitive: !ex || t.wrapsExports(), derive: true}
	if mask, ok := UsageMask(keymap.Record{Attrs: meta.Attrs}); ok {
		f.wrap, f.unwrap, f.derive = mask&UsageWrapKey != 0, mask&(UsageUnwrapKey|UsageWrapKey) != 0, mask&UsageDeriveKey != 0
	}
	if ex {
		meta.Attrs = withAttr(meta.Attrs, AttrExportable, ExportByPolicy)
		if meta.Sensitive {
			meta.Attrs[AttrWrapOnly] = "1"
		}
	}
	return f, nil
}

// secretTemplate is the template of a generated secret key: on the token, private, sensitive and
// never extractable unless made exportable, with the tag and name set at generation (some HSMs
// cannot set them later).
func secretTemplate(tag []byte, label string, keyType uint, bytes int, f keyFlags) []*pkcs11.Attribute {
	t := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, f.sensitive),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, f.exportable),
		pkcs11.NewAttribute(pkcs11.CKA_ID, tag),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
	if bytes > 0 {
		t = append(t, pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, bytes))
	}
	if keyType == pkcs11.CKK_AES {
		t = append(t, pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true), pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, f.wrap), pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, f.unwrap),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, f.derive))
	} else {
		t = append(t, pkcs11.NewAttribute(pkcs11.CKA_SIGN, true), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true))
	}
	return t
}

// Create generates a secret key (AES or HMAC) for c and records it. Rows reach the keymap (fsync)
// before Create returns; a crash in between leaves an orphan on the token, never a dangling row.
func (r *Registry) Create(ctx context.Context, c Caller, spec KeySpec, meta Meta) (keymap.Record, error) {
	if err := spec.check(false); err != nil {
		return keymap.Record{}, err
	}
	err := r.admitNew(c, &meta)
	if err != nil {
		return keymap.Record{}, err
	}
	t, err := r.target(spec.Signer)
	if err != nil {
		return keymap.Record{}, err
	}
	flags, err := t.flagsFor(c, &meta)
	if err != nil {
		return keymap.Record{}, err
	}
	tag, err := NewTag()
	if err != nil {
		return keymap.Record{}, err
	}
	label := meta.Name
	tries := 0
	var made map[objKind]pkcs11.ObjectHandle
	err = t.do(ctx, func(sh pkcs11.SessionHandle) error {
		if tries++; tries > 1 {
			// A retry on a new session after a failure part way (the HMAC half, say): objects the
			// first try left under this fresh tag would make a second key with the same CKA_ID.
			if err := t.destroyTag(sh, tag); err != nil {
				return err
			}
		}
		var mech uint = pkcs11.CKM_AES_KEY_GEN
		kt := secretKeyType(spec.Algorithm)
		if spec.Algorithm == HMAC {
			mech = pkcs11.CKM_GENERIC_SECRET_KEY_GEN
		}
		h, err := t.ctx.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, secretTemplate(tag, label, kt, spec.Size/8, flags))
		if err != nil {
			return err
		}
		made = map[objKind]pkcs11.ObjectHandle{{class: pkcs11.CKO_SECRET_KEY, keyType: kt}: h}
		if spec.WithHMAC && spec.Algorithm == AES {
			// The companion HMAC key of a KES key never leaves the token, whatever the AES key does.
			hh, err := t.ctx.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, nil)},
				secretTemplate(tag, label, pkcs11.CKK_GENERIC_SECRET, 32, keyFlags{sensitive: true}))
			if err != nil {
				// Half a KES key is no key: leave no orphan behind.
				if derr := t.ctx.DestroyObject(sh, h); derr != nil {
					t.log.Warn("generate: the HMAC half failed and the AES half could not be removed; a retry removes it", "tag", hex.EncodeToString(tag), "err", err, "destroy_err", derr)
				}
				return err
			}
			made[kindHMAC] = hh
		}
		return nil
	})
	if err != nil {
		return keymap.Record{}, classify(err, fmt.Sprintf("signer %q: generate %s-%d", t.cfg.Name, spec.Algorithm, spec.Size))
	}
	// The handles are known: the key's first use searches nothing (on many tokens a search walks
	// every object).
	for k, h := range made {
		t.remember(handleKey{string(tag), k}, h)
	}
	rec := newRecord(tag, false, t.cfg.Name, keymap.SecretKey, spec.Algorithm, spec.Size, nil, meta)
	if spec.WithHMAC {
		rec.Attrs = withAttr(rec.Attrs, AttrHMACKey, "1")
	}
	if meta.newKES {
		return rec, r.putKES(ctx, t, rec)
	}
	return rec, r.put(rec)
}

// own gives a new object's metadata its owner: the caller, unless it replaces a key (the owner of
// the old key then).
func (c Caller) own(m Meta) Meta {
	if m.owner == "" {
		m.owner = c.Identity
	}
	return m
}

// AttrHMACKey marks a secret key that has a companion HMAC key under its tag.
const AttrHMACKey = "p11.hmac"

func withAttr(m map[string]string, k, v string) map[string]string {
	out := make(map[string]string, len(m)+1)
	for a, b := range m {
		out[a] = b
	}
	out[k] = v
	return out
}

func newRecord(tag []byte, publicHalf bool, signer string, class keymap.Class, alg string, size int, kid []byte, meta Meta) keymap.Record {
	now := time.Now().UTC()
	st := meta.State
	if st == "" {
		st = keymap.PreActive
	}
	return keymap.Record{
		ID: ObjectID(tag, publicHalf), Tag: tag, Signer: signer, Class: class, Algorithm: alg, Size: size,
		KeyID: kid, Name: meta.Name, State: st, Owner: meta.owner, Created: now, Attrs: meta.Attrs,
	}
}

// CreateKeyPair generates an RSA or EC key pair for c; both objects carry the same tag, the private
// one sensitive and never extractable. It returns the private and the public rows.
func (r *Registry) CreateKeyPair(ctx context.Context, c Caller, spec KeySpec, priv, pub Meta) (keymap.Record, keymap.Record, error) {
	if err := spec.check(true); err != nil {
		return keymap.Record{}, keymap.Record{}, err
	}
	if err := r.admitNew(c, &priv, &pub); err != nil {
		return keymap.Record{}, keymap.Record{}, err
	}
	t, err := r.target(spec.Signer)
	if err != nil {
		return keymap.Record{}, keymap.Record{}, err
	}
	flags, err := t.flagsFor(c, &priv)
	if err != nil {
		return keymap.Record{}, keymap.Record{}, err
	}
	// The public half wraps (RSA-OAEP) what the private half's usage mask lets it unwrap.
	pubFlags := keyFlags{}
	if mask, ok := UsageMask(keymap.Record{Attrs: pub.Attrs}); ok {
		pubFlags.wrap = mask&UsageWrapKey != 0
	}
	tag, err := NewTag()
	if err != nil {
		return keymap.Record{}, keymap.Record{}, err
	}
	pubT := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ID, tag),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, pub.Name),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
	}
	privT := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, flags.sensitive),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, flags.exportable),
		pkcs11.NewAttribute(pkcs11.CKA_ID, tag),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, priv.Name),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
	}
	var mech uint
	if spec.Algorithm == RSA {
		mech = pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN
		pubT = append(pubT,
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, spec.Size),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, pubFlags.wrap))
		privT = append(privT, pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA), pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, flags.unwrap))
	} else {
		mech = pkcs11.CKM_EC_KEY_PAIR_GEN
		params, _ := asn1.Marshal(curveOIDs[spec.Size])
		pubT = append(pubT, pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC), pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params))
		privT = append(privT, pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC))
	}
	var pubH, privH pkcs11.ObjectHandle
	err = t.do(ctx, func(sh pkcs11.SessionHandle) error {
		var err error
		pubH, privH, err = t.ctx.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, pubT, privT)
		return err
	})
	if err != nil {
		return keymap.Record{}, keymap.Record{}, classify(err, fmt.Sprintf("signer %q: generate %s-%d key pair", t.cfg.Name, spec.Algorithm, spec.Size))
	}
	t.remember(handleKey{string(tag), kindPublic}, pubH)
	t.remember(handleKey{string(tag), kindPrivate}, privH)
	pk, err := t.publicKey(ctx, tag)
	if err != nil {
		return keymap.Record{}, keymap.Record{}, err
	}
	kid, err := KeyIdentifier(pk)
	if err != nil {
		return keymap.Record{}, keymap.Record{}, err
	}
	privRec := newRecord(tag, false, t.cfg.Name, keymap.PrivateKey, spec.Algorithm, spec.Size, kid, priv)
	pubRec := newRecord(tag, true, t.cfg.Name, keymap.PublicKey, spec.Algorithm, spec.Size, kid, pub)
	privRec.Attrs = withAttr(privRec.Attrs, AttrPublicKey, pubRec.ID)
	pubRec.Attrs = withAttr(pubRec.Attrs, AttrPrivateKey, privRec.ID)
	return privRec, pubRec, r.put(privRec, pubRec)
}

// Destroy removes the token objects of id and keeps its metadata as a Destroyed row, for c, who
// must be allowed to manage it. For a secret key this includes the companion HMAC key; for a
// private key without a live public row, the public object under its tag. KMIP Destroy and KES
// delete both end here and leave the same record behind: state Destroyed (Destroyed Compromised
// for a compromised key) with its Destroy Date.
func (r *Registry) Destroy(ctx context.Context, c Caller, id string) error {
	rec, err := r.Access(c, id, UseManage)
	if err != nil {
		return err
	}
	if !live(rec) {
		return errorf(ErrWrongState, "object %q is already %s", id, stateWord(rec.State))
	}
	t, err := r.tokenOf(rec)
	if err != nil {
		return err
	}
	// The intent is on disk before the key material goes: a crash or a failed write after the
	// token objects are gone must not leave a row that looks like a usable key (FinishDestroys).
	if rec.Attrs[AttrDestroying] == "" {
		if err := r.markDestroying(rec.ID); err != nil {
			return err
		}
	}
	var kinds []objKind
	switch rec.Class {
	case keymap.SecretKey:
		kinds = []objKind{kindAnySecet}
	case keymap.PrivateKey:
		kinds = []objKind{kindPrivate}
		if pub, ok := r.km.Get(ObjectID(rec.Tag, true)); !ok || !live(pub) && pub.Attrs[AttrDestroying] == "" {
			kinds = append(kinds, kindPublic)
		}
	case keymap.PublicKey:
		kinds = []objKind{kindPublic}
	case keymap.Certificate:
		kinds = []objKind{kindCert}
	default:
		kinds = []objKind{kindData}
	}
	err = t.do(ctx, func(sh pkcs11.SessionHandle) error {
		for _, k := range kinds {
			hs, err := t.findAll(sh, rec.Tag, k)
			if err != nil {
				return err
			}
			for _, h := range hs {
				if err := t.ctx.DestroyObject(sh, h); err != nil && ckr(err) != pkcs11.CKR_OBJECT_HANDLE_INVALID {
					return err
				}
			}
		}
		return nil
	})
	for _, k := range []objKind{kinds[0], kindAES, kindHMAC, kindPublic} {
		t.forget(rec.Tag, k)
	}
	t.pubs.Delete(string(rec.Tag))
	t.dropCopies(rec.Tag)
	if err != nil {
		return classify(err, fmt.Sprintf("signer %q: destroy %s", t.cfg.Name, id))
	}
	return r.markDestroyed(id)
}

// AttrDestroying marks a row whose Destroy has begun (the time it did): its key may no longer be
// used, and the destroy is finished at the next start (FinishDestroys) if it was cut short.
const AttrDestroying = "p11.destroying"

// AttrDestroyDate is when a Destroyed row's key material was destroyed (RFC 3339, UTC).
const AttrDestroyDate = "key.destroy-date"

// markDestroyed turns the row of id, whose token objects are gone, into its Destroyed record: the
// metadata stays (KMIP GetAttributes answers for it), the state says the material is gone.
func (r *Registry) markDestroyed(id string) error {
	_, err := r.km.Update(id, func(rec *keymap.Record) error {
		now := time.Now()
		if EffectiveState(*rec, now) == keymap.Compromised {
			rec.State = keymap.DestroyedCompromised
		} else {
			rec.State = keymap.Destroyed
		}
		rec.Attrs = withAttr(rec.Attrs, AttrDestroyDate, now.UTC().Format(time.RFC3339Nano))
		delete(rec.Attrs, AttrDestroying)
		rec.Updated = time.Time{}
		return nil
	})
	if errors.Is(err, keymap.ErrNotFound) {
		return notFound(id)
	}
	return r.storeErr(err, "object %q: write keymap", id)
}

// Live says whether rec's key material is still in its token: not Destroyed (rows of earlier
// versions left no row at all for a destroyed key).
func Live(rec keymap.Record) bool { return live(rec) }

func (r *Registry) markDestroying(id string) error {
	_, err := r.km.Update(id, func(rec *keymap.Record) error {
		rec.Attrs = withAttr(rec.Attrs, AttrDestroying, time.Now().UTC().Format(time.RFC3339Nano))
		rec.Updated = time.Time{}
		return nil
	})
	if errors.Is(err, keymap.ErrNotFound) {
		return notFound(id)
	}
	return r.storeErr(err, "object %q: write keymap", id)
}

// HalfDestroyed lists the rows of km whose Destroy began and did not finish (visiting the rows
// marked so only).
func HalfDestroyed(km interface {
	Select(keymap.Query, func(keymap.View) bool)
}) []keymap.Record {
	var out []keymap.Record
	km.Select(keymap.Query{Attrs: []string{AttrDestroying}}, func(v keymap.View) bool {
		if at, _ := v.Attr(AttrDestroying); at != "" {
			out = append(out, v.Record())
		}
		return true
	})
	slices.SortFunc(out, func(a, b keymap.Record) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// destroyGrace: on a store that live instances share (PostgreSQL), a destroy whose intent is
// younger than this may still be under way on another instance, and finishing it here would race
// it. The intent carries the destroying instance's wall-clock time, so the grace also absorbs a
// clock skew between hosts well under it.
const destroyGrace = time.Minute

// FinishDestroys completes the destroys a crash or a fault cut short, as the operator. It returns
// how many it finished and the first error (the rest stay marked, for the next start).
//
// On a shared store it leaves alone the destroys begun less than the grace period ago (another
// live instance may be doing them), and looks at them again once that has passed: what is still
// marked then was cut short.
func (r *Registry) FinishDestroys(ctx context.Context) (int, error) {
	var first error
	n := 0
	shared := r.km.Kind() != "csv"
	var again time.Duration
	for _, rec := range HalfDestroyed(r.km) {
		if since, ok := intentAge(rec); shared && ok && since > -r.destroyGrace && since < r.destroyGrace {
			if wait := r.destroyGrace - since; again == 0 || wait < again {
				again = wait
			}
			r.log.Info("a destroy begun moments ago is left to the instance doing it; it is finished here if it is still marked after the grace period",
				"id", rec.ID, "begun_ago", since.Round(time.Millisecond), "grace", r.destroyGrace)
			continue
		}
		if err := r.Destroy(ctx, Operator, rec.ID); err != nil {
			if first == nil {
				first = err
			}
			continue
		}
		n++
		r.log.Info("finished a destroy that was cut short", "id", rec.ID, "signer", rec.Signer)
	}
	if again > 0 {
		r.finishAfter(again)
	}
	return n, first
}

// intentAge is how long ago rec's destroy began, by its intent's time.
func intentAge(rec keymap.Record) (time.Duration, bool) {
	at, err := time.Parse(time.RFC3339Nano, rec.Attrs[AttrDestroying])
	if err != nil {
		return 0, false
	}
	return time.Since(at), true
}

// finishAfter runs FinishDestroys again after d, unless the registry closes first.
func (r *Registry) finishAfter(d time.Duration) {
	r.finishMu.Lock()
	defer r.finishMu.Unlock()
	if r.finishClosed {
		return
	}
	if r.finishLater != nil {
		r.finishLater.Stop()
	}
	r.finishLater = time.AfterFunc(d, func() {
		r.finishMu.Lock()
		if r.finishClosed {
			r.finishMu.Unlock()
			return
		}
		r.finishing.Add(1)
		r.finishMu.Unlock()
		defer r.finishing.Done()
		if n, err := r.FinishDestroys(context.Background()); err != nil {
			r.log.Warn("a destroy cut short could not be finished yet; the next start tries again", "finished", n, "err", err)
		}
	})
}

// stopFinishing stops finishAfter's timer and waits for a run under way.
func (r *Registry) stopFinishing() {
	r.finishMu.Lock()
	r.finishClosed = true
	if r.finishLater != nil {
		r.finishLater.Stop()
	}
	r.finishMu.Unlock()
	r.finishing.Wait()
}

// destroyTag removes every token object under tag: what a failed generation left of a key nobody
// was told about.
func (t *Token) destroyTag(sh pkcs11.SessionHandle, tag []byte) error {
	n, err := t.removeTag(sh, tag)
	if n > 0 {
		t.log.Warn("generate: removed what a failed try left under a fresh tag before trying again", "tag", hex.EncodeToString(tag), "objects", n)
	}
	return err
}

// removeTag destroys every token object under tag and says how many there were.
func (t *Token) removeTag(sh pkcs11.SessionHandle, tag []byte) (int, error) {
	hs, err := t.findAll(sh, tag, objKind{class: ^uint(0)})
	if err != nil {
		return 0, err
	}
	for _, h := range hs {
		if err := t.ctx.DestroyObject(sh, h); err != nil && ckr(err) != pkcs11.CKR_OBJECT_HANDLE_INVALID {
			return len(hs), err
		}
	}
	return len(hs), nil
}

// ecPublic builds an ECDSA public key from a curve size and an uncompressed point.
func ecPublic(size int, point []byte) (*ecdsa.PublicKey, error) {
	c := curves[size]
	if c == nil {
		return nil, errorf(ErrUnsupported, "EC curve of %d bits", size)
	}
	pk, err := ecdsa.ParseUncompressedPublicKey(c, point)
	if err != nil {
		return nil, errorf(ErrInvalid, "EC point is not on %s: %v", c.Params().Name, err)
	}
	return pk, nil
}

// secretKeyType is the PKCS#11 key type of a secret key of registry algorithm alg (AES or HMAC).
func secretKeyType(alg string) uint {
	if alg == HMAC {
		return pkcs11.CKK_GENERIC_SECRET
	}
	return pkcs11.CKK_AES
}
