//go:build unix

package conf

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Opening a FIFO blocks until a writer comes; pin_file must not hang on one.
func TestPINFileFIFO(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mkfifo(filepath.Join(dir, "pin"), 0o600); err != nil {
		t.Skip("mkfifo:", err)
	}
	src := cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`, `  pin_file = "pin"`, `}`)
	_, err := Parse([]byte(src), filepath.Join(dir, "c.hcl"))
	if err == nil || !strings.Contains(err.Error(), `c.hcl:5:14: cannot read the pin_file of signer "a"; read `+filepath.Join(dir, "pin")+": not a regular file") {
		t.Errorf("got %v", err)
	}
}
