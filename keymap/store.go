package keymap

import (
	"context"
	"hash/maphash"
	"sync"

	"github.com/ansel1/merry/v2"
)

// The methods below are what the registry needs of a keymap beyond reads, Put and Delete; the
// PostgreSQL store (pg.go) has the same ones with cluster-wide meaning. On the CSV map they are
// local: the file is locked to one process, so a process-wide lock is a cluster-wide one.

var (
	// ErrExists: PutNew was given an id that is already stored.
	ErrExists = merry.Sentinel("record exists")
	// ErrUnavailable: the store cannot be reached, or cannot confirm that what this process holds
	// in memory is current (the PostgreSQL store's change feed is lost). Retrying later may work.
	ErrUnavailable = merry.Sentinel("keymap store unavailable")
)

// stripes serialize Update and PutNew per id (and Lock per name) within the process: one mutex per
// hash stripe, so unrelated ids rarely wait for each other and their writes still share fsyncs.
type stripes struct {
	seed maphash.Seed
	mu   [64]sync.Mutex
}

func newStripes() *stripes { return &stripes{seed: maphash.MakeSeed()} }

func (s *stripes) lock(key string) func() {
	m := &s.mu[maphash.String(s.seed, key)%uint64(len(s.mu))]
	m.Lock()
	return m.Unlock
}

// Update applies fn to a copy of the live record id and stores what fn leaves, as one step with
// respect to other Updates and PutNews of id. fn may refuse by returning an error (nothing is
// written). On the PostgreSQL store fn may run more than once (after a concurrent change), so it
// must decide from the record it is given alone. A zero Updated is set to now.
func (m *Map) Update(id string, fn func(*Record) error) (Record, error) {
	defer m.rowLocks.lock(id)()
	rec, ok := m.Get(id)
	if !ok {
		return Record{}, merry.Prependf(ErrNotFound, "keymap %s: update %q", m.path, id)
	}
	if err := fn(&rec); err != nil {
		return Record{}, err
	}
	if rec.ID != id {
		return Record{}, merry.Wrap(ErrInvalid, merry.AppendMessagef("update %q: the id cannot change", id))
	}
	if err := m.Put(rec); err != nil {
		return Record{}, err
	}
	got, _ := m.Get(id)
	return got, nil
}

// PutNew stores r only when no live record has its id; otherwise it fails with ErrExists.
func (m *Map) PutNew(r Record) error {
	defer m.rowLocks.lock(r.ID)()
	if _, ok := m.Get(r.ID); ok {
		return merry.Prependf(ErrExists, "keymap %s: put %q", m.path, r.ID)
	}
	return m.Put(r)
}

// AttrKESName marks a row as a version of the KES key of that name: a live AES secret key whose Name
// is its KES name (the registry's rule, signer/kes.go). PutNewKES keeps one KES key per name.
const AttrKESName = "kes.name"

// kesAlgorithm is the algorithm of KES key versions, as the registry names it.
const kesAlgorithm = "AES"

// isKESVersionOf mirrors the registry's rule: r is a live version of the KES key name.
func isKESVersionOf(r Record, name string) bool {
	kn, marked := r.Attrs[AttrKESName]
	return marked && kn == name && r.Name == name && r.Class == SecretKey && r.Algorithm == kesAlgorithm &&
		r.State != Destroyed && r.State != DestroyedCompromised
}

// checkKESRow refuses to PutNewKES a row that would not count as a version of its KES key.
func checkKESRow(r Record) error {
	if r.Attrs[AttrKESName] == "" || !isKESVersionOf(r, r.Attrs[AttrKESName]) {
		return merry.Wrap(ErrInvalid, merry.AppendMessagef("%q is no live version of a KES key (an AES secret key whose Name is its %s)", r.ID, AttrKESName))
	}
	return nil
}

// PutNewKES stores r, the first version of a new KES key, only when no live record has its id and
// no live version of a KES key has its name; otherwise it fails with ErrExists. The registry holds
// the name's lock (Lock) around it as well; on PostgreSQL, where that lock can be lost with its
// session, this check is what keeps two keys of one name from both being written.
func (m *Map) PutNewKES(r Record) error {
	if err := checkKESRow(r); err != nil {
		return merry.Prependf(err, "keymap %s: put %q", m.path, r.ID)
	}
	// One stripe, keyed by the name: taking the id's as well could take one stripe twice.
	defer m.rowLocks.lock("kes:" + r.Name)()
	if _, ok := m.Get(r.ID); ok {
		return merry.Prependf(ErrExists, "keymap %s: put %q", m.path, r.ID)
	}
	for _, o := range m.ByName(r.Name) {
		if o.ID != r.ID && isKESVersionOf(o, r.Name) {
			return merry.Prependf(ErrExists, "keymap %s: put %q: a KES key named %q exists", m.path, r.ID, r.Name)
		}
	}
	return m.Put(r)
}

// Lock holds the named lock until the returned function is called: the registry's lock for
// operations that must see a name free and then take it (KES create). Once it is held, reads
// reflect every change made under it before.
func (m *Map) Lock(ctx context.Context, name string) (func(), error) {
	return m.nameLocks.lock(name), nil
}

// Sync returns once reads reflect every change committed before it was called: at once here,
// where every change is made by this process.
func (m *Map) Sync(context.Context) error { return nil }

// Fresh says whether what the map holds in memory is known to be current: always, for a file that
// only this process writes.
func (m *Map) Fresh() error { return nil }

// Kind names the store for status and messages.
func (m *Map) Kind() string { return "csv" }

// Location says where the store keeps its rows.
func (m *Map) Location() string { return m.path }
