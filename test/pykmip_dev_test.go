package test

import (
	"encoding/pem"
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

// TestPyKMIPEveryMethodWithDevMode runs, against dev mode at KMIP 1.2 and with the identity in
// pykmip.conf, every method of PyKMIP's ProxyKmipClient that pykmip-server serves (the script of
// the KMIP front end's own test: create, create_key_pair, register of every object kind, get —
// plain and wrapped — rekey, derive_key, locate, check, activate, revoke, destroy, the attribute
// methods, encrypt, decrypt, sign, signature_verify, mac, Query and DiscoverVersions). Dev mode's
// PyKMIP identity may export; a production policy without export = true may not (TestExportPolicy).
func TestPyKMIPEveryMethodWithDevMode(t *testing.T) {
	work := t.TempDir()
	dir := filepath.Join(work, ".p11bridge-dev")
	kmip, kes, ops := freeAddr(t), freeAddr(t), freeAddr(t)
	p := start(t, nil, "dev", "--dir", dir, "--kmip", kmip, "--kes", kes, "--ops", ops)
	waitReady(t, p, ops)
	conf, err := os.ReadFile(filepath.Join(dir, "pykmip.conf"))
	if err != nil {
		t.Fatal(err)
	}
	get := func(k string) string {
		for _, l := range strings.Split(string(conf), "\n") {
			if v, ok := strings.CutPrefix(l, k+"="); ok {
				return v
			}
		}
		t.Fatalf("pykmip.conf has no %s", k)
		return ""
	}
	caPEM, err := os.ReadFile(get("ca_certs"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(caPEM)
	caDER := filepath.Join(work, "ca.der")
	if block == nil || os.WriteFile(caDER, block.Bytes, 0o644) != nil {
		t.Fatal("dev CA certificate does not decode")
	}
	cmd := exec.Command("/usr/bin/python3", "../ttlv/testdata/pykmip_ops.py", get("host"), get("port"), get("certfile"), get("keyfile"), get("ca_certs"), "KMIP_1_2", caDER)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("PyKMIP against dev mode: %v\n%s\n--- server ---\n%s", err, out, p.Output())
	}
	if !strings.Contains(string(out), `"rsa_priv"`) {
		t.Fatalf("the script ended without its summary:\n%s", out)
	}
}
