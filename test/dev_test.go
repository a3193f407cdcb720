package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDevModeStartsAndReuses is what `make run` does: dev mode creates a token, certificates and
// client files, serves, and a second run reuses all of it.
func TestDevModeStartsAndReuses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dev")
	kmip, kes, ops := freeAddr(t), freeAddr(t), freeAddr(t)
	args := []string{"dev", "--dir", dir, "--kmip", kmip, "--kes", kes, "--ops", ops}
	p := start(t, nil, args...)
	waitReady(t, p, ops)
	checkDevFiles(t, dir)
	out := p.Output()
	for _, want := range []string{"PyKMIP", "MinIO", "pykmip.conf", "minio.env", kmip, kes} {
		if !strings.Contains(out, want) {
			t.Errorf("dev mode output does not mention %q:\n%s", want, out)
		}
	}
	env := readEnvFile(t, filepath.Join(dir, "minio.env"))
	if env["MINIO_KMS_KES_ENDPOINT"] != "https://"+kes || !strings.HasPrefix(env["MINIO_KMS_KES_API_KEY"], "kes:v1:") ||
		env["MINIO_KMS_KES_KEY_NAME"] == "" || env["MINIO_KMS_KES_CAPATH"] != filepath.Join(dir, "tls/ca.pem") {
		t.Errorf("minio.env: %v", env)
	}
	serial := tokenSerial(t, dir)
	ca, _ := os.ReadFile(filepath.Join(dir, "tls/ca.pem"))
	p.stop(t)
	if p.cmd.ProcessState.ExitCode() != 0 {
		t.Fatalf("dev mode exited with %v after SIGTERM\n%s", p.cmd.ProcessState, p.Output())
	}

	p2 := start(t, nil, args...)
	waitReady(t, p2, ops)
	if got := tokenSerial(t, dir); got != serial {
		t.Errorf("second run made a new token: serial %s, was %s", got, serial)
	}
	if ca2, _ := os.ReadFile(filepath.Join(dir, "tls/ca.pem")); string(ca2) != string(ca) {
		t.Error("second run made a new CA")
	}
}

// devFileModes is the mode of each file dev mode writes: secrets, and everything that names or
// holds them, 0600; certificates 0644 (a stricter umask may take the group and others' read away);
// directories 0700.
var devFileModes = map[string]os.FileMode{
	"softhsm":                   os.ModeDir | 0o700,
	"softhsm/p11bridge-dev.pin": 0o600,
	"tls":                       os.ModeDir | 0o700,
	"tls/ca.pem":                0o644,
	"tls/server.pem":            0o644,
	"tls/server-key.pem":        0o600,
	"tls/admin.pem":             0o644,
	"tls/admin-key.pem":         0o600,
	"tls/pykmip.pem":            0o644,
	"tls/pykmip-key.pem":        0o600,
	"minio.key":                 0o600,
	"minio.env":                 0o600,
	"pykmip.conf":               0o600,
	"p11bridge.hcl":             0o600,
	"keymap.csv":                0o600,
	"audit.log":                 0o600,
}

// checkDevFiles fails for every file of the README's dev-mode table that is missing from dir,
// and for every file whose mode is not the one devFileModes gives it (or looser, for certificates).
func checkDevFiles(t *testing.T, dir string) {
	t.Helper()
	listed := readmeDevFiles(t)
	for _, f := range listed {
		if _, ok := devFileModes[f]; !ok {
			t.Errorf("README's dev-mode table lists %s, for which the test knows no mode: add it to devFileModes", f)
		}
	}
	for f, want := range devFileModes {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Errorf("dev mode did not write %s: %v", f, err)
			continue
		}
		got := st.Mode() & (os.ModeDir | os.ModePerm)
		cert := want == 0o644
		if cert && (got&^0o044 != 0o600) || !cert && got != want {
			t.Errorf("%s is mode %v; want %v", f, got, want)
		}
	}
	if len(listed) < 10 {
		t.Errorf("read only %v from the README's dev-mode table", listed)
	}
}

// readmeDevFiles returns the files of the README's dev-mode table (the `…` names of its first
// column; "softhsm/" is the directory).
func readmeDevFiles(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(b), "\n| file | what |\n")
	if !ok {
		t.Fatal("README.md has no dev-mode file table (| file | what |)")
	}
	table, _, _ = strings.Cut(table, "\n\n")
	var files []string
	for _, row := range strings.Split(table, "\n") {
		cells := strings.Split(row, "|")
		if len(cells) < 3 || strings.HasPrefix(strings.TrimSpace(cells[1]), "---") {
			continue
		}
		for i, part := range strings.Split(cells[1], "`") {
			if i%2 == 1 {
				files = append(files, strings.TrimSuffix(part, "/"))
			}
		}
	}
	return files
}

func tokenSerial(t *testing.T, dir string) string {
	t.Helper()
	cmd := exec.Command("softhsm2-util", "--show-slots")
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+filepath.Join(dir, "softhsm/softhsm2.conf"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("softhsm2-util: %v\n%s", err, out)
	}
	var serials []string
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), ":"); ok && strings.TrimSpace(k) == "Serial number" && strings.TrimSpace(v) != "" {
			serials = append(serials, strings.TrimSpace(v))
		}
	}
	if len(serials) != 1 {
		t.Fatalf("want one initialized token in the dev directory, found %v", serials)
	}
	return serials[0]
}
