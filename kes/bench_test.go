package kes

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
	kesclient "github.com/minio/kms-go/kes"

	"github.com/p11bridge/p11bridge/signer"
)

// The benchmarks measure generate and decrypt, MinIO's two hot calls, at concurrency 1 and 8, as
// sub-benchmarks named SUBJECT/cN (test/benchratio, run by `make bench`, prints the ratios):
//
//	kes        p11bridge: kms-go client → TLS 1.3 + HTTP/2 → a p11bridge server process wired as
//	           server.Start wires it → Handler → registry → SoftHSM (see benchserver_test.go)
//	kes-inproc the same Handler behind the fixture's listener in the test process itself
//	registry   the same registry calls the handler makes, without HTTP (where the front end's time goes)
//	pkcs11     reference: plain PKCS#11 doing the same work on the same token and key's token
//	           object — one session per goroutine, the handle found once, C_GenerateRandom(32) +
//	           C_EncryptInit/C_Encrypt (AES-GCM) for generate, C_DecryptInit/C_Decrypt for decrypt
//	           (the registry works on a session copy of the key: signer/copies.go)
//	kes-v0.24  reference: a real KES v0.24.0 with its file key store (software keys), same client,
//	           same policy, same certificate authority (see kesref_test.go)
//
// Run: go test ./kes -run '^$' -bench . -benchtime 2s | go run ./test/benchratio

// benchKey creates (once) the key the benchmarks use and returns its current version.
func benchKey(b *testing.B, name string) kesKeyVersion {
	b.Helper()
	if _, ok := fx.reg.KESKey(signer.Operator, name); !ok {
		if err := fx.admin.kes.CreateKey(context.Background(), name); err != nil {
			b.Fatal(err)
		}
	}
	k, _ := fx.reg.KESKey(signer.Operator, name)
	cur := k.Current()
	return kesKeyVersion{name: name, id: cur.ID, tag: cur.Tag, signer: cur.Signer}
}

type kesKeyVersion struct {
	name, id, signer string
	tag              []byte
}

// benchHandler puts a handler set up as the server package sets it up in front of the fixture's
// listener for the duration of a benchmark: audit records JSON-encoded to an append-only file, as
// p11bridge writes its audit log. The tests' in-memory audit sink would keep every record and let
// the heap, and so the GC's work, grow with b.N.
func benchHandler(b *testing.B) {
	audit, err := os.OpenFile(filepath.Join(fx.dir, "bench-audit.log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	h := newHandler(Options{
		Registry: fx.reg, Auth: fx.auth, Log: quiet, Audit: slog.New(slog.NewJSONHandler(audit, nil)),
		ErrorLog: fx.errLog, AuditLog: fx.auditLS, Version: "bench",
	})
	prev := fx.cur.Swap(h)
	b.Cleanup(func() {
		fx.cur.Store(prev)
		audit.Close()
	})
}

// op is one operation of a subject.
type op func(context.Context) error

// A subject's setup runs on the benchmark's goroutine (where it may skip or fail the benchmark) and
// returns worker, which each benchmarking goroutine calls once for its own op (sessions, handles)
// and a function that releases them.
type subject struct {
	name   string
	setup  func(b *testing.B) (worker func() (op, func(), error))
	remote bool // served by another process (p11bridge's bench server, KES)
}

// shared is a subject whose goroutines share one op.
func shared(f op) func(*testing.B) func() (op, func(), error) {
	return func(*testing.B) func() (op, func(), error) {
		return func() (op, func(), error) { return f, func() {}, nil }
	}
}

// runConcurrent runs b.N operations on conc goroutines and reports ops/s and the CPU time one
// operation costs: cpu-ns/op counts client and server together (this process plus the server
// processes; the unit and meaning the ttlv benchmarks use), srv-ns/op the server process alone
// for the subjects that have one. On a shared machine ops/s follow the load of others; CPU per
// operation much less so, and at concurrency 8 on 2 cores it is what bounds throughput.
func runConcurrent(b *testing.B, conc int, s subject) {
	cx := context.Background()
	worker := s.setup(b)
	var self0, srv0 time.Duration
	cpuOK := false
	defer func() {
		self1, srv1, ok := cpuNow()
		if !ok || !cpuOK || b.N == 0 {
			return
		}
		perOp := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(b.N) }
		b.ReportMetric(perOp(self1-self0+srv1-srv0), "cpu-ns/op")
		if s.remote {
			b.ReportMetric(perOp(srv1-srv0), "srv-ns/op")
		}
	}()
	if conc == 1 {
		f, done, err := worker()
		if err != nil {
			b.Fatal(err)
		}
		defer done()
		b.ResetTimer()
		self0, srv0, cpuOK = cpuNow()
		for range b.N {
			if err := f(cx); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		b.SetParallelism((conc + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
		b.ResetTimer()
		self0, srv0, cpuOK = cpuNow()
		b.RunParallel(func(pb *testing.PB) {
			f, done, err := worker()
			if err != nil {
				b.Error(err)
				return
			}
			defer done()
			for pb.Next() {
				if err := f(cx); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// compare runs every subject at concurrency 1 and 8, subjects next to each other per concurrency
// so that a change of machine load hits all of them alike.
func compare(b *testing.B, subjects ...subject) {
	for _, conc := range []int{1, 8} {
		for _, s := range subjects {
			b.Run(fmt.Sprintf("%s/c%d", s.name, conc), func(b *testing.B) { runConcurrent(b, conc, s) })
		}
	}
}

var bind = []byte(`{"bucket":"bucket/object"}`)

// remote is a subject served by another process through the kms-go client connect returns (after
// any setup it needs); op gets that client.
func remote(name string, connect func(*testing.B) *kesclient.Client, f func(context.Context, *kesclient.Client) error) subject {
	return subject{name: name, remote: true, setup: func(b *testing.B) func() (op, func(), error) {
		c := connect(b)
		return shared(func(cx context.Context) error { return f(cx, c) })(b)
	}}
}

func BenchmarkGenerate(b *testing.B) {
	benchHandler(b)
	k := benchKey(b, "bench-generate")
	ad := aad(k.name, k.tag, bind)
	generate := func(cx context.Context, c *kesclient.Client) error {
		_, err := c.GenerateKey(cx, k.name, bind)
		return err
	}
	compare(b,
		remote("kes", benchServerBench, generate),
		subject{name: "kes-inproc", setup: shared(func(cx context.Context) error { return generate(cx, fx.minio.kes) })},
		subject{name: "registry", setup: shared(func(cx context.Context) error {
			_, _, _, err := fx.reg.SealRandom(cx, signer.Operator, k.id, dataKeySize, ad)
			return err
		})},
		subject{name: "pkcs11", setup: func(b *testing.B) func() (op, func(), error) {
			rawModule(b)
			return func() (op, func(), error) {
				s, err := rawSession(k.tag)
				if err != nil {
					return nil, nil, err
				}
				return func(context.Context) error {
					dk, err := s.ctx.GenerateRandom(s.sh, dataKeySize)
					if err != nil {
						return err
					}
					// The IV is drawn in Go, as the registry draws it.
					iv := make([]byte, signer.GCMNonceSize)
					if _, err := rand.Read(iv); err != nil {
						return err
					}
					params := pkcs11.NewGCMParams(iv, ad, signer.GCMTagSize*8)
					defer params.Free()
					if err := s.ctx.EncryptInit(s.sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, s.key); err != nil {
						return err
					}
					_, err = s.ctx.Encrypt(s.sh, dk)
					return err
				}, s.close, nil
			}
		}},
		remote("kes-v0.24", func(b *testing.B) *kesclient.Client { return kesRefBench(b, k.name) }, generate),
	)
}

func BenchmarkDecrypt(b *testing.B) {
	benchHandler(b)
	k := benchKey(b, "bench-decrypt")
	dek, err := fx.minio.kes.GenerateKey(b.Context(), k.name, bind)
	if err != nil {
		b.Fatal(err)
	}
	s, _ := parseCiphertext(dek.Ciphertext)
	ad := aad(k.name, s.tag, bind)
	// p11bridge's server process has the same keys, so it opens the same ciphertext; KES needs one
	// of its own.
	decrypt := func(ciphertext *[]byte) func(context.Context, *kesclient.Client) error {
		return func(cx context.Context, c *kesclient.Client) error {
			_, err := c.Decrypt(cx, k.name, *ciphertext, bind)
			return err
		}
	}
	var refCiphertext []byte
	compare(b,
		remote("kes", benchServerBench, decrypt(&dek.Ciphertext)),
		subject{name: "kes-inproc", setup: shared(func(cx context.Context) error { return decrypt(&dek.Ciphertext)(cx, fx.minio.kes) })},
		subject{name: "registry", setup: shared(func(cx context.Context) error {
			_, err := fx.reg.Open(cx, signer.Operator, k.id, s.iv, s.body, ad)
			return err
		})},
		subject{name: "pkcs11", setup: func(b *testing.B) func() (op, func(), error) {
			rawModule(b)
			return func() (op, func(), error) {
				rs, err := rawSession(k.tag)
				if err != nil {
					return nil, nil, err
				}
				return func(context.Context) error {
					params := pkcs11.NewGCMParams(s.iv, ad, signer.GCMTagSize*8)
					defer params.Free()
					if err := rs.ctx.DecryptInit(rs.sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, rs.key); err != nil {
						return err
					}
					_, err := rs.ctx.Decrypt(rs.sh, s.body)
					return err
				}, rs.close, nil
			}
		}},
		remote("kes-v0.24", func(b *testing.B) *kesclient.Client {
			c := kesRefBench(b, k.name)
			d, err := c.GenerateKey(b.Context(), k.name, bind)
			if err != nil {
				b.Fatal(err)
			}
			refCiphertext = d.Ciphertext
			return c
		}, decrypt(&refCiphertext)),
	)
}

// benchServerBench returns the client of p11bridge's server process.
func benchServerBench(b *testing.B) *kesclient.Client {
	c, err := benchServerClient()
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// kesRefBench returns the reference KES client with key name created, or skips the sub-benchmark
// saying why the reference is missing.
func kesRefBench(b *testing.B, name string) *kesclient.Client {
	c, err := kesRefClient()
	if err != nil {
		// Printed as well: a skipped benchmark's reason only shows with -v.
		fmt.Fprintf(os.Stderr, "kes-v0.24 reference unavailable: %v\n", err)
		b.Skipf("kes-v0.24 reference unavailable: %v", err)
	}
	if err := kesRefKey(b.Context(), c, name); err != nil {
		b.Fatal(err)
	}
	return c
}

// The raw PKCS#11 reference opens the module a second time. The module is already loaded and
// initialized by the registry, so this is the same library instance: C_Initialize answers
// CKR_CRYPTOKI_ALREADY_INITIALIZED and the login state is shared. The context is never finalized
// nor destroyed, since that would pull the token from under the registry.
var raw struct {
	once sync.Once
	ctx  *pkcs11.Ctx
	slot uint
	err  error
}

type rawSess struct {
	ctx *pkcs11.Ctx
	sh  pkcs11.SessionHandle
	key pkcs11.ObjectHandle
}

func (s rawSess) close() { _ = s.ctx.CloseSession(s.sh) }

// rawModule loads (once) the module the fixture's token is in and finds the token's slot.
func rawModule(b *testing.B) {
	raw.once.Do(func() {
		c := pkcs11.New(fx.tok.Module)
		if c == nil {
			raw.err = fmt.Errorf("cannot load %s", fx.tok.Module)
			return
		}
		if err := c.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
			raw.err = err
			return
		}
		slots, err := c.GetSlotList(true)
		if err != nil {
			raw.err = err
			return
		}
		for _, sl := range slots {
			if ti, err := c.GetTokenInfo(sl); err == nil && strings.TrimRight(ti.Label, " ") == fx.tok.Label {
				raw.ctx, raw.slot = c, sl
				return
			}
		}
		raw.err = fmt.Errorf("no token labelled %q", fx.tok.Label)
	})
	if raw.err != nil {
		b.Fatal(raw.err)
	}
}

// rawSession opens a session of its own on the fixture's token and finds the AES key of tag (the
// companion HMAC key shares the tag, hence the key type in the template).
func rawSession(tag []byte) (rawSess, error) {
	c := raw.ctx
	sh, err := c.OpenSession(raw.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return rawSess{}, err
	}
	s := rawSess{ctx: c, sh: sh}
	if err := c.Login(sh, pkcs11.CKU_USER, fx.tok.PIN); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
		s.close()
		return rawSess{}, err
	}
	if err := c.FindObjectsInit(sh, []*pkcs11.Attribute{
		// The token object: the registry's session copy of the key is visible in this process too.
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_ID, tag),
	}); err != nil {
		s.close()
		return rawSess{}, err
	}
	hs, _, err := c.FindObjects(sh, 2)
	_ = c.FindObjectsFinal(sh)
	if err != nil || len(hs) != 1 {
		s.close()
		return rawSess{}, fmt.Errorf("find the AES key of tag %x: %v (%d found)", tag, err, len(hs))
	}
	s.key = hs[0]
	return s, nil
}
