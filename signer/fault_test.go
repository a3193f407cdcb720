//go:build p11fault

package signer

import (
	"bytes"
	"crypto"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/p11bridge/p11bridge/keymap"
)

// The token fails in the middle of load: requests that hit the fault get a clear error, broken
// sessions leave the pool, the signer reports itself down, and recovers by itself when the fault clears.
func TestDeviceFaultUnderLoad(t *testing.T) {
	priv, _, err := testReg.CreateKeyPair(ctx, Operator, KeySpec{Algorithm: EC, Size: 256}, Meta{Name: "faulty", State: keymap.Active}, Meta{Name: "faulty-pub", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := testReg.Signer("a")
	for _, code := range []uint{pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_SESSION_HANDLE_INVALID} {
		t.Run(pkcs11.Error(code).Error(), func(t *testing.T) {
			closes := CallCount("CloseSession")
			var wg sync.WaitGroup
			var mu sync.Mutex
			var failures []error
			stop := make(chan struct{})
			for g := 0; g < 8; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						if _, err := testReg.Sign(ctx, Operator, priv.ID, SignParams{Scheme: ECDSA, Hash: crypto.SHA256}, []byte("x")); err != nil {
							mu.Lock()
							failures = append(failures, err)
							mu.Unlock()
						}
					}
				}()
			}
			time.Sleep(50 * time.Millisecond)
			InjectFault(code, "Sign")
			time.Sleep(100 * time.Millisecond)
			if code != pkcs11.CKR_SESSION_HANDLE_INVALID && tok.Healthy() {
				t.Error("signer still reports healthy during a device fault")
			}
			ClearFault()
			time.Sleep(100 * time.Millisecond)
			close(stop)
			wg.Wait()
			if len(failures) == 0 {
				t.Fatal("no request saw the fault")
			}
			for _, err := range failures {
				if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), pkcs11.Error(code).Error()) {
					t.Fatalf("failure %v is not ErrUnavailable naming %s", err, pkcs11.Error(code))
				}
			}
			if CallCount("CloseSession") == closes {
				t.Error("no broken session was closed")
			}
			if _, err := testReg.Sign(ctx, Operator, priv.ID, SignParams{Scheme: ECDSA, Hash: crypto.SHA256}, []byte("x")); err != nil {
				t.Fatalf("no recovery after the fault cleared: %v", err)
			}
			if !tok.Healthy() {
				t.Fatal("signer did not report itself healthy again")
			}
		})
	}
}

func TestLostLoginIsRestoredOnce(t *testing.T) {
	km, _ := keymap.Open(filepath.Join(t.TempDir(), "km.csv"), quietLog())
	r, err := Open(Options{Signers: []Config{cfgOf("s", tokB)}, Logger: quietLog()}, km)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	k, err := r.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "relogin", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := r.Signer("s")
	tok.loginMu.Lock()
	tok.lastLogin = time.Time{}
	tok.loginMu.Unlock()
	logins := CallCount("Login")
	InjectFault(pkcs11.CKR_USER_NOT_LOGGED_IN, "Encrypt")
	_, _, err = r.Seal(ctx, Operator, k.ID, nil, []byte("x"), nil)
	ClearFault()
	if err == nil {
		t.Fatal("the fault did not reach the caller")
	}
	if n := CallCount("Login") - logins; n != 1 {
		t.Fatalf("%d logins for one lost login, want exactly 1", n)
	}
	if _, _, err := r.Seal(ctx, Operator, k.ID, nil, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
}

func TestWrongPINTriedOnce(t *testing.T) {
	km, _ := keymap.Open(filepath.Join(t.TempDir(), "km.csv"), quietLog())
	c := cfgOf("s", tokSpare)
	c.PIN = "not-the-pin"
	logins := CallCount("Login")
	if _, err := Open(Options{Signers: []Config{c}, Logger: quietLog()}, km); err == nil {
		t.Fatal("opened with a wrong PIN")
	}
	if n := CallCount("Login") - logins; n != 1 {
		t.Fatalf("a wrong PIN was tried %d times at open, want 1", n)
	}
}

// A login the token keeps refusing to honour (CKR_USER_NOT_LOGGED_IN after the one re-login) means
// every request fails: the signer must report itself down, and up again once calls succeed.
func TestLostLoginReportsDown(t *testing.T) {
	km, _ := keymap.Open(filepath.Join(t.TempDir(), "km.csv"), quietLog())
	r, err := Open(Options{Signers: []Config{cfgOf("s", tokB)}, Logger: quietLog()}, km)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	k, err := r.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "lost-login", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := r.Signer("s")
	InjectFault(pkcs11.CKR_USER_NOT_LOGGED_IN, "Encrypt")
	_, _, err = r.Seal(ctx, Operator, k.ID, nil, []byte("x"), nil)
	healthy := tok.Healthy()
	ClearFault()
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "CKR_USER_NOT_LOGGED_IN") {
		t.Fatalf("error %v is not ErrUnavailable naming CKR_USER_NOT_LOGGED_IN", err)
	}
	if healthy {
		t.Error("signer reports healthy while the token refuses every call for want of a login")
	}
	if _, _, err := r.Seal(ctx, Operator, k.ID, nil, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	if !tok.Healthy() {
		t.Error("signer did not report itself healthy again")
	}
}

// A token that refuses to copy a key (CKA_COPYABLE false) or fails while copying: requests are
// served from the token object, a refused key is not asked again, a failing token is asked again
// only after copyRetry.
func TestKeyCopyRefused(t *testing.T) {
	km, _ := keymap.Open(filepath.Join(t.TempDir(), "km.csv"), quietLog())
	r, err := Open(Options{Signers: []Config{cfgOf("s", tokB)}, Logger: quietLog()}, km)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	tok, _ := r.Signer("s")
	for _, code := range []uint{pkcs11.CKR_ACTION_PROHIBITED, pkcs11.CKR_DEVICE_ERROR} {
		k, err := r.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "uncopyable", State: keymap.Active})
		if err != nil {
			t.Fatal(err)
		}
		copies := CallCount("CopyObject")
		InjectFault(code, "CopyObject")
		for i := 0; i < 3; i++ {
			iv, ct, err := r.Seal(ctx, Operator, k.ID, nil, []byte("x"), nil)
			if err != nil {
				t.Fatalf("%s: seal: %v", pkcs11.Error(code), err)
			}
			if pt, err := r.Open(ctx, Operator, k.ID, iv, ct, nil); err != nil || string(pt) != "x" {
				t.Fatalf("%s: open: %q, %v", pkcs11.Error(code), pt, err)
			}
		}
		ClearFault()
		if n := CallCount("CopyObject") - copies; n != 1 {
			t.Fatalf("%s: %d copy attempts for 6 operations, want 1", pkcs11.Error(code), n)
		}
		if tok.Copies() != 0 || !tok.Healthy() {
			t.Fatalf("%s: %d copies, healthy %v", pkcs11.Error(code), tok.Copies(), tok.Healthy())
		}
		tok.copyPause.Store(0) // as if copyRetry had passed
	}
}

// A token that chooses its own GCM IV (FIPS-mode HSMs) writes it back; Seal answers that IV, given
// one or not, and the ciphertext opens with it and not with the caller's.
func TestTokenChoosesGCMIV(t *testing.T) {
	k, err := testReg.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "token-iv", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	tokenIV := bytes.Repeat([]byte{0xA5}, GCMNonceSize)
	given := bytes.Repeat([]byte{0x01}, GCMNonceSize)
	for _, iv := range [][]byte{given, nil} {
		SetTokenIV(tokenIV)
		gotIV, ct, err := testReg.Seal(ctx, Operator, k.ID, iv, []byte("plaintext"), []byte("ad"))
		SetTokenIV(nil)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(gotIV, tokenIV) {
			t.Fatalf("IV given %x: Seal answered %x, want the token's %x", iv, gotIV, tokenIV)
		}
		if pt, err := testReg.Open(ctx, Operator, k.ID, gotIV, ct, []byte("ad")); err != nil || string(pt) != "plaintext" {
			t.Fatalf("open with the token's IV: %q, %v", pt, err)
		}
		if iv != nil {
			if _, err := testReg.Open(ctx, Operator, k.ID, iv, ct, []byte("ad")); !errors.Is(err, ErrNotAuthentic) {
				t.Fatalf("open with the caller's IV: %v", err)
			}
		}
	}
}

// Destroy writes its intent before the token objects go: a token that fails mid-destroy leaves a
// row marked half destroyed, which no one can use, which HalfDestroyed reports, and which
// FinishDestroys (run at every server start) completes.
func TestDestroyIntentFirst(t *testing.T) {
	owner := Caller{Identity: "destroyer"}
	k, err := testReg.Create(ctx, owner, KeySpec{Algorithm: AES, Size: 256, WithHMAC: true}, Meta{Name: "half", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	InjectFault(pkcs11.CKR_DEVICE_ERROR, "DestroyObject")
	err = testReg.Destroy(ctx, owner, k.ID)
	ClearFault()
	if err == nil {
		t.Fatal("destroy succeeded with DestroyObject failing")
	}
	rec, err := testReg.Get(k.ID)
	if err != nil || rec.Attrs[AttrDestroying] == "" {
		t.Fatalf("row after a failed destroy: %+v %v", rec, err)
	}
	if _, _, err := testReg.Seal(ctx, owner, k.ID, nil, []byte("x"), nil); !errors.Is(err, ErrWrongState) {
		t.Fatalf("a half-destroyed key encrypts: %v", err)
	}
	found := false
	for _, r := range HalfDestroyed(testKM) {
		found = found || r.ID == k.ID
	}
	if !found {
		t.Fatal("HalfDestroyed does not report the key")
	}
	if n, err := testReg.FinishDestroys(ctx); err != nil || n < 1 {
		t.Fatalf("FinishDestroys: %d %v", n, err)
	}
	if rec, err := testReg.Get(k.ID); err != nil || rec.State != keymap.Destroyed || rec.Attrs[AttrDestroying] != "" || rec.Attrs[AttrDestroyDate] == "" {
		t.Fatalf("row after FinishDestroys: %+v %v, want the Destroyed record", rec, err)
	}
	for _, r := range HalfDestroyed(testKM) {
		if r.ID == k.ID {
			t.Fatal("HalfDestroyed still reports the key")
		}
	}
	tok, _ := testReg.Signer("a")
	if n := len(attrs(t, tok, k.Tag, kindAnySecet, pkcs11.CKA_ID)); n != 0 {
		t.Fatalf("%d token objects left after FinishDestroys", n)
	}
}

// An object the index pass cannot read (a device fault) fails the pass, which then withdraws what
// it published: the object it could not read may share a tag with one it published. Before, the
// unreadable object was taken for a foreign one and the pass ended as if complete.
func TestIndexPassFailsOnUnreadableObject(t *testing.T) {
	k, err := testReg.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "pass-unreadable", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	InjectFault(pkcs11.CKR_DEVICE_ERROR, "GetAttributeValue")
	r, err := Open(Options{Signers: []Config{cfgOf("a", tokA)}, Logger: quietLog()}, testKM)
	if err != nil {
		ClearFault()
		t.Fatal(err)
	}
	defer r.Close()
	tok, _ := r.Signer("a")
	werr := tok.WaitIndex(ctx)
	ClearFault()
	if werr != nil {
		t.Fatal(werr)
	}
	st := tok.Index()
	if st.Err == nil || st.Indexed != 0 {
		t.Fatalf("pass over unreadable objects: %+v, want an error and nothing indexed", st)
	}
	n := 0
	tok.handles.Range(func(_, v any) bool {
		if v.(*cachedHandle).fromPass {
			n++
		}
		return true
	})
	if n != 0 {
		t.Fatalf("%d handles of the failed pass are still cached", n)
	}
	// The key is found by a search once the token answers again.
	if _, _, err := r.Seal(ctx, Operator, k.ID, nil, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
}
