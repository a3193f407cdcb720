//go:build p11fault

package signer

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// Fault injection, compiled only with -tags p11fault: the tests of failure behaviour make the
// token fail in the middle of load, and watch the registry recover when the fault clears.

type faultState struct {
	mu    sync.RWMutex
	code  uint            // CKR_* to return; 0 = none
	calls map[string]bool // which calls fail; empty = all except OpenSession/CloseSession
	count map[string]*atomic.Int64
}

var faults = &faultState{count: map[string]*atomic.Int64{}}

func init() {
	wrapP11 = func(c *pkcs11.Ctx) p11 { return faulty{c} }
}

// InjectFault makes the named calls (all when none are named) return code until ClearFault.
func InjectFault(code uint, calls ...string) {
	faults.mu.Lock()
	defer faults.mu.Unlock()
	faults.code = code
	faults.calls = map[string]bool{}
	for _, c := range calls {
		faults.calls[c] = true
	}
}

// ClearFault ends the injected fault.
func ClearFault() { InjectFault(0) }

// CallCount says how often a PKCS#11 call was made (e.g. "Login": a wrong PIN is tried once).
func CallCount(call string) int64 {
	faults.mu.RLock()
	defer faults.mu.RUnlock()
	if c := faults.count[call]; c != nil {
		return c.Load()
	}
	return 0
}

func (f *faultState) hit(call string) error {
	f.mu.RLock()
	c := f.count[call]
	code, calls := f.code, f.calls
	f.mu.RUnlock()
	if c == nil {
		f.mu.Lock()
		if c = f.count[call]; c == nil {
			c = &atomic.Int64{}
			f.count[call] = c
		}
		f.mu.Unlock()
	}
	c.Add(1)
	if code == 0 {
		return nil
	}
	if len(calls) == 0 && (call == "CloseSession" || call == "Login") || len(calls) > 0 && !calls[call] {
		return nil
	}
	return pkcs11.Error(code)
}

// FaultHandler serves the fault switch: POST ?code=0x30&calls=Sign,Encrypt injects, DELETE clears,
// GET ?call=Login reads a call count.
func FaultHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodPost:
			code, err := strconv.ParseUint(r.URL.Query().Get("code"), 0, 32)
			if err != nil {
				http.Error(w, "code: "+err.Error(), http.StatusBadRequest)
				return
			}
			var calls []string
			if c := r.URL.Query().Get("calls"); c != "" {
				calls = strings.Split(c, ",")
			}
			InjectFault(uint(code), calls...)
		case http.MethodDelete:
			ClearFault()
		case http.MethodGet:
			json.NewEncoder(w).Encode(map[string]int64{"count": CallCount(r.URL.Query().Get("call"))})
		}
	})
}

type faulty struct{ c *pkcs11.Ctx }

func (f faulty) OpenSession(slot, flags uint) (pkcs11.SessionHandle, error) {
	if err := faults.hit("OpenSession"); err != nil {
		return 0, err
	}
	return f.c.OpenSession(slot, flags)
}
func (f faulty) CloseSession(sh pkcs11.SessionHandle) error {
	faults.hit("CloseSession")
	return f.c.CloseSession(sh)
}
func (f faulty) Login(sh pkcs11.SessionHandle, u uint, pin string) error {
	if err := faults.hit("Login"); err != nil {
		return err
	}
	return f.c.Login(sh, u, pin)
}
func (f faulty) Logout(sh pkcs11.SessionHandle) error { return f.c.Logout(sh) }
func (f faulty) GetSessionInfo(sh pkcs11.SessionHandle) (pkcs11.SessionInfo, error) {
	if err := faults.hit("GetSessionInfo"); err != nil {
		return pkcs11.SessionInfo{}, err
	}
	return f.c.GetSessionInfo(sh)
}
func (f faulty) GetMechanismList(slot uint) ([]*pkcs11.Mechanism, error) {
	return f.c.GetMechanismList(slot)
}
func (f faulty) FindObjectsInit(sh pkcs11.SessionHandle, t []*pkcs11.Attribute) error {
	if err := faults.hit("FindObjectsInit"); err != nil {
		return err
	}
	return f.c.FindObjectsInit(sh, t)
}
func (f faulty) FindObjects(sh pkcs11.SessionHandle, max int) ([]pkcs11.ObjectHandle, bool, error) {
	return f.c.FindObjects(sh, max)
}
func (f faulty) FindObjectsFinal(sh pkcs11.SessionHandle) error { return f.c.FindObjectsFinal(sh) }
func (f faulty) GetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) ([]*pkcs11.Attribute, error) {
	if err := faults.hit("GetAttributeValue"); err != nil {
		return nil, err
	}
	return f.c.GetAttributeValue(sh, o, a)
}
func (f faulty) SetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) error {
	if err := faults.hit("SetAttributeValue"); err != nil {
		return err
	}
	return f.c.SetAttributeValue(sh, o, a)
}
func (f faulty) GenerateKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, t []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if err := faults.hit("GenerateKey"); err != nil {
		return 0, err
	}
	return f.c.GenerateKey(sh, m, t)
}
func (f faulty) GenerateKeyPair(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, pub, priv []*pkcs11.Attribute) (pkcs11.ObjectHandle, pkcs11.ObjectHandle, error) {
	if err := faults.hit("GenerateKeyPair"); err != nil {
		return 0, 0, err
	}
	return f.c.GenerateKeyPair(sh, m, pub, priv)
}
func (f faulty) CreateObject(sh pkcs11.SessionHandle, t []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if err := faults.hit("CreateObject"); err != nil {
		return 0, err
	}
	return f.c.CreateObject(sh, t)
}
func (f faulty) CopyObject(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, t []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if err := faults.hit("CopyObject"); err != nil {
		return 0, err
	}
	return f.c.CopyObject(sh, o, t)
}
func (f faulty) DestroyObject(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle) error {
	if err := faults.hit("DestroyObject"); err != nil {
		return err
	}
	return f.c.DestroyObject(sh, o)
}
func (f faulty) SignInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	if err := faults.hit("SignInit"); err != nil {
		return err
	}
	return f.c.SignInit(sh, m, o)
}
func (f faulty) Sign(sh pkcs11.SessionHandle, msg []byte) ([]byte, error) {
	if err := faults.hit("Sign"); err != nil {
		// A failing C_Sign ends the operation its Init started; without this the next Init on the
		// session would meet CKR_OPERATION_ACTIVE, a fault no real token adds.
		_, _ = f.c.Sign(sh, msg)
		return nil, err
	}
	return f.c.Sign(sh, msg)
}
func (f faulty) EncryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	if err := faults.hit("EncryptInit"); err != nil {
		return err
	}
	if iv := tokenIV.Load(); iv != nil && len(m) == 1 && m[0].Mechanism == pkcs11.CKM_AES_GCM {
		replaceIV(m[0].Parameter, *iv)
	}
	return f.c.EncryptInit(sh, m, o)
}

// tokenIV, when set, is the IV the token uses for AES-GCM encryption whatever the caller gave,
// written back into the caller's parameters as FIPS-mode HSMs (CloudHSM, Luna) do.
var tokenIV atomic.Pointer[[]byte]

// SetTokenIV makes the token choose iv for every AES-GCM encryption; nil ends it.
func SetTokenIV(iv []byte) {
	if iv == nil {
		tokenIV.Store(nil)
		return
	}
	tokenIV.Store(&iv)
}

// replaceIV writes iv over the IV a CK_GCM_PARAMS (as gcm.go lays it out, in C memory) points to.
func replaceIV(param []byte, iv []byte) {
	if len(param) != int(gcmIVAt) {
		panic("p11fault: GCM parameters not laid out by gcm.go")
	}
	p := (*struct {
		iv     unsafe.Pointer
		ivLen  uintptr
		ivBits uintptr
	})(unsafe.Pointer(&param[0]))
	copy(unsafe.Slice((*byte)(p.iv), p.ivLen), iv)
}
func (f faulty) Encrypt(sh pkcs11.SessionHandle, msg []byte) ([]byte, error) {
	if err := faults.hit("Encrypt"); err != nil {
		// A failing C_Encrypt ends the operation its Init started; without this the next Init on the
		// session would meet CKR_OPERATION_ACTIVE, a fault no real token adds.
		_, _ = f.c.Encrypt(sh, msg)
		return nil, err
	}
	return f.c.Encrypt(sh, msg)
}
func (f faulty) DecryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	if err := faults.hit("DecryptInit"); err != nil {
		return err
	}
	return f.c.DecryptInit(sh, m, o)
}
func (f faulty) Decrypt(sh pkcs11.SessionHandle, c []byte) ([]byte, error) {
	if err := faults.hit("Decrypt"); err != nil {
		// A failing C_Decrypt ends the operation its Init started; without this the next Init on the
		// session would meet CKR_OPERATION_ACTIVE, a fault no real token adds.
		_, _ = f.c.Decrypt(sh, c)
		return nil, err
	}
	return f.c.Decrypt(sh, c)
}
func (f faulty) GenerateRandom(sh pkcs11.SessionHandle, n int) ([]byte, error) {
	if err := faults.hit("GenerateRandom"); err != nil {
		return nil, err
	}
	return f.c.GenerateRandom(sh, n)
}

func (f faulty) WrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, wrapping, key pkcs11.ObjectHandle) ([]byte, error) {
	if err := faults.hit("WrapKey"); err != nil {
		return nil, err
	}
	return f.c.WrapKey(sh, m, wrapping, key)
}

func (f faulty) UnwrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, unwrapping pkcs11.ObjectHandle, wrapped []byte, a []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if err := faults.hit("UnwrapKey"); err != nil {
		return 0, err
	}
	return f.c.UnwrapKey(sh, m, unwrapping, wrapped, a)
}

func (f faulty) DeriveKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, base pkcs11.ObjectHandle, a []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if err := faults.hit("DeriveKey"); err != nil {
		return 0, err
	}
	return f.c.DeriveKey(sh, m, base, a)
}
