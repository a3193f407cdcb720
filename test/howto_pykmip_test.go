package test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestHowtoPyKMIP runs docs/howto-pykmip.md as written: a token, certificates, the config,
// `serve`, and Debian's PyKMIP creating, encrypting, signing; openssl checks the signature.
func TestHowtoPyKMIP(t *testing.T) {
	work, out := howtoRun(t, "howto-pykmip.md", nil, nil)
	for _, want := range []string{
		`signer "hsm": token "kmip-demo"`, "KMIP yes  CreateKeyPair RSA, Sign PKCS#1 v1.5 (Krill)", "production checks: ok",
		"AES-GCM with", "Get of the AES key refused: ResultReason.PERMISSION_DENIED",
		"verified by the server", "Verified OK", "demo-rsa-priv", "demo-aes",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the how-to's output lacks %q:\n%s", want, out)
		}
	}
	audit, err := os.ReadFile(filepath.Join(work, "audit.log"))
	if err != nil || !strings.Contains(string(audit), `"Sign"`) {
		t.Errorf("audit log: %v\n%s", err, audit)
	}
}
