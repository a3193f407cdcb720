package keymap

import (
	"bytes"
	"fmt"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// recDisk is a disk that passes every call to the real file system and
// keeps a model of what a power loss would leave: each file's bytes as of
// its last Sync, and the directory's entries as of its last sync. A rename
// or a create is durable only once the directory is synced; a write only
// once its file is. (Real file systems may keep more; never less.)
type recDisk struct {
	real osDisk

	mu      sync.Mutex
	names   map[string]*inode // directory entries now
	durable map[string]*inode // as of the last syncDir
	syncs   int               // file syncs so far
	// event, when set, runs with mu held at the start of every file
	// write and sync, before it takes effect.
	event func()
	// blockSync, when set, is called without mu at the start of every file
	// Sync; the sync waits for it to return.
	blockSync func(f *recFile)
}

// inode is one file's contents: what reads see, and what was synced.
// synced is replaced on each Sync, never changed in place.
type inode struct {
	data   []byte
	synced []byte
}

func newRecDisk() *recDisk {
	return &recDisk{names: map[string]*inode{}, durable: map[string]*inode{}}
}

// recFile is an open file of a recDisk. It holds the *os.File instead of
// embedding it so that no method of *os.File (ReadFrom, WriteString, …)
// can write behind the model's back.
type recFile struct {
	f   *os.File
	d   *recDisk
	ino *inode
	pos int64 // where Write goes
}

func (d *recDisk) wrap(f *os.File, ino *inode) *recFile {
	return &recFile{f: f, d: d, ino: ino}
}

func (d *recDisk) open(path string) (file, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	ino := d.names[path]
	if ino == nil {
		// A file the test wrote before the map existed counts as durable.
		data, err := os.ReadFile(path)
		if err != nil {
			f.Close()
			return nil, err
		}
		ino = &inode{data: data, synced: bytes.Clone(data)}
		d.names[path], d.durable[path] = ino, ino
	}
	return d.wrap(f, ino), nil
}

func (d *recDisk) create(path string) (file, error) {
	f, err := d.real.create(path)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	ino := &inode{}
	d.names[path] = ino
	return d.wrap(f.(*os.File), ino), nil
}

func (d *recDisk) createTemp(dir, pattern string) (file, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	ino := &inode{}
	d.names[f.Name()] = ino
	return d.wrap(f, ino), nil
}

func (d *recDisk) rename(from, to string) error {
	if err := d.real.rename(from, to); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.names[to] = d.names[from]
	delete(d.names, from)
	return nil
}

func (d *recDisk) syncDir(dir string) error {
	if err := d.real.syncDir(dir); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.durable = maps.Clone(d.names)
	return nil
}

func (f *recFile) writeModel(p []byte, off int64) {
	if end := off + int64(len(p)); end > int64(len(f.ino.data)) {
		f.ino.data = append(f.ino.data, make([]byte, end-int64(len(f.ino.data)))...)
	}
	copy(f.ino.data[off:], p)
}

func (f *recFile) Write(p []byte) (int, error) {
	f.d.at()
	n, err := f.f.Write(p)
	f.d.mu.Lock()
	f.writeModel(p[:n], f.pos)
	f.pos += int64(n)
	f.d.mu.Unlock()
	return n, err
}

func (f *recFile) WriteAt(p []byte, off int64) (int, error) {
	f.d.at()
	n, err := f.f.WriteAt(p, off)
	f.d.mu.Lock()
	f.writeModel(p[:n], off)
	f.d.mu.Unlock()
	return n, err
}

func (f *recFile) Truncate(size int64) error {
	if err := f.f.Truncate(size); err != nil {
		return err
	}
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if size <= int64(len(f.ino.data)) {
		f.ino.data = f.ino.data[:size:size] // later appends must not reach into synced
	} else {
		f.ino.data = append(f.ino.data, make([]byte, size-int64(len(f.ino.data)))...)
	}
	return nil
}

func (f *recFile) Sync() error {
	if f.d.blockSync != nil {
		f.d.blockSync(f)
	}
	f.d.at()
	if err := f.f.Sync(); err != nil {
		return err
	}
	f.d.mu.Lock()
	f.ino.synced = bytes.Clone(f.ino.data)
	f.d.syncs++
	f.d.mu.Unlock()
	return nil
}

// at runs the event hook.
func (d *recDisk) at() {
	d.mu.Lock()
	if d.event != nil {
		d.event()
	}
	d.mu.Unlock()
}

func (f *recFile) ReadAt(p []byte, off int64) (int, error) { return f.f.ReadAt(p, off) }
func (f *recFile) Close() error                            { return f.f.Close() }
func (f *recFile) Stat() (fs.FileInfo, error)              { return f.f.Stat() }
func (f *recFile) Fd() uintptr                             { return f.f.Fd() }
func (f *recFile) Name() string                            { return f.f.Name() }

// image returns what a power loss would leave at path now. Needs mu.
func (d *recDisk) imageLocked(path string) []byte {
	if ino := d.durable[path]; ino != nil {
		return ino.synced
	}
	return nil
}

func (d *recDisk) image(path string) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.imageLocked(path)
}

// lastRow returns the last row about id in a keymap image, or nil.
func lastRow(img []byte, id string) []byte {
	put := bytes.LastIndex(img, []byte("\nput,"+id+","))
	del := bytes.LastIndex(img, []byte("\ndel,"+id+","))
	i := max(put, del)
	if i < 0 {
		return nil
	}
	row := img[i+1:]
	if j := bytes.IndexByte(row, '\n'); j >= 0 {
		row = row[:j+1]
	}
	return row
}

// versioned is record i at version v (1 or 2), with a fixed Updated so
// that its row is known byte for byte.
func versioned(i, v int) Record {
	r := rec(i)
	r.Name = fmt.Sprintf("key-%d-v%d", i, v)
	r.Updated = t0.Add(time.Duration(v) * time.Hour)
	return r
}

func rowOf(t testing.TB, r Record) []byte {
	t.Helper()
	st, err := prepare(r, t0)
	if err != nil {
		t.Fatal(err)
	}
	return appendPut(nil, st)
}

// Every Put and Delete returns only after its row is on disk: at the
// moment a call returns, what a power loss would leave (the synced bytes
// of the file the synced directory names) already holds the row. After
// Compact returns, the directory is synced: the synced directory names the
// compacted file. Writers run concurrently so that batches are shared,
// and a compactor runs beside them.
func TestNoRowAcknowledgedBeforeSync(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.csv")
	d := newRecDisk()
	m, err := open(d, path, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	const writers, per = 8, 25
	compacted := make(chan struct{}) // closed after the first compaction
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range per {
				if i == per/2 {
					<-compacted // so that some rows are written after a compaction
				}
				n := g*1000 + i
				for v := 1; v <= 2; v++ {
					r := versioned(n, v)
					if err := m.Put(r); err != nil {
						t.Errorf("Put %s v%d: %v", r.ID, v, err)
						return
					}
					if got, want := lastRow(d.image(path), r.ID), rowOf(t, r); !bytes.Equal(got, want) {
						t.Errorf("Put %s v%d returned before its row was synced: the synced file's last row for it is %q", r.ID, v, got)
						return
					}
				}
				if i%3 != 0 {
					continue
				}
				id := rec(n).ID
				if err := m.Delete(id); err != nil {
					t.Errorf("Delete %s: %v", id, err)
					return
				}
				// Compaction may have dropped every row of id since; then
				// the synced file holds none, which is as good.
				if row := lastRow(d.image(path), id); row != nil && !bytes.HasPrefix(row, []byte("del,")) {
					t.Errorf("Delete %s returned before its tombstone was synced: the synced file's last row for it is %q", id, row)
					return
				}
			}
		})
	}
	done := make(chan struct{})
	var compactions int
	var cwg sync.WaitGroup
	cwg.Go(func() {
		defer func() {
			if compactions == 0 {
				close(compacted)
			}
		}()
		for {
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
			if err := m.Compact(); err != nil {
				t.Errorf("Compact: %v", err)
				return
			}
			if compactions++; compactions == 1 {
				close(compacted)
			}
			d.mu.Lock()
			synced, now := d.durable[path], d.names[path]
			d.mu.Unlock()
			if synced != now {
				t.Errorf("Compact returned before the directory was synced after its rename: a power loss would bring back the old file")
				return
			}
		}
	})
	wg.Wait()
	close(done)
	cwg.Wait()
	if compactions == 0 {
		t.Fatal("no compaction ran beside the writers")
	}
	d.mu.Lock()
	syncs := d.syncs
	d.mu.Unlock()
	t.Logf("%d rows from %d writers, %d file syncs, %d compactions", writers*per*2+writers*((per+2)/3), writers, syncs, compactions)
}

// The directory is synced after the rename even when no row is written
// after the compaction, and the compacted file's rows are synced before
// the rename: a power loss right after Compact returns leaves the
// compacted file, complete.
func TestCompactDurableBeforeReturn(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.csv")
	d := newRecDisk()
	m, err := open(d, path, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for i := range 50 {
		mustPut(t, m, rec(i))
	}
	for i := range 25 {
		if err := m.Delete(rec(i).ID); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Compact(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if img := d.image(path); !bytes.Equal(img, data) {
		t.Fatalf("after Compact a power loss would leave %d bytes (%d rows), the file holds %d (%d rows)",
			len(img), bytes.Count(img, []byte("\n")), len(data), bytes.Count(data, []byte("\n")))
	}
}

// capture is one simulated power loss: the files as a power loss at that
// moment would leave them, and what the writers knew at that moment.
type capture struct {
	files map[string][]byte // base name → bytes
	torn  []byte            // the keymap with part of its unsynced tail kept, or nil
	acked map[string]int    // id → last acknowledged step (1, 2: put version; 3: deleted)
	sent  map[string]int    // id → last step sent
}

// A power loss at any moment, even with a batch written but not synced
// or a compaction half done, leaves files that Open reads back with every
// acknowledged change: each id at least at the step its writer was last
// told was done, and at most at the step it last sent. The simulation
// drops every write not synced and every directory change not synced;
// a second variant keeps a random part of the keymap's unsynced tail, as
// a disk may, which reads back as a torn last row.
func TestPowerLossKeepsAcknowledgedRows(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "k.csv")
	d := newRecDisk()
	var (
		acked, sent = map[string]int{}, map[string]int{} // guarded by d.mu
		captures    []*capture
		rnd         = rand.New(rand.NewPCG(1, 2))
	)
	d.event = func() {
		if rnd.IntN(8) != 0 || len(captures) >= 40 {
			return
		}
		c := &capture{files: map[string][]byte{}, acked: maps.Clone(acked), sent: maps.Clone(sent)}
		for name, ino := range d.durable {
			c.files[filepath.Base(name)] = ino.synced
		}
		if ino := d.durable[path]; ino != nil && ino == d.names[path] && len(ino.data) > len(ino.synced) && bytes.HasPrefix(ino.data, ino.synced) {
			keep := len(ino.synced) + 1 + rnd.IntN(len(ino.data)-len(ino.synced))
			c.torn = bytes.Clone(ino.data[:keep])
		}
		captures = append(captures, c)
	}
	m, err := open(d, path, quiet)
	if err != nil {
		t.Fatal(err)
	}
	step := func(id string, s int, done bool) {
		d.mu.Lock()
		if done {
			acked[id] = s
		} else {
			sent[id] = s
		}
		d.mu.Unlock()
	}
	const writers, per = 6, 20
	compacted := make(chan struct{}) // closed after the first compaction
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range per {
				if i == per/2 {
					<-compacted
				}
				n := g*1000 + i
				for v := 1; v <= 2; v++ {
					r := versioned(n, v)
					step(r.ID, v, false)
					if err := m.Put(r); err != nil {
						t.Errorf("Put: %v", err)
						return
					}
					step(r.ID, v, true)
				}
				if i%2 == 0 {
					id := rec(n).ID
					step(id, 3, false)
					if err := m.Delete(id); err != nil {
						t.Errorf("Delete: %v", err)
						return
					}
					step(id, 3, true)
				}
			}
		})
	}
	done := make(chan struct{})
	var cwg sync.WaitGroup
	cwg.Go(func() {
		for k := 0; ; k++ {
			select {
			case <-done:
				return
			case <-time.After(2 * time.Millisecond):
			}
			err := m.Compact()
			if k == 0 {
				close(compacted)
			}
			if err != nil {
				t.Errorf("Compact: %v", err)
				return
			}
		}
	})
	wg.Wait()
	close(done)
	cwg.Wait()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if len(captures) < 5 {
		t.Fatalf("only %d power losses simulated", len(captures))
	}
	torn := 0
	for k, c := range captures {
		check := func(variant string, keymap []byte) {
			cdir := filepath.Join(t.TempDir(), "crash")
			if err := os.MkdirAll(cdir, 0o700); err != nil {
				t.Fatal(err)
			}
			for name, data := range c.files {
				if err := os.WriteFile(filepath.Join(cdir, name), data, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if keymap != nil {
				if err := os.WriteFile(filepath.Join(cdir, filepath.Base(path)), keymap, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			what := fmt.Sprintf("power loss %d (%s, %d acknowledged ids)", k, variant, len(c.acked))
			r, err := Open(filepath.Join(cdir, filepath.Base(path)), quiet)
			if err != nil {
				t.Fatalf("%s: reopen: %v", what, err)
			}
			defer r.Close()
			for _, id := range slices.Sorted(maps.Keys(c.sent)) {
				lo, hi := c.acked[id], c.sent[id]
				got, ok := r.Get(id)
				switch {
				case ok:
					var v int
					if _, err := fmt.Sscanf(got.Name[len(got.Name)-2:], "v%d", &v); err != nil {
						t.Fatalf("%s: %s has name %q", what, id, got.Name)
					}
					if v < lo || v > hi {
						t.Fatalf("%s: %s is at version %d; acknowledged %d, sent %d (3 = deleted)", what, id, v, lo, hi)
					}
				case (lo == 1 || lo == 2) && hi < 3:
					t.Fatalf("%s: %s is missing; version %d was acknowledged and no delete sent", what, id, lo)
				}
			}
		}
		check("unsynced writes dropped", nil)
		if c.torn != nil {
			torn++
			check("part of the unsynced tail kept", c.torn)
		}
	}
	t.Logf("%d power losses simulated, %d of them with a torn tail", len(captures), torn)
}

// Concurrent writers share one fsync: while the first batch's fsync is
// held, writers that arrive queue in the next batch, and that batch is
// written with one write and one fsync. The test holds the fsync itself,
// so the disk's speed does not matter.
func TestGroupCommitSharesFsyncs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.csv")
	d := newRecDisk()
	m, err := open(d, path, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	release := make(chan struct{})
	held := make(chan struct{}, 1)
	var once sync.Once
	d.blockSync = func(*recFile) {
		once.Do(func() {
			held <- struct{}{}
			<-release
		})
	}
	syncsBefore, fsyncsBefore := d.syncs, m.fsyncs.Load()

	const writers = 16
	var wg sync.WaitGroup
	wg.Go(func() { mustPut(t, m, rec(0)) }) // its batch's fsync is held
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the first Put did not fsync within 10 s")
	}
	for g := 1; g < writers; g++ {
		wg.Go(func() { mustPut(t, m, rec(g)) })
	}
	// Wait until all the others are queued in the next batch.
	deadline := time.Now().Add(10 * time.Second)
	for {
		m.wmu.Lock()
		queued := 0
		if m.pending != nil {
			queued = len(m.pending.ops)
		}
		m.wmu.Unlock()
		if queued == writers-1 {
			break
		}
		if time.Now().After(deadline) {
			close(release)
			t.Fatalf("%d of %d writers queued behind the held fsync after 10 s", queued, writers-1)
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()

	d.mu.Lock()
	syncs := d.syncs - syncsBefore
	d.mu.Unlock()
	if fsyncs := m.fsyncs.Load() - fsyncsBefore; syncs != 2 || fsyncs != 2 {
		t.Fatalf("%d rows took %d file syncs (%d batches); want 2: the held one and one shared by the %d queued writers",
			writers, syncs, fsyncs, writers-1)
	}
	for g := range writers {
		if row := lastRow(d.image(path), rec(g).ID); row == nil {
			t.Fatalf("row %d is not on disk", g)
		}
	}
}
