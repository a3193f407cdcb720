package ttlv

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gemalto/kmip-go/kmip14"
	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"
	"github.com/ovh/kmip-go/payloads"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/signer"
)

// TestLocateCapped: Locate answers at most the server's cap (MaxLocateItems, 5 here) whatever
// Maximum Items asks, fewer when Maximum Items says so, and Located Items counts every match so
// that a client pages through the rest with Offset Items (github.com/ovh/kmip-go's client).
func TestLocateCapped(t *testing.T) {
	_, addr, _ := startServer(t, Options{MaxLocateItems: 5})
	cl, err := dialOVH(addr, "raw")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for i := 0; i < 12; i++ {
		if _, err := cl.Create().AES(128, kmip.CryptographicUsageEncrypt).WithAttribute("x-locate-cap", "batch").Exec(); err != nil {
			t.Fatal(err)
		}
	}
	locate := func(offset, max int32) *payloads.LocateResponsePayload {
		q := cl.Locate().WithAttribute("x-locate-cap", "batch")
		if offset > 0 {
			q = q.WithOffset(offset)
		}
		if max > 0 {
			q = q.WithMaxItems(max)
		}
		return must[*payloads.LocateResponsePayload](t)(q.Exec())
	}
	seen := map[string]bool{}
	for _, c := range []struct {
		offset, max int32
		want        int
	}{{0, 0, 5}, {0, 3, 3}, {0, 100, 5}, {5, 0, 5}, {10, 0, 2}, {12, 0, 0}} {
		l := locate(c.offset, c.max)
		located := int32(-1)
		if l.LocatedItems != nil {
			located = *l.LocatedItems
		}
		if len(l.UniqueIdentifier) != c.want || located != 12 {
			t.Errorf("offset %d, maximum %d: %d identifiers of %d located, want %d of 12", c.offset, c.max, len(l.UniqueIdentifier), located, c.want)
		}
		if c.max == 0 {
			for _, id := range l.UniqueIdentifier {
				seen[id] = true
			}
		}
	}
	if len(seen) != 12 {
		t.Errorf("paging with Offset Items reached %d of 12 objects", len(seen))
	}
}

// TestLocateDoesNotCopyRows: a Locate that no row matches allocates far fewer objects than the
// keymap has rows: rows are filtered where the keymap keeps them, not copied first.
func TestLocateDoesNotCopyRows(t *testing.T) {
	for env.km.Len() < 250 {
		if _, err := env.reg.Create(context.Background(), signer.Operator, signer.KeySpec{Algorithm: signer.AES, Size: 128},
			signer.Meta{Name: fmt.Sprintf("locate-rows-%d", env.km.Len()), Attrs: map[string]string{"x.filler": `[{"tag":"AttributeValue","type":"TextString","value":"f"}]`}}); err != nil {
			t.Fatal(err)
		}
	}
	rows := env.km.Len()
	// Opaque objects are never made here: Object Type rejects every row, after visibility.
	msg := request(v14, kmip14.OperationLocate, newStruct(0, attribute1("Object Type", newEnum(0, uint32(kmip14.ObjectTypeOpaqueObject))))).encode()
	admin := env.clients["admin"].identity
	out := env.srv.handleMessage(context.Background(), admin, msg)
	ok(t, mustDecodeResponse(t, out).Items[0])
	allocs := testing.AllocsPerRun(5, func() { env.srv.handleMessage(context.Background(), admin, msg) })
	t.Logf("a Locate over %d rows that matches none allocated %.0f objects", rows, allocs)
	if allocs > float64(rows)/2 {
		t.Errorf("a Locate over %d rows allocated %.0f objects: rows are copied before they are filtered", rows, allocs)
	}
}

// TestLocatePlanMissesNothing: Locate through the keymap's indexes (locatePlan) answers exactly
// what a walk over every row answers, for filters on further Name instances, date-driven states,
// algorithms a client asked for (HMAC-SHA384), KES keys made through the registry, custom and
// stored attributes, and their combinations.
func TestLocatePlanMissesNothing(t *testing.T) {
	r := newRaw(t, "admin")
	name := func(n string) *node {
		return attribute1("Name", encodeStruct(kmip14.TagName, kName{Value: n, Type: uint32(kmip14.NameTypeUninterpretedTextString)}))
	}
	custom := attribute1("x-plan", newText(0, "yes"))
	twoNames := createdID(t, r.call(v14, kmip14.OperationCreate, createAES(name("plan-first"), name("plan-second"), custom)))
	createdID(t, r.call(v14, kmip14.OperationCreate, createAES(name("plan-dated"),
		attribute1("Activation Date", newDateTime(0, time.Now().Add(-time.Hour))))))
	hmac := newStruct(0, newEnum(kmip14.TagObjectType, uint32(kmip14.ObjectTypeSymmetricKey)), newStruct(kmip14.TagTemplateAttribute,
		attribute1("Cryptographic Algorithm", newEnum(0, uint32(kmip14.CryptographicAlgorithmHMAC_SHA384))),
		attribute1("Cryptographic Length", newInt(0, 384)), name("plan-hmac")))
	createdID(t, r.call(v14, kmip14.OperationCreate, hmac))
	renamed := createdID(t, r.call(v14, kmip14.OperationCreate, createAES(name("plan-old"))))
	ok(t, addAttr1(r, renamed, "Name", encodeStruct(kmip14.TagName, kName{Value: "plan-added", Type: uint32(kmip14.NameTypeUninterpretedTextString)})))
	if _, err := env.reg.CreateKESKey(context.Background(), signer.Operator, "plan-kes"); err != nil {
		t.Fatal(err)
	}
	// A row with two names loses one: its mark goes with it.
	ok(t, r.call(v14, kmip14.OperationDeleteAttribute, newStruct(0, newText(kmip14.TagUniqueIdentifier, twoNames),
		newText(kmip14.TagAttributeName, "Name"), newInt(kmip14.TagAttributeIndex, 1))))
	ok(t, addAttr1(r, twoNames, "Name", encodeStruct(kmip14.TagName, kName{Value: "plan-third", Type: uint32(kmip14.NameTypeUninterpretedTextString)})))

	enum := func(n string, v uint32) *node { return attribute1(n, newEnum(0, v)) }
	symmetric := enum("Object Type", uint32(kmip14.ObjectTypeSymmetricKey))
	active := enum("State", uint32(kmip14.StateActive))
	queries := map[string][]*node{
		"first name":        {name("plan-first")},
		"further name":      {name("plan-third")},
		"gone name":         {name("plan-second")},
		"added name":        {name("plan-added")},
		"KES name":          {name("plan-kes")},
		"two names":         {name("plan-first"), name("plan-third")},
		"name and state":    {name("plan-dated"), active},
		"active":            {active},
		"pre-active":        {enum("State", uint32(kmip14.StatePreActive))},
		"active AES":        {symmetric, enum("Cryptographic Algorithm", uint32(kmip14.CryptographicAlgorithmAES)), active},
		"name and AES":      {enum("Cryptographic Algorithm", uint32(kmip14.CryptographicAlgorithmAES)), name("plan-third")},
		"HMAC-SHA384":       {enum("Cryptographic Algorithm", uint32(kmip14.CryptographicAlgorithmHMAC_SHA384))},
		"HMAC-SHA256":       {enum("Cryptographic Algorithm", uint32(kmip14.CryptographicAlgorithmHMAC_SHA256))},
		"RSA private keys":  {enum("Object Type", uint32(kmip14.ObjectTypePrivateKey)), enum("Cryptographic Algorithm", uint32(kmip14.CryptographicAlgorithmRSA))},
		"custom":            {custom},
		"custom and length": {custom, attribute1("Cryptographic Length", newInt(0, 256))},
		"opaque":            {enum("Object Type", uint32(kmip14.ObjectTypeOpaqueObject))},
		"everything":        nil,
	}
	answer := func(filters []*node, scanAll bool) (int32, []string) {
		locateScanAll = scanAll
		defer func() { locateScanAll = false }()
		var resp locateResponse
		if err := decodeStruct(ok(t, r.call(v14, kmip14.OperationLocate, newStruct(0, filters...))), &resp); err != nil {
			t.Fatal(err)
		}
		return *resp.LocatedItems, resp.UIDs
	}
	for what, filters := range queries {
		n, ids := answer(filters, false)
		wantN, wantIDs := answer(filters, true)
		if n != wantN || !slices.Equal(ids, wantIDs) {
			t.Errorf("%s: the plan located %d (%v), a walk over every row %d (%v)", what, n, ids, wantN, wantIDs)
		}
		if what != "gone name" && what != "opaque" && what != "HMAC-SHA256" && what != "RSA private keys" && n == 0 {
			t.Errorf("%s: nothing located", what)
		}
	}

	// A row an earlier version stored with further names has no mark; markFurtherNames, run at
	// start, gives it one.
	if _, err := env.km.Update(twoNames, func(rec *keymap.Record) error { delete(rec.Attrs, moreNames); return nil }); err != nil {
		t.Fatal(err)
	}
	if n, _ := answer(queries["further name"], false); n != 0 {
		t.Fatalf("an unmarked row was found by a further name: the test shows nothing")
	}
	env.srv.markFurtherNames()
	if n, _ := answer(queries["further name"], false); n != 1 {
		t.Fatalf("after markFurtherNames, a further name located %d objects, want 1", n)
	}
}

// TestLocatePagesSearchOnce: paging through a Locate's matches with Offset Items searches the rows
// once, not once a page (400 matches in pages of 40 visited 4,000 rows before), answers the order
// a single Locate answers, searches again after a change, and keeps one identity's result from
// another's Locate of the same filter.
func TestLocatePagesSearchOnce(t *testing.T) {
	_, addr, _ := startServer(t, Options{})
	cl, err := dialOVH(addr, "raw")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	const n, page = 400, 40
	for i := 0; i < n; i++ {
		if _, err := cl.Create().AES(128, kmip.CryptographicUsageEncrypt).WithAttribute("x-locate-pages", "run").Exec(); err != nil {
			t.Fatal(err)
		}
	}
	locate := func(c *kmipclient.Client, offset, max int32) *payloads.LocateResponsePayload {
		q := c.Locate().WithAttribute("x-locate-pages", "run").WithMaxItems(max)
		if offset > 0 {
			q = q.WithOffset(offset)
		}
		return must[*payloads.LocateResponsePayload](t)(q.Exec())
	}
	all := locate(cl, 0, 1000).UniqueIdentifier
	if len(all) != n {
		t.Fatalf("one Locate found %d of %d", len(all), n)
	}
	visits := &atomic.Int64{}
	locateVisits = visits
	defer func() { locateVisits = nil }()
	var paged []string
	for off := int32(0); off < n; off += page {
		l := locate(cl, off, page)
		if l.LocatedItems == nil || *l.LocatedItems != n {
			t.Fatalf("page at %d: Located Items %v, want %d", off, l.LocatedItems, n)
		}
		paged = append(paged, l.UniqueIdentifier...)
	}
	t.Logf("%d pages of %d: %d rows visited", n/page, page, visits.Load())
	if !slices.Equal(paged, all) {
		t.Fatalf("the pages answered another order or other objects than one Locate")
	}
	if v := visits.Load(); v > 2*n {
		t.Errorf("paging through %d matches visited %d rows: each page searched again", n, v)
	}

	// Another identity, same filter, at an offset: not the first one's result.
	other, err := dialOVH(addr, "bob")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if l := locate(other, page, page); len(l.UniqueIdentifier) != 0 || l.LocatedItems == nil || *l.LocatedItems != 0 {
		t.Errorf("another identity's page: %d identifiers, Located Items %v; want none", len(l.UniqueIdentifier), l.LocatedItems)
	}

	// A change: the next page comes from a new search.
	if _, err := cl.Create().AES(128, kmip.CryptographicUsageEncrypt).WithAttribute("x-locate-pages", "run").Exec(); err != nil {
		t.Fatal(err)
	}
	if l := locate(cl, page, page); l.LocatedItems == nil || *l.LocatedItems != n+1 {
		t.Errorf("after a create, Located Items %v, want %d", l.LocatedItems, n+1)
	}
}

// One identity's Locates keep at most maxLocatesPerIdentity results: many of its own do not push
// out another identity's.
func TestLocateCacheShares(t *testing.T) {
	var c locateCache
	now := time.Now()
	c.put("b", "b-1", 7, now, make([]hit, 3))
	for i := range 3 * maxLocatesPerIdentity {
		c.put("a", fmt.Sprintf("a-%d", i), 7, now.Add(time.Duration(i+1)*time.Millisecond), make([]hit, 3))
	}
	if c.get("b-1", 7, now) == nil {
		t.Error("another identity's Locates pushed out b's result")
	}
	n := 0
	for _, r := range c.m {
		if r.who == "a" {
			n++
		}
	}
	if n != maxLocatesPerIdentity || c.held != 3*(n+1) {
		t.Errorf("a holds %d results (want %d), %d hits held", n, maxLocatesPerIdentity, c.held)
	}
	if c.get("b-1", 8, now) != nil || c.get("b-1", 7, now.Add(locateCacheTTL)) != nil {
		t.Error("a result outlived a change or its TTL")
	}
}
