package signer

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"
	pkcs11uri "github.com/stefanberger/go-pkcs11uri"
)

// Config describes one signer: a token in a PKCS#11 module, and how to log in to it.
type Config struct {
	Name   string
	Module string
	// Exactly one selector.
	SlotID      *uint
	TokenLabel  string
	TokenSerial string
	URI         string
	// PIN is the user PIN. It is never logged nor put into an error.
	PIN            string
	MaxSessions    int
	SessionTimeout time.Duration
	// KeyCopies bounds the session copies of keys the signer keeps (copies.go); 0 = none.
	KeyCopies int
}

// selector says in words how the token is chosen, for messages.
func (c Config) selector() string {
	switch {
	case c.SlotID != nil:
		return fmt.Sprintf("slot_id %d", *c.SlotID)
	case c.TokenLabel != "":
		return fmt.Sprintf("token_label %q", c.TokenLabel)
	case c.TokenSerial != "":
		return fmt.Sprintf("token_serial %q", c.TokenSerial)
	case c.URI != "":
		return fmt.Sprintf("uri %q", c.URI)
	}
	return "no selector"
}

// Token is one open signer: a logged-in token with a bounded session pool and a cache of object handles.
type Token struct {
	cfg  Config
	mod  *module
	ctx  p11
	slot uint
	info pkcs11.TokenInfo
	log  *slog.Logger

	// anchor stays open for the token's lifetime: PKCS#11 drops the login state when the
	// application's last session on a token closes, and evicting a pool session must not do that.
	anchor pkcs11.SessionHandle

	idle    chan pkcs11.SessionHandle
	slots   chan struct{}
	timeout time.Duration

	handles    sync.Map                   // handleKey -> *cachedHandle
	indexDone  chan struct{}              // closed when the index pass has ended (index.go)
	indexStats atomic.Pointer[IndexStats] // what it did
	searchGate chan struct{}              // held by the one targeted search at a time (index.go)
	searches   atomic.Int64               // targeted searches made
	missMu     sync.Mutex
	misses     map[handleKey]int64 // tags searched for in vain, at t.clock()
	pubs       sync.Map            // string(tag) -> crypto.PublicKey; public keys never change

	opened    time.Time
	copies    sync.Map     // handleKey -> *keyCopy (nil: the token refused to copy that key)
	copyMu    sync.Mutex   // serializes making and dropping copies, and the anchor session's use
	copyCount int          // under copyMu
	copyPause atomic.Int64 // no copies are made before this t.clock()

	loginMu   sync.Mutex
	lastLogin time.Time
	loginErr  error // a refused PIN: never tried again until the signer is reopened

	random reserve // token random drawn ahead for SealRandom (random.go)

	exportMu sync.Mutex
	export   *exportKey // the signer's export wrapping key (export.go), made at first use

	healthy atomic.Bool
	mechs   map[uint]bool
	closed  atomic.Bool
}

// openToken loads the module, finds the token, logs in once and fills the pool lazily.
func openToken(cfg Config, log *slog.Logger, index bool) (*Token, error) {
	where := fmt.Sprintf("signer %q (module %s, %s)", cfg.Name, cfg.Module, cfg.selector())
	mod, err := openModule(cfg.Module)
	if err != nil {
		return nil, errorf(ErrConfig, "signer %q: %v", cfg.Name, err)
	}
	t := &Token{cfg: cfg, mod: mod, ctx: mod.api, log: log.With("signer", cfg.Name), opened: time.Now(),
		searchGate: make(chan struct{}, 1)}
	ok := false
	defer func() {
		if !ok {
			mod.release()
		}
	}()
	if t.slot, t.info, err = findSlot(mod.ctx, cfg); err != nil {
		return nil, errorf(ErrConfig, "%s: %v", where, err)
	}
	t.ctx = mod.apiFor(t.slot)
	t.random.draw = t.ctx.GenerateRandom
	max := cfg.MaxSessions
	if max <= 0 {
		max = 8
	}
	if t.info.MaxRwSessionCount > 0 && t.info.MaxRwSessionCount != pkcs11.CK_EFFECTIVELY_INFINITE &&
		t.info.MaxRwSessionCount != pkcs11.CK_UNAVAILABLE_INFORMATION && int(t.info.MaxRwSessionCount) <= max {
		// One session is the anchor; leave the rest to the pool.
		max = int(t.info.MaxRwSessionCount) - 1
		if max < 1 {
			max = 1
		}
	}
	t.timeout = cfg.SessionTimeout
	if t.timeout <= 0 {
		t.timeout = 5 * time.Second
	}
	t.idle = make(chan pkcs11.SessionHandle, max)
	t.slots = make(chan struct{}, max)
	t.anchor, err = t.ctx.OpenSession(t.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return nil, errorf(ErrUnavailable, "%s: open session: %v", where, err)
	}
	if err := t.login(t.anchor); err != nil {
		_ = t.ctx.CloseSession(t.anchor)
		return nil, errorf(ErrConfig, "%s: %v", where, err)
	}
	t.mechs = map[uint]bool{}
	if ms, err := t.ctx.GetMechanismList(t.slot); err == nil {
		for _, m := range ms {
			t.mechs[m.Mechanism] = true
		}
	}
	t.healthy.Store(true)
	ok = true
	if index {
		t.startIndex()
	}
	return t, nil
}

// findSlot picks the one token matching the selector; several matches are refused, because
// PKCS#11 libraries return them in an order nobody promised.
func findSlot(ctx *pkcs11.Ctx, cfg Config) (uint, pkcs11.TokenInfo, error) {
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		return 0, pkcs11.TokenInfo{}, fmt.Errorf("list slots: %v", err)
	}
	var match func(slot uint, ti pkcs11.TokenInfo) bool
	switch {
	case cfg.SlotID != nil:
		match = func(slot uint, _ pkcs11.TokenInfo) bool { return slot == *cfg.SlotID }
	case cfg.TokenLabel != "":
		match = func(_ uint, ti pkcs11.TokenInfo) bool { return ti.Label == cfg.TokenLabel }
	case cfg.TokenSerial != "":
		match = func(_ uint, ti pkcs11.TokenInfo) bool { return ti.SerialNumber == cfg.TokenSerial }
	case cfg.URI != "":
		u := pkcs11uri.New()
		if err := u.Parse(cfg.URI); err != nil {
			return 0, pkcs11.TokenInfo{}, fmt.Errorf("parse uri: %v", err)
		}
		match = func(slot uint, ti pkcs11.TokenInfo) bool { return uriMatches(u, slot, ti) }
	default:
		return 0, pkcs11.TokenInfo{}, fmt.Errorf("no token selector (set one of slot_id, token_label, token_serial, uri)")
	}
	var found []uint
	var infos []pkcs11.TokenInfo
	var seen []string
	for _, s := range slots {
		ti, err := ctx.GetTokenInfo(s)
		if err != nil {
			continue
		}
		seen = append(seen, fmt.Sprintf("slot %d label %q serial %q", s, ti.Label, ti.SerialNumber))
		if match(s, ti) {
			found = append(found, s)
			infos = append(infos, ti)
		}
	}
	switch len(found) {
	case 0:
		have := "no initialized tokens"
		if len(seen) > 0 {
			have = "tokens present: " + strings.Join(seen, "; ")
		}
		return 0, pkcs11.TokenInfo{}, fmt.Errorf("token not found (%s)", have)
	case 1:
		return found[0], infos[0], nil
	}
	return 0, pkcs11.TokenInfo{}, fmt.Errorf("%d tokens match; select by token_serial or uri with serial= to choose one", len(found))
}

func uriMatches(u *pkcs11uri.Pkcs11URI, slot uint, ti pkcs11.TokenInfo) bool {
	checks := []struct{ attr, have string }{
		{"token", ti.Label}, {"serial", ti.SerialNumber}, {"manufacturer", ti.ManufacturerID}, {"model", ti.Model},
		{"slot-id", strconv.FormatUint(uint64(slot), 10)},
	}
	for _, c := range checks {
		if want, ok := u.GetPathAttribute(c.attr, false); ok && want != c.have {
			return false
		}
	}
	return true
}

// login logs the user in. A refused PIN is remembered and never tried again: HSMs lock a
// token after a few wrong PINs, so a loop of retries would lock out the operator.
func (t *Token) login(sh pkcs11.SessionHandle) error {
	t.loginMu.Lock()
	defer t.loginMu.Unlock()
	return t.loginLocked(sh)
}

// loginLocked is login with loginMu held.
func (t *Token) loginLocked(sh pkcs11.SessionHandle) error {
	if t.loginErr != nil {
		return t.loginErr
	}
	err := t.ctx.Login(sh, pkcs11.CKU_USER, t.cfg.PIN)
	t.lastLogin = time.Now()
	switch ckr(err) {
	case 0, pkcs11.CKR_USER_ALREADY_LOGGED_IN:
		return nil
	case pkcs11.CKR_PIN_INCORRECT:
		t.loginErr = fmt.Errorf("login refused: wrong PIN (CKR_PIN_INCORRECT); not retried, tokens lock after repeated failures")
	case pkcs11.CKR_PIN_LOCKED:
		t.loginErr = fmt.Errorf("login refused: the PIN is locked (CKR_PIN_LOCKED); the security officer must unlock it")
	case pkcs11.CKR_PIN_LEN_RANGE:
		t.loginErr = fmt.Errorf("login refused: PIN length out of range (CKR_PIN_LEN_RANGE)")
	case pkcs11.CKR_USER_PIN_NOT_INITIALIZED:
		t.loginErr = fmt.Errorf("login refused: the token's user PIN is not initialized")
	default:
		return fmt.Errorf("login: %v", err)
	}
	return t.loginErr
}

// refused is the remembered login failure, if any.
func (t *Token) refused() error {
	t.loginMu.Lock()
	defer t.loginMu.Unlock()
	return t.loginErr
}

// relogin answers CKR_USER_NOT_LOGGED_IN (the token lost our login, e.g. after a device reset):
// at most one attempt per second across all sessions, and never after a refused PIN.
func (t *Token) relogin(sh pkcs11.SessionHandle) error {
	// The check and the login under one lock: requests that meet the lost login together would
	// otherwise all pass the check and log in one after the other.
	t.loginMu.Lock()
	defer t.loginMu.Unlock()
	if t.loginErr != nil {
		return t.loginErr
	}
	if time.Since(t.lastLogin) < time.Second {
		return nil
	}
	t.log.Warn("token reports not logged in; logging in again")
	return t.loginLocked(sh)
}

// acquire takes a session from the pool, opening one while under the limit, else waiting.
func (t *Token) acquire(ctx context.Context) (pkcs11.SessionHandle, error) {
	if t.closed.Load() {
		return 0, errorf(ErrUnavailable, "signer %q is closed", t.cfg.Name)
	}
	select {
	case sh := <-t.idle:
		return sh, nil
	default:
	}
	select {
	case sh := <-t.idle:
		return sh, nil
	case t.slots <- struct{}{}:
		return t.openSession()
	default:
	}
	timer := time.NewTimer(t.timeout)
	defer timer.Stop()
	select {
	case sh := <-t.idle:
		return sh, nil
	case t.slots <- struct{}{}:
		return t.openSession()
	case <-timer.C:
		return 0, errorf(ErrUnavailable, "signer %q: no free session within %s (max_sessions %d)", t.cfg.Name, t.timeout, cap(t.slots))
	case <-ctx.Done():
		return 0, errorf(ErrUnavailable, "signer %q: waiting for a session: %v", t.cfg.Name, ctx.Err())
	}
}

// openSession opens a pool session in a slot the caller has taken, giving the slot back on failure.
func (t *Token) openSession() (pkcs11.SessionHandle, error) {
	sh, err := t.ctx.OpenSession(t.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		<-t.slots
		t.noteFault(err)
		return 0, errorf(ErrUnavailable, "signer %q: open session: %v", t.cfg.Name, err)
	}
	return sh, nil
}

// release returns a session, or closes it when the last call said it is broken.
func (t *Token) release(sh pkcs11.SessionHandle, err error) {
	if err != nil && sessionBroken(err) || t.closed.Load() {
		_ = t.ctx.CloseSession(sh)
		<-t.slots
		return
	}
	t.idle <- sh
}

// noteFault records device-level failures so health checks report the signer down. A
// CKR_USER_NOT_LOGGED_IN that reaches it has outlived the one re-login do allows: the token has
// lost our login and every request will fail until it comes back, so the signer is down too.
func (t *Token) noteFault(err error) {
	if (deviceFault(err) || ckr(err) == pkcs11.CKR_USER_NOT_LOGGED_IN) && t.healthy.Swap(false) {
		t.log.Error("signer is failing", "err", err)
	}
}

// do runs fn on a pooled session. It evicts broken sessions, logs in again once when the token
// lost the login, and retries once on a fresh session when the session itself was the problem.
func (t *Token) do(ctx context.Context, fn func(sh pkcs11.SessionHandle) error) error {
	for attempt := 0; ; attempt++ {
		sh, err := t.acquire(ctx)
		if err != nil {
			return err
		}
		err = fn(sh)
		if err == nil {
			t.release(sh, nil)
			if !t.healthy.Load() && t.healthy.CompareAndSwap(false, true) {
				t.log.Info("signer recovered")
			}
			return nil
		}
		code := ckr(err)
		if code == pkcs11.CKR_USER_NOT_LOGGED_IN && attempt == 0 {
			lerr := t.relogin(sh)
			t.release(sh, nil)
			if lerr != nil {
				// Without a login nothing works: report the signer down, not only this request.
				if t.healthy.Swap(false) {
					t.log.Error("signer is failing: the token lost the login and logging in again failed", "err", lerr)
				}
				return errorf(ErrUnavailable, "signer %q: %v", t.cfg.Name, lerr)
			}
			continue
		}
		t.release(sh, err)
		t.noteFault(err)
		if attempt == 0 && (code == pkcs11.CKR_SESSION_HANDLE_INVALID || code == pkcs11.CKR_SESSION_CLOSED) {
			continue
		}
		return err
	}
}

// Healthy reports whether the last calls to the token succeeded.
func (t *Token) Healthy() bool { return t.healthy.Load() && !t.closed.Load() }

// Name is the signer's configured name.
func (t *Token) Name() string { return t.cfg.Name }

// Ping does one cheap round trip to the token (C_GetSessionInfo on a pooled session) and returns its latency.
func (t *Token) Ping(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	err := t.do(ctx, func(sh pkcs11.SessionHandle) error {
		_, err := t.ctx.GetSessionInfo(sh)
		return err
	})
	if err != nil {
		return 0, classify(err, fmt.Sprintf("signer %q: ping", t.cfg.Name))
	}
	return time.Since(start), nil
}

// close ends every session and drops the module reference. Requests still running on the token
// finish first (up to closeWait): finalizing a module under a running call is undefined behaviour.
func (t *Token) close() {
	if t.closed.Swap(true) {
		return
	}
	deadline := time.Now().Add(closeWait)
	for {
		for drained := false; !drained; {
			select {
			case sh := <-t.idle:
				_ = t.ctx.CloseSession(sh)
				<-t.slots
			default:
				drained = true
			}
		}
		// Sessions in use come back through release, which closes them now that t is closed.
		if len(t.slots) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := len(t.slots); n > 0 {
		t.log.Warn("closing signer with sessions still in use", "sessions", n)
	}
	// No C_Logout: login state is per token per process, and a reopened signer on the same
	// token may already be serving; closing our last session is enough.
	_ = t.ctx.CloseSession(t.anchor)
	t.random.wipe()
	t.wipeExportKey()
	t.mod.release()
}

// closeWait bounds how long closing a signer waits for requests in flight.
const closeWait = 30 * time.Second
