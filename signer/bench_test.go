package signer

import (
	"crypto"
	"fmt"
	"runtime"
	"sync"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/p11bridge/p11bridge/keymap"
)

// The benchmarks put the registry next to the leanest use of the same token: one session per
// goroutine, handles looked up once, straight C_SignInit/C_Sign or C_EncryptInit/C_Encrypt calls.
// `make bench` prints the ratios.

var benchKeys struct {
	once sync.Once
	rsa  keymap.Record
	aes  keymap.Record
	err  error
}

func benchSetup(b *testing.B) (keymap.Record, keymap.Record) {
	benchKeys.once.Do(func() {
		benchKeys.rsa, _, benchKeys.err = testReg.CreateKeyPair(ctx, Operator, KeySpec{Algorithm: RSA, Size: 2048}, Meta{Name: "bench-rsa", State: keymap.Active}, Meta{Name: "bench-rsa-pub", State: keymap.Active})
		if benchKeys.err == nil {
			benchKeys.aes, benchKeys.err = testReg.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "bench-aes", State: keymap.Active})
		}
	})
	if benchKeys.err != nil {
		b.Fatal(benchKeys.err)
	}
	return benchKeys.rsa, benchKeys.aes
}

// parallel runs body on n goroutines (n = 1: on the benchmark's own), each with its own setup.
func parallel(b *testing.B, n int, setup func() func() error) {
	if n == 1 {
		op := setup()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := op(); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	b.SetParallelism((n + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.RunParallel(func(pb *testing.PB) {
		op := setup()
		for pb.Next() {
			if err := op(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// rawSession opens a session of its own on the test token and finds the handle of tag/kind.
func rawSession(b *testing.B, tag []byte, k objKind) (*pkcs11.Ctx, pkcs11.SessionHandle, pkcs11.ObjectHandle) {
	tok, _ := testReg.Signer("a")
	sh, err := tok.mod.ctx.OpenSession(tok.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		b.Fatal(err)
	}
	hs, err := tok.findAll(sh, tag, k)
	if err != nil || len(hs) != 1 {
		b.Fatalf("find: %v (%d)", err, len(hs))
	}
	return tok.mod.ctx, sh, hs[0]
}

func BenchmarkSignRSA2048(b *testing.B) {
	rsaKey, _ := benchSetup(b)
	msg := []byte("a message of a typical size for an RPKI object digest..")
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprintf("registry/c%d", n), func(b *testing.B) {
			parallel(b, n, func() func() error {
				return func() error {
					_, err := testReg.Sign(ctx, Operator, rsaKey.ID, SignParams{Scheme: PKCS1v15, Hash: crypto.SHA256}, msg)
					return err
				}
			})
		})
		b.Run(fmt.Sprintf("pkcs11/c%d", n), func(b *testing.B) {
			parallel(b, n, func() func() error {
				c, sh, h := rawSession(b, rsaKey.Tag, kindPrivate)
				m := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_RSA_PKCS, nil)}
				return func() error {
					if err := c.SignInit(sh, m, h); err != nil {
						return err
					}
					_, err := c.Sign(sh, msg)
					return err
				}
			})
		})
	}
}

func BenchmarkSealGCM32(b *testing.B) {
	_, aesKey := benchSetup(b)
	pt := make([]byte, 32)
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprintf("registry/c%d", n), func(b *testing.B) {
			parallel(b, n, func() func() error {
				return func() error {
					_, _, err := testReg.Seal(ctx, Operator, aesKey.ID, nil, pt, nil)
					return err
				}
			})
		})
		b.Run(fmt.Sprintf("pkcs11/c%d", n), func(b *testing.B) {
			parallel(b, n, func() func() error {
				c, sh, h := rawSession(b, aesKey.Tag, kindAES)
				iv := make([]byte, GCMNonceSize)
				return func() error {
					params := pkcs11.NewGCMParams(iv, nil, 128)
					defer params.Free()
					if err := c.EncryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, h); err != nil {
						return err
					}
					_, err := c.Encrypt(sh, pt)
					return err
				}
			})
		})
	}
}

// BenchmarkGenerateAES compares key creation; the registry also writes and fsyncs a keymap row,
// which the raw path does not, so the two are not the same work.
func BenchmarkGenerateAES(b *testing.B) {
	benchSetup(b)
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprintf("registry/c%d", n), func(b *testing.B) {
			parallel(b, n, func() func() error {
				return func() error {
					_, err := testReg.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "bench-gen", State: keymap.Active})
					return err
				}
			})
		})
		b.Run(fmt.Sprintf("pkcs11/c%d", n), func(b *testing.B) {
			parallel(b, n, func() func() error {
				tok, _ := testReg.Signer("a")
				sh, err := tok.mod.ctx.OpenSession(tok.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
				if err != nil {
					b.Fatal(err)
				}
				return func() error {
					tag, _ := NewTag()
					_, err := tok.mod.ctx.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, secretTemplate(tag, "bench-gen", pkcs11.CKK_AES, 32, keyFlags{sensitive: true}))
					return err
				}
			})
		})
	}
}
