package conf

import (
	"os"
	"strings"
	"testing"
)

// TestREADMEEmbedsExample keeps the README's configuration reference true: it shows Example()
// verbatim in its ```hcl block.
func TestREADMEEmbedsExample(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "## Configuration")
	if i < 0 {
		t.Fatal("README.md has no Configuration section")
	}
	if !strings.Contains(s[i:], "```hcl\n"+Example()+"```\n") {
		t.Error("README.md's configuration block differs from conf.Example(); regenerate it")
	}
}
