package test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestHowtoRollover runs docs/howto-rollover.md as written: keys on HSM A, a rollover to HSM B by
// reloads, users moved to new keys, A removed, the data key intact on B.
func TestHowtoRollover(t *testing.T) {
	work, out := howtoRun(t, "howto-rollover.md", nil, nil)
	for _, want := range []string{
		`ROLLOVER in progress: new keys go to "hsm-b"`, "app-key-2", "ca-2026-priv",
		"the data key is intact, wrapped by app-key-2 on hsm-b", `default signer "hsm-b"`,
		`refused the new configuration and keeps the running one: reload: signer "hsm-a" still holds 1 active or pre-active keys`,
		"refused: app-key still lives on hsm-a", `applied the new configuration (default signer "hsm-b")`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the how-to's output lacks %q:\n%s", want, out)
		}
	}
	log, _ := os.ReadFile(filepath.Join(work, "bg-2.log"))
	if strings.Count(string(log), "configuration reloaded") != 2 || strings.Count(string(log), "configuration refused") != 1 {
		t.Errorf("the server's log does not show two applied reloads and one refused:\n%s", log)
	}
}
