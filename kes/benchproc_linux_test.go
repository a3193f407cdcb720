package kes

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// childAttr makes the kernel kill the benchmarks' server processes (KES, p11bridge's bench
// server) when the test binary dies without stopping them, e.g. at a -timeout panic: on a shared
// machine an orphan would keep a port and memory until someone notices.
func childAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} }

// cpuNow is the CPU time (user and system) used so far by this process (self) and by the server
// processes the benchmarks started (servers). ok is false when a server's time cannot be read.
func cpuNow() (self, servers time.Duration, ok bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0, false
	}
	self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	for _, cmd := range []*exec.Cmd{kesRef.cmd, benchSrv.cmd} {
		if cmd == nil || cmd.Process == nil {
			continue
		}
		t, err := procCPU(cmd.Process.Pid)
		if err != nil {
			return self, servers, false
		}
		servers += t
	}
	return self, servers, true
}

// procCPU reads a running child's CPU time from /proc (RUSAGE_CHILDREN only counts children
// already waited for): utime and stime are fields 14 and 15 of /proc/PID/stat, in clock ticks of
// 1/100 s on Linux.
func procCPU(pid int) (time.Duration, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(stat, ')') // the command name may hold spaces and parentheses
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	return time.Duration(ut+st) * (time.Second / 100), nil
}
