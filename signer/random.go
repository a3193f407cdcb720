package signer

import (
	"sync"

	"github.com/miekg/pkcs11"
)

// reserveSize is how much token random a Token draws at once for SealRandom: 32 data keys of
// 32 bytes. A C_GenerateRandom of 32 bytes cost SoftHSM about 2.5 µs of CPU (call, session
// lookup, its DRBG's locks), a sixth of a KES generate's token work; a kilobyte costs little
// more, so drawing ahead makes the RNG's share of a generate negligible. The price is that up to
// 31 future data keys sit in process memory until used, where the keys handed out pass anyway;
// each is wiped from the reserve as it is taken (docs/guarantees.md).
const reserveSize = 1024

// maxReserved is the largest request served from the reserve; larger ones draw directly.
const maxReserved = 64

// reserve is token random drawn ahead of use.
type reserve struct {
	mu     sync.Mutex
	buf    []byte // buf[off:] is unused random
	off    int
	closed bool // wiped for good: the signer closed, and a late request draws nothing more
	draw   func(pkcs11.SessionHandle, int) ([]byte, error)
}

// take returns n bytes of token random, refilling the reserve through session sh when it holds
// fewer. The bytes handed out are cleared in the reserve.
func (r *reserve) take(sh pkcs11.SessionHandle, n int) ([]byte, error) {
	if n > maxReserved {
		return r.draw(sh, n)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, errorf(ErrUnavailable, "the signer is closed")
	}
	if len(r.buf)-r.off < n {
		fresh, err := r.draw(sh, reserveSize)
		if err != nil {
			return nil, err
		}
		if len(fresh) != reserveSize {
			clear(fresh)
			return r.draw(sh, n)
		}
		clear(r.buf)
		r.buf, r.off = fresh, 0
	}
	out := make([]byte, n)
	used := r.buf[r.off : r.off+n]
	copy(out, used)
	clear(used)
	r.off += n
	return out, nil
}

// wipe clears what is left when the token closes, and refuses later takes.
func (r *reserve) wipe() {
	r.mu.Lock()
	clear(r.buf)
	r.buf, r.off, r.closed = nil, 0, true
	r.mu.Unlock()
}
