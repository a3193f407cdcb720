package keymap

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"strconv"
	"sync"

	"github.com/ansel1/merry/v2"
)

// chunkSize is how much of the file one parse job covers. Big enough that
// the per-chunk overhead vanishes, small enough to spread a file over cores.
const chunkSize = 4 << 20

// chunk is a run of whole lines handed to a parse worker.
type chunk struct {
	data []byte
	n    int   // len(data); data is dropped once parsed
	line int   // line number of data's first line
	off  int64 // file offset of data[0]

	rows []parsed
	err  *loadError // first bad line in the chunk; rows stops before it
	done chan struct{}
}

// loadError locates a bad line.
type loadError struct {
	line       int
	start, end int64 // byte range of the line, newline included
	noNewline  bool
	row        *rowError
	text       []byte // start of the line, for the log
}

// loadResult is what Open learns from the file.
type loadResult struct {
	recs     map[string]*entry
	entries  []*entry // every entry inserted, in file order; deleted ones have st nil
	kids     int      // live records with a key id
	size     int64    // end of the last good row: the next write goes here
	fileSize int64
	rows     int // good data rows read
	fresh    bool
}

// load reads the whole file: header, then every row in order. Rows are
// parsed by GOMAXPROCS workers and applied by this goroutine in file order.
// The last line is forgiven when a crash could have torn it; any other bad
// line fails the load with its line number.
func (m *Map) load(f file) (*loadResult, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, merry.Prependf(err, "keymap %s: stat", m.path)
	}
	res := &loadResult{recs: map[string]*entry{}, fileSize: st.Size()}

	// The header decides the format before anything else is read.
	head := make([]byte, len(header)+32)
	n, err := f.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, merry.Prependf(err, "keymap %s: read", m.path)
	}
	head = head[:n]
	if n < len(header) && bytes.HasPrefix([]byte(header), head) && int64(n) == res.fileSize {
		// Empty, or cut while the file was being created: no rows yet.
		if n > 0 {
			m.log.Warn("keymap: file holds only part of its header; starting empty", "path", m.path, "bytes", n)
		}
		res.fresh = true
		return res, nil
	}
	if err := m.checkHeader(head); err != nil {
		return nil, err
	}
	if res.fileSize == int64(len(header)) {
		res.size = res.fileSize
		return res, nil
	}

	workers := max(1, runtime.GOMAXPROCS(0))
	pl := newPool(3*workers + 2)
	work := make(chan *chunk, workers)
	ordered := make(chan *chunk, 2*workers)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := newDecoder()
			for c := range work {
				parseChunk(d, c, pl)
				close(c.done)
			}
		}()
	}
	var readErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(work)
		defer close(ordered)
		readErr = readChunks(f, res.fileSize, pl, func(c *chunk) bool {
			select {
			case <-stop:
				return false
			default:
			}
			select {
			case ordered <- c:
			case <-stop:
				return false
			}
			work <- c
			return true
		})
	}()

	// Apply in file order. On the first bad line, stop the pipeline.
	var lerr *loadError
	size := int64(len(header))
	var recs map[string]*entry
	for c := range ordered {
		if lerr != nil {
			continue // drain so the reader can finish
		}
		<-c.done
		if recs == nil {
			// Size the map from the first chunk's row density: growing a
			// map of a million entries rehashes it several times. Capped,
			// since maps never shrink and a log of many updates to few ids
			// would overestimate.
			est := min(int64(len(c.rows)+1)*(res.fileSize/int64(max(c.n, 1))), 1<<21)
			recs = make(map[string]*entry, est)
			res.entries = make([]*entry, 0, est)
		}
		for _, p := range c.rows {
			if p.e == nil {
				if e := recs[p.id]; e != nil {
					e.st = nil // tells buildIndexes to skip it
					delete(recs, p.id)
				}
			} else if e := recs[p.id]; e != nil {
				e.st = p.e.st
			} else {
				recs[p.id] = p.e
				res.entries = append(res.entries, p.e)
			}
		}
		res.rows += len(c.rows)
		pl.putRows(c.rows)
		if c.err != nil {
			lerr = c.err
			size = c.err.start
			close(stop)
			continue
		}
		size = c.off + int64(c.n)
	}
	wg.Wait()
	if recs != nil {
		res.recs = recs
	}
	for _, e := range res.entries {
		if e.st != nil && e.st.kid != "" {
			res.kids++
		}
	}
	if readErr != nil {
		return nil, merry.Prependf(readErr, "keymap %s: read", m.path)
	}
	res.size = size
	if lerr == nil {
		return res, nil
	}
	torn := lerr.noNewline || (lerr.end == res.fileSize && lerr.row.torn)
	if !torn {
		return nil, merry.Wrap(ErrCorrupt, merry.WithMessagef("keymap %s line %d: %s", m.path, lerr.line, lerr.row.msg))
	}
	why := lerr.row.msg
	if lerr.noNewline {
		why = "no newline at end of file"
	}
	// Keep what is dropped in the log: it was never acknowledged, but an
	// operator may still want to see it.
	msg := "keymap: dropping torn last line (interrupted write); it is removed on the next write"
	if m.readOnly {
		// Most likely a row being appended right now by the map's owner.
		msg = "keymap: leaving out an incomplete last line (a write in progress, or an interrupted one)"
	}
	m.log.Warn(msg, "path", m.path, "line", lerr.line, "offset", lerr.start, "bytes", lerr.end-lerr.start,
		"reason", why, "content", strconv.Quote(string(lerr.text)))
	return res, nil
}

// checkHeader refuses files that are not keymaps or are of a newer version.
func (m *Map) checkHeader(head []byte) error {
	first, rest, _ := bytes.Cut(head, []byte("\n"))
	if string(first) != versionLine {
		if v, ok := bytes.CutPrefix(first, []byte(magic)); ok {
			if n, err := strconv.Atoi(string(v)); err == nil && n > version {
				return merry.Wrap(ErrVersion, merry.WithMessagef(
					"keymap %s line 1: format version %d is newer than this program reads (v%d); upgrade p11bridge",
					m.path, n, version))
			}
		}
		return merry.Wrap(ErrCorrupt, merry.WithMessagef("keymap %s line 1: not a p11bridge keymap (want %q)", m.path, versionLine))
	}
	cols, _, ok := bytes.Cut(rest, []byte("\n"))
	if !ok || string(cols) != columnsLine {
		return merry.Wrap(ErrCorrupt, merry.WithMessagef("keymap %s line 2: unexpected column line (want %q)", m.path, columnsLine))
	}
	return nil
}

// readChunks cuts the file after the header into chunks of whole lines and
// hands them to emit in order, until emit returns false.
func readChunks(f io.ReaderAt, fileSize int64, pl *pool, emit func(*chunk) bool) error {
	off := int64(len(header))
	line := headerLines + 1
	var carry, grown []byte
	for off+int64(len(carry)) < fileSize || len(carry) > 0 {
		want := max(chunkSize, 2*len(carry))
		buf := pl.buf(want)[:len(carry)]
		copy(buf, carry) // may overlap: carry can be the tail of this very buffer
		if grown != nil {
			pl.putBuf(grown) // a too-short buffer that was never emitted
			grown = nil
		}
		n, err := f.ReadAt(buf[len(carry):want], off+int64(len(carry)))
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		buf = buf[:len(carry)+n]
		eof := off+int64(len(buf)) >= fileSize || n == 0
		cut := bytes.LastIndexByte(buf, '\n') + 1
		if eof {
			cut = len(buf)
		} else if cut == 0 {
			carry, grown = buf, buf // one line longer than the buffer: read more
			continue
		}
		c := &chunk{data: buf[:cut], n: cut, line: line, off: off, done: make(chan struct{})}
		lines := bytes.Count(c.data, []byte("\n")) // before emit: the worker drops c.data
		if !emit(c) {
			return nil
		}
		line += lines
		off += int64(cut)
		carry = buf[cut:]
		if eof {
			break
		}
	}
	return nil
}

// parseChunk decodes c's lines until the first bad one.
func parseChunk(d *decoder, c *chunk, pl *pool) {
	data := c.data
	c.rows = pl.rows()
	line := c.line
	for pos := 0; pos < len(data); line++ {
		nl := bytes.IndexByte(data[pos:], '\n')
		end, next := pos+nl, pos+nl+1
		if nl < 0 {
			end, next = len(data), len(data)
		}
		p, rerr := d.parse(data[pos:end])
		if rerr != nil || nl < 0 {
			if rerr == nil {
				rerr = tornRow("no newline at end of file")
			}
			text := data[pos:end]
			if len(text) > 512 {
				text = text[:512]
			}
			c.err = &loadError{
				line: line, start: c.off + int64(pos), end: c.off + int64(next),
				noNewline: nl < 0, row: rerr, text: bytes.Clone(text),
			}
			break
		}
		c.rows = append(c.rows, p)
		pos = next
	}
	// Rows hold copies: the buffer can carry the next chunk.
	pl.putBuf(c.data[:0])
	c.data = nil
}

// pool recycles the loader's chunk buffers and row slices. Without it a
// file turns into as much garbage as its size, and the collector runs
// several extra cycles over the growing map while it loads.
type pool struct {
	bufs chan []byte
	rs   chan []parsed
}

func newPool(n int) *pool {
	return &pool{bufs: make(chan []byte, n), rs: make(chan []parsed, n)}
}

func (p *pool) buf(n int) []byte {
	select {
	case b := <-p.bufs:
		if cap(b) >= n {
			return b[:0]
		}
	default:
	}
	return make([]byte, 0, n)
}

func (p *pool) putBuf(b []byte) {
	if cap(b) > 2*chunkSize {
		return // an outsized buffer from one long line: let it go
	}
	select {
	case p.bufs <- b:
	default:
	}
}

func (p *pool) rows() []parsed {
	select {
	case r := <-p.rs:
		return r
	default:
		return make([]parsed, 0, chunkSize/128)
	}
}

func (p *pool) putRows(r []parsed) {
	clear(r)
	select {
	case p.rs <- r[:0]:
	default:
	}
}
