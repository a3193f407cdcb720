package signer

import (
	"context"
	"crypto"
	"fmt"
	"sync"
	"testing"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/keymap/pgtest"
)

// The store benchmarks run what KES generate and decrypt and KMIP Sign ask of the registry, and
// key creation, once with the CSV keymap ("csv", the reference) and once with the PostgreSQL
// store ("pg"), on the same token: the front ends are the same code above either store, so the
// difference between the two is the store's. `make bench` prints pg/csv. Reads answer from
// memory in both; only writes (Create) reach the database.

type storeSubject struct {
	reg     *Registry
	kes     string // KES key name
	ec      string // ECDSA P-256 private key id
	sealed  struct{ iv, body []byte }
	aadText []byte
}

var storeBench struct {
	once sync.Once
	subj map[string]*storeSubject
	err  error
}

func storeSubjects(b *testing.B) map[string]*storeSubject {
	storeBench.once.Do(func() {
		storeBench.subj = map[string]*storeSubject{"csv": {reg: testReg}}
		dsn := pgtest.Database(b)
		pg, err := keymap.OpenPG(context.Background(), keymap.PGOptions{DSN: dsn, Migrate: true, Log: quietLog(), Instance: "bench"})
		if err != nil {
			storeBench.err = err
			return
		}
		reg, err := Open(Options{Signers: []Config{cfgOf("a", tokA)}, Default: "a", Logger: quietLog()}, pg)
		if err != nil {
			storeBench.err = err
			return
		}
		storeBench.subj["pg"] = &storeSubject{reg: reg}
		for name, s := range storeBench.subj {
			s.kes = "bench-store-" + name
			s.aadText = []byte("bench")
			k, err := s.reg.CreateKESKey(ctx, Operator, s.kes)
			if err != nil {
				storeBench.err = err
				return
			}
			if _, s.sealed.iv, s.sealed.body, err = s.reg.SealRandom(ctx, Operator, k.ID, 32, s.aadText); err != nil {
				storeBench.err = err
				return
			}
			priv, _, err := s.reg.CreateKeyPair(ctx, Operator, KeySpec{Algorithm: EC, Size: 256}, Meta{Name: "bench-store-ec", State: keymap.Active}, Meta{Name: "bench-store-ec-pub"})
			if err != nil {
				storeBench.err = err
				return
			}
			s.ec = priv.ID
		}
	})
	if storeBench.err != nil {
		b.Fatal(storeBench.err)
	}
	return storeBench.subj
}

// storeOrder alternates which store runs first, so that a machine getting busier or quieter
// during a run favours neither.
var storeOrder int

func benchStores(b *testing.B, concs []int, op func(s *storeSubject) func() error) {
	subj := storeSubjects(b)
	for _, n := range concs {
		order := []string{"csv", "pg"}
		if storeOrder++; storeOrder%2 == 0 {
			order = []string{"pg", "csv"}
		}
		for _, name := range order {
			s := subj[name]
			b.Run(fmt.Sprintf("%s/c%d", name, n), func(b *testing.B) {
				parallel(b, n, func() func() error { return op(s) })
			})
		}
	}
}

// BenchmarkStoreKESGenerate: the KES key looked up by name (LookupKESKey), a data key drawn and
// sealed with its current version.
func BenchmarkStoreKESGenerate(b *testing.B) {
	benchStores(b, []int{8}, func(s *storeSubject) func() error {
		return func() error {
			k, ok, err := s.reg.LookupKESKey(Operator, s.kes)
			if err != nil || !ok {
				return fmt.Errorf("lookup %s: %v %v", s.kes, ok, err)
			}
			_, _, _, err = s.reg.SealRandom(ctx, Operator, k.Current().ID, 32, s.aadText)
			return err
		}
	})
}

// BenchmarkStoreKESDecrypt: the KES key looked up, a data key opened.
func BenchmarkStoreKESDecrypt(b *testing.B) {
	benchStores(b, []int{8}, func(s *storeSubject) func() error {
		return func() error {
			k, ok, err := s.reg.LookupKESKey(Operator, s.kes)
			if err != nil || !ok {
				return fmt.Errorf("lookup %s: %v %v", s.kes, ok, err)
			}
			_, err = s.reg.Open(ctx, Operator, k.Current().ID, s.sealed.iv, s.sealed.body, s.aadText)
			return err
		}
	})
}

// BenchmarkStoreSign: KMIP Sign's registry call, ECDSA P-256 (the fastest signature on SoftHSM2,
// so the store's share shows most).
func BenchmarkStoreSign(b *testing.B) {
	digest := make([]byte, 32)
	benchStores(b, []int{8}, func(s *storeSubject) func() error {
		return func() error {
			_, err := s.reg.Sign(ctx, Operator, s.ec, SignParams{Scheme: ECDSA, Hash: crypto.SHA256, Prehashed: true}, digest)
			return err
		}
	})
}

// BenchmarkStoreCreate: AES-256 keys made and recorded (an fsynced CSV row, or a committed
// PostgreSQL transaction) at concurrency 1 and 8.
func BenchmarkStoreCreate(b *testing.B) {
	benchStores(b, []int{1, 8}, func(s *storeSubject) func() error {
		return func() error {
			_, err := s.reg.Create(ctx, Operator, KeySpec{Algorithm: AES, Size: 256}, Meta{Name: "bench-store-create", State: keymap.Active})
			return err
		}
	})
}
