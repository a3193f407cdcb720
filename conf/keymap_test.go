package conf

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The keymap block: a CSV path, or a PostgreSQL connection string from the environment or a file.

func TestKeymapPostgres(t *testing.T) {
	dir := t.TempDir()
	dsn := "postgres://p11bridge:s3cr3t-pass@db.example:5432/p11bridge"
	t.Setenv("P11BRIDGE_KEYMAP_DSN", dsn)
	base := cat(sig("a"))
	cfg, err := Parse([]byte(cat(base, `keymap {`, `  postgres = env("P11BRIDGE_KEYMAP_DSN")`, `  instance = "node-1"`, `  staleness = "500ms"`, `}`)), filepath.Join(dir, "c.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	k := cfg.Keymap
	if k.Postgres.Reveal() != dsn || k.PostgresSource != "env:P11BRIDGE_KEYMAP_DSN" || k.Path != "" || k.Instance != "node-1" || k.Staleness != 500*time.Millisecond {
		t.Fatalf("keymap %+v", k)
	}
	// From a private file; a trailing newline is not part of it.
	if err := os.WriteFile(filepath.Join(dir, "dsn"), []byte(dsn+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err = Parse([]byte(cat(base, `keymap { postgres_file = "dsn" }`)), filepath.Join(dir, "c.hcl"))
	if err != nil || cfg.Keymap.Postgres.Reveal() != dsn || strings.Contains(fmt.Sprint(cfg.Production()), "keymap") {
		t.Fatalf("postgres_file: %v %+v %v", err, cfg, cfg.Production())
	}
	// Written in the file with its password: valid, but production mode refuses it, and no
	// message repeats the password.
	cfg, err = Parse([]byte(cat(base, `keymap { postgres = "`+dsn+`" }`)), filepath.Join(dir, "c.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	perr := cfg.Production()
	if perr == nil || !strings.Contains(perr.Error(), "password is written in the config file") || strings.Contains(perr.Error(), "s3cr3t") {
		t.Fatalf("production: %v", perr)
	}
	// Without a password (~/.pgpass, certificates): fine in production.
	cfg, err = Parse([]byte(cat(base, `keymap { postgres = "host=db.example dbname=p11bridge user=p11bridge" }`)), filepath.Join(dir, "c.hcl"))
	if err != nil || strings.Contains(fmt.Sprint(cfg.Production()), "keymap") {
		t.Fatalf("DSN without password: %v / %v", err, cfg.Production())
	}
}

func TestKeymapDiagnostics(t *testing.T) {
	t.Setenv("P11BRIDGE_BAD_DSN", "not a connection string s3cr3t")
	for _, c := range []struct {
		src  []string
		want string
	}{
		{[]string{`keymap {`, `  path = "k.csv"`, `  postgres = "postgres://h/db"`, `}`}, `the keymap block has both a path and postgres`},
		{[]string{`keymap {`, `  postgres = "postgres://h/db"`, `  postgres_file = "x"`, `}`}, `the keymap block has both postgres and postgres_file`},
		{[]string{`keymap { postgres = env("P11BRIDGE_BAD_DSN") }`}, `the keymap's postgres connection string (environment variable "P11BRIDGE_BAD_DSN") is neither a postgres:// URI nor key=value pairs`},
		{[]string{`keymap { postgres = "" }`}, `the keymap's postgres connection string is empty`},
		{[]string{`keymap {`, `  path = "k.csv"`, `  staleness = "1s"`, `}`}, `staleness in the keymap block applies to a PostgreSQL keymap only`},
		{[]string{`keymap {`, `  postgres = "postgres://h/db"`, `  staleness = "1ms"`, `}`}, `staleness`},
		{[]string{`keymap {`, `  postgres = "postgres://h/db"`, `  instance = "a b"`, `}`}, `bad instance name "a b"`},
		{[]string{`keymap { postgres_file = "missing" }`}, `cannot read the keymap's postgres_file`},
	} {
		_, err := Parse([]byte(cat(sig("a"), c.src)), filepath.Join(t.TempDir(), "c.hcl"))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s:\n got %v\nwant …%s…", strings.Join(c.src, " "), err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("a message quotes the connection string: %v", err)
		}
	}
}
