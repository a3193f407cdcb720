//go:build !linux

package kes

import (
	"syscall"
	"time"
)

// Elsewhere the server processes are not tied to the test binary's life, and CPU time per
// operation is not reported.
func childAttr() *syscall.SysProcAttr { return nil }

func cpuNow() (self, servers time.Duration, ok bool) { return 0, 0, false }
