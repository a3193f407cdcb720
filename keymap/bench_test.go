package keymap

import (
	"bufio"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

func BenchmarkPut(b *testing.B) {
	b.Run("serial", func(b *testing.B) {
		m := mustOpen(b, filepath.Join(b.TempDir(), "k.csv"))
		defer m.Close()
		b.ResetTimer()
		for i := range b.N {
			if err := m.Put(rec(i)); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "puts/s")
		b.ReportMetric(float64(b.N)/float64(m.fsyncs.Load()), "puts/fsync")
	})
	for _, writers := range []int{8, 32} {
		b.Run(fmt.Sprintf("parallel%d", writers), func(b *testing.B) {
			m := mustOpen(b, filepath.Join(b.TempDir(), "k.csv"))
			defer m.Close()
			var next atomic.Int64
			b.SetParallelism((writers + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := m.Put(rec(int(next.Add(1)))); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "puts/s")
			b.ReportMetric(float64(b.N)/float64(m.fsyncs.Load()), "puts/fsync")
		})
	}
}

// benchMap returns a map of n records, written directly.
func benchMap(b *testing.B, n int) *Map {
	path := filepath.Join(b.TempDir(), "k.csv")
	writeFile(b, path, n)
	return mustOpen(b, path)
}

// writeFile writes a keymap of n distinct records without going through
// Put, as fast as the disk takes it.
func writeFile(tb testing.TB, path string, n int) {
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	w.WriteString(header)
	row := make([]byte, 0, 512)
	for i := range n {
		r := rec(i)
		r.ID = fmt.Sprintf("p11-%040x", i)
		r.Owner = "3f2e9c1b8a7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f"
		if i%2 == 1 {
			r.Class, r.Algorithm, r.Size = PrivateKey, "RSA", 2048
			r.KeyID = tag(i)
		}
		p, err := prepare(r, t0)
		if err != nil {
			tb.Fatal(err)
		}
		row = appendPut(row[:0], p)
		w.Write(row)
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	f.Close()
}

func BenchmarkGet(b *testing.B) {
	const n = 100000
	m := benchMap(b, n)
	defer m.Close()
	ids := make([]string, 1024)
	for i := range ids {
		ids[i] = fmt.Sprintf("p11-%040x", rand.IntN(n))
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for i := range b.N {
			if _, ok := m.Get(ids[i&1023]); !ok {
				b.Fatal("missing")
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if _, ok := m.Get(ids[i&1023]); !ok {
					b.Error("missing")
					return
				}
				i++
			}
		})
	})
	b.Run("ByTag", func(b *testing.B) {
		tags := make([][]byte, 1024)
		for i := range tags {
			tags[i] = tag(rand.IntN(n))
		}
		b.ReportAllocs()
		for i := range b.N {
			if len(m.ByTag(tags[i&1023])) != 1 {
				b.Fatal("missing")
			}
		}
	})
}

// benchLog shows Open's phase timings with go test -bench Open1M -v.
var benchLog = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))

// BenchmarkOpen1M times Open of a file of 1,000,000 rows (half secret keys,
// half private keys with a key id, two attributes each). It also reports
// the CPU time per Open, which a busy machine distorts less than wall time,
// and the heap the loaded map keeps.
func BenchmarkOpen1M(b *testing.B) {
	const n = 1000000
	path := filepath.Join(b.TempDir(), "k.csv")
	t := time.Now()
	writeFile(b, path, n)
	st, _ := os.Stat(path)
	b.Logf("wrote %d rows, %d MB, in %v", n, st.Size()>>20, time.Since(t))
	runtime.GC()
	var cpu time.Duration
	var heap uint64
	b.ResetTimer()
	for range b.N {
		c0 := cpuTime()
		m, err := Open(path, benchLog)
		if err != nil {
			b.Fatal(err)
		}
		cpu += cpuTime() - c0
		b.StopTimer()
		if m.Len() != n {
			b.Fatalf("len %d", m.Len())
		}
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		heap = ms.HeapAlloc
		m.Close()
		m = nil
		runtime.GC()
		b.StartTimer()
	}
	b.ReportMetric(float64(st.Size())/(1<<20), "file-MB")
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
	b.ReportMetric(float64(heap)/(1<<20), "heap-MB")
}
