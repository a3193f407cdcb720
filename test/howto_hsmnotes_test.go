package test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/p11bridge/p11bridge/server"
	"github.com/p11bridge/p11bridge/signer"
	"github.com/p11bridge/p11bridge/signer/softhsm"
)

// probeBlocks reads the <!-- probe: NAME --> blocks of docs/hsm-notes.md.
func probeBlocks(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile("../docs/hsm-notes.md")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	re := regexp.MustCompile("(?s)<!-- probe: (\\S+) -->\n```text\n(.*?)```\n")
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		out[m[1]] = m[2]
	}
	return out
}

var featureLine = regexp.MustCompile(`^  (yes|NO )  (.+)$`)

// TestHSMNotesProbes: the SoftHSM2 block of docs/hsm-notes.md is what `p11bridge check` prints on a
// SoftHSM2 token, and every other block's KES/KMIP/TLS lines are what the same code renders from
// that block's mechanism lines: the documented HSMs' blocks are derived, and must be derived right.
func TestHSMNotesProbes(t *testing.T) {
	blocks := probeBlocks(t)
	for _, name := range []string{"softhsm", "luna", "cloudhsm", "yubihsm2", "nitrokey"} {
		block, ok := blocks[name]
		if !ok {
			t.Errorf("docs/hsm-notes.md has no probe block %q", name)
			continue
		}
		p := signer.Probe{Features: map[string]bool{}}
		var features strings.Builder
		for _, l := range strings.Split(block, "\n") {
			if m := featureLine.FindStringSubmatch(l); m != nil {
				p.Features[m[2]] = m[1] == "yes"
				features.WriteString(l + "\n")
			}
		}
		if want := features.String() + server.Capabilities(p); block != want {
			t.Errorf("probe block %q is not what p11bridge renders from its mechanism lines:\n--- doc ---\n%s--- rendered ---\n%s", name, block, want)
		}
	}

	// The SoftHSM2 block, for real.
	dir := t.TempDir()
	tok, err := softhsm.Ensure(filepath.Join(dir, "hsm"), "notes")
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "c.hcl")
	os.WriteFile(cfg, []byte(fmt.Sprintf("signer \"softhsm\" {\n  module = %q\n  token_label = %q\n  pin_file = %q\n}\nkeymap { path = \"k.csv\" }\n",
		tok.Module, tok.Label, softhsm.PINFile(filepath.Dir(tok.Conf), tok.Label))), 0o600)
	out, code := runCmd(t, []string{"SOFTHSM2_CONF=" + tok.Conf}, "check", "--config", cfg)
	if code != 0 {
		t.Fatalf("check: %s", out)
	}
	_, probe, _ := strings.Cut(out, "logged in, ")
	_, probe, _ = strings.Cut(probe, "\n")
	if probe != blocks["softhsm"] {
		t.Errorf("`p11bridge check` on SoftHSM2 prints\n%s\nthe doc shows\n%s", probe, blocks["softhsm"])
	}
}
