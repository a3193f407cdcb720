package keymap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ansel1/merry/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PG is the keymap kept in PostgreSQL, shared by every instance of a cluster.
//
// Reads never touch the database: each instance holds every live row in memory (the same
// in-memory map the CSV store uses, so the same indexes) and follows the database through a change
// feed. Every write is one transaction that takes the cluster-wide write lock, gives the row the
// next number of a sequence (seq) and the next row version, and commits; a trigger then NOTIFYs the
// other instances, which read the rows past the last seq they applied. Because writers hold the
// lock until they commit, rows become visible in seq order, so reading "seq > last applied" never
// skips a row that commits later. A write is applied to the writer's own memory once committed,
// before it returns, so the instance that answers a client has its change.
//
// Update is compare-and-set on the row version: the new row is written only if the database still
// holds the version the change was made from; otherwise the store catches up and runs the change
// again on the fresh row. Concurrent changes are never lost, whichever instances make them.
//
// Freshness: the feed loop catches up at least every poll interval (and at once on a
// notification); each completed catch-up proves that every change committed before it started is
// applied. Fresh reports an error once that proof is older than the staleness bound (the feed is
// lost: the database is down or unreachable), and the registry then refuses to use keys until the
// feed is back and has caught up. So a change (a Revoke, say) committed at T is applied by, or
// refused on, every instance from T + staleness on; with a live feed it is applied within a
// notification's round trip. The bound is measured on the monotonic clock.
//
// Going back in time: a failover to an asynchronous standby or a restore from a backup leaves the
// database behind what the instances applied, and the changes made after it would carry seq and
// version numbers that look applied already. Each catch-up therefore first checks the database's
// epoch (its random cluster id, PostgreSQL's system identifier and timeline, the database's oid),
// that its newest change is not older than the cursor and that the row the cursor came from is
// still there at that version or later; a row of the feed whose version and seq disagree with
// what is held is the same sign. On any of them the store reloads every row and Fresh fails until
// it has.
type PG struct {
	opts PGOptions
	log  *slog.Logger
	pool *pgxpool.Pool
	// locks holds the connections of name locks apart, so lock holders can always write.
	locks *pgxpool.Pool
	mem   *Map
	loc   string // host:port/database, for status and messages (no user, no password)

	mu   sync.Mutex          // orders applies: vers and mem change together
	vers map[string]rowPlace // version and seq of every id seen, tombstones included

	catchMu sync.Mutex   // one catch-up at a time; guards the cursor and the fields below it
	applied atomic.Int64 // the change feed's cursor: every seq up to it is applied
	at      rowPlace     // the row the cursor came from (atID)
	atID    string
	epoch   string // the database's identity as the last catch-up saw it ("" before the first)
	// epochSQL is the query of the epoch: epochFull, or epochLite for a role that may not read
	// PostgreSQL's system identifier and timeline.
	epochSQL string
	// failedAt is when the last failed catch-up began, failErr what it returned: callers that asked
	// before it began share its failure instead of each waiting out a timeout.
	failedAt int64
	failErr  error

	// confirmed: every change committed before it is applied. Both it and syncFailed (when a
	// catch-up asked for by Fresh last failed) are nanoseconds on the monotonic clock (mono), so a
	// step of the wall clock cannot make an old proof look new.
	confirmed  atomic.Int64
	syncFailed atomic.Int64

	// rewound is set from when the database is seen to have gone back in time until every row is
	// reloaded: Fresh fails meanwhile.
	rewound atomic.Bool
	reloads atomic.Int64

	closed    atomic.Bool
	life      context.Context // ends with Close
	stop      context.CancelFunc
	done      chan struct{}
	feedUp    atomic.Bool
	reconnect atomic.Int64
	lastErr   atomic.Pointer[string]
	started   time.Time // also the base of mono
}

// rowPlace is a row's version and its place in the change feed (seq). In one history both grow
// with every change of the row, together.
type rowPlace struct{ version, seq int64 }

// forked says whether r cannot follow h in one history of its row: a version that is older but
// placed later, or the same version placed elsewhere.
func forked(h, r rowPlace) bool {
	return (r.version < h.version) != (r.seq < h.seq) || (r.version == h.version) != (r.seq == h.seq)
}

// mono is the time since the store was opened, on the monotonic clock.
func (s *PG) mono() int64 { return int64(time.Since(s.started)) }

// PGOptions configure OpenPG.
type PGOptions struct {
	DSN string // libpq connection string or URI
	// Instance names this process in the heartbeat table; default host/pid.
	Instance string
	// Staleness is how old the proof that memory is current may be before Fresh fails; 0 means
	// DefaultStaleness.
	Staleness time.Duration
	// ReadOnly loads the rows once, for tools (keys list, export): no feed, no heartbeat, writes fail.
	ReadOnly bool
	// Migrate applies pending schema migrations; without it a schema that is not current is refused.
	Migrate bool
	Version string // p11bridge's version, for the heartbeat
	Log     *slog.Logger
	// MaxConns bounds the pool of connections writes use; 0 means 8.
	MaxConns int
	// ObserveWrite and ObserveFeedLag, when set, receive each write's duration and, for each row
	// that arrived through the feed, the time from its writer's clock stamp to its apply here.
	ObserveWrite   func(op string, d time.Duration, err error)
	ObserveFeedLag func(d time.Duration)
}

// DefaultStaleness is the staleness bound when none is configured: long enough that a busy
// database or host does not make instances refuse keys, short enough that a revocation cannot be
// ignored for long by an instance that lost its feed.
const DefaultStaleness = 2 * time.Second

// freshRetry is how long after a failed catch-up Fresh refuses without trying again.
const freshRetry = 500 * time.Millisecond

// Timeouts of database calls, so that an unreachable database fails requests instead of holding them.
const (
	pgConnectTimeout = 3 * time.Second
	pgOpTimeout      = 5 * time.Second
	// pgReloadTimeout bounds the reload of every row after the database went back in time: a
	// large keymap takes longer than one catch-up.
	pgReloadTimeout = 2 * time.Minute
	heartbeatEvery  = 2 * time.Second
	feedChannel     = "p11bridge_keymap"
)

// OpenPG connects to PostgreSQL, applies or checks the schema, loads every row and, unless
// ReadOnly, starts following the change feed and writing this instance's heartbeat.
func OpenPG(ctx context.Context, opts PGOptions) (*PG, error) {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Staleness <= 0 {
		opts.Staleness = DefaultStaleness
	}
	if opts.MaxConns <= 0 {
		opts.MaxConns = 8
	}
	host, _ := os.Hostname()
	if opts.Instance == "" {
		opts.Instance = fmt.Sprintf("%s/%d", host, os.Getpid())
	}
	pcfg, err := pgxpool.ParseConfig(opts.DSN)
	if err != nil {
		// pgx's message quotes the string with its password removed only as far as it can tell.
		return nil, merry.New("keymap: the postgres connection string does not parse (a libpq key=value string or a postgres:// URI is expected)")
	}
	pcfg.MaxConns = int32(opts.MaxConns)
	pcfg.ConnConfig.ConnectTimeout = pgConnectTimeout
	pcfg.AfterConnect = keepCommitsDurable
	s := &PG{opts: opts, log: opts.Log, vers: map[string]rowPlace{}, done: make(chan struct{}), started: time.Now(), epochSQL: epochFull}
	s.life, s.stop = context.WithCancel(context.Background())
	s.syncFailed.Store(-int64(freshRetry)) // none yet: Fresh may try one at once
	s.loc = fmt.Sprintf("%s:%d/%s", pcfg.ConnConfig.Host, pcfg.ConnConfig.Port, pcfg.ConnConfig.Database)
	s.mem = newMemory("postgres "+s.loc, opts.Log)
	cctx, cancel := context.WithTimeout(ctx, pgConnectTimeout+pgOpTimeout)
	defer cancel()
	s.pool, err = pgxpool.NewWithConfig(cctx, pcfg)
	if err != nil {
		return nil, s.openErr("connect", err)
	}
	conn, err := s.pool.Acquire(cctx)
	if err != nil {
		s.pool.Close()
		return nil, s.openErr("connect", err)
	}
	if s.locks, err = pgxpool.NewWithConfig(cctx, pcfg.Copy()); err != nil {
		conn.Release()
		s.pool.Close()
		return nil, s.openErr("connect", err)
	}
	from, err := migrate(cctx, conn.Conn(), opts.Migrate, opts.Instance)
	conn.Release()
	if err != nil {
		s.pool.Close()
		s.locks.Close()
		if errors.Is(err, ErrVersion) || errors.Is(err, ErrNotFound) || !isPGFault(err) {
			return nil, merry.Prependf(err, "keymap postgres %s", s.loc)
		}
		return nil, s.openErr("schema", err)
	}
	if from < SchemaVersion && opts.Migrate {
		s.log.Info("keymap: PostgreSQL schema migrated", "store", s.loc, "from", from, "to", SchemaVersion)
	}
	t0 := time.Now()
	if err := s.Sync(cctx); err != nil {
		s.pool.Close()
		s.locks.Close()
		return nil, err
	}
	s.log.Debug("keymap: loaded from PostgreSQL", "store", s.loc, "live", s.mem.Len(), "took", time.Since(t0))
	if opts.ReadOnly {
		close(s.done)
		return s, nil
	}
	s.feedUp.Store(true)
	go s.follow(s.life, pcfg.ConnConfig.Copy())
	return s, nil
}

// keepCommitsDurable: a commit with synchronous_commit = off is answered before it is on disk,
// and the keymap answers clients only after its rows are durable. Stronger settings (remote_apply
// for synchronous replicas) are left as the database's operator set them.
func keepCommitsDurable(ctx context.Context, c *pgx.Conn) error {
	var sc string
	if err := c.QueryRow(ctx, "SHOW synchronous_commit").Scan(&sc); err != nil {
		return err
	}
	if sc == "off" {
		_, err := c.Exec(ctx, "SET synchronous_commit = on")
		return err
	}
	return nil
}

// openErr is a failure to reach the database at start: the cause is logged and said in short.
func (s *PG) openErr(what string, err error) error {
	return merry.Prependf(ErrUnavailable, "keymap postgres %s: %s: %s", s.loc, what, pgReason(err))
}

// pgReason says why a database call failed in words that carry no credentials: pgx's connect
// errors name the user and database, which operators see in the log but clients need not.
func pgReason(err error) string {
	var pe *pgconn.PgError
	var ne net.Error
	switch {
	case errors.As(err, &pe):
		if pe.Code == "28P01" || pe.Code == "28000" {
			return "authentication refused (check the user and password of the connection string)"
		}
		return fmt.Sprintf("the database refused it (SQLSTATE %s: %s)", pe.Code, pe.Message)
	case errors.Is(err, context.DeadlineExceeded), pgconn.Timeout(err), errors.As(err, &ne) && ne.Timeout():
		return "timed out"
	case strings.Contains(err.Error(), "connection refused"):
		return "connection refused"
	case strings.Contains(err.Error(), "no such host"):
		return "host not found"
	}
	return "connection failed or lost"
}

// isPGFault says err came from talking to the database rather than from what we asked.
func isPGFault(err error) bool {
	var pe *pgconn.PgError
	return !errors.As(err, &pe) || strings.HasPrefix(pe.Code, "08") || strings.HasPrefix(pe.Code, "57") || strings.HasPrefix(pe.Code, "53")
}

// ---- reads: from memory ----

func (s *PG) Get(id string) (Record, bool)       { return s.mem.Get(id) }
func (s *PG) ByTag(tag []byte) []Record          { return s.mem.ByTag(tag) }
func (s *PG) ByKeyID(kid []byte) []Record        { return s.mem.ByKeyID(kid) }
func (s *PG) ByName(name string) []Record        { return s.mem.ByName(name) }
func (s *PG) Range(fn func(Record) bool)         { s.mem.Range(fn) }
func (s *PG) RangeViews(fn func(View) bool)      { s.mem.RangeViews(fn) }
func (s *PG) Select(q Query, fn func(View) bool) { s.mem.Select(q, fn) }
func (s *PG) Census() map[string]map[State]int   { return s.mem.Census() }
func (s *PG) Len() int                           { return s.mem.Len() }
func (s *PG) Changes() uint64                    { return s.mem.Changes() }
func (s *PG) Kind() string                       { return "postgres" }
func (s *PG) Location() string                   { return s.loc }
func (s *PG) Staleness() time.Duration           { return s.opts.Staleness }
func (s *PG) Instance() string                   { return s.opts.Instance }
func (s *PG) versionOf(id string) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.vers[id]
	return v.version, ok
}

// Fresh fails (ErrUnavailable) when this instance cannot show that its rows are current: its last
// completed catch-up started longer ago than the staleness bound, or the database went back in
// time and the rows are being reloaded.
func (s *PG) Fresh() error {
	if s.opts.ReadOnly {
		return nil
	}
	rewound := s.rewound.Load()
	if !rewound && s.age() <= s.opts.Staleness {
		return nil
	}
	// The feed may only be late (a loaded host starves its loop): one catch-up settles that, and
	// proves the rows current just as well. It is tried only when no catch-up is under way and
	// none failed a moment ago, so a request never queues behind a database that does not answer:
	// it is refused at once. A reload is left to the feed: it may take longer than a request may wait.
	now := s.mono()
	if !rewound && now-s.syncFailed.Load() > int64(freshRetry) && s.catchMu.TryLock() {
		ctx, cancel := context.WithTimeout(context.Background(), min(time.Second, s.opts.Staleness))
		err := s.syncLocked(ctx, nil, now)
		s.catchMu.Unlock()
		cancel()
		if err == nil && !s.rewound.Load() {
			return nil
		}
		if err != nil {
			s.syncFailed.Store(s.mono())
		}
	}
	if s.rewound.Load() {
		return merry.Prependf(ErrUnavailable, "the key store (PostgreSQL) went back in time (a failover or a restore) and every row is being read again, so the current state of keys cannot be confirmed; retry in a few seconds")
	}
	age := s.age()
	if age <= s.opts.Staleness {
		return nil // a catch-up under way has just finished
	}
	return merry.Prependf(ErrUnavailable, "the key store (PostgreSQL) has not been reached for %.1fs, so the current state of keys cannot be confirmed; retry in a few seconds",
		age.Seconds())
}

// age is how old the proof that memory is current is.
func (s *PG) age() time.Duration { return time.Duration(s.mono() - s.confirmed.Load()) }

// ---- the change feed ----

// pgRow is one row as the database holds it.
type pgRow struct {
	rec     Record
	version int64
	seq     int64
	deleted bool
}

const rowColumns = `id, version, seq, deleted, tag, signer, class, algorithm, size, keyid, name, state, owner, created, updated, attrs`

func scanRow(rows pgx.Rows) (pgRow, error) {
	var r pgRow
	var class, state, created, updated, attrs string
	var size int32
	if err := rows.Scan(&r.rec.ID, &r.version, &r.seq, &r.deleted, &r.rec.Tag, &r.rec.Signer, &class, &r.rec.Algorithm,
		&size, &r.rec.KeyID, &r.rec.Name, &state, &r.rec.Owner, &created, &updated, &attrs); err != nil {
		return r, err
	}
	r.rec.Class, r.rec.State, r.rec.Size = Class(class), State(state), int(size)
	var err error
	if r.rec.Created, err = parseText(created); err != nil {
		return r, fmt.Errorf("row %q: created: %w", r.rec.ID, err)
	}
	if r.rec.Updated, err = parseText(updated); err != nil {
		return r, fmt.Errorf("row %q: updated: %w", r.rec.ID, err)
	}
	if attrs != "{}" && attrs != "" {
		if err := json.Unmarshal([]byte(attrs), &r.rec.Attrs); err != nil {
			return r, fmt.Errorf("row %q: attrs: %w", r.rec.ID, err)
		}
	}
	if len(r.rec.KeyID) == 0 {
		r.rec.KeyID = nil
	}
	return r, nil
}

func parseText(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	return time.Parse(time.RFC3339Nano, s)
}

func formatText(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(timeLayout)
}

// Sync catches up with every change committed before it was called. Callers that arrive while a
// catch-up runs share the next one.
func (s *PG) Sync(ctx context.Context) error {
	return s.syncOn(ctx, nil)
}

// syncOn is Sync on conn, or on a connection of the pool when conn is nil.
func (s *PG) syncOn(ctx context.Context, conn *pgx.Conn) error {
	start := s.mono()
	s.catchMu.Lock()
	defer s.catchMu.Unlock()
	return s.syncLocked(ctx, conn, start)
}

// syncLocked catches up unless a catch-up that began after start (when the caller asked) has
// completed, or has failed: its failure is the caller's too. Needs catchMu.
func (s *PG) syncLocked(ctx context.Context, conn *pgx.Conn, start int64) error {
	if !s.rewound.Load() && s.confirmed.Load() >= start {
		return nil
	}
	if s.failErr != nil && s.failedAt >= start {
		return s.failErr
	}
	ctx, cancel := context.WithTimeout(ctx, pgOpTimeout)
	defer cancel()
	began := s.mono()
	if conn == nil {
		c, err := s.pool.Acquire(ctx)
		if err != nil {
			return s.failed(began, s.fault("catch up", err))
		}
		defer c.Release()
		conn = c.Conn()
	}
	if err := s.catchUpLocked(ctx, conn, false); err != nil {
		return s.failed(began, s.fault("catch up", err))
	}
	s.confirm(began)
	return nil
}

// failed records a catch-up that began at began and failed with err, and returns err. Needs catchMu.
func (s *PG) failed(began int64, err error) error {
	s.failedAt, s.failErr = began, err
	return err
}

func (s *PG) confirm(at int64) {
	for {
		old := s.confirmed.Load()
		if at <= old || s.confirmed.CompareAndSwap(old, at) {
			return
		}
	}
}

// The epoch: the cluster's random id (made with the schema), the database's oid (a dropped and
// restored database gets a new one), PostgreSQL's system identifier (another cluster, pg_upgrade)
// and its timeline (a promoted standby, a point-in-time recovery). The timeline comes from the
// name of the current WAL file, which follows a promotion at once; pg_control_checkpoint's waits
// for the next checkpoint. epochLite is for a role some managed services keep from those functions.
const (
	epochFull = `(SELECT coalesce((SELECT id FROM p11bridge_cluster LIMIT 1), '') || '/' || d.oid || '/' || s.system_identifier || '/' ||
	CASE WHEN pg_is_in_recovery() THEN 'r' || (SELECT timeline_id FROM pg_control_checkpoint())
	ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END
FROM pg_database d, pg_control_system() s WHERE d.datname = current_database())`
	epochLite = `(SELECT coalesce((SELECT id FROM p11bridge_cluster LIMIT 1), '') || '/' || oid FROM pg_database WHERE datname = current_database())`
)

// catchUpLocked applies every row past the cursor, after checking that the database has not gone
// back in time (see PG); when it has, it reloads every row. Needs catchMu. fromFeed marks rows
// that other instances wrote, whose lag is observed.
func (s *PG) catchUpLocked(ctx context.Context, c *pgx.Conn, fromFeed bool) error {
	if s.rewound.Load() {
		return s.reloadLocked(c, "")
	}
	// The check and the first page in one round trip.
	b := &pgx.Batch{}
	b.Queue(`SELECT `+s.epochSQL+`, (SELECT coalesce(max(seq), 0) FROM p11bridge_keys),
	(SELECT version FROM p11bridge_keys WHERE id = $1), (SELECT seq FROM p11bridge_keys WHERE id = $1)`, s.atID)
	b.Queue(pageSQL, s.applied.Load())
	br := c.SendBatch(ctx, b)
	var epoch string
	var maxSeq int64
	var atVer, atSeq *int64
	if err := br.QueryRow().Scan(&epoch, &maxSeq, &atVer, &atSeq); err != nil {
		br.Close()
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "42501" && s.epochSQL == epochFull {
			// Not allowed to read PostgreSQL's identity: the cluster id and the database's oid
			// remain. The epoch's form changes, so the next one is taken as it comes.
			s.log.Warn("keymap: this role may not read PostgreSQL's system identifier and timeline; a failover is then noticed only by the rows it lost", "store", s.loc, "err", err)
			s.epochSQL, s.epoch = epochLite, ""
			return s.catchUpLocked(ctx, c, fromFeed)
		}
		return err
	}
	if why := s.wentBack(epoch, maxSeq, atVer, atSeq); why != "" {
		br.Close()
		return s.reloadLocked(c, why)
	}
	s.epoch = epoch
	rows, err := br.Query()
	n, err := s.applyPage(rows, err, fromFeed)
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	for err == nil && n == pageRows && !s.rewound.Load() {
		rows, err = c.Query(ctx, pageSQL, s.applied.Load())
		n, err = s.applyPage(rows, err, fromFeed)
	}
	if err != nil {
		return err
	}
	if s.rewound.Load() {
		return s.reloadLocked(c, "")
	}
	return nil
}

// A catch-up reads the rows past the cursor pageRows at a time.
const (
	pageRows = 10000
	pageSQL  = `SELECT ` + rowColumns + ` FROM p11bridge_keys WHERE seq > $1 ORDER BY seq LIMIT 10000`
)

// applyPage applies the rows of one page of the feed and moves the cursor past them. Needs catchMu.
func (s *PG) applyPage(rows pgx.Rows, err error, fromFeed bool) (int, error) {
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	n := 0
	var last pgRow
	for rows.Next() {
		r, err := scanRow(rows)
		if err != nil {
			return n, err
		}
		if s.apply(r) && fromFeed && s.opts.ObserveFeedLag != nil && !r.rec.Updated.IsZero() {
			s.opts.ObserveFeedLag(time.Since(r.rec.Updated))
		}
		last = r
		n++
	}
	if err := rows.Err(); err != nil {
		return n, err
	}
	if n > 0 {
		s.applied.Store(last.seq)
		s.atID, s.at = last.rec.ID, rowPlace{last.version, last.seq}
	}
	return n, nil
}

// wentBack says why the database, as the check of a catch-up found it, cannot be the one this
// memory came from at or past the cursor; "" when it can. Needs catchMu.
func (s *PG) wentBack(epoch string, maxSeq int64, atVer, atSeq *int64) string {
	switch {
	case s.epoch == "":
		return "" // the first catch-up, or the first since the epoch's form changed
	case epoch != s.epoch:
		return "its epoch changed (a failover to a standby, a restore, or another database at the same address)"
	case maxSeq < s.applied.Load():
		return "its newest change is older than the last one applied here"
	case s.atID == "":
		return ""
	case atVer == nil || atSeq == nil:
		return "the last change applied here is gone"
	case forked(s.at, rowPlace{*atVer, *atSeq}) || *atVer < s.at.version:
		return "the last change applied here is gone"
	}
	return ""
}

// markRewound records that the database went back in time: Fresh fails until reloadLocked has
// read every row again.
func (s *PG) markRewound(why string) {
	if !s.rewound.Swap(true) {
		s.log.Error("keymap: PostgreSQL went back in time; refusing keys until every row is read again", "store", s.loc, "why", why)
		msg := "the database went back in time: " + why
		s.lastErr.Store(&msg)
	}
}

// reloadLocked reads every row in one snapshot and makes memory hold exactly that: rows the
// database lost are dropped, rows it holds at older versions are taken back. Needs catchMu.
func (s *PG) reloadLocked(c *pgx.Conn, why string) error {
	if why != "" {
		s.markRewound(why)
	}
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(s.life, pgReloadTimeout)
	defer cancel()
	tx, err := c.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	var epoch string
	if err := tx.QueryRow(ctx, `SELECT `+s.epochSQL).Scan(&epoch); err != nil {
		return err
	}
	rows, err := tx.Query(ctx, `SELECT `+rowColumns+` FROM p11bridge_keys ORDER BY seq`)
	if err != nil {
		return err
	}
	var all []pgRow
	for rows.Next() {
		r, err := scanRow(rows)
		if err != nil {
			rows.Close()
			return err
		}
		all = append(all, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	seen := make(map[string]bool, len(all))
	for _, r := range all {
		seen[r.rec.ID] = true
		s.setLocked(r)
	}
	dropped := 0
	for id := range s.vers {
		if !seen[id] {
			s.mem.set(id, nil)
			delete(s.vers, id)
			dropped++
		}
	}
	s.mu.Unlock()
	s.atID, s.at = "", rowPlace{}
	s.applied.Store(0)
	if len(all) > 0 {
		last := all[len(all)-1]
		s.atID, s.at = last.rec.ID, rowPlace{last.version, last.seq}
		s.applied.Store(last.seq)
	}
	s.epoch = epoch
	s.reloads.Add(1)
	s.rewound.Store(false)
	s.lastErr.Store(nil)
	s.log.Warn("keymap: every row read again from PostgreSQL after it went back in time", "store", s.loc,
		"rows", len(all), "dropped", dropped, "took", time.Since(t0))
	return nil
}

// apply makes a committed row visible unless a later version of it already is; it reports
// whether it changed anything. A row that cannot follow the one held (forked) is applied, and
// marks the database as gone back in time.
func (s *PG) apply(r pgRow) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h, ok := s.vers[r.rec.ID]; ok {
		if forked(h, rowPlace{r.version, r.seq}) {
			s.markRewound(fmt.Sprintf("row %q came at version %d, change %d; this instance holds version %d, change %d", r.rec.ID, r.version, r.seq, h.version, h.seq))
		} else if h.version >= r.version {
			return false
		}
	}
	s.setLocked(r)
	return true
}

// setLocked makes r what memory holds for its id. Needs mu.
func (s *PG) setLocked(r pgRow) {
	if r.deleted {
		s.mem.set(r.rec.ID, nil)
	} else if err := s.mem.set(r.rec.ID, &r.rec); err != nil {
		// A row another writer (or a hand edit) left invalid is kept out of memory, loudly.
		s.log.Error("keymap: a PostgreSQL row is invalid and is ignored", "id", r.rec.ID, "err", err)
		s.mem.set(r.rec.ID, nil)
	}
	s.vers[r.rec.ID] = rowPlace{r.version, r.seq}
}

// follow is the change feed: LISTEN on a connection of its own, catch up on every notification
// and at least every poll interval, write the heartbeat; reconnect with backoff when the
// connection fails.
func (s *PG) follow(ctx context.Context, cfg *pgx.ConnConfig) {
	defer close(s.done)
	poll := min(s.opts.Staleness/4, 250*time.Millisecond)
	backoff := 100 * time.Millisecond
	first := true
	for ctx.Err() == nil {
		err := s.listen(ctx, cfg, poll, &first, &backoff)
		if ctx.Err() != nil {
			return
		}
		s.feedUp.Store(false)
		msg := pgReason(err)
		if s.rewound.Load() {
			msg = "the database went back in time, and reading every row again failed: " + msg
		}
		s.lastErr.Store(&msg)
		s.log.Warn("keymap: PostgreSQL change feed lost; reconnecting", "store", s.loc, "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (s *PG) listen(ctx context.Context, cfg *pgx.ConnConfig, poll time.Duration, first *bool, backoff *time.Duration) error {
	cctx, cancel := context.WithTimeout(ctx, pgConnectTimeout)
	conn, err := pgx.ConnectConfig(cctx, cfg)
	cancel()
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+feedChannel); err != nil {
		return err
	}
	if !*first {
		s.reconnect.Add(1)
		s.log.Info("keymap: PostgreSQL change feed back", "store", s.loc)
	}
	*first = false
	var lastBeat time.Time
	// No longer than the staleness bound: a catch-up that hangs on the database holds catchMu,
	// and the instance refuses keys by then anyway.
	opTimeout := min(pgOpTimeout, s.opts.Staleness)
	for {
		start := s.mono()
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		s.catchMu.Lock()
		err := s.catchUpLocked(octx, conn, true)
		if err != nil {
			s.failed(start, unavailable(err))
		}
		s.catchMu.Unlock()
		if err == nil {
			s.confirm(start)
			if !s.feedUp.Swap(true) {
				s.lastErr.Store(nil)
			}
			*backoff = 100 * time.Millisecond
			if time.Since(lastBeat) >= heartbeatEvery {
				err = s.heartbeat(octx, conn)
				lastBeat = time.Now()
			}
		}
		cancel()
		if err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, poll)
		_, err = conn.WaitForNotification(wctx)
		cancel()
		if err != nil && !pgconn.Timeout(err) && !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

func (s *PG) heartbeat(ctx context.Context, c *pgx.Conn) error {
	host, _ := os.Hostname()
	_, err := c.Exec(ctx, `INSERT INTO p11bridge_instances (instance, host, pid, version, started, seen, applied)
VALUES ($1, $2, $3, $4, $5, now(), $6)
ON CONFLICT (instance) DO UPDATE SET host = $2, pid = $3, version = $4, started = $5, seen = now(), applied = $6`,
		s.opts.Instance, host, os.Getpid(), s.opts.Version, s.started, s.applied.Load())
	if err != nil {
		return err
	}
	// Instances gone for a day are forgotten, so restarts under new names do not pile up.
	_, err = c.Exec(ctx, `DELETE FROM p11bridge_instances WHERE seen < now() - interval '1 day'`)
	return err
}

// ---- writes ----

// write runs one change as a transaction holding the write lock (see PG), applies the committed
// row to memory and returns it; found is false when stmt matched no row.
func (s *PG) write(op string, r Record, stmt string, args ...any) (row pgRow, found bool, err error) {
	if s.opts.ReadOnly || s.closed.Load() {
		return row, false, merry.Prependf(ErrClosed, "keymap %s: %s %q", s.mem.path, op, r.ID)
	}
	t0 := time.Now()
	defer func() {
		if s.opts.ObserveWrite != nil {
			s.opts.ObserveWrite(op, time.Since(t0), err)
		}
	}()
	for attempt := 0; ; attempt++ {
		row, found, err = s.tryWrite(stmt, args)
		if err == nil || attempt >= 2 || !pgconn.SafeToRetry(err) {
			break
		}
	}
	if err != nil {
		return row, false, s.fault(op+" "+r.ID, err)
	}
	if found {
		row.rec = r
		row.deleted = op == "delete"
		s.apply(row)
	}
	return row, found, nil
}

func (s *PG) tryWrite(stmt string, args []any) (row pgRow, found bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), pgOpTimeout)
	defer cancel()
	// One round trip: the statements of a batch run in one implicit transaction that commits at
	// its end; the lock is held until then.
	b := &pgx.Batch{}
	b.Queue(`SELECT pg_advisory_xact_lock($1)`, writeLockKey)
	b.Queue(stmt, args...)
	br := s.pool.SendBatch(ctx, b)
	if _, err := br.Exec(); err != nil {
		br.Close()
		return row, false, err
	}
	err = br.QueryRow().Scan(&row.version, &row.seq)
	if errors.Is(err, pgx.ErrNoRows) {
		err = nil
	} else if err == nil {
		found = true
	}
	// The commit's answer comes with Close: only then is the change durable and acknowledged.
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return row, found && err == nil, err
}

// fault logs a database failure and returns what callers may be told: the step and why in
// short, wrapping ErrUnavailable (retry later). Nothing acknowledged is lost by it: a change whose
// commit was not confirmed is reported as failed.
func (s *PG) fault(what string, err error) error {
	if errors.Is(err, ErrUnavailable) || errors.Is(err, ErrClosed) {
		return err
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && !isPGFault(err) {
		s.log.Error("keymap: PostgreSQL refused a change", "store", s.loc, "what", what, "err", err)
		return merry.Prependf(ErrInvalid, "keymap: PostgreSQL refused %s (SQLSTATE %s)", what, pe.Code)
	}
	s.log.Warn("keymap: PostgreSQL call failed", "store", s.loc, "what", what, "err", err)
	return unavailable(err)
}

// unavailable is a failure to talk to the database as callers may be told it.
func unavailable(err error) error {
	return merry.Prependf(ErrUnavailable, "keymap: the key store (PostgreSQL) is unavailable: %s; retry shortly", pgReason(err))
}

// prepareRow validates r as the CSV store does, and what PostgreSQL text cannot hold.
func prepareRow(r Record) (Record, error) {
	st, err := prepare(r, time.Now())
	if err != nil {
		return Record{}, err
	}
	out := st.record()
	for _, f := range []struct{ what, v string }{{"id", out.ID}, {"signer", out.Signer}, {"algorithm", out.Algorithm},
		{"name", out.Name}, {"owner", out.Owner}} {
		if strings.IndexByte(f.v, 0) >= 0 {
			return Record{}, merry.Wrap(ErrInvalid, merry.AppendMessagef("%s holds a NUL byte, which PostgreSQL text cannot store", f.what))
		}
	}
	return out, nil
}

func rowArgs(r Record) []any {
	attrs := []byte("{}")
	if len(r.Attrs) > 0 {
		attrs, _ = json.Marshal(r.Attrs) // strings only: cannot fail
	}
	var kid []byte
	if len(r.KeyID) > 0 {
		kid = r.KeyID
	}
	return []any{r.ID, r.Tag, r.Signer, string(r.Class), r.Algorithm, int32(r.Size), kid, r.Name, string(r.State), r.Owner,
		formatText(r.Created), formatText(r.Updated), string(attrs)}
}

const insertRow = `INSERT INTO p11bridge_keys AS k (id, version, seq, deleted, tag, signer, class, algorithm, size, keyid, name, state, owner, created, updated, attrs)
VALUES ($1, 1, nextval('p11bridge_change_seq'), false, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (id) DO UPDATE SET version = k.version + 1, seq = EXCLUDED.seq, deleted = false, tag = EXCLUDED.tag,
	signer = EXCLUDED.signer, class = EXCLUDED.class, algorithm = EXCLUDED.algorithm, size = EXCLUDED.size,
	keyid = EXCLUDED.keyid, name = EXCLUDED.name, state = EXCLUDED.state, owner = EXCLUDED.owner,
	created = EXCLUDED.created, updated = EXCLUDED.updated, attrs = EXCLUDED.attrs`

// Put stores r, whatever the database holds for its id. It returns once the change is committed.
func (s *PG) Put(r Record) error {
	rec, err := prepareRow(r)
	if err != nil {
		return merry.Prependf(err, "keymap %s: put %q", s.mem.path, r.ID)
	}
	_, _, err = s.write("put", rec, insertRow+` RETURNING k.version, k.seq`, rowArgs(rec)...)
	return err
}

// PutNew stores r only when no live row has its id (ErrExists otherwise), across the cluster.
func (s *PG) PutNew(r Record) error {
	rec, err := prepareRow(r)
	if err != nil {
		return merry.Prependf(err, "keymap %s: put %q", s.mem.path, r.ID)
	}
	_, found, err := s.write("put", rec, insertRow+` WHERE k.deleted RETURNING k.version, k.seq`, rowArgs(rec)...)
	if err != nil {
		return err
	}
	if !found {
		return merry.Prependf(ErrExists, "keymap %s: put %q", s.mem.path, r.ID)
	}
	return nil
}

// putNewKES inserts a row unless its id is live or a live version of a KES key of its name exists.
// The statement runs under the write lock like every write, so no other write can come between the
// check and the insert, whatever became of the name lock (Lock) meanwhile.
const putNewKES = `INSERT INTO p11bridge_keys AS k (id, version, seq, deleted, tag, signer, class, algorithm, size, keyid, name, state, owner, created, updated, attrs)
SELECT $1::text, 1, nextval('p11bridge_change_seq'), false, $2::bytea, $3::text, $4::text, $5::text, $6::integer, $7::bytea, $8::text, $9::text, $10::text,
	$11::text, $12::text, $13::text
WHERE NOT EXISTS (SELECT 1 FROM p11bridge_keys o WHERE o.name = $8::text AND NOT o.deleted AND o.id <> $1::text
	AND o.class = '` + string(SecretKey) + `' AND o.algorithm = '` + kesAlgorithm + `'
	AND o.state NOT IN ('` + string(Destroyed) + `', '` + string(DestroyedCompromised) + `')
	AND (o.attrs::jsonb ->> '` + AttrKESName + `') = $8::text)
ON CONFLICT (id) DO UPDATE SET version = k.version + 1, seq = EXCLUDED.seq, deleted = false, tag = EXCLUDED.tag,
	signer = EXCLUDED.signer, class = EXCLUDED.class, algorithm = EXCLUDED.algorithm, size = EXCLUDED.size,
	keyid = EXCLUDED.keyid, name = EXCLUDED.name, state = EXCLUDED.state, owner = EXCLUDED.owner,
	created = EXCLUDED.created, updated = EXCLUDED.updated, attrs = EXCLUDED.attrs
WHERE k.deleted
RETURNING k.version, k.seq`

// PutNewKES stores r, the first version of a new KES key, only when no live row has its id and no
// live version of a KES key has its name, across the cluster; ErrExists otherwise.
func (s *PG) PutNewKES(r Record) error {
	rec, err := prepareRow(r)
	if err != nil {
		return merry.Prependf(err, "keymap %s: put %q", s.mem.path, r.ID)
	}
	if err := checkKESRow(rec); err != nil {
		return merry.Prependf(err, "keymap %s: put %q", s.mem.path, r.ID)
	}
	_, found, err := s.write("put", rec, putNewKES, rowArgs(rec)...)
	if err != nil {
		return err
	}
	if !found {
		return merry.Prependf(ErrExists, "keymap %s: put %q: a KES key named %q exists", s.mem.path, r.ID, rec.Name)
	}
	return nil
}

// Delete writes the tombstone of id; ErrNotFound when no live row has it.
func (s *PG) Delete(id string) error {
	now := formatText(time.Now())
	_, found, err := s.write("delete", Record{ID: id}, `UPDATE p11bridge_keys SET version = version + 1, seq = nextval('p11bridge_change_seq'),
	deleted = true, updated = $2 WHERE id = $1 AND NOT deleted RETURNING version, seq`, id, now)
	if err != nil {
		return err
	}
	if !found {
		return merry.Prependf(ErrNotFound, "keymap %s: delete %q", s.mem.path, id)
	}
	return nil
}

// optimisticRounds is how many times Update tries compare-and-set against the row it holds in
// memory; a row that keeps changing under it is then changed under the write lock, which always
// succeeds (no starvation under contention).
const optimisticRounds = 3

const updateRow = `UPDATE p11bridge_keys SET version = version + 1, seq = nextval('p11bridge_change_seq'),
	tag = $2, signer = $3, class = $4, algorithm = $5, size = $6, keyid = $7, name = $8, state = $9, owner = $10,
	created = $11, updated = $12, attrs = $13 WHERE id = $1 AND version = $14 AND NOT deleted RETURNING version, seq`

// Update is compare-and-set: fn changes the row as this instance holds it, and the result is
// written only if the database still holds that version; otherwise the store catches up and fn
// runs again on the newer row.
func (s *PG) Update(id string, fn func(*Record) error) (Record, error) {
	for round := 0; round < optimisticRounds; round++ {
		s.mu.Lock()
		rec, ok := s.mem.Get(id)
		ver := s.vers[id].version
		s.mu.Unlock()
		if !ok {
			return Record{}, merry.Prependf(ErrNotFound, "keymap %s: update %q", s.mem.path, id)
		}
		next, err := change(id, rec, fn)
		if err != nil {
			return Record{}, err
		}
		_, found, err := s.write("update", next, updateRow, append(rowArgs(next), ver)...)
		if err != nil {
			return Record{}, err
		}
		if found {
			return next, nil
		}
		// Another change of the row committed first: take it in and decide again.
		if err := s.Sync(context.Background()); err != nil {
			return Record{}, err
		}
	}
	return s.updateLocked(id, fn)
}

// change runs fn on a copy of rec and validates the outcome.
func change(id string, rec Record, fn func(*Record) error) (Record, error) {
	if err := fn(&rec); err != nil {
		return Record{}, err
	}
	if rec.ID != id {
		return Record{}, merry.Wrap(ErrInvalid, merry.AppendMessagef("update %q: the id cannot change", id))
	}
	next, err := prepareRow(rec)
	if err != nil {
		return Record{}, merry.Prependf(err, "update %q", id)
	}
	return next, nil
}

// updateLocked reads the row and writes the change in one transaction holding the write lock.
func (s *PG) updateLocked(id string, fn func(*Record) error) (out Record, err error) {
	if s.opts.ReadOnly || s.closed.Load() {
		return Record{}, merry.Prependf(ErrClosed, "keymap %s: update %q", s.mem.path, id)
	}
	t0 := time.Now()
	defer func() {
		if s.opts.ObserveWrite != nil {
			s.opts.ObserveWrite("update", time.Since(t0), err)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), pgOpTimeout)
	defer cancel()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return Record{}, s.fault("update "+id, err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, writeLockKey); err != nil {
		return Record{}, s.fault("update "+id, err)
	}
	rows, err := tx.Query(ctx, `SELECT `+rowColumns+` FROM p11bridge_keys WHERE id = $1`, id)
	if err != nil {
		return Record{}, s.fault("update "+id, err)
	}
	var cur pgRow
	found := false
	for rows.Next() {
		if cur, err = scanRow(rows); err != nil {
			rows.Close()
			return Record{}, s.fault("update "+id, err)
		}
		found = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return Record{}, s.fault("update "+id, err)
	}
	if !found || cur.deleted {
		return Record{}, merry.Prependf(ErrNotFound, "keymap %s: update %q", s.mem.path, id)
	}
	s.apply(cur) // committed: what this instance holds may as well be current
	next, err := change(id, cur.rec, fn)
	if err != nil {
		return Record{}, err
	}
	var row pgRow
	if err := tx.QueryRow(ctx, updateRow, append(rowArgs(next), cur.version)...).Scan(&row.version, &row.seq); err != nil {
		return Record{}, s.fault("update "+id, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return Record{}, s.fault("update "+id, err)
	}
	row.rec = next
	s.apply(row)
	return next, nil
}

// Lock takes a cluster-wide lock on name (a PostgreSQL advisory lock held by a connection of its
// own), then catches up, so that what was written under the lock before is seen.
func (s *PG) Lock(ctx context.Context, name string) (func(), error) {
	if s.opts.ReadOnly || s.closed.Load() {
		return nil, merry.Prependf(ErrClosed, "keymap %s: lock %q", s.mem.path, name)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*pgOpTimeout)
	defer cancel()
	c, err := s.locks.Acquire(ctx)
	if err != nil {
		return nil, s.fault("lock "+name, err)
	}
	if _, err := c.Exec(ctx, `SELECT pg_advisory_lock($1, hashtext($2))`, nameLockClass, name); err != nil {
		c.Conn().Close(context.Background()) // the lock, if it was taken, goes with the session
		c.Release()
		return nil, s.fault("lock "+name, err)
	}
	unlock := func() {
		uctx, cancel := context.WithTimeout(context.Background(), pgOpTimeout)
		defer cancel()
		if _, err := c.Exec(uctx, `SELECT pg_advisory_unlock($1, hashtext($2))`, nameLockClass, name); err != nil {
			c.Conn().Close(context.Background())
		}
		c.Release()
	}
	if err := s.syncOn(ctx, c.Conn()); err != nil {
		unlock()
		return nil, err
	}
	return unlock, nil
}

// Close stops the feed and the heartbeat, removes this instance's heartbeat row and closes the
// connections. Reads keep answering from memory; writes fail with ErrClosed.
func (s *PG) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	s.stop()
	<-s.done
	if !s.opts.ReadOnly {
		ctx, cancel := context.WithTimeout(context.Background(), pgOpTimeout)
		s.pool.Exec(ctx, `DELETE FROM p11bridge_instances WHERE instance = $1`, s.opts.Instance)
		cancel()
	}
	s.pool.Close()
	s.locks.Close()
	return nil
}

// ---- status ----

// PGStatus is what the store says about itself and the cluster, for /status and metrics.
type PGStatus struct {
	Location   string
	Instance   string
	FeedUp     bool
	Age        time.Duration // since the last proof that memory is current
	Staleness  time.Duration
	Applied    int64 // change feed position
	Reconnects int64
	Reloads    int64 // times every row was read again after the database went back in time
	LastError  string
	Instances  []PGInstance // nil when the database could not be asked
}

// PGInstance is one instance's heartbeat row.
type PGInstance struct {
	Instance, Host, Version string
	PID                     int
	Started, Seen           time.Time
	Applied                 int64
	Behind                  int64 // changes committed past what it applied, at its last heartbeat
}

// Status reports the feed and, from the heartbeat table, the instances seen in the last minute.
func (s *PG) Status(ctx context.Context) PGStatus {
	st := PGStatus{Location: s.loc, Instance: s.opts.Instance, FeedUp: s.feedUp.Load(), Staleness: s.opts.Staleness,
		Age: s.age(), Applied: s.applied.Load(), Reconnects: s.reconnect.Load(),
		Reloads: s.reloads.Load()}
	if e := s.lastErr.Load(); e != nil {
		st.LastError = *e
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	rows, err := s.pool.Query(ctx, `SELECT instance, host, pid, version, started, seen, applied,
	greatest(0, (SELECT coalesce(max(seq), 0) FROM p11bridge_keys) - applied)
FROM p11bridge_instances WHERE seen > now() - interval '1 minute' ORDER BY instance`)
	if err != nil {
		return st
	}
	defer rows.Close()
	st.Instances = []PGInstance{}
	for rows.Next() {
		var in PGInstance
		var pid int32
		if rows.Scan(&in.Instance, &in.Host, &pid, &in.Version, &in.Started, &in.Seen, &in.Applied, &in.Behind) == nil {
			in.PID = int(pid)
			st.Instances = append(st.Instances, in)
		}
	}
	return st
}
