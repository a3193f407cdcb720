package keymap

import (
	"bytes"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ansel1/merry/v2"
)

// Class is the KMIP object type of a record.
type Class string

// The object classes a record may have.
const (
	SecretKey   Class = "secret-key"
	PrivateKey  Class = "private-key"
	PublicKey   Class = "public-key"
	Certificate Class = "certificate"
	SecretData  Class = "secret-data"
	Opaque      Class = "opaque"
)

// Valid reports whether c is one of the known classes.
func (c Class) Valid() bool {
	_, ok := parseClass([]byte(c))
	return ok
}

// parseClass maps bytes to the Class constant so that loading a row
// allocates no string for it.
func parseClass(b []byte) (Class, bool) {
	switch string(b) {
	case string(SecretKey):
		return SecretKey, true
	case string(PrivateKey):
		return PrivateKey, true
	case string(PublicKey):
		return PublicKey, true
	case string(Certificate):
		return Certificate, true
	case string(SecretData):
		return SecretData, true
	case string(Opaque):
		return Opaque, true
	}
	return "", false
}

// State is the KMIP lifecycle state of a record.
type State string

// The lifecycle states a record may have; the empty State means "not set".
const (
	PreActive            State = "pre-active"
	Active               State = "active"
	Deactivated          State = "deactivated"
	Compromised          State = "compromised"
	Destroyed            State = "destroyed"
	DestroyedCompromised State = "destroyed-compromised"
)

// Valid reports whether s is one of the known states (the empty State is not).
func (s State) Valid() bool {
	v, ok := parseState([]byte(s))
	return ok && v != ""
}

func parseState(b []byte) (State, bool) {
	switch string(b) {
	case "":
		return "", true
	case string(PreActive):
		return PreActive, true
	case string(Active):
		return Active, true
	case string(Deactivated):
		return Deactivated, true
	case string(Compromised):
		return Compromised, true
	case string(Destroyed):
		return Destroyed, true
	case string(DestroyedCompromised):
		return DestroyedCompromised, true
	}
	return "", false
}

// MaxTagLen is the longest tag (CKA_ID) a record may carry.
const MaxTagLen = 64

// Record is one managed object (one PKCS#11 object, or a KMIP object).
//
// Records handed out by a Map are deep copies: callers may modify them freely.
type Record struct {
	ID        string            // KMIP Unique Identifier; unique key of the map
	Tag       []byte            // the 20-byte CKA_ID shared by all token objects of one key
	Signer    string            // name of the signer (token) holding it
	Class     Class             // KMIP object type
	Algorithm string            // "AES", "RSA", "EC", "HMAC", "" for data objects
	Size      int               // bits (RSA modulus, AES key, EC field size), 0 if n/a
	KeyID     []byte            // X.509 SubjectKeyIdentifier of the public key, nil if n/a
	Name      string            // primary human name (also CKA_LABEL)
	State     State             // lifecycle state, "" if not set
	Owner     string            // identity (hex) that created it
	Created   time.Time         // creation time
	Updated   time.Time         // time of this row
	Attrs     map[string]string // everything else (front ends store structured values as strings)
}

// Clone returns a deep copy of r: Tag, KeyID and Attrs are not shared.
func (r Record) Clone() Record {
	r.Tag = bytes.Clone(r.Tag)
	r.KeyID = bytes.Clone(r.KeyID)
	r.Attrs = maps.Clone(r.Attrs)
	return r
}

// kv is one attribute of a stored record.
type kv struct{ k, v string }

// stored is the map's own, never modified, copy of a record, laid out for
// memory (a loaded million of them must fit comfortably): tag and key id
// are strings, so they serve as index keys without a copy, and attributes
// are a slice sorted by name rather than a map, a third of the size; every
// reader gets fresh slices and a fresh map anyway.
type stored struct {
	id, signer, alg, name, owner string
	tag, kid                     string
	class                        Class
	state                        State
	size                         int
	created, updated             time.Time
	attrs                        []kv
}

// record returns a deep copy as a Record.
func (s *stored) record() Record {
	r := Record{
		ID: s.id, Signer: s.signer, Class: s.class, Algorithm: s.alg,
		Size: s.size, Name: s.name, State: s.state, Owner: s.owner,
		Created: s.created, Updated: s.updated,
	}
	// Tag and KeyID share one allocation; capped so an append to one
	// cannot overwrite the other.
	lt := len(s.tag)
	b := make([]byte, lt+len(s.kid))
	copy(b, s.tag)
	r.Tag = b[:lt:lt]
	if s.kid != "" {
		copy(b[lt:], s.kid)
		r.KeyID = b[lt:]
	}
	if len(s.attrs) > 0 {
		r.Attrs = make(map[string]string, len(s.attrs))
		for _, a := range s.attrs {
			r.Attrs[a.k] = a.v
		}
	}
	return r
}

// prepare validates r and returns the private, normalised copy that the map
// stores: empty slices become nil and times are UTC without a monotonic
// reading, so a record reads back identically before and after a reopen.
func prepare(r Record, now time.Time) (*stored, error) {
	if r.ID == "" {
		return nil, merry.Wrap(ErrInvalid, merry.AppendMessage("empty id"))
	}
	if len(r.Tag) == 0 || len(r.Tag) > MaxTagLen {
		return nil, merry.Wrap(ErrInvalid, merry.AppendMessagef("tag must be 1 to %d bytes, got %d", MaxTagLen, len(r.Tag)))
	}
	if !r.Class.Valid() {
		return nil, merry.Wrap(ErrInvalid, merry.AppendMessagef("unknown class %q", string(r.Class)))
	}
	if r.State != "" && !r.State.Valid() {
		return nil, merry.Wrap(ErrInvalid, merry.AppendMessagef("unknown state %q", string(r.State)))
	}
	if r.Size < 0 {
		return nil, merry.Wrap(ErrInvalid, merry.AppendMessagef("negative size %d", r.Size))
	}
	// JSON cannot carry invalid UTF-8 without replacing it, which would
	// silently change what the caller stored; refuse it instead.
	var attrs []kv
	if len(r.Attrs) > 0 {
		attrs = make([]kv, 0, len(r.Attrs))
	}
	for k, v := range r.Attrs {
		if !utf8.ValidString(k) {
			return nil, merry.Wrap(ErrInvalid, merry.AppendMessagef("attribute name %q is not valid UTF-8", k))
		}
		if !utf8.ValidString(v) {
			return nil, merry.Wrap(ErrInvalid, merry.AppendMessagef("attribute %q: value is not valid UTF-8", k))
		}
		attrs = append(attrs, kv{k, v})
	}
	slices.SortFunc(attrs, func(a, b kv) int { return strings.Compare(a.k, b.k) })
	created, err := normTime("created", r.Created)
	if err != nil {
		return nil, err
	}
	updated, err := normTime("updated", r.Updated)
	if err != nil {
		return nil, err
	}
	if updated.IsZero() {
		updated = now.UTC()
	}
	return &stored{
		id: r.ID, signer: r.Signer, alg: r.Algorithm, name: r.Name, owner: r.Owner,
		tag: string(r.Tag), kid: string(r.KeyID), class: r.Class, state: r.State, size: r.Size,
		created: created, updated: updated, attrs: attrs,
	}, nil
}

// normTime returns t in UTC; RFC 3339 has four-digit years only.
func normTime(what string, t time.Time) (time.Time, error) {
	if t.IsZero() {
		return time.Time{}, nil
	}
	t = t.UTC()
	if y := t.Year(); y < 0 || y > 9999 {
		return time.Time{}, merry.Wrap(ErrInvalid, merry.AppendMessagef("%s time %v is outside years 0000-9999", what, t))
	}
	return t, nil
}
