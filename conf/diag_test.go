package conf

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const km = `keymap { path = "k.csv" }`

// sig is a valid signer block of 5 lines.
func sig(name string) []string {
	return []string{`signer "` + name + `" {`, `  module = "/m.so"`, `  token_label = "` + name + `"`, `  pin = "7x7x7x"`, `}`}
}

func cat(parts ...any) string {
	var ls []string
	for _, p := range parts {
		switch p := p.(type) {
		case string:
			ls = append(ls, p)
		case []string:
			ls = append(ls, p...)
		}
	}
	return lines(ls...)
}

type diagCase struct {
	name  string
	src   string
	env   map[string]string // "" value with key prefixed "-" unsets
	files map[string]string // relative name → content; content "<dir>" makes a directory
	// want lists every expected diagnostic in order, as "line:col: " plus
	// the start of "summary; detail".
	want []string
}

var diagCases = []diagCase{
	// Syntax.
	{name: "syntax error", src: `log_level = "info`,
		want: []string{`1:18: unterminated template string; `}},
	{name: "one-line block with two attributes", src: cat(km, `audit { path = "a.log"  required = false }`),
		want: []string{`2:25: invalid single-argument block definition; `}},

	// Unknown names.
	{name: "unknown attribute with suggestion", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_lable = "a"`, `  pin = "7x7x7x"`, `}`),
		want: []string{
			`2:1: signer "a" has no token selector; add exactly one of slot_id, token_label, token_serial or uri`,
			`4:3: unknown attribute "token_lable" in signer "a"; did you mean "token_label"?`,
		}},
	{name: "unknown top attribute", src: cat(km, `colour = "blue"`),
		want: []string{`2:1: unknown attribute "colour"; remove it; the attributes allowed here are log_level, default_signer, rollover_signer, retired_signers, admin`}},
	{name: "unknown attribute in listen", src: cat(km, `listen {`, `  kmpi = ":5696"`, `}`),
		want: []string{`3:3: unknown attribute "kmpi" in the listen block; did you mean "kmip"?`}},
	{name: "unknown block with suggestion", src: cat(km, `lisen {`, `}`),
		want: []string{`2:1: unknown block "lisen"; did you mean "listen"?`}},
	{name: "block inside signer", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`, `  pin = "7x7x7x"`, `  extra {`, `  }`, `}`),
		want: []string{`6:3: unknown block "extra" in signer "a"; remove it; no blocks are allowed here`}},
	{name: "attribute written as block", src: cat(km, `log_level {`, `}`),
		want: []string{`2:1: "log_level" is an attribute, not a block; write log_level = …`}},
	{name: "block written as attribute", src: `keymap = "k.csv"`,
		want: []string{`1:1: "keymap" is a block, not an attribute; write keymap { … }`}},
	{name: "bare word", src: cat(km, `log_level = debug`),
		want: []string{`2:13: bare word "debug" in log_level is not a value; quote strings: log_level = "debug"`}},

	// Blocks.
	{name: "duplicate single block", src: cat(km, `keymap { path = "other.csv" }`),
		want: []string{`2:1: duplicate keymap block; the first is at `}},
	{name: "labelled single block", src: cat(`keymap "x" {`, `  path = "k.csv"`, `}`),
		want: []string{`1:8: the keymap block takes no name; write keymap { … }`}},
	{name: "signer without name", src: cat(km, `signer {`, `  module = "/m.so"`, `}`),
		want: []string{`2:1: a signer block needs exactly one name; write signer "name" { … }`}},
	{name: "bad signer name", src: cat(km, `signer "a b" {`, `  module = "/m.so"`, `  token_label = "a"`, `  pin = "7x7x7x"`, `}`),
		want: []string{`2:8: bad signer name "a b"; use 1 to 64 letters, digits`}},

	// Missing required attributes.
	{name: "missing module", src: cat(km, `signer "a" {`, `  token_label = "a"`, `  pin = "7x7x7x"`, `}`),
		want: []string{`2:1: signer "a" has no module; add module = "/usr/lib/softhsm/libsofthsm2.so"`}},
	{name: "empty module", src: cat(km, `signer "a" {`, `  module = ""`, `  token_label = "a"`, `  pin = "7x7x7x"`, `}`),
		want: []string{`3:12: module in signer "a" is empty; `}},
	{name: "missing keymap block", src: cat(sig("a")),
		want: []string{`1:1: there is no keymap block; add keymap { path = "keymap.csv" }`}},
	{name: "missing keymap path", src: cat(`keymap {`, `}`),
		want: []string{`1:1: the keymap block has no path; add path = "keymap.csv"`}},
	{name: "empty keymap path", src: cat(`keymap {`, `  path = ""`, `}`),
		want: []string{`2:10: path in the keymap block is empty; `}},
	{name: "missing audit path", src: cat(km, `audit {`, `  required = true`, `}`),
		want: []string{`2:1: the audit block has no path; add path = "audit.log"`}},
	{name: "audit required not bool", src: cat(km, `audit {`, `  path = "a.log"`, `  required = "yes"`, `}`),
		want: []string{`4:14: required in the audit block must be true or false, not a string; `}},
	{name: "no tls block for kmip", src: cat(km, `listen {`, `  kmip = "127.0.0.1:5696"`, `  ops = "127.0.0.1:9464"`, `}`),
		want: []string{`3:10: the kmip listener needs TLS, but there is no tls block; add tls {`}},
	{name: "no tls cert for kes", src: cat(km, `listen {`, `  kes = "127.0.0.1:7373"`, `}`, `tls {`, `  key = "key.pem"`, `}`),
		want: []string{`5:1: the tls block has no cert; add cert = "server.pem"; the kes listener needs it`}},
	{name: "no tls key for kmip and kes", src: cat(km, `listen {`, `  kmip = ":5696"`, `  kes = ":7373"`, `}`, `tls {`, `  cert = "c.pem"`, `}`),
		want: []string{`6:1: the tls block has no key; add key = "server-key.pem"; the kmip and kes listeners need it`}},
	{name: "tls cert without key, no listener", src: cat(km, `tls {`, `  cert = "c.pem"`, `}`),
		want: []string{`2:1: the tls block has no key; add key = "server-key.pem"; cert and key go together`}},
	{name: "only ops needs no tls", src: cat(km, `listen {`, `  ops = "127.0.0.1:9464"`, `}`)},

	// Default and rollover signers.
	{name: "default_signer names no signer", src: cat(km, sig("a"), sig("b"), `default_signer = "c"`),
		want: []string{`12:18: default_signer "c" names no signer; the signers are "a", "b"`}},
	{name: "default_signer without signers", src: cat(km, `default_signer = "a"`),
		want: []string{`2:18: default_signer "a" names no signer; no signer is configured; add a signer block`}},
	{name: "default_signer missing with two signers", src: cat(km, sig("a"), sig("b")),
		want: []string{`2:1: default_signer is not set; with more than one signer, add default_signer = "a"; the signers are "a", "b"`}},
	{name: "rollover_signer names no signer", src: cat(km, sig("a"), `rollover_signer = "b"`),
		want: []string{`7:19: rollover_signer "b" names no signer; the signers are "a"`}},
	{name: "rollover equals default", src: cat(km, sig("a"), sig("b"), `default_signer = "b"`, `rollover_signer = "b"`),
		want: []string{`13:19: rollover_signer equals default_signer; unset it`}},
	{name: "rollover equals implicit default", src: cat(km, sig("a"), `rollover_signer = "a"`),
		want: []string{`7:19: rollover_signer equals default_signer; unset it`}},

	// Token selectors.
	{name: "two selectors", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  slot_id = 1`, `  token_label = "a"`, `  pin = "7x7x7x"`, `}`),
		want: []string{`5:3: signer "a" has more than one token selector: slot_id, token_label; keep exactly one of slot_id, token_label, token_serial or uri`}},
	{name: "three selectors", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  uri = "pkcs11:token=a"`, `  token_serial = "s"`, `  token_label = "a"`, `  pin = "7x7x7x"`, `}`),
		want: []string{`5:3: signer "a" has more than one token selector: uri, token_serial, token_label; `}},
	{name: "no selector", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  pin = "7x7x7x"`, `}`),
		want: []string{`2:1: signer "a" has no token selector; add exactly one of slot_id, token_label, token_serial or uri`}},
	{name: "null selector counts as absent", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = null`, `  pin = "7x7x7x"`, `}`),
		want: []string{`2:1: signer "a" has no token selector; `}},
	{name: "negative slot_id", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  slot_id = -1`, `  pin = "7x7x7x"`, `}`),
		want: []string{`4:13: slot_id in signer "a" must be a whole number of at least 0; got -1`}},
	{name: "token label too long", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "`+strings.Repeat("x", 33)+`"`, `  pin = "7x7x7x"`, `}`),
		want: []string{`4:17: token_label in signer "a" is longer than 32 bytes; `}},
	{name: "token serial is a number", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_serial = 1234`, `  pin = "7x7x7x"`, `}`),
		want: []string{`4:18: token_serial in signer "a" must be a string, not a number; quote it: token_serial = "…"`}},
	{name: "same token twice", src: cat(km, sig("a"), `signer "b" {`, `  module = "/m.so"`, `  uri = "pkcs11:token=a"`, `  pin = "7x7x7x"`, `}`, `default_signer = "a"`),
		want: []string{`7:8: signers "a" and "b" select the same token; a token can back only one signer`}},

	// pkcs11 URIs.
	{name: "uri with pin-value", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  uri = "pkcs11:token=a?pin-value=1234"`, `  pin = "7x7x7x"`, `}`),
		want: []string{`4:9: the pkcs11 URI of signer "a" carries a PIN; put the PIN in pin/pin_file, not the URI`}},
	{name: "uri with pin-source", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  uri = "pkcs11:token=a?pin-source=file:/p"`, `  pin = "7x7x7x"`, `}`),
		want: []string{`4:9: the pkcs11 URI of signer "a" carries a PIN; put the PIN in pin/pin_file, not the URI`}},
	{name: "uri malformed", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  uri = "pkcs11:token"`, `  pin = "7x7x7x"`, `}`),
		want: []string{`4:9: invalid pkcs11 URI in signer "a"; Malformed pkcs11 URI: malformed path attribute; see RFC 7512`}},
	{name: "uri bad slot-id", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  uri = "pkcs11:slot-id=x"`, `  pin = "7x7x7x"`, `}`),
		want: []string{`4:9: invalid pkcs11 URI in signer "a"; slot-id must be a number: x; see RFC 7512`}},
	{name: "uri not pkcs11", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  uri = "token=a"`, `  pin = "7x7x7x"`, `}`),
		want: []string{`4:9: the uri of signer "a" is not a pkcs11: URI; `}},
	{name: "uri names an object", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  uri = "pkcs11:token=a;object=k"`, `  pin = "7x7x7x"`, `}`),
		want: []string{`4:9: the pkcs11 URI of signer "a" names an object (object); the URI selects a token`}},
	{name: "uri unknown attribute", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  uri = "pkcs11:tokn=a"`, `  pin = "7x7x7x"`, `}`),
		want: []string{`4:9: unknown attribute "tokn" in the pkcs11 URI of signer "a"; did you mean "token"?`}},
	{name: "uri attribute not matched on", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  uri = "pkcs11:token=a;library-version=2.6"`, `  pin = "7x7x7x"`, `}`),
		want: []string{`4:9: p11bridge cannot select a token by library-version (pkcs11 URI of signer "a"); remove it; tokens are matched on token, serial, slot-id, manufacturer and model`}},
	{name: "uri module-path", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  uri = "pkcs11:token=a?module-path=/m.so"`, `  pin = "7x7x7x"`, `}`),
		want: []string{`4:9: the pkcs11 URI of signer "a" names a module (module-path); `}},
	{name: "uri names no token", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  uri = "pkcs11:model=SoftHSM%20v2"`, `  pin = "7x7x7x"`, `}`),
		want: []string{`4:9: the pkcs11 URI of signer "a" names no token; add token=, serial= or slot-id=`}},

	// PIN sources.
	{name: "two PIN sources", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`, `  pin_file = "pin.txt"`, `  pin = "7x7x7x"`, `}`),
		files: map[string]string{"pin.txt": "7x7x7x\n"},
		want:  []string{`6:3: signer "a" has two PIN sources, pin and pin_file; keep exactly one of them`}},
	{name: "no PIN", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`, `}`),
		want: []string{`2:1: signer "a" has no PIN; add pin = env("P11BRIDGE_PIN") or pin_file = "/run/secrets/pin"`}},
	{name: "empty literal PIN", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`, `  pin = ""`, `}`),
		want: []string{`5:9: the PIN of signer "a" is empty; give the token's user PIN`}},
	{name: "env unset", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`, `  pin = env("P11BRIDGE_TEST_UNSET")`, `}`),
		env:  map[string]string{"-P11BRIDGE_TEST_UNSET": ""},
		want: []string{`5:9: environment variable "P11BRIDGE_TEST_UNSET" is not set; set it in the environment p11bridge starts in`}},
	{name: "env unset elsewhere", src: cat(km, `listen {`, `  ops = env("P11BRIDGE_TEST_UNSET")`, `}`),
		env:  map[string]string{"-P11BRIDGE_TEST_UNSET": ""},
		want: []string{`3:9: environment variable "P11BRIDGE_TEST_UNSET" is not set; `}},
	{name: "env unset inside a template", src: cat(`keymap {`, `  path = "${env("P11BRIDGE_TEST_UNSET")}/k.csv"`, `}`),
		env:  map[string]string{"-P11BRIDGE_TEST_UNSET": ""},
		want: []string{`2:13: environment variable "P11BRIDGE_TEST_UNSET" is not set; `}},
	{name: "env bad name", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`, `  pin = env("1x")`, `}`),
		want: []string{`5:9: env() needs an environment variable name; names are letters, digits and '_'`}},
	{name: "env empty", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`, `  pin = env("P11BRIDGE_TEST_EMPTY")`, `}`),
		env:  map[string]string{"P11BRIDGE_TEST_EMPTY": ""},
		want: []string{`5:9: the PIN of signer "a" is empty; environment variable "P11BRIDGE_TEST_EMPTY" is set but empty`}},
	{name: "pin_file missing", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`, `  pin_file = "nope"`, `}`),
		want: []string{`5:14: cannot read the pin_file of signer "a"; stat `}},
	{name: "pin_file is a directory", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`, `  pin_file = "d"`, `}`),
		files: map[string]string{"d": "<dir>"},
		want:  []string{`5:14: cannot read the pin_file of signer "a"; read `}},
	{name: "pin_file empty", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`, `  pin_file = "pin"`, `}`),
		files: map[string]string{"pin": "\r\n\n"},
		want:  []string{`5:14: the pin_file of signer "a" is empty; write the token's user PIN into `}},
	{name: "pin_file too large", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`, `  pin_file = "pin"`, `}`),
		files: map[string]string{"pin": strings.Repeat("7", 5000)},
		want:  []string{`5:14: cannot read the pin_file of signer "a"; `}},
	{name: "pin is a number", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`, `  pin = 1234`, `}`),
		want: []string{`5:9: pin in signer "a" must be a string, not a number; quote it: pin = "…" (a number would lose leading zeros)`}},
	{name: "pin unquoted", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`, `  pin = abcd`, `}`),
		want: []string{`5:9: the pin in signer "a" is not quoted; write pin = "…" or pin = env("NAME")`}},

	// Duplicates.
	{name: "duplicate signer", src: cat(km, sig("a"), sig("a")),
		want: []string{`7:8: duplicate signer "a"; the first is at `}},
	{name: "duplicate policy", src: cat(km, `policy "p" {`, `}`, `policy "p" {`, `}`),
		want: []string{`4:8: duplicate policy "p"; the first is at `}},

	// Identities and policies.
	{name: "identity too short", src: cat(km, `policy "p" {`, `  identities = ["`+id1+`", "abc"]`, `}`),
		want: []string{`3:85: bad identity "abc" in policy "p"; an identity is 64 lowercase hex digits`}},
	{name: "identity uppercase", src: cat(km, `policy "p" {`, `  identities = ["`+strings.ToUpper(id1)+`"]`, `}`),
		want: []string{`3:17: bad identity "` + strings.ToUpper(id1) + `" in policy "p"; write it in lowercase`}},
	{name: "identity not hex", src: cat(km, `policy "p" {`, `  identities = ["`+strings.Repeat("g", 64)+`"]`, `}`),
		want: []string{`3:17: bad identity "ggg`}},
	{name: "identity in two policies", src: cat(km, `policy "p" {`, `  identities = ["`+id1+`"]`, `}`, `policy "q" {`, `  identities = ["`+id2+`", "`+id1+`"]`, `}`),
		want: []string{`6:85: identity "` + id1 + `" in policy "q" is already in policy "p"; an identity belongs to one policy`}},
	{name: "identity twice in one policy is harmless", src: cat(km, `policy "p" {`, `  identities = ["`+id1+`", "`+id1+`"]`, `}`)},
	{name: "admin identity", src: cat(km, `admin = "me"`),
		want: []string{`2:9: bad admin identity "me"; an identity is 64 lowercase hex digits`}},
	{name: "unknown KMIP operation", src: cat(km, `policy "p" {`, `  kmip = ["Get", "Encypt", "get", "Frobnicate"]`, `}`),
		want: []string{
			`3:18: unknown KMIP operation "Encypt" in policy "p"; did you mean "Encrypt"?`,
			`3:28: unknown KMIP operation "get" in policy "p"; did you mean "Get"?`,
			`3:35: unknown KMIP operation "Frobnicate" in policy "p"; use KMIP 1.4 operation names`,
		}},
	{name: "bad KES patterns", src: cat(km, `policy "p" {`, `  allow = ["v1/key/*"]`, `  deny = ["/v1/*/create"]`, `  keys = ["*-minio", ""]`, `}`),
		want: []string{
			`3:12: bad KES path pattern "v1/key/*" in policy "p"; patterns are API paths starting with "/"`,
			`4:11: bad KES path pattern "/v1/*/create" in policy "p"; '*' may only end a pattern`,
			`5:11: bad key pattern "*-minio" in policy "p"; '*' may only end a pattern`,
			`5:22: empty key pattern in policy "p"; `,
		}},
	{name: "list wanted", src: cat(km, `policy "p" {`, `  kmip = "Get"`, `}`),
		want: []string{`3:10: kmip in policy "p" must be a list of strings, not a string; write kmip = ["…", "…"]`}},
	{name: "list of non-strings", src: cat(km, `policy "p" {`, `  kmip = ["Get", ["Create"]]`, `}`),
		want: []string{`3:18: kmip in policy "p" must be a list of strings; quote each element`}},

	// Listeners.
	{name: "listen address without port", src: cat(km, `listen {`, `  ops = "localhost"`, `}`),
		want: []string{`3:9: bad ops listen address "localhost"; missing port in address; write host:port, e.g. "127.0.0.1:9464"`}},
	{name: "listen port out of range", src: cat(km, `listen {`, `  ops = "127.0.0.1:99999"`, `}`),
		want: []string{`3:9: bad ops listen address "127.0.0.1:99999"; the port must be a number from 0 to 65535`}},
	{name: "listen port by name", src: cat(km, `listen {`, `  ops = "127.0.0.1:http"`, `}`),
		want: []string{`3:9: bad ops listen address "127.0.0.1:http"; the port must be a number`}},
	{name: "two listeners on one address", src: cat(km, `listen {`, `  kmip = "127.0.0.1:5696"`, `  ops = "127.0.0.1:5696"`, `}`, `tls {`, `  cert = "c.pem"`, `  key = "k.pem"`, `}`),
		want: []string{`4:9: the ops listener "127.0.0.1:5696" clashes with the kmip listener "127.0.0.1:5696"; give each listener its own port`}},
	{name: "wildcard clashes", src: cat(km, `listen {`, `  kes = "localhost:7373"`, `  ops = "0.0.0.0:7373"`, `}`, `tls {`, `  cert = "c.pem"`, `  key = "k.pem"`, `}`),
		want: []string{`4:9: the ops listener "0.0.0.0:7373" clashes with the kes listener "localhost:7373"; `}},
	{name: "different families do not clash", src: cat(km, `listen {`, `  kes = "0.0.0.0:7373"`, `  ops = "[::1]:7373"`, `  kmip = "[::1]:0"`, `}`, `tls {`, `  cert = "c.pem"`, `  key = "k.pem"`, `}`)},
	{name: "port 0 never clashes", src: cat(km, `listen {`, `  kmip = "127.0.0.1:0"`, `  kes = "127.0.0.1:0"`, `  ops = ":0"`, `}`, `tls {`, `  cert = "c.pem"`, `  key = "k.pem"`, `}`)},

	// Enumerations.
	{name: "bad log level with suggestion", src: cat(km, `log_level = "warning"`),
		want: []string{`2:13: bad log_level "warning"; did you mean "warn"?`}},
	{name: "bad log level", src: cat(km, `log_level = "verbose"`),
		want: []string{`2:13: bad log_level "verbose"; use one of "debug", "info", "warn", "error"`}},
	{name: "bad min_version", src: cat(km, `tls {`, `  cert = "c.pem"`, `  key = "k.pem"`, `  min_version = "1.1"`, `}`),
		want: []string{`5:17: bad TLS min_version "1.1"; use "1.2" (the default) or "1.3"`}},
	{name: "min_version as a number", src: cat(km, `tls {`, `  cert = "c.pem"`, `  key = "k.pem"`, `  min_version = 1.3`, `}`)},
	{name: "fips not a bool", src: cat(km, `tls {`, `  cert = "c.pem"`, `  key = "k.pem"`, `  fips = "yes"`, `}`),
		want: []string{`5:10: fips in the tls block must be true or false, not a string; write fips = true or fips = false, without quotes`}},
	{name: "bad revoked identity", src: cat(km, `tls {`, `  cert = "c.pem"`, `  key = "k.pem"`, `  revoked = ["`+id1+`", "nope"]`, `}`),
		want: []string{`5:82: bad revoked identity "nope" in the tls block; an identity is 64 lowercase hex digits`}},
	{name: "revoked_file missing", src: cat(km, `tls {`, `  cert = "c.pem"`, `  key = "k.pem"`, `  revoked_file = "nope.txt"`, `}`),
		want: []string{`5:18: cannot read the revoked_file; stat `}},
	{name: "revoked_file empty name", src: cat(km, `tls {`, `  cert = "c.pem"`, `  key = "k.pem"`, `  revoked_file = ""`, `}`),
		want: []string{`5:18: revoked_file in the tls block is empty; give the path of a file with one identity per line`}},

	// The TLS key in a token.
	{name: "key uri", src: cat(km, sig("a"), `tls {`, `  cert = "c.pem"`, `  key = "pkcs11:token=a;object=tls;type=private"`, `}`)},
	{name: "key uri by id and serial", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_serial = "0a1b"`, `  pin = "7x7x7x"`, `}`, `tls {`, `  cert = "c.pem"`, `  key = "pkcs11:serial=0a1b;id=%01%02"`, `}`)},
	{name: "key uri with a PIN", src: cat(km, sig("a"), `tls {`, `  cert = "c.pem"`, `  key = "pkcs11:token=a;object=tls?pin-value=1234"`, `}`),
		want: []string{`9:9: the TLS key URI carries a PIN; the signer whose token holds the key logs in with its own pin or pin_file`}},
	{name: "key uri scheme in capitals", src: cat(km, sig("a"), `tls {`, `  cert = "c.pem"`, `  key = "PKCS11:token=a;object=tls"`, `}`),
		want: []string{`9:9: the TLS key URI must start with pkcs11: in lowercase; write e.g. "pkcs11:token=bridge-a;object=p11bridge-tls"`}},
	{name: "key uri malformed", src: cat(km, sig("a"), `tls {`, `  cert = "c.pem"`, `  key = "pkcs11:token"`, `}`),
		want: []string{`9:9: invalid pkcs11 URI for the TLS key; Malformed pkcs11 URI: malformed path attribute; see RFC 7512`}},
	{name: "key uri public type", src: cat(km, sig("a"), `tls {`, `  cert = "c.pem"`, `  key = "pkcs11:token=a;object=tls;type=public"`, `}`),
		want: []string{`9:9: the TLS key URI names type=public; the server's key is a private key`}},
	{name: "key uri unknown attribute", src: cat(km, sig("a"), `tls {`, `  cert = "c.pem"`, `  key = "pkcs11:token=a;objekt=tls"`, `}`),
		want: []string{`9:9: unknown attribute "objekt" in the TLS key URI; did you mean "object"?`}},
	{name: "key uri library attribute", src: cat(km, sig("a"), `tls {`, `  cert = "c.pem"`, `  key = "pkcs11:token=a;object=tls;library-version=1"`, `}`),
		want: []string{`9:9: p11bridge cannot select the TLS key by library-version; remove it`}},
	{name: "key uri module", src: cat(km, sig("a"), `tls {`, `  cert = "c.pem"`, `  key = "pkcs11:token=a;object=tls?module-path=/m.so"`, `}`),
		want: []string{`9:9: the TLS key URI names a module (module-path); remove it; the key is used through the signer configured for its token`}},
	{name: "key uri names no key", src: cat(km, sig("a"), `tls {`, `  cert = "c.pem"`, `  key = "pkcs11:token=a"`, `}`),
		want: []string{`9:9: the TLS key URI names no key; add object=<its CKA_LABEL> or id=<its CKA_ID, as %xx bytes>`}},
	{name: "key uri names no token", src: cat(km, sig("a"), `tls {`, `  cert = "c.pem"`, `  key = "pkcs11:object=tls"`, `}`),
		want: []string{`9:9: the TLS key URI names no token; add token=, serial= or slot-id=`}},
	{name: "key uri names no signer's token", src: cat(km, sig("a"), `tls {`, `  cert = "c.pem"`, `  key = "pkcs11:token=b;object=tls"`, `}`),
		want: []string{`9:9: the TLS key URI names a token that no signer selects; the key is used through the signer of its token: add a signer block for that token; configured: signer "a" (token "a")`}},
	{name: "key uri without signers", src: cat(km, `tls {`, `  cert = "c.pem"`, `  key = "pkcs11:token=b;object=tls"`, `}`),
		want: []string{`4:9: the TLS key URI names a token that no signer selects; the key is used through the signer of its token: add a signer block for that token`}},
	{name: "key uri and a signer by slot", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  slot_id = 4`, `  pin = "7x7x7x"`, `}`, `tls {`, `  cert = "c.pem"`, `  key = "pkcs11:token=b;object=tls"`, `}`)},

	// The KES proxy and plaintext listener.
	{name: "proxy", src: cat(km, `kes {`, `  proxy {`, `    identities = ["`+id1+`"]`, `    header = "X-Forwarded-Client-Cert"`, `  }`, `}`)},
	{name: "proxy without identities", src: cat(km, `kes {`, `  proxy {`, `  }`, `}`),
		want: []string{`3:3: the proxy block has no identities; add identities = ["…"]: the identity of the proxy's client certificate`}},
	{name: "proxy with an empty list", src: cat(km, `kes {`, `  proxy {`, `    identities = []`, `  }`, `}`),
		want: []string{`4:18: the proxy block has no identities; `}},
	{name: "proxy bad identity", src: cat(km, `kes {`, `  proxy {`, `    identities = ["proxy"]`, `  }`, `}`),
		want: []string{`4:19: bad proxy identity "proxy" in the proxy block; an identity is 64 lowercase hex digits`}},
	{name: "proxy bad header", src: cat(km, `kes {`, `  proxy {`, `    identities = ["`+id1+`"]`, `    header = "X Cert"`, `  }`, `}`),
		want: []string{`5:14: bad header name "X Cert" in the proxy block; a header name is letters, digits and '-'`}},
	{name: "proxy HTTP's own header", src: cat(km, `kes {`, `  proxy {`, `    identities = ["`+id1+`"]`, `    header = "content-type"`, `  }`, `}`),
		want: []string{`5:14: header Content-Type in the proxy block is HTTP's own; choose a header of your own`}},
	{name: "proxy identity is the admin", src: cat(km, `admin = "`+id1+`"`, `kes {`, `  proxy {`, `    identities = ["`+id1+`"]`, `  }`, `}`),
		want: []string{`5:19: proxy identity "` + id1 + `" is also the admin; requests from the proxy act for the certificate it forwards`}},
	{name: "proxy identity in a policy", src: cat(km, `policy "p" {`, `  identities = ["`+id1+`"]`, `}`, `kes {`, `  proxy {`, `    identities = ["`+id1+`"]`, `  }`, `}`),
		want: []string{`7:19: proxy identity "` + id1 + `" is also in policy "p"; `}},
	{name: "proxy block named", src: cat(km, `kes {`, `  proxy "nginx" {`, `    identities = ["`+id1+`"]`, `  }`, `}`),
		want: []string{`3:9: the proxy block takes no name; write proxy { … }`}},
	{name: "proxy unknown attribute", src: cat(km, `kes {`, `  proxy {`, `    identities = ["`+id1+`"]`, `    headr = "X-Cert"`, `  }`, `}`),
		want: []string{`5:5: unknown attribute "headr" in the proxy block; did you mean "header"?`}},
	{name: "plaintext without a proxy", src: cat(km, `kes {`, `  plaintext = true`, `}`),
		want: []string{`3:15: a plaintext KES listener sees no client certificates; add proxy { header = "X-Tls-Client-Cert" }`}},
	{name: "plaintext with proxy identities", src: cat(km, `kes {`, `  plaintext = true`, `  proxy {`, `    identities = ["`+id1+`"]`, `  }`, `}`),
		want: []string{`5:18: the proxy's identities cannot be checked on a plaintext KES listener; remove identities`}},
	{name: "plaintext kes needs no tls", src: cat(km, `listen {`, `  kes = "127.0.0.1:7373"`, `}`, `kes {`, `  plaintext = true`, `  proxy {`, `  }`, `}`)},

	// Numbers, durations, sizes.
	{name: "key_copies negative", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`, `  pin = "7x7x7x"`, `  key_copies = -1`, `}`),
		want: []string{`6:16: key_copies in signer "a" must be a whole number between 0 and 1048576; got -1`}},
	{name: "max_sessions zero", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`, `  pin = "7x7x7x"`, `  max_sessions = 0`, `}`),
		want: []string{`6:18: max_sessions in signer "a" must be a whole number between 1 and 1024; got 0`}},
	{name: "max_sessions too many", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`, `  pin = "7x7x7x"`, `  max_sessions = 1025`, `}`),
		want: []string{`6:18: max_sessions in signer "a" must be a whole number between 1 and 1024; got 1025`}},
	{name: "max_sessions fraction", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`, `  pin = "7x7x7x"`, `  max_sessions = 2.5`, `}`),
		want: []string{`6:18: max_sessions in signer "a" must be a whole number between 1 and 1024; got 2.5`}},
	{name: "max_sessions quoted", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`, `  pin = "7x7x7x"`, `  max_sessions = "8"`, `}`),
		want: []string{`6:18: max_sessions in signer "a" must be a number, not a string; `}},
	{name: "duration without unit", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`, `  pin = "7x7x7x"`, `  session_timeout = "5"`, `}`),
		want: []string{`6:21: bad duration "5" for session_timeout in signer "a"; write a number with a unit`}},
	{name: "duration as number", src: cat(km, `kmip {`, `  idle_timeout = 120`, `}`),
		want: []string{`3:18: idle_timeout in the kmip block must be a duration string, not a number; write it with a unit, e.g. idle_timeout = "5s"`}},
	{name: "duration negative", src: cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`, `  pin = "7x7x7x"`, `  session_timeout = "-1s"`, `}`),
		want: []string{`6:21: session_timeout in signer "a" must be between 1ms and 1h0m0s; got -1s`}},
	{name: "duration too long", src: cat(km, `kmip {`, `  idle_timeout = "25h"`, `}`),
		want: []string{`3:18: idle_timeout in the kmip block must be between 1s and 24h0m0s; got 25h0m0s`}},
	{name: "size with decimal unit", src: cat(km, `kmip {`, `  max_message_size = "1MB"`, `}`),
		want: []string{`3:22: bad size "1MB" for max_message_size in the kmip block; units are powers of 1024: write 1MiB`}},
	{name: "size with unknown unit", src: cat(km, `kes {`, `  max_body = "1 parsec"`, `}`),
		want: []string{`3:14: bad size "1 parsec" for max_body in the kes block; the unit must be B, KiB, MiB or GiB`}},
	{name: "size without number", src: cat(km, `kes {`, `  max_body = "MiB"`, `}`),
		want: []string{`3:14: bad size "MiB" for max_body in the kes block; write a whole number`}},
	{name: "size too small", src: cat(km, `kmip {`, `  max_message_size = 100`, `}`),
		want: []string{`3:22: max_message_size in the kmip block must be between 1KiB and 64MiB; got 100B`}},
	{name: "size too large", src: cat(km, `kes {`, `  max_body = "1GiB"`, `}`),
		want: []string{`3:14: max_body in the kes block must be between 1KiB and 64MiB; got 1GiB`}},
	{name: "size overflow", src: cat(km, `kes {`, `  max_body = "99999999999999999999GiB"`, `}`),
		want: []string{`3:14: bad size "99999999999999999999GiB" for max_body in the kes block; too large`}},
	{name: "size fraction", src: cat(km, `kes {`, `  max_body = 1.5`, `}`),
		want: []string{`3:14: max_body in the kes block must be a whole number of bytes; got 1.5`}},
	{name: "size beyond int64", src: cat(km, `kes {`, `  max_body = 1e30`, `}`),
		want: []string{`3:14: max_body in the kes block must be between 1KiB and 64MiB; got 1e+30`}},
	{name: "size wrong type", src: cat(km, `kes {`, `  max_body = true`, `}`),
		want: []string{`3:14: max_body in the kes block must be a size, not true or false; `}},
	{name: "max_connections out of range", src: cat(km, `kmip {`, `  max_connections = 0`, `}`),
		want: []string{`3:21: max_connections in the kmip block must be a whole number between 1 and 1000000; got 0`}},

	// HCL evaluation errors outside PINs keep HCL's detail.
	{name: "unknown function", src: cat(km, `log_level = lower("INFO")`),
		want: []string{`2:13: call to unknown function; There is no function named "lower".`}},

	// Several problems at once come back together, in file order.
	{name: "many", src: cat(`log_level = "loud"`, `signer "a" {`, `  module = "/m.so"`, `}`, `admin = "x"`),
		want: []string{
			`1:1: there is no keymap block; `,
			`1:13: bad log_level "loud"; `,
			`2:1: signer "a" has no token selector; `,
			`2:1: signer "a" has no PIN; `,
			`5:9: bad admin identity "x"; `,
		}},
}

func TestDiagnostics(t *testing.T) {
	for _, c := range diagCases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			file := filepath.Join(dir, "c.hcl")
			for k, v := range c.env {
				if name, ok := strings.CutPrefix(k, "-"); ok {
					t.Setenv(name, "")
					os.Unsetenv(name)
				} else {
					t.Setenv(k, v)
				}
			}
			for name, content := range c.files {
				p := filepath.Join(dir, name)
				var err error
				if content == "<dir>" {
					err = os.Mkdir(p, 0o700)
				} else {
					err = os.WriteFile(p, []byte(content), 0o600)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			cfg, err := Parse([]byte(c.src), file)
			if len(c.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected error:\n%v", err)
				}
				return
			}
			if cfg != nil {
				t.Errorf("got a config along with an error")
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %v (%T) is not *conf.Error", err, err)
			}
			var got []string
			for _, d := range ce.Diags {
				if !strings.HasPrefix(d.Pos, file+":") {
					t.Errorf("position %q is not in %s", d.Pos, file)
				}
				got = append(got, strings.TrimPrefix(d.String(), file+":"))
			}
			if len(got) != len(c.want) {
				t.Fatalf("got %d diagnostics, want %d:\n%s", len(got), len(c.want), strings.Join(got, "\n"))
			}
			for i, w := range c.want {
				if !strings.HasPrefix(got[i], w) {
					t.Errorf("diagnostic %d:\ngot  %s\nwant %s…", i, got[i], w)
				}
			}
			if want := strings.Join(got, "\n"); err.Error() != strings.ReplaceAll("\n"+want, "\n", "\n"+file+":")[1:] {
				t.Errorf("Error() does not list the diagnostics one per line:\n%s", err.Error())
			}
		})
	}
}

// TestPINUnreadable: a pin_file the process may not open is reported with the OS's reason. Root
// opens a file whatever its mode, so under root (as CI runs) the test runs again in a child
// process that has dropped to nobody.
func TestPINUnreadable(t *testing.T) {
	if os.Geteuid() == 0 {
		runUnprivileged(t, "TestPINUnreadable")
		return
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "pin")
	if err := os.WriteFile(p, []byte("1234"), 0o000); err != nil {
		t.Fatal(err)
	}
	_, err := Parse([]byte(cat(km, `signer "a" {`, `  module = "/m.so"`, `  token_label = "a"`, `  pin_file = "pin"`, `}`)), filepath.Join(dir, "c.hcl"))
	if err == nil || !strings.Contains(err.Error(), `c.hcl:5:14: cannot read the pin_file of signer "a"; open `+p+": permission denied") {
		t.Errorf("got %v", err)
	}
}

func TestRetiredSigners(t *testing.T) {
	base := "signer \"b\" {\n  module = \"/m.so\"\n  token_label = \"b\"\n  pin = \"1234\"\n}\nkeymap { path = \"k.csv\" }\n"
	cfg, err := Parse([]byte(base+"retired_signers = [\"a\"]\n"), "r.hcl")
	if err != nil || len(cfg.RetiredSigners) != 1 || cfg.RetiredSigners[0] != "a" {
		t.Fatalf("%+v %v", cfg, err)
	}
	_, err = Parse([]byte(base+"retired_signers = [\"b\"]\n"), "r.hcl")
	if err == nil || !strings.Contains(err.Error(), `r.hcl:7:20: retired_signers names signer "b", which is still configured`) {
		t.Fatalf("retiring a configured signer: %v", err)
	}
}
