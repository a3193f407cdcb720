package signer

import (
	"context"
	"encoding/hex"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"
)

// Session copies of keys.
//
// SoftHSM2's file store opens, locks, reads and closes a token object's file every time the
// object is used: that is most of an AES-GCM operation on a 32-byte data key (22 µs of CPU on
// the token object, 8 µs on a session object) and a quarter of an ECDSA P-256 signature (45 µs
// against 33). So a signer keeps, for each AES, HMAC and private key it uses, a session-object
// copy made inside the token by C_CopyObject with CKA_TOKEN=false. The
// copy has the same value and the same attributes (sensitive, not extractable); it is visible to
// this process only and disappears with the anchor session, i.e. when the signer closes or the
// process ends. Copies serve cryptographic operations only: attributes are read from and written
// to the token object.
//
// A copy would outlive its token object when another process destroys the key. Before a copy is
// used, the token object is looked at again when the last look is older than copyRecheck, so a
// key destroyed elsewhere stops working here within that time. A key destroyed through this
// process loses its copies at once.
const copyRecheck = time.Second

// copyRetry is how long a signer makes no copies after the token failed to make one for a
// reason that is not about the key (a device fault, a broken anchor session).
const copyRetry = 10 * time.Second

// keyCopy is a session copy of the token object src.
type keyCopy struct {
	h, src  pkcs11.ObjectHandle
	checked atomic.Int64 // t.clock() when src was last seen to exist
}

// clock is monotonic time since the token was opened, in nanoseconds.
func (t *Token) clock() int64 { return int64(time.Since(t.opened)) }

// useKey runs the cryptographic operation fn with tag's key of kind k: on the key's session copy
// when the signer keeps one, else on the token object (withKey).
func (t *Token) useKey(ctx context.Context, tag []byte, k objKind, fn func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error) error {
	c := t.copyOf(ctx, tag, k)
	if c == nil {
		return t.withKey(ctx, tag, k, fn)
	}
	recheck := t.clock()-c.checked.Load() >= int64(copyRecheck)
	err := t.do(ctx, func(sh pkcs11.SessionHandle) error {
		if recheck {
			// The source must still be this key's object, not another that took its handle number.
			if err := t.sameObject(sh, c.src, tag, k); err != nil {
				return err
			}
			c.checked.Store(t.clock())
		}
		return fn(sh, c.h)
	})
	if handleGone(err) {
		// The token object is gone (destroyed by another process) or the copy is: drop the
		// copy and take the token object's way, which finds out which and answers for it.
		t.dropCopy(handleKey{string(tag), k}, c)
		return t.withKey(ctx, tag, k, fn)
	}
	return err
}

// copyOf returns the session copy of tag's key of kind k, making it on first use; nil when the
// signer keeps no copies of it.
func (t *Token) copyOf(ctx context.Context, tag []byte, k objKind) *keyCopy {
	if t.cfg.KeyCopies <= 0 || k != kindAES && k != kindHMAC && k != kindPrivate {
		// Public keys are used on the host, certificates and data objects not at all.
		return nil
	}
	key := handleKey{string(tag), k}
	if v, ok := t.copies.Load(key); ok {
		return v.(*keyCopy) // nil for a key the token refused to copy
	}
	if t.clock() < t.copyPause.Load() {
		return nil
	}
	return t.makeCopy(ctx, tag, k, key)
}

// makeCopy copies the token object on the anchor session: a copy belongs to the session that
// made it, and pool sessions come and go. copyMu serializes the anchor's use.
func (t *Token) makeCopy(ctx context.Context, tag []byte, k objKind, key handleKey) *keyCopy {
	t.copyMu.Lock()
	defer t.copyMu.Unlock()
	if v, ok := t.copies.Load(key); ok {
		return v.(*keyCopy)
	}
	if t.copyCount >= t.cfg.KeyCopies || t.closed.Load() {
		return nil
	}
	src, stale, err := t.findCached(ctx, tag, k)
	if err != nil {
		return nil // the token object's way reports it
	}
	if err := t.confirm(t.anchor, src, stale, tag, k); err != nil {
		return nil // the token object's way finds the key again, or reports it
	}
	h, err := t.ctx.CopyObject(t.anchor, src, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false)})
	switch c := ckr(err); {
	case err == nil:
	case c == pkcs11.CKR_OBJECT_HANDLE_INVALID:
		return nil // a stale handle: withKey looks it up again
	case c == pkcs11.CKR_FUNCTION_NOT_SUPPORTED:
		t.copyPause.Store(int64(^uint64(0) >> 1))
		t.log.Info("token does not copy objects; keys are used as token objects", "err", err)
		return nil
	case sessionBroken(err) || deviceFault(err) || err != nil && c == 0:
		t.copyPause.Store(t.clock() + int64(copyRetry))
		t.log.Warn("session copy of a key failed; using token objects for a while", "err", err)
		return nil
	default:
		// A refusal about this key (CKA_COPYABLE false: CKR_ACTION_PROHIBITED, or a template
		// the token will not take): never ask again for it.
		t.log.Debug("token refuses a session copy of the key", "tag", hex.EncodeToString(tag), "kind", k.String(), "err", err)
		t.copies.Store(key, (*keyCopy)(nil))
		return nil
	}
	c := &keyCopy{h: h, src: src}
	c.checked.Store(t.clock())
	t.copies.Store(key, c)
	t.copyCount++
	return c
}

// dropCopy removes copy c of key (if it is still the current one) and destroys it in the token.
func (t *Token) dropCopy(key handleKey, c *keyCopy) {
	t.copyMu.Lock()
	defer t.copyMu.Unlock()
	if v, ok := t.copies.Load(key); !ok || v.(*keyCopy) != c {
		return
	}
	t.copies.Delete(key)
	t.copyCount--
	// Best effort: a copy whose handle went stale is gone already.
	_ = t.do(context.Background(), func(sh pkcs11.SessionHandle) error { return t.ctx.DestroyObject(sh, c.h) })
}

// dropCopies removes the copies of tag's keys, when the key is destroyed.
func (t *Token) dropCopies(tag []byte) {
	for _, k := range []objKind{kindAES, kindHMAC, kindPrivate} {
		key := handleKey{string(tag), k}
		if v, ok := t.copies.Load(key); ok {
			if c := v.(*keyCopy); c != nil {
				t.dropCopy(key, c)
			} else {
				t.copies.Delete(key)
			}
		}
	}
}

// Copies is how many session copies of keys the signer holds.
func (t *Token) Copies() int {
	t.copyMu.Lock()
	defer t.copyMu.Unlock()
	return t.copyCount
}
