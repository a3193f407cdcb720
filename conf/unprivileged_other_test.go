//go:build !unix

package conf

import "testing"

// runUnprivileged is never reached here: os.Geteuid is -1 where there is no root.
func runUnprivileged(t *testing.T, test string) {
	t.Fatalf("%s: cannot drop privileges on this system", test)
}
