package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/p11bridge/p11bridge/conf"
)

// TestMakeInstall stages `make install` in a DESTDIR: the binary, a sandboxed systemd unit
// pointing at it, the example config with the files it names; a second install keeps an edited
// config. The installed binary reports the modules built into it, and the example config passes
// production mode's checks.
func TestMakeInstall(t *testing.T) {
	dest := t.TempDir()
	bin := filepath.Join(t.TempDir(), "p11bridge")
	install := func() {
		t.Helper()
		cmd := exec.Command("make", "-s", "install", "DESTDIR="+dest, "PREFIX=/usr", "BIN="+bin)
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make install: %v\n%s", err, out)
		}
	}
	install()
	modes := map[string]os.FileMode{
		"usr/bin/p11bridge":                        0o755,
		"usr/lib/systemd/system/p11bridge.service": 0o644,
		"etc/p11bridge":                            0o750 | os.ModeDir,
		"etc/p11bridge/p11bridge.hcl":              0o640,
		"etc/p11bridge/p11bridge.hcl.example":      0o640,
		"etc/p11bridge/p11bridge.env":              0o600,
		"etc/p11bridge/revoked.txt":                0o640,
		"usr/share/doc/p11bridge/README.md":        0o644,
	}
	for rel, want := range modes {
		st, err := os.Stat(filepath.Join(dest, rel))
		if err != nil {
			t.Errorf("not installed: %s", rel)
			continue
		}
		if got := st.Mode() & (os.ModePerm | os.ModeDir); got != want {
			t.Errorf("%s: mode %v, want %v", rel, got, want)
		}
	}

	unit, err := os.ReadFile(filepath.Join(dest, "usr/lib/systemd/system/p11bridge.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"ExecStart=/usr/bin/p11bridge serve --config /etc/p11bridge/p11bridge.hcl",
		"ExecReload=/bin/kill -HUP $MAINPID", "User=p11bridge", "StateDirectory=p11bridge",
		"ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectHome=yes", "CapabilityBoundingSet=\n",
		"SystemCallFilter=@system-service", "EnvironmentFile=-/etc/p11bridge/p11bridge.env",
	} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("the unit lacks %q", want)
		}
	}
	if strings.Contains(string(unit), "@") && regexp.MustCompile(`@[A-Z]+@`).Match(unit) {
		t.Errorf("the unit has unfilled placeholders:\n%s", unit)
	}
	// systemd's own review of the sandboxing, offline.
	out, err := exec.Command("systemd-analyze", "security", "--offline=true", "--root="+dest,
		filepath.Join(dest, "usr/lib/systemd/system/p11bridge.service")).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security (scripts/deps.sh test installs systemd): %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for p11bridge.service: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	if level, _ := strconv.ParseFloat(string(m[1]), 64); level > 2.0 {
		t.Errorf("systemd rates the unit's exposure %.1f (want ≤ 2.0, \"OK\"):\n%s", level, out)
	}

	// An edited config survives a second install; the example is refreshed.
	cfgPath := filepath.Join(dest, "etc/p11bridge/p11bridge.hcl")
	os.WriteFile(cfgPath, []byte("# edited\n"), 0o640)
	install()
	if b, _ := os.ReadFile(cfgPath); string(b) != "# edited\n" {
		t.Error("make install overwrote an existing config")
	}

	// The example config parses (with the PIN in the environment, as the unit provides it) and
	// production mode accepts it as it stands.
	t.Setenv("P11BRIDGE_PIN", "1234")
	cfg, err := conf.Load(filepath.Join(dest, "etc/p11bridge/p11bridge.hcl.example"))
	if err != nil {
		t.Fatalf("the installed example config: %v", err)
	}
	if err := cfg.Production(); err != nil {
		t.Errorf("production mode refuses the installed example:\n%v", err)
	}
	if cfg.TLS.KeyURI == "" || !cfg.TLS.FIPS || cfg.Keymap.Path != "/var/lib/p11bridge/keymap.csv" {
		t.Errorf("example: key %q fips %v keymap %q", cfg.TLS.KeyURI, cfg.TLS.FIPS, cfg.Keymap.Path)
	}

	// version: the build's version and the modules linked in.
	vout, err := exec.Command(filepath.Join(dest, "usr/bin/p11bridge"), "version").CombinedOutput()
	if err != nil {
		t.Fatalf("version: %v\n%s", err, vout)
	}
	lines := strings.Split(string(vout), "\n")
	if !strings.HasPrefix(lines[0], "p11bridge ") || lines[0] == "p11bridge dev" {
		t.Errorf("make install's binary does not carry the version from git describe: %q", lines[0])
	}
	for _, want := range []string{"built with go1.", "module github.com/p11bridge/p11bridge", "dependencies:",
		"  github.com/miekg/pkcs11 v1.1.2", "  github.com/hashicorp/hcl/v2 v2.25.0"} {
		if !strings.Contains(string(vout), want) {
			t.Errorf("version output lacks %q:\n%s", want, vout)
		}
	}
}
