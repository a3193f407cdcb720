package kes

import (
	"bytes"
	"slices"
	"strings"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/signer"
)

// Attributes this package keeps in keymap rows. ReKey carries them to new versions (they are
// neither link. nor p11. attributes).
const (
	// AttrName is the KES name of a key version; it survives a KMIP rename of the row.
	AttrName = "kes.name"
	// AttrHMAC is set on an imported key: the id of the separate, generated HMAC key that serves
	// its hmac route (Import cannot make a companion HMAC key under the same tag).
	AttrHMAC = "kes.hmac"
	// AttrHMACOf marks such an HMAC key with the id of the imported key it serves.
	AttrHMACOf = "kes.hmac-of"
)

// kesKey is every live version of one KES key, oldest first.
type kesKey struct {
	versions []keymap.Record
}

// live reports whether rec can still be used: not destroyed.
func live(rec keymap.Record) bool {
	return rec.State != keymap.Destroyed && rec.State != keymap.DestroyedCompromised
}

// isVersionOf reports whether rec is a version of the KES key name: a live AES secret key whose
// kes.name (or, for keys made through KMIP, whose Name) is name.
func isVersionOf(rec keymap.Record, name string) bool {
	if rec.Class != keymap.SecretKey || rec.Algorithm != signer.AES || !live(rec) {
		return false
	}
	if kn, ok := rec.Attrs[AttrName]; ok {
		return kn == name
	}
	return rec.Name == name
}

// lookup finds the versions of name. ok is false when the key does not exist.
func lookup(reg *signer.Registry, name string) (kesKey, bool) {
	var vs []keymap.Record
	for _, rec := range reg.ByName(name) {
		if isVersionOf(rec, name) {
			vs = append(vs, rec)
		}
	}
	if len(vs) == 0 {
		return kesKey{}, false
	}
	slices.SortFunc(vs, func(a, b keymap.Record) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return kesKey{versions: vs}, true
}

// maxCachedKeys bounds the keys whose versions a Handler caches (keymap.Cache): the hot routes
// resolve the same few names on every request, and each lookup copied every version's row.
const maxCachedKeys = 4096

// version is the version whose token objects carry tag.
func (k kesKey) version(tag []byte) (keymap.Record, bool) {
	for _, v := range k.versions {
		if bytes.Equal(v.Tag, tag) {
			return v, true
		}
	}
	return keymap.Record{}, false
}

// current is the version generate and encrypt use: the newest one that has not been replaced.
// When every version is marked replaced (its replacement was destroyed), the newest one.
func (k kesKey) current() keymap.Record {
	for i := len(k.versions) - 1; i >= 0; i-- {
		if k.versions[i].Attrs[signer.AttrReplacement] == "" {
			return k.versions[i]
		}
	}
	return k.versions[len(k.versions)-1]
}

// original is the oldest live version: the key as first created. hmac uses it, so HMACs (from
// which MinIO derives its root credentials) stay the same across rotations.
func (k kesKey) original() keymap.Record { return k.versions[0] }
