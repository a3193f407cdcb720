// Package signer is the registry of named PKCS#11 tokens ("signers") that both front ends share:
// key generation with fresh 20-byte tags, crypto operations inside the tokens, public-key export,
// and the keymap rows that tie each key's tag to its metadata.
package signer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/p11bridge/p11bridge/keymap"
)

// TagSize is the length of the random CKA_ID every object of a key carries.
const TagSize = 20

// pubSuffix marks the public half of a key pair, which shares its private key's tag.
const pubSuffix = "-pub"

// Options is what the registry runs with; Reconfigure swaps it as a whole.
type Options struct {
	Signers  []Config
	Default  string
	Rollover string
	Logger   *slog.Logger
	// NoIndex skips the handle index pass (index.go) of the signers opened: for commands that use
	// a few keys, or scan the token themselves, and exit.
	NoIndex bool
}

type state struct {
	tokens   map[string]*Token
	order    []string
	def      string
	rollover string
}

// Registry is safe for concurrent use. Its configuration is an immutable snapshot replaced
// atomically, so requests in flight finish on the signers they started with.
type Registry struct {
	km    Store
	log   *slog.Logger
	st    atomic.Pointer[state]
	cfgMu sync.Mutex // serializes Reconfigure and Close
	recMu sync.Mutex // serializes Rebuild and adoption in this process

	missMu       sync.Mutex
	misses       map[string]time.Time // identifiers recently found on no token
	missOrder    []string             // misses, oldest first
	searchWindow time.Time            // the second searches counts in
	searches     int

	// rows caches the keymap rows the key operations read, with their lifecycle facts (row).
	rows *keymap.Cache[*keyRow]
	// kesKeys caches the versions of KES key names (KESKey).
	kesKeys *keymap.Cache[KESKey]
	// seals counts GCM seals per key (nonce.go).
	seals sealCounts
	// usage counts what each owner holds, for quotas (quota.go).
	usage usageCounts

	// destroyGrace is how young a destroy's intent FinishDestroys leaves alone on a shared store
	// (keys.go); finishLater is its next look at those, stopped by Close.
	destroyGrace time.Duration
	finishMu     sync.Mutex
	finishLater  *time.Timer
	finishClosed bool
	finishing    sync.WaitGroup
}

// keyRow is a row as the key model reads it: the record and its parsed lifecycle facts. Shared
// through the cache: never modified.
type keyRow struct {
	rec keymap.Record
	f   facts
}

// maxCachedRows bounds rows: the keys in use at once, not all keys.
const maxCachedRows = 4096

// Open opens every configured signer on the keymap store km. It fails, naming each signer that
// could not be opened, unless all open; nothing stays open on failure.
func Open(opts Options, km Store) (*Registry, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	r := &Registry{km: km, log: opts.Logger, rows: keymap.NewCache[*keyRow](maxCachedRows),
		kesKeys: keymap.NewCache[KESKey](maxCachedKESKeys), destroyGrace: destroyGrace}
	if err := r.Reconfigure(opts); err != nil {
		return nil, err
	}
	return r, nil
}

// Reconfigure applies a new signer set: signers whose configuration is unchanged keep their
// sessions; new or changed ones are opened first, and only when all open is the switch made.
func (r *Registry) Reconfigure(opts Options) error {
	if opts.Logger != nil {
		r.log = opts.Logger
	}
	r.cfgMu.Lock()
	defer r.cfgMu.Unlock()
	old := r.st.Load()
	next := &state{tokens: map[string]*Token{}, def: opts.Default, rollover: opts.Rollover}
	var opened []*Token
	var errs []error
	for _, c := range opts.Signers {
		if _, dup := next.tokens[c.Name]; dup {
			errs = append(errs, errorf(ErrConfig, "signer %q configured twice", c.Name))
			continue
		}
		if old != nil {
			if t := old.tokens[c.Name]; t != nil && sameConfig(t.cfg, c) && t.refused() == nil {
				next.tokens[c.Name] = t
				next.order = append(next.order, c.Name)
				continue
			}
		}
		t, err := openToken(c, r.log, !opts.NoIndex)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		opened = append(opened, t)
		next.tokens[c.Name] = t
		next.order = append(next.order, c.Name)
	}
	if next.def == "" && len(next.order) == 1 {
		next.def = next.order[0]
	}
	if _, ok := next.tokens[next.def]; !ok && len(errs) == 0 {
		errs = append(errs, errorf(ErrConfig, "default signer %q is not configured", next.def))
	}
	if next.rollover != "" {
		if _, ok := next.tokens[next.rollover]; !ok && len(errs) == 0 {
			errs = append(errs, errorf(ErrConfig, "rollover signer %q is not configured", next.rollover))
		}
	}
	if len(errs) > 0 {
		for _, t := range opened {
			t.close()
		}
		return errors.Join(errs...)
	}
	r.st.Store(next)
	if old != nil {
		for name, t := range old.tokens {
			if next.tokens[name] != t {
				// In the background: requests that started on the old signer finish on it.
				go t.close()
			}
		}
	}
	return nil
}

func sameConfig(a, b Config) bool {
	slot := func(p *uint) int64 {
		if p == nil {
			return -1
		}
		return int64(*p)
	}
	return a.Name == b.Name && a.Module == b.Module && slot(a.SlotID) == slot(b.SlotID) &&
		a.TokenLabel == b.TokenLabel && a.TokenSerial == b.TokenSerial && a.URI == b.URI &&
		a.PIN == b.PIN && a.MaxSessions == b.MaxSessions && a.SessionTimeout == b.SessionTimeout && a.KeyCopies == b.KeyCopies
}

// Close writes the pending seal counts and ends all sessions of all signers.
func (r *Registry) Close() {
	r.stopFinishing()
	r.flushAllSeals()
	r.cfgMu.Lock()
	defer r.cfgMu.Unlock()
	if st := r.st.Swap(&state{tokens: map[string]*Token{}}); st != nil {
		for _, t := range st.tokens {
			t.close()
		}
	}
}

// Signers lists the configured signers in configuration order.
func (r *Registry) Signers() []*Token {
	st := r.st.Load()
	out := make([]*Token, 0, len(st.order))
	for _, n := range st.order {
		out = append(out, st.tokens[n])
	}
	return out
}

// Default and Rollover name the signers new keys go to.
func (r *Registry) Default() string  { return r.st.Load().def }
func (r *Registry) Rollover() string { return r.st.Load().rollover }

// Signer returns the named signer.
func (r *Registry) Signer(name string) (*Token, error) {
	if t := r.st.Load().tokens[name]; t != nil {
		return t, nil
	}
	return nil, errorf(ErrUnavailable, "signer %q is not configured", name)
}

// target is where a new key goes: an explicit signer, else the rollover signer while one is
// set, else the default.
func (r *Registry) target(explicit string) (*Token, error) {
	st := r.st.Load()
	name := explicit
	if name == "" {
		name = st.rollover
	}
	if name == "" {
		name = st.def
	}
	return r.Signer(name)
}

// NewTag draws a fresh random CKA_ID.
func NewTag() ([]byte, error) {
	tag := make([]byte, TagSize)
	if _, err := rand.Read(tag); err != nil {
		return nil, fmt.Errorf("draw tag: %w", err)
	}
	return tag, nil
}

// ObjectID is the KMIP unique identifier of an object: the hex tag, and for the public half of a
// key pair the tag with a suffix. Any instance that sees the token can derive it again.
func ObjectID(tag []byte, publicHalf bool) string {
	id := hex.EncodeToString(tag)
	if publicHalf {
		id += pubSuffix
	}
	return id
}

// ParseObjectID recovers the tag from an identifier made by ObjectID.
func ParseObjectID(id string) (tag []byte, publicHalf bool, err error) {
	s, publicHalf := strings.CutSuffix(id, pubSuffix)
	tag, err = hex.DecodeString(s)
	if err != nil || len(tag) == 0 || len(tag) > 64 {
		return nil, false, errorf(ErrNotFound, "no object with identifier %q", id)
	}
	return tag, publicHalf, nil
}

// Get returns the keymap row of id, for the operator and the registry itself: front ends ask
// Access, which decides what the caller may know. An identifier the keymap lacks is looked for on
// the tokens (see adopt), so instances sharing an HSM resolve each other's keys.
func (r *Registry) Get(id string) (keymap.Record, error) {
	rec, ok := r.km.Get(id)
	if !ok {
		// Made a moment ago by another instance, and not yet here through the change feed?
		if err := r.km.Sync(context.Background()); err != nil {
			return keymap.Record{}, r.storeErr(err, "object %q", id)
		}
		rec, ok = r.km.Get(id)
	}
	if !ok {
		if rec, ok = r.adopt(context.Background(), id); !ok {
			return keymap.Record{}, notFound(id)
		}
	}
	return rec, nil
}

// row is Get through the row cache, with the row's lifecycle facts, for c. Only the admin's lookups
// look for an unknown identifier on the tokens (adopt): an adopted row belongs to nobody, so nobody
// else could use it, and a token search that only a missing identifier costs would tell a prober
// a missing object from another owner's. It fails while the store cannot confirm that its rows are
// current (a cluster instance that lost its change feed), so that a key revoked elsewhere is not
// used here.
func (r *Registry) row(c Caller, id string) (*keyRow, error) {
	if err := r.km.Fresh(); err != nil {
		return nil, r.storeErr(err, "object %q", id)
	}
	row, ok := r.rows.Get(r.km.Changes(), id, func() (*keyRow, bool) {
		rec, ok := r.km.Get(id)
		if !ok {
			return nil, false
		}
		return &keyRow{rec: rec, f: factsOf(rec)}, true
	})
	if ok {
		return row, nil
	}
	if !c.Admin {
		// Made a moment ago through another instance of a cluster? One catch-up, as a refusal of
		// another owner's object costs one too (Access), so the two still cost the same.
		if err := r.km.Sync(context.Background()); err != nil {
			return nil, r.storeErr(err, "object %q", id)
		}
		if rec, ok := r.km.Get(id); ok {
			return &keyRow{rec: rec, f: factsOf(rec)}, nil
		}
		return nil, notFound(id)
	}
	rec, err := r.Get(id) // an identifier the keymap lacks may be adopted
	if err != nil {
		return nil, err
	}
	return &keyRow{rec: rec, f: factsOf(rec)}, nil
}

// Changes counts the keymap's changes: a cache of rows is good while it stays the same.
func (r *Registry) Changes() uint64 { return r.km.Changes() }

// ByName returns the rows named name, Destroyed ones included.
func (r *Registry) ByName(name string) []keymap.Record { return r.km.ByName(name) }

// ByKeyID returns the rows whose public key has that X.509 key identifier.
func (r *Registry) ByKeyID(kid []byte) []keymap.Record { return r.km.ByKeyID(kid) }

// Range visits every row in identifier order until fn returns false.
func (r *Registry) Range(fn func(keymap.Record) bool) { r.km.Range(fn) }

// Select calls fn with each row matching q (keymap.Select: in place, in no particular order,
// visiting the rows filed under q's most selective condition) until fn returns false.
func (r *Registry) Select(q keymap.Query, fn func(keymap.View) bool) { r.km.Select(q, fn) }

// Update changes the metadata of id (state, names, attributes) for c, who must be allowed to manage
// it, and persists it before returning. fn must not change the fields that bind the row to the
// token (ID, Tag, Signer, Class), nor, unless c is the admin, its owner or KES mark; a new name
// must be one c may give and no KES key holds.
//
// The change is atomic across the cluster: the store runs it on the row as last committed (and,
// when another change of the row commits first, again on the newer row), so no change is lost and
// the rules are decided on the row the change is made to. fn must therefore decide from the row it
// is given alone.
func (r *Registry) Update(c Caller, id string, fn func(*keymap.Record) error) (keymap.Record, error) {
	if err := r.km.Fresh(); err != nil {
		return keymap.Record{}, r.storeErr(err, "object %q", id)
	}
	var renamed, synced bool
	// ruled is the closure's own refusal (the rules', or fn's, in the caller's vocabulary), which
	// goes back as it is; anything else is the store's.
	var ruled error
	update := func() (keymap.Record, error) {
		return r.km.Update(id, func(rec *keymap.Record) error {
			ruled = r.changeRow(c, id, rec, fn, &renamed, synced)
			return ruled
		})
	}
	rec, err := update()
	if err != nil && err == errSyncNames {
		// A new name is checked against the store as caught up, which cannot be done from inside
		// the store's change of the row (on PostgreSQL it may hold a connection and the write
		// lock): catch up, then change the row again.
		if err := r.syncForNames(fmt.Sprintf("object %q", id)); err != nil {
			return keymap.Record{}, err
		}
		synced = true
		rec, err = update()
	}
	switch {
	case err != nil && err == ruled:
		return keymap.Record{}, err
	case errors.Is(err, keymap.ErrNotFound):
		return keymap.Record{}, notFound(id)
	case err != nil:
		return keymap.Record{}, r.storeErr(err, "object %q: write keymap", id)
	}
	if renamed {
		r.relabel(rec)
	}
	return rec, nil
}

// errSyncNames is changeRow asking Update to catch up before a new name is checked.
var errSyncNames = errors.New("catch up before checking a new name")

// changeRow applies fn to rec for c under the rules of Update. A new name is checked only once
// the store has caught up (synced); before, changeRow asks for it with errSyncNames.
func (r *Registry) changeRow(c Caller, id string, rec *keymap.Record, fn func(*keymap.Record) error, renamed *bool, synced bool) error {
	if err := allow(c, *rec, factsOf(*rec), UseManage, time.Now()); err != nil {
		return err
	}
	old := rec.Clone()
	fixed := [4]string{rec.ID, string(rec.Tag), rec.Signer, string(rec.Class)}
	if err := fn(rec); err != nil {
		return err
	}
	if fixed != [4]string{rec.ID, string(rec.Tag), rec.Signer, string(rec.Class)} {
		return errorf(ErrInvalid, "object %q: identity fields cannot change", id)
	}
	if !c.Admin && (rec.Owner != old.Owner || rec.Attrs[AttrKESName] != old.Attrs[AttrKESName]) {
		return errorf(ErrDenied, "object %q: its owner, KES name and exportability are not the caller's to change", id)
	}
	if rec.Attrs[AttrExportable] != old.Attrs[AttrExportable] || rec.Attrs[AttrWrapOnly] != old.Attrs[AttrWrapOnly] ||
		rec.Attrs[AttrDestroyDate] != old.Attrs[AttrDestroyDate] || live(*rec) != live(old) {
		// Fixed when the key is made (its token objects say the same), and a destroy is the
		// registry's own: nobody, the admin included, changes them afterwards.
		return errorf(ErrDenied, "object %q: its exportability and destruction are not the caller's to change", id)
	}
	*renamed = rec.Name != old.Name
	if *renamed || rec.Attrs[AttrKESName] != old.Attrs[AttrKESName] {
		if !synced {
			return errSyncNames
		}
		if err := r.checkNewHeld(c, *rec); err != nil {
			return err
		}
	}
	if grow := attrBytes(rec.Name, rec.Attrs) - attrBytes(old.Name, old.Attrs); grow > 0 && rec.Owner != "" {
		// Counted against the object's owner, whoever changes it; after the name's check, which
		// may ask for a catch-up and a second run (errSyncNames), so that it is counted once.
		if err := r.takeQuota(Caller{Identity: rec.Owner, Quota: c.Quota, Admin: c.Admin && rec.Owner == c.Identity}, ownerUsage{attrBytes: grow}); err != nil {
			return err
		}
	}
	rec.Updated = time.Time{}
	return nil
}

// relabel carries a new name to CKA_LABEL, so the token (and a rebuild from it) shows the current
// name. It is best effort: some HSMs fix attributes at creation, and the keymap holds the name anyway.
func (r *Registry) relabel(rec keymap.Record) {
	t, err := r.Signer(rec.Signer)
	if err != nil {
		return
	}
	k := kindForClass(rec)
	err = t.withKey(context.Background(), rec.Tag, k, func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		return t.ctx.SetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, rec.Name)})
	})
	if err != nil {
		r.log.Debug("token keeps the old label", "id", rec.ID, "signer", rec.Signer, "err", err)
	}
}

// put persists new rows; callers answer clients only after it returns.
func (r *Registry) put(recs ...keymap.Record) error {
	for _, rec := range recs {
		if err := r.km.Put(rec); err != nil {
			return r.storeErr(err, "object %q: write keymap", rec.ID)
		}
	}
	return nil
}

// tokenOf is the signer that holds rec.
func (r *Registry) tokenOf(rec keymap.Record) (*Token, error) {
	t, err := r.Signer(rec.Signer)
	if err != nil {
		return nil, errorf(ErrUnavailable, "object %q lives on signer %q, which is not configured", rec.ID, rec.Signer)
	}
	return t, nil
}

// Counts is how many objects a signer holds per state (Destroyed ones keep their metadata).
type Counts map[keymap.State]int

// Census counts the rows of each signer by state: what still depends on each token.
func (r *Registry) Census() map[string]Counts {
	out := map[string]Counts{}
	for sg, c := range r.km.Census() {
		out[sg] = c
	}
	return out
}

// Exportable lists, per signer, the live objects whose material may leave the token (secret and
// private keys, secret data and opaque objects marked exportable), in identifier order.
func (r *Registry) Exportable() map[string][]string {
	out := map[string][]string{}
	// The rows marked exportable only (an index by attribute name), not every row.
	r.km.Select(keymap.Query{Attrs: []string{AttrExportable}}, func(v keymap.View) bool {
		if IsExportableView(v) {
			out[v.Signer()] = append(out[v.Signer()], v.ID())
		}
		return true
	})
	for _, ids := range out {
		slices.Sort(ids)
	}
	return out
}

// IsExportable says whether rec is a live object whose secret material may leave its token (to a
// caller the key model allows): not a public key or certificate, which always may.
func IsExportable(rec keymap.Record) bool {
	return exportable(rec.State, rec.Class, rec.Attrs[AttrExportable])
}

// IsExportableView is IsExportable on a row read in place.
func IsExportableView(v keymap.View) bool {
	mark, _ := v.Attr(AttrExportable)
	return exportable(v.State(), v.Class(), mark)
}

func exportable(st keymap.State, class keymap.Class, mark string) bool {
	return LiveState(st) && mark != "" && class != keymap.PublicKey && class != keymap.Certificate
}
