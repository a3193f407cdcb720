package ttlv

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"time"

	"github.com/gemalto/kmip-go/kmip14"
	tt "github.com/gemalto/kmip-go/ttlv"
)

// Stored attribute values are kept in the KMIP JSON encoding (KMIP Profiles, "JSON encoding"),
// exactly as gemalto's TTLV.MarshalJSON wrote them in earlier versions: keymap rows written then
// must keep reading back as they did, and an instance of an earlier version sharing the keymap
// must read what this one writes. gemalto's MarshalJSON and UnmarshalJSON are not used: both
// re-validate a structure's whole subtree at every level, which costs time exponential in the
// nesting depth. The encoder and decoder here walk the parsed tree once, calling gemalto only for
// the name of a tag, type or enumeration value, which does not recurse.

// maxJSONInt bounds the integers written as JSON numbers; larger ones are written in hex, as
// gemalto did (2^52: a float64 holds them exactly).
const maxJSONInt = int64(1) << 52

// appendJSON appends n in the JSON encoding.
func appendJSON(dst []byte, n *node) ([]byte, error) {
	dst = append(dst, `{"tag":"`...)
	dst = append(dst, tagName(n.Tag)...)
	if n.Type != tt.TypeStructure {
		dst = append(dst, `","type":"`...)
		dst = append(dst, typeName(n.Type)...)
	}
	dst = append(dst, `","value":`...)
	var err error
	switch n.Type {
	case tt.TypeStructure:
		dst = append(dst, '[')
		// An Attribute Value after an Attribute Name is spelled with the named attribute's
		// enumeration names.
		var attrTag tt.Tag
		for i, k := range n.Kids {
			if i > 0 {
				dst = append(dst, ',')
			}
			if k.Tag == kmip14.TagAttributeName {
				attrTag = attributeTag(k)
			}
			switch {
			case k.Tag == kmip14.TagAttributeValue && k.Type == tt.TypeEnumeration:
				dst = appendJSONEnum(dst, k, attrTag)
			case k.Tag == kmip14.TagAttributeValue && k.Type == tt.TypeInteger:
				dst = appendJSONInt(dst, k, attrTag)
			default:
				if dst, err = appendJSON(dst, k); err != nil {
					return nil, err
				}
			}
		}
		return append(dst, "]}"...), nil
	case tt.TypeBoolean:
		dst = strconv.AppendBool(dst, n.i64() != 0)
	case tt.TypeEnumeration:
		dst = append(dst, '"')
		dst = append(dst, tt.DefaultRegistry.FormatEnum(n.Tag, n.u32())...)
		dst = append(dst, '"')
	case tt.TypeInteger:
		dst = appendIntValue(dst, int32(n.u32()), n.Tag)
	case tt.TypeLongInteger:
		if v := n.i64(); v <= -maxJSONInt || v >= maxJSONInt {
			dst = appendHexString(dst, n.Raw)
		} else {
			dst = strconv.AppendInt(dst, v, 10)
		}
	case tt.TypeBigInteger:
		if v := n.bigInt(); v.IsInt64() && v.CmpAbs(big.NewInt(maxJSONInt)) < 0 {
			dst = strconv.AppendInt(dst, v.Int64(), 10)
		} else {
			dst = appendHexString(dst, n.Raw)
		}
	case tt.TypeTextString:
		// encoding/json's string form (invalid UTF-8 becomes U+FFFD, <>& are escaped), as before.
		var b []byte
		if b, err = json.Marshal(n.text()); err != nil {
			return nil, err
		}
		dst = append(dst, b...)
	case tt.TypeByteString:
		dst = append(dst, '"')
		dst = hex.AppendEncode(dst, n.Raw)
		dst = append(dst, '"')
	case tt.TypeDateTime, tt.TypeDateTimeExtended:
		var t time.Time
		if n.Type == tt.TypeDateTimeExtended {
			us := n.i64()
			if us > 1<<63/1000 || us < -1<<63/1000 {
				return nil, kerr(rBadValue, "%s: DateTimeExtended value %d is out of range", tagName(n.Tag), us)
			}
			t = time.Unix(0, us*1000).UTC()
		} else {
			t = time.Unix(n.i64(), 0).UTC()
		}
		b, err := t.MarshalJSON()
		if err != nil {
			// Years outside 0–9999 have no RFC 3339 form; earlier versions refused them too.
			return nil, kerr(rBadValue, "%s: date %d is out of range (years 0 to 9999)", tagName(n.Tag), n.i64())
		}
		dst = append(dst, b...)
	case tt.TypeInterval:
		dst = strconv.AppendUint(dst, uint64(n.u32()), 10)
	default:
		return nil, fmt.Errorf("%s: cannot store an item of type %s", tagName(n.Tag), typeName(n.Type))
	}
	return append(dst, '}'), nil
}

// attributeTag is the tag an Attribute Name item names, or 0.
func attributeTag(name *node) tt.Tag {
	t, err := tt.DefaultRegistry.ParseTag(tt.NormalizeName(string(name.Raw)))
	if err != nil {
		return 0
	}
	return t
}

func appendJSONEnum(dst []byte, n *node, enumTag tt.Tag) []byte {
	dst = append(dst, `{"tag":"`...)
	dst = append(dst, tagName(n.Tag)...)
	dst = append(dst, `","type":"Enumeration","value":"`...)
	dst = append(dst, tt.DefaultRegistry.FormatEnum(enumTag, n.u32())...)
	return append(dst, `"}`...)
}

func appendJSONInt(dst []byte, n *node, enumTag tt.Tag) []byte {
	dst = append(dst, `{"tag":"`...)
	dst = append(dst, tagName(n.Tag)...)
	dst = append(dst, `","type":"Integer","value":`...)
	dst = appendIntValue(dst, int32(n.u32()), enumTag)
	return append(dst, '}')
}

// appendIntValue writes an Integer: masks by their bit names when the tag has an enumeration.
func appendIntValue(dst []byte, v int32, enumTag tt.Tag) []byte {
	if e := tt.DefaultRegistry.EnumForTag(enumTag); e != nil {
		// gemalto spells 0 as "" when no name has the value 0, which no decoder reads back
		// (FuzzAttrStore found it); 0 is written as a number instead, which every version reads.
		if name := tt.FormatInt(v, e); name != "" {
			dst = append(dst, '"')
			dst = append(dst, name...)
			return append(dst, '"')
		}
	}
	return strconv.AppendInt(dst, int64(v), 10)
}

func appendHexString(dst []byte, b []byte) []byte {
	dst = append(dst, `"0x`...)
	dst = hex.AppendEncode(dst, b)
	return append(dst, '"')
}

// errJSON says what is wrong with a stored value.
func errJSON(format string, args ...any) error {
	return fmt.Errorf("stored value: "+format, args...)
}

// nodeFromJSON builds the item that v, one decoded JSON value, encodes. It reads what gemalto's
// UnmarshalJSON read, with the same results (numbers pass through float64 as they did there), and
// checks what parsing the result as TTLV checked: the tag space and the nesting depth.
func nodeFromJSON(v any, attrTag tt.Tag, depth int) (*node, error) {
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, errJSON("an item must be a JSON object")
	}
	tagS, ok := jsonField(obj, "tag").(string)
	if !ok {
		return nil, errJSON("an item needs a tag")
	}
	tag, err := tt.DefaultRegistry.ParseTag(tagS)
	if err != nil {
		return nil, errJSON("invalid tag %q", tagS)
	}
	if b := byte(tag >> 16); b != 0x42 && b != 0x54 {
		return nil, errJSON("invalid tag 0x%06x", uint32(tag))
	}
	typ := tt.TypeStructure
	switch ts := jsonField(obj, "type").(type) {
	case nil:
	case string:
		if ts != "" {
			if typ, err = tt.DefaultRegistry.ParseType(ts); err != nil {
				return nil, errJSON("%s: invalid type %q", tagS, ts)
			}
		}
	default:
		return nil, errJSON("%s: the type must be a string", tagS)
	}
	val, present := jsonLookup(obj, "value")
	if !present {
		return nil, errJSON("%s has no value", tagS)
	}
	bad := func(want string) error {
		return errJSON("%s %s: the value must be %s", tagS, typeName(typ), want)
	}
	enumTag := tag
	if tag == kmip14.TagAttributeValue && attrTag != 0 {
		enumTag = attrTag
	}
	switch typ {
	case tt.TypeStructure:
		kids, ok := val.([]any)
		if !ok && val != nil { // null was read as an empty structure
			return nil, bad("an array")
		}
		if depth >= maxDepth {
			return nil, errJSON("structures nested deeper than %d levels", maxDepth)
		}
		n := &node{Tag: tag, Type: typ, Kids: make([]*node, 0, len(kids))}
		var at tt.Tag
		for _, kv := range kids {
			k, err := nodeFromJSON(kv, at, depth+1)
			if err != nil {
				return nil, err
			}
			if k.Tag == kmip14.TagAttributeName {
				at = attributeTag(k)
			}
			n.Kids = append(n.Kids, k)
		}
		return n, nil
	case tt.TypeBoolean:
		switch x := val.(type) {
		case bool:
			return newBool(tag, x), nil
		case string:
			switch x {
			case "0x0000000000000001":
				return newBool(tag, true), nil
			case "0x0000000000000000":
				return newBool(tag, false), nil
			}
		}
		return nil, bad("true, false or their hex forms")
	case tt.TypeTextString:
		if x, ok := val.(string); ok {
			return newText(tag, x), nil
		}
		return nil, bad("a string")
	case tt.TypeByteString:
		x, ok := val.(string)
		if !ok || strings.HasPrefix(x, "0x") {
			return nil, bad("a hex string without 0x")
		}
		b, err := hex.DecodeString(x)
		if err != nil {
			return nil, bad("a hex string")
		}
		return newBytes(tag, b), nil
	case tt.TypeInterval:
		switch x := val.(type) {
		case float64:
			d := time.Duration(x) * time.Second
			return &node{Tag: tag, Type: typ, Raw: binary.BigEndian.AppendUint32(nil, uint32(d/time.Second))}, nil
		case string:
			if b, err := hexValue(x, 4); err == nil && b != nil {
				return &node{Tag: tag, Type: typ, Raw: binary.BigEndian.AppendUint32(nil, uint32(beUint(b, 4)))}, nil
			}
		}
		return nil, bad("a number or a 0x hex string")
	case tt.TypeDateTime, tt.TypeDateTimeExtended:
		x, ok := val.(string)
		if !ok {
			return nil, bad("a string")
		}
		var t time.Time
		b, err := hexValue(x, 8)
		switch {
		case err != nil:
			return nil, bad("an RFC 3339 date or a hex string")
		case b != nil && typ == tt.TypeDateTime:
			t = time.Unix(int64(beUint(b, 8)), 0)
		case b != nil:
			// As gemalto read it: microseconds from the zero time, not from 1970.
			t = t.Add(time.Duration(beUint(b, 8)) * time.Microsecond)
		default:
			if t, err = time.Parse(time.RFC3339Nano, x); err != nil {
				return nil, bad("an RFC 3339 date")
			}
		}
		if typ == tt.TypeDateTime {
			return &node{Tag: tag, Type: typ, Raw: binary.BigEndian.AppendUint64(nil, uint64(t.Unix()))}, nil
		}
		us := t.Unix()*1000000 + int64(t.Nanosecond()/1000)
		return &node{Tag: tag, Type: typ, Raw: binary.BigEndian.AppendUint64(nil, uint64(us))}, nil
	case tt.TypeInteger:
		switch x := val.(type) {
		case float64:
			return newInt(tag, int32(x)), nil
		case string:
			if x == "" && tt.DefaultRegistry.EnumForTag(enumTag) != nil {
				// Earlier versions wrote 0 so (appendIntValue), and could not read it back.
				return newInt(tag, 0), nil
			}
			if i, err := tt.DefaultRegistry.ParseInt(enumTag, x); err == nil {
				return newInt(tag, i), nil
			}
		}
		return nil, bad("a number, a hex string or mask names")
	case tt.TypeLongInteger:
		switch x := val.(type) {
		case float64:
			return newLong(tag, int64(x)), nil
		case string:
			if b, err := hexValue(x, 8); err == nil && b != nil {
				return newLong(tag, int64(beUint(b, 8))), nil
			}
		}
		return nil, bad("a number or a 0x hex string")
	case tt.TypeBigInteger:
		switch x := val.(type) {
		case float64:
			return &node{Tag: tag, Type: typ, Raw: canonicalBigInt(binary.BigEndian.AppendUint64(nil, uint64(int64(x))))}, nil
		case string:
			if h, ok := strings.CutPrefix(x, "0x"); ok {
				if b, err := hex.DecodeString(h); err == nil && len(b)%8 == 0 {
					return &node{Tag: tag, Type: typ, Raw: canonicalBigInt(b)}, nil
				}
			}
		}
		return nil, bad("a number or a 0x hex string of a multiple of 8 bytes")
	case tt.TypeEnumeration:
		switch x := val.(type) {
		case float64:
			return newEnum(tag, uint32(x)), nil
		case string:
			if e, err := tt.DefaultRegistry.ParseEnum(enumTag, x); err == nil {
				return newEnum(tag, e), nil
			}
		}
		return nil, bad("a number or an enumeration name")
	}
	return nil, errJSON("%s: invalid type %s", tagS, typeName(typ))
}

// jsonLookup finds a member as encoding/json matches struct fields: the exact name, else one that
// differs in case only.
func jsonLookup(obj map[string]any, name string) (any, bool) {
	if v, ok := obj[name]; ok {
		return v, true
	}
	for k, v := range obj {
		if strings.EqualFold(k, name) {
			return v, true
		}
	}
	return nil, false
}

func jsonField(obj map[string]any, name string) any {
	v, _ := jsonLookup(obj, name)
	return v
}

// hexValue reads a "0x…" value of at most max significant bytes; nil, nil when s is not hex.
func hexValue(s string, max int) ([]byte, error) {
	h, ok := strings.CutPrefix(s, "0x")
	if !ok {
		return nil, nil
	}
	b, err := hex.DecodeString(h)
	if err != nil {
		return nil, err
	}
	sig := len(b)
	for i := 0; i < len(b) && b[i] == 0; i++ {
		sig--
	}
	if sig > max {
		return nil, errors.New("hex value too long")
	}
	return b, nil
}

// beUint reads a hex value as gemalto did: shorter than size bytes it is padded with leading
// zeros; longer (leading zeros), its first size bytes are read.
func beUint(b []byte, size int) uint64 {
	if len(b) < size {
		b = append(make([]byte, size-len(b)), b...)
	}
	if size == 4 {
		return uint64(binary.BigEndian.Uint32(b))
	}
	return binary.BigEndian.Uint64(b)
}

// canonicalBigInt is the shortest two's complement form of b, sign-extended to a multiple of 8
// bytes: how a BigInteger read back from JSON was always encoded.
func canonicalBigInt(b []byte) []byte {
	for len(b) > 1 && ((b[0] == 0 && b[1]&0x80 == 0) || (b[0] == 0xff && b[1]&0x80 != 0)) {
		b = b[1:]
	}
	if len(b) == 0 {
		return make([]byte, 8)
	}
	fill := byte(0)
	if b[0]&0x80 != 0 {
		fill = 0xff
	}
	out := make([]byte, (len(b)+7)&^7)
	pad := len(out) - len(b)
	for i := 0; i < pad; i++ {
		out[i] = fill
	}
	copy(out[pad:], b)
	return out
}
