package signer

import (
	"context"
	"strings"

	"github.com/p11bridge/p11bridge/keymap"
)

// Link attributes the registry keeps in keymap rows (front ends map them to KMIP Link).
const (
	AttrReplacement = "link.replacement" // on the old key: the key that replaced it
	AttrReplaced    = "link.replaced"    // on the new key: the key it replaced
	AttrPublicKey   = "link.public"      // on a private key: its public half
	AttrPrivateKey  = "link.private"     // on a public key: its private half
)

// notInherited are the old key's facts a replacement does not take over: it has sealed nothing
// yet, and its life cycle is its own (a replacement of a revoked key must not be born revoked;
// KMIP's ReKey sets its dates anew).
var notInherited = map[string]bool{
	AttrSeals: true, AttrActivationDate: true, AttrDeactivationDate: true, AttrProtectStopDate: true,
	AttrProcessStartDate: true, legacyAttrs[AttrActivationDate]: true, legacyAttrs[AttrDeactivationDate]: true,
	legacyAttrs[AttrProtectStopDate]: true, legacyAttrs[AttrProcessStartDate]: true,
	"kmip.RevocationReason": true, "kmip.CompromiseDate": true, "kmip.CompromiseOccurrenceDate": true,
}

// inherit is what a replacement's attributes are: the old object's, less links and token facts,
// overlaid with the caller's, and linked back to the old object.
func inherit(old keymap.Record, over map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range old.Attrs {
		if !strings.HasPrefix(k, "link.") && !strings.HasPrefix(k, "p11.") && !notInherited[k] {
			out[k] = v
		}
	}
	for k, v := range over {
		out[k] = v
	}
	out[AttrReplaced] = old.ID
	return out
}

// carryExport makes a replacement exportable as the key it replaces was, when c holds the export
// right; without it the replacement stays in the token (a ReKey is no way to an exportable key),
// and asking for one is refused by newExportable. A Sensitive key's replacement is one too.
func carryExport(c Caller, old keymap.Record, meta *Meta) {
	if meta.Extractable == nil {
		ex := old.Attrs[AttrExportable] != "" && c.Export
		meta.Extractable = &ex
	}
	if old.Attrs[AttrWrapOnly] != "" {
		meta.Sensitive = true
	}
}

// ReKey replaces secret key id with a fresh key of the same algorithm and size (and companion HMAC
// key), made where new keys go now (the rollover signer while one is set). The new key takes the
// old one's name and attributes unless meta says otherwise, and both are linked. The old key stays
// usable: KES decrypts old ciphertexts with it while generate uses the new one.
//
// Replacing a key is managing it: only its owner and the admin may. The replacement belongs to the
// old key's owner. A version of a KES key is rotated under the KES key's name lock, as
// RotateKESKey does.
func (r *Registry) ReKey(ctx context.Context, c Caller, id string, meta Meta) (keymap.Record, error) {
	old, err := r.Access(c, id, UseManage)
	if err != nil {
		return keymap.Record{}, err
	}
	if kn, ok := old.Attrs[AttrKESName]; ok {
		unlock, err := r.lockName(ctx, kn)
		if err != nil {
			return keymap.Record{}, err
		}
		defer unlock()
	}
	return r.reKey(ctx, c, id, meta)
}

func (r *Registry) reKey(ctx context.Context, c Caller, id string, meta Meta) (keymap.Record, error) {
	old, err := r.Access(c, id, UseManage)
	if err != nil {
		return keymap.Record{}, err
	}
	if old.Class != keymap.SecretKey || (old.Algorithm != AES && old.Algorithm != HMAC) {
		return keymap.Record{}, errorf(ErrInvalid, "rekey: %q is a %s %s, not a generated secret key", id, old.Algorithm, old.Class)
	}
	if !live(old) {
		return keymap.Record{}, errorf(ErrWrongState, "rekey: object %q is %s", id, stateWord(old.State))
	}
	if meta.Name == "" {
		meta.Name = old.Name
	}
	meta.owner = old.Owner
	meta.Attrs = inherit(old, meta.Attrs)
	carryExport(c, old, &meta)
	rec, err := r.Create(ctx, c, KeySpec{Algorithm: old.Algorithm, Size: old.Size, WithHMAC: old.Attrs[AttrHMACKey] != ""}, meta)
	if err != nil {
		return keymap.Record{}, err
	}
	_, err = r.Update(c, id, func(o *keymap.Record) error {
		o.Attrs = withAttr(o.Attrs, AttrReplacement, rec.ID)
		return nil
	})
	return rec, err
}

// ReKeyKeyPair replaces the key pair of private key id with a fresh pair of the same algorithm and
// size, linked to the old one like ReKey. It returns the new private and public rows.
func (r *Registry) ReKeyKeyPair(ctx context.Context, c Caller, id string, priv, pub Meta) (keymap.Record, keymap.Record, error) {
	old, err := r.Access(c, id, UseManage)
	if err != nil {
		return keymap.Record{}, keymap.Record{}, err
	}
	if old.Class != keymap.PrivateKey {
		return keymap.Record{}, keymap.Record{}, errorf(ErrInvalid, "rekey key pair: %q is a %s, not a private key", id, old.Class)
	}
	oldPub, hasPub := r.km.Get(ObjectID(old.Tag, true))
	if priv.Name == "" {
		priv.Name = old.Name
	}
	if pub.Name == "" && hasPub {
		pub.Name = oldPub.Name
	}
	if !live(old) {
		return keymap.Record{}, keymap.Record{}, errorf(ErrWrongState, "rekey key pair: object %q is %s", id, stateWord(old.State))
	}
	priv.owner, pub.owner = old.Owner, old.Owner
	priv.Attrs = inherit(old, priv.Attrs)
	carryExport(c, old, &priv)
	if hasPub {
		pub.Attrs = inherit(oldPub, pub.Attrs)
	}
	np, nq, err := r.CreateKeyPair(ctx, c, KeySpec{Algorithm: old.Algorithm, Size: old.Size}, priv, pub)
	if err != nil {
		return keymap.Record{}, keymap.Record{}, err
	}
	if _, err := r.Update(c, id, func(o *keymap.Record) error {
		o.Attrs = withAttr(o.Attrs, AttrReplacement, np.ID)
		return nil
	}); err != nil {
		return np, nq, err
	}
	if hasPub {
		_, err = r.Update(c, oldPub.ID, func(o *keymap.Record) error {
			o.Attrs = withAttr(o.Attrs, AttrReplacement, nq.ID)
			return nil
		})
	}
	return np, nq, err
}
