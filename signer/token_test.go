package signer

import (
	"context"
	"crypto"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/p11bridge/p11bridge/keymap"
)

func TestOpenErrorsSayWhy(t *testing.T) {
	notLib := filepath.Join(t.TempDir(), "notalib.so")
	os.WriteFile(notLib, []byte("just text"), 0o600)
	const pin = "pin-that-must-not-leak-4711"
	for _, c := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"wrong PIN", Config{Name: "s", Module: tokSpare.Module, TokenLabel: tokSpare.Label, PIN: pin}, "wrong PIN"},
		{"missing module", Config{Name: "s", Module: "/nonexistent/libvendor.so", TokenLabel: "x", PIN: pin}, "file does not exist"},
		{"not a library", Config{Name: "s", Module: notLib, TokenLabel: "x", PIN: pin}, "not a shared library"},
		{"unknown label", Config{Name: "s", Module: tokA.Module, TokenLabel: "no-such-token", PIN: pin}, "token not found"},
		{"unknown serial", Config{Name: "s", Module: tokA.Module, TokenSerial: "0000", PIN: pin}, "token not found"},
		{"bad uri", Config{Name: "s", Module: tokA.Module, URI: "pkcs11:token=nothing-here", PIN: pin}, "token not found"},
	} {
		t.Run(c.name, func(t *testing.T) {
			km, _ := keymap.Open(filepath.Join(t.TempDir(), "km.csv"), quietLog())
			_, err := Open(Options{Signers: []Config{c.cfg}, Default: "s", Logger: quietLog()}, km)
			if err == nil {
				t.Fatal("opened")
			}
			msg := err.Error()
			if !strings.Contains(msg, c.want) || !strings.Contains(msg, `signer "s"`) {
				t.Fatalf("error %q does not say %q and which signer", msg, c.want)
			}
			if strings.Contains(msg, pin) {
				t.Fatalf("error shows the PIN: %q", msg)
			}
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("not ErrConfig: %v", err)
			}
		})
	}
}

func TestSelectors(t *testing.T) {
	for _, c := range []Config{
		{Name: "s", Module: tokB.Module, TokenSerial: tokB.Serial, PIN: tokB.PIN},
		{Name: "s", Module: tokB.Module, URI: "pkcs11:token=" + tokB.Label + ";serial=" + tokB.Serial, PIN: tokB.PIN},
	} {
		km, _ := keymap.Open(filepath.Join(t.TempDir(), "km.csv"), quietLog())
		r, err := Open(Options{Signers: []Config{c}, Logger: quietLog()}, km)
		if err != nil {
			t.Fatalf("%s: %v", c.selector(), err)
		}
		p, err := r.Probe(ctx, "s")
		if err != nil || p.Label != tokB.Label || p.Serial != tokB.Serial || !p.Features["AES-GCM (KMIP Encrypt/Decrypt, KES generate/decrypt)"] {
			t.Fatalf("%s: probe %+v %v", c.selector(), p, err)
		}
		r.Close()
	}
}

func TestPoolWaitsThenTimesOut(t *testing.T) {
	km, _ := keymap.Open(filepath.Join(t.TempDir(), "km.csv"), quietLog())
	c := cfgOf("s", tokB)
	c.MaxSessions, c.SessionTimeout = 1, 50*time.Millisecond
	r, err := Open(Options{Signers: []Config{c}, Logger: quietLog()}, km)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	tok, _ := r.Signer("s")
	// The index pass borrows a session too; with one session it would time a request out.
	if err := tok.WaitIndex(ctx); err != nil {
		t.Fatal(err)
	}
	sh, err := tok.acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := r.Random(ctx, "s", 8); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "no free session") {
		t.Fatalf("exhausted pool: %v", err)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Fatalf("gave up after %v, before the timeout", d)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := r.Random(cctx, "s", 8); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("cancelled wait: %v", err)
	}
	tok.release(sh, nil)
	if _, err := r.Random(ctx, "s", 8); err != nil {
		t.Fatalf("after release: %v", err)
	}
	// A session the token calls invalid leaves the pool instead of failing the next caller too.
	sh, _ = tok.acquire(ctx)
	tok.release(sh, pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID))
	if _, err := r.Random(ctx, "s", 8); err != nil {
		t.Fatalf("after eviction: %v", err)
	}
}

func TestLoginLostIsRecovered(t *testing.T) {
	km, _ := keymap.Open(filepath.Join(t.TempDir(), "km.csv"), quietLog())
	r, err := Open(Options{Signers: []Config{cfgOf("s", tokB)}, Logger: quietLog()}, km)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	priv, _, err := r.CreateKeyPair(ctx, Operator, KeySpec{Algorithm: EC, Size: 256}, Meta{Name: "relogin", State: keymap.Active}, Meta{Name: "relogin-pub", State: keymap.Active})
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := r.Signer("s")
	// Logging out drops the login of every session of this process on the token, as a device reset would.
	if err := tok.ctx.Logout(tok.anchor); err != nil {
		t.Fatal(err)
	}
	tok.loginMu.Lock()
	tok.lastLogin = time.Time{}
	tok.loginMu.Unlock()
	if _, err := r.Sign(ctx, Operator, priv.ID, SignParams{Scheme: ECDSA, Hash: crypto.SHA256}, []byte("x")); err != nil {
		t.Fatalf("sign after the token lost the login: %v", err)
	}
	// The shared test registry on token A is logged in separately and unaffected.
	if _, err := testReg.Random(ctx, "a", 8); err != nil {
		t.Fatal(err)
	}
}

func TestRolloverAndReconfigure(t *testing.T) {
	km, _ := keymap.Open(filepath.Join(t.TempDir(), "km.csv"), quietLog())
	r, err := Open(Options{Signers: []Config{cfgOf("a", tokA), cfgOf("b", tokB)}, Default: "a", Logger: quietLog()}, km)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	before, _, err := r.CreateKeyPair(ctx, Operator, KeySpec{Algorithm: EC, Size: 256}, Meta{Name: "on-a", State: keymap.Active}, Meta{Name: "on-a-pub", State: keymap.Active})
	if err != nil || before.Signer != "a" {
		t.Fatalf("%+v %v", before, err)
	}
	tokBefore, _ := r.Signer("a")
	if err := r.Reconfigure(Options{Signers: []Config{cfgOf("a", tokA), cfgOf("b", tokB)}, Default: "a", Rollover: "b"}); err != nil {
		t.Fatal(err)
	}
	if tokAfter, _ := r.Signer("a"); tokAfter != tokBefore {
		t.Fatal("an unchanged signer was reopened")
	}
	after, err := r.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "on-b", State: keymap.Active})
	if err != nil || after.Signer != "b" {
		t.Fatalf("new key during rollover: %+v %v", after, err)
	}
	// Standard output only: its warnings on stderr about sensitive attributes would interleave.
	out, err := exec.Command("pkcs11-tool", "--module", tokB.Module, "--token-label", tokB.Label, "--login", "--pin", tokB.PIN,
		"--list-objects", "--type", "secrkey").Output()
	if err != nil || !strings.Contains(strings.ToLower(string(out)), after.ID) {
		t.Fatalf("pkcs11-tool does not show %s on token B: %v\n%s", after.ID, err, out)
	}
	if _, err := r.Sign(ctx, Operator, before.ID, SignParams{Scheme: ECDSA, Hash: crypto.SHA256}, []byte("x")); err != nil {
		t.Fatalf("old key on a: %v", err)
	}
	bad := Options{Signers: []Config{cfgOf("a", tokA), {Name: "c", Module: "/nonexistent.so", TokenLabel: "x"}}, Default: "a"}
	if err := r.Reconfigure(bad); err == nil {
		t.Fatal("a broken configuration was applied")
	}
	if r.Rollover() != "b" {
		t.Fatal("a refused configuration changed the running one")
	}
	if c := r.Census(); c["a"][keymap.Active] != 2 || c["b"][keymap.Active] != 1 {
		t.Fatalf("census %v", c)
	}
}
