package keymap

import (
	"bufio"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/ansel1/merry/v2"
)

// Compact rewrites the file with only the live rows, in ID order: into a
// temporary file in the same directory, fsynced, renamed over the keymap,
// then the directory is fsynced. Readers and writers keep going meanwhile:
// the snapshot is taken at a row boundary, and rows appended while the new
// file is written are copied over verbatim just before the rename; writers
// wait only for that copy, an fsync and the rename.
func (m *Map) Compact() error {
	m.compactMu.Lock()
	defer m.compactMu.Unlock()

	// Snapshot at a row boundary: memory holds exactly the rows before size.
	m.flushSem <- struct{}{}
	if err := m.writable(); err != nil {
		<-m.flushSem
		return err
	}
	start := m.size
	m.mu.RLock()
	recs := make([]*stored, 0, len(m.recs))
	for _, e := range m.recs {
		recs = append(recs, e.st)
	}
	m.mu.RUnlock()
	<-m.flushSem

	slices.SortFunc(recs, func(a, b *stored) int { return strings.Compare(a.id, b.id) })
	dir := filepath.Dir(m.path)
	tmp, err := m.disk.createTemp(dir, "."+filepath.Base(m.path)+".compact-*")
	if err != nil {
		return merry.Prependf(err, "keymap %s: compact", m.path)
	}
	keep := false
	defer func() {
		if !keep {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	// Lock the new file before it takes the keymap's name, so a second
	// process never finds it unlocked.
	if err := lockFile(tmp); err != nil {
		return merry.Prependf(err, "keymap %s: compact: lock %s", m.path, tmp.Name())
	}
	w := bufio.NewWriterSize(tmp, 1<<20)
	w.WriteString(header)
	size := int64(len(header)) // the new file's length, counted as it is written
	row := make([]byte, 0, 512)
	for _, r := range recs {
		row = appendPut(row[:0], r)
		w.Write(row)
		size += int64(len(row))
	}
	if err := w.Flush(); err != nil {
		return merry.Prependf(err, "keymap %s: compact: write %s", m.path, tmp.Name())
	}
	recs = nil
	// The bulk goes to disk before writers are held up; the fsync after
	// the tail copy below then has little left to do.
	if err := tmp.Sync(); err != nil {
		return merry.Prependf(err, "keymap %s: compact: fsync %s", m.path, tmp.Name())
	}

	m.flushSem <- struct{}{}
	defer func() { <-m.flushSem }()
	if err := m.writable(); err != nil {
		return err
	}
	// Rows committed since the snapshot: already in their final form.
	tail := m.size - start
	if tail > 0 {
		n, err := io.Copy(w, io.NewSectionReader(m.f, start, tail))
		if err == nil && n != tail {
			err = merry.Errorf("read %d of %d bytes", n, tail)
		}
		if err != nil {
			return merry.Prependf(err, "keymap %s: compact: copy new rows", m.path)
		}
		if err := w.Flush(); err != nil {
			return merry.Prependf(err, "keymap %s: compact: write %s", m.path, tmp.Name())
		}
		size += tail
	}
	if err := tmp.Sync(); err != nil {
		return merry.Prependf(err, "keymap %s: compact: fsync %s", m.path, tmp.Name())
	}
	if err := m.disk.rename(tmp.Name(), m.path); err != nil {
		return merry.Prependf(err, "keymap %s: compact: rename", m.path)
	}
	keep = true
	old := m.f
	m.f, m.size, m.torn = tmp, size, false
	old.Close()
	if err := m.disk.syncDir(dir); err != nil {
		// The rename may not survive a crash, and then rows written to the
		// new file from now on would be lost with it: stop writing.
		m.broken = merry.Prependf(err, "keymap %s: compact: fsync directory; reopen to recover", m.path)
		return m.broken
	}
	m.log.Info("keymap: compacted", "path", m.path, "live", m.Len(), "bytes_before", start+tail, "bytes_after", size)
	return nil
}

// writable reports why the file cannot be written to. Needs flushSem.
func (m *Map) writable() error {
	if m.f == nil {
		return merry.Prependf(ErrClosed, "keymap %s: compact", m.path)
	}
	return m.broken
}
