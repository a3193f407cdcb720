package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// readmeBlock returns the indented code block that follows heading in README.md.
func readmeBlock(t *testing.T, heading string) string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), heading+"\n")
	if !ok {
		t.Fatalf("README.md has no %q", heading)
	}
	var lines []string
	started := false
	for _, l := range strings.Split(rest, "\n") {
		if strings.HasPrefix(l, "    ") {
			started = true
			lines = append(lines, strings.TrimPrefix(l, "    "))
			continue
		}
		if started && l != "" {
			break
		}
	}
	return strings.Join(lines, "\n") + "\n"
}

// TestReadmePyKMIPWithDevMode runs the README's PyKMIP session, as written, against dev mode:
// pykmip.conf works and dev mode serves KMIP.
func TestReadmePyKMIPWithDevMode(t *testing.T) {
	work := t.TempDir()
	kmip, kes, ops := freeAddr(t), freeAddr(t), freeAddr(t)
	p := start(t, nil, "dev", "--dir", filepath.Join(work, ".p11bridge-dev"), "--kmip", kmip, "--kes", kes, "--ops", ops)
	waitReady(t, p, ops)
	script := readmeBlock(t, "### Connect PyKMIP")
	if !strings.Contains(script, "pykmip.conf") {
		t.Fatalf("the README block is not the PyKMIP session:\n%s", script)
	}
	cmd := exec.Command("bash", "-e", "-c", script)
	cmd.Dir = work // the README runs from the directory that holds .p11bridge-dev
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("README PyKMIP session: %v\n%s\n--- server ---\n%s", err, out, p.Output())
	}
	fields := strings.Fields(string(out))
	if len(fields) < 2 || len(fields[0]) != 40 {
		t.Fatalf("expected a unique identifier and a ciphertext, got:\n%s", out)
	}
}
