package signer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/p11bridge/p11bridge/keymap"
)

// This file is the key model: who may do what with a key, in which state, and with which name. Both
// front ends ask it, through the registry's methods, which take the Caller; neither decides any of
// it itself. docs/guarantees.md ("Who may do what") states the same rules in words.

// Caller is who asks the registry to act on a key, as the server's identities and policies say.
type Caller struct {
	// Identity is the client's identity (hex SHA-256 of its certificate's public key); "" for the
	// operator at the command line.
	Identity string
	// Admin may see, use and manage every key, whoever owns it.
	Admin bool
	// Keys are the name patterns of the caller's policy (exact names, or prefixes ending in '*'):
	// the policy's name space. When set they limit the caller to keys whose names match, and grant
	// it the use (not the management) of matching keys that its policy's other identities or the
	// admin own (Team).
	Keys []string
	// Team says whether owner is the admin or an identity of the caller's policy, whose keys the
	// caller's patterns may grant. Nil: no one's.
	Team func(owner string) bool
	// SHA1 lets the caller sign and verify with SHA-1, which is refused by default.
	SHA1 bool
	// Shares says whether a policy's key patterns grant a key of that name and owner to another
	// identity (nonce.go: client IVs). Nil: no key is shared.
	Shares func(name, owner string) bool
	// ClientIVShared lets the caller choose IVs on keys others use too (nonce.go).
	ClientIVShared bool
	// Quota bounds what the caller keeps (quota.go); the admin has none.
	Quota Quota
	// Reserved says whether another policy's key patterns name a key of that name: such names
	// are that policy's (and the admin's) to give, so no one else can squat a name its identities
	// would use.
	Reserved func(name string) bool
	// Export is the right to make keys that may leave the token (policy `export = true`, and the
	// admin) and to take generated keys out of it (Get, in plain or wrapped): see exportable.
	Export bool
	// Generation names the configuration the caller was made under (0 for the operator): what is
	// derived from a Caller and kept (the KMIP Locate cache) is good only under the same one.
	Generation uint64
}

// Operator is the operator at the command line, and the server acting for itself: every key, owned
// by nobody when it makes one.
var Operator = Caller{Admin: true, SHA1: true, Export: true}

// Use is what a caller wants to do with a key.
type Use uint8

const (
	// UseSee is learning that the key exists and reading its metadata (KMIP GetAttributes, Locate,
	// KES describe and list).
	UseSee Use = iota + 1
	// UseManage is changing its metadata or life cycle, replacing or destroying it.
	UseManage
	// UseEncrypt, UseSign and UseMAC protect data: they need an Active key before its Protect Stop Date.
	UseEncrypt
	UseSign
	UseMAC
	// UseDecrypt, UseVerify and UseMACVerify process protected data: an Active, Deactivated or
	// Compromised key from its Process Start Date on (KMIP 1.4, 3.22).
	UseDecrypt
	UseVerify
	UseMACVerify
	// UseExport is reading the key's material (KMIP Get).
	UseExport
	// UseExportWrapped is taking the key's material out wrapped under another key (KMIP Get with a
	// Key Wrapping Specification): as UseExport, also for a key that may leave the token only
	// wrapped (KMIP Sensitive).
	UseExportWrapped
	// UseWrap is wrapping another key under this one, UseUnwrap unwrapping key material into the
	// token with it, UseDerive deriving a new key from it.
	UseWrap
	UseUnwrap
	UseDerive
)

func (u Use) String() string {
	switch u {
	case UseSee:
		return "see"
	case UseManage:
		return "change"
	case UseEncrypt:
		return "encrypt"
	case UseSign:
		return "sign"
	case UseMAC:
		return "compute MACs"
	case UseDecrypt:
		return "decrypt"
	case UseVerify:
		return "verify"
	case UseMACVerify:
		return "verify MACs"
	case UseExport:
		return "export"
	case UseExportWrapped:
		return "export wrapped"
	case UseWrap:
		return "wrap keys"
	case UseUnwrap:
		return "unwrap keys"
	case UseDerive:
		return "derive keys"
	}
	return "use " + strconv.Itoa(int(u))
}

// Wrapping and deriving make something new with the key, like encrypting; unwrapping processes
// what it protected, like decrypting.
func (u Use) protects() bool {
	return u == UseEncrypt || u == UseSign || u == UseMAC || u == UseWrap || u == UseDerive
}

func (u Use) processes() bool {
	return u == UseDecrypt || u == UseVerify || u == UseMACVerify || u == UseUnwrap
}

// KMIP Cryptographic Usage Mask bits (KMIP 1.4, 9.1.3.3.1), the registry's vocabulary for usage.
const (
	UsageSign       uint32 = 0x1
	UsageVerify     uint32 = 0x2
	UsageEncrypt    uint32 = 0x4
	UsageDecrypt    uint32 = 0x8
	UsageWrapKey    uint32 = 0x10
	UsageUnwrapKey  uint32 = 0x20
	UsageExport     uint32 = 0x40
	UsageMACGen     uint32 = 0x80
	UsageMACVerify  uint32 = 0x100
	UsageDeriveKey  uint32 = 0x200
	usageAnyAllowed uint32 = 0
)

// usageBits are the mask bits of which one allows u; verifying is allowed by the bit that allows
// making what is verified, as KMIP clients set either (and unwrapping by Wrap Key: a KEK
// registered to wrap takes back what it wrapped, as the KMIP 1.4 wrapping test case does).
func (u Use) usageBits() uint32 {
	switch u {
	case UseEncrypt:
		return UsageEncrypt
	case UseDecrypt:
		return UsageDecrypt
	case UseSign:
		return UsageSign
	case UseVerify:
		return UsageVerify | UsageSign
	case UseMAC:
		return UsageMACGen
	case UseMACVerify:
		return UsageMACVerify | UsageMACGen
	case UseWrap:
		return UsageWrapKey
	case UseUnwrap:
		return UsageUnwrapKey | UsageWrapKey
	case UseDerive:
		return UsageDeriveKey
	}
	return usageAnyAllowed
}

// Lifecycle facts the key model decides on. They are the registry's own attributes (KMIP maps its
// attributes of the same meaning to them): the usage mask as decimal, dates as RFC 3339 in UTC.
const (
	AttrUsageMask        = "key.usage"
	AttrActivationDate   = "key.activation-date"
	AttrDeactivationDate = "key.deactivation-date"
	AttrProtectStopDate  = "key.protect-stop-date"
	AttrProcessStartDate = "key.process-start-date"
)

// facts are a row's lifecycle facts, parsed once per row (the row cache keeps them).
type facts struct {
	usage                                            uint32
	hasUsage                                         bool
	activation, deactivation, protectStop, procStart time.Time // zero when not set
}

func factsOf(rec keymap.Record) facts {
	var f facts
	f.usage, f.hasUsage = UsageMask(rec)
	f.activation, _ = Date(rec, AttrActivationDate)
	f.deactivation, _ = Date(rec, AttrDeactivationDate)
	f.protectStop, _ = Date(rec, AttrProtectStopDate)
	f.procStart, _ = Date(rec, AttrProcessStartDate)
	return f
}

// UsageMask is the row's Cryptographic Usage Mask; ok is false when it has none (no restriction).
func UsageMask(rec keymap.Record) (mask uint32, ok bool) {
	if s, set := rec.Attrs[AttrUsageMask]; set {
		v, err := strconv.ParseUint(s, 10, 32)
		return uint32(v), err == nil
	}
	return legacyUsageMask(rec)
}

// Date is one of the row's lifecycle dates (AttrActivationDate, …); ok is false when it is not set.
func Date(rec keymap.Record, attr string) (t time.Time, ok bool) {
	if s, set := rec.Attrs[attr]; set {
		t, err := time.Parse(time.RFC3339Nano, s)
		return t, err == nil
	}
	return legacyDate(rec, attr)
}

// SetUsageMask sets (ok) or removes the usage mask of rec, a row being changed or made.
func SetUsageMask(rec *keymap.Record, mask uint32, ok bool) {
	setFact(rec, AttrUsageMask, strconv.FormatUint(uint64(mask), 10), ok)
}

// SetDate sets (ok) or removes a lifecycle date of rec.
func SetDate(rec *keymap.Record, attr string, t time.Time, ok bool) {
	setFact(rec, attr, t.UTC().Format(time.RFC3339Nano), ok)
}

func setFact(rec *keymap.Record, attr, v string, ok bool) {
	if rec.Attrs == nil {
		rec.Attrs = map[string]string{}
	}
	delete(rec.Attrs, legacyAttrs[attr]) // the registry's own form replaces an older row's
	if ok {
		rec.Attrs[attr] = v
	} else {
		delete(rec.Attrs, attr)
	}
}

// EffectiveState is the state of rec at now: a Pre-Active key whose Activation Date has come is
// Active, an Active one past its Deactivation Date is Deactivated (KMIP's date-driven transitions).
func EffectiveState(rec keymap.Record, now time.Time) keymap.State {
	return factsOf(rec).state(rec.State, now)
}

// EffectiveStateOf is EffectiveState of a row read where the keymap keeps it (KMIP Locate's State
// filter visits many rows): only the two dates that move a state are read, and only for the states
// they move; a row with a date in the form of earlier versions is copied and read as EffectiveState
// reads it.
func EffectiveStateOf(v keymap.View, now time.Time) keymap.State {
	st := v.State()
	if st != "" && st != keymap.PreActive && st != keymap.Active {
		return st
	}
	var f facts
	for _, d := range []struct {
		attr string
		t    *time.Time
	}{{AttrActivationDate, &f.activation}, {AttrDeactivationDate, &f.deactivation}} {
		if s, ok := v.Attr(d.attr); ok {
			if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
				*d.t = t
			}
		} else if _, old := v.Attr(legacyAttrs[d.attr]); old {
			return EffectiveState(v.Record(), now)
		}
	}
	return f.state(st, now)
}

func (f facts) state(st keymap.State, now time.Time) keymap.State {
	if st == "" {
		st = keymap.PreActive
	}
	if st == keymap.PreActive && !f.activation.IsZero() && !f.activation.After(now) {
		st = keymap.Active
	}
	if st == keymap.Active && !f.deactivation.IsZero() && !f.deactivation.After(now) {
		st = keymap.Deactivated
	}
	return st
}

// KeyName is the name the policy `keys` patterns are matched against: a KES key version's KES name
// (also for the separate HMAC key of an imported KES key, named "<name>.hmac"; KES names hold no
// '.'), else the object's Name.
func KeyName(rec keymap.Record) string { return keyName(recRow{&rec}) }

// row is what the visibility rules read of a key: a keymap.Record (recRow), or a keymap.View read
// where the keymap keeps it, so a search decides on every row without copying any.
type row interface {
	Name() string
	Owner() string
	Attr(k string) (string, bool)
}

// recRow is a Record as a row.
type recRow struct{ r *keymap.Record }

func (r recRow) Name() string  { return r.r.Name }
func (r recRow) Owner() string { return r.r.Owner }
func (r recRow) Attr(k string) (string, bool) {
	v, ok := r.r.Attrs[k]
	return v, ok
}

func keyName(r row) string {
	if n, ok := r.Attr(AttrKESName); ok {
		return n
	}
	if _, ok := r.Attr(AttrKESHMACOf); ok {
		return strings.TrimSuffix(r.Name(), ".hmac")
	}
	return r.Name()
}

// MatchKeyPattern is the rule of the `keys` patterns (and of KES path patterns): an exact name, or a
// prefix when the pattern ends in '*'.
func MatchKeyPattern(pattern, name string) bool {
	if p, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(name, p)
	}
	return pattern == name
}

// mayName says whether the caller's patterns allow a key of that name.
func (c Caller) mayName(name string) bool {
	if c.Admin || len(c.Keys) == 0 {
		return true
	}
	for _, p := range c.Keys {
		if MatchKeyPattern(p, name) {
			return true
		}
	}
	return false
}

// owns: the admin, or the identity that made the key. Keys nobody owns (made at the command line,
// rebuilt or adopted from a token) are the admin's alone.
func (c Caller) owns(rec keymap.Record) bool { return c.ownsRow(recRow{&rec}) }

func (c Caller) ownsRow(r row) bool {
	return c.Admin || (r.Owner() != "" && r.Owner() == c.Identity)
}

// reaches says whether the caller may know that rec exists: it owns it, or its patterns name it.
// A caller whose patterns do not name a key does not reach it even when it owns it.
func (c Caller) reaches(rec keymap.Record) bool { return c.reachesRow(recRow{&rec}) }

func (c Caller) reachesRow(r row) bool {
	if c.Admin {
		return true
	}
	if !c.mayName(keyName(r)) {
		return false
	}
	// A pattern grants the keys of the caller's policy and of the admin; never those of identities
	// outside it (which could otherwise plant a key under a granted name), nor a key that belongs to
	// nobody (made at the command line, rebuilt or adopted from a token: the admin's alone).
	owner := r.Owner()
	return c.ownsRow(r) || len(c.Keys) > 0 && owner != "" && c.Team != nil && c.Team(owner)
}

// Sees reports whether the caller may learn that rec exists (Locate, KES list).
func (c Caller) Sees(rec keymap.Record) bool { return c.reaches(rec) }

// narrow adds to q the conditions every row the caller may see meets, so a search visits fewer
// rows; Sees still decides each row. Without key patterns a caller other than the admin reaches
// only the keys it owns (reaches).
func (c Caller) narrow(q keymap.Query) keymap.Query {
	if c.Admin || len(c.Keys) > 0 {
		return q
	}
	if q.Owners == nil || slices.Contains(q.Owners, c.Identity) {
		q.Owners = []string{c.Identity}
	} else {
		q.Owners = []string{} // asks for other owners' keys only: none of them is reached
	}
	return q
}

// StoredStates are the states a row may be stored in to be in state st now (EffectiveState): dates
// turn a Pre-Active key (or one without a state) Active and an Active one Deactivated, so a search
// by state must look at rows stored in the earlier states too.
func StoredStates(st keymap.State) []keymap.State {
	switch st {
	case keymap.PreActive:
		return []keymap.State{"", keymap.PreActive}
	case keymap.Active:
		return []keymap.State{"", keymap.PreActive, keymap.Active}
	case keymap.Deactivated:
		return []keymap.State{"", keymap.PreActive, keymap.Active, keymap.Deactivated}
	}
	return []keymap.State{st}
}

// notFound is the one answer for a missing object and for an object the caller may not know of,
// so identifiers cannot be probed.
func notFound(id string) error { return errorf(ErrNotFound, "no object with identifier %q", id) }

// allow decides whether c may do u with rec at now. The checks run in an order that tells a caller
// nothing it may not know: first whether it may know of the key at all.
func allow(c Caller, rec keymap.Record, f facts, u Use, now time.Time) error {
	if !c.reaches(rec) {
		return notFound(rec.ID)
	}
	switch {
	case u == UseSee:
		return nil
	case u == UseManage:
		if !c.owns(rec) {
			return errorf(ErrDenied, "object %q: only its owner or the admin may change it; this identity may only use it", rec.ID)
		}
		return nil
	case rec.Attrs[AttrDestroying] != "":
		// Only a retry of the destroy (UseManage, above) is left to do with it.
		return errorf(ErrWrongState, "object %q is being destroyed", rec.ID)
	case !live(rec):
		// Its metadata stays (UseSee, UseManage); its material is gone from the token.
		return errorf(ErrWrongState, "object %q is %s: its key material is gone", rec.ID, stateWord(rec.State))
	case u == UseExport || u == UseExportWrapped:
		return c.mayExport(rec, u)
	}
	st := f.state(rec.State, now)
	if u.protects() && st != keymap.Active {
		return errorf(ErrWrongState, "object %q is %s: to %s it must be Active", rec.ID, stateWord(st), u)
	}
	if u.processes() && st != keymap.Active && st != keymap.Deactivated && st != keymap.Compromised {
		return errorf(ErrWrongState, "object %q is %s: to %s it must be Active, Deactivated or Compromised", rec.ID, stateWord(st), u)
	}
	if u.protects() && !f.protectStop.IsZero() && !now.Before(f.protectStop) {
		return errorf(ErrWrongState, "object %q: its Protect Stop Date (%s) has passed; it can no longer %s", rec.ID, f.protectStop.UTC().Format(time.RFC3339), u)
	}
	if u.processes() && !f.procStart.IsZero() && now.Before(f.procStart) {
		return errorf(ErrWrongState, "object %q: its Process Start Date (%s) has not come yet; it cannot %s before", rec.ID, f.procStart.UTC().Format(time.RFC3339), u)
	}
	if bits := u.usageBits(); f.hasUsage && bits != 0 && f.usage&bits == 0 {
		return errorf(ErrUsage, "object %q: its Cryptographic Usage Mask (0x%x) does not allow it to %s", rec.ID, f.usage, u)
	}
	return nil
}

// Exportability of a row (AttrExportable): what a client registered it knew already, and may have
// back; a key generated (or unwrapped, derived, re-keyed) in the token leaves it only when it was
// made exportable under the export right, and only to callers that hold that right.
const (
	ExportRegistered = "1"
	ExportByPolicy   = "policy"
	// AttrWrapOnly marks an exportable key that may leave the token only wrapped under another key
	// (KMIP Sensitive).
	AttrWrapOnly = "p11.wrap-only"
)

// mayExport decides whether c may take rec's material out of the token (u: in plain, or wrapped).
// The export right is asked first: an identity without it is refused every generated key alike,
// whether or not the key could leave, so it learns nothing of which could.
func (c Caller) mayExport(rec keymap.Record, u Use) error {
	switch ex := rec.Attrs[AttrExportable]; {
	case rec.Class == keymap.PublicKey, rec.Class == keymap.Certificate:
		return nil
	case ex == ExportRegistered:
		// Material the registrant knew; earlier versions marked registered objects so.
	case !c.Export:
		return errorf(ErrDenied, "object %q: this identity's policy does not allow keys to leave the token (export)", rec.ID)
	case ex == "":
		return errorf(ErrNotExtractable, "object %q is a %s generated in or locked into the token", rec.ID, rec.Class)
	}
	if u == UseExport && rec.Attrs[AttrWrapOnly] != "" {
		return errorf(ErrNotExtractable, "object %q may leave the token only wrapped under another key (it is Sensitive)", rec.ID)
	}
	return nil
}

// newExportable decides whether a key c makes may leave the token: asked is what the request says
// (KMIP Extractable), nil when it says nothing. Asking for an exportable key takes the export
// right; without a word, a policy's identities get what their right allows, and the admin (whose
// certificate often serves many tools) keeps keys in the token unless it asks.
func (c Caller) newExportable(asked *bool) (bool, error) {
	if asked != nil {
		if *asked && !c.Export {
			return false, errorf(ErrDenied, "this identity's policy does not allow keys that leave the token (export); ask for a non-extractable key")
		}
		return *asked, nil
	}
	return c.Export && !c.Admin, nil
}

func stateWord(st keymap.State) string {
	switch st {
	case keymap.PreActive:
		return "Pre-Active"
	case keymap.Active:
		return "Active"
	case keymap.Deactivated:
		return "Deactivated"
	case keymap.Compromised:
		return "Compromised"
	case keymap.Destroyed:
		return "Destroyed"
	case keymap.DestroyedCompromised:
		return "Destroyed Compromised"
	}
	return string(st)
}

// Access resolves id for c and decides whether c may do u with it now. Another owner's object, and
// one outside the caller's patterns, answer exactly as a missing one.
//
// A refusal is confirmed against the store before it is answered: in a cluster, another instance
// may have just made the change that allows it (an Activate through another instance, then a
// Sign here). Only refusals pay for that; what is allowed is decided from memory, which the store
// keeps within its staleness bound.
func (r *Registry) Access(c Caller, id string, u Use) (keymap.Record, error) {
	if u == UseManage {
		// Management (Destroy, Revoke, attribute changes, ReKey) decides from the row as committed
		// anywhere in the cluster: it is rare, and a front end checks the state it reads here.
		if err := r.km.Sync(context.Background()); err != nil {
			return keymap.Record{}, r.storeErr(err, "object %q", id)
		}
	}
	row, err := r.row(c, id)
	if err != nil {
		return keymap.Record{}, err
	}
	if err := allow(c, row.rec, row.f, u, time.Now()); err != nil {
		if !errors.Is(err, ErrWrongState) && !errors.Is(err, ErrUsage) && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrDenied) ||
			r.km.Sync(context.Background()) != nil {
			return keymap.Record{}, err
		}
		if row, err = r.row(c, id); err != nil {
			return keymap.Record{}, err
		}
		if err := allow(c, row.rec, row.f, u, time.Now()); err != nil {
			return keymap.Record{}, err
		}
	}
	return row.rec, nil
}

// Sync brings the registry's view of the keymap up to every change committed before the call:
// for management reads (Locate, KES list) that must see what another instance just did.
func (r *Registry) Sync(ctx context.Context) error {
	if err := r.km.Sync(ctx); err != nil {
		return r.storeErr(err, "read keymap")
	}
	return nil
}

// Allow decides whether c may do u with rec, a row the caller already holds (Locate filters with
// UseSee).
func (r *Registry) Allow(c Caller, rec keymap.Record, u Use) error {
	return allow(c, rec, factsOf(rec), u, time.Now())
}

// checkNew applies the rules to a row about to be made (or renamed) by c: the caller's patterns
// must allow its name, another policy's name space is not the caller's, and a name that a KES key
// holds is that key's alone — also for the further names a KMIP object may have. The names are
// checked against the store as caught up (syncNames): in a cluster, a KES key of the name may
// have been made through another instance a moment ago.
func (r *Registry) checkNew(c Caller, rec keymap.Record, names ...string) error {
	if err := r.syncNames(rec, names); err != nil {
		return err
	}
	return r.checkNewHeld(c, rec, names...)
}

// nameSyncTimeout bounds the catch-up before a new name is checked.
const nameSyncTimeout = 2 * time.Second

// syncNames catches the store up before rec's names are checked against the KES keys it holds,
// when there is a name to check: a KES version's own name is not (PutNewKES and the name lock
// guard it). The CSV map's Sync costs nothing.
func (r *Registry) syncNames(rec keymap.Record, names []string) error {
	kn, isKES := rec.Attrs[AttrKESName]
	need := rec.Name != "" && !isKES
	for _, n := range names {
		need = need || n != "" && n != kn
	}
	if !need {
		return nil
	}
	return r.syncForNames(fmt.Sprintf("name %q", KeyName(rec)))
}

// syncForNames is the bounded catch-up before a name is checked; what names the request.
func (r *Registry) syncForNames(what string) error {
	ctx, cancel := context.WithTimeout(context.Background(), nameSyncTimeout)
	defer cancel()
	if err := r.km.Sync(ctx); err != nil {
		return r.storeErr(err, "%s: confirm that no KES key holds its name", what)
	}
	return nil
}

// checkNewHeld is checkNew against the rows as this process holds them, for callers that caught up
// already (Update, inside the store's change of the row).
func (r *Registry) checkNewHeld(c Caller, rec keymap.Record, names ...string) error {
	for _, n := range append([]string{rec.Name}, names...) {
		if err := storableName(n); err != nil {
			return err
		}
	}
	name := KeyName(rec)
	if !c.mayName(name) {
		if name == "" {
			return errorf(ErrDenied, "this identity's policy limits it to keys named %s: give the object a Name", strings.Join(c.Keys, ", "))
		}
		return errorf(ErrDenied, "this identity's policy limits it to keys named %s, not %q", strings.Join(c.Keys, ", "), name)
	}
	if !c.Admin && name != "" && c.Reserved != nil && c.Reserved(name) {
		return errorf(ErrDenied, "the name %q is reserved by another policy's keys patterns", name)
	}
	if err := r.checkName(rec); err != nil {
		return err
	}
	return r.CheckNames(rec.ID, rec.Attrs[AttrKESName], names)
}

// MaxNameLen bounds an object's name (CKA_LABEL, keymap Name).
const MaxNameLen = 1024

// storableName refuses a name before any key is made for it that the keymap could not store (on
// PostgreSQL: invalid UTF-8, a NUL byte), which would leave the new token objects orphaned.
func storableName(n string) error {
	switch {
	case len(n) > MaxNameLen:
		return errorf(ErrInvalid, "a name of %d bytes: at most %d", len(n), MaxNameLen)
	case !utf8.ValidString(n):
		return errorf(ErrInvalid, "the name %q is not valid UTF-8", n)
	case strings.ContainsRune(n, 0):
		return errorf(ErrInvalid, "the name %q holds a NUL character", n)
	}
	return nil
}

// CheckNames applies the name rules to every name of object id (KMIP lets an object have several
// Name instances): none may be a name a KES key holds, but for kesName, the KES key id is (or will
// be, for a replacement) a version of.
func (r *Registry) CheckNames(id, kesName string, names []string) error {
	for _, n := range names {
		if n == "" || n == kesName {
			continue
		}
		for _, other := range r.km.ByName(n) {
			if other.ID != id && isKESVersion(other) && other.Attrs[AttrKESName] == n {
				return errorf(ErrInvalid, "the name %q belongs to a KES key; other objects cannot take it", n)
			}
		}
	}
	return nil
}

// checkName keeps names bound: a row that is no version of a KES key may not take a name a KES key
// holds, and a KES key version keeps its KES name as its Name.
func (r *Registry) checkName(rec keymap.Record) error {
	if kn, ok := rec.Attrs[AttrKESName]; ok {
		if rec.Name != kn {
			return errorf(ErrInvalid, "object %q is a version of KES key %q: its Name stays %q", rec.ID, kn, kn)
		}
		return nil
	}
	if rec.Name == "" {
		return nil
	}
	for _, other := range r.km.ByName(rec.Name) {
		if other.ID != rec.ID && isKESVersion(other) && other.Attrs[AttrKESName] == rec.Name {
			return errorf(ErrInvalid, "the name %q belongs to a KES key; other objects cannot take it", rec.Name)
		}
	}
	return nil
}
