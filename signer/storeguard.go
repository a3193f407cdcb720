package signer

import (
	"strings"
	"sync"

	"github.com/miekg/pkcs11"
)

// storeGuard keeps one token's object searches apart from the calls that add objects to it, for
// libraries that cannot run the two at once. SoftHSM2 (2.6, file store) can not: C_FindObjectsInit
// rescans the token's directory and walks its objects, and when that runs while another session
// of the process adds a token object — its file written, the object not yet in the token's list —
// the library loads the file a second time. The creating call then fails (CKR_GENERAL_ERROR,
// CKR_TEMPLATE_INCONSISTENT or CKR_FUNCTION_FAILED) and a copy nobody can read stays in every
// later search of the process, which fails each handle index pass. In plain PKCS#11, 44 of 400
// key pair generations failed beside a loop of searches, none beside other generations or with
// searches kept apart; destroys beside searches did no harm (TestSearchBesideCreate).
//
// Searches run side by side, and so do creations; a search waits for the creations in flight and
// the reverse, taking turns when both wait (groupLock). The race is per token, so the guard is
// per slot: other tokens of the library are not held back. Calls whose templates all make
// session objects (CKA_TOKEN false) touch no file and pass.
type storeGuard struct {
	p11
	lock groupLock
}

// needsStoreGuard says whether the library described by info needs a storeGuard per token.
func needsStoreGuard(info pkcs11.Info) bool {
	return strings.HasPrefix(info.ManufacturerID, "SoftHSM")
}

// The two groups of a storeGuard's lock.
const (
	searching = iota
	creating
)

func (g *storeGuard) FindObjectsInit(sh pkcs11.SessionHandle, t []*pkcs11.Attribute) error {
	g.lock.enter(searching)
	defer g.lock.exit(searching)
	return g.p11.FindObjectsInit(sh, t)
}

// create runs fn as a creation unless every template asks for a session object.
func (g *storeGuard) create(fn func(), templates ...[]*pkcs11.Attribute) {
	for _, t := range templates {
		if !sessionObject(t) {
			g.lock.enter(creating)
			defer g.lock.exit(creating)
			break
		}
	}
	fn()
}

// sessionObject says whether a template sets CKA_TOKEN false. Without CKA_TOKEN a new object is a
// session object, but a copy keeps its source's, so only an explicit false counts.
func sessionObject(t []*pkcs11.Attribute) bool {
	for _, a := range t {
		if a.Type == pkcs11.CKA_TOKEN {
			return len(a.Value) == 1 && a.Value[0] == 0
		}
	}
	return false
}

func (g *storeGuard) GenerateKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, t []*pkcs11.Attribute) (h pkcs11.ObjectHandle, err error) {
	g.create(func() { h, err = g.p11.GenerateKey(sh, m, t) }, t)
	return
}

func (g *storeGuard) GenerateKeyPair(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, pub, priv []*pkcs11.Attribute) (ph, qh pkcs11.ObjectHandle, err error) {
	g.create(func() { ph, qh, err = g.p11.GenerateKeyPair(sh, m, pub, priv) }, pub, priv)
	return
}

func (g *storeGuard) CreateObject(sh pkcs11.SessionHandle, t []*pkcs11.Attribute) (h pkcs11.ObjectHandle, err error) {
	g.create(func() { h, err = g.p11.CreateObject(sh, t) }, t)
	return
}

func (g *storeGuard) CopyObject(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, t []*pkcs11.Attribute) (h pkcs11.ObjectHandle, err error) {
	g.create(func() { h, err = g.p11.CopyObject(sh, o, t) }, t)
	return
}

func (g *storeGuard) UnwrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, k pkcs11.ObjectHandle, wrapped []byte, t []*pkcs11.Attribute) (h pkcs11.ObjectHandle, err error) {
	g.create(func() { h, err = g.p11.UnwrapKey(sh, m, k, wrapped, t) }, t)
	return
}

func (g *storeGuard) DeriveKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, base pkcs11.ObjectHandle, t []*pkcs11.Attribute) (h pkcs11.ObjectHandle, err error) {
	g.create(func() { h, err = g.p11.DeriveKey(sh, m, base, t) }, t)
	return
}

// groupLock is held by any number of members of one of two groups at a time. While one group
// holds it and the other waits, the next turn is the waiting group's, and newcomers of the holding
// group wait too, so neither group can keep the other out by overlapping.
type groupLock struct {
	mu      sync.Mutex
	cond    sync.Cond
	active  [2]int
	waiting [2]int
	turn    int
}

func (l *groupLock) enter(g int) {
	o := 1 - g
	l.mu.Lock()
	if l.cond.L == nil {
		l.cond.L = &l.mu
	}
	l.waiting[g]++
	for {
		if l.active[o] > 0 {
			l.turn = g
		} else if l.waiting[o] == 0 || l.turn != o {
			break
		}
		l.cond.Wait()
	}
	l.waiting[g]--
	l.active[g]++
	if l.waiting[o] > 0 {
		// Members of the other group that woke before this one entered went back to sleep
		// without seeing it active: claim the next turn for them here.
		l.turn = o
	}
	l.mu.Unlock()
}

func (l *groupLock) exit(g int) {
	l.mu.Lock()
	l.active[g]--
	if l.active[g] == 0 {
		l.cond.Broadcast()
	}
	l.mu.Unlock()
}
