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

// Page takes a number of compares linear in the items, also on items already in (or against) the
// order, as a keymap's rows often are.
func TestPageLinear(t *testing.T) {
	const n = 100000
	for _, order := range []string{"sorted", "reversed"} {
		xs := make([]int, n)
		for i := range xs {
			xs[i] = i
			if order == "reversed" {
				xs[i] = n - i
			}
		}
		compares := 0
		Page(xs, n/2, 1000, func(a, b int) int { compares++; return cmp.Compare(a, b) })
		if compares > 20*n {
			t.Errorf("%s: %d compares for a page of %d items (%.0f an item)", order, compares, n, float64(compares)/n)
		}
	}
}
