package ttlv

import (
	"time"

	"github.com/gemalto/kmip-go/kmip14"
	tt "github.com/gemalto/kmip-go/ttlv"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/signer"
)

// template is what a client asks for a new object: the generation parameters and the attributes
// to record.
type template struct {
	alg        uint32 // Cryptographic Algorithm, 0 if absent
	length     int32  // Cryptographic Length, 0 if absent
	objectType uint32 // Object Type, 0 if absent
	curve      uint32 // Recommended Curve from Cryptographic Domain Parameters, 0 if absent
	// extractable and sensitive are the client's word on the key leaving the token (KMIP 1.4 and
	// 2.0 Extractable, Sensitive); nil when it said nothing. The registry decides (access.go).
	extractable, sensitive *bool
	vals                   map[string][]*node
	defs                   map[string]*attrDef
	order                  []string
}

// parseTemplate reads one attribute list (TemplateAttribute in 1.x, Attributes in 2.0).
func parseTemplate(n *node) (*template, error) {
	attrs, err := parseAttrs(n != nil && isAttributes2(n.Tag), n)
	if err != nil {
		return nil, err
	}
	t := &template{vals: map[string][]*node{}, defs: map[string]*attrDef{}}
	return t, t.add(attrs)
}

func isAttributes2(tag tt.Tag) bool {
	switch tag {
	case tagAttributes, tagCommonAttributes, tagPrivateAttributes, tagPublicAttributes:
		return true
	}
	return false
}

func (t *template) add(attrs []attr) error {
	for _, a := range attrs {
		if a.def == nil && !isClientCustom(a.name) {
			return kerr(rReadOnly, "attribute %q is reserved for the server (client attributes start with x-)", a.name)
		}
		if a.def != nil {
			switch a.def.tag {
			case kmip14.TagCryptographicAlgorithm:
				t.alg = a.value.u32()
				continue
			case kmip14.TagCryptographicLength:
				t.length = int32(a.value.u32())
				continue
			case kmip14.TagObjectType:
				t.objectType = a.value.u32()
				continue
			case kmip14.TagCryptographicDomainParameters:
				if c := a.value.find(kmip14.TagRecommendedCurve); c != nil && c.Type == tt.TypeEnumeration {
					t.curve = c.u32()
				}
				continue
			case kmip14.TagExtractable:
				t.extractable = ptr(a.value.boolean())
				continue
			case kmip14.TagSensitive:
				t.sensitive = ptr(a.value.boolean())
				continue
			}
			if a.def.access == serverOnly {
				return kerr(rReadOnly, "attribute %q is set by the server; a client cannot give it", a.name)
			}
		}
		key := storeKey(a.def, a.name)
		if _, seen := t.vals[key]; !seen {
			t.order = append(t.order, key)
			t.defs[key] = a.def
		}
		if a.def != nil && !a.def.multi && len(t.vals[key]) > 0 {
			return kerr(rSingleValued, "attribute %q is single-valued but given more than once", a.name)
		}
		t.vals[key] = append(t.vals[key], a.value)
	}
	return nil
}

// merge layers specific attributes over common ones (CreateKeyPair): single-valued attributes of
// the specific list win, multi-valued ones are combined.
func merge(common, specific *template) *template {
	out := &template{vals: map[string][]*node{}, defs: map[string]*attrDef{}, alg: common.alg, length: common.length, curve: common.curve}
	for _, t := range []*template{common, specific} {
		if t.alg != 0 {
			out.alg = t.alg
		}
		if t.extractable != nil {
			out.extractable = t.extractable
		}
		if t.sensitive != nil {
			out.sensitive = t.sensitive
		}
		if t.length != 0 {
			out.length = t.length
		}
		if t.curve != 0 {
			out.curve = t.curve
		}
		for _, k := range t.order {
			d := t.defs[k]
			if _, seen := out.vals[k]; !seen {
				out.order = append(out.order, k)
				out.defs[k] = d
				out.vals[k] = nil
			}
			if d != nil && !d.multi {
				out.vals[k] = t.vals[k]
			} else {
				out.vals[k] = append(out.vals[k], t.vals[k]...)
			}
		}
	}
	return out
}

func isClientCustom(name string) bool { return len(name) > 2 && name[:2] == "x-" }

// meta turns the template into the registry's metadata of a new object: the first Name, the
// state (Active when an Activation Date at or before now was given) and the attributes. Its owner
// is the registry's to set.
func (t *template) meta() (signer.Meta, error) {
	rec := keymap.Record{State: keymap.PreActive}
	size := 0
	for _, k := range t.order {
		d := t.defs[k]
		name := ""
		if d == nil {
			name = "x-" + k[len(customPrefix):]
		} else {
			name = d.name
		}
		c, err := prepareStored(d, name, t.vals[k])
		if err != nil {
			return signer.Meta{}, err
		}
		// Counted as it grows: an oversized template stops at the limit, not after all of it.
		if size += c.size; size > maxObjectAttrBytes {
			return signer.Meta{}, checkObjectSize(size, 0)
		}
		c.apply(&rec)
		if d != nil && d.tag == kmip14.TagActivationDate {
			if !t.vals[k][0].dateTime().After(time.Now()) {
				rec.State = keymap.Active
			}
		}
	}
	nd := def(kmip14.TagName)
	m := signer.Meta{Name: rec.Name, Names: names(t.vals[nd.key]), State: rec.State, Attrs: rec.Attrs, Extractable: t.extractable}
	m.Sensitive = t.sensitive != nil && *t.sensitive
	return m, nil
}

// withAttr records one more attribute in a Meta (the algorithm the client named, …).
func withStored(m *signer.Meta, tag tt.Tag, v *node) error {
	rec := keymap.Record{Attrs: m.Attrs}
	d := def(tag)
	if err := setStored(&rec, d, d.name, []*node{v}); err != nil {
		return err
	}
	m.Attrs = rec.Attrs
	return nil
}
