package test

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
	"github.com/ovh/kmip-go/kmipclient"

	"github.com/p11bridge/p11bridge/signer/softhsm"
)

// faultLoad is KMIP sign and KES generate/decrypt running in a loop, each result filed under the
// phase of the test it started in.
type faultLoad struct {
	phase atomic.Int32
	mu    sync.Mutex
	res   map[int32]*phaseResult
	stop  atomic.Bool
	wg    sync.WaitGroup
}

type phaseResult struct {
	kmipOK, kesOK     int
	kmipFail, kesFail int
	kmipErrs, kesErrs []string // the first maxKeptErrors: ovh client errors; KES "status message"
}

// maxKeptErrors bounds the messages kept per phase: a fault held for long under load fails
// thousands of requests a second.
const maxKeptErrors = 1000

func (l *faultLoad) record(phase int32, kmipRes bool, ok bool, msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.res[phase]
	if r == nil {
		r = &phaseResult{}
		l.res[phase] = r
	}
	switch {
	case kmipRes && ok:
		r.kmipOK++
	case kmipRes:
		if r.kmipFail++; len(r.kmipErrs) < maxKeptErrors {
			r.kmipErrs = append(r.kmipErrs, msg)
		}
	case ok:
		r.kesOK++
	default:
		if r.kesFail++; len(r.kesErrs) < maxKeptErrors {
			r.kesErrs = append(r.kesErrs, msg)
		}
	}
}

func (l *faultLoad) result(phase int32) phaseResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	if r := l.res[phase]; r != nil {
		return *r
	}
	return phaseResult{}
}

// TestHSMFaultsEndToEnd runs the p11fault build under load (KMIP sign, KES generate and decrypt)
// and makes every PKCS#11 call fail with each of CKR_DEVICE_ERROR, CKR_SESSION_HANDLE_INVALID,
// CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT and CKR_USER_NOT_LOGGED_IN in turn. Requests that hit
// the fault get a clear error (KMIP General Failure with a message naming the fault, KES 503 with
// one), ops /ready and KES /v1/ready report the signer down while it lasts, and once it clears the
// signer recovers with nobody's help: requests started after the clear succeed.
func TestHSMFaultsEndToEnd(t *testing.T) {
	waitForBenchmarks(t)
	faultHold := time.Second
	if soak() {
		faultHold = 20 * time.Second
	}
	b := newBridge(t, t.TempDir(), "faulty")
	b.writeConfig(hcfg{signers: []string{"faulty"}})
	b.startBin(faultBinary)
	admin := b.adminClient()
	setup, err := b.kmipAs(admin)
	if err != nil {
		t.Fatal(err)
	}
	priv, _ := krillKeyPair(t, setup, "fault")
	kes := b.kesAs(admin)
	if st, body, err := kes.do(http.MethodPost, "/v1/key/create/fault-kes", nil); err != nil || st != http.StatusOK {
		t.Fatalf("create KES key: %d %s %v", st, body, err)
	}

	l := &faultLoad{res: map[int32]*phaseResult{}}
	for i := 0; i < 4; i++ {
		c, err := b.kmipAs(admin)
		if err != nil {
			t.Fatal(err)
		}
		k := b.kesAs(admin)
		l.wg.Add(2)
		go func(c *kmipclient.Client) {
			defer l.wg.Done()
			for !l.stop.Load() {
				phase := l.phase.Load()
				_, err := kmipSign(c, priv, []byte("under faults"))
				msg := ""
				if err != nil {
					msg = err.Error()
				}
				l.record(phase, true, err == nil, msg)
			}
		}(c)
		go func() {
			defer l.wg.Done()
			for n := 0; !l.stop.Load(); n++ {
				phase := l.phase.Load()
				ctx := []byte(fmt.Sprintf("ctx-%d", n))
				dk, st, msg, err := k.generate("fault-kes", ctx)
				if err == nil && st == http.StatusOK {
					var pt []byte
					pt, st, msg, err = k.decrypt("fault-kes", dk.Ciphertext, ctx)
					if err == nil && st == http.StatusOK && !bytes.Equal(pt, dk.Plaintext) {
						st, msg = 0, "decrypt gave another data key"
					}
				}
				if err != nil {
					msg = err.Error()
				}
				l.record(phase, false, err == nil && st == http.StatusOK, fmt.Sprintf("%d %s", st, msg))
			}
		}()
	}
	t.Cleanup(func() { l.stop.Store(true); l.wg.Wait() })

	time.Sleep(500 * time.Millisecond)
	if r := l.result(0); r.kmipOK == 0 || r.kesOK == 0 || r.kmipFail+r.kesFail > 0 {
		t.Fatalf("before any fault: %d signatures, %d KES round trips, errors %v %v", r.kmipOK, r.kesOK, r.kmipErrs, r.kesErrs)
	}
	codes := []uint{pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_DEVICE_REMOVED,
		pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_USER_NOT_LOGGED_IN}
	phase := int32(0)
	for _, code := range codes {
		name := pkcs11.Error(code).Error() // "pkcs11: 0x30: CKR_DEVICE_ERROR"
		ckrName := name[strings.LastIndex(name, " ")+1:]
		t.Run(ckrName, func(t *testing.T) {
			logins := b.callCount("Login")
			faultPhase, afterPhase := phase+1, phase+2
			phase += 3
			b.fault(code)
			injected := time.Now()
			l.phase.Store(faultPhase) // requests from now on start with the fault in place
			// While the fault lasts: both front ends fail requests, both readiness checks say down.
			var opsDown, kesDown bool
			deadline := time.Now().Add(faultHold + 10*time.Second)
			for time.Now().Before(deadline) {
				r := l.result(faultPhase)
				if !opsDown {
					opsDown = b.opsReady() == http.StatusServiceUnavailable
				}
				if !kesDown {
					st, body, err := kes.do(http.MethodGet, "/v1/ready", nil)
					kesDown = err == nil && st == http.StatusServiceUnavailable && strings.Contains(kesMessage(body), "faulty")
				}
				if opsDown && kesDown && len(r.kmipErrs) >= 4 && len(r.kesErrs) >= 4 && time.Since(injected) >= faultHold {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			l.phase.Store(afterPhase + 1) // requests starting now may meet the fault or not: not judged
			r := l.result(faultPhase)
			held := time.Since(injected)
			b.fault(0)
			cleared := time.Now()
			window := cleared.Sub(injected) // a login needs the fault: all of them happened in here
			l.phase.Store(afterPhase)
			if !opsDown {
				t.Error("ops /ready did not report the signer down during the fault")
			}
			if !kesDown {
				t.Error("KES /v1/ready did not report the signer down during the fault")
			}
			if len(r.kmipErrs) == 0 || len(r.kesErrs) == 0 {
				t.Fatalf("the fault reached no request: %d KMIP and %d KES errors", len(r.kmipErrs), len(r.kesErrs))
			}
			if r.kmipOK+r.kesOK > 0 {
				t.Errorf("%d KMIP and %d KES requests started during the fault succeeded", r.kmipOK, r.kesOK)
			}
			for _, e := range r.kmipErrs {
				if !strings.Contains(e, `reason="GeneralFailure"`) || !strings.Contains(e, ckrName) {
					t.Errorf("KMIP error does not say General Failure and %s: %s", ckrName, e)
					break
				}
			}
			for _, e := range r.kesErrs {
				if !strings.HasPrefix(e, "503 key store unavailable: ") || !strings.Contains(e, ckrName) {
					t.Errorf("KES error is not 503 naming %s: %s", ckrName, e)
					break
				}
			}
			// Recovery by itself: requests started after the clear succeed, readiness returns.
			var recovered time.Duration
			for time.Now().Before(cleared.Add(10 * time.Second)) {
				a := l.result(afterPhase)
				if a.kmipOK > 0 && a.kesOK > 0 && b.opsReady() == http.StatusOK {
					if st, _, err := kes.do(http.MethodGet, "/v1/ready", nil); err == nil && st == http.StatusOK {
						recovered = time.Since(cleared)
						break
					}
				}
				time.Sleep(20 * time.Millisecond)
			}
			if recovered == 0 {
				t.Fatalf("no recovery within 10 s of the fault clearing: %+v", l.result(afterPhase))
			}
			time.Sleep(300 * time.Millisecond)
			a := l.result(afterPhase)
			if a.kmipFail+a.kesFail > 0 {
				t.Errorf("%d KMIP and %d KES requests started after the fault cleared failed: %v %v", a.kmipFail, a.kesFail, a.kmipErrs, a.kesErrs)
			}
			// A lost login is restored at most once a second, never in a loop: n logins at least a
			// second apart need n-1 seconds.
			if n := b.callCount("Login") - logins; float64(n) > window.Seconds()+1 {
				t.Errorf("%d logins during %.2f s of %s", n, window.Seconds(), ckrName)
			}
			t.Logf("%s for %.1f s: %d KMIP and %d KES requests failed with it (e.g. %q and %q); both readiness checks said down; requests succeeded and both said ready %.0f ms after the clear",
				ckrName, held.Seconds(), r.kmipFail, r.kesFail, r.kmipErrs[0], r.kesErrs[0], float64(recovered.Microseconds())/1000)
		})
	}
}

// TestWrongPINTriedOnce: a wrong PIN is tried exactly once per start and once per reload, never
// again in the background (real HSMs lock a token after a few wrong PINs). The reload count comes
// from the p11fault build's call counter, the start count from OpenSC's pkcs11-spy between the
// server and SoftHSM (the refused server never listens, so it cannot be asked).
//
// The wrong PIN is for a second token: the process is logged in to the first, and PKCS#11 answers
// a login to a token the application is logged in to with CKR_USER_ALREADY_LOGGED_IN without
// looking at the PIN, so a changed PIN for a running signer's token is not checked until the
// token loses the login.
func TestWrongPINTriedOnce(t *testing.T) {
	b := newBridge(t, t.TempDir(), "pin", "pin2")
	wrongPIN := filepath.Join(b.dir, "wrong.pin")
	if err := os.WriteFile(wrongPIN, []byte("wrong-pin-4711\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tok2 := b.tokens["pin2"]
	withWrongPIN := func(signers ...string) []byte {
		b.writeConfig(hcfg{signers: signers})
		cfg, err := os.ReadFile(b.cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		pinLine := fmt.Sprintf("pin_file = %q", softhsm.PINFile(filepath.Dir(tok2.Conf), tok2.Label))
		bad := bytes.Replace(cfg, []byte(pinLine), []byte(fmt.Sprintf("pin_file = %q", wrongPIN)), 1)
		if bytes.Equal(bad, cfg) {
			t.Fatalf("no %s in the config", pinLine)
		}
		return bad
	}

	// Reloads.
	b.writeConfig(hcfg{signers: []string{"pin"}})
	b.startBin(faultBinary)
	logins := b.callCount("Login")
	if logins != 1 {
		t.Errorf("%d logins at start, want 1", logins)
	}
	kes := b.kesAs(b.adminClient())
	if st, body, err := kes.do(http.MethodPost, "/v1/key/create/pin-kes", nil); err != nil || st != http.StatusOK {
		t.Fatalf("create: %d %s %v", st, body, err)
	}
	bad := withWrongPIN("pin", "pin2")
	for i := 1; i <= 2; i++ {
		if err := os.WriteFile(b.cfgPath, bad, 0o600); err != nil {
			t.Fatal(err)
		}
		ok, log := b.reload()
		if ok || !strings.Contains(log, "wrong PIN") {
			t.Fatalf("reload %d with a wrong PIN was not refused for it:\n%s", i, log)
		}
		time.Sleep(1500 * time.Millisecond) // long enough for a retry loop to show
		if n := b.callCount("Login") - logins; n != int64(i) {
			t.Fatalf("after %d reloads with a wrong PIN: %d login attempts, want %d", i, n, i)
		}
		if _, st, msg, err := kes.generate("pin-kes", nil); err != nil || st != http.StatusOK {
			t.Fatalf("the running signer stopped serving after a refused reload: %d %s %v", st, msg, err)
		}
	}
	if out := b.proc.Output(); strings.Contains(out, "wrong-pin-4711") || strings.Contains(out, tok2.PIN) || strings.Contains(out, b.tokens["pin"].PIN) {
		t.Error("a PIN appears in the server's log")
	}
	b.proc.stop(t)

	// A start, through OpenSC's logging PKCS#11 module, which forwards every call to the module
	// named by $PKCS11SPY and logs it to $PKCS11SPY_OUTPUT.
	spies, _ := filepath.Glob("/usr/lib/*/pkcs11/pkcs11-spy.so")
	if len(spies) == 0 {
		t.Fatal("OpenSC's pkcs11-spy.so is not installed (Debian opensc-pkcs11, pulled in by opensc)")
	}
	spyLog := filepath.Join(b.dir, "spy.log")
	spied := bytes.Replace(withWrongPIN("pin2"), []byte(fmt.Sprintf("module = %q", tok2.Module)), []byte(fmt.Sprintf("module = %q", spies[0])), 1)
	if err := os.WriteFile(b.cfgPath, spied, 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(append([]string{}, b.env...), "PKCS11SPY="+tok2.Module, "PKCS11SPY_OUTPUT="+spyLog)
	p := startProc(t, binary, env, "serve", "--config", b.cfgPath)
	if code := waitExit(t, p); code == 0 || !strings.Contains(p.Output(), "wrong PIN") {
		t.Fatalf("start with a wrong PIN: exit %d\n%s", code, p.Output())
	}
	spy, err := os.ReadFile(spyLog)
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(spy, []byte("C_Login")); n != 1 {
		t.Fatalf("a start with a wrong PIN called C_Login %d times, want 1", n)
	}
	if bytes.Count(spy, []byte("CKR_PIN_INCORRECT")) != 1 {
		t.Fatalf("pkcs11-spy did not see exactly one CKR_PIN_INCORRECT:\n%s", spy)
	}
	t.Logf("wrong PIN: one login attempt per reload (2 reloads refused, none in between), one C_Login at a start (pkcs11-spy)")
}
