package conf

import (
	"fmt"
	"os"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// Production reports what production mode (`p11bridge serve`, the default) refuses in a file
// that is otherwise valid: a PIN written in the file instead of env("NAME") or a pin_file, a
// pin_file readable or writable by others, a world-readable TLS key or keymap file, and a
// plaintext KES listener. Dev mode accepts these and says so at start. The result is nil or an
// *Error with one diagnostic per problem, in file order; like every message of this package it
// never holds a PIN.
//
// File modes are those found when the file was parsed: a reload (SIGHUP) parses again.
func (c *Config) Production() error {
	if len(c.production) == 0 {
		return nil
	}
	return &Error{Diags: append([]Diagnostic(nil), c.production...)}
}

// prodAdd records a production-mode refusal at a position.
func (d *decoder) prodAdd(at hcl.Pos, summary, detail string) {
	d.prod = append(d.prod, diag{at: at, report: Diagnostic{Pos: d.pos(at), Summary: summary, Detail: detail}})
}

// envNameFor suggests an environment variable name for a signer's PIN.
func envNameFor(signer string) string {
	return "P11BRIDGE_PIN_" + strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		}
		return '_'
	}, signer)
}

// prodPIN: a PIN written in the file travels with every copy of it (backups, tickets,
// configuration management), so production takes it from the environment or a private file.
func (d *decoder) prodPIN(a *attr, signer string) {
	d.prodAdd(a.at(), fmt.Sprintf("the PIN of signer %q is written in the config file", signer),
		fmt.Sprintf(`production mode reads PINs from the environment or a private file: write pin = env(%q), or pin_file = "…" with mode 0600`, envNameFor(signer)))
}

// pinFileMode: a PIN file must be the service's own. Group bits count too: a group that can
// read the PIN can use every key on the token.
func (d *decoder) pinFileMode(a *attr, path, signer string) {
	st, err := os.Stat(path)
	if err != nil {
		return // it was just read; a race is reported by the next reload
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		d.prodAdd(a.at(), fmt.Sprintf("the pin_file of signer %q is open to other users (mode %04o)", signer, perm),
			fmt.Sprintf("production mode needs mode 0600 or stricter: chmod 600 %s", path))
	}
}

// keyFileMode refuses a world-readable TLS private key. A group may read it (a deployment group
// such as p11bridge), the world may not.
func (d *decoder) keyFileMode(a *attr, path string) {
	st, err := os.Stat(path)
	if err != nil {
		return // loading it at start says why
	}
	if perm := st.Mode().Perm(); perm&0o004 != 0 {
		d.prodAdd(a.at(), fmt.Sprintf("the TLS key file %s is world-readable (mode %04o)", path, perm),
			fmt.Sprintf(`production mode refuses it: chmod o-r %s, or keep the key in a token: key = "pkcs11:token=…;object=…"`, path))
	}
}

// keymapMode refuses a world-readable keymap: it names every key, who owns it and where it lives.
// A keymap that does not exist yet is created 0600.
func (d *decoder) keymapMode(cfg *Config) {
	if d.keymapAttr == nil || cfg.Keymap.Path == "" {
		return
	}
	st, err := os.Stat(cfg.Keymap.Path)
	if err != nil {
		return
	}
	if perm := st.Mode().Perm(); perm&0o004 != 0 {
		d.prodAdd(d.keymapAttr.at(), fmt.Sprintf("the keymap file %s is world-readable (mode %04o)", cfg.Keymap.Path, perm),
			fmt.Sprintf("it tells which keys exist, who owns them and where they live: chmod o-r %s", cfg.Keymap.Path))
	}
}
