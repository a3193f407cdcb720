package kes

import (
	"hash/maphash"
	"sync"
)

// nameLocks serializes create, import, delete and rotate per key name, so two concurrent creates
// of one name cannot both see "absent" and make two keys. It is striped (a name always maps to
// the same mutex; unrelated names rarely share one) and package-wide, so the CLI's Rotate and every
// Handler in the process agree. Other processes on the same keymap are not covered: the keymap has
// no compare-and-put (see docs/kes.md).
var nameLocks struct {
	seed maphash.Seed
	mu   [64]sync.Mutex
}

func init() { nameLocks.seed = maphash.MakeSeed() }

func lockName(name string) func() {
	m := &nameLocks.mu[maphash.String(nameLocks.seed, name)%uint64(len(nameLocks.mu))]
	m.Lock()
	return m.Unlock
}
