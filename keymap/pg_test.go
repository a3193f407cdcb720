package keymap

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/p11bridge/p11bridge/keymap/pgtest"
)

// Commit before answer, and faults: on a server of its own, 8 writers put rows while PostgreSQL
// is crashed (stopped without a checkpoint) and started again, twice. The moment a Put returns,
// another connection sees its row; after each crash every acknowledged row is there. While the
// server is down, writes fail with ErrUnavailable and a reason, and once the staleness bound has
// passed the store refuses to vouch for its rows (Fresh); it reconnects by itself, catches up
// with what another instance wrote meanwhile, and Fresh passes again.
func TestPGDurableAndRecovers(t *testing.T) {
	srv := pgtest.Start(t)
	dsn, err := srv.NewDatabase("durable")
	if err != nil {
		t.Fatal(err)
	}
	a, err := OpenPG(context.Background(), PGOptions{DSN: dsn, Instance: "a", Migrate: true, Log: quiet, Staleness: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	watch, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		acked []string
		fails atomic.Int64
		stop  = make(chan struct{})
		wg    sync.WaitGroup
		next  atomic.Int64
	)
	reasons := map[string]int{}
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				r := rec(int(next.Add(1)))
				if err := a.Put(r); err != nil {
					fails.Add(1)
					if !errors.Is(err, ErrUnavailable) {
						t.Errorf("Put while the database is down: %v, want ErrUnavailable", err)
					}
					mu.Lock()
					reasons[err.Error()]++
					mu.Unlock()
					time.Sleep(20 * time.Millisecond)
					continue
				}
				mu.Lock()
				acked = append(acked, r.ID)
				mu.Unlock()
			}
		}()
	}
	// Commit before answer: each acknowledged row is visible to another session at once.
	checkVisible := func() {
		mu.Lock()
		ids := append([]string(nil), acked...)
		mu.Unlock()
		var n int
		if err := watch.QueryRow(context.Background(), `SELECT count(*) FROM p11bridge_keys WHERE id = ANY($1) AND NOT deleted`, ids).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != len(ids) {
			t.Fatalf("%d of %d acknowledged rows visible to another session", n, len(ids))
		}
	}
	time.Sleep(300 * time.Millisecond)
	checkVisible()
	watch.Close(context.Background())
	for round := 0; round < 2; round++ {
		time.Sleep(200 * time.Millisecond)
		if err := srv.Halt("immediate"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(700 * time.Millisecond) // past the staleness bound
		if err := a.Fresh(); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "retry") {
			t.Fatalf("Fresh with the database down for 0.7 s (bound 0.5 s): %v", err)
		}
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		// The feed reconnects by itself; until then Fresh catches up on demand.
		deadline := time.Now().Add(20 * time.Second)
		for a.Fresh() != nil || a.Status(context.Background()).Reconnects <= int64(round) || !a.Status(context.Background()).FeedUp {
			if time.Now().After(deadline) {
				t.Fatalf("feed not back 20 s after the database came back: %v %+v", a.Fresh(), a.Status(context.Background()))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	if fails.Load() == 0 {
		t.Fatal("no write failed while the database was down")
	}
	for msg := range reasons {
		if strings.Contains(msg, srv.Password) || strings.Contains(msg, "p11bridge:") {
			t.Fatalf("error tells the connection string: %s", msg)
		}
	}
	// Another instance's change made after the outage reaches a.
	b, err := OpenPG(context.Background(), PGOptions{DSN: dsn, Instance: "b", Migrate: true, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Put(rec(0)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, ok := a.Get(rec(0).ID); return ok })
	mu.Lock()
	defer mu.Unlock()
	for _, id := range acked {
		if _, ok := b.Get(id); !ok {
			t.Fatalf("acknowledged row %s lost in a database crash", id)
		}
	}
	st := a.Status(context.Background())
	t.Logf("%d rows acknowledged, %d writes refused while the database was down (%v); reconnects %d",
		len(acked), fails.Load(), keys(reasons), st.Reconnects)
	if st.Reconnects < 2 || !st.FeedUp {
		t.Fatalf("status after two outages: %+v", st)
	}
}

func keys(m map[string]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Migrations: an empty database is refused by readers and migrated by servers, once; a schema
// newer than the binary is refused.
func TestPGSchema(t *testing.T) {
	dsn := pgtest.Database(t)
	ctx := context.Background()
	if _, err := OpenPG(ctx, PGOptions{DSN: dsn, ReadOnly: true, Log: quiet}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("read-only open of an empty database: %v, want ErrNotFound", err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := OpenPG(ctx, PGOptions{DSN: dsn, Migrate: true, Log: quiet, Instance: fmt.Sprint(i)})
			if err != nil {
				t.Error(err)
				return
			}
			s.Close()
		}()
	}
	wg.Wait()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var n int
	if err := c.QueryRow(ctx, `SELECT count(*) FROM p11bridge_schema`).Scan(&n); err != nil || n != SchemaVersion {
		t.Fatalf("%d schema rows (%v), want %d", n, err, SchemaVersion)
	}
	if _, err := c.Exec(ctx, `INSERT INTO p11bridge_schema (version, by) VALUES ($1, 'test')`, SchemaVersion+1); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenPG(ctx, PGOptions{DSN: dsn, Migrate: true, Log: quiet}); !errors.Is(err, ErrVersion) {
		t.Fatalf("open of a newer schema: %v, want ErrVersion", err)
	}
	if _, err := OpenPG(ctx, PGOptions{DSN: "postgres://u:secret-pw@127.0.0.1:1/x?sslmode=disable", Log: quiet}); !errors.Is(err, ErrUnavailable) ||
		strings.Contains(err.Error(), "secret-pw") {
		t.Fatalf("open of an unreachable database: %v", err)
	}
}

// Rows PostgreSQL text cannot hold are refused clearly, not mangled.
func TestPGRefusesNUL(t *testing.T) {
	s := openPG(t, pgtest.Database(t), "a")
	r := rec(1)
	r.Name = "a\x00b"
	if err := s.Put(r); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "NUL") {
		t.Fatalf("Put of a name with NUL: %v", err)
	}
}
