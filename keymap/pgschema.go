package keymap

import (
	"context"
	"fmt"

	"github.com/ansel1/merry/v2"
	"github.com/jackc/pgx/v5"
)

// Schema migrations of the PostgreSQL store, applied at start by every instance (OpenPG with
// Migrate) inside one transaction that holds an advisory lock, so instances starting together apply
// each migration once and none starts on a half-migrated schema. The versions applied are rows
// of p11bridge_schema. Migrations are never edited once released: a change is a new entry. A
// database whose schema is newer than this binary knows is refused (ErrVersion), as a newer CSV
// file is.
//
// Why at start rather than by a separate command: an instance needs the schema it was built for
// to serve at all, the migrations so far only add, and a rolling upgrade of a cluster then needs
// no extra step. Operators who want to apply them ahead (e.g. with a more privileged role) run
// `p11bridge keymap migrate`, which does the same and nothing else.
var migrations = []string{
	1: `
CREATE SEQUENCE p11bridge_change_seq;

-- One row per managed object, the same fields as a CSV row. Tombstones stay (deleted = true) so
-- that every instance's change feed sees the deletion. version counts the changes of the row
-- (compare-and-set); seq is the row's place in the cluster-wide change feed.
CREATE TABLE p11bridge_keys (
	id        text    PRIMARY KEY,
	version   bigint  NOT NULL,
	seq       bigint  NOT NULL,
	deleted   boolean NOT NULL DEFAULT false,
	tag       bytea   NOT NULL,
	signer    text    NOT NULL,
	class     text    NOT NULL,
	algorithm text    NOT NULL,
	size      integer NOT NULL,
	keyid     bytea,
	name      text    NOT NULL,
	state     text    NOT NULL,
	owner     text    NOT NULL,
	created   text    NOT NULL, -- RFC 3339 UTC with nine fraction digits, as in the CSV ('' = zero)
	updated   text    NOT NULL,
	attrs     text    NOT NULL  -- JSON object of strings
);
CREATE UNIQUE INDEX p11bridge_keys_seq ON p11bridge_keys (seq);

-- Every committed change of a row wakes the instances' change feeds.
CREATE FUNCTION p11bridge_keys_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_notify('p11bridge_keymap', NEW.seq::text);
	RETURN NULL;
END $$;
CREATE TRIGGER p11bridge_keys_notify AFTER INSERT OR UPDATE ON p11bridge_keys
	FOR EACH ROW EXECUTE FUNCTION p11bridge_keys_notify();

-- One heartbeat row per running instance (status: instances seen, their lag).
CREATE TABLE p11bridge_instances (
	instance text        PRIMARY KEY,
	host     text        NOT NULL,
	pid      integer     NOT NULL,
	version  text        NOT NULL,
	started  timestamptz NOT NULL,
	seen     timestamptz NOT NULL,
	applied  bigint      NOT NULL
);
`,
	2: `
-- The cluster's identity: a random id made with the schema. With PostgreSQL's system identifier,
-- its timeline and the database's oid it makes the epoch each catch-up compares, so an instance
-- notices a database that is another one, or went back in time (pg.go, wentBack).
CREATE TABLE p11bridge_cluster (
	id text NOT NULL
);
INSERT INTO p11bridge_cluster (id) VALUES (md5(random()::text || clock_timestamp()::text || pg_backend_pid()::text));

-- PutNewKES looks for the live versions of a KES key by name, under the write lock.
CREATE INDEX p11bridge_keys_name ON p11bridge_keys (name) WHERE NOT deleted;
`,
}

// SchemaVersion is the schema this binary writes.
const SchemaVersion = 2

// Advisory lock keys: the migration lock and the write lock (int8 keys), and the name locks (two
// int4 keys, which PostgreSQL keeps apart from int8 keys).
const (
	migrateLockKey int64 = 0x7031316d69677261 // "p11migra"
	writeLockKey   int64 = 0x7031317772697465 // "p11write"
	nameLockClass  int32 = 0x7031316e         // "p11n"
)

// migrate brings the schema to SchemaVersion, or with apply false only checks that it is there.
func migrate(ctx context.Context, conn *pgx.Conn, apply bool, by string) (from int, err error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(ctx)
	if apply {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrateLockKey); err != nil {
			return 0, err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS p11bridge_schema (
	version integer     PRIMARY KEY,
	applied timestamptz NOT NULL DEFAULT now(),
	by      text        NOT NULL)`); err != nil {
			return 0, err
		}
	}
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass('p11bridge_schema') IS NOT NULL`).Scan(&exists); err != nil {
		return 0, err
	}
	if exists {
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM p11bridge_schema`).Scan(&from); err != nil {
			return 0, err
		}
	}
	switch {
	case from > SchemaVersion:
		return from, merry.Prependf(ErrVersion, "keymap: the PostgreSQL schema is at version %d, written by a newer p11bridge; this one knows versions up to %d", from, SchemaVersion)
	case from == SchemaVersion:
		return from, nil
	case !apply:
		if from == 0 {
			return 0, merry.Prependf(ErrNotFound, "keymap: the database holds no p11bridge keymap (start a server on it, or run p11bridge keymap migrate)")
		}
		return from, merry.Errorf("keymap: the PostgreSQL schema is at version %d; this p11bridge needs %d (run p11bridge keymap migrate, or start a server)", from, SchemaVersion)
	}
	for v := from + 1; v <= SchemaVersion; v++ {
		if _, err := tx.Exec(ctx, migrations[v]); err != nil {
			return from, fmt.Errorf("schema migration %d: %w", v, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO p11bridge_schema (version, by) VALUES ($1, $2)`, v, by); err != nil {
			return from, err
		}
	}
	return from, tx.Commit(ctx)
}
