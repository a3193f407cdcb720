package ttlv

import (
	"context"
	"fmt"
	"testing"

	"github.com/gemalto/kmip-go/kmip14"
	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/payloads"

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
