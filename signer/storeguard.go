package signer

import (
	"strings"
	"sync"

	"github.com/miekg/pkcs11"
)

// storeGuard keeps a library's object searches apart from the calls that add token objects, for
// libraries that cannot run the two at once. SoftHSM2 (2.6, file store) can not: C_FindObjectsInit
// rescans the token directory, and when it runs while another session's new object has its file
// but is not yet in the token's object list, the library loads that file a second time. The
// creating call then fails (CKR_GENERAL_ERROR, CKR_TEMPLATE_INCONSISTENT or CKR_FUNCTION_FAILED)
// and a copy nobody can read stays in every later search of this process, which fails each
// handle index pass. Measured: 44 of 400 key pair generations failed with a search running
// beside them, none with this guard (TestSearchBesideCreate). Creations still run side by side;
// a search waits for those in flight, which on SoftHSM2 are milliseconds apart from RSA
// generation. Copies into session objects (keyCopies) do not touch the token's files and are
// not held back.
type storeGuard struct {
	p11
	mu sync.RWMutex
}

// guardStore wraps c in a storeGuard when the library is one that needs it.
func guardStore(c p11, info pkcs11.Info) p11 {
	if strings.HasPrefix(info.ManufacturerID, "SoftHSM") {
		return &storeGuard{p11: c}
	}
	return c
}

func (g *storeGuard) FindObjectsInit(sh pkcs11.SessionHandle, t []*pkcs11.Attribute) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.p11.FindObjectsInit(sh, t)
}

func (g *storeGuard) GenerateKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, t []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.p11.GenerateKey(sh, m, t)
}

func (g *storeGuard) GenerateKeyPair(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, pub, priv []*pkcs11.Attribute) (pkcs11.ObjectHandle, pkcs11.ObjectHandle, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.p11.GenerateKeyPair(sh, m, pub, priv)
}

func (g *storeGuard) CreateObject(sh pkcs11.SessionHandle, t []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.p11.CreateObject(sh, t)
}

func (g *storeGuard) UnwrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, k pkcs11.ObjectHandle, wrapped []byte, t []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.p11.UnwrapKey(sh, m, k, wrapped, t)
}

func (g *storeGuard) DeriveKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, base pkcs11.ObjectHandle, t []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.p11.DeriveKey(sh, m, base, t)
}
