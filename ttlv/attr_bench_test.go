package ttlv

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/gemalto/kmip-go/kmip14"
)

// The attribute benchmarks put hostile attribute values next to flat ones of the same size, as
// sub-benchmarks hostile/c1 and flat/c1 (test/benchratio prints flat's throughput relative to
// hostile's); each also logs the cost ratio hostile/flat, which must stay near 1 (linear cost)
// and was exponential in nesting depth before.

// benchMessageSize is a little under the default message size limit of 1 MiB.
const benchMessageSize = DefaultMaxMessageSize - 4096

// customAttrs fills a Create request with custom attributes made by value until the message is
// about size bytes.
func customAttrs(size int, value func(i int) *node) *node {
	var attrs []*node
	total := 0
	for i := 0; total < size; i++ {
		a := attribute1(fmt.Sprintf("x-a%d", i), value(i))
		total += len(a.bytes())
		attrs = append(attrs, a)
	}
	return createAES(attrs...)
}

// flatOf is v's items on one level: a structure of every primitive inside v.
func flatOf(v *node) *node {
	out := &node{Tag: v.Tag, Type: tStruct}
	var walk func(n *node)
	walk = func(n *node) {
		for _, k := range n.Kids {
			if k.Type == tStruct {
				walk(k)
			} else {
				out.Kids = append(out.Kids, k)
			}
		}
	}
	walk(v)
	return out
}

// runPair runs the hostile and flat sub-benchmarks and logs their cost ratio.
func runPair(b *testing.B, hostile, flat func(b *testing.B)) {
	ns := map[string]float64{}
	for _, s := range []struct {
		name string
		fn   func(b *testing.B)
	}{{"flat", flat}, {"hostile", hostile}} {
		b.Run(s.name+"/c1", func(b *testing.B) {
			s.fn(b)
			ns[s.name] = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		})
	}
	if ns["flat"] > 0 {
		// Printed rather than logged: a parent benchmark's log is not shown.
		fmt.Printf("%s: cost ratio hostile/flat %.2f (%.0f ns vs %.0f ns per operation)\n",
			strings.TrimPrefix(b.Name(), "Benchmark"), ns["hostile"]/ns["flat"], ns["hostile"], ns["flat"])
	}
}

// BenchmarkHostileCreate sends 1 MiB Create requests through the whole request path (parser,
// dispatcher, template, attribute checks and store, registry), without TLS: hostile carries
// custom attributes nested as deep as a message allows (27 levels), the input that took seconds
// per value before; flat the same items one level deep. Both are refused — flat at the object's
// attribute limit, after every value was checked and the first 64 KiB encoded; hostile at its
// first value — so no key is made.
func BenchmarkHostileCreate(b *testing.B) {
	id := env.clients["raw"].identity
	deep := nested(maxDepth - 5)
	flat := request(v14, kmip14.OperationCreate, customAttrs(benchMessageSize, func(int) *node { return flatOf(deep) })).encode()
	hostile := request(v14, kmip14.OperationCreate, customAttrs(benchMessageSize, func(int) *node { return deep })).encode()
	run := func(msg []byte) func(b *testing.B) {
		return func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			for i := 0; i < b.N; i++ {
				env.srv.handleMessage(context.Background(), id, msg)
			}
		}
	}
	b.Logf("messages: flat %d bytes, hostile %d bytes", len(flat), len(hostile))
	runPair(b, run(hostile), run(flat))
}

// BenchmarkAttrCodec stores and reads back 1 MiB of attribute values through the codec alone,
// without the limits that keep such values out of requests: hostile values nested 30 levels
// deep, flat ones with the same items on one level, 1 MiB of each.
func BenchmarkAttrCodec(b *testing.B) {
	deep := nested(30)
	fill := func(value func() *node) []*node {
		var vals []*node
		for total := 0; total < 1<<20; {
			v := value()
			total += len(v.bytes())
			vals = append(vals, v)
		}
		return vals
	}
	run := func(vals []*node) func(b *testing.B) {
		return func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				s, err := encodeValues(0x540001, vals)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := decodeValues(s); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	runPair(b, run(fill(func() *node { return deep })), run(fill(func() *node { return flatOf(deep) })))
}
