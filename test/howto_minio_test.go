package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// mcVersion is the mc that the MinIO release of minio_test.go requires in its go.mod.
const mcVersion = "v0.0.0-20250313080218-cf909e1063a9"

// mcBinary builds mc from the Go module proxy once, cached like MinIO.
func mcBinary(t *testing.T) string {
	t.Helper()
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatal(err)
		}
		cache = filepath.Join(home, ".cache")
	}
	dir := filepath.Join(cache, "p11bridge", "mc-"+mcVersion)
	bin := filepath.Join(dir, "mc")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	t.Logf("building mc %s into %s (once; takes a few minutes)", mcVersion, dir)
	cmd := exec.Command("go", "install", "github.com/minio/mc@"+mcVersion)
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=-buildvcs=false", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build mc: %v\n%s", err, out)
	}
	return bin
}

// TestHowtoMinIO runs docs/howto-minio.md as written with a real MinIO and mc.
func TestHowtoMinIO(t *testing.T) {
	minioDir := filepath.Dir(minioBinary(t))
	mcDir := filepath.Dir(mcBinary(t))
	work, out := howtoRun(t, "howto-minio.md", []string{minioDir, mcDir}, nil)
	for _, want := range []string{
		"KES  yes  keys: create, generate, encrypt, decrypt", "Added `local` successfully",
		"minio-default-key", "backup-key", "Encryption ✔", "Decryption ✔",
		"Auto encryption 'sse-kms' is enabled with KeyID: backup-key",
		"Encryption: SSE-KMS (arn:aws:kms:backup-key)", "nightly dump",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the how-to's output lacks %q:\n%s", want, out)
		}
	}
	// Both keys are KES keys in the keymap (AES + HMAC objects in the token).
	km, err := os.ReadFile(filepath.Join(work, "keymap.csv"))
	if err != nil || !strings.Contains(string(km), "minio-default-key") || !strings.Contains(string(km), "backup-key") {
		t.Errorf("keymap: %v\n%s", err, km)
	}
}
