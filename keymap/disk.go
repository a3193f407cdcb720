package keymap

import (
	"io"
	"io/fs"
	"os"
)

// disk is what a Map asks of the file system to make rows durable: the
// files it writes and syncs (the keymap, and the temporary file that
// compaction fills), the rename that puts a compacted file in place, and
// the directory sync that makes a create or a rename survive a power loss.
// osDisk is the real one. It is an interface so that a test double can
// record every write and sync and tell what a power loss would leave.
type disk interface {
	open(path string) (file, error)   // an existing file, read-write
	create(path string) (file, error) // a new file, mode 0600; fails if path exists
	createTemp(dir, pattern string) (file, error)
	rename(from, to string) error
	syncDir(dir string) error
}

// file is an open keymap file as the map uses it; *os.File is one.
type file interface {
	io.ReaderAt
	io.WriterAt
	io.Writer // compaction fills its new file in sequence
	Truncate(size int64) error
	Sync() error
	Close() error
	Stat() (fs.FileInfo, error)
	Fd() uintptr // for the lock
	Name() string
}

type osDisk struct{}

func (osDisk) open(path string) (file, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err // a nil *os.File must not become a non-nil file
	}
	return f, nil
}

func (osDisk) create(path string) (file, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	return f, nil
}

func (osDisk) createTemp(dir, pattern string) (file, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return f, nil
}

func (osDisk) rename(from, to string) error { return os.Rename(from, to) }

func (osDisk) syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
