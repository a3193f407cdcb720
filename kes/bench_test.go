package kes

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/p11bridge/p11bridge/signer"
)

// The benchmarks put the KES path (kms-go client → TLS 1.3 + HTTP/2 → handler → registry →
// SoftHSM) next to the same work as direct registry calls on the same token, at concurrency 1 and
// 8, and print the ratio. Run: go test ./kes -run '^$' -bench . -benchtime 2s

// benchKey creates (once) the key the benchmarks use and returns its current version.
func benchKey(b *testing.B, name string) kesKeyVersion {
	b.Helper()
	if _, ok := lookup(fx.reg, name); !ok {
		if err := fx.admin.kes.CreateKey(context.Background(), name); err != nil {
			b.Fatal(err)
		}
	}
	k, _ := lookup(fx.reg, name)
	cur := k.current()
	return kesKeyVersion{name: name, id: cur.ID, tag: cur.Tag, signer: cur.Signer}
}

type kesKeyVersion struct {
	name, id, signer string
	tag              []byte
}

// runConcurrent runs op b.N times on conc goroutines and reports ops/s.
func runConcurrent(b *testing.B, conc int, op func(context.Context) error) {
	cx := context.Background()
	b.ResetTimer()
	if conc == 1 {
		for range b.N {
			if err := op(cx); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		b.SetParallelism((conc + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := op(cx); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// compare runs direct and kes variants at each concurrency and prints kes/direct latency ratios.
func compare(b *testing.B, direct, viaKES func(context.Context) error) {
	for _, conc := range []int{1, 8} {
		per := map[string]time.Duration{}
		for _, v := range []struct {
			mode string
			op   func(context.Context) error
		}{{"direct", direct}, {"kes", viaKES}} {
			b.Run(fmt.Sprintf("%s/c%d", v.mode, conc), func(b *testing.B) {
				runConcurrent(b, conc, v.op)
				per[v.mode] = b.Elapsed() / time.Duration(b.N)
			})
		}
		if per["direct"] > 0 {
			// Printed, not logged: a parent benchmark's log only shows with -v.
			fmt.Printf("%s concurrency %d: kes %v/op, direct %v/op, kes/direct %.2f\n",
				b.Name(), conc, per["kes"].Round(time.Microsecond), per["direct"].Round(time.Microsecond), float64(per["kes"])/float64(per["direct"]))
		}
	}
}

func BenchmarkGenerate(b *testing.B) {
	k := benchKey(b, "bench-generate")
	bind := []byte(`{"bucket":"bucket/object"}`)
	direct := func(cx context.Context) error {
		dk, err := fx.reg.Random(cx, k.signer, dataKeySize)
		if err != nil {
			return err
		}
		_, _, err = fx.reg.Seal(cx, k.id, nil, dk, aad(k.name, k.tag, bind))
		return err
	}
	viaKES := func(cx context.Context) error {
		_, err := fx.minio.kes.GenerateKey(cx, k.name, bind)
		return err
	}
	compare(b, direct, viaKES)
}

func BenchmarkDecrypt(b *testing.B) {
	k := benchKey(b, "bench-decrypt")
	bind := []byte(`{"bucket":"bucket/object"}`)
	dek, err := fx.minio.kes.GenerateKey(b.Context(), k.name, bind)
	if err != nil {
		b.Fatal(err)
	}
	s, _ := parseCiphertext(dek.Ciphertext)
	direct := func(cx context.Context) error {
		_, err := fx.reg.Open(cx, signer.ObjectID(s.tag, false), s.iv, s.body, aad(k.name, s.tag, bind))
		return err
	}
	viaKES := func(cx context.Context) error {
		_, err := fx.minio.kes.Decrypt(cx, k.name, dek.Ciphertext, bind)
		return err
	}
	compare(b, direct, viaKES)
}
