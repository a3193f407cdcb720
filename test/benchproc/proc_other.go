//go:build !linux

package benchproc

import "syscall"

// ChildAttr is the default elsewhere: the kernel has no parent-death signal.
func ChildAttr() *syscall.SysProcAttr { return nil }
