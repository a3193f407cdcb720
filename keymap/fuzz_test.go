package keymap

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzOpen feeds arbitrary file contents to Open. It must never panic or
// hang; when it accepts a file, a following Put must leave a file that
// reopens to exactly the accepted state plus the new record.
func FuzzOpen(f *testing.F) {
	valid := []byte(header)
	for i := range 3 {
		r, _ := prepare(rec(i), t0)
		valid = appendPut(valid, r)
	}
	valid = appendDel(valid, rec(1).ID, t0)
	f.Add(valid)
	f.Add(valid[:len(valid)-5])
	f.Add([]byte(""))
	f.Add([]byte("#p11bridge-keymap v2\n"))

	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "k.csv")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		// A time budget linear in the file's size, the least of three opens: a superlinear load fails.
		load := func() time.Duration {
			start := time.Now()
			if m, err := OpenReadOnly(path, quiet); err == nil {
				m.Close()
			}
			return time.Since(start)
		}
		if budget := time.Second + time.Duration(len(data))*20*time.Microsecond; load() > budget && min(load(), load()) > budget {
			t.Fatalf("opening %d bytes took longer than %v, three times", len(data), budget)
		}
		m, err := Open(path, quiet)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
				t.Fatalf("unexpected kind of error: %v", err)
			}
			return
		}
		before := all(m)
		for _, r := range before {
			if _, err := prepare(r, t0); err != nil {
				t.Fatalf("loaded a record Put would refuse: %v", err)
			}
		}
		extra := rec(999999)
		if err := m.Put(extra); err != nil {
			t.Fatalf("Put: %v", err)
		}
		want := all(m)
		m.Close()
		m, err = Open(path, quiet)
		if err != nil {
			t.Fatalf("reopen after Put: %v", err)
		}
		defer m.Close()
		got := all(m)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("reopen differs:\n got %v\nwant %v", got, want)
		}
	})
}

// FuzzText checks that every byte string survives a text field.
func FuzzText(f *testing.F) {
	for _, s := range []string{"", "a,b", `"`, "\n\r\t\\", "\xff\x00", "é🔑"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := appendText(nil, s)
		for _, c := range b {
			if c == '\n' || c == '\r' {
				t.Fatalf("line break in encoded field %q", b)
			}
		}
		if !utf8.Valid(b) {
			t.Fatalf("encoded field is not UTF-8: %q", b)
		}
		var fs [dataFields]field
		line := append([]byte(nil), b...)
		for range dataFields - 1 {
			line = append(line, ',')
		}
		if err := split(line, &fs); err != nil {
			t.Fatalf("split %q: %v", line, err)
		}
		d := newDecoder()
		ref, err := d.text(fs[0], false)
		if got := ref.get(string(d.arena)); err != nil || got != s {
			t.Fatalf("round trip of %q: got %q, %v", s, got, err)
		}
	})
}

// decodeAttrs parses a bare JSON object (no CSV quoting) on its own.
func (d *decoder) decodeAttrs(b []byte) ([]kv, *rowError) {
	d.arena, d.kvr = d.arena[:0], d.kvr[:0]
	if err := d.parseJSONObject(b); err != nil {
		return nil, err
	}
	return d.resolveAttrs(string(d.arena))
}

// FuzzAttrs checks the attrs codec against encoding/json.
func FuzzAttrs(f *testing.F) {
	f.Add(`{"a":"b"}`)
	f.Add(`{ "x" : "\u00e9\ud83d\udd11\n\"" , "y":"" }`)
	f.Add(`{}`)
	f.Add(`{"a":"\ud800"}`)
	f.Fuzz(func(t *testing.T, s string) {
		got, rerr := newDecoder().decodeAttrs([]byte(s))
		var want map[string]string
		jerr := json.Unmarshal([]byte(s), &want)
		if rerr == nil {
			// Whatever we accept, encoding/json reads the same way.
			if jerr != nil {
				t.Fatalf("we accept %q, encoding/json does not: %v", s, jerr)
			}
			if len(got) != len(want) {
				t.Fatalf("%q: got %v, json %v", s, got, want)
			}
			for i, a := range got {
				if i > 0 && got[i-1].k >= a.k {
					t.Fatalf("%q: attributes not sorted: %v", s, got)
				}
				if v, ok := want[a.k]; !ok || v != a.v {
					t.Fatalf("%q: key %q: got %q, json %q", s, a.k, a.v, v)
				}
			}
		}
		if jerr != nil || want == nil {
			return
		}
		// Our writer's output of a valid map reads back exactly.
		for k, v := range want {
			if !utf8.ValidString(k) || !utf8.ValidString(v) {
				return
			}
		}
		st, err := prepare(Record{ID: "x", Tag: []byte{1}, Class: Opaque, Attrs: want}, t0)
		if err != nil {
			t.Fatal(err)
		}
		enc := appendAttrs(nil, st.attrs)
		var fs [dataFields]field
		line := append([]byte(",,,,,,,,,,,,,"), enc...)
		if err := split(line, &fs); err != nil {
			t.Fatalf("split: %v", err)
		}
		d := newDecoder()
		if rerr := d.attrs(fs[13]); rerr != nil {
			t.Fatalf("reading back %q: %v", enc, rerr)
		}
		back, rerr2 := d.resolveAttrs(string(d.arena))
		if rerr2 != nil {
			t.Fatalf("reading back %q: %v", enc, rerr2)
		}
		if !reflect.DeepEqual(back, st.attrs) {
			t.Fatalf("round trip: got %v, want %v", back, st.attrs)
		}
	})
}
