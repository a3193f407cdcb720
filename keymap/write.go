package keymap

import (
	"time"

	"github.com/ansel1/merry/v2"
)

// batch is a group of rows written with one write and one fsync.
//
// Group commit without a background goroutine: the writer that opens a
// batch is its leader. It waits for the file (flushSem), and meanwhile
// every other writer appends its row to the same batch and waits on done.
// The leader then seals the batch, writes and fsyncs it, applies it to
// memory, and wakes everyone. While one batch is being fsynced, the next
// one fills up, so N concurrent writers share about one fsync per round.
type batch struct {
	buf  []byte
	ops  []op
	done chan struct{}
	err  error
}

// op is one operation of a batch: a put of st, or a delete (st nil).
type op struct {
	id string
	st *stored
}

// Put stores r. The row is on disk (written and fsynced) before Put
// returns, and only then visible to readers. Put keeps its own copy of r;
// the caller may change r afterwards. A zero Updated is set to now.
func (m *Map) Put(r Record) error {
	rec, err := prepare(r, time.Now())
	if err != nil {
		return merry.Prependf(err, "keymap %s: put %q", m.path, r.ID)
	}
	row := appendPut(make([]byte, 0, 256), rec)
	return m.commit(op{id: rec.id, st: rec}, row)
}

// Delete removes the record with id by writing a tombstone row. It returns
// an error wrapping ErrNotFound when no live record has that id.
func (m *Map) Delete(id string) error {
	row := appendDel(make([]byte, 0, 96), id, time.Now().UTC())
	return m.commit(op{id: id}, row)
}

// commit queues one row and returns once its batch is durable.
func (m *Map) commit(o op, row []byte) error {
	m.wmu.Lock()
	if m.closed {
		m.wmu.Unlock()
		return merry.Prependf(ErrClosed, "keymap %s: %s %q", m.path, o.verb(), o.id)
	}
	if o.st == nil && !m.existsLocked(o.id) {
		m.wmu.Unlock()
		return merry.Prependf(ErrNotFound, "keymap %s: delete %q", m.path, o.id)
	}
	in := m.inflight[o.id]
	in.n++
	in.exists = o.st != nil
	m.inflight[o.id] = in

	b := m.pending
	leader := b == nil
	if leader {
		b = &batch{done: make(chan struct{})}
		m.pending = b
	}
	b.buf = append(b.buf, row...)
	b.ops = append(b.ops, o)
	m.wmu.Unlock()

	if !leader {
		<-b.done
		return b.err
	}
	m.flushSem <- struct{}{}
	m.wmu.Lock()
	m.pending = nil // seal: later writers start the next batch
	m.wmu.Unlock()
	b.err = m.flush(b)
	<-m.flushSem

	m.wmu.Lock()
	for _, o := range b.ops {
		in := m.inflight[o.id]
		if in.n--; in.n <= 0 {
			delete(m.inflight, o.id)
		} else {
			m.inflight[o.id] = in
		}
	}
	m.wmu.Unlock()
	close(b.done)
	return b.err
}

func (o op) verb() string {
	if o.st == nil {
		return "delete"
	}
	return "put"
}

// existsLocked reports whether id will exist once the queued operations
// are applied. Needs wmu held.
func (m *Map) existsLocked(id string) bool {
	if in, ok := m.inflight[id]; ok {
		return in.exists
	}
	m.mu.RLock()
	_, ok := m.recs[id]
	m.mu.RUnlock()
	return ok
}

// flush writes and fsyncs b, then applies it to memory. Needs flushSem.
func (m *Map) flush(b *batch) error {
	if m.f == nil {
		return merry.Prependf(ErrClosed, "keymap %s: write", m.path)
	}
	if m.broken != nil {
		return m.broken
	}
	if m.torn {
		// Cut the torn row left by a crash so the file stays parseable.
		if err := m.f.Truncate(m.size); err != nil {
			return merry.Prependf(err, "keymap %s: cut torn last line", m.path)
		}
		m.torn = false
	}
	if _, err := m.f.WriteAt(b.buf, m.size); err != nil {
		return m.undo(err, "write")
	}
	if err := m.f.Sync(); err != nil {
		return m.undo(err, "fsync")
	}
	m.size += int64(len(b.buf))
	m.fsyncs.Add(1)
	m.mu.Lock()
	for _, o := range b.ops {
		m.apply(o.id, o.st)
	}
	m.mu.Unlock()
	return nil
}

// undo cuts a failed batch off the file. If even that fails, what is on
// disk is unknown, so the map refuses further writes until reopened.
func (m *Map) undo(cause error, what string) error {
	err := merry.Prependf(cause, "keymap %s: %s", m.path, what)
	if terr := m.f.Truncate(m.size); terr != nil {
		m.broken = merry.Prependf(terr, "keymap %s: unusable after failed %s (%v); reopen to recover", m.path, what, cause)
	} else if serr := m.f.Sync(); serr != nil {
		m.broken = merry.Prependf(serr, "keymap %s: unusable after failed %s (%v); reopen to recover", m.path, what, cause)
	}
	return err
}

// Close waits for queued writes, then closes the file. Later Put, Delete
// and Compact calls return ErrClosed; reads keep working on the in-memory
// state. Close is idempotent.
func (m *Map) Close() error {
	m.wmu.Lock()
	if m.closed {
		m.wmu.Unlock()
		return nil
	}
	m.closed = true
	b := m.pending
	m.wmu.Unlock()
	if b != nil {
		<-b.done
	}
	m.flushSem <- struct{}{}
	f := m.f
	m.f = nil
	<-m.flushSem
	if f == nil {
		return nil
	}
	if err := f.Close(); err != nil {
		return merry.Prependf(err, "keymap %s: close", m.path)
	}
	return nil
}
