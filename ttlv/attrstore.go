package ttlv

import (
	"encoding/json"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ansel1/merry/v2"
	"github.com/gemalto/kmip-go/kmip14"
	tt "github.com/gemalto/kmip-go/ttlv"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/signer"
)

// KMIP attributes that a keymap row has no field for live in Record.Attrs: standard ones under
// "kmip.<TagName>", custom "x-name" ones under "x.name". Each value is a JSON array of instances in
// the KMIP JSON encoding (index i = attribute index i; null = a deleted instance, so later indexes
// keep their numbers). The registry's own "p11." and "link." keys are never written here.
const (
	attrPrefix   = "kmip."
	customPrefix = "x."
	// moreNames marks a row with more than one live Name instance: the keymap indexes the first
	// (the row's Name) only, so a Locate by Name looks at the marked rows besides those the name
	// index gives.
	moreNames = attrPrefix + "Name+"
)

func storeKey(d *attrDef, name string) string {
	if d == nil {
		return customPrefix + strings.TrimPrefix(name, "x-")
	}
	return d.key
}

// encodeValues renders attribute instances as a JSON array (attrjson.go), in time linear in their
// size whatever their depth.
func encodeValues(tag tt.Tag, vals []*node) (string, error) {
	for len(vals) > 0 && vals[len(vals)-1] == nil {
		vals = vals[:len(vals)-1]
	}
	dst := make([]byte, 0, 64*len(vals)+2)
	dst = append(dst, '[')
	for i, v := range vals {
		if i > 0 {
			dst = append(dst, ',')
		}
		if v == nil {
			dst = append(dst, "null"...)
			continue
		}
		var err error
		if dst, err = appendJSON(dst, retag(v, tag)); err != nil {
			return "", merry.Prependf(err, "store attribute %s", tagName(tag))
		}
	}
	return string(append(dst, ']')), nil
}

// decodeValues reads what encodeValues wrote, and what earlier versions wrote.
func decodeValues(s string) ([]*node, error) {
	var parts []any
	if err := json.Unmarshal([]byte(s), &parts); err != nil {
		return nil, err
	}
	out := make([]*node, len(parts))
	for i, p := range parts {
		if p == nil {
			continue
		}
		n, err := nodeFromJSON(p, 0, 0)
		if err != nil {
			return nil, err
		}
		out[i] = n
	}
	return out, nil
}

// stored returns the stored instances of an attribute (nil entries are deleted instances).
func (s *Server) stored(rec keymap.Record, d *attrDef, name string) []*node {
	if d != nil && d.fact != "" {
		if n := factNode(rec, d); n != nil {
			return []*node{n}
		}
		return nil
	}
	raw, ok := rec.Attrs[storeKey(d, name)]
	return s.storedValues(rec.ID, rec.Name, d, name, raw, ok)
}

// storedValues decodes raw, the stored form of an attribute that is no fact (ok: the row has
// it), of the row id named recName.
func (s *Server) storedValues(id, recName string, d *attrDef, name, raw string, ok bool) []*node {
	if !ok {
		if d == def(kmip14.TagName) && recName != "" {
			// Objects made outside KMIP (KES, the CLI) have only the keymap's name.
			return []*node{encodeStruct(kmip14.TagName, kName{Value: recName, Type: uint32(kmip14.NameTypeUninterpretedTextString)})}
		}
		return nil
	}
	vals, err := decodeValues(raw)
	if err != nil {
		s.log.Error("kmip: stored attribute does not decode; ignoring it", "key", id, "attribute", name, "err", err)
		return nil
	}
	return vals
}

// markFurtherNames gives the mark moreNames to the rows with further Name instances that earlier
// versions stored without it, so that Locate finds them by those names too. Only rows stored
// that way are written, once.
func (s *Server) markFurtherNames() {
	key := def(kmip14.TagName).key
	var ids []string
	s.reg.Scan(signer.Operator, keymap.Query{Attrs: []string{key}}, func(v keymap.View) bool {
		raw, _ := v.Attr(key)
		// Every live instance names its NameValue once; deleted ones are null. A value that
		// happens to contain the word only costs a mark too many, which Locate tolerates.
		if _, marked := v.Attr(moreNames); !marked && strings.Count(raw, "NameValue") > 1 {
			ids = append(ids, v.ID())
		}
		return true
	})
	for _, id := range ids {
		_, err := s.reg.Update(signer.Operator, id, func(rec *keymap.Record) error {
			rec.Attrs[moreNames] = "1"
			return nil
		})
		if err != nil {
			s.log.Warn("kmip: could not mark an object's further names; Locate may not find it by them", "id", id, "err", err)
		}
	}
}

// factNode reads an attribute the registry keeps in its own form.
func factNode(rec keymap.Record, d *attrDef) *node {
	if d.tag == kmip14.TagCryptographicUsageMask {
		if m, ok := signer.UsageMask(rec); ok {
			return newInt(d.tag, int32(m))
		}
		return nil
	}
	if t, ok := signer.Date(rec, d.fact); ok {
		return newDateTime(d.tag, t)
	}
	return nil
}

// storedChange is the new state of one attribute of a row, computed — decoded, changed, checked and
// encoded — before Registry.Update is called: apply only assigns. Update runs its function with the
// row locked (and on PostgreSQL runs it again after a concurrent change), so nothing that costs
// time in the size of a value may happen there.
type storedChange struct {
	key  string // the Record.Attrs key; "" for a fact
	val  string // the encoded instances; "" deletes the key
	size int    // bytes the key and value take in the row (0 when deleted)
	// fact sets an attribute the registry keeps in its own form (usage mask, lifecycle dates).
	fact func(*keymap.Record)
	// name, for the Name attribute, is the keymap's Name afterwards: the first live instance's;
	// more says whether further live instances follow it (moreNames).
	name    string
	setName bool
	more    bool
}

// storeHook, when set (tests), is called as prepareStored starts, with the attribute's name.
var storeHook atomic.Pointer[func(name string)]

// prepareStored computes the change that stores vals (nil entries are deleted instances) as the
// instances of an attribute.
func prepareStored(d *attrDef, name string, vals []*node) (storedChange, error) {
	if h := storeHook.Load(); h != nil {
		(*h)(name)
	}
	if d != nil && d.fact != "" {
		return factChange(d, vals)
	}
	c := storedChange{key: storeKey(d, name)}
	tag := kmip14.TagAttributeValue
	if d != nil {
		tag = d.tag
	}
	var first *node
	live := 0
	for _, v := range vals {
		if v != nil {
			if first == nil {
				first = v
			}
			live++
		}
	}
	if first != nil {
		s, err := encodeValues(tag, vals)
		if err != nil {
			return storedChange{}, err
		}
		c.val, c.size = s, len(c.key)+len(s)
	}
	if d == def(kmip14.TagName) {
		// The keymap's Name (CKA_LABEL, name lookups) follows the first live instance.
		c.setName, c.more = true, live > 1
		var nm kName
		if first != nil && decodeStruct(first, &nm) == nil {
			c.name = nm.Value
		}
	}
	return c, nil
}

// factChange writes an attribute the registry keeps in its own form (single-valued: the first live
// instance, or none). Dates are kept as RFC 3339, which has four-digit years.
func factChange(d *attrDef, vals []*node) (storedChange, error) {
	var v *node
	for _, x := range vals {
		if x != nil {
			v = x
			break
		}
	}
	if d.tag == kmip14.TagCryptographicUsageMask {
		var m uint32
		if v != nil {
			m = v.u32()
		}
		return storedChange{fact: func(r *keymap.Record) { signer.SetUsageMask(r, m, v != nil) }}, nil
	}
	var t time.Time
	if v != nil {
		t = v.dateTime()
		if y := t.UTC().Year(); y < 0 || y > 9999 {
			return storedChange{}, kerr(rInvalidField, "attribute %q: %s is outside the years 0000 to 9999", d.name, t.UTC())
		}
	}
	return storedChange{fact: func(r *keymap.Record) { signer.SetDate(r, d.fact, t, v != nil) }}, nil
}

// apply makes the change in rec (a clone being updated, or a row being made).
func (c storedChange) apply(rec *keymap.Record) {
	if c.fact != nil {
		c.fact(rec)
		return
	}
	if rec.Attrs == nil {
		rec.Attrs = map[string]string{}
	}
	if c.val == "" {
		delete(rec.Attrs, c.key)
	} else {
		rec.Attrs[c.key] = c.val
	}
	if c.setName {
		rec.Name = c.name
		if c.more {
			rec.Attrs[moreNames] = "1"
		} else {
			delete(rec.Attrs, moreNames)
		}
	}
}

// setStored replaces the stored instances of an attribute in rec, a row not yet shared (a new
// object's metadata): inside a registry update, prepare the change first and apply it there.
func setStored(rec *keymap.Record, d *attrDef, name string, vals []*node) error {
	c, err := prepareStored(d, name, vals)
	if err != nil {
		return err
	}
	c.apply(rec)
	return nil
}

// firstCache maps the stored JSON of a single-valued attribute to its first instance (nil when it
// has none). Crypto operations read the usage mask and dates of their key on every request, and
// decoding the JSON each time was a tenth of the server's CPU for a 32-byte AES-GCM Encrypt. The
// cache is keyed by the stored text itself, so an updated attribute is simply a new key and
// nothing can be stale. Cached nodes are shared and never modified.
var firstCache struct {
	m sync.Map // string → *node
	n atomic.Int32
}

// firstCacheMax bounds the cache: dates differ per object, and past this many distinct values it
// starts over rather than grow with the number of keys.
const firstCacheMax = 8192

// storedFirst returns the first stored instance of a single-valued attribute, or nil.
func (s *Server) storedFirst(rec keymap.Record, tag tt.Tag) *node {
	d := def(tag)
	if d.fact != "" {
		return factNode(rec, d)
	}
	raw, ok := rec.Attrs[storeKey(d, "")]
	if !ok {
		return nil
	}
	return s.firstOf(rec.ID, d, raw)
}

// firstOf is the first instance of the stored value raw of attribute d, decoded once per distinct
// value (firstCache).
func (s *Server) firstOf(id string, d *attrDef, raw string) *node {
	if n, ok := firstCache.m.Load(raw); ok {
		return n.(*node)
	}
	vals, err := decodeValues(raw)
	if err != nil {
		// Not remembered: it is logged each time, as stored does.
		s.log.Error("kmip: stored attribute does not decode; ignoring it", "key", id, "attribute", d.name, "err", err)
		return nil
	}
	var first *node
	if len(vals) > 0 {
		first = vals[0]
	}
	if firstCache.n.Add(1) > firstCacheMax {
		firstCache.m.Clear()
		firstCache.n.Store(1)
	}
	firstCache.m.Store(raw, first)
	return first
}

// storedDate reads a single-valued DateTime attribute.
func (s *Server) storedDate(rec keymap.Record, tag tt.Tag) (time.Time, bool) {
	n := s.storedFirst(rec, tag)
	if n == nil || n.Type != tt.TypeDateTime {
		return time.Time{}, false
	}
	return n.dateTime(), true
}

// storedInt reads a single-valued Integer or Enumeration attribute.
func (s *Server) storedInt(rec keymap.Record, tag tt.Tag) (uint32, bool) {
	n := s.storedFirst(rec, tag)
	if n == nil {
		return 0, false
	}
	return n.u32(), true
}

// Mappings between keymap and KMIP enumerations.
var classTypes = map[keymap.Class]kmip14.ObjectType{
	keymap.SecretKey:   kmip14.ObjectTypeSymmetricKey,
	keymap.PrivateKey:  kmip14.ObjectTypePrivateKey,
	keymap.PublicKey:   kmip14.ObjectTypePublicKey,
	keymap.Certificate: kmip14.ObjectTypeCertificate,
	keymap.SecretData:  kmip14.ObjectTypeSecretData,
	keymap.Opaque:      kmip14.ObjectTypeOpaqueObject,
}

var stateEnums = map[keymap.State]kmip14.State{
	keymap.PreActive:            kmip14.StatePreActive,
	keymap.Active:               kmip14.StateActive,
	keymap.Deactivated:          kmip14.StateDeactivated,
	keymap.Compromised:          kmip14.StateCompromised,
	keymap.Destroyed:            kmip14.StateDestroyed,
	keymap.DestroyedCompromised: kmip14.StateDestroyedCompromised,
}

// kmipAlgorithm is the Cryptographic Algorithm to report: what the client asked for when it was
// recorded (HMAC-SHA384, ECDSA, …), else the registry's algorithm.
func (s *Server) kmipAlgorithm(rec keymap.Record, v ProtocolVersion) (uint32, bool) {
	if a, ok := s.storedInt(rec, kmip14.TagCryptographicAlgorithm); ok {
		return a, true
	}
	return registryKMIPAlgorithm(rec.Algorithm, v)
}

// registryKMIPAlgorithm is the Cryptographic Algorithm of a registry algorithm, at version v.
func registryKMIPAlgorithm(alg string, v ProtocolVersion) (uint32, bool) {
	switch alg {
	case signer.AES:
		return uint32(kmip14.CryptographicAlgorithmAES), true
	case signer.RSA:
		return uint32(kmip14.CryptographicAlgorithmRSA), true
	case signer.HMAC:
		return uint32(kmip14.CryptographicAlgorithmHMAC_SHA256), true
	case signer.EC:
		if v.atLeast(1, 2) {
			return uint32(kmip14.CryptographicAlgorithmEC), true
		}
		return uint32(kmip14.CryptographicAlgorithmECDSA), true
	}
	return 0, false
}

// viewAlgorithm is kmipAlgorithm of a row read in place (Locate's filter).
func (s *Server) viewAlgorithm(v keymap.View, ver ProtocolVersion) (uint32, bool) {
	d := def(kmip14.TagCryptographicAlgorithm)
	if raw, ok := v.Attr(d.key); ok {
		if n := s.firstOf(v.ID(), d, raw); n != nil {
			return n.u32(), true
		}
	}
	return registryKMIPAlgorithm(v.Algorithm(), ver)
}

// registryLinks are the links the registry keeps, as KMIP Link types.
var registryLinks = []struct {
	key  string
	kind kmip14.LinkType
}{
	{signer.AttrPublicKey, kmip14.LinkTypePublicKeyLink},
	{signer.AttrPrivateKey, kmip14.LinkTypePrivateKeyLink},
	{signer.AttrReplacement, kmip14.LinkTypeReplacementObjectLink},
	{signer.AttrReplaced, kmip14.LinkTypeReplacedObjectLink},
	{signer.AttrDerivedFrom, kmip14.LinkTypeDerivationBaseObjectLink},
}

func isKey(c keymap.Class) bool {
	return c == keymap.SecretKey || c == keymap.PrivateKey || c == keymap.PublicKey
}

// attributesOf lists every attribute instance of rec that version v defines.
func (s *Server) attributesOf(rec keymap.Record, v ProtocolVersion) []attr {
	now := time.Now()
	var out []attr
	add := func(tag tt.Tag, val *node) {
		d := def(tag)
		if d != nil && v.atLeast(d.since.Major, d.since.Minor) {
			out = append(out, attr{def: d, name: d.name, index: -1, value: val})
		}
	}
	addStored := func(d *attrDef, name string) {
		if !v.atLeast(d.since.Major, d.since.Minor) {
			return
		}
		for i, val := range s.stored(rec, d, name) {
			if val != nil {
				out = append(out, attr{def: d, name: d.name, index: int32(i), value: val})
			}
		}
	}
	for _, d := range attrDefs {
		switch d.tag {
		case kmip14.TagUniqueIdentifier:
			add(d.tag, newText(d.tag, rec.ID))
		case kmip14.TagObjectType:
			add(d.tag, newEnum(d.tag, uint32(classTypes[rec.Class])))
		case kmip14.TagCryptographicAlgorithm:
			if a, ok := s.kmipAlgorithm(rec, v); ok && isKey(rec.Class) {
				add(d.tag, newEnum(d.tag, a))
			}
		case kmip14.TagCryptographicLength:
			if rec.Size > 0 && isKey(rec.Class) {
				add(d.tag, newInt(d.tag, int32(rec.Size)))
			}
		case kmip14.TagCertificateType:
			if rec.Class == keymap.Certificate {
				add(d.tag, newEnum(d.tag, uint32(kmip14.CertificateTypeX_509)))
			} else {
				addStored(d, d.name)
			}
		case kmip14.TagState:
			add(d.tag, newEnum(d.tag, uint32(stateEnums[signer.EffectiveState(rec, now)])))
		case kmip14.TagInitialDate:
			add(d.tag, newDateTime(d.tag, rec.Created))
		case kmip14.TagLastChangeDate:
			t := rec.Updated
			if t.IsZero() {
				t = rec.Created
			}
			add(d.tag, newDateTime(d.tag, t))
		case kmip14.TagLink:
			n := 0
			for _, l := range registryLinks {
				if id := rec.Attrs[l.key]; id != "" {
					out = append(out, attr{def: d, name: d.name, index: int32(n), value: encodeStruct(d.tag, kLink{Type: uint32(l.kind), ID: id})})
					n++
				}
			}
			for _, val := range s.stored(rec, d, d.name) {
				if val != nil {
					out = append(out, attr{def: d, name: d.name, index: int32(n), value: val})
				}
				n++
			}
		case kmip14.TagSensitive, kmip14.TagExtractable, kmip14.TagAlwaysSensitive, kmip14.TagNeverExtractable:
			if rec.Class == keymap.SecretKey || rec.Class == keymap.PrivateKey {
				// Extractable: the key may leave the token; Sensitive: only wrapped, if at all. Both
				// are fixed when the key is made, so Always Sensitive and Never Extractable follow.
				exportable := rec.Attrs[signer.AttrExportable] != ""
				val := !exportable || rec.Attrs[signer.AttrWrapOnly] != ""
				switch d.tag {
				case kmip14.TagExtractable:
					val = exportable
				case kmip14.TagNeverExtractable:
					val = !exportable
				}
				add(d.tag, newBool(d.tag, val))
			}
		default:
			if d.access != serverOnly || rec.Attrs[storeKey(d, d.name)] != "" || d.tag == kmip14.TagName {
				addStored(d, d.name)
			}
		}
	}
	var customs []string
	for k := range rec.Attrs {
		if strings.HasPrefix(k, customPrefix) {
			customs = append(customs, "x-"+strings.TrimPrefix(k, customPrefix))
		}
	}
	sort.Strings(customs)
	for _, name := range customs {
		for i, val := range s.stored(rec, nil, name) {
			if val != nil {
				out = append(out, attr{name: name, index: int32(i), value: val})
			}
		}
	}
	return out
}

// names lists the values of live Name instances.
func names(vals []*node) []string {
	var out []string
	for _, v := range vals {
		var nm kName
		if v != nil && decodeStruct(v, &nm) == nil {
			out = append(out, nm.Value)
		}
	}
	return out
}
