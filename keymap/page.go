package keymap

import (
	"math/rand/v2"
	"slices"
)

// Page returns items [offset, offset+limit) of xs in the order of cmp, without sorting all of xs:
// a search matching every row of a large keymap (a KMIP Locate, a KES list) orders only the
// page it answers.
func Page[T any](xs []T, offset, limit int, cmp func(a, b T) int) []T {
	offset = max(offset, 0)
	if offset >= len(xs) || limit <= 0 {
		return nil
	}
	end := offset + min(limit, len(xs)-offset)
	if end < len(xs) {
		selectFirst(xs, end, cmp)
	}
	xs = xs[:end]
	if offset > 0 {
		selectFirst(xs, offset, cmp)
	}
	out := xs[offset:]
	slices.SortFunc(out, cmp)
	return out
}

// selectFirst reorders xs so that its k first items are the k smallest in the order of cmp, in
// no particular order (quickselect, expected time linear in len(xs)).
func selectFirst[T any](xs []T, k int, cmp func(a, b T) int) {
	lo, hi := 0, len(xs) // the k-th smallest lies in xs[lo:hi]
	for hi-lo > 16 {
		// A pivot at random, moved to the front: a fixed choice (the median of the first, middle
		// and last) met inputs already in or against the order, as a keymap's rows often are,
		// with 50 compares an item.
		m := lo + rand.IntN(hi-lo)
		xs[lo], xs[m] = xs[m], xs[lo]
		p := xs[lo]
		// Three-way partition: < p, == p, > p.
		lt, i, gt := lo, lo+1, hi
		for i < gt {
			switch c := cmp(xs[i], p); {
			case c < 0:
				xs[lt], xs[i] = xs[i], xs[lt]
				lt++
				i++
			case c > 0:
				gt--
				xs[i], xs[gt] = xs[gt], xs[i]
			default:
				i++
			}
		}
		switch {
		case k <= lt:
			hi = lt
		case k >= gt:
			lo = gt
		default:
			return // the boundary falls among items equal to the pivot
		}
	}
	slices.SortFunc(xs[lo:hi], cmp)
}
