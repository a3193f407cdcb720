package keymap

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"testing"
)

// Page answers what sorting everything and slicing answers, with many equal items too.
func TestPageAsSortAndSlice(t *testing.T) {
	rnd := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{0, 1, 5, 17, 100, 1000, 5000} {
		for _, spread := range []int{3, 1 << 30} {
			xs := make([]int, n)
			for i := range xs {
				xs[i] = rnd.IntN(spread)
			}
			want := slices.Clone(xs)
			slices.Sort(want)
			for _, c := range [][2]int{{0, 10}, {0, n}, {n / 2, 7}, {n - 1, 5}, {n, 3}, {3, 0}, {n / 3, n}} {
				off, lim := c[0], c[1]
				got := Page(slices.Clone(xs), off, lim, cmp.Compare[int])
				var w []int
				if lo := max(off, 0); lo < n && lim > 0 {
					w = want[lo:min(lo+lim, n)]
				}
				if !slices.Equal(got, w) {
					t.Fatalf("n %d, spread %d, offset %d, limit %d: got %v, want %v", n, spread, off, lim, got, w)
				}
			}
		}
	}
}
