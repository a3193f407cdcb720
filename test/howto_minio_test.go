package test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// mcVersion is the mc that the MinIO release of minio_test.go requires in its go.mod.
const mcVersion = "v0.0.0-20250313080218-cf909e1063a9"

// mcBinary builds mc from the Go module proxy once, cached like MinIO.
func mcBinary(t *testing.T) string {
	return cachedTool(t, "mc", "github.com/minio/mc", mcVersion)
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
