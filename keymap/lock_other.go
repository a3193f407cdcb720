//go:build !unix

package keymap

// lockFile is a no-op where flock is unavailable.
func lockFile(file) error { return nil }
