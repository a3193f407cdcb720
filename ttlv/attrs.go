package ttlv

import (
	"fmt"
	"slices"
	"strings"

	"github.com/gemalto/kmip-go/kmip14"
	tt "github.com/gemalto/kmip-go/ttlv"

	"github.com/p11bridge/p11bridge/signer"
)

// access says how a client may touch an attribute.
type access int

const (
	serverOnly access = iota // the server sets and maintains it
	atCreate                 // a client may give it when the object is made, never change it
	clientRW                 // a client may set, add, modify and delete it
)

// attrDef describes one KMIP attribute.
type attrDef struct {
	name   string // KMIP 1.x attribute name ("Cryptographic Usage Mask"); filled from the tag
	tag    tt.Tag // the tag of its value (KMIP 2.0 encodes attributes under it)
	typ    tt.Type
	multi  bool
	since  ProtocolVersion
	access access
	shape  func() any // for structures: a fresh Go value the value must decode into
	// named: reported by GetAttributes only when asked for by name (GetAttributeList still lists
	// it). PyKMIP 0.10 cannot decode these values and fails the whole response when an unfiltered
	// GetAttributes carries one; clients that want them name them.
	named bool
	key   string // where Record.Attrs keeps it (storeKey), computed once
	// fact names the registry attribute that holds it when the registry's key model decides on it
	// (usage mask, lifecycle dates): stored in the registry's form, not as KMIP JSON.
	fact string
}

// facts maps the attributes the key model reads to the registry's attributes.
var facts = map[tt.Tag]string{
	kmip14.TagCryptographicUsageMask: signer.AttrUsageMask,
	kmip14.TagActivationDate:         signer.AttrActivationDate,
	kmip14.TagDeactivationDate:       signer.AttrDeactivationDate,
	kmip14.TagProtectStopDate:        signer.AttrProtectStopDate,
	kmip14.TagProcessStartDate:       signer.AttrProcessStartDate,
	kmip14.TagDestroyDate:            signer.AttrDestroyDate,
}

var v10, v11, v12, v13, v14 = ProtocolVersion{1, 0}, ProtocolVersion{1, 1}, ProtocolVersion{1, 2}, ProtocolVersion{1, 3}, ProtocolVersion{1, 4}

const (
	tStruct = tt.TypeStructure
	tInt    = tt.TypeInteger
	tEnum   = tt.TypeEnumeration
	tBool   = tt.TypeBoolean
	tText   = tt.TypeTextString
	tDate   = tt.TypeDateTime
	tIntvl  = tt.TypeInterval
)

// attrDefs lists the attributes the server knows, in the order GetAttributes reports them.
var attrDefs = []*attrDef{
	{tag: kmip14.TagUniqueIdentifier, typ: tText, since: v10, access: serverOnly},
	{tag: kmip14.TagName, typ: tStruct, multi: true, since: v10, access: clientRW, shape: func() any { return &kName{} }},
	{tag: kmip14.TagObjectType, typ: tEnum, since: v10, access: atCreate},
	{tag: kmip14.TagCryptographicAlgorithm, typ: tEnum, since: v10, access: atCreate},
	{tag: kmip14.TagCryptographicLength, typ: tInt, since: v10, access: atCreate},
	{tag: kmip14.TagCryptographicParameters, typ: tStruct, multi: true, since: v10, access: clientRW, shape: func() any { return &cryptoParams{} }},
	{tag: kmip14.TagCryptographicDomainParameters, typ: tStruct, since: v10, access: atCreate, named: true},
	{tag: kmip14.TagCertificateType, typ: tEnum, since: v10, access: serverOnly},
	{tag: kmip14.TagCertificateLength, typ: tInt, since: v11, access: serverOnly},
	{tag: kmip14.TagDigitalSignatureAlgorithm, typ: tEnum, multi: true, since: v11, access: serverOnly, named: true},
	{tag: kmip14.TagDigest, typ: tStruct, multi: true, since: v10, access: serverOnly},
	{tag: kmip14.TagOperationPolicyName, typ: tText, since: v10, access: clientRW},
	{tag: kmip14.TagCryptographicUsageMask, typ: tInt, since: v10, access: clientRW},
	{tag: kmip14.TagLeaseTime, typ: tIntvl, since: v10, access: serverOnly},
	{tag: kmip14.TagUsageLimits, typ: tStruct, since: v10, access: clientRW, named: true},
	{tag: kmip14.TagState, typ: tEnum, since: v10, access: serverOnly},
	{tag: kmip14.TagInitialDate, typ: tDate, since: v10, access: serverOnly},
	{tag: kmip14.TagActivationDate, typ: tDate, since: v10, access: clientRW},
	{tag: kmip14.TagProcessStartDate, typ: tDate, since: v10, access: clientRW},
	{tag: kmip14.TagProtectStopDate, typ: tDate, since: v10, access: clientRW},
	{tag: kmip14.TagDeactivationDate, typ: tDate, since: v10, access: clientRW},
	{tag: kmip14.TagDestroyDate, typ: tDate, since: v10, access: serverOnly},
	{tag: kmip14.TagCompromiseOccurrenceDate, typ: tDate, since: v10, access: serverOnly},
	{tag: kmip14.TagCompromiseDate, typ: tDate, since: v10, access: serverOnly},
	{tag: kmip14.TagRevocationReason, typ: tStruct, since: v10, access: serverOnly, shape: func() any { return &revocationReason{} }, named: true},
	{tag: kmip14.TagArchiveDate, typ: tDate, since: v10, access: serverOnly},
	{tag: kmip14.TagObjectGroup, typ: tText, multi: true, since: v10, access: clientRW},
	{tag: kmip14.TagFresh, typ: tBool, since: v11, access: serverOnly},
	{tag: kmip14.TagLink, typ: tStruct, multi: true, since: v10, access: clientRW, shape: func() any { return &kLink{} }, named: true},
	{tag: kmip14.TagApplicationSpecificInformation, typ: tStruct, multi: true, since: v10, access: clientRW},
	{tag: kmip14.TagContactInformation, typ: tText, since: v10, access: clientRW},
	{tag: kmip14.TagLastChangeDate, typ: tDate, since: v10, access: serverOnly},
	{tag: kmip14.TagAlternativeName, typ: tStruct, multi: true, since: v12, access: clientRW},
	{tag: kmip14.TagKeyValuePresent, typ: tBool, since: v12, access: serverOnly},
	{tag: kmip14.TagKeyValueLocation, typ: tStruct, multi: true, since: v12, access: clientRW},
	{tag: kmip14.TagOriginalCreationDate, typ: tDate, since: v12, access: atCreate},
	{tag: kmip14.TagRandomNumberGenerator, typ: tStruct, since: v13, access: serverOnly},
	{tag: kmip14.TagPKCS_12FriendlyName, typ: tText, since: v14, access: clientRW},
	{tag: kmip14.TagDescription, typ: tText, since: v14, access: clientRW},
	{tag: kmip14.TagComment, typ: tText, since: v14, access: clientRW},
	{tag: kmip14.TagSensitive, typ: tBool, since: v14, access: serverOnly},
	{tag: kmip14.TagAlwaysSensitive, typ: tBool, since: v14, access: serverOnly, named: true},
	{tag: kmip14.TagExtractable, typ: tBool, since: v14, access: serverOnly, named: true},
	{tag: kmip14.TagNeverExtractable, typ: tBool, since: v14, access: serverOnly, named: true},
}

var (
	defByName = map[string]*attrDef{}
	defByTag  = map[tt.Tag]*attrDef{}
)

func init() {
	for _, d := range attrDefs {
		// The registry spells some names with doubled spaces ("Compromise  Date"): fold them.
		d.name = normName(tt.DefaultRegistry.FormatTagCanonical(d.tag))
		d.key = attrPrefix + tagName(d.tag)
		if f := facts[d.tag]; f != "" {
			d.fact, d.key = f, f
		}
		defByName[d.name] = d
		defByTag[d.tag] = d
	}
}

func def(tag tt.Tag) *attrDef { return defByTag[tag] }

// attr is one attribute instance, whatever the protocol version that carried it.
type attr struct {
	def   *attrDef // nil for custom attributes
	name  string   // KMIP 1.x name; custom attributes keep theirs ("x-owner")
	index int32    // -1 when the request gave none
	value *node    // nil when a request names an attribute without a value
}

// custom says whether name is a custom attribute: "x-" ones belong to clients, "y-" ones to servers.
func custom(name string) bool { return strings.HasPrefix(name, "x-") || strings.HasPrefix(name, "y-") }

// normName folds runs of white space, as the OASIS vectors send "Object   Type".
func normName(s string) string { return strings.Join(strings.Fields(s), " ") }

// lookupAttr finds the definition of a 1.x attribute name.
func lookupAttr(name string) (*attrDef, string, error) {
	name = normName(name)
	if custom(name) {
		return nil, name, nil
	}
	if d := defByName[name]; d != nil {
		return d, name, nil
	}
	return nil, name, kerr(rInvalidField, "attribute %q is not supported", name)
}

// attr1 is the KMIP 1.x Attribute structure; in KMIP 2.0 the same tag carries vendor attributes.
type attr1 struct {
	Vendor *string `kmip:"VendorIdentification"`
	Name   string  `kmip:"AttributeName,required"`
	Index  *int32  `kmip:"AttributeIndex"`
	Value  *node   `kmip:"AttributeValue"`
}

// fromAttr1 turns a decoded Attribute structure into an attr.
func fromAttr1(a attr1, needValue bool) (attr, error) {
	name := a.Name
	if a.Vendor != nil {
		// A KMIP 2.0 vendor attribute: vendor "x" with name "owner" is the 1.x custom "x-owner".
		name = *a.Vendor + "-" + a.Name
	}
	d, name, err := lookupAttr(name)
	if err != nil {
		return attr{}, err
	}
	out := attr{def: d, name: name, index: -1, value: a.Value}
	if a.Index != nil {
		if *a.Index < 0 {
			return attr{}, kerr(rIndex, "attribute %q: negative index %d", name, *a.Index)
		}
		out.index = *a.Index
	}
	if needValue || a.Value != nil {
		if err := checkValue(out); err != nil {
			return attr{}, err
		}
	}
	return out, nil
}

// fromItem turns a KMIP 2.0 attribute item (tagged by the attribute itself) into an attr.
func fromItem(n *node, needValue bool) (attr, error) {
	if n.Tag == kmip14.TagAttribute {
		var a attr1
		if err := decodeStruct(n, &a); err != nil {
			return attr{}, err
		}
		if a.Vendor == nil {
			return attr{}, kerr(rInvalidField, "attribute %q: KMIP 2.0 carries attributes under their own tags (Attribute is for vendor attributes)", a.Name)
		}
		return fromAttr1(a, needValue)
	}
	d := defByTag[n.Tag]
	if d == nil {
		return attr{}, kerr(rInvalidField, "%s is not a supported attribute", tagName(n.Tag))
	}
	a := attr{def: d, name: d.name, index: -1, value: n}
	return a, checkValue(a)
}

// checkValue checks that a value has the type (and for structures the shape) of its attribute.
func checkValue(a attr) error {
	if a.value == nil {
		return kerr(rInvalidField, "attribute %q has no value", a.name)
	}
	size, depth := measure(a.value)
	if size > maxValueBytes {
		return kerr(rLimit, "attribute %q: a value of %d bytes exceeds the limit of %d bytes", a.name, size, maxValueBytes)
	}
	if a.def == nil {
		if depth > maxValueDepth {
			return kerr(rBadValue, "attribute %q: structures nested %d levels deep exceed the limit of %d", a.name, depth, maxValueDepth)
		}
		return nil
	}
	if a.value.Type != a.def.typ {
		return kerr(rInvalidField, "attribute %q: expected %s, got %s", a.name, typeName(a.def.typ), typeName(a.value.Type))
	}
	if a.def.typ == tStruct {
		if err := checkShape(a); err != nil {
			return err
		}
	}
	if a.def.shape != nil {
		if err := decodeStruct(a.value, a.def.shape()); err != nil {
			return withReason(err, rInvalidField, "attribute %q", a.name)
		}
	}
	return nil
}

// Limits of attribute values a client gives (docs/kmip.md, "Attributes"). Each value is stored in
// the object's keymap row, which the whole row carries on every change and every instance keeps in
// memory; real clients store names, identifiers and short strings.
const (
	// maxValueDepth bounds the structure levels of a custom attribute's value (a flat structure is
	// one level). Standard structure attributes have fixed, one-level shapes (shapes).
	maxValueDepth = 4
	// maxValueBytes bounds one value, as TTLV (header and padding included).
	maxValueBytes = 16 << 10
	// maxObjectAttrBytes bounds the stored form of all the client attributes of one object.
	maxObjectAttrBytes = 64 << 10
)

// measure returns the TTLV size of n and the structure levels in it (0 for a primitive).
func measure(n *node) (size, depth int) {
	if n.Type != tt.TypeStructure {
		return hdrLen + (len(n.Raw)+7)&^7, 0
	}
	size = hdrLen
	for _, k := range n.Kids {
		s, d := measure(k)
		size += s
		depth = max(depth, d)
	}
	return size, depth + 1
}

// member is one field of a standard structure attribute's value.
type member struct {
	tag      tt.Tag
	typ      tt.Type
	required bool
}

// shapes are the fields of the standard structure attributes (KMIP 1.4 section 3, 2.0 section 4),
// each at most once. A value with anything else is refused rather than stored: the codec's
// decoder skips unknown fields, so without this a Name or Link could carry any subtree into a row.
var shapes = map[tt.Tag][]member{
	kmip14.TagName: {{kmip14.TagNameValue, tText, true}, {kmip14.TagNameType, tEnum, true}},
	kmip14.TagLink: {{kmip14.TagLinkType, tEnum, true}, {kmip14.TagLinkedObjectIdentifier, tText, true}},
	kmip14.TagApplicationSpecificInformation: {{kmip14.TagApplicationNamespace, tText, true},
		{kmip14.TagApplicationData, tText, false}},
	kmip14.TagAlternativeName: {{kmip14.TagAlternativeNameValue, tText, true},
		{kmip14.TagAlternativeNameType, tEnum, true}},
	kmip14.TagKeyValueLocation: {{kmip14.TagKeyValueLocationValue, tText, true},
		{kmip14.TagKeyValueLocationType, tEnum, true}},
	kmip14.TagUsageLimits: {{kmip14.TagUsageLimitsTotal, tt.TypeLongInteger, true},
		{kmip14.TagUsageLimitsCount, tt.TypeLongInteger, false}, {kmip14.TagUsageLimitsUnit, tEnum, true}},
	kmip14.TagCryptographicDomainParameters: {{kmip14.TagQlength, tInt, false}, {kmip14.TagRecommendedCurve, tEnum, false}},
	kmip14.TagCryptographicParameters: {
		{kmip14.TagBlockCipherMode, tEnum, false}, {kmip14.TagPaddingMethod, tEnum, false},
		{kmip14.TagHashingAlgorithm, tEnum, false}, {kmip14.TagKeyRoleType, tEnum, false},
		{kmip14.TagDigitalSignatureAlgorithm, tEnum, false}, {kmip14.TagCryptographicAlgorithm, tEnum, false},
		{kmip14.TagRandomIV, tBool, false}, {kmip14.TagIVLength, tInt, false}, {kmip14.TagTagLength, tInt, false},
		{kmip14.TagFixedFieldLength, tInt, false}, {kmip14.TagInvocationFieldLength, tInt, false},
		{kmip14.TagCounterLength, tInt, false}, {kmip14.TagInitialCounterValue, tInt, false},
		{kmip14.TagSaltLength, tInt, false}, {kmip14.TagMaskGenerator, tEnum, false},
		{kmip14.TagMaskGeneratorHashingAlgorithm, tEnum, false}, {kmip14.TagPSource, tt.TypeByteString, false},
		{kmip14.TagTrailerField, tInt, false}},
	kmip14.TagRevocationReason: {{kmip14.TagRevocationReasonCode, tEnum, true}, {kmip14.TagRevocationMessage, tText, false}},
	kmip14.TagDigest: {{kmip14.TagHashingAlgorithm, tEnum, true}, {kmip14.TagDigestValue, tt.TypeByteString, false},
		{kmip14.TagKeyFormatType, tEnum, false}},
}

// checkShape checks a standard structure attribute's value against its shape. Structures without
// one (Random Number Generator, which only the server sets) may hold primitive fields only.
func checkShape(a attr) error {
	fields, known := shapes[a.def.tag]
	var seen uint32 // bit i: fields[i] given
	for _, k := range a.value.Kids {
		if !known {
			if k.Type == tStruct {
				return kerr(rBadValue, "attribute %q: %s has no place in its value", a.name, tagName(k.Tag))
			}
			continue
		}
		i := slices.IndexFunc(fields, func(m member) bool { return m.tag == k.Tag })
		switch {
		case i < 0:
			return kerr(rBadValue, "attribute %q: %s has no place in its value", a.name, tagName(k.Tag))
		case k.Type != fields[i].typ:
			return kerr(rBadValue, "attribute %q: %s must be %s, not %s", a.name, tagName(k.Tag), typeName(fields[i].typ), typeName(k.Type))
		case seen&(1<<i) != 0:
			return kerr(rBadValue, "attribute %q: %s is given twice", a.name, tagName(k.Tag))
		}
		seen |= 1 << i
	}
	for i, m := range fields {
		if m.required && seen&(1<<i) == 0 {
			return kerr(rBadValue, "attribute %q: its value needs %s", a.name, tagName(m.tag))
		}
	}
	return nil
}

// attrBytes is what the client attributes of a row take in it (the limit maxObjectAttrBytes).
func attrBytes(attrs map[string]string) int {
	n := 0
	for k, v := range attrs {
		if strings.HasPrefix(k, attrPrefix) || strings.HasPrefix(k, customPrefix) {
			n += len(k) + len(v)
		}
	}
	return n
}

// checkObjectSize refuses a row whose client attributes would take more than maxObjectAttrBytes,
// unless a change makes them smaller (a row stored before the limit can still shrink).
func checkObjectSize(after, before int) error {
	if after > maxObjectAttrBytes && after > before {
		return kerr(rLimit, "the object's attributes would take %d bytes stored, over the limit of %d bytes", after, maxObjectAttrBytes)
	}
	return nil
}

// parseAttrs reads the attributes of a TemplateAttribute (1.x) or, with v2, an Attributes (2.0)
// structure.
func parseAttrs(v2 bool, n *node) ([]attr, error) {
	if n == nil {
		return nil, nil
	}
	var out []attr
	for _, k := range n.Kids {
		var a attr
		var err error
		switch {
		case v2:
			a, err = fromItem(k, true)
		case k.Tag == kmip14.TagAttribute:
			var a1 attr1
			if err = decodeStruct(k, &a1); err == nil {
				if a1.Vendor != nil {
					err = kerr(rInvalidField, "VendorIdentification in an attribute needs KMIP 2.0")
				} else {
					a, err = fromAttr1(a1, true)
				}
			}
		case k.Tag == kmip14.TagName:
			err = kerr(rFeature, "Template objects are not supported (TemplateAttribute names a template)")
		default:
			err = kerr(rInvalidField, "unexpected %s in %s", tagName(k.Tag), tagName(n.Tag))
		}
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// encodeAttr writes an attribute instance for a response in the request's version.
func encodeAttr(v ProtocolVersion, a attr) *node {
	if v.v2() {
		if a.def != nil {
			c := *a.value
			c.Tag = a.def.tag
			return &c
		}
		vendor, name, _ := strings.Cut(a.name, "-")
		return newStruct(kmip14.TagAttribute, newText(kmip14.TagVendorIdentification, vendor),
			newText(kmip14.TagAttributeName, name), retag(a.value, kmip14.TagAttributeValue))
	}
	// Instances of multi-valued (and custom) attributes carry their index, 0 included, as
	// pykmip-server sends them and PyKMIP reads them; single-valued ones need none.
	var idx *node
	if a.index > 0 || a.index == 0 && (a.def == nil || a.def.multi) {
		idx = newInt(kmip14.TagAttributeIndex, a.index)
	}
	return newStruct(kmip14.TagAttribute, newText(kmip14.TagAttributeName, a.name), idx, retag(a.value, kmip14.TagAttributeValue))
}

// encodeRef writes an attribute name for GetAttributeList: a 1.x AttributeName, or a 2.0
// AttributeReference (the tag as an enumeration, or vendor and name for custom attributes).
func encodeRef(v ProtocolVersion, a attr) *node {
	if !v.v2() {
		return newText(kmip14.TagAttributeName, a.name)
	}
	if a.def != nil {
		return newEnum(tagAttributeReference, uint32(a.def.tag))
	}
	vendor, name, _ := strings.Cut(a.name, "-")
	return newStruct(tagAttributeReference, newText(kmip14.TagVendorIdentification, vendor), newText(kmip14.TagAttributeName, name))
}

// parseRef reads an attribute reference: a 1.x AttributeName, or a 2.0 AttributeReference.
func parseRef(n *node) (*attrDef, string, error) {
	switch {
	case n.Type == tt.TypeTextString:
		return lookupAttr(n.text())
	case n.Type == tt.TypeEnumeration:
		d := defByTag[tt.Tag(n.u32())]
		if d == nil {
			return nil, "", kerr(rInvalidField, "%s is not a supported attribute", tagName(tt.Tag(n.u32())))
		}
		return d, d.name, nil
	case n.Type == tt.TypeStructure:
		var r struct {
			Vendor string `kmip:"VendorIdentification,required"`
			Name   string `kmip:"AttributeName,required"`
		}
		if err := decodeStruct(n, &r); err != nil {
			return nil, "", err
		}
		if r.Vendor == "" {
			// PyKMIP 2.0 sends standard attributes as a reference with an empty vendor.
			return lookupAttr(r.Name)
		}
		return lookupAttr(r.Vendor + "-" + r.Name)
	}
	return nil, "", kerr(rInvalidField, "attribute reference of type %s", typeName(n.Type))
}

func retag(n *node, tag tt.Tag) *node {
	if n == nil {
		return nil
	}
	c := *n
	c.Tag = tag
	return &c
}

func (a attr) String() string {
	if a.index >= 0 {
		return fmt.Sprintf("%s[%d]", a.name, a.index)
	}
	return a.name
}
