package keymap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/p11bridge/p11bridge/keymap/pgtest"
)

// The store suite: what the registry relies on, run against the CSV map and the PostgreSQL store
// alike. For PostgreSQL, "two instances" are two stores on one database; for the CSV map (one
// process per file) they are the same map.

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopShared()
	os.Exit(code)
}

// testStore is the store as the registry sees it (signer.Store).
type testStore interface {
	Get(id string) (Record, bool)
	ByTag(tag []byte) []Record
	ByKeyID(kid []byte) []Record
	ByName(name string) []Record
	Range(fn func(Record) bool)
	Len() int
	Changes() uint64
	Put(r Record) error
	PutNew(r Record) error
	Update(id string, fn func(*Record) error) (Record, error)
	Delete(id string) error
	Lock(ctx context.Context, name string) (func(), error)
	Sync(ctx context.Context) error
	Fresh() error
	Close() error
}

var (
	_ testStore = (*Map)(nil)
	_ testStore = (*PG)(nil)
)

// kind opens two instances of one store and reopens it (after closing what it opened).
type kind struct {
	name string
	open func(t *testing.T) (a, b testStore, reopen func() testStore)
}

func csvKind() kind {
	return kind{"csv", func(t *testing.T) (testStore, testStore, func() testStore) {
		path := filepath.Join(t.TempDir(), "km.csv")
		m := mustOpen(t, path)
		t.Cleanup(func() { m.Close() })
		return m, m, func() testStore {
			m.Close()
			m2 := mustOpen(t, path)
			t.Cleanup(func() { m2.Close() })
			return m2
		}
	}}
}

func openPG(t testing.TB, dsn, instance string) *PG {
	t.Helper()
	s, err := OpenPG(context.Background(), PGOptions{DSN: dsn, Instance: instance, Migrate: true, Log: quiet})
	if err != nil {
		t.Fatalf("OpenPG: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func pgKind() kind {
	return kind{"postgres", func(t *testing.T) (testStore, testStore, func() testStore) {
		dsn := pgtest.Database(t)
		a, b := openPG(t, dsn, "a"), openPG(t, dsn, "b")
		return a, b, func() testStore {
			a.Close()
			b.Close()
			return openPG(t, dsn, "c")
		}
	}}
}

func eachStore(t *testing.T, fn func(t *testing.T, k kind)) {
	for _, k := range []kind{csvKind(), pgKind()} {
		t.Run(k.name, func(t *testing.T) { fn(t, k) })
	}
}

// converge waits until b holds what a holds for id (b follows a's writes through its feed).
func converge(t *testing.T, b testStore, id string, want func(Record, bool) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r, ok := b.Get(id)
		if want(r, ok) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: other instance holds %+v (live %v) after 5 s", id, r, ok)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStoreRoundTrip(t *testing.T) {
	eachStore(t, func(t *testing.T, k kind) {
		a, b, reopen := k.open(t)
		want := rec(1)
		want.KeyID = []byte{1, 2, 3}
		want.Attrs["quote\"comma,"] = "line\nbreak \u00e9 \x01"
		want.Name = "name, with \"quotes\""
		other := rec(2)
		other.Created, other.Attrs, other.State = time.Time{}, nil, ""
		for _, r := range []Record{want, other} {
			if err := a.Put(r); err != nil {
				t.Fatal(err)
			}
		}
		for _, s := range []testStore{a, b} {
			converge(t, s, other.ID, func(_ Record, ok bool) bool { return ok })
			if got, _ := s.Get(want.ID); !reflect.DeepEqual(got, want) {
				t.Fatalf("read back\n got %#v\nwant %#v", got, want)
			}
			if got, _ := s.Get(other.ID); !reflect.DeepEqual(got, other) {
				t.Fatalf("read back\n got %#v\nwant %#v", got, other)
			}
		}
		r := reopen()
		if got, _ := r.Get(want.ID); !reflect.DeepEqual(got, want) {
			t.Fatalf("after reopen\n got %#v\nwant %#v", got, want)
		}
		if r.Len() != 2 {
			t.Fatalf("%d live rows after reopen, want 2", r.Len())
		}
	})
}

func TestStoreIndexesRangeTombstones(t *testing.T) {
	eachStore(t, func(t *testing.T, k kind) {
		a, b, reopen := k.open(t)
		for i := 0; i < 5; i++ {
			r := rec(i)
			r.KeyID = []byte{byte(i % 2)}
			r.Name = fmt.Sprintf("n%d", i%3)
			if err := a.Put(r); err != nil {
				t.Fatal(err)
			}
		}
		if err := a.Delete(rec(3).ID); err != nil {
			t.Fatal(err)
		}
		if err := a.Delete(rec(3).ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("second delete: %v, want ErrNotFound", err)
		}
		if _, err := a.Update(rec(3).ID, func(*Record) error { return nil }); !errors.Is(err, ErrNotFound) {
			t.Fatalf("update of a deleted row: %v, want ErrNotFound", err)
		}
		if _, err := a.Update(rec(1).ID, func(r *Record) error { r.Name = "renamed"; return nil }); err != nil {
			t.Fatal(err)
		}
		check := func(s testStore) {
			t.Helper()
			converge(t, s, rec(1).ID, func(r Record, _ bool) bool { return r.Name == "renamed" })
			converge(t, s, rec(3).ID, func(_ Record, ok bool) bool { return !ok })
			ids := func(rs []Record) (out []string) {
				for _, r := range rs {
					out = append(out, r.ID)
				}
				return out
			}
			if got := ids(s.ByName("n0")); !reflect.DeepEqual(got, []string{rec(0).ID}) {
				t.Fatalf("ByName(n0) = %v (n0 of id 3 is deleted)", got)
			}
			if got := ids(s.ByName("renamed")); !reflect.DeepEqual(got, []string{rec(1).ID}) {
				t.Fatalf("ByName(renamed) = %v", got)
			}
			if got := ids(s.ByKeyID([]byte{1})); !reflect.DeepEqual(got, []string{rec(1).ID}) {
				t.Fatalf("ByKeyID(1) = %v", got)
			}
			if got := ids(s.ByTag(tag(4))); !reflect.DeepEqual(got, []string{rec(4).ID}) {
				t.Fatalf("ByTag = %v", got)
			}
			var ranged []string
			s.Range(func(r Record) bool { ranged = append(ranged, r.ID); return true })
			if want := []string{rec(0).ID, rec(1).ID, rec(2).ID, rec(4).ID}; !reflect.DeepEqual(ranged, want) {
				t.Fatalf("Range = %v, want %v", ranged, want)
			}
		}
		check(a)
		check(b)
		r := reopen()
		check(r)
		// A deleted id may be made again (PutNew takes it), a live one not.
		if err := r.PutNew(rec(3)); err != nil {
			t.Fatalf("PutNew of a deleted id: %v", err)
		}
		if err := r.PutNew(rec(0)); !errors.Is(err, ErrExists) {
			t.Fatalf("PutNew of a live id: %v, want ErrExists", err)
		}
	})
}

// Concurrent changes of one row through both instances: none is lost.
func TestStoreUpdatesNeverLost(t *testing.T) {
	eachStore(t, func(t *testing.T, k kind) {
		a, b, _ := k.open(t)
		if err := a.Put(rec(1)); err != nil {
			t.Fatal(err)
		}
		converge(t, b, rec(1).ID, func(_ Record, ok bool) bool { return ok })
		const writers, each = 6, 10
		var wg sync.WaitGroup
		errs := make(chan error, writers*each)
		for w := 0; w < writers; w++ {
			s := a
			if w%2 == 1 {
				s = b
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < each; i++ {
					_, err := s.Update(rec(1).ID, func(r *Record) error {
						r.Attrs = withKV(r.Attrs, fmt.Sprintf("w%d-%d", w, i), "1")
						n := 0
						fmt.Sscan(r.Attrs["count"], &n)
						r.Attrs["count"] = fmt.Sprint(n + 1)
						return nil
					})
					if err != nil {
						errs <- err
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		for _, s := range []testStore{a, b} {
			converge(t, s, rec(1).ID, func(r Record, _ bool) bool { return r.Attrs["count"] == fmt.Sprint(writers*each) })
			r, _ := s.Get(rec(1).ID)
			for w := 0; w < writers; w++ {
				for i := 0; i < each; i++ {
					if r.Attrs[fmt.Sprintf("w%d-%d", w, i)] != "1" {
						t.Fatalf("change w%d-%d lost", w, i)
					}
				}
			}
		}
	})
}

func withKV(m map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for a, b := range m {
		if a != k {
			out[a] = b
		}
	}
	return out
}

// Two instances making the same new row: exactly one succeeds.
func TestStorePutNewOnce(t *testing.T) {
	eachStore(t, func(t *testing.T, k kind) {
		a, b, _ := k.open(t)
		for i := 0; i < 10; i++ {
			var wins atomic.Int32
			var wg sync.WaitGroup
			for _, s := range []testStore{a, b, a, b} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					err := s.PutNew(rec(i))
					switch {
					case err == nil:
						wins.Add(1)
					case !errors.Is(err, ErrExists):
						t.Error(err)
					}
				}()
			}
			wg.Wait()
			if wins.Load() != 1 {
				t.Fatalf("row %d: %d PutNews succeeded, want 1", i, wins.Load())
			}
		}
	})
}

// The named lock excludes across instances, and its holder sees what earlier holders wrote: the
// check-then-create of a KES key name.
func TestStoreLockCheckThenCreate(t *testing.T) {
	eachStore(t, func(t *testing.T, k kind) {
		a, b, _ := k.open(t)
		var made atomic.Int32
		var inside atomic.Int32
		var wg sync.WaitGroup
		for w := 0; w < 8; w++ {
			s := []testStore{a, b}[w%2]
			wg.Add(1)
			go func() {
				defer wg.Done()
				unlock, err := s.Lock(context.Background(), "kes:minio-key")
				if err != nil {
					t.Error(err)
					return
				}
				defer unlock()
				if inside.Add(1) != 1 {
					t.Error("two holders of one named lock")
				}
				defer inside.Add(-1)
				if len(s.ByName("minio-key")) > 0 {
					return
				}
				r := rec(100 + w)
				r.Name = "minio-key"
				if err := s.Put(r); err != nil {
					t.Error(err)
					return
				}
				made.Add(1)
			}()
		}
		wg.Wait()
		if made.Load() != 1 {
			t.Fatalf("%d rows made under the lock, want 1", made.Load())
		}
	})
}

// Changes moves with every change, including another instance's.
func TestStoreChangesFollowOtherInstances(t *testing.T) {
	eachStore(t, func(t *testing.T, k kind) {
		a, b, _ := k.open(t)
		before := b.Changes()
		if err := a.Put(rec(1)); err != nil {
			t.Fatal(err)
		}
		converge(t, b, rec(1).ID, func(_ Record, ok bool) bool { return ok })
		if b.Changes() == before {
			t.Fatal("Changes did not move")
		}
		if err := b.Fresh(); err != nil {
			t.Fatal(err)
		}
		if err := b.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}

func TestStoreRefusesInvalid(t *testing.T) {
	eachStore(t, func(t *testing.T, k kind) {
		a, _, _ := k.open(t)
		bad := rec(1)
		bad.Class = "nonsense"
		if err := a.Put(bad); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Put of an invalid class: %v, want ErrInvalid", err)
		}
		if err := a.Put(rec(2)); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Update(rec(2).ID, func(r *Record) error { r.ID = "other"; return nil }); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Update changing the id: %v, want ErrInvalid", err)
		}
		refuse := errors.New("no")
		if _, err := a.Update(rec(2).ID, func(r *Record) error { r.Name = "x"; return refuse }); !errors.Is(err, refuse) {
			t.Fatalf("Update whose fn refuses: %v", err)
		}
		if r, _ := a.Get(rec(2).ID); r.Name != rec(2).Name {
			t.Fatal("a refused Update was written")
		}
	})
}
