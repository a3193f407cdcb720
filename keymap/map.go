package keymap

import (
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ansel1/merry/v2"
)

// Sentinel errors; returned errors wrap them with context, test with errors.Is.
var (
	// ErrNotFound: no live record has the id.
	ErrNotFound = merry.Sentinel("not found")
	// ErrClosed: the map was closed.
	ErrClosed = merry.Sentinel("keymap closed")
	// ErrInvalid: Put was given a record that cannot be stored.
	ErrInvalid = merry.Sentinel("invalid record")
	// ErrCorrupt: the file is damaged before its last line, or is not a keymap.
	ErrCorrupt = merry.Sentinel("damaged keymap file")
	// ErrVersion: the file was written by a newer format version.
	ErrVersion = merry.Sentinel("unsupported keymap format version")
)

// entry is the map's slot for one id. Its st is replaced, never mutated,
// so a *stored read under the lock stays valid after the lock is released.
type entry struct {
	id   string
	st   *stored // nil once deleted
	slot uint32  // its place in slots and the field indexes (select.go), while live
}

func cmpEntry(a, b *entry) int { return strings.Compare(a.id, b.id) }

func cmpEntryID(e *entry, id string) int { return strings.Compare(e.id, id) }

// Map is the persistent keymap. All methods are safe for concurrent use.
type Map struct {
	path     string
	log      *slog.Logger
	readOnly bool // a snapshot from OpenReadOnly: never writes

	// mu guards the in-memory state. Readers hold it only to find a
	// *stored; copying it out happens after.
	mu     sync.RWMutex
	recs   map[string]*entry
	byTag  index
	byKID  index
	byName index
	// slots and fields are the indexes Select uses (select.go); freeSlots are slots to reuse.
	slots     []*entry
	freeSlots []uint32
	fields    [nFields]fieldIndex
	// order is the ID-sorted list Range walks. It is kept lazily: new
	// entries wait in added, deleted ones stay in order (st == nil) until
	// the next Range merges; stale marks that a full sort is cheaper.
	order []*entry
	added []*entry
	dead  int
	stale bool
	gen   uint64 // bumped when an id is added or removed
	// changes counts every committed change (Changes).
	changes atomic.Uint64

	// wmu guards the write queue.
	wmu     sync.Mutex
	closed  bool
	pending *batch
	// inflight overlays the rows queued or being written on top of recs,
	// so Delete sees the outcome of earlier, not yet applied, operations.
	inflight map[string]inflight

	// flushSem is held by whoever touches the file: a batch leader,
	// Compact while it snapshots and swaps, Close. Fields below are owned
	// by its holder.
	flushSem chan struct{}
	disk     disk
	f        file
	size     int64 // end of the last good row; writes go here
	torn     bool  // bytes past size (a torn row) must be cut before writing
	broken   error // set after a write failure that could not be undone

	compactMu sync.Mutex

	fsyncs atomic.Int64 // batches made durable, to see group commit at work

	// rowLocks serialize Update and PutNew per id, nameLocks the named locks (store.go).
	rowLocks, nameLocks *stripes
}

type inflight struct {
	n      int  // queued operations on the id not yet applied
	exists bool // whether the id exists after the last of them
}

// Open loads the keymap at path, creating the file (0600) and its parent
// directory (0700) if missing. The file is locked against a second opener.
// A nil log means slog.Default().
func Open(path string, log *slog.Logger) (*Map, error) {
	return open(osDisk{}, path, log)
}

// open is Open on d.
func open(d disk, path string, log *slog.Logger) (*Map, error) {
	if log == nil {
		log = slog.Default()
	}
	if path == "" {
		return nil, merry.New("keymap: empty path")
	}
	m := &Map{
		path:     path,
		log:      log,
		inflight: make(map[string]inflight),
		flushSem: make(chan struct{}, 1),
		disk:     d,
		rowLocks: newStripes(), nameLocks: newStripes(),
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, merry.Prependf(err, "keymap %s: create directory", path)
	}
	f, err := openLocked(d, path)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	res, err := m.load(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	if res.fresh {
		if err := writeHeader(f); err != nil {
			f.Close()
			return nil, merry.Prependf(err, "keymap %s: write header", path)
		}
		res.size, res.fileSize = int64(len(header)), int64(len(header))
	}
	m.f = f
	m.size = res.size
	m.torn = res.size < res.fileSize
	m.recs = res.recs
	t1 := time.Now()
	m.buildIndexes(res.entries, res.kids)
	m.log.Debug("keymap: opened", "path", path, "rows", res.rows, "live", len(m.recs),
		"read", t1.Sub(t0), "index", time.Since(t1))
	return m, nil
}

// openLocked opens (or creates) the file at path and locks it. It makes
// sure the locked file is still the one at path: another process may have
// compacted, that is replaced, it between the open and the lock.
func openLocked(d disk, path string) (file, error) {
	for attempt := 0; ; attempt++ {
		f, err := d.open(path)
		if errors.Is(err, fs.ErrNotExist) {
			f, err = create(d, path)
			if errors.Is(err, fs.ErrExist) && attempt < 3 {
				continue // created by someone else meanwhile
			}
		}
		if err != nil {
			return nil, merry.Prependf(err, "keymap %s: open", path)
		}
		if err := lockFile(f); err != nil {
			f.Close()
			return nil, merry.Prependf(err, "keymap %s: lock", path)
		}
		fst, err1 := f.Stat()
		pst, err2 := os.Stat(path)
		if err1 == nil && err2 == nil && os.SameFile(fst, pst) {
			return f, nil
		}
		f.Close()
		if attempt >= 3 {
			return nil, merry.Errorf("keymap %s: open: the file keeps being replaced", path)
		}
	}
}

// create makes a new, empty keymap file. A crash before the header is
// durable leaves an empty or partial header, which Open treats as empty.
func create(d disk, path string) (file, error) {
	f, err := d.create(path)
	if err != nil {
		return nil, err
	}
	if err := writeHeader(f); err != nil {
		f.Close()
		return nil, err
	}
	if err := d.syncDir(filepath.Dir(path)); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func writeHeader(f file) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	if _, err := f.WriteAt([]byte(header), 0); err != nil {
		return err
	}
	return f.Sync()
}

// buildIndexes fills the indexes, one goroutine per index: the work is
// mostly waiting for memory, and cores wait in parallel. Walking entries in
// file order (the order they were allocated in) rather than in map order
// turns most of those waits into sequential reads. Deleted entries have a
// nil st; kids is a size hint for the key id index.
func (m *Map) buildIndexes(entries []*entry, kids int) {
	var wg sync.WaitGroup
	build := func(idx *index, hint int, key func(st *stored) string) {
		defer wg.Done()
		idx.init(hint)
		for _, e := range entries {
			if e.st != nil {
				if k := key(e.st); k != "" {
					idx.load(k, e)
				}
			}
		}
		idx.sortLoaded()
	}
	wg.Add(4)
	go build(&m.byTag, len(m.recs), tagKey)
	go build(&m.byKID, kids, kidKey)
	go func() {
		defer wg.Done()
		m.buildFields(entries)
	}()
	build(&m.byName, len(m.recs), nameKey)
	wg.Wait()
	m.stale = true
}

// Changes counts the changes made to the map since it was opened. Callers that cache what
// they read (derived views of records) compare it to tell whether the cache is still good.
func (m *Map) Changes() uint64 { return m.changes.Load() }

// Path returns the file the map is stored in.
func (m *Map) Path() string { return m.path }

// Len returns the number of live records.
func (m *Map) Len() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.recs)
}

// Get returns a deep copy of the live record with the given id.
func (m *Map) Get(id string) (Record, bool) {
	m.mu.RLock()
	var st *stored
	if e := m.recs[id]; e != nil {
		st = e.st
	}
	m.mu.RUnlock()
	if st == nil {
		return Record{}, false
	}
	return st.record(), true
}

// ByTag returns copies of all live records with that tag, sorted by ID.
func (m *Map) ByTag(tag []byte) []Record {
	return m.lookup(&m.byTag, string(tag))
}

// ByKeyID returns copies of all live records with that key identifier,
// sorted by ID. An empty kid matches nothing.
func (m *Map) ByKeyID(kid []byte) []Record {
	return m.lookup(&m.byKID, string(kid))
}

// ByName returns copies of all live records named exactly name, sorted by
// ID. Unnamed records are not indexed: an empty name matches nothing.
func (m *Map) ByName(name string) []Record {
	return m.lookup(&m.byName, name)
}

func (m *Map) lookup(idx *index, key string) []Record {
	if key == "" {
		return nil
	}
	var one *stored
	var many []*stored
	m.mu.RLock()
	if e := idx.one[key]; e != nil {
		one = e.st
	} else if b := idx.many[key]; len(b) > 0 {
		many = make([]*stored, len(b))
		for i, e := range b {
			many[i] = e.st
		}
	}
	m.mu.RUnlock()
	if one != nil {
		return []Record{one.record()}
	}
	if len(many) == 0 {
		return nil
	}
	out := make([]Record, len(many))
	for i, st := range many {
		out[i] = st.record()
	}
	return out
}

// Range calls fn with a copy of each live record in ID order until fn
// returns false. It walks a snapshot taken at the start, so fn may call any
// method of the map.
func (m *Map) Range(fn func(Record) bool) {
	for _, st := range m.snapshot() {
		if !fn(st.record()) {
			return
		}
	}
}

// snapshot returns the live records in ID order. Sorting runs outside the
// lock so that the first Range after Open (a full sort) does not stall
// lookups; only if ids keep being added or removed meanwhile does it give
// up and sort under the write lock.
func (m *Map) snapshot() []*stored {
	for attempt := 0; ; attempt++ {
		m.mu.RLock()
		if !m.stale && len(m.added) == 0 {
			defer m.mu.RUnlock()
			return m.collectOrder()
		}
		locked := attempt >= 2
		if locked {
			m.mu.RUnlock()
			m.mu.Lock()
		}
		gen, stale := m.gen, m.stale
		var base, add []*entry
		if stale {
			base = make([]*entry, 0, len(m.recs))
			for _, e := range m.recs {
				base = append(base, e)
			}
		} else {
			base, add = m.order, slices.Clone(m.added) // order is never changed in place
		}
		if !locked {
			m.mu.RUnlock()
		}
		merged := mergeSorted(base, add, stale)
		if !locked {
			m.mu.Lock()
			if m.gen != gen {
				m.mu.Unlock()
				continue
			}
		}
		if stale {
			m.dead = 0
		}
		m.order, m.added, m.stale = merged, nil, false
		defer m.mu.Unlock()
		return m.collectOrder()
	}
}

// collectOrder returns the live records of order. Needs mu held.
func (m *Map) collectOrder() []*stored {
	out := make([]*stored, 0, len(m.recs))
	for _, e := range m.order {
		if e.st != nil {
			out = append(out, e.st)
		}
	}
	return out
}

// mergeSorted returns an ID-sorted list: base itself sorted when unsorted
// (it is then the caller's own copy), else a new list merging base with add
// (sorted in place). Entry ids never change, so this needs no lock; dead
// entries are kept, collectOrder skips them.
func mergeSorted(base, add []*entry, unsorted bool) []*entry {
	if unsorted {
		slices.SortFunc(base, cmpEntry)
		return base
	}
	slices.SortFunc(add, cmpEntry)
	out := make([]*entry, 0, len(base)+len(add))
	i, j := 0, 0
	for i < len(base) || j < len(add) {
		if j >= len(add) || (i < len(base) && base[i].id <= add[j].id) {
			out, i = append(out, base[i]), i+1
		} else {
			out, j = append(out, add[j]), j+1
		}
	}
	return out
}

// apply makes one committed operation visible: st, or a delete when st is
// nil. Needs mu held for writing.
func (m *Map) apply(id string, st *stored) {
	defer m.changes.Add(1)
	e := m.recs[id]
	if st == nil {
		if e == nil {
			return
		}
		m.reindex(e, e.st, nil)
		m.freeSlot(e)
		e.st = nil
		delete(m.recs, id)
		m.gen++
		m.dead++
		if m.dead > len(m.order)/4+1024 {
			m.setStale()
		}
		return
	}
	if e == nil {
		e = &entry{id: id}
		m.newSlot(e)
		m.recs[id] = e
		m.gen++
		if !m.stale {
			m.added = append(m.added, e)
			if len(m.added) > len(m.order)/4+1024 {
				m.setStale()
			}
		}
	}
	old := e.st
	e.st = st
	m.reindex(e, old, st)
}

// setStale drops the Range order; the next Range sorts from scratch.
func (m *Map) setStale() {
	m.stale, m.order, m.added, m.dead = true, nil, nil, 0
}

func tagKey(st *stored) string  { return st.tag }
func kidKey(st *stored) string  { return st.kid }
func nameKey(st *stored) string { return st.name }

// reindex moves e from the index keys of old to those of next; either may
// be nil. Keys that did not change are left alone.
func (m *Map) reindex(e *entry, old, next *stored) {
	m.byTag.move(e, old, next, tagKey)
	m.byKID.move(e, old, next, kidKey)
	m.byName.move(e, old, next, nameKey)
	m.fileSlot(e.slot, old, next)
}

// index maps a key to the entries that have it, sorted by id. Almost every
// key has one entry, kept in one without a slice; keys shared by several
// (the halves of a key pair, a reused name) are in many. A key is in one of
// the two maps, never both.
type index struct {
	one  map[string]*entry
	many map[string][]*entry
}

// move files e under next's key instead of old's; either may be nil, and
// an empty key is not indexed.
func (x *index) move(e *entry, old, next *stored, key func(*stored) string) {
	var ok, nk string
	if old != nil {
		ok = key(old)
	}
	if next != nil {
		nk = key(next)
	}
	if ok == nk {
		return
	}
	if ok != "" {
		x.del(ok, e)
	}
	if nk != "" {
		x.add(nk, e)
	}
}

func (x *index) init(hint int) {
	x.one = make(map[string]*entry, hint)
	x.many = make(map[string][]*entry)
}

// load adds e while bulk loading; sortLoaded restores the order after.
func (x *index) load(k string, e *entry) {
	if b, ok := x.many[k]; ok {
		x.many[k] = append(b, e)
	} else if o := x.one[k]; o != nil {
		delete(x.one, k)
		x.many[k] = []*entry{o, e}
	} else {
		x.one[k] = e
	}
}

func (x *index) sortLoaded() {
	for _, b := range x.many {
		slices.SortFunc(b, cmpEntry)
	}
}

func (x *index) add(k string, e *entry) {
	if b, ok := x.many[k]; ok {
		i, found := slices.BinarySearchFunc(b, e.id, cmpEntryID)
		if found {
			b[i] = e
		} else {
			x.many[k] = slices.Insert(b, i, e)
		}
		return
	}
	o := x.one[k]
	switch {
	case o == nil || o.id == e.id:
		x.one[k] = e
	case o.id < e.id:
		delete(x.one, k)
		x.many[k] = []*entry{o, e}
	default:
		delete(x.one, k)
		x.many[k] = []*entry{e, o}
	}
}

func (x *index) del(k string, e *entry) {
	if o := x.one[k]; o != nil {
		if o == e {
			delete(x.one, k)
		}
		return
	}
	b := x.many[k]
	i, found := slices.BinarySearchFunc(b, e.id, cmpEntryID)
	if !found || b[i] != e {
		return
	}
	b = slices.Delete(b, i, i+1)
	if len(b) == 1 {
		delete(x.many, k)
		x.one[k] = b[0]
	} else {
		x.many[k] = b
	}
}

// OpenReadOnly loads a snapshot of the keymap at path without locking it, for tools that read while
// a server holds the file (p11bridge keys list). A row being appended at that moment reads as a torn
// last row and is left out. Every write returns ErrClosed.
func OpenReadOnly(path string, log *slog.Logger) (*Map, error) {
	if log == nil {
		log = slog.Default()
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, merry.Prependf(err, "keymap %s", path)
	}
	defer f.Close()
	m := &Map{path: path, log: log, readOnly: true, inflight: make(map[string]inflight), flushSem: make(chan struct{}, 1),
		rowLocks: newStripes(), nameLocks: newStripes()}
	res, err := m.load(f)
	if err != nil {
		return nil, err
	}
	m.recs = res.recs
	m.buildIndexes(res.entries, res.kids)
	m.closed = true
	return m, nil
}

// newMemory returns an empty map that lives in memory only, for a store that keeps its rows
// elsewhere (pg.go) and changes it through set. Its own writes fail with ErrClosed.
func newMemory(name string, log *slog.Logger) *Map {
	m := &Map{path: name, log: log, readOnly: true, inflight: make(map[string]inflight), flushSem: make(chan struct{}, 1),
		recs: map[string]*entry{}, rowLocks: newStripes(), nameLocks: newStripes(), closed: true}
	m.buildIndexes(nil, 0)
	return m
}

// set makes r (or, when r is nil, the deletion of id) visible, as a committed write does.
func (m *Map) set(id string, r *Record) error {
	var st *stored
	if r != nil {
		var err error
		if st, err = prepare(*r, time.Now()); err != nil {
			return err
		}
	}
	m.mu.Lock()
	m.apply(id, st)
	m.mu.Unlock()
	return nil
}
