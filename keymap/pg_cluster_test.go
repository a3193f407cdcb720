package keymap

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/p11bridge/p11bridge/keymap/pgtest"
)

// The database goes back in time under running instances: a restore from a backup (here the
// rows are copied aside, changed three times through instance a, then put back). Instance c,
// started after the restore, compromises the key; a must apply that change although its version
// and seq numbers are ones a already "applied", drop the row made after the backup, and refuse
// keys while it reads every row again. Variants: the restore sets the change sequence back too,
// or leaves it where it was; and a database whose epoch changed (as after a failover, or another
// database at the same address) with rows that look the same.
//
// Before the fix a kept the key Active and the row made after the backup, with Fresh passing.
func TestPGDatabaseGoesBackInTime(t *testing.T) {
	for _, variant := range []string{"sequence set back", "sequence kept", "epoch changed"} {
		t.Run(strings.ReplaceAll(variant, " ", "-"), func(t *testing.T) {
			dsn := pgtest.Database(t)
			ctx := context.Background()
			a := openPG(t, dsn, "a")
			x := rec(777)
			if err := a.Put(x); err != nil {
				t.Fatal(err)
			}
			db, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close(ctx)
			var saved int64
			if err := db.QueryRow(ctx, `SELECT last_value FROM p11bridge_change_seq`).Scan(&saved); err != nil {
				t.Fatal(err)
			}
			if _, err := db.Exec(ctx, `CREATE TABLE backup AS SELECT * FROM p11bridge_keys`); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 3; i++ {
				if _, err := a.Update(x.ID, func(r *Record) error { r.Attrs["note"] = fmt.Sprint(i); return nil }); err != nil {
					t.Fatal(err)
				}
			}
			later := rec(778) // made after the backup: the restore loses it
			if err := a.Put(later); err != nil {
				t.Fatal(err)
			}
			if err := a.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			// A bad row below the cursor: a catch-up does not read it, a reload does and fails on it,
			// so the refusal while the rows are not read again can be seen.
			restore := `TRUNCATE p11bridge_keys; INSERT INTO p11bridge_keys SELECT * FROM backup;
INSERT INTO p11bridge_keys SELECT 'bad', 1, 0, false, tag, signer, class, algorithm, size, keyid, 'bad', state, owner, 'not a time', updated, attrs FROM backup`
			switch variant {
			case "sequence set back":
				restore += fmt.Sprintf(`; SELECT setval('p11bridge_change_seq', %d)`, saved)
			case "epoch changed":
				// The rows stay; only the database's identity says it is another one.
				restore = `UPDATE p11bridge_cluster SET id = 'another';
INSERT INTO p11bridge_keys SELECT 'bad', 1, 0, false, tag, signer, class, algorithm, size, keyid, 'bad', state, owner, 'not a time', updated, attrs FROM backup`
			}
			if _, err := db.Exec(ctx, restore); err != nil {
				t.Fatal(err)
			}
			// Until every row is read again, a refuses keys and says why.
			deadline := time.Now().Add(5 * time.Second)
			for {
				err := a.Fresh()
				if errors.Is(err, ErrUnavailable) && strings.Contains(err.Error(), "went back in time") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("Fresh after the database went back: %v, want a refusal", err)
				}
				time.Sleep(20 * time.Millisecond)
			}
			if st := a.Status(ctx); !strings.Contains(st.LastError, "went back in time") {
				t.Fatalf("status while reloading: %+v", st)
			}
			if _, err := db.Exec(ctx, `DELETE FROM p11bridge_keys WHERE id = 'bad'`); err != nil {
				t.Fatal(err)
			}
			c := openPG(t, dsn, "c")
			if _, err := c.Update(x.ID, func(r *Record) error { r.State = Compromised; return nil }); err != nil {
				t.Fatal(err)
			}
			deadline = time.Now().Add(5 * time.Second)
			for {
				got, _ := a.Get(x.ID)
				_, kept := a.Get(later.ID)
				if got.State == Compromised && (variant == "epoch changed") == kept && a.Fresh() == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("a holds %s as %s (database: compromised), the row made after the backup: %v; Fresh %v; status %+v",
						x.ID, got.State, kept, a.Fresh(), a.Status(ctx))
				}
				time.Sleep(20 * time.Millisecond)
			}
			st := a.Status(ctx)
			if st.Reloads < 1 || st.LastError != "" {
				t.Fatalf("status after the reload: %+v", st)
			}
			// And a goes on following the database as it is now.
			if err := c.Put(rec(779)); err != nil {
				t.Fatal(err)
			}
			converge(t, a, rec(779).ID, func(_ Record, ok bool) bool { return ok })
			t.Logf("%s: reloads %d", variant, st.Reloads)
		})
	}
}

// A database that stops answering (every PostgreSQL process SIGSTOPped, as a hung server or a
// network that drops packets): once the staleness bound has passed, requests are refused at once
// rather than queueing behind the feed's catch-up, and callers of Sync share a failed catch-up
// rather than each waiting out a timeout. Before the fix 20 concurrent Fresh calls each took
// 4.7 s (the feed held the catch-up lock for its 5 s timeout).
func TestPGRefusesAtOnceWhenDatabaseHangs(t *testing.T) {
	srv := pgtest.Start(t)
	dsn, err := srv.NewDatabase("hung")
	if err != nil {
		t.Fatal(err)
	}
	a, err := OpenPG(context.Background(), PGOptions{DSN: dsn, Instance: "a", Migrate: true, Log: quiet, Staleness: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	time.Sleep(300 * time.Millisecond)
	pids := serverPIDs(t, srv.Dir)
	signalAll(pids, syscall.SIGSTOP)
	defer signalAll(pids, syscall.SIGCONT)
	time.Sleep(400 * time.Millisecond) // past the staleness bound
	measure := func(what string, n int, fn func() error) []time.Duration {
		var wg sync.WaitGroup
		lat := make([]time.Duration, n)
		for i := range lat {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t0 := time.Now()
				if err := fn(); !errors.Is(err, ErrUnavailable) {
					t.Errorf("%s with the database hung: %v, want ErrUnavailable", what, err)
				}
				lat[i] = time.Since(t0)
			}()
		}
		wg.Wait()
		slices.Sort(lat)
		return lat
	}
	fresh := measure("Fresh", 20, a.Fresh)
	t.Logf("Fresh with the database hung, 20 concurrent: min %v, p50 %v, max %v", fresh[0], fresh[10], fresh[19])
	// One of them may try a catch-up, bounded by the staleness bound; the others do not wait.
	if fresh[19] > time.Second || fresh[10] > 100*time.Millisecond {
		t.Errorf("Fresh waited up to %v (p50 %v) to refuse", fresh[19], fresh[10])
	}
	syncs := measure("Sync", 4, func() error { return a.Sync(context.Background()) })
	t.Logf("Sync with the database hung, 4 concurrent: min %v, max %v", syncs[0], syncs[3])
	if syncs[3] > 2*pgOpTimeout-time.Second {
		t.Errorf("4 concurrent Syncs took up to %v: they queued one timeout after another", syncs[3])
	}
	signalAll(pids, syscall.SIGCONT)
	deadline := time.Now().Add(20 * time.Second)
	for a.Fresh() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("not fresh 20 s after the database answers again: %v", a.Fresh())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// serverPIDs lists the postmaster whose data lives under dir and its children.
func serverPIDs(t *testing.T, dir string) []int {
	t.Helper()
	out, err := exec.Command("pgrep", "-f", dir).Output()
	if err != nil {
		t.Fatalf("pgrep: %v", err)
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		n, _ := strconv.Atoi(f)
		pids = append(pids, n)
		kids, _ := exec.Command("pgrep", "-P", f).Output()
		for _, k := range strings.Fields(string(kids)) {
			m, _ := strconv.Atoi(k)
			pids = append(pids, m)
		}
	}
	if len(pids) == 0 {
		t.Fatal("no PostgreSQL process found")
	}
	return pids
}

func signalAll(pids []int, sig syscall.Signal) {
	for _, p := range pids {
		syscall.Kill(p, sig)
	}
}

// kesRow is the first version of the KES key name.
func kesRow(i int, name string) Record {
	r := rec(i)
	r.Class, r.Algorithm, r.Name, r.State = SecretKey, kesAlgorithm, name, Active
	r.Attrs = map[string]string{AttrKESName: name}
	return r
}

// The name lock is a session lock: when its session ends (a PostgreSQL restart, an idle-session
// timeout, pg_terminate_backend) its holder goes on while another instance takes it. Both then
// found the name free and wrote a key of it; PutNewKES decides in the writing transaction, so the
// second is refused.
func TestPGKESNameOnceWhenTheLockIsLost(t *testing.T) {
	dsn := pgtest.Database(t)
	ctx := context.Background()
	a, b := openPG(t, dsn, "a"), openPG(t, dsn, "b")
	unlockA, err := a.Lock(ctx, "kes:minio-key")
	if err != nil {
		t.Fatal(err)
	}
	defer unlockA()
	freeA := len(a.ByName("minio-key")) == 0
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	var n int
	if err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1`,
		uint32(nameLockClass)).Scan(&n); err != nil || n != 1 {
		t.Fatalf("terminated %d lock sessions: %v", n, err)
	}
	lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	unlockB, err := b.Lock(lctx, "kes:minio-key")
	if err != nil {
		t.Fatalf("b takes the lock a lost: %v", err)
	}
	defer unlockB()
	freeB := len(b.ByName("minio-key")) == 0
	if !freeA || !freeB {
		t.Fatal("the name was taken before the test")
	}
	// Both believe they hold the lock and found the name free.
	if err := b.PutNewKES(kesRow(902, "minio-key")); err != nil {
		t.Fatal(err)
	}
	if err := a.PutNewKES(kesRow(901, "minio-key")); !errors.Is(err, ErrExists) {
		t.Fatalf("second KES key of one name: %v, want ErrExists", err)
	}
	if err := a.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := len(a.ByName("minio-key")); got != 1 {
		t.Fatalf("%d rows named minio-key, want 1", got)
	}
}

// PutNewKES on both stores: of concurrent first versions of one KES name through two instances,
// one lands; versions that are no longer live, rows of the name that are no KES key versions,
// and later versions written with Put do not stand in the way or are not refused.
func TestStorePutNewKES(t *testing.T) {
	eachStore(t, func(t *testing.T, k kind) {
		a, b, _ := k.open(t)
		type kesStore interface {
			testStore
			PutNewKES(Record) error
		}
		for round := 0; round < 5; round++ {
			name := fmt.Sprintf("key-%d", round)
			var wins atomic.Int32
			var wg sync.WaitGroup
			for i, s := range []testStore{a, b, a, b} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					err := s.(kesStore).PutNewKES(kesRow(100*round+i, name))
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
				t.Fatalf("%s: %d first versions written, want 1", name, wins.Load())
			}
		}
		pa := a.(kesStore)
		// A rotation's version is written with Put.
		if err := a.Put(kesRow(1000, "key-0")); err != nil {
			t.Fatal(err)
		}
		// A KMIP object of the name, and a destroyed KES key, leave the name free.
		other := rec(1001)
		other.Name = "free"
		if err := a.Put(other); err != nil {
			t.Fatal(err)
		}
		gone := kesRow(1002, "free")
		gone.State = Destroyed
		if err := a.Put(gone); err != nil {
			t.Fatal(err)
		}
		if err := pa.PutNewKES(kesRow(1003, "free")); err != nil {
			t.Fatalf("PutNewKES of a name only a KMIP object and a destroyed KES key have: %v", err)
		}
		if err := pa.PutNewKES(kesRow(1003, "free")); !errors.Is(err, ErrExists) {
			t.Fatalf("PutNewKES of a live id: %v, want ErrExists", err)
		}
		if err := pa.PutNewKES(rec(1004)); !errors.Is(err, ErrInvalid) {
			t.Fatalf("PutNewKES of a row that is no KES key version: %v, want ErrInvalid", err)
		}
	})
}
