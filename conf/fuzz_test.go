package conf

import (
	"crypto/tls"
	"errors"
	"testing"
	"time"
)

// FuzzParse: any input either parses into a config that keeps the promised
// invariants or fails with a well-formed *Error; it never panics or hangs.
// Seeds are in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add([]byte(Example()))
	f.Fuzz(func(t *testing.T, src []byte) {
		// A time budget linear in the input's size, the least of three parses.
		parse := func() time.Duration {
			start := time.Now()
			_, _ = Parse(src, "testdata/fuzz.hcl")
			return time.Since(start)
		}
		if budget := time.Second + time.Duration(len(src))*50*time.Microsecond; parse() > budget && min(parse(), parse()) > budget {
			t.Fatalf("parsing %d bytes took longer than %v, three times", len(src), budget)
		}
		cfg, err := Parse(src, "testdata/fuzz.hcl")
		if err != nil {
			var ce *Error
			if !errors.As(err, &ce) || len(ce.Diags) == 0 {
				t.Fatalf("error %v (%T) is not a *conf.Error with diagnostics", err, err)
			}
			for _, d := range ce.Diags {
				if d.Pos == "" || d.Summary == "" {
					t.Fatalf("incomplete diagnostic %+v", d)
				}
			}
			if cfg != nil {
				t.Fatal("config returned with an error")
			}
			return
		}
		if !contains(logLevels, cfg.LogLevel) || cfg.Keymap.Path == "" {
			t.Fatalf("log level %q, keymap %q", cfg.LogLevel, cfg.Keymap.Path)
		}
		if v := cfg.TLS.MinVersion; v != tls.VersionTLS12 && v != tls.VersionTLS13 {
			t.Fatalf("TLS min version %x", v)
		}
		if (cfg.Listen.KMIP != "" || cfg.Listen.KES != "") && (cfg.TLS.Cert == "" || cfg.TLS.Key == "") {
			t.Fatal("TLS listener without cert and key")
		}
		if len(cfg.Signers) > 0 {
			if _, ok := cfg.Signer(cfg.DefaultSigner); !ok {
				t.Fatalf("default signer %q not found", cfg.DefaultSigner)
			}
		}
		if cfg.RolloverSigner != "" {
			if _, ok := cfg.Signer(cfg.RolloverSigner); !ok || cfg.RolloverSigner == cfg.DefaultSigner {
				t.Fatalf("bad rollover signer %q", cfg.RolloverSigner)
			}
		}
		for _, s := range cfg.Signers {
			n := 0
			for _, set := range []bool{s.SlotID != nil, s.TokenLabel != "", s.TokenSerial != "", s.URI != ""} {
				if set {
					n++
				}
			}
			if n != 1 || s.Module == "" || s.PIN.Reveal() == "" || s.PINSource == "" ||
				s.MaxSessions < 1 || s.MaxSessions > 1024 || s.SessionTimeout <= 0 {
				t.Fatalf("bad signer %+v", s)
			}
		}
		ids := []string{}
		if cfg.Admin != "" {
			ids = append(ids, cfg.Admin)
		}
		for _, p := range cfg.Policies {
			ids = append(ids, p.Identities...)
		}
		for _, id := range ids {
			if !isIdentity(id) {
				t.Fatalf("bad identity %q", id)
			}
		}
	})
}
