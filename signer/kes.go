package signer

import (
	"bytes"
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

// KES keys are a kind of their own: a KES key name binds only to rows marked with AttrKESName, which
// only the KES API (create, import), rotation (a new version inherits the mark) and the operator's
// explicit `keys share-kes` set. A KMIP object never becomes a KES key by having the same Name, and
// the name a KES key holds is its versions' alone (checkName).
const (
	// AttrKESName is the KES name of a key version (the store enforces one KES key per name with it).
	AttrKESName = keymap.AttrKESName
	// AttrKESHMAC is set on an imported key: the id of the separate, generated HMAC key that serves
	// its hmac route (an import cannot make a companion HMAC key under the same tag).
	AttrKESHMAC = "kes.hmac"
	// AttrKESHMACOf marks such an HMAC key with the id of the imported key it serves.
	AttrKESHMACOf = "kes.hmac-of"
	// AttrKESShared records that the operator shared a KMIP object with KES (keys share-kes).
	AttrKESShared = "kes.shared"
)

// KESKey is every live version of one KES key, oldest first.
type KESKey struct {
	Name     string
	Versions []keymap.Record
}

// isKESVersion: a live AES secret key marked as a KES key version.
func isKESVersion(rec keymap.Record) bool {
	_, named := rec.Attrs[AttrKESName]
	return kesVersion(named, rec.Class, rec.Algorithm, rec.State)
}

// kesVersion is the rule of isKESVersion on a row's fields (a Record's, or a View's in place).
func kesVersion(named bool, class keymap.Class, alg string, st keymap.State) bool {
	return named && class == keymap.SecretKey && alg == AES && LiveState(st)
}

// IsKESVersionOf reports whether rec is a version of the KES key name.
func IsKESVersionOf(rec keymap.Record, name string) bool {
	return isKESVersion(rec) && rec.Attrs[AttrKESName] == name
}

func live(rec keymap.Record) bool { return LiveState(rec.State) }

// LiveState says whether an object in state st still has its key material (it is not destroyed).
func LiveState(st keymap.State) bool {
	return st != keymap.Destroyed && st != keymap.DestroyedCompromised
}

// Current is the version generate and encrypt use: the newest one that has not been replaced, or,
// when every version is marked replaced (its replacement was destroyed), the newest one. A version
// rebuilt or adopted from a token (dated when it was found, owned by nobody) is current only when
// no other is: finding an object on a token must not redirect new data keys.
func (k KESKey) Current() keymap.Record {
	for _, rebuilt := range []bool{false, true} {
		for i := len(k.Versions) - 1; i >= 0; i-- {
			v := k.Versions[i]
			if v.Attrs[AttrReplacement] == "" && (v.Attrs[AttrRebuilt] != "") == rebuilt {
				return v
			}
		}
	}
	return k.Versions[len(k.Versions)-1]
}

// Original is the oldest live version: the key as first made. hmac uses it, so HMACs (from which
// MinIO derives its root credentials) stay the same across rotations.
func (k KESKey) Original() keymap.Record { return k.Versions[0] }

// Version is the version whose token objects carry tag.
func (k KESKey) Version(tag []byte) (keymap.Record, bool) {
	for _, v := range k.Versions {
		if bytes.Equal(v.Tag, tag) {
			return v, true
		}
	}
	return keymap.Record{}, false
}

// kesKey finds the versions of name; ok is false when no KES key has it. Who may use them is decided
// per version, by the operation that uses one.
func (r *Registry) kesKey(name string) (KESKey, bool) { return kesKeyIn(r.km, name) }

func kesKeyIn(km interface{ ByName(string) []keymap.Record }, name string) (KESKey, bool) {
	var vs []keymap.Record
	for _, rec := range km.ByName(name) {
		if IsKESVersionOf(rec, name) {
			vs = append(vs, rec)
		}
	}
	if len(vs) == 0 {
		return KESKey{}, false
	}
	slices.SortFunc(vs, func(a, b keymap.Record) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return KESKey{Name: name, Versions: vs}, true
}

// KESKey is LookupKESKey for callers that need no reason for a miss (tests, tools).
func (r *Registry) KESKey(c Caller, name string) (KESKey, bool) {
	k, ok, err := r.LookupKESKey(c, name)
	return k, ok && err == nil
}

// LookupKESKey returns the KES key name as c may know it: ok is false when there is none, and when c may
// not know of it (another identity's key answers exactly as a missing one). The answer is cached
// until the keymap changes: the hot routes resolve the same few names on every request.
// A name no KES key holds here is looked up again once the store has caught up, as another instance
// may have made it a moment ago. It fails (ErrUnavailable) while the store cannot confirm that its
// rows are current.
func (r *Registry) LookupKESKey(c Caller, name string) (KESKey, bool, error) {
	if err := r.km.Fresh(); err != nil {
		return KESKey{}, false, r.storeErr(err, "KES key %q", name)
	}
	k, ok := r.kesKeys.Get(r.km.Changes(), name, func() (KESKey, bool) { return r.kesKey(name) })
	if !ok || !c.reaches(k.Original()) {
		// Every miss is confirmed against the store, as Access confirms refusals: another instance
		// may have made the key a moment ago, and a name another identity holds then costs what a
		// missing one does, so the time of the answer does not tell them apart.
		if err := r.km.Sync(context.Background()); err != nil {
			return KESKey{}, false, r.storeErr(err, "KES key %q", name)
		}
		k, ok = r.kesKeys.Get(r.km.Changes(), name, func() (KESKey, bool) { return r.kesKey(name) })
	}
	if !ok || !c.reaches(k.Original()) {
		return KESKey{}, false, nil
	}
	return k, true, nil
}

// KESNames returns the names of the KES keys c may know of, in no particular order. It visits the
// rows marked as KES key versions only, in place.
func (r *Registry) KESNames(c Caller) []string {
	r.km.Sync(context.Background()) // best effort: a list may lag, a use may not (LookupKESKey)
	seen := map[string]bool{}
	var out []string
	q := keymap.Query{Attrs: []string{AttrKESName}, Classes: []keymap.Class{keymap.SecretKey}, Algorithms: []string{AES}}
	r.Scan(c, q, func(v keymap.View) bool {
		n, named := v.Attr(AttrKESName)
		if !seen[n] && kesVersion(named, v.Class(), v.Algorithm(), v.State()) {
			seen[n] = true
			out = append(out, n)
		}
		return true
	})
	return out
}

// maxCachedKESKeys bounds the KES keys whose versions the registry caches.
const maxCachedKESKeys = 4096

// lockName serializes the KES operations on one name (create, import, delete, rotate, share) across
// the store's users — the process for the CSV map, every instance of a cluster for PostgreSQL — so
// two creates of one name cannot both see it free. Once held, the store reflects every change made
// under it before. Only the KES functions below take it, never the paths they call.
func (r *Registry) lockName(ctx context.Context, name string) (func(), error) {
	unlock, err := r.km.Lock(ctx, "kes:"+name)
	if err != nil {
		return nil, r.storeErr(err, "KES key %q: lock its name", name)
	}
	return unlock, nil
}

func no() *bool { f := false; return &f }

// errKESExists answers create, import or share of a name that a KES key holds.
var errKESExists = errorf(ErrExists, "a KES key of that name exists")

// CreateKESKey makes the KES key name for c: an AES-256 key and its companion HMAC key where new
// keys go, Active, owned by c. It fails with ErrExists when a KES key holds the name (whoever owns
// it); a KMIP object of the same name does not stand in the way.
func (r *Registry) CreateKESKey(ctx context.Context, c Caller, name string) (keymap.Record, error) {
	// The caller's patterns first: "exists" would tell it of a name it may not know of.
	if err := r.checkNew(c, keymap.Record{Name: name, Attrs: map[string]string{AttrKESName: name}}); err != nil {
		return keymap.Record{}, err
	}
	unlock, err := r.lockName(ctx, name)
	if err != nil {
		return keymap.Record{}, err
	}
	defer unlock()
	if _, exists := r.kesKey(name); exists {
		return keymap.Record{}, errKESExists
	}
	// A KES key never leaves the token, whatever the caller's export right.
	return r.Create(ctx, c, KeySpec{Algorithm: AES, Size: 256, WithHMAC: true}, Meta{
		Name: name, State: keymap.Active, Attrs: map[string]string{AttrKESName: name, AttrBlockMode: ModeGCM}, Extractable: no(), newKES: true,
	})
}

// putKES writes the row of a new KES key with PutNewKES. When the store refuses it (another
// instance wrote a key of the name while this one believed it held the name's lock), the token
// objects just made for it are removed: nobody was told of them.
func (r *Registry) putKES(ctx context.Context, t *Token, rec keymap.Record) error {
	err := r.km.PutNewKES(rec)
	if !errors.Is(err, keymap.ErrExists) {
		return r.storeErr(err, "object %q: write keymap", rec.ID)
	}
	if derr := t.do(ctx, func(sh pkcs11.SessionHandle) error {
		_, err := t.removeTag(sh, rec.Tag)
		return err
	}); derr != nil {
		r.log.Warn("kes: the key made for a name another instance took could not be removed; keys rebuild --dry-run lists it", "key", rec.Name, "tag", hex.EncodeToString(rec.Tag), "err", derr)
	}
	return errKESExists
}

// ImportKESKey stores 32 client bytes as the KES key name (sensitive, not extractable). An import
// cannot add a companion HMAC key under the same tag, so a separate HMAC key is generated and linked
// through AttrKESHMAC (KES, too, gives imported keys a fresh random HMAC key).
func (r *Registry) ImportKESKey(ctx context.Context, c Caller, name string, key []byte) (keymap.Record, error) {
	// The caller's patterns first: "exists" would tell it of a name it may not know of, and no
	// HMAC key is made for a name it may not have.
	if err := r.checkNew(c, keymap.Record{Name: name, Attrs: map[string]string{AttrKESName: name}}); err != nil {
		return keymap.Record{}, err
	}
	unlock, err := r.lockName(ctx, name)
	if err != nil {
		return keymap.Record{}, err
	}
	defer unlock()
	if _, exists := r.kesKey(name); exists {
		return keymap.Record{}, errKESExists
	}
	// Marked at once (the key's id follows), so the caller's key patterns match it by the KES name.
	hm, err := r.Create(ctx, c, KeySpec{Algorithm: HMAC, Size: 256}, Meta{Name: name + ".hmac", State: keymap.Active,
		Attrs: map[string]string{AttrKESHMACOf: ""}, Extractable: no()})
	if err != nil {
		return keymap.Record{}, fmt.Errorf("import key: generate its HMAC key: %w", err)
	}
	rec, err := r.Import(ctx, c, Material{Class: keymap.SecretKey, Algorithm: AES, Secret: key}, Meta{
		Name: name, State: keymap.Active, Attrs: map[string]string{AttrKESName: name, AttrKESHMAC: hm.ID, AttrBlockMode: ModeGCM}, newKES: true,
	}, false, "")
	if err != nil {
		if derr := r.Destroy(ctx, c, hm.ID); derr != nil {
			r.log.Warn("kes: import failed and its HMAC key could not be removed", "key", name, "hmac_key", hm.ID, "err", derr)
		}
		return keymap.Record{}, err
	}
	// The back link only helps operators reading the keymap; the key works without it.
	if _, err := r.Update(c, hm.ID, func(x *keymap.Record) error {
		x.Attrs = withAttr(x.Attrs, AttrKESHMACOf, rec.ID)
		return nil
	}); err != nil {
		r.log.Warn("kes: could not link HMAC key to imported key", "key", name, "hmac_key", hm.ID, "err", err)
	}
	return rec, nil
}

// DeleteKESKey destroys every version of name (and an imported key's HMAC key) in the token. Only the
// key's owner and the admin may; others get ErrNotFound (when they may not know of it) or ErrDenied.
// It calls done with each version before it is destroyed (for the audit record).
func (r *Registry) DeleteKESKey(ctx context.Context, c Caller, name string, done func(keymap.Record)) error {
	unlock, err := r.lockName(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()
	k, exists := r.kesKey(name)
	if !exists || !c.reaches(k.Original()) {
		return errorf(ErrNotFound, "KES key %q does not exist", name)
	}
	now := time.Now()
	for _, v := range k.Versions {
		if err := allow(c, v, factsOf(v), UseManage, now); err != nil {
			return err
		}
	}
	for i := len(k.Versions) - 1; i >= 0; i-- {
		v := k.Versions[i]
		if done != nil {
			done(v)
		}
		if err := r.Destroy(ctx, c, v.ID); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		if hid := v.Attrs[AttrKESHMAC]; hid != "" {
			if err := r.Destroy(ctx, c, hid); err != nil && !errors.Is(err, ErrNotFound) {
				return err
			}
		}
	}
	return nil
}

// RotateKESKey gives the KES key name a new version: a ReKey of its current version, made where new
// keys go now, Active. generate and encrypt use it from then on; older versions still decrypt, and
// hmac keeps using the original version. Only the owner and the admin may rotate.
func (r *Registry) RotateKESKey(ctx context.Context, c Caller, name string) (keymap.Record, error) {
	unlock, err := r.lockName(ctx, name)
	if err != nil {
		return keymap.Record{}, err
	}
	defer unlock()
	k, ok := r.kesKey(name)
	if !ok || !c.reaches(k.Original()) {
		return keymap.Record{}, errorf(ErrNotFound, "KES key %q does not exist", name)
	}
	cur := k.Current()
	// The state is ours to say, else the new version would start Pre-Active.
	return r.reKey(ctx, c, cur.ID, Meta{State: keymap.Active})
}

// ShareKES makes the AES key id, made through KMIP, a KES key of the given name: the operator's
// explicit act (`p11bridge keys share-kes`), never a side effect of a Name. The object keeps its
// owner; its Name becomes name. Fails with ErrExists when a KES key holds the name.
func (r *Registry) ShareKES(c Caller, id, name string) (keymap.Record, error) {
	if !c.Admin {
		return keymap.Record{}, errorf(ErrDenied, "only the operator or the admin may share a key with KES")
	}
	unlock, err := r.lockName(context.Background(), name)
	if err != nil {
		return keymap.Record{}, err
	}
	defer unlock()
	if _, exists := r.kesKey(name); exists {
		return keymap.Record{}, errKESExists
	}
	return r.Update(c, id, func(x *keymap.Record) error {
		if x.Class != keymap.SecretKey || x.Algorithm != AES {
			return errorf(ErrInvalid, "object %q is a %s %s; only AES keys can serve KES", id, x.Algorithm, x.Class)
		}
		if _, ok := x.Attrs[AttrKESName]; ok {
			return errorf(ErrInvalid, "object %q is already a version of KES key %q", id, x.Attrs[AttrKESName])
		}
		if x.Attrs[AttrExportable] != "" {
			// Its material can be read with KMIP Get: every identity KES lets use it could read
			// the key that seals its data keys.
			return errorf(ErrInvalid, "object %q is exportable; a KES key must never leave the token", id)
		}
		x.Attrs = withAttr(x.Attrs, AttrKESName, name)
		x.Attrs[AttrKESShared] = "1"
		// Its names become the KES name alone (a KES version's Name is its KES name).
		delete(x.Attrs, kmipNameAttr)
		x.Name = name
		return nil
	})
}

// kmipNameAttr is where the KMIP front end keeps every instance of an object's Name; without it
// the row's Name is its one name.
const kmipNameAttr = "kmip.Name"

// UnsharedKESCandidates lists the live AES keys of km without the KES mark whose Name is a free KES
// key name: the objects earlier versions let KES use by name, which now need `keys share-kes`.
// valid says whether a name is a valid KES key name.
func UnsharedKESCandidates(km interface {
	Select(keymap.Query, func(keymap.View) bool)
	ByName(string) []keymap.Record
}, valid func(string) bool) []keymap.Record {
	var out []keymap.Record
	km.Select(keymap.Query{Classes: []keymap.Class{keymap.SecretKey}, Algorithms: []string{AES}}, func(v keymap.View) bool {
		if !LiveState(v.State()) || v.Name() == "" || !valid(v.Name()) {
			return true
		}
		if _, marked := v.Attr(AttrKESName); !marked {
			if _, taken := kesKeyIn(km, v.Name()); !taken {
				out = append(out, v.Record())
			}
		}
		return true
	})
	slices.SortFunc(out, func(a, b keymap.Record) int { return strings.Compare(a.ID, b.ID) })
	return out
}
