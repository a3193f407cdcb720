package ttlv

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/big"
	"reflect"
	"strings"
	"sync"
	"time"

	tt "github.com/gemalto/kmip-go/ttlv"
)

// The struct codec maps Go structs to TTLV structures by field tags:
//
//	Field T `kmip:"TagName[,required][,omitempty][,int][,any]"`
//
// Go types map to TTLV types: string TextString, []byte ByteString, bool Boolean, int32 and int
// Integer, int64 LongInteger, other uint32 kinds Enumeration (Integer with ",int", for bit masks),
// time.Time DateTime, time.Duration Interval, *big.Int BigInteger, structs Structure, *node any
// item kept as is. Pointers are optional fields, slices repeated ones. An interface field encodes
// its dynamic value and decodes into a *node. A ",any" []*node field collects unknown items.
//
// Decoding is strict about types (a wrong type is an error naming the field) and lenient about
// unknown tags, which it ignores: newer clients add fields that older servers skip.

// nodeDecoder and nodeEncoder let a type control its own TTLV form (decodeNode on a pointer
// receiver, encodeNode on a value receiver).
type nodeDecoder interface {
	decodeNode(n *node) error
}

type nodeEncoder interface {
	encodeNode(tag tt.Tag) *node
}

type fieldInfo struct {
	index     int
	name      string
	tag       tt.Tag
	required  bool
	omitempty bool
	asInt     bool
	any       bool
	repeated  bool // a slice of items rather than a []byte: one item per element
}

type typeInfo struct {
	fields []fieldInfo
}

var typeCache sync.Map // reflect.Type → *typeInfo

var (
	timeType     = reflect.TypeFor[time.Time]()
	durationType = reflect.TypeFor[time.Duration]()
	bigIntType   = reflect.TypeFor[*big.Int]()
	nodePtrType  = reflect.TypeFor[*node]()
	decoderType  = reflect.TypeFor[nodeDecoder]()
	encoderType  = reflect.TypeFor[nodeEncoder]()
)

// implCache remembers, per type T, whether *T implements nodeDecoder and whether T implements
// nodeEncoder: reflect's Implements compares method sets by name and showed in request profiles,
// where the codec asks it for every field of every message.
var implCache sync.Map // reflect.Type → implFlags

type implFlags uint8

const (
	implDecoder implFlags = 1 << iota // *T is a nodeDecoder
	implEncoder                       // T is a nodeEncoder
)

func implOf(t reflect.Type) implFlags {
	if f, ok := implCache.Load(t); ok {
		return f.(implFlags)
	}
	var f implFlags
	if reflect.PointerTo(t).Implements(decoderType) {
		f |= implDecoder
	}
	if t.Implements(encoderType) {
		f |= implEncoder
	}
	implCache.Store(t, f)
	return f
}

// infoFor reads the field tags of a struct type once. Bad tags are programming errors: panic, and
// the tests that encode every payload type catch them.
func infoFor(t reflect.Type) *typeInfo {
	if ti, ok := typeCache.Load(t); ok {
		return ti.(*typeInfo)
	}
	ti := &typeInfo{}
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		spec, ok := sf.Tag.Lookup("kmip")
		if !ok || !sf.IsExported() {
			continue
		}
		parts := strings.Split(spec, ",")
		fi := fieldInfo{index: i, name: sf.Name, repeated: sf.Type.Kind() == reflect.Slice && sf.Type.Elem().Kind() != reflect.Uint8}
		if parts[0] != "" {
			tag, err := tt.DefaultRegistry.ParseTag(parts[0])
			if err != nil {
				panic(fmt.Sprintf("ttlv: %v.%s: unknown tag %q", t, sf.Name, parts[0]))
			}
			fi.tag = tag
		}
		for _, p := range parts[1:] {
			switch p {
			case "required":
				fi.required = true
			case "omitempty":
				fi.omitempty = true
			case "int":
				fi.asInt = true
			case "any":
				fi.any = true
			default:
				panic(fmt.Sprintf("ttlv: %v.%s: unknown option %q", t, sf.Name, p))
			}
		}
		ti.fields = append(ti.fields, fi)
	}
	typeCache.Store(t, ti)
	return ti
}

// decodeError is a well-formed message whose content does not fit the operation.
type decodeError struct {
	missing bool // a required field is absent (MissingData rather than InvalidField)
	msg     string
}

func (e *decodeError) Error() string { return e.msg }

// path locates a field for error messages; it is only rendered when there is an error.
type path struct {
	parent *path
	tag    tt.Tag
}

func (p *path) String() string {
	if p == nil {
		return ""
	}
	if p.parent == nil {
		return tagName(p.tag)
	}
	return p.parent.String() + "/" + tagName(p.tag)
}

func fieldErr(p *path, format string, args ...any) error {
	return &decodeError{msg: p.String() + ": " + fmt.Sprintf(format, args...)}
}

// decodeStruct fills the struct v points to from structure n.
func decodeStruct(n *node, v any) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.Elem().Kind() != reflect.Struct {
		panic("ttlv: decodeStruct needs a pointer to a struct")
	}
	if n == nil {
		n = &node{Type: tt.TypeStructure}
	}
	return decodeValue(n, rv.Elem(), fieldInfo{}, &path{tag: n.Tag})
}

func decodeValue(n *node, v reflect.Value, fi fieldInfo, path *path) error {
	t := v.Type()
	if v.CanAddr() && implOf(t)&implDecoder != 0 {
		return v.Addr().Interface().(nodeDecoder).decodeNode(n)
	}
	switch {
	case t == nodePtrType:
		v.Set(reflect.ValueOf(n))
		return nil
	case t.Kind() == reflect.Interface:
		v.Set(reflect.ValueOf(n))
		return nil
	case t == bigIntType:
		if n.Type != tt.TypeBigInteger {
			return typeErr(path, tt.TypeBigInteger, n)
		}
		v.Set(reflect.ValueOf(n.bigInt()))
		return nil
	case t.Kind() == reflect.Pointer:
		e := reflect.New(t.Elem())
		if err := decodeValue(n, e.Elem(), fi, path); err != nil {
			return err
		}
		v.Set(e)
		return nil
	case t == timeType:
		if n.Type != tt.TypeDateTime && n.Type != tt.TypeDateTimeExtended {
			return typeErr(path, tt.TypeDateTime, n)
		}
		v.Set(reflect.ValueOf(n.dateTime()))
		return nil
	case t == durationType:
		if n.Type != tt.TypeInterval {
			return typeErr(path, tt.TypeInterval, n)
		}
		v.SetInt(int64(time.Duration(n.u32()) * time.Second))
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Type != tt.TypeStructure {
			return typeErr(path, tt.TypeStructure, n)
		}
		return decodeFields(n, v, path)
	case reflect.String:
		if n.Type != tt.TypeTextString {
			return typeErr(path, tt.TypeTextString, n)
		}
		v.SetString(n.text())
	case reflect.Slice:
		if t.Elem().Kind() != reflect.Uint8 {
			panic("ttlv: slices are handled by decodeFields")
		}
		if n.Type != tt.TypeByteString {
			return typeErr(path, tt.TypeByteString, n)
		}
		v.SetBytes(append([]byte{}, n.Raw...)) // present but empty stays non-nil
	case reflect.Bool:
		if n.Type != tt.TypeBoolean {
			return typeErr(path, tt.TypeBoolean, n)
		}
		v.SetBool(n.boolean())
	case reflect.Int32, reflect.Int:
		if n.Type != tt.TypeInteger {
			return typeErr(path, tt.TypeInteger, n)
		}
		v.SetInt(int64(int32(n.u32())))
	case reflect.Int64:
		if n.Type != tt.TypeLongInteger {
			return typeErr(path, tt.TypeLongInteger, n)
		}
		v.SetInt(n.i64())
	case reflect.Uint32:
		want := tt.TypeEnumeration
		if fi.asInt {
			want = tt.TypeInteger
		}
		if n.Type != want {
			return typeErr(path, want, n)
		}
		v.SetUint(uint64(n.u32()))
	default:
		panic(fmt.Sprintf("ttlv: unsupported field type %v at %s", t, path.String()))
	}
	return nil
}

func typeErr(path *path, want tt.Type, n *node) error {
	return fieldErr(path, "expected %s, got %s", typeName(want), typeName(n.Type))
}

func decodeFields(n *node, v reflect.Value, at *path) error {
	ti := infoFor(v.Type())
	seen := make([]bool, len(ti.fields))
	// The paths of the children (for error messages) escape, as the chain of parents does: one
	// allocation for all of them rather than one per field.
	var subs []path
	for k, kid := range n.Kids {
		idx := -1
		anyIdx := -1
		for i, f := range ti.fields {
			if f.any {
				if anyIdx < 0 {
					anyIdx = i
				}
				continue
			}
			if f.tag == kid.Tag {
				idx = i
				break
			}
		}
		if idx < 0 {
			if anyIdx >= 0 {
				fv := v.Field(ti.fields[anyIdx].index)
				fv.Set(reflect.Append(fv, reflect.ValueOf(kid)))
			}
			continue
		}
		f := ti.fields[idx]
		fv := v.Field(f.index)
		if subs == nil {
			subs = make([]path, len(n.Kids))
		}
		sub := &subs[k]
		*sub = path{parent: at, tag: kid.Tag}
		if f.repeated {
			e := reflect.New(fv.Type().Elem()).Elem()
			if err := decodeValue(kid, e, f, sub); err != nil {
				return err
			}
			fv.Set(reflect.Append(fv, e))
			seen[idx] = true
			continue
		}
		if seen[idx] {
			return fieldErr(sub, "appears more than once")
		}
		seen[idx] = true
		if err := decodeValue(kid, fv, f, sub); err != nil {
			return err
		}
	}
	for i, f := range ti.fields {
		if f.required && !seen[i] {
			return &decodeError{missing: true, msg: at.String() + ": " + tagName(f.tag) + " is missing"}
		}
	}
	return nil
}

// encodeStruct turns a struct (or pointer to one) into a structure item with tag.
func encodeStruct(tag tt.Tag, v any) *node {
	rv := reflect.ValueOf(v)
	for rv.Kind() == reflect.Pointer {
		rv = rv.Elem()
	}
	return encodeValue(tag, rv, fieldInfo{})
}

func encodeValue(tag tt.Tag, v reflect.Value, fi fieldInfo) *node {
	if v.Kind() == reflect.Interface {
		if v.IsNil() {
			return nil
		}
		v = v.Elem()
	}
	t := v.Type()
	if implOf(t)&implEncoder != 0 {
		if v.Kind() == reflect.Pointer && v.IsNil() {
			return nil
		}
		return v.Interface().(nodeEncoder).encodeNode(tag)
	}
	switch {
	case t == nodePtrType:
		n := v.Interface().(*node)
		if n == nil {
			return nil
		}
		if tag != 0 && n.Tag != tag {
			c := *n
			c.Tag = tag
			return &c
		}
		return n
	case t == bigIntType:
		if v.IsNil() {
			return nil
		}
		return newBigInt(tag, v.Interface().(*big.Int))
	case t.Kind() == reflect.Pointer:
		if v.IsNil() {
			return nil
		}
		return encodeValue(tag, v.Elem(), fi)
	case t == timeType:
		return newDateTime(tag, v.Interface().(time.Time))
	case t == durationType:
		return newInterval(tag, time.Duration(v.Int()))
	}
	switch t.Kind() {
	case reflect.Struct:
		out := &node{Tag: tag, Type: tt.TypeStructure}
		ti := infoFor(t)
		for _, f := range ti.fields {
			fv := v.Field(f.index)
			if f.any {
				for i := 0; i < fv.Len(); i++ {
					out.Kids = append(out.Kids, fv.Index(i).Interface().(*node))
				}
				continue
			}
			if f.omitempty && fv.IsZero() {
				continue
			}
			if f.repeated {
				for i := 0; i < fv.Len(); i++ {
					if k := encodeValue(f.tag, fv.Index(i), f); k != nil {
						out.Kids = append(out.Kids, k)
					}
				}
				continue
			}
			if fv.Kind() == reflect.Slice && fv.IsNil() {
				continue
			}
			if k := encodeValue(f.tag, fv, f); k != nil {
				out.Kids = append(out.Kids, k)
			}
		}
		return out
	case reflect.String:
		return newText(tag, v.String())
	case reflect.Slice:
		return newBytes(tag, v.Bytes())
	case reflect.Bool:
		return newBool(tag, v.Bool())
	case reflect.Int32, reflect.Int:
		i := v.Int()
		if i > math.MaxInt32 || i < math.MinInt32 {
			panic(fmt.Sprintf("ttlv: %s value %d does not fit an Integer", tagName(tag), i))
		}
		return newInt(tag, int32(i))
	case reflect.Int64:
		return newLong(tag, v.Int())
	case reflect.Uint32:
		if fi.asInt {
			return &node{Tag: tag, Type: tt.TypeInteger, Raw: binary.BigEndian.AppendUint32(nil, uint32(v.Uint()))}
		}
		return newEnum(tag, uint32(v.Uint()))
	}
	panic(fmt.Sprintf("ttlv: cannot encode %v as %s", t, tagName(tag)))
}

// appendStruct appends the wire form of encodeStruct(tag, v) to dst without building the tree:
// the server encodes every response with it, and a node per field (and a slice per value) was
// most of the cost of a small response. It follows encodeValue case for case; a test checks that
// both give the same bytes.
func appendStruct(dst []byte, tag tt.Tag, v any) []byte {
	rv := reflect.ValueOf(v)
	for rv.Kind() == reflect.Pointer {
		rv = rv.Elem()
	}
	return appendValue(dst, tag, rv, fieldInfo{})
}

// appendValue appends what encodeValue(tag, v, fi) would encode; nothing where it returns nil.
func appendValue(dst []byte, tag tt.Tag, v reflect.Value, fi fieldInfo) []byte {
	if v.Kind() == reflect.Interface {
		if v.IsNil() {
			return dst
		}
		v = v.Elem()
	}
	t := v.Type()
	if implOf(t)&implEncoder != 0 {
		if v.Kind() == reflect.Pointer && v.IsNil() {
			return dst
		}
		return appendNode(dst, tag, v.Interface().(nodeEncoder).encodeNode(tag))
	}
	switch {
	case t == nodePtrType:
		return appendNode(dst, tag, v.Interface().(*node))
	case t == bigIntType:
		if v.IsNil() {
			return dst
		}
		return appendNode(dst, tag, newBigInt(tag, v.Interface().(*big.Int)))
	case t.Kind() == reflect.Pointer:
		if v.IsNil() {
			return dst
		}
		return appendValue(dst, tag, v.Elem(), fi)
	case t == timeType:
		var tm time.Time
		if v.CanAddr() {
			tm = *(*time.Time)(v.Addr().UnsafePointer()) // no boxing, unlike Interface
		} else {
			tm = v.Interface().(time.Time)
		}
		return appendUint64(dst, tag, tt.TypeDateTime, uint64(tm.Unix()))
	case t == durationType:
		return appendUint32(dst, tag, tt.TypeInterval, uint32(time.Duration(v.Int())/time.Second))
	}
	switch t.Kind() {
	case reflect.Struct:
		start := len(dst)
		dst = appendHeader(dst, tag, tt.TypeStructure, 0)
		ti := infoFor(t)
		for _, f := range ti.fields {
			fv := v.Field(f.index)
			if f.any {
				for i := 0; i < fv.Len(); i++ {
					dst = appendNode(dst, 0, fv.Index(i).Interface().(*node))
				}
				continue
			}
			if f.omitempty && fv.IsZero() {
				continue
			}
			if f.repeated {
				for i := 0; i < fv.Len(); i++ {
					dst = appendValue(dst, f.tag, fv.Index(i), f)
				}
				continue
			}
			if fv.Kind() == reflect.Slice && fv.IsNil() {
				continue
			}
			dst = appendValue(dst, f.tag, fv, f)
		}
		binary.BigEndian.PutUint32(dst[start+4:], uint32(len(dst)-start-hdrLen))
		return dst
	case reflect.String:
		return appendRaw(dst, tag, tt.TypeTextString, v.String())
	case reflect.Slice:
		return appendRaw(dst, tag, tt.TypeByteString, v.Bytes())
	case reflect.Bool:
		var b uint64
		if v.Bool() {
			b = 1
		}
		return appendUint64(dst, tag, tt.TypeBoolean, b)
	case reflect.Int32, reflect.Int:
		i := v.Int()
		if i > math.MaxInt32 || i < math.MinInt32 {
			panic(fmt.Sprintf("ttlv: %s value %d does not fit an Integer", tagName(tag), i))
		}
		return appendUint32(dst, tag, tt.TypeInteger, uint32(int32(i)))
	case reflect.Int64:
		return appendUint64(dst, tag, tt.TypeLongInteger, uint64(v.Int()))
	case reflect.Uint32:
		if fi.asInt {
			return appendUint32(dst, tag, tt.TypeInteger, uint32(v.Uint()))
		}
		return appendUint32(dst, tag, tt.TypeEnumeration, uint32(v.Uint()))
	}
	panic(fmt.Sprintf("ttlv: cannot encode %v as %s", t, tagName(tag)))
}

// appendNode appends n under tag (its own tag when tag is 0), as encodeValue's retagging copy
// would encode; nothing for nil.
func appendNode(dst []byte, tag tt.Tag, n *node) []byte {
	if n == nil {
		return dst
	}
	if tag == 0 {
		tag = n.Tag
	}
	return n.encodeAs(dst, tag)
}

func appendUint32(dst []byte, tag tt.Tag, typ tt.Type, v uint32) []byte {
	dst = appendHeader(dst, tag, typ, 4)
	return binary.BigEndian.AppendUint64(dst, uint64(v)<<32) // value and 4 bytes of padding
}

func appendUint64(dst []byte, tag tt.Tag, typ tt.Type, v uint64) []byte {
	return binary.BigEndian.AppendUint64(appendHeader(dst, tag, typ, 8), v)
}

func appendRaw[T string | []byte](dst []byte, tag tt.Tag, typ tt.Type, raw T) []byte {
	dst = append(appendHeader(dst, tag, typ, uint32(len(raw))), raw...)
	return pad(dst, len(raw))
}
