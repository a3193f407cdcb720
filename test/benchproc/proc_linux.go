package benchproc

import "syscall"

// ChildAttr makes the kernel end a server with the process that started it, however that ends.
func ChildAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} }
