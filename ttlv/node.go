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

// parsePath locates an item for error messages ("/RequestMessage/BatchItem/…"). It is a chain of
// stack values, rendered only when there is an error: building the string for every item cost more
// than the rest of the parse.
type parsePath struct {
	parent *parsePath
	tag    tt.Tag
}

func (p *parsePath) String() string {
	if p == nil {
		return ""
	}
	return p.parent.String() + "/" + tagName(p.tag)
}

// parseNode parses exactly one TTLV item that must fill b completely.
func parseNode(b []byte) (*node, error) {
	s := newSlab(countTree(b, 0))
	n := s.root()
	rest, err := parseItem(n, b, 0, nil, s)
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, &parseError{msg: fmt.Sprintf("%d bytes after the end of the %s item", len(rest), tagName(n.Tag))}
	}
	return n, nil
}

// slab holds the nodes of one message, counted before parsing: two allocations per message
// rather than one per item and one per structure's children, which were most of a request's
// allocations. A node kept after the request keeps its message's slab alive; messages are small.
type slab struct {
	nodes []node
	ptrs  []*node
}

func newSlab(items int) *slab {
	if items < 1 {
		items = 1
	}
	return &slab{nodes: make([]node, items), ptrs: make([]*node, items-1)}
}

// root is the first node, for the message itself.
func (s *slab) root() *node {
	n := &s.nodes[0]
	s.nodes = s.nodes[1:]
	return n
}

// kids returns c children for a structure, from the slab while it lasts (a malformed message can
// hold more items than countTree saw). Their slice is full, so appending to it copies.
func (s *slab) kids(c int) []*node {
	var nodes []node
	var ptrs []*node
	if s != nil && len(s.nodes) >= c && len(s.ptrs) >= c {
		nodes, s.nodes = s.nodes[:c:c], s.nodes[c:]
		ptrs, s.ptrs = s.ptrs[:c:c], s.ptrs[c:]
	} else {
		nodes, ptrs = make([]node, c), make([]*node, c)
	}
	for i := range ptrs {
		ptrs[i] = &nodes[i]
	}
	return ptrs
}

// countTree counts the items in b and inside its structures, as far as their headers are
// plausible and no deeper than the parser goes; parseItem does the checking.
func countTree(b []byte, depth int) int {
	return walkItems(b, func(typ tt.Type, body []byte) int {
		if typ == tt.TypeStructure && depth < maxDepth {
			return 1 + countTree(body, depth+1)
		}
		return 1
	})
}

// countItems counts the items in b (not inside its structures), to size a structure's children.
func countItems(b []byte) int {
	return walkItems(b, func(tt.Type, []byte) int { return 1 })
}

// walkItems adds up count over the items of b, as far as their headers are plausible. An item
// whose value is cut short is counted, with what is left of it.
func walkItems(b []byte, count func(typ tt.Type, body []byte) int) int {
	c := 0
	for len(b) >= hdrLen {
		typ := tt.Type(b[3])
		l := uint64(binary.BigEndian.Uint32(b[4:8]))
		switch typ {
		case tt.TypeInteger, tt.TypeEnumeration, tt.TypeInterval:
			l = 8
		case tt.TypeTextString, tt.TypeByteString:
			l = (l + 7) &^ 7
		}
		body := b[hdrLen:]
		if uint64(len(body)) < l {
			return c + count(typ, body)
		}
		c += count(typ, body[:l])
		b = body[l:]
	}
	return c
}

// parseItem parses one item from the front of b into n and returns the rest; path locates its
// parent and s provides the nodes of its children (nil: allocate them).
func parseItem(n *node, b []byte, depth int, path *parsePath, s *slab) ([]byte, error) {
	if len(b) < hdrLen {
		return nil, &parseError{path.String(), fmt.Sprintf("truncated item header (%d bytes)", len(b))}
	}
	tag := tt.Tag(uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2]))
	typ := tt.Type(b[3])
	l := binary.BigEndian.Uint32(b[4:8])
	here := parsePath{parent: path, tag: tag}
	if b[0] != 0x42 && b[0] != 0x54 {
		return nil, &parseError{path.String(), fmt.Sprintf("invalid tag 0x%06x", uint32(tag))}
	}
	body := b[hdrLen:]
	lengthErr := func(fixed uint32) error {
		return &parseError{here.String(), fmt.Sprintf("%s length must be %d, got %d", typeName(typ), fixed, l)}
	}
	padded := uint64(l)
	switch typ {
	case tt.TypeInteger, tt.TypeEnumeration, tt.TypeInterval:
		if l != 4 {
			return nil, lengthErr(4)
		}
		padded = 8
	case tt.TypeLongInteger, tt.TypeDateTime, tt.TypeDateTimeExtended, tt.TypeBoolean:
		if l != 8 {
			return nil, lengthErr(8)
		}
	case tt.TypeBigInteger:
		if l%8 != 0 {
			return nil, &parseError{here.String(), fmt.Sprintf("BigInteger length %d is not a multiple of 8", l)}
		}
	case tt.TypeTextString, tt.TypeByteString:
		padded = (uint64(l) + 7) &^ 7
	case tt.TypeStructure:
		if depth >= maxDepth {
			return nil, &parseError{here.String(), fmt.Sprintf("structures nested deeper than %d levels", maxDepth)}
		}
	default:
		return nil, &parseError{here.String(), fmt.Sprintf("invalid item type 0x%02x", byte(typ))}
	}
	if uint64(len(body)) < padded {
		return nil, &parseError{here.String(), fmt.Sprintf("value of %d bytes is truncated to %d", padded, len(body))}
	}
	val := body[:l]
	rest := body[padded:]
	if typ == tt.TypeBoolean {
		if v := binary.BigEndian.Uint64(val); v > 1 {
			return nil, &parseError{here.String(), fmt.Sprintf("Boolean value %d is neither 0 nor 1", v)}
		}
	}
	*n = node{Tag: tag, Type: typ}
	if typ != tt.TypeStructure {
		n.Raw = val
		return rest, nil
	}
	if c := countItems(val); c > 0 {
		n.Kids = s.kids(c)
	}
	for i := 0; len(val) > 0; i++ {
		if i == len(n.Kids) {
			// The count stopped early at a malformed item; the parse below reports it.
			n.Kids = append(n.Kids, new(node))
		}
		r, err := parseItem(n.Kids[i], val, depth+1, &here, s)
		if err != nil {
			return nil, err
		}
		val = r
	}
	return rest, nil
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
