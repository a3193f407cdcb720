package server

import (
	"fmt"
	"sync"
)

// DefaultMaxInFlight is how many key operations one identity may have running at once, on both
// front ends together, unless Options.MaxInFlightPerIdentity says otherwise.
const DefaultMaxInFlight = 256

// inFlight bounds the key operations each identity has running. A token has a handful of
// sessions; without a bound, one client opening many connections (or HTTP/2 streams) would queue
// requests for every session and starve the others until their session waits time out.
type inFlight struct {
	max int
	mu  sync.Mutex
	n   map[string]int // identities with operations running; removed at zero so the map stays small
}

func newInFlight(max int) *inFlight {
	if max <= 0 {
		max = DefaultMaxInFlight
	}
	return &inFlight{max: max, n: map[string]int{}}
}

// admit counts one more operation of identity, or refuses it when the identity is at the limit.
// The caller must call release exactly once when the operation ends.
func (l *inFlight) admit(identity string) (release func(), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[identity] >= l.max {
		return nil, fmt.Errorf("too many requests in flight for this identity (at most %d at once); retry when earlier ones have been answered", l.max)
	}
	l.n[identity]++
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.n[identity]--; l.n[identity] <= 0 {
			delete(l.n, identity)
		}
	}, nil
}

// Admit implements ttlv.Admitter and kes.Admitter: one budget per identity across both front ends.
func (k kmipAuth) Admit(identity string) (func(), error) { return k.s.inFlight.admit(identity) }

// Admit implements kes.Admitter.
func (k kesAuth) Admit(identity string) (func(), error) { return k.s.inFlight.admit(identity) }
