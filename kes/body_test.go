package kes

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

// bodyCases are bodies of both forms: the compact one bytesObject takes and those it leaves to
// json.Unmarshal.
var bodyCases = []struct {
	body string
	fast bool
}{
	{`{}`, true},
	{`{"context":""}`, true},
	{`{"context":"eyJhIjoiYiJ9"}`, true},
	{`{"ciphertext":"AAEC","context":"AwQ="}`, true},
	{`{"context":"AwQ=","ciphertext":"AAEC"}`, true},
	{`{"plaintext":"c2VjcmV0"}`, true},
	{`{ "context":"AwQ="}`, false},                 // whitespace
	{`{"Context":"AwQ="}`, false},                  // json matches names without case
	{`{"context":"AwQ=","context":"AAEC"}`, false}, // twice: json keeps the last
	{`{"context":null}`, false},
	{`{"context":"AwQ\u003d"}`, false}, // an escape
	{`{"context":"AwQ"}`, false},       // unpadded
	{`{"context":"A=wQ"}`, false},      // padding inside
	{`{"context":"AwQ=",}`, false},
	{`{"context":"AwQ="`, false},
	{`{"other":"AwQ="}`, false},
	{`{"context":"AwQ="}x`, false},
	{`[]`, false},
}

// Compact bodies are taken into a ciphertextBody (the largest set of names but plaintext's);
// the others are left to json.Unmarshal.
func TestBytesObject(t *testing.T) {
	for _, c := range bodyCases {
		v := byteFields(&ciphertextBody{})
		if bytes.Contains([]byte(c.body), []byte(`"plaintext"`)) {
			v = &plaintextBody{}
		}
		names, dst := v.fields()
		if got := bytesObject([]byte(c.body), names, dst); got != c.fast {
			t.Errorf("%s into %T: taken %v, want %v", c.body, v, got, c.fast)
		}
	}
}

// FuzzBytesObject: whatever bytesObject takes, json.Unmarshal takes too and decodes to the same
// values, nil or empty alike; what it refuses it leaves untouched.
func FuzzBytesObject(f *testing.F) {
	for _, c := range bodyCases {
		f.Add([]byte(c.body))
	}
	makers := []func() byteFields{
		func() byteFields { return &contextBody{} },
		func() byteFields { return &ciphertextBody{} },
		func() byteFields { return &plaintextBody{} },
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// A time budget linear in the body's size, the least of three decodes.
		decode := func() time.Duration {
			start := time.Now()
			for _, mk := range makers {
				names, dst := mk().fields()
				bytesObject(data, names, dst)
			}
			return time.Since(start)
		}
		if budget := time.Second + time.Duration(len(data))*20*time.Microsecond; decode() > budget && min(decode(), decode()) > budget {
			t.Fatalf("decoding %d bytes took longer than %v, three times", len(data), budget)
		}
		for _, mk := range makers {
			fast, slow := mk(), mk()
			names, dst := fast.fields()
			if !bytesObject(data, names, dst) {
				for i, d := range dst {
					if *d != nil {
						t.Fatalf("%q: refused but set %s", data, names[i])
					}
				}
				continue
			}
			if err := json.Unmarshal(data, slow); err != nil {
				t.Fatalf("%q: bytesObject took it, json.Unmarshal refuses it: %v", data, err)
			}
			_, want := slow.fields()
			for i := range dst {
				if (*dst[i] == nil) != (*want[i] == nil) || !bytes.Equal(*dst[i], *want[i]) {
					t.Fatalf("%q: %s is %q (nil %v), json.Unmarshal gives %q (nil %v)", data, names[i], *dst[i], *dst[i] == nil, *want[i], *want[i] == nil)
				}
			}
		}
	})
}
