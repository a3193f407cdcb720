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

// carried are the attributes a replacement inherits: everything but links and token facts.
func carried(attrs map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range attrs {
		if !strings.HasPrefix(k, "link.") && !strings.HasPrefix(k, "p11.") {
			out[k] = v
		}
	}
	return out
}

// ReKey replaces secret key id with a fresh key of the same algorithm and size (and companion HMAC
// key), made where new keys go now (the rollover signer while one is set). The new key takes the
// old one's name and attributes unless meta says otherwise, and both are linked. The old key stays
// usable: KES decrypts old ciphertexts with it while generate uses the new one.
func (r *Registry) ReKey(ctx context.Context, id string, meta Meta) (keymap.Record, error) {
	old, err := r.Get(id)
	if err != nil {
		return keymap.Record{}, err
	}
	if old.Class != keymap.SecretKey || (old.Algorithm != AES && old.Algorithm != HMAC) {
		return keymap.Record{}, errorf(ErrInvalid, "rekey: %q is a %s %s, not a generated secret key", id, old.Algorithm, old.Class)
	}
	if meta.Name == "" {
		meta.Name = old.Name
	}
	if meta.Owner == "" {
		meta.Owner = old.Owner
	}
	attrs := carried(old.Attrs)
	for k, v := range meta.Attrs {
		attrs[k] = v
	}
	attrs[AttrReplaced] = id
	meta.Attrs = attrs
	rec, err := r.Create(ctx, KeySpec{Algorithm: old.Algorithm, Size: old.Size, WithHMAC: old.Attrs[AttrHMACKey] != ""}, meta)
	if err != nil {
		return keymap.Record{}, err
	}
	_, err = r.Update(id, func(o *keymap.Record) error {
		o.Attrs = withAttr(o.Attrs, AttrReplacement, rec.ID)
		return nil
	})
	return rec, err
}

// ReKeyKeyPair replaces the key pair of private key id with a fresh pair of the same algorithm and
// size, linked to the old one like ReKey. It returns the new private and public rows.
func (r *Registry) ReKeyKeyPair(ctx context.Context, id string, priv, pub Meta) (keymap.Record, keymap.Record, error) {
	old, err := r.Get(id)
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
	if priv.Owner == "" {
		priv.Owner = old.Owner
	}
	if pub.Owner == "" {
		pub.Owner = priv.Owner
	}
	pa := carried(old.Attrs)
	for k, v := range priv.Attrs {
		pa[k] = v
	}
	pa[AttrReplaced] = id
	priv.Attrs = pa
	if hasPub {
		qa := carried(oldPub.Attrs)
		for k, v := range pub.Attrs {
			qa[k] = v
		}
		qa[AttrReplaced] = oldPub.ID
		pub.Attrs = qa
	}
	np, nq, err := r.CreateKeyPair(ctx, KeySpec{Algorithm: old.Algorithm, Size: old.Size}, priv, pub)
	if err != nil {
		return keymap.Record{}, keymap.Record{}, err
	}
	if _, err := r.Update(id, func(o *keymap.Record) error {
		o.Attrs = withAttr(o.Attrs, AttrReplacement, np.ID)
		return nil
	}); err != nil {
		return np, nq, err
	}
	if hasPub {
		_, err = r.Update(oldPub.ID, func(o *keymap.Record) error {
			o.Attrs = withAttr(o.Attrs, AttrReplacement, nq.ID)
			return nil
		})
	}
	return np, nq, err
}
