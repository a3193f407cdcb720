package keymap

import (
	"bytes"
	"encoding/hex"
	"hash/crc32"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// rowError is why one line could not be loaded. torn marks damage that a
// crash in the middle of a write can leave behind (the checksum does not
// match or cannot be found); only such damage on the last line is forgiven.
type rowError struct {
	msg  string
	torn bool
}

func (e *rowError) Error() string { return e.msg }

func badRow(msg string) *rowError  { return &rowError{msg: msg} }
func tornRow(msg string) *rowError { return &rowError{msg: msg, torn: true} }

// field is one CSV field of a row; dq is set when it was quoted and holds
// doubled quotes that must be collapsed.
type field struct {
	b  []byte
	dq bool
}

// sref is a decoded string: an interned string, or a span of the row's
// arena that becomes a substring of the arena's one allocation.
type sref struct {
	s        string
	off, end int
}

func (r sref) get(all string) string {
	if r.end > r.off {
		return all[r.off:r.end]
	}
	return r.s
}

type kvRef struct{ k, v sref }

// decoder parses rows. Every string of a row that is not interned (id,
// name, tag, key id, most attribute values) is decoded into one arena and
// converted with a single allocation: a million rows then cost the garbage
// collector a few million objects less. Strings that repeat across rows
// (signer, algorithm, owner, attribute names, short values) are interned.
// A decoder must not be shared between goroutines.
type decoder struct {
	arena   []byte
	scratch []byte
	kvr     []kvRef
	intern  map[string]string
}

// maxInterned bounds a decoder's intern table; later strings go to the arena.
const maxInterned = 8192

func newDecoder() *decoder {
	return &decoder{intern: make(map[string]string)}
}

// finishRef returns the arena bytes from off as a string reference,
// interned when asked and possible.
func (d *decoder) finishRef(off int, intern bool) sref {
	if intern {
		b := d.arena[off:]
		if s, ok := d.intern[string(b)]; ok {
			d.arena = d.arena[:off]
			return sref{s: s}
		}
		if len(d.intern) < maxInterned {
			s := string(b)
			d.intern[s] = s
			d.arena = d.arena[:off]
			return sref{s: s}
		}
	}
	return sref{off: off, end: len(d.arena)}
}

// checkCRC verifies the trailing checksum of line (without its newline) and
// returns the bytes before the ",crc" suffix.
func checkCRC(line []byte) ([]byte, *rowError) {
	n := len(line)
	if n < crcSuffix || line[n-crcSuffix] != ',' {
		return nil, tornRow("no checksum at the end of the row")
	}
	var want uint32
	for _, c := range line[n-8:] {
		v, ok := unhex(c)
		if !ok {
			return nil, tornRow("checksum is not 8 hex digits")
		}
		want = want<<4 | uint32(v)
	}
	if got := crc32.Checksum(line[:n-8], castagnoli); got != want {
		return nil, tornRow("checksum mismatch (row damaged)")
	}
	return line[:n-crcSuffix], nil
}

// split cuts body into exactly dataFields CSV fields.
func split(body []byte, out *[dataFields]field) *rowError {
	pos := 0
	for k := range dataFields {
		if pos < len(body) && body[pos] == '"' {
			j, dq := pos+1, false
			for {
				q := bytes.IndexByte(body[j:], '"')
				if q < 0 {
					return badRow("unterminated quoted field " + strconv.Itoa(k+1))
				}
				j += q
				if j+1 < len(body) && body[j+1] == '"' {
					dq = true
					j += 2
					continue
				}
				break
			}
			out[k] = field{b: body[pos+1 : j], dq: dq}
			pos = j + 1
		} else {
			end := bytes.IndexByte(body[pos:], ',')
			if end < 0 {
				end = len(body)
			} else {
				end += pos
			}
			if bytes.IndexByte(body[pos:end], '"') >= 0 {
				return badRow("stray quote in field " + strconv.Itoa(k+1))
			}
			out[k] = field{b: body[pos:end]}
			pos = end
		}
		if k == dataFields-1 {
			if pos != len(body) {
				return badRow("more than " + strconv.Itoa(dataFields+1) + " fields")
			}
			break
		}
		if pos >= len(body) {
			return badRow("only " + strconv.Itoa(k+2) + " fields, want " + strconv.Itoa(dataFields+1))
		}
		if body[pos] != ',' {
			return badRow("unexpected character after quoted field " + strconv.Itoa(k+1))
		}
		pos++
	}
	return nil
}

// parsed is one decoded row: a put (e set) or a tombstone (only id).
type parsed struct {
	id string
	e  *entry
}

// slot puts a loaded record next to its entry: one allocation, and one
// cache line less to fetch when the indexes are built.
type slot struct {
	e entry
	s stored
}

// parse decodes one line (without its newline).
func (d *decoder) parse(line []byte) (parsed, *rowError) {
	body, rerr := checkCRC(line)
	if rerr != nil {
		return parsed{}, rerr
	}
	var f [dataFields]field
	if rerr := split(body, &f); rerr != nil {
		return parsed{}, rerr
	}
	d.arena = d.arena[:0]
	idr, err := d.text(f[1], false)
	if err != nil {
		return parsed{}, badRow("id: " + err.msg)
	}
	if idr.end == idr.off {
		return parsed{}, badRow("empty id")
	}
	switch string(f[0].b) {
	case opDel:
		for k := 2; k < dataFields; k++ {
			if k != 12 && len(f[k].b) > 0 {
				return parsed{}, badRow("tombstone has a value in column " + strconv.Itoa(k+1))
			}
		}
		if _, err := parseTime(f[12].b); err != nil {
			return parsed{}, badRow("updated: " + err.msg)
		}
		return parsed{id: idr.get(string(d.arena))}, nil
	case opPut:
	default:
		return parsed{}, badRow("unknown op " + strconv.Quote(string(f[0].b)))
	}

	var hexErr error
	off := len(d.arena)
	if d.arena, hexErr = hex.AppendDecode(d.arena, f[2].b); hexErr != nil || f[2].dq {
		return parsed{}, badRow("tag is not hex")
	}
	tagr := sref{off: off, end: len(d.arena)}
	if n := tagr.end - tagr.off; n == 0 || n > MaxTagLen {
		return parsed{}, badRow("tag must be 1 to " + strconv.Itoa(MaxTagLen) + " bytes")
	}
	off = len(d.arena)
	if d.arena, hexErr = hex.AppendDecode(d.arena, f[7].b); hexErr != nil || f[7].dq {
		return parsed{}, badRow("keyid is not hex")
	}
	kidr := sref{off: off, end: len(d.arena)}

	sl := &slot{}
	r := &sl.s
	var ok bool
	signer, err := d.text(f[3], true)
	if err != nil {
		return parsed{}, badRow("signer: " + err.msg)
	}
	if r.class, ok = parseClass(f[4].b); !ok {
		return parsed{}, badRow("unknown class " + strconv.Quote(string(f[4].b)))
	}
	alg, err := d.text(f[5], true)
	if err != nil {
		return parsed{}, badRow("algorithm: " + err.msg)
	}
	if r.size, ok = parseSize(f[6].b); !ok {
		return parsed{}, badRow("size " + strconv.Quote(string(f[6].b)) + " is not a non-negative integer")
	}
	name, err := d.text(f[8], false)
	if err != nil {
		return parsed{}, badRow("name: " + err.msg)
	}
	if r.state, ok = parseState(f[9].b); !ok {
		return parsed{}, badRow("unknown state " + strconv.Quote(string(f[9].b)))
	}
	owner, err := d.text(f[10], true)
	if err != nil {
		return parsed{}, badRow("owner: " + err.msg)
	}
	if r.created, err = parseTime(f[11].b); err != nil {
		return parsed{}, badRow("created: " + err.msg)
	}
	if r.updated, err = parseTime(f[12].b); err != nil {
		return parsed{}, badRow("updated: " + err.msg)
	}
	if err := d.attrs(f[13]); err != nil {
		return parsed{}, badRow("attrs: " + err.msg)
	}

	all := string(d.arena)
	r.id, r.signer, r.alg = idr.get(all), signer.get(all), alg.get(all)
	r.name, r.owner = name.get(all), owner.get(all)
	r.tag, r.kid = tagr.get(all), kidr.get(all)
	if r.attrs, err = d.resolveAttrs(all); err != nil {
		return parsed{}, badRow("attrs: " + err.msg)
	}
	sl.e.id, sl.e.st = r.id, r
	return parsed{id: r.id, e: &sl.e}, nil
}

// text decodes a text field into the arena: collapses doubled quotes, then
// undoes the backslash escapes of appendText.
func (d *decoder) text(f field, intern bool) (sref, *rowError) {
	b := f.b
	off := len(d.arena)
	if !f.dq && bytes.IndexByte(b, '\\') < 0 {
		d.arena = append(d.arena, b...)
		return d.finishRef(off, intern), nil
	}
	out := d.arena
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case c == '"':
			// split guarantees quotes inside a quoted field come in pairs.
			out = append(out, '"')
			i++
		case c == '\\':
			if i+1 >= len(b) {
				return sref{}, badRow("backslash at end of field")
			}
			i++
			switch b[i] {
			case '\\':
				out = append(out, '\\')
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case 'x':
				if i+2 >= len(b) {
					return sref{}, badRow(`truncated \x escape`)
				}
				hi, ok1 := unhex(b[i+1])
				lo, ok2 := unhex(b[i+2])
				if !ok1 || !ok2 {
					return sref{}, badRow(`bad \x escape`)
				}
				out = append(out, hi<<4|lo)
				i += 2
			default:
				return sref{}, badRow("unknown escape \\" + string(rune(b[i])))
			}
		default:
			out = append(out, c)
		}
	}
	d.arena = out
	return d.finishRef(off, intern), nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func parseSize(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	return atoi(b)
}

// atoi reads decimal digits (no sign); the caller bounds the length.
func atoi(b []byte) (int, bool) {
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// parseTime reads what appendTime writes, with a fast path for its fixed
// layout; other RFC 3339 forms (hand edits) go through time.Parse.
func parseTime(b []byte) (time.Time, *rowError) {
	if len(b) == 0 {
		return time.Time{}, nil
	}
	if t, ok := fastTime(b); ok {
		return t, nil
	}
	t, err := time.Parse(time.RFC3339Nano, string(b))
	if err != nil {
		return time.Time{}, badRow("bad time " + strconv.Quote(string(b)))
	}
	if y := t.UTC().Year(); y < 0 || y > 9999 {
		return time.Time{}, badRow("time " + strconv.Quote(string(b)) + " is outside years 0000-9999")
	}
	return t.UTC(), nil
}

// fastTime parses exactly "YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ".
func fastTime(b []byte) (time.Time, bool) {
	if len(b) != 30 || b[4] != '-' || b[7] != '-' || b[10] != 'T' || b[13] != ':' ||
		b[16] != ':' || b[19] != '.' || b[29] != 'Z' {
		return time.Time{}, false
	}
	y, ok1 := atoi(b[0:4])
	mo, ok2 := atoi(b[5:7])
	d, ok3 := atoi(b[8:10])
	h, ok4 := atoi(b[11:13])
	mi, ok5 := atoi(b[14:16])
	s, ok6 := atoi(b[17:19])
	ns, ok7 := atoi(b[20:29])
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7) ||
		mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 59 {
		return time.Time{}, false
	}
	t := time.Date(y, time.Month(mo), d, h, mi, s, ns, time.UTC)
	if t.Day() != d { // e.g. February 30th: let time.Parse report it
		return time.Time{}, false
	}
	return t, true
}

// attrs decodes the attrs field, a JSON object of strings once the CSV
// quotes are collapsed, into d.kvr. An empty field or {} means none.
func (d *decoder) attrs(f field) *rowError {
	d.kvr = d.kvr[:0]
	b := f.b
	if f.dq {
		out := d.scratch[:0]
		for i := 0; i < len(b); i++ {
			out = append(out, b[i])
			if b[i] == '"' {
				i++ // skip the second quote of the pair
			}
		}
		d.scratch = out
		b = out
	}
	if len(b) == 0 {
		return nil
	}
	return d.parseJSONObject(b)
}

// resolveAttrs turns d.kvr into attributes sorted by name, refusing
// duplicate names.
func (d *decoder) resolveAttrs(all string) ([]kv, *rowError) {
	if len(d.kvr) == 0 {
		return nil, nil
	}
	out := make([]kv, len(d.kvr))
	sorted := true
	for i, r := range d.kvr {
		out[i] = kv{r.k.get(all), r.v.get(all)}
		if i > 0 && out[i-1].k >= out[i].k {
			sorted = false
		}
	}
	if !sorted {
		slices.SortStableFunc(out, func(a, b kv) int { return strings.Compare(a.k, b.k) })
		for i := 1; i < len(out); i++ {
			if out[i].k == out[i-1].k {
				return nil, badRow("duplicate attribute " + strconv.Quote(out[i].k))
			}
		}
	}
	return out, nil
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// parseJSONObject parses a JSON object whose values are all strings into
// d.kvr. It is strict: invalid UTF-8 and lone surrogates are errors, since
// the writer never produces them.
func (d *decoder) parseJSONObject(b []byte) *rowError {
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return badRow("not a JSON object")
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		i++
	} else {
		for {
			k, j, err := d.parseJSONString(b, i, true)
			if err != nil {
				return err
			}
			i = skipWS(b, j)
			if i >= len(b) || b[i] != ':' {
				return badRow("expected ':' after JSON key")
			}
			i = skipWS(b, i+1)
			v, j, err := d.parseJSONString(b, i, false)
			if err != nil {
				return err
			}
			d.kvr = append(d.kvr, kvRef{k, v})
			i = skipWS(b, j)
			if i < len(b) && b[i] == ',' {
				i = skipWS(b, i+1)
				continue
			}
			if i < len(b) && b[i] == '}' {
				i++
				break
			}
			return badRow("expected ',' or '}' in JSON object")
		}
	}
	if skipWS(b, i) != len(b) {
		return badRow("data after JSON object")
	}
	return nil
}

// parseJSONString decodes the JSON string starting at b[i] into the arena
// and returns it and the index after its closing quote. Names and short
// values are interned.
func (d *decoder) parseJSONString(b []byte, i int, key bool) (sref, int, *rowError) {
	if i >= len(b) || b[i] != '"' {
		return sref{}, 0, badRow("expected JSON string")
	}
	i++
	off := len(d.arena)
	start := i
	for ; i < len(b); i++ {
		c := b[i]
		if c == '"' || c == '\\' {
			break
		}
		if c < 0x20 {
			return sref{}, 0, badRow("control character in JSON string")
		}
	}
	out := append(d.arena, b[start:i]...)
	for i < len(b) {
		c := b[i]
		switch {
		case c == '"':
			d.arena = out
			if !utf8.Valid(out[off:]) {
				return sref{}, 0, badRow("invalid UTF-8 in JSON string")
			}
			return d.finishRef(off, key || len(out)-off <= 16), i + 1, nil
		case c < 0x20:
			return sref{}, 0, badRow("control character in JSON string")
		case c != '\\':
			out = append(out, c)
			i++
			continue
		}
		if i+1 >= len(b) {
			break
		}
		e := b[i+1]
		i += 2
		switch e {
		case '"', '\\', '/':
			out = append(out, e)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, ok := hex4(b, i)
			if !ok {
				return sref{}, 0, badRow(`bad \u escape in JSON string`)
			}
			i += 4
			if r >= 0xd800 && r < 0xdc00 {
				// A high surrogate must be followed by an escaped low one.
				if i+1 < len(b) && b[i] == '\\' && b[i+1] == 'u' {
					if lo, ok := hex4(b, i+2); ok && lo >= 0xdc00 && lo < 0xe000 {
						r = 0x10000 + (r-0xd800)<<10 + (lo - 0xdc00)
						i += 6
						out = utf8.AppendRune(out, r)
						continue
					}
				}
				return sref{}, 0, badRow("lone surrogate in JSON string")
			}
			if r >= 0xdc00 && r < 0xe000 {
				return sref{}, 0, badRow("lone surrogate in JSON string")
			}
			out = utf8.AppendRune(out, r)
		default:
			return sref{}, 0, badRow("unknown escape in JSON string")
		}
	}
	return sref{}, 0, badRow("unterminated JSON string")
}

func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		v, ok := unhex(c)
		if !ok {
			return 0, false
		}
		r = r<<4 | rune(v)
	}
	return r, true
}
