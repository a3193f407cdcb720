package keymap

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// logBuf collects log output so tests can check warnings.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func newLog() (*slog.Logger, *logBuf) {
	lb := &logBuf{}
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

var quiet = slog.New(slog.DiscardHandler)

func mustOpen(t testing.TB, path string) *Map {
	t.Helper()
	m, err := Open(path, quiet)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return m
}

func tag(i int) []byte {
	b := make([]byte, 20)
	copy(b, fmt.Sprintf("tag-%016d", i))
	return b
}

var t0 = time.Date(2025, 3, 4, 5, 6, 7, 890123456, time.UTC)

func rec(i int) Record {
	return Record{
		ID:        fmt.Sprintf("id-%06d", i),
		Tag:       tag(i),
		Signer:    "hsm-a",
		Class:     SecretKey,
		Algorithm: "AES",
		Size:      256,
		Name:      fmt.Sprintf("key-%d", i),
		State:     Active,
		Owner:     "a1b2c3",
		Created:   t0,
		Updated:   t0.Add(time.Duration(i) * time.Second),
		Attrs:     map[string]string{"usage": "12", "n": fmt.Sprint(i)},
	}
}

func mustPut(t testing.TB, m *Map, r Record) {
	t.Helper()
	if err := m.Put(r); err != nil {
		t.Fatalf("Put(%q): %v", r.ID, err)
	}
}

// all returns the map's records in ID order.
func all(m *Map) []Record {
	var out []Record
	m.Range(func(r Record) bool { out = append(out, r); return true })
	return out
}

func equalRecs(t *testing.T, what string, got, want []Record) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d records, want %d", what, len(got), len(want))
	}
	for i := range got {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Fatalf("%s: record %d\n got %#v\nwant %#v", what, i, got[i], want[i])
		}
	}
}

func TestRoundTripEveryField(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keymap.csv")
	m := mustOpen(t, path)
	tricky := []string{
		"plain",
		"comma, inside",
		`quote " inside`,
		`"starts and ends with quotes"`,
		"new\nline",
		"cr\r\nlf",
		"tab\tand\\backslash\\n not a newline",
		"unicode: héllo wörld 鍵 🔑 \u2028 \u00a0",
		"nul\x00and\x01ctl\x7f",
		"invalid utf-8: \xff\xfe\xc3",
		`\x41 looks like an escape`,
		",",
		`"`,
		"\n",
		"   spaces   ",
		"",
	}
	loc := time.FixedZone("CEST", 2*3600)
	var want []Record
	for i, s := range tricky {
		r := Record{
			ID:        fmt.Sprintf("%02d-%s", i, s),
			Tag:       append(tag(i), byte(i), 0, 0xff),
			Signer:    "signer " + s,
			Class:     []Class{SecretKey, PrivateKey, PublicKey, Certificate, SecretData, Opaque}[i%6],
			Algorithm: "alg" + s,
			Size:      i * 1024,
			KeyID:     []byte{byte(i), 0, '\n', ',', '"', 0xff},
			Name:      s,
			State:     []State{"", PreActive, Active, Deactivated, Compromised, Destroyed, DestroyedCompromised}[i%7],
			Owner:     "owner" + s,
			Created:   time.Date(2024, 1, 2, 3, 4, 5, i, loc),
			Updated:   time.Date(2024, 1, 2, 3, 4, 5, 999999999-i, time.UTC),
			Attrs: map[string]string{
				"k":                                 strings.ToValidUTF8(s, "?"),
				strings.ToValidUTF8(s, "?") + "key": "v" + strings.ToValidUTF8(s, "?"),
				"json \"\\/\b\f":                    "\u0000\u001f\u2028\U0001F511",
			},
		}
		if i%5 == 0 {
			r.KeyID = nil
			r.Attrs = nil
			r.Created = time.Time{}
		}
		mustPut(t, m, r)
		exp := r.Clone()
		exp.Created = exp.Created.UTC()
		if r.Created.IsZero() {
			exp.Created = time.Time{}
		}
		want = append(want, exp)
	}
	check := func(what string, m *Map) {
		t.Helper()
		for _, w := range want {
			got, ok := m.Get(w.ID)
			if !ok {
				t.Fatalf("%s: Get(%q) missing", what, w.ID)
			}
			if !reflect.DeepEqual(got, w) {
				t.Fatalf("%s: Get(%q)\n got %#v\nwant %#v", what, w.ID, got, w)
			}
		}
		if m.Len() != len(want) {
			t.Fatalf("%s: Len %d, want %d", what, m.Len(), len(want))
		}
	}
	check("before reopen", m)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	m = mustOpen(t, path)
	defer m.Close()
	check("after reopen", m)

	// One row per physical line, and readable by a standard CSV reader.
	data, _ := os.ReadFile(path)
	if n := bytes.Count(data, []byte("\n")); n != headerLines+len(want) {
		t.Fatalf("file has %d lines, want %d", n, headerLines+len(want))
	}
	cr := csv.NewReader(bytes.NewReader(data))
	cr.FieldsPerRecord = -1
	rows, err := cr.ReadAll()
	if err != nil {
		t.Fatalf("encoding/csv cannot read the file: %v", err)
	}
	for i, row := range rows[headerLines:] {
		if len(row) != dataFields+1 {
			t.Fatalf("csv row %d has %d fields", i, len(row))
		}
	}
	if strings.Join(rows[1], ",") != columnsLine {
		t.Fatalf("columns: %q", rows[1])
	}
}

func TestPutCopiesAndGetClones(t *testing.T) {
	m := mustOpen(t, filepath.Join(t.TempDir(), "k.csv"))
	defer m.Close()
	r := rec(1)
	r.KeyID = []byte{1, 2, 3}
	mustPut(t, m, r)
	r.Tag[0] ^= 0xff
	r.KeyID[0] = 9
	r.Attrs["usage"] = "changed"
	got, _ := m.Get(r.ID)
	if got.Tag[0] != 't' || got.KeyID[0] != 1 || got.Attrs["usage"] != "12" {
		t.Fatalf("Put did not copy its input: %#v", got)
	}
	got.Tag[0], got.KeyID[0], got.Attrs["usage"] = 0, 0, "x"
	again, _ := m.Get(r.ID)
	if again.Tag[0] != 't' || again.KeyID[0] != 1 || again.Attrs["usage"] != "12" {
		t.Fatalf("Get returned shared data: %#v", again)
	}
	for _, rs := range [][]Record{m.ByTag(tag(1)), m.ByKeyID([]byte{1, 2, 3}), m.ByName("key-1")} {
		if len(rs) != 1 {
			t.Fatalf("lookup: %d records", len(rs))
		}
		rs[0].Attrs["usage"] = "y"
	}
	again, _ = m.Get(r.ID)
	if again.Attrs["usage"] != "12" {
		t.Fatal("lookup returned shared attrs")
	}
}

func TestUpdatedStamped(t *testing.T) {
	m := mustOpen(t, filepath.Join(t.TempDir(), "k.csv"))
	defer m.Close()
	r := rec(1)
	r.Updated = time.Time{}
	before := time.Now()
	mustPut(t, m, r)
	got, _ := m.Get(r.ID)
	if got.Updated.Before(before.Add(-time.Second)) || got.Updated.Location() != time.UTC {
		t.Fatalf("Updated not stamped: %v", got.Updated)
	}
}

func TestLastRowWinsAndReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.csv")
	m := mustOpen(t, path)
	for v := range 5 {
		r := rec(1)
		r.Name = fmt.Sprintf("v%d", v)
		r.State = []State{PreActive, Active, Deactivated, Compromised, Destroyed}[v]
		mustPut(t, m, r)
	}
	mustPut(t, m, rec(2))
	got, _ := m.Get(rec(1).ID)
	if got.Name != "v4" || got.State != Destroyed || m.Len() != 2 {
		t.Fatalf("got %q %q len %d", got.Name, got.State, m.Len())
	}
	want := all(m)
	m.Close()
	m = mustOpen(t, path)
	defer m.Close()
	equalRecs(t, "reopen", all(m), want)
}

func TestTombstones(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.csv")
	m := mustOpen(t, path)
	for i := range 4 {
		mustPut(t, m, rec(i))
	}
	if err := m.Delete(rec(1).ID); err != nil {
		t.Fatal(err)
	}
	err := m.Delete(rec(1).ID)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), rec(1).ID) {
		t.Fatalf("second delete: %v", err)
	}
	if err := m.Delete("never-there"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete unknown: %v", err)
	}
	if _, ok := m.Get(rec(1).ID); ok {
		t.Fatal("deleted record still there")
	}
	// Delete then re-create the same id.
	if err := m.Delete(rec(2).ID); err != nil {
		t.Fatal(err)
	}
	r2 := rec(2)
	r2.Name = "reborn"
	mustPut(t, m, r2)
	want := all(m)
	if len(want) != 3 {
		t.Fatalf("%d records", len(want))
	}
	m.Close()
	m = mustOpen(t, path)
	defer m.Close()
	equalRecs(t, "reopen", all(m), want)
	if _, ok := m.Get(rec(1).ID); ok {
		t.Fatal("tombstone lost on reopen")
	}
	if got := m.ByName("key-1"); got != nil {
		t.Fatal("deleted record still indexed")
	}
}

func TestIndexesFollowUpdates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.csv")
	m := mustOpen(t, path)
	// A key pair: two records sharing one tag and key id.
	priv := rec(1)
	priv.ID, priv.Class, priv.Algorithm, priv.Size = "b-priv", PrivateKey, "RSA", 2048
	priv.KeyID = []byte("kid-one-0123456789ab")
	pub := priv.Clone()
	pub.ID, pub.Class = "a-pub", PublicKey
	mustPut(t, m, priv)
	mustPut(t, m, pub)
	other := rec(2)
	other.Name = priv.Name // same name, different key
	mustPut(t, m, other)

	ids := func(rs []Record) string {
		var s []string
		for _, r := range rs {
			s = append(s, r.ID)
		}
		return strings.Join(s, " ")
	}
	check := func(what string, m *Map) {
		t.Helper()
		if got := ids(m.ByTag(priv.Tag)); got != "a-pub b-priv" {
			t.Fatalf("%s: ByTag %q", what, got)
		}
		if got := ids(m.ByKeyID([]byte("kid-one-0123456789ab"))); got != "" {
			t.Fatalf("%s: stale key id still indexed: %q", what, got)
		}
		if got := ids(m.ByKeyID([]byte("kid-two"))); got != "a-pub b-priv" {
			t.Fatalf("%s: ByKeyID %q", what, got)
		}
		if got := ids(m.ByName("key-1")); got != "id-000002" {
			t.Fatalf("%s: stale name: %q", what, got)
		}
		if got := ids(m.ByName("renamed")); got != "b-priv" {
			t.Fatalf("%s: ByName renamed %q", what, got)
		}
		if got := ids(m.ByName("pub")); got != "a-pub" {
			t.Fatalf("%s: ByName pub %q", what, got)
		}
		if m.ByTag(nil) != nil || m.ByKeyID(nil) != nil || m.ByName("") != nil {
			t.Fatalf("%s: empty keys must match nothing", what)
		}
	}
	if got := ids(m.ByName("key-1")); got != "a-pub b-priv id-000002" {
		t.Fatalf("ByName before update %q", got)
	}
	priv.Name = "renamed"
	priv.KeyID = []byte("kid-two")
	pub.Name = "pub"
	pub.KeyID = []byte("kid-two")
	mustPut(t, m, priv)
	mustPut(t, m, pub)
	check("live", m)
	// A record moved to another tag leaves the old bucket.
	moved := rec(3)
	mustPut(t, m, moved)
	moved.Tag = tag(4)
	mustPut(t, m, moved)
	if len(m.ByTag(tag(3))) != 0 || len(m.ByTag(tag(4))) != 1 {
		t.Fatal("tag index not updated")
	}
	m.Close()
	m = mustOpen(t, path)
	defer m.Close()
	check("reopen", m)
	if err := m.Delete("a-pub"); err != nil {
		t.Fatal(err)
	}
	if got := ids(m.ByTag(priv.Tag)); got != "b-priv" {
		t.Fatalf("after delete ByTag %q", got)
	}
	if got := ids(m.ByName("pub")); got != "" {
		t.Fatalf("after delete ByName %q", got)
	}
}

func TestRange(t *testing.T) {
	m := mustOpen(t, filepath.Join(t.TempDir(), "k.csv"))
	defer m.Close()
	for _, i := range []int{5, 3, 9, 1, 7} {
		mustPut(t, m, rec(i))
	}
	var got []string
	m.Range(func(r Record) bool { got = append(got, r.ID); return true })
	if strings.Join(got, ",") != "id-000001,id-000003,id-000005,id-000007,id-000009" {
		t.Fatalf("order %v", got)
	}
	// fn may use the map, including writes; the walk sees the snapshot.
	n := 0
	m.Range(func(r Record) bool {
		n++
		if err := m.Delete(r.ID); err != nil {
			t.Fatal(err)
		}
		mustPut(t, m, rec(100+n))
		return n < 3
	})
	if n != 3 || m.Len() != 5 {
		t.Fatalf("stopped after %d, len %d", n, m.Len())
	}
	got = got[:0]
	m.Range(func(r Record) bool { got = append(got, r.ID); return true })
	want := "id-000007,id-000009,id-000101,id-000102,id-000103"
	if strings.Join(got, ",") != want {
		t.Fatalf("order after changes %v", got)
	}
}

func TestRangeOrderUnderChurn(t *testing.T) {
	m := mustOpen(t, filepath.Join(t.TempDir(), "k.csv"))
	defer m.Close()
	live := map[string]bool{}
	for i := range 3000 {
		k := (i * 7919) % 1500
		r := rec(k)
		if live[r.ID] && i%3 == 0 {
			if err := m.Delete(r.ID); err != nil {
				t.Fatal(err)
			}
			delete(live, r.ID)
		} else {
			mustPut(t, m, r)
			live[r.ID] = true
		}
		if i%250 == 0 {
			var prev string
			n := 0
			m.Range(func(r Record) bool {
				if r.ID <= prev || !live[r.ID] {
					t.Fatalf("bad order or dead record %q after %q", r.ID, prev)
				}
				prev = r.ID
				n++
				return true
			})
			if n != len(live) {
				t.Fatalf("Range saw %d, want %d", n, len(live))
			}
		}
	}
}

func TestValidation(t *testing.T) {
	m := mustOpen(t, filepath.Join(t.TempDir(), "k.csv"))
	defer m.Close()
	bad := map[string]func(*Record){
		"empty id":      func(r *Record) { r.ID = "" },
		"no tag":        func(r *Record) { r.Tag = nil },
		"long tag":      func(r *Record) { r.Tag = make([]byte, 65) },
		"no class":      func(r *Record) { r.Class = "" },
		"unknown class": func(r *Record) { r.Class = "symmetric" },
		"unknown state": func(r *Record) { r.State = "Active" },
		"negative size": func(r *Record) { r.Size = -1 },
		"bad attr utf8": func(r *Record) { r.Attrs["x"] = "\xff" },
		"bad attr name": func(r *Record) { r.Attrs["\xff"] = "x" },
		"year 10000":    func(r *Record) { r.Created = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) },
	}
	for name, mod := range bad {
		r := rec(1)
		mod(&r)
		err := m.Put(r)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", name, err)
		}
	}
	if m.Len() != 0 {
		t.Fatal("invalid record stored")
	}
	r := rec(1)
	r.Tag = make([]byte, 64)
	r.State = ""
	mustPut(t, m, r)
}

func TestCloseSemantics(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.csv")
	m := mustOpen(t, path)
	mustPut(t, m, rec(1))
	mustPut(t, m, rec(2))
	if _, err := Open(path, quiet); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Open of a busy file: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Put(rec(3)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Put after Close: %v", err)
	}
	if err := m.Delete(rec(1).ID); !errors.Is(err, ErrClosed) {
		t.Fatalf("Delete after Close: %v", err)
	}
	if err := m.Compact(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Compact after Close: %v", err)
	}
	if _, ok := m.Get(rec(1).ID); !ok || m.Len() != 2 {
		t.Fatal("reads must keep working after Close")
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	m2 := mustOpen(t, path) // the lock is released
	defer m2.Close()
	if m2.Len() != 2 {
		t.Fatalf("len %d", m2.Len())
	}
}

func TestCloseWaitsForQueuedWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.csv")
	m := mustOpen(t, path)
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := map[string]bool{}
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				r := rec(g*1000 + i)
				err := m.Put(r)
				if err == nil {
					mu.Lock()
					ok[r.ID] = true
					mu.Unlock()
				} else if !errors.Is(err, ErrClosed) {
					t.Errorf("Put: %v", err)
				}
			}
		}()
	}
	time.Sleep(5 * time.Millisecond)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	m = mustOpen(t, path)
	defer m.Close()
	for id := range ok {
		if _, found := m.Get(id); !found {
			t.Fatalf("acknowledged %q lost", id)
		}
	}
	if m.Len() != len(ok) {
		t.Fatalf("reopened %d, acknowledged %d", m.Len(), len(ok))
	}
}

func TestOpenCreates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	path := filepath.Join(dir, "keymap.csv")
	m := mustOpen(t, path)
	defer m.Close()
	if m.Path() != path {
		t.Fatalf("Path %q", m.Path())
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("file mode %v %v", st.Mode(), err)
	}
	st, err = os.Stat(dir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %v %v", st.Mode(), err)
	}
	data, _ := os.ReadFile(path)
	if string(data) != header {
		t.Fatalf("new file %q", data)
	}
}

func TestEmptyOrPartialHeader(t *testing.T) {
	for _, content := range []string{"", "#p11br", header[:len(header)-1]} {
		path := filepath.Join(t.TempDir(), "k.csv")
		os.WriteFile(path, []byte(content), 0o600)
		m := mustOpen(t, path)
		mustPut(t, m, rec(1))
		m.Close()
		m = mustOpen(t, path)
		if m.Len() != 1 {
			t.Fatalf("%q: len %d", content, m.Len())
		}
		m.Close()
	}
}

func TestHeaderErrors(t *testing.T) {
	cases := []struct {
		content string
		is      error
		msg     string
	}{
		{"#p11bridge-keymap v2\n" + columnsLine + "\n", ErrVersion, "line 1: format version 2 is newer"},
		{"#p11bridge-keymap v17\nwhatever\n", ErrVersion, "version 17"},
		{"id,name\nfoo,bar\n", ErrCorrupt, "line 1: not a p11bridge keymap"},
		{versionLine + "\nop,id\n", ErrCorrupt, "line 2: unexpected column"},
		{"#p11bridge-keymap vX\n", ErrCorrupt, "line 1"},
	}
	for _, c := range cases {
		path := filepath.Join(t.TempDir(), "k.csv")
		os.WriteFile(path, []byte(c.content), 0o600)
		_, err := Open(path, quiet)
		if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.msg) || !strings.Contains(err.Error(), path) {
			t.Errorf("%q: got %v, want %v containing %q", c.content, err, c.is, c.msg)
		}
	}
}

// writeRows makes a keymap with n rows and returns its path and content.
func writeRows(t *testing.T, n int) (string, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "k.csv")
	m := mustOpen(t, path)
	for i := range n {
		mustPut(t, m, rec(i))
	}
	m.Close()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, data
}

func TestTornLastLine(t *testing.T) {
	_, full := writeRows(t, 10)
	lastStart := bytes.LastIndexByte(full[:len(full)-1], '\n') + 1
	lastLen := len(full) - lastStart
	type variant struct {
		name string
		data []byte
	}
	var vs []variant
	for _, cut := range []int{1, 4, lastLen / 2, lastLen - 9, lastLen - 2, lastLen - 1} {
		vs = append(vs, variant{fmt.Sprintf("cut at %d of %d", cut, lastLen), full[:lastStart+cut]})
	}
	flipped := bytes.Clone(full)
	flipped[lastStart+10] ^= 0x20
	vs = append(vs, variant{"bad checksum on last row", flipped})
	zeros := append(bytes.Clone(full[:lastStart]), make([]byte, 300)...)
	vs = append(vs, variant{"zeros after a crash", zeros})
	zerosNL := append(bytes.Clone(full[:lastStart]), append(make([]byte, 100), '\n')...)
	vs = append(vs, variant{"zeros with a newline", zerosNL})

	for _, v := range vs {
		t.Run(v.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "k.csv")
			os.WriteFile(path, v.data, 0o600)
			log, lb := newLog()
			m, err := Open(path, log)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if !strings.Contains(lb.String(), "torn last line") || !strings.Contains(lb.String(), "line=12") {
				t.Fatalf("no warning naming line 12: %s", lb.String())
			}
			if m.Len() != 9 {
				t.Fatalf("len %d, want 9", m.Len())
			}
			if _, ok := m.Get(rec(9).ID); ok {
				t.Fatal("torn row loaded")
			}
			r := rec(42)
			r.Name = "short"
			mustPut(t, m, r)
			m.Close()

			data, _ := os.ReadFile(path)
			if !bytes.HasPrefix(data, full[:lastStart]) || bytes.Count(data, []byte("\n")) != 12 {
				t.Fatalf("file after repair:\n%s", data)
			}
			log, lb = newLog()
			m, err = Open(path, log)
			if err != nil {
				t.Fatalf("reopen after repair: %v", err)
			}
			defer m.Close()
			if strings.Contains(lb.String(), "WARN") {
				t.Fatalf("warning after repair: %s", lb.String())
			}
			if got, ok := m.Get(r.ID); !ok || got.Name != "short" || m.Len() != 10 {
				t.Fatalf("after repair: %v %v len %d", got, ok, m.Len())
			}
		})
	}
}

func TestTornLastLineCompacted(t *testing.T) {
	path, full := writeRows(t, 5)
	os.WriteFile(path, full[:len(full)-3], 0o600)
	m := mustOpen(t, path)
	if err := m.Compact(); err != nil {
		t.Fatal(err)
	}
	m.Close()
	log, lb := newLog()
	m, err := Open(path, log)
	if err != nil || m.Len() != 4 || strings.Contains(lb.String(), "WARN") {
		t.Fatalf("after compaction: %v len %d log %s", err, m.Len(), lb.String())
	}
	m.Close()
}

func TestDamageInTheMiddle(t *testing.T) {
	_, full := writeRows(t, 10)
	lines := bytes.SplitAfter(full, []byte("\n"))
	// Line numbers are 1-based: lines[0] is line 1 (version), rows start at line 3.
	for _, target := range []int{3, 7, 11} {
		for _, off := range []int{0, 5, 30, -3} {
			data := bytes.Clone(full)
			start := len(bytes.Join(lines[:target-1], nil))
			pos := start + off
			if off < 0 {
				pos = start + len(lines[target-1]) + off
			}
			data[pos] ^= 0x01
			path := filepath.Join(t.TempDir(), "k.csv")
			os.WriteFile(path, data, 0o600)
			_, err := Open(path, quiet)
			want := fmt.Sprintf("%s line %d:", path, target)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), want) {
				t.Fatalf("flip line %d offset %d: got %v, want %q", target, off, err, want)
			}
		}
	}
	// A lost newline in the middle merges two rows: still caught.
	data := bytes.Replace(full, []byte("\nput,id-000004"), []byte("put,id-000004"), 1)
	path := filepath.Join(t.TempDir(), "k.csv")
	os.WriteFile(path, data, 0o600)
	if _, err := Open(path, quiet); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "line 6:") {
		t.Fatalf("merged rows: %v", err)
	}
}

// A last row with a good checksum but bad content was not torn by a crash:
// it must not be dropped.
func TestBadContentOnLastRowIsAnError(t *testing.T) {
	path, full := writeRows(t, 3)
	row := []byte("put,x,zz,s,secret-key,AES,1,,n,active,o,,,\"{}\"")
	row = appendCRC(row, 0)
	os.WriteFile(path, append(full, row...), 0o600)
	_, err := Open(path, quiet)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "line 6: tag is not hex") {
		t.Fatalf("got %v", err)
	}
}

func TestLongRowsAcrossChunks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.csv")
	m := mustOpen(t, path)
	big := strings.Repeat("x,\"\n", chunkSize/4) // escaped, the row is longer than a chunk
	var want []Record
	for i := range 3 {
		r := rec(i)
		r.Attrs = map[string]string{"big": big}
		r.Name = big[:1000]
		mustPut(t, m, r)
		want = append(want, r)
	}
	m.Close()
	// The many short rows are appended directly: fsync per row is slow.
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	var buf []byte
	for i := 3; i < 20000; i++ {
		r, _ := prepare(rec(i), t0)
		buf = appendPut(buf, r)
	}
	f.Write(buf)
	f.Close()
	st, _ := os.Stat(path)
	if st.Size() < 3*chunkSize {
		t.Fatalf("file only %d bytes", st.Size())
	}
	m = mustOpen(t, path)
	defer m.Close()
	if m.Len() != 20000 {
		t.Fatalf("len %d", m.Len())
	}
	for _, w := range want {
		got, _ := m.Get(w.ID)
		if !reflect.DeepEqual(got, w) {
			t.Fatalf("long row %q differs", w.ID)
		}
	}
}

func TestDamageInALaterChunk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.csv")
	m := mustOpen(t, path)
	recs := make([]Record, 40000)
	for i := range recs {
		recs[i] = rec(i)
	}
	// Written through a single batch-sized path for speed.
	var buf []byte
	buf = append(buf, header...)
	for i := range recs {
		r, _ := prepare(recs[i], t0)
		buf = appendPut(buf, r)
	}
	m.Close()
	lines := bytes.SplitAfter(buf, []byte("\n"))
	target := 30000
	start := len(bytes.Join(lines[:target-1], nil))
	buf[start+20] ^= 0x04
	os.WriteFile(path, buf, 0o600)
	_, err := Open(path, quiet)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), fmt.Sprintf("line %d:", target)) {
		t.Fatalf("got %v", err)
	}
	// The same damage on the very last line is a torn tail.
	last := len(bytes.Join(lines[:len(lines)-2], nil))
	buf[start+20] ^= 0x04
	buf[last+20] ^= 0x04
	os.WriteFile(path, buf, 0o600)
	m, err = Open(path, quiet)
	if err != nil || m.Len() != len(recs)-1 {
		t.Fatalf("torn tail in later chunk: %v", err)
	}
	m.Close()
}

func TestUnknownTombstoneIgnored(t *testing.T) {
	path, full := writeRows(t, 2)
	full = appendDel(full, "nobody", t0)
	full = appendPut(full, func() *stored { r, _ := prepare(rec(5), t0); return r }())
	os.WriteFile(path, full, 0o600)
	m := mustOpen(t, path)
	defer m.Close()
	if m.Len() != 3 {
		t.Fatalf("len %d", m.Len())
	}
}

func TestCompactKeepsLiveRows(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.csv")
	m := mustOpen(t, path)
	for i := range 100 {
		mustPut(t, m, rec(i))
	}
	for i := range 100 {
		if i%3 == 0 {
			if err := m.Delete(rec(i).ID); err != nil {
				t.Fatal(err)
			}
		} else if i%3 == 1 {
			r := rec(i)
			r.Name = "updated"
			mustPut(t, m, r)
		}
	}
	want := all(m)
	if err := m.Compact(); err != nil {
		t.Fatal(err)
	}
	equalRecs(t, "after compact", all(m), want)
	data, _ := os.ReadFile(path)
	if n := bytes.Count(data, []byte("\n")); n != headerLines+len(want) {
		t.Fatalf("compacted file has %d lines, want %d", n, headerLines+len(want))
	}
	if bytes.Contains(data, []byte("\ndel,")) {
		t.Fatal("tombstone survived compaction")
	}
	// Writes keep going to the new file.
	r := rec(1000)
	mustPut(t, m, r)
	want = all(m)
	m.Close()
	m = mustOpen(t, path)
	defer m.Close()
	equalRecs(t, "reopen after compact", all(m), want)
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Fatalf("left-over files: %v", ents)
	}
	if _, err := Open(path, quiet); err == nil {
		t.Fatal("compacted file is not locked")
	}
}

func TestCompactConcurrentWithPuts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.csv")
	m := mustOpen(t, path)
	for i := range 500 {
		mustPut(t, m, rec(i))
	}
	const writers, per = 8, 150
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				id := 10000 + g*per + i
				mustPut(t, m, rec(id))
				if i%10 == 0 {
					if err := m.Delete(rec(id).ID); err != nil {
						t.Error(err)
					}
				}
				if r, ok := m.Get(rec(id % 500).ID); !ok || r.ID == "" {
					t.Error("Get failed during compaction")
				}
			}
		}()
	}
	var cwg sync.WaitGroup
	cwg.Add(1)
	compactions := 0
	go func() {
		defer cwg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := m.Compact(); err != nil {
				t.Error(err)
				return
			}
			compactions++
		}
	}()
	wg.Wait()
	close(stop)
	cwg.Wait()
	if compactions == 0 {
		t.Fatal("no compaction ran")
	}
	want := all(m)
	if len(want) != 500+writers*per-writers*per/10 {
		t.Fatalf("%d live records", len(want))
	}
	m.Close()
	m = mustOpen(t, path)
	defer m.Close()
	equalRecs(t, "reopen", all(m), want)
	t.Logf("%d compactions ran alongside the writers", compactions)
}

func TestConcurrentPutsPersisted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.csv")
	m := mustOpen(t, path)
	const goroutines, per = 32, 40
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				r := rec(g*per + i)
				r.Attrs["writer"] = fmt.Sprint(g)
				if err := m.Put(r); err != nil {
					t.Error(err)
					return
				}
				// Acknowledged means visible.
				if _, ok := m.Get(r.ID); !ok {
					t.Errorf("%q not visible after Put", r.ID)
				}
			}
		}()
	}
	wg.Wait()
	m.Close()
	m = mustOpen(t, path)
	defer m.Close()
	if m.Len() != goroutines*per {
		t.Fatalf("reopened %d, want %d", m.Len(), goroutines*per)
	}
	for g := range goroutines {
		for i := range per {
			r, ok := m.Get(rec(g*per + i).ID)
			if !ok || r.Attrs["writer"] != fmt.Sprint(g) {
				t.Fatalf("record %d of writer %d lost", i, g)
			}
		}
	}
}

// Concurrent Put and Delete of the same ids: the file must replay to the
// state memory had.
func TestPutDeleteRaceReplays(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.csv")
	m := mustOpen(t, path)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				r := rec(i % 10)
				if (g+i)%2 == 0 {
					r.Name = fmt.Sprintf("g%d-%d", g, i)
					if err := m.Put(r); err != nil {
						t.Error(err)
					}
				} else if err := m.Delete(r.ID); err != nil && !errors.Is(err, ErrNotFound) {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	want := all(m)
	m.Close()
	m = mustOpen(t, path)
	defer m.Close()
	equalRecs(t, "replay", all(m), want)
}

func TestReadsDuringWrites(t *testing.T) {
	m := mustOpen(t, filepath.Join(t.TempDir(), "k.csv"))
	defer m.Close()
	for i := range 50 {
		mustPut(t, m, rec(i))
	}
	var wg sync.WaitGroup
	done := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				for i := range 50 {
					if r, ok := m.Get(rec(i).ID); !ok || r.Attrs["n"] == "" {
						t.Error("Get during writes")
						return
					}
					m.ByTag(tag(i))
					m.ByName("key-3")
				}
				m.Range(func(Record) bool { return true })
			}
		}()
	}
	for v := range 200 {
		r := rec(v % 50)
		r.Name = fmt.Sprintf("v%d", v)
		mustPut(t, m, r)
	}
	close(done)
	wg.Wait()
}

// The loader must not leak goroutines when it stops at a bad line early.
func TestLoadStopsCleanly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.csv")
	var buf []byte
	buf = append(buf, header...)
	buf = append(buf, "garbage\n"...)
	for i := range 100000 {
		r, _ := prepare(rec(i), t0)
		buf = appendPut(buf, r)
	}
	os.WriteFile(path, buf, 0o600)
	_, err := Open(path, quiet)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "line 3:") {
		t.Fatalf("got %v", err)
	}
}

func TestDocExampleIsValid(t *testing.T) {
	// Keep doc.go's example rows honest.
	src, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	var rows []byte
	for _, l := range strings.Split(string(src), "\n") {
		l = strings.TrimPrefix(l, "//\t")
		if strings.HasPrefix(l, "put,") || strings.HasPrefix(l, "del,") {
			rows = append(rows, l+"\n"...)
		}
	}
	if len(rows) == 0 {
		t.Fatal("no example rows in doc.go")
	}
	path := filepath.Join(t.TempDir(), "k.csv")
	os.WriteFile(path, append([]byte(header), rows...), 0o600)
	m, err := Open(path, quiet)
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	_ = io.Discard
}

// Rows edited by hand in other valid spellings still load; invalid
// content is refused with the line number even when the checksum matches.
func TestHandEditedRows(t *testing.T) {
	row := func(s string) string { return string(appendCRC([]byte(s), 0)) }
	path := filepath.Join(t.TempDir(), "k.csv")
	content := header +
		row(`put,"x",0A1b,"s",opaque,,0,ABCD,"a\tb",,,2025-01-02T03:04:05+02:00,2025-01-02T03:04:05.5Z,"{ ""z"" : ""v\u00e9\ud83d\udd11"" , ""a"":"""" }"`) +
		row(`put,y,01,s,opaque,,0,,,,,,,`)
	os.WriteFile(path, []byte(content), 0o600)
	m := mustOpen(t, path)
	got, _ := m.Get("x")
	m.Close()
	want := Record{
		ID: "x", Tag: []byte{0x0a, 0x1b}, Signer: "s", Class: Opaque, KeyID: []byte{0xab, 0xcd}, Name: "a\tb",
		Created: time.Date(2025, 1, 2, 1, 4, 5, 0, time.UTC), Updated: time.Date(2025, 1, 2, 3, 4, 5, 5e8, time.UTC),
		Attrs: map[string]string{"a": "", "z": "vé🔑"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %#v\nwant %#v", got, want)
	}

	bad := map[string]string{
		`put,x,0a,s,opaque,,0,,,,,,,"{""a"":""1"",""a"":""2""}"`: "duplicate attribute",
		`put,x,0a,s,opaque,,0,,\q,,,,,`:                          `unknown escape`,
		`put,x,0a,s,opaque,,0,,,,,2025-02-30T00:00:00Z,,`:        "created: bad time",
		`put,x,0a,s,opaque,,-1,,,,,,,`:                           "size",
		`put,x,0a,s,opaque,,0,,,active!,,,,`:                     "unknown state",
		`put,x,,s,opaque,,0,,,,,,,`:                              "tag must be 1 to 64 bytes",
		`put,x,0a,s,opaque,,0,,,,,,,"[]"`:                        "not a JSON object",
		`put,x,0a,s,opaque,,0,,,,,,,"{""a"":""\ud800""}"`:        "lone surrogate",
		`put,x,0a,s,opaque,,0,,,,,,`:                             "only 14 fields",
		`put,x,0a,s,opaque,,0,,,,,,,,`:                           "more than 15 fields",
		`put,x,0a,s,opaque,,0,,a"b,,,,,`:                         "stray quote",
		`put,"x"y,0a,s,opaque,,0,,,,,,,`:                         "unexpected character after quoted field 2",
		`upd,x,0a,s,opaque,,0,,,,,,,`:                            "unknown op",
		`del,x,0a,,,,,,,,,,,`:                                    "tombstone has a value in column 3",
		`put,,0a,s,opaque,,0,,,,,,,`:                             "empty id",
	}
	for r, msg := range bad {
		os.WriteFile(path, []byte(header+row(r)+row(`put,y,01,s,opaque,,0,,,,,,,`)), 0o600)
		_, err := Open(path, quiet)
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "line 3: ") || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: got %v, want line 3 and %q", r, err, msg)
		}
	}
}

// Range sorts outside the lock and retries when ids are added meanwhile;
// whatever path it takes, it must list every record acknowledged before it
// started, in order, and nothing deleted.
func TestRangeConcurrentWithInserts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.csv")
	writeFile(t, path, 20000) // big enough that sorting takes a while
	m := mustOpen(t, path)
	defer m.Close()
	var acked sync.Map
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				r := rec(1000000 + g*100000 + i)
				mustPut(t, m, r)
				acked.Store(r.ID, true)
			}
		}()
	}
	for range 8 {
		var before []string
		acked.Range(func(k, _ any) bool { before = append(before, k.(string)); return true })
		seen := make(map[string]bool, m.Len())
		prev := ""
		m.Range(func(r Record) bool {
			if r.ID <= prev {
				t.Fatalf("out of order: %q after %q", r.ID, prev)
			}
			prev = r.ID
			seen[r.ID] = true
			return true
		})
		for _, id := range before {
			if !seen[id] {
				t.Fatalf("Range missed acknowledged %q", id)
			}
		}
		if len(seen) < 20000 {
			t.Fatalf("Range saw %d records", len(seen))
		}
		// Force a full re-sort next time, as after Open.
		m.mu.Lock()
		m.setStale()
		m.mu.Unlock()
	}
	close(stop)
	wg.Wait()
}

func TestOpenReadOnlyWhileHeld(t *testing.T) {
	path := filepath.Join(t.TempDir(), "km.csv")
	m, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Put(Record{ID: "a", Tag: []byte{1}, Class: SecretKey, State: Active, Name: "held"}); err != nil {
		t.Fatal(err)
	}
	ro, err := OpenReadOnly(path, nil)
	if err != nil {
		t.Fatalf("read-only open of a held keymap: %v", err)
	}
	if r, ok := ro.Get("a"); !ok || r.Name != "held" || len(ro.ByName("held")) != 1 {
		t.Fatalf("snapshot: %+v %v", r, ok)
	}
	if err := ro.Put(Record{ID: "b", Tag: []byte{2}, Class: SecretKey}); !errors.Is(err, ErrClosed) {
		t.Fatalf("write to a read-only map: %v", err)
	}
	if _, err := OpenReadOnly(filepath.Join(t.TempDir(), "missing.csv"), nil); err == nil {
		t.Fatal("opened a missing keymap read-only")
	}
}
