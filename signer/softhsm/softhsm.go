// Package softhsm creates and reuses SoftHSM2 tokens in a directory of their own: the token of
// dev mode and of every test. It drives softhsm2-util, so no PKCS#11 state is touched in-process.
package softhsm

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Module is where Debian's softhsm2 package puts the library.
const Module = "/usr/lib/softhsm/libsofthsm2.so"

// Token is an initialized SoftHSM2 token.
type Token struct {
	Module string
	Conf   string // the softhsm2.conf every process using the token must name in SOFTHSM2_CONF
	Label  string
	PIN    string
	Serial string
}

// Ensure makes dir hold a SoftHSM2 configuration and a token labelled label, creating what is
// missing. PINs are random and kept in dir/<label>.pin (mode 0600), so a second call reuses the token.
func Ensure(dir, label string) (*Token, error) {
	if _, err := os.Stat(Module); err != nil {
		return nil, fmt.Errorf("softhsm2 is not installed (%s: %v); run scripts/deps.sh", Module, err)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	tokdir := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokdir, 0o700); err != nil {
		return nil, fmt.Errorf("softhsm: %w", err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	want := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokdir)
	if old, err := os.ReadFile(conf); err != nil || string(old) != want {
		if err := os.WriteFile(conf, []byte(want), 0o600); err != nil {
			return nil, fmt.Errorf("softhsm: write %s: %w", conf, err)
		}
	}
	t := &Token{Module: Module, Conf: conf, Label: label}
	pinFile := filepath.Join(dir, label+".pin")
	if pin, err := os.ReadFile(pinFile); err == nil {
		t.PIN = strings.TrimSpace(string(pin))
		if t.Serial, err = serialOf(conf, label); err == nil {
			return t, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("softhsm: %w", err)
	}
	t.PIN = randomHex(8)
	if err := os.WriteFile(pinFile, []byte(t.PIN+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("softhsm: write %s: %w", pinFile, err)
	}
	cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label, "--pin", t.PIN, "--so-pin", randomHex(8))
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("softhsm2-util --init-token %s: %v: %s", label, err, strings.TrimSpace(string(out)))
	}
	if t.Serial, err = serialOf(conf, label); err != nil {
		return nil, err
	}
	return t, nil
}

// PINFile is where Ensure keeps the PIN of label in dir.
func PINFile(dir, label string) string { return filepath.Join(dir, label+".pin") }

// serialOf finds the serial of the token labelled label (SoftHSM moves new tokens to random slot
// ids, so the label and serial are the stable ways to find one).
func serialOf(conf, label string) (string, error) {
	cmd := exec.Command("softhsm2-util", "--show-slots")
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("softhsm2-util --show-slots: %v", err)
	}
	// softhsm2-util prints one block per slot, the serial before the label.
	var lbl, serial string
	for _, line := range strings.Split(string(out)+"\nSlot end", "\n") {
		if strings.HasPrefix(line, "Slot ") {
			if lbl == label && serial != "" {
				return serial, nil
			}
			lbl, serial = "", ""
			continue
		}
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "Label":
			lbl = strings.TrimSpace(v)
		case "Serial number":
			serial = strings.TrimSpace(v)
		}
	}
	return "", fmt.Errorf("softhsm: no token labelled %q in %s", label, conf)
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)
}
