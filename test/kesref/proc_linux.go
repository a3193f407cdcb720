package kesref

import "syscall"

// childAttr makes the kernel end a server with the process that started it, however that ends.
func childAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} }
