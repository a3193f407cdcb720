package conf

import (
	"strings"
	"testing"
)

// The HCL parser recurses without limit; these inputs would overflow the
// stack (a fatal error, not a panic) if they reached it.
func TestNestingLimit(t *testing.T) {
	for name, src := range map[string]string{
		"brackets":  "x = " + strings.Repeat("[", 100000),
		"parens":    "x = " + strings.Repeat("(", 100000),
		"templates": "x = " + strings.Repeat(`"${`, 100000),
		"blocks":    strings.Repeat("a {\n", 100000),
		"bangs":     "x = " + strings.Repeat("!", 100000) + "true",
		"ternaries": "x = " + strings.Repeat("a ? b : ", 100000) + "c",
	} {
		_, err := Parse([]byte(src), "c.hcl")
		if err == nil || !strings.Contains(err.Error(), ": the config is nested too deeply; ") {
			t.Errorf("%s: %.200v", name, err)
		}
	}
	// Right at the limits the parser is still safe and answers normally.
	for name, src := range map[string]string{
		"brackets": "x = " + strings.Repeat("[", maxNesting-1) + strings.Repeat("]", maxNesting-1),
		"bangs":    "x = " + strings.Repeat("!", maxOperators) + "true",
		"sums":     "x = 1" + strings.Repeat("+1", maxOperators),
	} {
		_, err := Parse([]byte(src), "c.hcl")
		if err == nil || !strings.Contains(err.Error(), `c.hcl:1:1: unknown attribute "x"`) {
			t.Errorf("%s: %.200v", name, err)
		}
	}
}

func TestLongValuesClipped(t *testing.T) {
	long := strings.Repeat("b", 100000)
	_, err := Parse([]byte(cat(km, long+` = 1`, `log_level = "`+long+`"`)), "c.hcl")
	if err == nil {
		t.Fatal("no error")
	}
	ls := strings.Split(err.Error(), "\n")
	if len(ls) != 2 {
		t.Fatalf("%d lines", len(ls))
	}
	for _, l := range ls {
		if len(l) > 1000 || !strings.Contains(l, "bbbb…") {
			t.Errorf("line of %d bytes: %.100s", len(l), l)
		}
	}
}

func TestLoopsRefused(t *testing.T) {
	list := "[" + strings.Repeat("1,", 1000) + "]"
	for name, c := range map[string]struct{ src, want string }{
		"nested for": {cat(km, `policy "p" {`, `  kmip = [for a in `+list+`: [for b in `+list+`: [for c in `+list+`: "Get"]]]`, `}`),
			`3:10: for expressions and splats are not supported in policy "p"; write the values out`},
		"template for": {cat(km, `log_level = "%{for x in `+list+`}${x}%{endfor}"`),
			`2:14: for expressions and splats are not supported; write the values out`},
		"splat": {cat(km, `policy "p" {`, `  kmip = [{a = "Get"}][*].a`, `}`),
			`3:10: for expressions and splats are not supported in policy "p"; `},
	} {
		_, err := Parse([]byte(c.src), "c.hcl")
		if err == nil || !strings.HasPrefix(err.Error(), "c.hcl:"+c.want) {
			t.Errorf("%s: %.300v", name, err)
		}
	}
}

// Turning 1e9999999 into a string (as a template does) takes minutes.
func TestHugeNumbers(t *testing.T) {
	for _, lit := range []string{"1e101", "1E-101", "1e+9999999", strings.Repeat("9", 33)} {
		_, err := Parse([]byte(cat(km, `log_level = "x${`+lit+`}"`)), "c.hcl")
		if err == nil || err.Error() != "c.hcl:2:17: number too large; no config needs this; is it the right file?" {
			t.Errorf("%s: %.300v", lit, err)
		}
	}
	for _, lit := range []string{"1e100", "1.5e-100", strings.Repeat("9", 32)} {
		_, err := Parse([]byte(cat(km, `kes {`, `  max_body = `+lit, `}`)), "c.hcl")
		if err == nil || !strings.HasPrefix(err.Error(), "c.hcl:3:14: max_body in the kes block must be ") {
			t.Errorf("%s: %.300v", lit, err)
		}
	}
}
