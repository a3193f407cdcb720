//go:build !linux

package kesref

import "syscall"

func childAttr() *syscall.SysProcAttr { return nil }
