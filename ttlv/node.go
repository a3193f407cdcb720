// Package ttlv is the KMIP front end of p11bridge: the TTLV wire codec, request and response
// messages, the connection loop and one handler per KMIP operation, all on top of signer.Registry.
package ttlv

import (
	"encoding/binary"
	"fmt"
	"math/big"
	"time"

	tt "github.com/gemalto/kmip-go/ttlv"
)

// Limits of the parser. Real KMIP messages nest about ten levels; the depth bound keeps hostile input
// from recursing deeply, and every item costs at least 8 bytes, so the item count is bounded by the
// message size.
const (
	maxDepth = 32
	hdrLen   = 8
)

// node is one parsed TTLV item. Primitive values keep their wire bytes (without padding) so that a
// message re-encodes byte for byte; structures keep their children in order.
//
// The gemalto ttlv.TTLV type is not used on untrusted input: its Next() re-validates the whole
// subtree on every step, which is exponential in nesting depth, and its Decoder allocates whatever
// length a header claims.
type node struct {
	Tag  tt.Tag
	Type tt.Type
	Raw  []byte
	Kids []*node
}

// parseError says what is wrong with a message and where.
type parseError struct {
	path string
	msg  string
}

func (e *parseError) Error() string {
	if e.path == "" {
		return e.msg
	}
	return e.path + ": " + e.msg
}

// parseNode parses exactly one TTLV item that must fill b completely.
func parseNode(b []byte) (*node, error) {
	n, rest, err := parseItem(b, 0, "")
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, &parseError{msg: fmt.Sprintf("%d bytes after the end of the %s item", len(rest), tagName(n.Tag))}
	}
	return n, nil
}

// parseItem parses one item from the front of b and returns the rest.
func parseItem(b []byte, depth int, path string) (*node, []byte, error) {
	if len(b) < hdrLen {
		return nil, nil, &parseError{path, fmt.Sprintf("truncated item header (%d bytes)", len(b))}
	}
	tag := tt.Tag(uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2]))
	typ := tt.Type(b[3])
	l := binary.BigEndian.Uint32(b[4:8])
	here := path + "/" + tagName(tag)
	if b[0] != 0x42 && b[0] != 0x54 {
		return nil, nil, &parseError{path, fmt.Sprintf("invalid tag 0x%06x", uint32(tag))}
	}
	body := b[hdrLen:]
	need := func(fixed uint32) error {
		if l != fixed {
			return &parseError{here, fmt.Sprintf("%s length must be %d, got %d", typeName(typ), fixed, l)}
		}
		return nil
	}
	padded := uint64(l)
	switch typ {
	case tt.TypeInteger, tt.TypeEnumeration, tt.TypeInterval:
		if err := need(4); err != nil {
			return nil, nil, err
		}
		padded = 8
	case tt.TypeLongInteger, tt.TypeDateTime, tt.TypeDateTimeExtended, tt.TypeBoolean:
		if err := need(8); err != nil {
			return nil, nil, err
		}
	case tt.TypeBigInteger:
		if l%8 != 0 {
			return nil, nil, &parseError{here, fmt.Sprintf("BigInteger length %d is not a multiple of 8", l)}
		}
	case tt.TypeTextString, tt.TypeByteString:
		padded = (uint64(l) + 7) &^ 7
	case tt.TypeStructure:
		if depth >= maxDepth {
			return nil, nil, &parseError{here, fmt.Sprintf("structures nested deeper than %d levels", maxDepth)}
		}
	default:
		return nil, nil, &parseError{here, fmt.Sprintf("invalid item type 0x%02x", byte(typ))}
	}
	if uint64(len(body)) < padded {
		return nil, nil, &parseError{here, fmt.Sprintf("value of %d bytes is truncated to %d", padded, len(body))}
	}
	n := &node{Tag: tag, Type: typ}
	val := body[:l]
	rest := body[padded:]
	if typ == tt.TypeBoolean {
		if v := binary.BigEndian.Uint64(val); v > 1 {
			return nil, nil, &parseError{here, fmt.Sprintf("Boolean value %d is neither 0 nor 1", v)}
		}
	}
	if typ != tt.TypeStructure {
		n.Raw = val
		return n, rest, nil
	}
	for len(val) > 0 {
		kid, r, err := parseItem(val, depth+1, here)
		if err != nil {
			return nil, nil, err
		}
		n.Kids = append(n.Kids, kid)
		val = r
	}
	return n, rest, nil
}

// encode appends the wire form of n.
func (n *node) encode(dst []byte) []byte {
	return n.encodeAs(dst, n.Tag)
}

// encodeAs appends n under another tag (an attribute value stored under its own tag goes on the
// wire as AttributeValue in KMIP 1.x).
func (n *node) encodeAs(dst []byte, tag tt.Tag) []byte {
	start := len(dst)
	dst = appendHeader(dst, tag, n.Type, 0)
	if n.Type == tt.TypeStructure {
		for _, k := range n.Kids {
			dst = k.encode(dst)
		}
		binary.BigEndian.PutUint32(dst[start+4:], uint32(len(dst)-start-hdrLen))
		return dst
	}
	binary.BigEndian.PutUint32(dst[start+4:], uint32(len(n.Raw)))
	dst = append(dst, n.Raw...)
	return pad(dst, len(n.Raw))
}

func appendHeader(dst []byte, tag tt.Tag, typ tt.Type, l uint32) []byte {
	return append(dst, byte(tag>>16), byte(tag>>8), byte(tag), byte(typ), byte(l>>24), byte(l>>16), byte(l>>8), byte(l))
}

func pad(dst []byte, n int) []byte {
	if m := n % 8; m != 0 {
		dst = append(dst, make([]byte, 8-m)...)
	}
	return dst
}

// bytes is the wire form of n.
func (n *node) bytes() []byte { return n.encode(nil) }

// find returns the first child with tag, or nil.
func (n *node) find(tag tt.Tag) *node {
	if n == nil {
		return nil
	}
	for _, k := range n.Kids {
		if k.Tag == tag {
			return k
		}
	}
	return nil
}

// Typed accessors. They assume the type was checked (decode does); on a mismatch they return zero
// values rather than panic.
func (n *node) u32() uint32 {
	if len(n.Raw) != 4 {
		return 0
	}
	return binary.BigEndian.Uint32(n.Raw)
}

func (n *node) i64() int64 {
	if len(n.Raw) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(n.Raw))
}

func (n *node) text() string { return string(n.Raw) }

func (n *node) boolean() bool { return n.i64() != 0 }

func (n *node) dateTime() time.Time {
	if n.Type == tt.TypeDateTimeExtended {
		return time.UnixMicro(n.i64()).UTC()
	}
	return time.Unix(n.i64(), 0).UTC()
}

func (n *node) bigInt() *big.Int {
	v := new(big.Int).SetBytes(n.Raw)
	if len(n.Raw) > 0 && n.Raw[0]&0x80 != 0 {
		// Two's complement negative number.
		v.Sub(v, new(big.Int).Lsh(big.NewInt(1), uint(len(n.Raw))*8))
	}
	return v
}

// Constructors of primitive items.
func newInt(tag tt.Tag, v int32) *node {
	return &node{Tag: tag, Type: tt.TypeInteger, Raw: binary.BigEndian.AppendUint32(nil, uint32(v))}
}

func newEnum(tag tt.Tag, v uint32) *node {
	return &node{Tag: tag, Type: tt.TypeEnumeration, Raw: binary.BigEndian.AppendUint32(nil, v)}
}

func newLong(tag tt.Tag, v int64) *node {
	return &node{Tag: tag, Type: tt.TypeLongInteger, Raw: binary.BigEndian.AppendUint64(nil, uint64(v))}
}

func newBool(tag tt.Tag, v bool) *node {
	var b uint64
	if v {
		b = 1
	}
	return &node{Tag: tag, Type: tt.TypeBoolean, Raw: binary.BigEndian.AppendUint64(nil, b)}
}

func newText(tag tt.Tag, s string) *node {
	return &node{Tag: tag, Type: tt.TypeTextString, Raw: []byte(s)}
}

func newBytes(tag tt.Tag, b []byte) *node {
	return &node{Tag: tag, Type: tt.TypeByteString, Raw: b}
}

func newDateTime(tag tt.Tag, t time.Time) *node {
	return &node{Tag: tag, Type: tt.TypeDateTime, Raw: binary.BigEndian.AppendUint64(nil, uint64(t.Unix()))}
}

func newInterval(tag tt.Tag, d time.Duration) *node {
	return &node{Tag: tag, Type: tt.TypeInterval, Raw: binary.BigEndian.AppendUint32(nil, uint32(d/time.Second))}
}

func newBigInt(tag tt.Tag, v *big.Int) *node {
	return &node{Tag: tag, Type: tt.TypeBigInteger, Raw: bigIntBytes(v)}
}

func newStruct(tag tt.Tag, kids ...*node) *node {
	out := &node{Tag: tag, Type: tt.TypeStructure}
	for _, k := range kids {
		if k != nil {
			out.Kids = append(out.Kids, k)
		}
	}
	return out
}

// bigIntBytes is the two's complement big-endian form of v, sign-extended to a multiple of 8 bytes.
func bigIntBytes(v *big.Int) []byte {
	if v == nil {
		v = new(big.Int)
	}
	var b []byte
	if v.Sign() >= 0 {
		b = v.Bytes()
		if len(b) == 0 || b[0]&0x80 != 0 {
			b = append([]byte{0}, b...)
		}
	} else {
		// Two's complement of a negative number: 2^(8k) + v with enough bytes for the sign bit.
		k := (v.BitLen() + 8) / 8
		b = new(big.Int).Add(new(big.Int).Lsh(big.NewInt(1), uint(k)*8), v).Bytes()
		for len(b) < k {
			b = append([]byte{0xff}, b...)
		}
	}
	fill := byte(0)
	if b[0]&0x80 != 0 {
		fill = 0xff
	}
	for len(b)%8 != 0 {
		b = append([]byte{fill}, b...)
	}
	return b
}

// tagName is the normalized KMIP name of a tag (or its hex form).
func tagName(t tt.Tag) string { return tt.DefaultRegistry.FormatTag(t) }

func typeName(t tt.Type) string { return tt.DefaultRegistry.FormatType(t) }
