package conf

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPINNeverInErrors feeds configs that fail in many ways, each holding a
// recognisable PIN, and checks the PIN appears in no message.
func TestPINNeverInErrors(t *testing.T) {
	const pin = "S3cretPIN4711"
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pin"), []byte(pin+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("P11BRIDGE_TEST_PIN", pin)
	head := []string{`signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`}
	signer := func(body ...string) string { return cat(km, head, body, `}`) }
	cases := []struct {
		name      string
		src       string
		fragments []string // besides pin, what must not appear
	}{
		{"literal, other error", cat(signer(`  pin = "`+pin+`"`), `log_level = "loud"`), nil},
		{"literal, no keymap", cat(head, `  pin = "`+pin+`"`, `}`), nil},
		{"unquoted", signer(`  pin = ` + pin), nil},
		{"unquoted with dash", signer(`  pin = S3cret-PIN4711`), []string{"S3cret-PIN4711"}},
		{"unquoted expression", signer(`  pin = S3cret + PIN4711`), []string{"S3cret", "PIN4711"}},
		{"number with leading zero", signer(`  pin = 0471147114`), []string{"471147114"}},
		{"function call", signer(`  pin = ` + pin + `()`), nil},
		{"namespaced function", signer(`  pin = ` + pin + `::x()`), nil},
		{"template keyword", signer(`  pin = "%{` + pin + `}"`), nil},
		{"template variable", signer(`  pin = "${` + pin + `}"`), nil},
		{"bad escape", signer(`  pin = "S3cret\qPIN4711"`), []string{"qPIN4711", "S3cret"}},
		{"bad unicode escape", signer(`  pin = "S3cret\uZZZZPIN4711"`), []string{"ZZZZ", "S3cret"}},
		{"unterminated", signer(`  pin = "` + pin), nil},
		{"unterminated heredoc", signer(`  pin = <<EOT`, pin), nil},
		{"heredoc then syntax error", signer(`  pin = <<EOT`, pin, `EOT`, `  x = `), nil},
		{"trailing garbage", signer(`  pin = "` + pin + `" "` + pin + `"`), nil},
		{"arithmetic", signer(`  pin = "` + pin + `" + 1`), nil},
		{"list", signer(`  pin = ["` + pin + `"]`), nil},
		{"object", signer(`  pin = { ` + pin + ` = "` + pin + `" }`), nil},
		{"index", signer(`  pin = "` + pin + `"[0]`), nil},
		{"conditional", signer(`  pin = "` + pin + `" ? 1 : 2`), nil},
		{"duplicate", signer(`  pin = "`+pin+`"`, `  pin = "`+pin+`"`), nil},
		{"one-line block", cat(km, `signer "a" { pin = "`+pin+`" }`), nil},
		{"one-line block, two attributes", cat(km, `signer "a" { module = "m" pin = "`+pin+`" }`), nil},
		{"misspelt attribute", signer(`  pn = "` + pin + `"`), nil},
		{"at top level", cat(km, `pin = "`+pin+`"`), nil},
		{"env with invalid name", signer(`  pin = env("4711` + pin + `")`), []string{"4711"}},
		{"env, other errors", cat(signer(`  pin = env("P11BRIDGE_TEST_PIN")`, `  slot_id = -1`), `admin = "x"`), nil},
		{"env value reused where values are echoed", cat(signer(`  pin = env("P11BRIDGE_TEST_PIN")`), `log_level = env("P11BRIDGE_TEST_PIN")`), nil},
		{"pin_file value reused where values are echoed", cat(signer(`  pin_file = "pin"`), `log_level = lower("x")`, `listen {`, `  ops = "`+pin+`"`, `}`), nil},
		{"pin and pin_file", signer(`  pin = "`+pin+`"`, `  pin_file = "pin"`), nil},
		{"uri with pin-value", cat(km, `signer "a" {`, `  module = "/m.so"`, `  uri = "pkcs11:token=a?pin-value=`+pin+`"`, `  pin = "x"`, `}`), nil},
		{"uri with escaped pin-value", cat(km, `signer "a" {`, `  module = "/m.so"`, `  uri = "pkcs11:token=a?pin-value=%zz`+pin+`"`, `  pin = "x"`, `}`), nil},
		{"pin with wrong type and env", signer(`  pin = [env("P11BRIDGE_TEST_PIN")]`), nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.src), filepath.Join(dir, "c.hcl"))
			if err == nil {
				t.Fatal("config parsed; the case must fail")
			}
			for _, text := range []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err)} {
				for _, f := range append([]string{pin}, c.fragments...) {
					if strings.Contains(text, f) {
						t.Errorf("%q appears in:\n%s", f, text)
					}
				}
			}
		})
	}
}
