package ttlv

import (
	"bytes"
	"log/slog"
	"math/big"
	"testing"
	"time"

	"github.com/gemalto/kmip-go/kmip14"
	tt "github.com/gemalto/kmip-go/ttlv"

	"github.com/p11bridge/p11bridge/keymap"
)

// FuzzAttrStore feeds arbitrary TTLV items to the attribute store as attribute values: through the
// codec alone (stored and read back, whatever the limits), then in through the checks a request
// passes (as a custom attribute and as the standard attribute of the item's tag), stored in a new
// object's row, and answered by GetAttributes in KMIP 1.4 and 2.0. What is read back or answered
// must be what went in, up to what the stored form has always normalized (BigInteger padding,
// invalid UTF-8 in text). Each input has a time budget linear in its size, so an input that costs
// more than linear time fails as a hang would (the least of three runs, against the noise of a
// shared machine); shallow inputs are also compared with gemalto's
// codec (untimed: it is exponential). Seeds in testdata/fuzz/FuzzAttrStore, and the deep values
// below, run in every `go test`.
func FuzzAttrStore(f *testing.F) {
	f.Add(encodeStruct(kmip14.TagName, kName{Value: "seed", Type: 1}).bytes())
	f.Add(encodeStruct(kmip14.TagLink, kLink{Type: uint32(kmip14.LinkTypeParentLink), ID: "abc"}).bytes())
	f.Add(newStruct(kmip14.TagApplicationSpecificInformation, newText(kmip14.TagApplicationNamespace, "ns"), newText(kmip14.TagApplicationData, "d")).bytes())
	f.Add(newStruct(kmip14.TagUsageLimits, newLong(kmip14.TagUsageLimitsTotal, 1<<60), newEnum(kmip14.TagUsageLimitsUnit, 1)).bytes())
	f.Add(newStruct(kmip14.TagAttributeValue, newText(kmip14.TagAttributeName, "State"), newEnum(kmip14.TagAttributeValue, 2),
		newText(kmip14.TagAttributeName, "Cryptographic Usage Mask"), newInt(kmip14.TagAttributeValue, 12)).bytes())
	f.Add(newBigInt(kmip14.TagAttributeValue, big.NewInt(-1)).bytes())
	f.Add(nested(maxValueDepth).bytes())
	// Deep values: exponential before, each seconds to store.
	f.Add(nested(maxDepth - 1).bytes())
	f.Add(newStruct(kmip14.TagName, newText(kmip14.TagNameValue, "n"), newEnum(kmip14.TagNameType, 1), nested(maxDepth-2)).bytes())
	quiet := slog.New(slog.DiscardHandler)
	srv := New(Options{Registry: env.reg, Auth: fuzzAuth{}, Log: quiet, Audit: quiet})
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := parseNode(b)
		if err != nil {
			return
		}
		run := func() time.Duration {
			start := time.Now()
			storeAndReadBack(t, v)
			candidates := []attr{{name: "x-fuzz", index: -1, value: retag(v, kmip14.TagAttributeValue)}}
			if d := defByTag[v.Tag]; d != nil {
				candidates = append(candidates, attr{def: d, name: d.name, index: -1, value: v})
			}
			for _, a := range candidates {
				answerAsGiven(t, srv, a)
			}
			return time.Since(start)
		}
		// An input over its budget is run twice more and fails only when every run is over: on a
		// shared machine one run can stall for a few hundred milliseconds, a superlinear input
		// is slow every time.
		budget := 250*time.Millisecond + time.Duration(len(b))*50*time.Microsecond
		if took := run(); took > budget {
			if took = min(took, run(), run()); took > budget {
				t.Fatalf("an item of %d bytes took %v (the least of three runs), over its linear budget of %v", len(b), took, budget)
			}
		}
		if _, depth := measure(v); depth <= 4 {
			checkAgainstOracle(t, kmip14.TagAttributeValue, []*node{v})
		}
	})
}

// storeAndReadBack stores v through the codec (under its own tag and as a custom attribute's
// value, beside a deleted instance) and reads it back.
func storeAndReadBack(t *testing.T, v *node) {
	for _, tag := range []tt.Tag{v.Tag, kmip14.TagAttributeValue} {
		s, err := encodeValues(tag, []*node{v, nil, v})
		if err != nil {
			if !outOfRangeDate(v) {
				t.Fatalf("%v does not store: %v", v, err)
			}
			return
		}
		back, err := decodeValues(s)
		if err != nil {
			t.Fatalf("%s does not read back: %v", s, err)
		}
		want := normalized(retag(v, tag))
		if len(back) != 3 || back[1] != nil || !bytes.Equal(back[0].bytes(), want) || !bytes.Equal(back[2].bytes(), want) {
			t.Fatalf("stored as %s, read back as %v", s, back)
		}
	}
}

// answerAsGiven gives a to a new object as a request would, and checks GetAttributes answers it
// unchanged.
func answerAsGiven(t *testing.T, srv *Server, a attr) {
	if checkValue(a) != nil {
		return
	}
	tmpl := &template{vals: map[string][]*node{}, defs: map[string]*attrDef{}}
	if tmpl.add([]attr{a}) != nil {
		return
	}
	meta, err := tmpl.meta()
	if err != nil {
		if !outOfRangeDate(a.value) {
			t.Fatalf("%s: %v accepted but not stored: %v", a.name, a.value, err)
		}
		return
	}
	rec := keymap.Record{ID: "fuzz", Class: keymap.SecretKey, Name: meta.Name, State: meta.State, Attrs: meta.Attrs, Created: time.Unix(1, 0)}
	want := normalized(a.value)
	for _, ver := range []ProtocolVersion{v14, v20} {
		if a.def != nil && !ver.atLeast(a.def.since.Major, a.def.since.Minor) {
			continue
		}
		found := false
		for _, got := range srv.attributesOf(rec, ver) {
			if got.name != a.name {
				continue
			}
			found = true
			if !bytes.Equal(got.value.encodeAs(nil, a.value.Tag), want) {
				t.Fatalf("%s answered as %v, given %v", a.name, got.value, a.value)
			}
			out := encodeAttr(ver, got).bytes()
			if _, err := parseNode(out); err != nil {
				t.Fatalf("%s: the answer does not parse: %v", a.name, err)
			}
		}
		// Cryptographic Domain Parameters and the like are taken at creation but not kept.
		if !found && (a.def == nil || a.def.access == clientRW) {
			t.Fatalf("%s given, not answered in %s", a.name, ver)
		}
	}
}

// normalized is the wire form of v as the stored form keeps it: BigIntegers in their shortest
// padding, invalid UTF-8 in text as U+FFFD.
func normalized(v *node) []byte {
	var norm func(n *node) *node
	norm = func(n *node) *node {
		c := *n
		switch n.Type {
		case tt.TypeBigInteger:
			c.Raw = canonicalBigInt(n.Raw)
		case tt.TypeTextString:
			c.Raw = []byte(string([]rune(string(n.Raw))))
		case tt.TypeStructure:
			c.Kids = make([]*node, len(n.Kids))
			for i, k := range n.Kids {
				c.Kids[i] = norm(k)
			}
		}
		return &c
	}
	return norm(v).bytes()
}

// outOfRangeDate says whether v holds a date the stored form cannot keep (years past 9999, or
// DateTimeExtended microseconds that overflow nanoseconds).
func outOfRangeDate(v *node) bool {
	switch v.Type {
	case tt.TypeDateTime:
		y := time.Unix(v.i64(), 0).UTC().Year()
		return y < 0 || y > 9999
	case tt.TypeDateTimeExtended:
		us := v.i64()
		if us > 1<<63/1000 || us < -1<<63/1000 {
			return true
		}
		y := time.Unix(0, us*1000).UTC().Year()
		return y < 0 || y > 9999
	case tt.TypeStructure:
		for _, k := range v.Kids {
			if outOfRangeDate(k) {
				return true
			}
		}
	}
	return false
}
