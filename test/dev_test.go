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
	for _, f := range []string{"tls/ca.pem", "tls/admin.pem", "tls/admin-key.pem", "tls/server.pem", "pykmip.conf", "minio.env", "p11bridge.hcl", "softhsm/p11bridge-dev.pin"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("dev mode did not write %s: %v", f, err)
		}
	}
	for _, f := range []string{"tls/admin-key.pem", "tls/server-key.pem", "softhsm/p11bridge-dev.pin", "minio.env"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err == nil && st.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s is mode %v; secrets must be 0600", f, st.Mode().Perm())
		}
	}
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
