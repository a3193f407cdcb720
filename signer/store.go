package signer

import (
	"context"
	"errors"
	"strings"

	"github.com/p11bridge/p11bridge/keymap"
)

// Store is the keymap as the registry uses it, defined here with its one consumer. Two stores
// implement it: keymap.Map, the CSV log of one process, and keymap.PG, rows in PostgreSQL shared
// by the instances of a cluster, each holding them in memory and following a change feed.
//
// Reads answer from memory. Writes return once the change is durable (fsynced, or committed), so
// the registry answers clients only after. Update is atomic against every other change of the row,
// in the cluster too (compare-and-set; fn may run more than once). PutNew makes a row only where none
// is live, Lock is a named lock across the cluster after which reads reflect what earlier holders
// wrote, Sync catches up with changes committed elsewhere, and Fresh fails while the store cannot
// confirm that what it holds is current (the registry then refuses to use keys).
type Store interface {
	Get(id string) (keymap.Record, bool)
	ByTag(tag []byte) []keymap.Record
	ByKeyID(kid []byte) []keymap.Record
	ByName(name string) []keymap.Record
	Range(fn func(keymap.Record) bool)
	// RangeViews is Range without copies: views of the rows as the store holds them in memory.
	RangeViews(fn func(keymap.View) bool)
	// Select is RangeViews of the rows matching q, in no particular order, visiting only the rows
	// filed under q's most selective condition.
	Select(q keymap.Query, fn func(keymap.View) bool)
	// Census counts the live rows per signer and state.
	Census() map[string]map[keymap.State]int
	Len() int
	// Changes counts the changes this process has seen; caches are good while it stays put.
	Changes() uint64

	Put(rec keymap.Record) error
	PutNew(rec keymap.Record) error
	// PutNewKES is PutNew for the first version of a new KES key, which also fails (ErrExists)
	// while a live version of a KES key has its name: decided where the row is written, so it
	// holds when the name lock (Lock) was lost, as a PostgreSQL session lock can be.
	PutNewKES(rec keymap.Record) error
	Update(id string, fn func(*keymap.Record) error) (keymap.Record, error)
	Delete(id string) error

	Lock(ctx context.Context, name string) (unlock func(), err error)
	Sync(ctx context.Context) error
	Fresh() error

	// Kind ("csv" or "postgres") and Location (a path, or host:port/database) name the store.
	Kind() string
	Location() string
	Close() error
}

var (
	_ Store = (*keymap.Map)(nil)
	_ Store = (*keymap.PG)(nil)
)

// storeErr turns a store failure into the registry's vocabulary, keeping its message but for
// where the store lives (a file path, a database's host and name): clients see the message, and
// that is the operator's to know. The log has it whole.
func (r *Registry) storeErr(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if loc := r.km.Location(); loc != "" && strings.Contains(msg, loc) {
		r.log.Warn("keymap store failure", "err", err)
		msg = strings.ReplaceAll(msg, loc, "(the keymap store)")
	}
	kind := ErrUnavailable
	switch {
	case errors.Is(err, keymap.ErrNotFound):
		kind = ErrNotFound
	case errors.Is(err, keymap.ErrInvalid):
		kind = ErrInvalid
	}
	return errorf(kind, format+": %s", append(args, msg)...)
}
