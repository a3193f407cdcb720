package kes

import (
	"bytes"
	"encoding/base64"
)

// The key operations' request bodies are JSON objects whose members are all byte strings
// ({"context":"base64…"}), and kms-go and MinIO send them compact. bytesObject decodes that form
// without encoding/json's reflection and validation pass, about 1 µs of the 55 a generate costs
// the server; json.Unmarshal decides every body in another form.

// byteFields is a request body made only of []byte members, with its member names.
type byteFields interface {
	fields() ([]string, []*[]byte)
}

type contextBody struct {
	Context []byte `json:"context"`
}

func (b *contextBody) fields() ([]string, []*[]byte) {
	return contextNames, []*[]byte{&b.Context}
}

type ciphertextBody struct {
	Ciphertext []byte `json:"ciphertext"`
	Context    []byte `json:"context"`
}

func (b *ciphertextBody) fields() ([]string, []*[]byte) {
	return ciphertextNames, []*[]byte{&b.Ciphertext, &b.Context}
}

type plaintextBody struct {
	Plaintext []byte `json:"plaintext"`
	Context   []byte `json:"context"`
}

func (b *plaintextBody) fields() ([]string, []*[]byte) {
	return plaintextNames, []*[]byte{&b.Plaintext, &b.Context}
}

var (
	contextNames    = []string{"context"}
	ciphertextNames = []string{"ciphertext", "context"}
	plaintextNames  = []string{"plaintext", "context"}
)

// maxByteFields bounds the members of a byteFields body.
const maxByteFields = 2

// bytesObject decodes data into dst when it is a JSON object without whitespace or escapes whose
// members are each named exactly by one of names, at most once, with a base64 string value
// (standard alphabet, padded), and reports whether it did. It then sets exactly what
// json.Unmarshal would set (FuzzBytesObject checks the two agree); otherwise it sets nothing, and
// a value it decoded is wiped, since it may be a plaintext.
func bytesObject(data []byte, names []string, dst []*[]byte) bool {
	var got [maxByteFields][]byte
	var seen [maxByteFields]bool
	ok := false
	defer func() {
		if !ok {
			for _, b := range got {
				clear(b[:cap(b)])
			}
		}
	}()
	if len(data) < 2 || data[0] != '{' || data[len(data)-1] != '}' || len(names) > maxByteFields {
		return false
	}
	rest := data[1 : len(data)-1]
	for len(rest) > 0 {
		// "name":"value" then a comma, or the end.
		if rest[0] != '"' {
			return false
		}
		end := bytes.IndexByte(rest[1:], '"')
		if end < 0 {
			return false
		}
		name := rest[1 : 1+end]
		rest = rest[2+end:]
		i := 0
		for i < len(names) && string(name) != names[i] {
			i++
		}
		if i == len(names) || seen[i] || len(rest) < 2 || rest[0] != ':' || rest[1] != '"' {
			return false
		}
		rest = rest[2:]
		end = bytes.IndexByte(rest, '"')
		if end < 0 {
			return false
		}
		value := rest[:end]
		for _, c := range value {
			if !isBase64(c) {
				return false
			}
		}
		b := make([]byte, base64.StdEncoding.DecodedLen(len(value)))
		n, err := base64.StdEncoding.Decode(b, value)
		if err != nil {
			clear(b)
			return false
		}
		got[i], seen[i] = b[:n], true
		rest = rest[end+1:]
		if len(rest) > 0 {
			if rest[0] != ',' || len(rest) == 1 {
				return false
			}
			rest = rest[1:]
		}
	}
	for i := range names {
		if seen[i] {
			*dst[i] = got[i]
		}
	}
	ok = true
	return true
}

func isBase64(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '+' || c == '/' || c == '='
}
