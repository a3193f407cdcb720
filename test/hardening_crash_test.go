package test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"
)

// ackedKey is a key whose creation the server acknowledged to a client.
type ackedKey struct {
	kind string // "aes", "ec", "rsa" (KMIP) or "kes"
	id   string // KMIP unique identifier of the secret or private key; KES: the key name
	pub  string // KMIP public half
}

// TestCrashLosesNothing kills the server with SIGKILL while 32 clients create keys as fast as they
// can (KMIP Create AES, CreateKeyPair EC and RSA, KES create). After a restart every key whose
// creation was acknowledged is in the keymap and works; no live keymap row names an object missing
// from the token; and the objects the token holds that no row names — keys created but never
// acknowledged — are exactly what `keys rebuild --dry-run` reports, before and after the restart
// (the restarted server neither adopts nor loses them).
func TestCrashLosesNothing(t *testing.T) {
	waitForBenchmarks(t)
	rounds := 1
	if soak() {
		rounds = 5
	}
	b := newBridge(t, t.TempDir(), "crash")
	b.writeConfig(hcfg{signers: []string{"crash"}})
	var acked []ackedKey
	for round := 1; round <= rounds; round++ {
		b.startBin(binary)
		got := crashUnderCreates(t, b)
		acked = append(acked, got...)
		t.Logf("round %d: %d creations acknowledged before SIGKILL (%d in all)", round, len(got), len(acked))
	}

	rows := keymapRows(t, b)
	onToken := tokenIDs(t, b, "crash")
	orphans := dryRunOrphans(t, b, "crash")
	byName := map[string]bool{}
	for _, r := range rows {
		byName[r.name] = true
	}
	lost := 0
	for _, k := range acked {
		switch {
		case k.kind == "kes" && !byName[k.id]:
			lost++
			t.Errorf("acknowledged KES key %q has no keymap row", k.id)
		case k.kind != "kes" && rows[k.id] == (rowInfo{}):
			lost++
			t.Errorf("acknowledged %s key %s has no keymap row", k.kind, k.id)
		case k.pub != "" && rows[k.pub] == (rowInfo{}):
			lost++
			t.Errorf("acknowledged public key %s has no keymap row", k.pub)
		}
	}
	dangling := 0
	rowTags := map[string]bool{}
	for id, r := range rows {
		tag := strings.TrimSuffix(id, "-pub")
		rowTags[tag] = true
		// A Destroyed row keeps its metadata without its token objects; every live row names one.
		if r.state != "destroyed" && r.state != "destroyed-compromised" && !onToken[tag] {
			dangling++
			t.Errorf("keymap row %s names no object on the token", id)
		}
	}
	// Every tag on the token without a row must be reported by the dry run, and nothing else.
	var unreported []string
	orphanTags := map[string]bool{}
	for id := range orphans {
		orphanTags[strings.TrimSuffix(id, "-pub")] = true
		if rowTags[strings.TrimSuffix(id, "-pub")] && rows[id] != (rowInfo{}) {
			t.Errorf("dry run reports %s, which the keymap has", id)
		}
	}
	for tag := range onToken {
		if !rowTags[tag] && !orphanTags[tag] {
			unreported = append(unreported, tag)
		}
	}
	if len(unreported) > 0 {
		t.Errorf("token objects neither in the keymap nor reported by the dry run: %v", unreported)
	}
	for _, k := range acked {
		if orphans[k.id] || orphans[k.pub] {
			t.Errorf("acknowledged key %s is reported as an orphan", k.id)
		}
	}
	t.Logf("after %d SIGKILL(s): %d acknowledged creations, %d keymap rows, %d tags on the token, %d orphan objects reported by the dry run, %d acknowledged keys without a row, %d rows without a token object",
		rounds, len(acked), len(rows), len(onToken), len(orphans), lost, dangling)

	// The restarted server serves every acknowledged key.
	b.startBin(binary)
	if strings.Contains(b.proc.Output(), "torn") {
		t.Logf("the keymap had a torn last row, dropped at start as designed")
	}
	checkAckedKeysWork(t, b, acked)
	b.proc.stop(t)
	after := dryRunOrphans(t, b, "crash")
	if !maps2Equal(orphans, after) {
		t.Errorf("the restarted server changed the orphans: %d before, %d after", len(orphans), len(after))
	}
}

// crashUnderCreates runs 32 creating clients against the running server and kills it with
// SIGKILL after a random moment once creations flow. It returns what was acknowledged.
func crashUnderCreates(t *testing.T, b *bridge) []ackedKey {
	t.Helper()
	admin := b.adminClient()
	var mu sync.Mutex
	var acked []ackedKey
	var killed atomic.Bool
	var failures []string
	ack := func(k ackedKey) {
		mu.Lock()
		acked = append(acked, k)
		mu.Unlock()
	}
	fail := func(who string, err error) bool {
		if killed.Load() {
			return true // the server is gone: expected
		}
		mu.Lock()
		failures = append(failures, fmt.Sprintf("%s: %v", who, err))
		mu.Unlock()
		return true
	}
	var wg sync.WaitGroup
	roles := []struct {
		kind string
		n    int
	}{{"kes", 10}, {"aes", 10}, {"ec", 8}, {"rsa", 4}}
	nonce := rand.Uint64()
	for _, r := range roles {
		for i := 0; i < r.n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				who := fmt.Sprintf("%s client %d", r.kind, i)
				if r.kind == "kes" {
					k := b.kesAs(admin)
					for n := 0; ; n++ {
						name := fmt.Sprintf("crash-%x-%d-%d", nonce, i, n)
						st, body, err := k.do(http.MethodPost, "/v1/key/create/"+name, nil)
						if err != nil || st != http.StatusOK {
							if err == nil {
								err = fmt.Errorf("%d %s", st, kesMessage(body))
							}
							fail(who, err)
							return
						}
						ack(ackedKey{kind: "kes", id: name})
					}
				}
				c, err := kmipclient.Dial(b.kmip, kmipclient.WithTlsConfig(b.tlsFor(admin)))
				if err != nil {
					fail(who, err)
					return
				}
				defer closeKMIP(c)
				for n := 0; ; n++ {
					name := fmt.Sprintf("crash-%x-%s-%d-%d", nonce, r.kind, i, n)
					var k ackedKey
					switch r.kind {
					case "aes":
						resp, err := c.Create().AES(256, kmip.CryptographicUsageEncrypt|kmip.CryptographicUsageDecrypt).WithName(name).Exec()
						if err != nil {
							fail(who, err)
							return
						}
						k = ackedKey{kind: "aes", id: resp.UniqueIdentifier}
					case "ec":
						resp, err := c.CreateKeyPair().ECDSA(kmip.RecommendedCurveP_256, kmip.CryptographicUsageSign, kmip.CryptographicUsageVerify).
							PrivateKey().WithName(name + "_priv").PublicKey().WithName(name + "_pub").Exec()
						if err != nil {
							fail(who, err)
							return
						}
						k = ackedKey{kind: "ec", id: resp.PrivateKeyUniqueIdentifier, pub: resp.PublicKeyUniqueIdentifier}
					case "rsa":
						resp, err := c.CreateKeyPair().RSA(2048, kmip.CryptographicUsageSign, kmip.CryptographicUsageVerify).
							PrivateKey().WithName(name + "_priv").PublicKey().WithName(name + "_pub").Exec()
						if err != nil {
							fail(who, err)
							return
						}
						k = ackedKey{kind: "rsa", id: resp.PrivateKeyUniqueIdentifier, pub: resp.PublicKeyUniqueIdentifier}
					}
					ack(k)
				}
			}()
		}
	}
	// Kill once creations flow, at a moment no client can predict.
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 100 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(time.Duration(500+rand.IntN(1500)) * time.Millisecond)
	killed.Store(true)
	if err := b.proc.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-b.proc.done
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("creations failed before the crash: %d, first: %s", len(failures), failures[0])
	}
	kinds := map[string]int{}
	for _, k := range acked {
		kinds[k.kind]++
	}
	t.Logf("acknowledged before SIGKILL: %v", kinds)
	return acked
}

// rowInfo is one keymap row as `keys list` prints it.
type rowInfo struct {
	class, state, name string
}

// keymapRows lists the keymap with the CLI (the server is stopped).
func keymapRows(t *testing.T, b *bridge) map[string]rowInfo {
	t.Helper()
	out, code := runCmd(t, b.env, "keys", "list", "--config", b.cfgPath)
	if code != 0 {
		t.Fatalf("keys list: %s", out)
	}
	rows := map[string]rowInfo{}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 5 || !isObjectID(f[0]) {
			continue
		}
		r := rowInfo{class: f[2], state: f[4]}
		if len(f) > 6 { // ID SIGNER CLASS ALGORITHM STATE EXPORT NAME
			r.name = f[6]
		}
		rows[f[0]] = r
	}
	return rows
}

var objectIDRe = regexp.MustCompile(`^[0-9a-f]{40}(-pub)?$`)

func isObjectID(s string) bool { return objectIDRe.MatchString(s) }

// tokenIDs lists the CKA_IDs of the objects on a token, as pkcs11-tool sees them.
func tokenIDs(t *testing.T, b *bridge, label string) map[string]bool {
	t.Helper()
	tok := b.tokens[label]
	// Standard output only: pkcs11-tool warns on stderr about every sensitive attribute.
	cmd := exec.Command("pkcs11-tool", "--module", tok.Module, "--token-label", tok.Label, "--login", "--pin", tok.PIN, "--list-objects")
	cmd.Env = append(os.Environ(), b.env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("pkcs11-tool: %v\n%s", err, stderr.String())
	}
	ids := map[string]bool{}
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "ID:"); ok {
			ids[strings.ToLower(strings.TrimSpace(v))] = true
		}
	}
	return ids
}

// dryRunOrphans is what `keys rebuild --dry-run` reports: identifiers on the token that the keymap
// lacks.
func dryRunOrphans(t *testing.T, b *bridge, signer string) map[string]bool {
	t.Helper()
	out, code := runCmd(t, b.env, "keys", "rebuild", "--config", b.cfgPath, "--signer", signer, "--dry-run")
	if code != 0 {
		t.Fatalf("keys rebuild --dry-run: %s", out)
	}
	ids := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 && isObjectID(f[0]) {
			if !strings.Contains(l, "not in the keymap") {
				t.Fatalf("dry run line without its verdict: %q", l)
			}
			ids[f[0]] = true
		}
	}
	return ids
}

func maps2Equal(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

// checkAckedKeysWork uses every acknowledged key once: AES keys encrypt and decrypt, key pairs sign
// (checked with the public key fetched from the server), KES keys generate and decrypt.
func checkAckedKeysWork(t *testing.T, b *bridge, acked []ackedKey) {
	t.Helper()
	admin := b.adminClient()
	work := make(chan ackedKey)
	var mu sync.Mutex
	var errs []string
	used := map[string]int{}
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := b.kmipAs(admin)
			if err != nil {
				mu.Lock()
				errs = append(errs, err.Error())
				mu.Unlock()
				for range work {
				}
				return
			}
			k := b.kesAs(admin)
			for key := range work {
				err := useKey(c, k, key)
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Sprintf("%s %s: %v", key.kind, key.id, err))
				} else {
					used[key.kind]++
				}
				mu.Unlock()
			}
		}()
	}
	for _, k := range acked {
		work <- k
	}
	close(work)
	wg.Wait()
	sort.Strings(errs)
	for _, e := range errs[:min(len(errs), 10)] {
		t.Error(e)
	}
	if len(errs) > 0 {
		t.Fatalf("%d of %d acknowledged keys do not work after the restart", len(errs), len(acked))
	}
	t.Logf("after the restart every acknowledged key works: %v", used)
}

func useKey(c *kmipclient.Client, k *kesHTTP, key ackedKey) error {
	data := []byte("after the crash " + key.id)
	switch key.kind {
	case "kes":
		dk, st, msg, err := k.generate(key.id, data)
		if err != nil || st != http.StatusOK {
			return fmt.Errorf("generate: %d %s %v", st, msg, err)
		}
		pt, st, msg, err := k.decrypt(key.id, dk.Ciphertext, data)
		if err != nil || st != http.StatusOK || !bytes.Equal(pt, dk.Plaintext) {
			return fmt.Errorf("decrypt: %d %s %v", st, msg, err)
		}
		return nil
	case "aes":
		if _, err := c.Activate(key.id).Exec(); err != nil {
			return err
		}
		params := kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeGCM, TagLength: 16}
		enc, err := c.Encrypt(key.id).WithCryptographicParameters(params).Data(data).Exec()
		if err != nil {
			return err
		}
		dec, err := c.Decrypt(key.id).WithCryptographicParameters(params).WithIvCounterNonce(enc.IVCounterNonce).
			WithAuthTag(enc.AuthenticatedEncryptionTag).Data(enc.Data).Exec()
		if err != nil {
			return err
		}
		if !bytes.Equal(dec.Data, data) {
			return fmt.Errorf("decrypt gave other bytes")
		}
		return nil
	case "ec", "rsa":
		if _, err := c.Activate(key.id).Exec(); err != nil {
			return err
		}
		if key.kind == "rsa" {
			sig, err := kmipSign(c, key.id, data)
			if err != nil {
				return err
			}
			pub, err := getPublic(c, key.pub)
			if err != nil {
				return err
			}
			return verifyAny(pub, data, sig)
		}
		resp, err := c.Sign(key.id).WithCryptographicParameters(kmip.CryptographicParameters{
			DigitalSignatureAlgorithm: kmip.DigitalSignatureAlgorithmECDSAWithSHA256}).Data(data).Exec()
		if err != nil {
			return err
		}
		pub, err := getPublic(c, key.pub)
		if err != nil {
			return err
		}
		return verifyAny(pub, data, resp.SignatureData)
	}
	return fmt.Errorf("unknown kind %q", key.kind)
}

// getPublic fetches a public key in X.509 SubjectPublicKeyInfo form.
func getPublic(c *kmipclient.Client, id string) (any, error) {
	resp, err := c.Get(id).WithKeyFormat(kmip.KeyFormatTypeX_509).Exec()
	if err != nil {
		return nil, err
	}
	pk, ok := resp.Object.(*kmip.PublicKey)
	if !ok {
		return nil, fmt.Errorf("Get %s: %T", id, resp.Object)
	}
	raw, err := pk.KeyBlock.GetBytes()
	if err != nil {
		return nil, err
	}
	return x509.ParsePKIXPublicKey(raw)
}

// verifyAny checks an ECDSA or RSA PKCS#1 v1.5 signature over SHA-256 of data.
func verifyAny(pub any, data, sig []byte) error {
	sum := sha256.Sum256(data)
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, sum[:], sig) {
			return fmt.Errorf("ECDSA signature does not verify")
		}
		return nil
	case *rsa.PublicKey:
		return rsa.VerifyPKCS1v15(k, crypto.SHA256, sum[:], sig)
	}
	return fmt.Errorf("public key of type %T", pub)
}

// soak says whether the long versions run (make soak sets P11BRIDGE_SOAK).
func soak() bool { return os.Getenv("P11BRIDGE_SOAK") != "" }
