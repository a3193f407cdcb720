//go:build unix

package keymap

import (
	"errors"
	"syscall"

	"github.com/ansel1/merry/v2"
)

// lockFile takes an exclusive advisory lock on f: two writers appending at
// their own idea of the end of the file would overwrite each other's rows.
// The lock goes away with the file descriptor.
func lockFile(f file) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EWOULDBLOCK):
			return merry.New("in use by another keymap (another process, or this one opened it twice)")
		case errors.Is(err, syscall.ENOTSUP), errors.Is(err, syscall.ENOLCK), errors.Is(err, syscall.EINVAL):
			return nil // the file system cannot lock; run unlocked
		default:
			return err
		}
	}
}
