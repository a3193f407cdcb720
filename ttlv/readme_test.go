package ttlv

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// The README's count of KMIP operations is what the server registers, and the counts it gives for
// Query are what Query lists at each version.
func TestReadmeOperationCount(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := strings.Join(strings.Fields(string(b)), " ") // the sentence may be wrapped anywhere
	listed := func(v ProtocolVersion) int {
		n := 0
		for op, d := range handlers {
			if op <= operationCeiling(v) && v.atLeast(d.since.Major, d.since.Minor) {
				n++
			}
		}
		return n
	}
	at12 := listed(ProtocolVersion{1, 2})
	for _, v := range []ProtocolVersion{{1, 3}, {1, 4}} {
		if n := listed(v); n != at12 {
			t.Fatalf("Query lists %d operations at 1.2 but %d at %d.%d: the README groups 1.2–1.4", at12, n, v.Major, v.Minor)
		}
	}
	if n := listed(ProtocolVersion{2, 0}); n != len(handlers) {
		t.Fatalf("Query lists %d of %d operations at 2.0; the README says all", n, len(handlers))
	}
	want := fmt.Sprintf("%d operations (Query lists those the request's version defines: %d at 1.0, %d at 1.1, %d at 1.2–1.4, all %d at 2.0)",
		len(handlers), listed(ProtocolVersion{1, 0}), listed(ProtocolVersion{1, 1}), at12, listed(ProtocolVersion{2, 0}))
	if !strings.Contains(readme, want) {
		t.Fatalf("README.md does not say %q", want)
	}
}
