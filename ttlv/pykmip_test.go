package ttlv

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/signer"
)

// runPython runs a test script with the Debian PyKMIP client (scripts/deps.sh installs it).
func runPython(t *testing.T, script string, args ...string) []byte {
	t.Helper()
	py := "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import kmip").Run(); err != nil {
		t.Fatalf("PyKMIP is not installed for %s (%v); run scripts/deps.sh test", py, err)
	}
	cmd := exec.Command(py, append([]string{filepath.Join("testdata", script)}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s %v: %v\nstderr:\n%s\nstdout:\n%s", script, args, err, stderr.String(), stdout.String())
		}
	case <-time.After(90 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("%s %v timed out\nstderr:\n%s", script, args, stderr.String())
	}
	return stdout.Bytes()
}

// TestPyKMIP drives every operation PyKMIP supports at KMIP 1.2, 1.4 and 2.0; the script checks
// each answer and this test checks what it left in the keymap.
func TestPyKMIP(t *testing.T) {
	me := env.clients["pykmip"]
	caDER := filepath.Join(env.dir, "ca.der")
	if err := os.WriteFile(caDER, env.ca.Cert.Raw, 0o644); err != nil {
		t.Fatal(err)
	}
	host, port, _ := strings.Cut(env.addr, ":")
	for _, v := range []string{"KMIP_1_2", "KMIP_1_4", "KMIP_2_0"} {
		t.Run(v, func(t *testing.T) {
			out := runPython(t, "pykmip_ops.py", host, port, me.certFile, me.keyFile, env.caFile, v, caDER)
			var sum map[string]string
			if err := json.Unmarshal(bytes.TrimSpace(out), &sum); err != nil {
				t.Fatalf("script output %q: %v", out, err)
			}
			// Destroyed objects keep their rows as Destroyed (Destroyed Compromised for the
			// compromised one) with their Destroy Date; the key pair and HMAC keys stay, owned by the
			// client's identity.
			for k, want := range map[string]keymap.State{"aes": keymap.Destroyed, "aes_rekeyed": keymap.DestroyedCompromised} {
				rec, ok := env.km.Get(sum[k])
				if !ok || rec.State != want || rec.Attrs[signer.AttrDestroyDate] == "" || rec.Attrs[signer.AttrExportable] != signer.ExportByPolicy {
					t.Errorf("%s %s after Destroy: %+v (in the keymap: %v), want %s and exportable", k, sum[k], rec, ok, want)
				}
			}
			priv, ok := env.km.Get(sum["rsa_priv"])
			if !ok {
				t.Fatalf("private key %s not in the keymap", sum["rsa_priv"])
			}
			if priv.Owner != me.identity || priv.Class != keymap.PrivateKey || priv.Algorithm != "RSA" || priv.Size != 2048 || len(priv.KeyID) != 20 {
				t.Errorf("private key row: %+v", priv)
			}
			if !strings.HasPrefix(priv.Name, "py-rsa-priv-") || priv.State != keymap.Active {
				t.Errorf("private key name/state: %q %s", priv.Name, priv.State)
			}
			if priv.Attrs["link.public"] != sum["rsa_pub"] {
				t.Errorf("private key links to %q, want %q", priv.Attrs["link.public"], sum["rsa_pub"])
			}
			for k := range priv.Attrs {
				if !strings.HasPrefix(k, "kmip.") && !strings.HasPrefix(k, "key.") && !strings.HasPrefix(k, "x.") && !strings.HasPrefix(k, "link.") && !strings.HasPrefix(k, "p11.") {
					t.Errorf("unexpected attribute key %q", k)
				}
			}
			if _, ok := env.km.Get(sum["hmac"]); !ok {
				t.Errorf("HMAC key %s missing", sum["hmac"])
			}
		})
	}
}
