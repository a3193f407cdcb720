package signer

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/keymap/pgtest"
	"github.com/p11bridge/p11bridge/signer/softhsm"
)

// The tests share one SoftHSM2 directory: SoftHSM reads SOFTHSM2_CONF once per process.
var (
	testDir  string
	tokA     *softhsm.Token
	tokB     *softhsm.Token
	tokSpare *softhsm.Token // never opened except by the wrong-PIN test
	tokGuard *softhsm.Token // TestSearchBesideCreate's alone: it adds hundreds of objects
	// Tokens of TestIndexWarmsLinearly alone, filled to two sizes.
	tokIxSmall, tokIxLarge *softhsm.Token
	testKM                 *keymap.Map
	testReg                *Registry
	ctx                    = context.Background()
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	testDir, err = os.MkdirTemp("", "p11bridge-signer-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(testDir)
	for _, p := range []struct {
		tok   **softhsm.Token
		label string
	}{{&tokA, "sig-a"}, {&tokB, "sig-b"}, {&tokSpare, "sig-spare"}, {&tokGuard, "sig-guard"}, {&tokIxSmall, "sig-ix-small"}, {&tokIxLarge, "sig-ix-large"}} {
		if *p.tok, err = softhsm.Ensure(testDir, p.label); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	os.Setenv("SOFTHSM2_CONF", tokA.Conf)
	testKM, err = keymap.Open(filepath.Join(testDir, "keymap.csv"), quietLog())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	testReg, err = Open(Options{Signers: []Config{cfgOf("a", tokA), cfgOf("b", tokB)}, Default: "a", Logger: quietLog()}, testKM)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer testReg.Close()
	defer pgtest.StopShared() // started by the store benchmarks, if they ran
	return m.Run()
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func cfgOf(name string, tok *softhsm.Token) Config {
	return Config{Name: name, Module: tok.Module, TokenLabel: tok.Label, PIN: tok.PIN, MaxSessions: 8, KeyCopies: 1024}
}

// attrs reads attributes of the objects with tag and kind straight from the token.
func attrs(t *testing.T, tok *Token, tag []byte, k objKind, types ...uint) [][]*pkcs11.Attribute {
	t.Helper()
	var out [][]*pkcs11.Attribute
	err := tok.do(ctx, func(sh pkcs11.SessionHandle) error {
		hs, err := tok.findAll(sh, tag, k)
		if err != nil {
			return err
		}
		for _, h := range hs {
			tmpl := make([]*pkcs11.Attribute, len(types))
			for i, ty := range types {
				tmpl[i] = pkcs11.NewAttribute(ty, nil)
			}
			a, err := tok.ctx.GetAttributeValue(sh, h, tmpl)
			if err != nil {
				return err
			}
			out = append(out, a)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("read attributes: %v", err)
	}
	return out
}

func boolAttr(a *pkcs11.Attribute) bool { return len(a.Value) == 1 && a.Value[0] == 1 }
