//go:build unix

package keymap

import (
	"syscall"
	"time"
)

// cpuTime is the CPU time (user + system) the process has used: on a busy
// machine it says more about the code than the wall clock does.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
