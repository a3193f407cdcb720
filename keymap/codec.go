package keymap

import (
	"hash/crc32"
	"strconv"
	"time"
	"unicode/utf8"
)

// The file header: a version line, then the column names. See doc.go.
const (
	magic       = "#p11bridge-keymap v"
	version     = 1
	versionLine = "#p11bridge-keymap v1"
	columnsLine = "op,id,tag,signer,class,algorithm,size,keyid,name,state,owner,created,updated,attrs,crc32c"
	header      = versionLine + "\n" + columnsLine + "\n"
	headerLines = 2

	opPut = "put"
	opDel = "del"

	// dataFields is the number of fields before the checksum.
	dataFields = 14
	// crcSuffix is ",xxxxxxxx": the comma that ends the attrs field and the checksum.
	crcSuffix = 9

	timeLayout = "2006-01-02T15:04:05.000000000Z07:00"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// appendPut appends the row for s, newline included.
func appendPut(dst []byte, s *stored) []byte {
	start := len(dst)
	dst = append(dst, opPut...)
	dst = append(dst, ',')
	dst = appendText(dst, s.id)
	dst = append(dst, ',')
	dst = appendHex(dst, s.tag)
	dst = append(dst, ',')
	dst = appendText(dst, s.signer)
	dst = append(dst, ',')
	dst = append(dst, s.class...)
	dst = append(dst, ',')
	dst = appendText(dst, s.alg)
	dst = append(dst, ',')
	dst = strconv.AppendInt(dst, int64(s.size), 10)
	dst = append(dst, ',')
	dst = appendHex(dst, s.kid)
	dst = append(dst, ',')
	dst = appendText(dst, s.name)
	dst = append(dst, ',')
	dst = append(dst, s.state...)
	dst = append(dst, ',')
	dst = appendText(dst, s.owner)
	dst = append(dst, ',')
	dst = appendTime(dst, s.created)
	dst = append(dst, ',')
	dst = appendTime(dst, s.updated)
	dst = append(dst, ',')
	dst = appendAttrs(dst, s.attrs)
	return appendCRC(dst, start)
}

// appendDel appends a tombstone row: only op, id and updated are set.
func appendDel(dst []byte, id string, at time.Time) []byte {
	start := len(dst)
	dst = append(dst, opDel...)
	dst = append(dst, ',')
	dst = appendText(dst, id)
	dst = append(dst, ",,,,,,,,,,,"...) // tag … created
	dst = appendTime(dst, at)
	dst = append(dst, ',') // attrs stays empty
	return appendCRC(dst, start)
}

// appendCRC ends the row started at dst[start:] with its checksum and newline.
// The checksum covers every byte of the row before it, the comma included.
func appendCRC(dst []byte, start int) []byte {
	dst = append(dst, ',')
	sum := crc32.Checksum(dst[start:], castagnoli)
	const digits = "0123456789abcdef"
	for shift := 28; shift >= 0; shift -= 4 {
		dst = append(dst, digits[(sum>>uint(shift))&0xf])
	}
	return append(dst, '\n')
}

func appendHex(dst []byte, s string) []byte {
	const digits = "0123456789abcdef"
	for i := 0; i < len(s); i++ {
		dst = append(dst, digits[s[i]>>4], digits[s[i]&0xf])
	}
	return dst
}

func appendTime(dst []byte, t time.Time) []byte {
	if t.IsZero() {
		return dst
	}
	return t.UTC().AppendFormat(dst, timeLayout)
}

// appendText appends s as one field that never spans a line: control bytes,
// backslashes and invalid UTF-8 are backslash-escaped, then the field is
// quoted CSV-style when it holds a comma or a double quote.
func appendText(dst []byte, s string) []byte {
	plain, quote := true, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ',' || c == '"':
			quote = true
		case c < 0x20 || c == 0x7f || c == '\\' || c >= 0x80:
			plain = false
		}
	}
	if !plain {
		// Bytes >= 0x80 are only escaped when they are not valid UTF-8.
		plain = utf8.ValidString(s)
		for i := 0; plain && i < len(s); i++ {
			c := s[i]
			plain = !(c < 0x20 || c == 0x7f || c == '\\')
		}
	}
	if plain && !quote {
		return append(dst, s...)
	}
	if quote {
		dst = append(dst, '"')
	}
	const digits = "0123456789abcdef"
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x80 {
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				dst = append(dst, '\\', 'x', digits[c>>4], digits[c&0xf])
			} else {
				dst = append(dst, s[i:i+n]...)
			}
			i += n
			continue
		}
		switch c {
		case '"':
			dst = append(dst, '"', '"')
		case '\\':
			dst = append(dst, '\\', '\\')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			if c < 0x20 || c == 0x7f {
				dst = append(dst, '\\', 'x', digits[c>>4], digits[c&0xf])
			} else {
				dst = append(dst, c)
			}
		}
		i++
	}
	if quote {
		dst = append(dst, '"')
	}
	return dst
}

// appendAttrs appends attrs (sorted by name) as a CSV-quoted JSON object.
// JSON escapes every control character, so the field never spans a line.
// Strings must be valid UTF-8 (checked by prepare).
func appendAttrs(dst []byte, attrs []kv) []byte {
	if len(attrs) == 0 {
		return append(dst, `"{}"`...)
	}
	dst = append(dst, `"{`...)
	for i, a := range attrs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, a.k)
		dst = append(dst, ':')
		dst = appendJSONString(dst, a.v)
	}
	return append(dst, `}"`...)
}

// appendJSONString writes a JSON string with every '"' doubled, as the
// surrounding CSV quoting requires.
func appendJSONString(dst []byte, s string) []byte {
	const digits = "0123456789abcdef"
	dst = append(dst, '"', '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '"':
			dst = append(dst, '\\', '"', '"')
		case '\\':
			dst = append(dst, '\\', '\\')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			if c < 0x20 {
				dst = append(dst, '\\', 'u', '0', '0', digits[c>>4], digits[c&0xf])
			} else {
				dst = append(dst, c)
			}
		}
	}
	return append(dst, '"', '"')
}
