package ttlv

import (
	"bytes"
	"errors"
	"time"

	"github.com/gemalto/kmip-go/kmip14"
	"github.com/gemalto/kmip-go/kmip20"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/signer"
)

func init() {
	register(kmip14.OperationGetAttributes, v10, getAttributes)
	register(kmip14.OperationGetAttributeList, v10, getAttributeList)
	register(kmip14.OperationAddAttribute, v10, addAttribute)
	register(kmip14.OperationModifyAttribute, v10, modifyAttribute)
	register(kmip14.OperationDeleteAttribute, v10, deleteAttribute)
	register(kmip14.Operation(kmip20.OperationSetAttribute), ProtocolVersion{2, 0}, setAttribute)
}

type getAttributesRequest struct {
	UID   *uidRef `kmip:"UniqueIdentifier"`
	Names []*node `kmip:"AttributeName"`
	Refs  []*node `kmip:"AttributeReference"`
}

type attributesResponse struct {
	UID   string  `kmip:"UniqueIdentifier"`
	Attrs []*node `kmip:",any"`
}

// getAttributes returns the requested attributes (all when none are named); names the object
// does not have, or the server does not know, are left out.
func getAttributes(o *op, p *node) (any, error) {
	var req getAttributesRequest
	if err := decodeStruct(p, &req); err != nil {
		return nil, err
	}
	rec, err := o.target(req.UID, signer.UseSee)
	if err != nil {
		return nil, err
	}
	all := o.s.attributesOf(rec, o.v)
	want := map[string]bool{}
	for _, n := range append(req.Names, req.Refs...) {
		if _, name, err := parseRef(n); err == nil {
			if want[name] {
				// The OASIS 1.2 test case TC-171 expects a repeated name to be refused.
				return nil, kerr(rInvalidMsg, "attribute %q is named twice", name)
			}
			want[name] = true
		}
	}
	var items []*node
	for _, a := range all {
		if want[a.name] || (len(want) == 0 && !(a.def != nil && a.def.named)) {
			items = append(items, encodeAttr(o.v, a))
		}
	}
	resp := attributesResponse{UID: rec.ID}
	if o.v.v2() {
		resp.Attrs = []*node{newStruct(tagAttributes, items...)}
	} else {
		resp.Attrs = items
	}
	return resp, nil
}

// getAttributeList names the attributes the object has.
func getAttributeList(o *op, p *node) (any, error) {
	var req uidRequest
	if err := decodeStruct(p, &req); err != nil {
		return nil, err
	}
	rec, err := o.target(req.UID, signer.UseSee)
	if err != nil {
		return nil, err
	}
	resp := attributesResponse{UID: rec.ID}
	seen := map[string]bool{}
	for _, a := range o.s.attributesOf(rec, o.v) {
		if !seen[a.name] {
			seen[a.name] = true
			resp.Attrs = append(resp.Attrs, encodeRef(o.v, a))
		}
	}
	return resp, nil
}

// attrRequest covers Add/Modify/Delete/SetAttribute in 1.x (Attribute, AttributeName,
// AttributeIndex) and 2.0 (NewAttribute, CurrentAttribute, AttributeReference).
type attrRequest struct {
	UID       *uidRef `kmip:"UniqueIdentifier"`
	Attribute *node   `kmip:"Attribute"`
	Name      *node   `kmip:"AttributeName"`
	Index     *int32  `kmip:"AttributeIndex"`
	Current   *node   `kmip:"CurrentAttribute"`
	New       *node   `kmip:"NewAttribute"`
	Ref       *node   `kmip:"AttributeReference"`
}

type attrResponse struct {
	UID       string `kmip:"UniqueIdentifier"`
	Attribute *node  `kmip:"Attribute"`
}

// wrapped reads the single attribute inside a 2.0 NewAttribute/CurrentAttribute.
func wrapped(n *node) (attr, error) {
	if len(n.Kids) != 1 {
		return attr{}, kerr(rInvalidField, "%s must hold exactly one attribute", tagName(n.Tag))
	}
	return fromItem(n.Kids[0], true)
}

// requestAttr reads the attribute a 1.x request carries in its Attribute structure.
func requestAttr(n *node) (attr, error) {
	if n == nil {
		return attr{}, kerr(rMissing, "the request carries no Attribute")
	}
	var a1 attr1
	if err := decodeStruct(n, &a1); err != nil {
		return attr{}, err
	}
	return fromAttr1(a1, true)
}

// instances returns the client-changeable instances of an attribute and how many read-only
// instances come before them (the registry's own links).
func (o *op) instances(rec keymap.Record, a attr) ([]*node, int) {
	fixed := 0
	if a.def == def(kmip14.TagLink) {
		for _, l := range registryLinks {
			if rec.Attrs[l.key] != "" {
				fixed++
			}
		}
	}
	return o.s.stored(rec, a.def, a.name), fixed
}

// checkWritable refuses changes to attributes the server owns, and date changes the lifecycle
// no longer allows.
func (o *op) checkWritable(rec keymap.Record, a attr) error {
	if a.def == nil {
		if !isClientCustom(a.name) {
			return kerr(rReadOnly, "attribute %q is reserved for the server (client attributes start with x-)", a.name)
		}
		return nil
	}
	if a.def.access != clientRW {
		return kerr(rReadOnly, "attribute %q cannot be changed by a client", a.name)
	}
	st := signer.EffectiveState(rec, time.Now())
	switch a.def.tag {
	case kmip14.TagActivationDate:
		if st != keymap.PreActive {
			return wrongState(rec, st, "the Activation Date can only change before activation")
		}
	case kmip14.TagDeactivationDate, kmip14.TagProcessStartDate, kmip14.TagProtectStopDate:
		if st != keymap.PreActive && st != keymap.Active {
			return wrongState(rec, st, "its dates can no longer change")
		}
	}
	return nil
}

// afterDateChange applies an Activation Date at or before now (the object becomes Active).
func afterDateChange(r *keymap.Record, a attr, vals []*node) {
	if a.def == def(kmip14.TagActivationDate) && r.State == keymap.PreActive && len(vals) > 0 && vals[0] != nil &&
		!vals[0].dateTime().After(time.Now()) {
		r.State = keymap.Active
	}
}

// errRaced aborts a registry update whose attribute changed after it was read (changeAttr).
var errRaced = errors.New("the attribute changed meanwhile")

// maxChangeTries bounds how often changeAttr starts over after a concurrent change.
const maxChangeTries = 8

// changeAttr runs fn on the instances of one attribute and stores what it returns. The instances
// are decoded, changed and encoded before Registry.Update locks the row; the update only assigns,
// and only if the attribute is still as it was read, else it all starts over.
func (o *op) changeAttr(rec keymap.Record, a attr, fn func(vals []*node, fixed int) ([]*node, error)) error {
	if err := o.checkWritable(rec, a); err != nil {
		return err
	}
	for try := 1; ; try++ {
		vals, fixed := o.instances(rec, a)
		vals, err := fn(vals, fixed)
		if err != nil {
			return err
		}
		c, err := prepareStored(a.def, a.name, vals)
		if err != nil {
			return err
		}
		if c.fact == nil {
			before := attrBytes(rec.Attrs)
			after := before + c.size
			if old, ok := rec.Attrs[c.key]; ok {
				after -= len(c.key) + len(old)
			}
			if err := checkObjectSize(after, before); err != nil {
				return err
			}
		}
		var given []string
		if a.def == def(kmip14.TagName) {
			given = names(vals)
		}
		read := rec
		_, err = o.update(rec.ID, func(r *keymap.Record) error {
			if !sameInputs(*r, read, a) {
				return errRaced
			}
			if a.def == def(kmip14.TagName) {
				// Against the names KES keys hold now: a lookup, not an encoding.
				if err := o.s.reg.CheckNames(r.ID, r.Attrs[signer.AttrKESName], given); err != nil {
					return err
				}
			}
			c.apply(r)
			afterDateChange(r, a, vals)
			return nil
		})
		if !errors.Is(err, errRaced) {
			return err
		}
		if try == maxChangeTries {
			return kerr(rGeneral, "object %s: attribute %q kept changing under concurrent requests; retry", rec.ID, a.name)
		}
		if rec, err = o.s.reg.Access(o.caller, rec.ID, signer.UseManage); err != nil {
			return err
		}
	}
}

// sameInputs says whether what changeAttr read of attribute a in read is still so in r.
func sameInputs(r, read keymap.Record, a attr) bool {
	if a.def != nil && a.def.fact != "" {
		x, y := factNode(r, a.def), factNode(read, a.def)
		return (x == nil && y == nil) || sameValue(x, y)
	}
	key := storeKey(a.def, a.name)
	rv, rok := r.Attrs[key]
	v, ok := read.Attrs[key]
	if rv != v || rok != ok {
		return false
	}
	switch a.def {
	case def(kmip14.TagName):
		return r.Name == read.Name
	case def(kmip14.TagLink):
		for _, l := range registryLinks {
			if (r.Attrs[l.key] != "") != (read.Attrs[l.key] != "") {
				return false
			}
		}
	}
	return true
}

func sameValue(a, b *node) bool {
	return a != nil && b != nil && bytes.Equal(a.encodeAs(nil, 0), b.encodeAs(nil, 0))
}

// addAttribute adds an instance: a new index of a multi-valued attribute, or the value of an
// absent single-valued one.
func addAttribute(o *op, p *node) (any, error) {
	var req attrRequest
	if err := decodeStruct(p, &req); err != nil {
		return nil, err
	}
	rec, err := o.target(req.UID, signer.UseManage)
	if err != nil {
		return nil, err
	}
	var a attr
	if o.v.v2() {
		if req.New == nil {
			return nil, kerr(rMissing, "AddAttribute needs a NewAttribute")
		}
		a, err = wrapped(req.New)
	} else {
		a, err = requestAttr(req.Attribute)
	}
	if err != nil {
		return nil, err
	}
	var index int
	err = o.changeAttr(rec, a, func(vals []*node, fixed int) ([]*node, error) {
		live := 0
		for _, v := range vals {
			if v != nil {
				live++
			}
		}
		if (a.def == nil || !a.def.multi) && live > 0 {
			return nil, kerr(rSingleValued, "attribute %q is single-valued and already set; use ModifyAttribute", a.name)
		}
		index = fixed + len(vals)
		return append(vals, a.value), nil
	})
	if err != nil {
		return nil, err
	}
	return o.attrResult(rec.ID, a, index), nil
}

// modifyAttribute replaces one instance: the given index (index 0 when none is given, which is
// how Krill renames both halves of a key pair), or in 2.0 the instance equal to CurrentAttribute.
func modifyAttribute(o *op, p *node) (any, error) {
	var req attrRequest
	if err := decodeStruct(p, &req); err != nil {
		return nil, err
	}
	rec, err := o.target(req.UID, signer.UseManage)
	if err != nil {
		return nil, err
	}
	var a attr
	var current *attr
	if o.v.v2() {
		if req.New == nil {
			return nil, kerr(rMissing, "ModifyAttribute needs a NewAttribute")
		}
		if a, err = wrapped(req.New); err != nil {
			return nil, err
		}
		if req.Current != nil {
			c, err := wrapped(req.Current)
			if err != nil {
				return nil, err
			}
			if c.name != a.name {
				return nil, kerr(rInvalidField, "CurrentAttribute %q and NewAttribute %q differ", c.name, a.name)
			}
			current = &c
		}
	} else if a, err = requestAttr(req.Attribute); err != nil {
		return nil, err
	}
	index := 0
	if a.index >= 0 {
		index = int(a.index)
	}
	err = o.changeAttr(rec, a, func(vals []*node, fixed int) ([]*node, error) {
		if current != nil {
			i, err := instanceOf(vals, fixed, current.value, a.name)
			if err != nil {
				return nil, err
			}
			index = i
		} else if a.index < 0 && len(vals) > 0 && vals[0] == nil {
			// Index 0 was deleted: without an index, modify the first live instance.
			for i, v := range vals {
				if v != nil {
					index = fixed + i
					break
				}
			}
		}
		if err := checkInstance(vals, fixed, index, a.name); err != nil {
			return nil, err
		}
		vals[index-fixed] = a.value
		return vals, nil
	})
	if err != nil {
		return nil, err
	}
	return o.attrResult(rec.ID, a, index), nil
}

// setAttribute (2.0) sets a single-valued attribute, adding or replacing it.
func setAttribute(o *op, p *node) (any, error) {
	var req attrRequest
	if err := decodeStruct(p, &req); err != nil {
		return nil, err
	}
	rec, err := o.target(req.UID, signer.UseManage)
	if err != nil {
		return nil, err
	}
	if req.New == nil {
		return nil, kerr(rMissing, "SetAttribute needs a NewAttribute")
	}
	a, err := wrapped(req.New)
	if err != nil {
		return nil, err
	}
	if a.def != nil && a.def.multi {
		return nil, kerr(uint32(kmip20.ResultReasonMultiValuedAttribute), "attribute %q is multi-valued; use AddAttribute or ModifyAttribute", a.name)
	}
	err = o.changeAttr(rec, a, func([]*node, int) ([]*node, error) { return []*node{a.value}, nil })
	if err != nil {
		return nil, err
	}
	return attrResponse{UID: rec.ID}, nil
}

// deleteAttribute removes one instance (1.x: the given index, 0 by default; 2.0: the instance equal
// to CurrentAttribute) or, with a 2.0 AttributeReference, all of them. Later indexes keep their
// numbers.
func deleteAttribute(o *op, p *node) (any, error) {
	var req attrRequest
	if err := decodeStruct(p, &req); err != nil {
		return nil, err
	}
	rec, err := o.target(req.UID, signer.UseManage)
	if err != nil {
		return nil, err
	}
	var a attr
	var current *node
	all := false
	index := 0
	switch {
	case req.Current != nil:
		if a, err = wrapped(req.Current); err != nil {
			return nil, err
		}
		current = a.value
	case req.Ref != nil:
		d, name, err := parseRef(req.Ref)
		if err != nil {
			return nil, err
		}
		a, all = attr{def: d, name: name, index: -1}, true
	case req.Name != nil:
		if req.Name.Type != tText {
			return nil, kerr(rInvalidField, "AttributeName must be a TextString")
		}
		d, name, err := lookupAttr(req.Name.text())
		if err != nil {
			return nil, err
		}
		a = attr{def: d, name: name, index: -1}
		if req.Index != nil {
			index = int(*req.Index)
			a.index = *req.Index
		}
	default:
		return nil, kerr(rMissing, "DeleteAttribute needs an AttributeName (or in 2.0 a CurrentAttribute or AttributeReference)")
	}
	var deleted *node
	err = o.changeAttr(rec, a, func(vals []*node, fixed int) ([]*node, error) {
		if all {
			if len(vals) == 0 {
				return nil, kerr(rAttrNotFound, "object %s has no attribute %q", rec.ID, a.name)
			}
			return nil, nil
		}
		if current != nil {
			i, err := instanceOf(vals, fixed, current, a.name)
			if err != nil {
				return nil, err
			}
			index = i
		}
		if err := checkInstance(vals, fixed, index, a.name); err != nil {
			return nil, err
		}
		deleted = vals[index-fixed]
		vals[index-fixed] = nil
		return vals, nil
	})
	if err != nil {
		return nil, err
	}
	if deleted == nil { // every instance went
		return attrResponse{UID: rec.ID}, nil
	}
	a.value = deleted
	return o.attrResult(rec.ID, a, index), nil
}

// attrResult answers Add, Modify and Delete: in 1.x with the instance a at index.
func (o *op) attrResult(id string, a attr, index int) attrResponse {
	resp := attrResponse{UID: id}
	if !o.v.v2() {
		a.index = int32(index)
		resp.Attribute = encodeAttr(o.v, a)
	}
	return resp
}

// instanceOf is the index of the instance of attribute name equal to want; vals start at
// index fixed, after the instances the server maintains.
func instanceOf(vals []*node, fixed int, want *node, name string) (int, error) {
	for i, v := range vals {
		if sameValue(v, want) {
			return fixed + i, nil
		}
	}
	return -1, kerr(rAttrNotFound, "attribute %q has no instance equal to CurrentAttribute", name)
}

// checkInstance refuses an index the server maintains or that names no live instance.
func checkInstance(vals []*node, fixed, index int, name string) error {
	if index < fixed {
		return kerr(rReadOnly, "attribute %q instance %d is maintained by the server", name, index)
	}
	if index-fixed >= len(vals) || vals[index-fixed] == nil {
		return kerr(rAttrNotFound, "attribute %q has no instance %d", name, index)
	}
	return nil
}
