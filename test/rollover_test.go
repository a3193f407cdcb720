package test

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	kesclient "github.com/minio/kms-go/kes"
	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"
)

var pkcs1SHA256 = kmip.CryptographicParameters{PaddingMethod: kmip.PaddingMethodPKCS1V1_5, HashingAlgorithm: kmip.HashingAlgorithmSHA_256, CryptographicAlgorithm: kmip.CryptographicAlgorithmRSA}

// krillKeyPair does what a Krill-style CA does to get a signing key: an RSA-2048 pair, activated.
func krillKeyPair(t *testing.T, c *kmipclient.Client, name string) (priv, pub string) {
	t.Helper()
	resp, err := c.CreateKeyPair().RSA(2048, kmip.CryptographicUsageSign, kmip.CryptographicUsageVerify).
		PrivateKey().WithName(name + "_priv").PublicKey().WithName(name + "_pub").Exec()
	if err != nil {
		t.Fatalf("CreateKeyPair: %v", err)
	}
	if _, err := c.Activate(resp.PrivateKeyUniqueIdentifier).Exec(); err != nil {
		t.Fatalf("Activate: %v", err)
	}
	return resp.PrivateKeyUniqueIdentifier, resp.PublicKeyUniqueIdentifier
}

func kmipSign(c *kmipclient.Client, id string, data []byte) ([]byte, error) {
	resp, err := c.Sign(id).WithCryptographicParameters(pkcs1SHA256).Data(data).Exec()
	if err != nil {
		return nil, err
	}
	return resp.SignatureData, nil
}

// publicKey fetches a public key (PKCS#1, as Krill asks for it) and parses it.
func publicKey(t *testing.T, c *kmipclient.Client, id string) *rsa.PublicKey {
	t.Helper()
	resp, err := c.Get(id).Exec()
	if err != nil {
		t.Fatalf("Get %s: %v", id, err)
	}
	pk, ok := resp.Object.(*kmip.PublicKey)
	if !ok {
		t.Fatalf("Get %s: %T", id, resp.Object)
	}
	raw, err := pk.KeyBlock.GetBytes()
	if err != nil {
		t.Fatal(err)
	}
	k, err := x509.ParsePKCS1PublicKey(raw)
	if err != nil {
		t.Fatalf("public key is not PKCS#1: %v", err)
	}
	return k
}

func verifyRSA(t *testing.T, pub *rsa.PublicKey, data, sig []byte) {
	t.Helper()
	sum := sha256.Sum256(data)
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], sig); err != nil {
		t.Fatalf("signature does not verify: %v", err)
	}
}

// TestRolloverBetweenTokens moves a CA and a MinIO-style KES user from token A to token B by
// configuration switches only, with a client signing throughout.
func TestRolloverBetweenTokens(t *testing.T) {
	b := newBridge(t, t.TempDir(), "roll-a", "roll-b")
	b.config([]string{"roll-a", "roll-b"}, "roll-a", "")
	b.start()
	// A broken config sent with SIGHUP is refused with the diagnostics of a start; the running one stays.
	good, _ := os.ReadFile(b.cfgPath)
	os.WriteFile(b.cfgPath, append(append([]byte{}, good...), []byte("rollover_signer = \"nope\"\n")...), 0o600)
	if out, code := runCmd(t, b.env, "reload", "--config", b.cfgPath); code == 0 || !strings.Contains(out, "p11bridge.hcl:") {
		t.Fatalf("reload of a broken config: exit %d\n%s", code, out)
	}
	b.proc.cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(b.proc.Output(), "configuration refused") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if log := b.proc.Output(); !strings.Contains(log, "configuration refused") || !strings.Contains(log, `rollover_signer \"nope\" names no signer`) {
		t.Fatalf("SIGHUP with a broken config:\n%s", log)
	}
	os.WriteFile(b.cfgPath, good, 0o600)
	c := b.kmipClient()
	kc := b.kesClient()

	privA, pubA := krillKeyPair(t, c, "krill_a")
	if !b.onToken("roll-a", privA) || b.onToken("roll-b", privA) {
		t.Fatal("the first key pair is not (only) on token A")
	}
	pubKeyA := publicKey(t, c, pubA)
	if err := kc.CreateKey(ctxBG, "kes-a"); err != nil {
		t.Fatal(err)
	}
	dekA, err := kc.GenerateKey(ctxBG, "kes-a", []byte("ctx"))
	if err != nil {
		t.Fatal(err)
	}

	// A client signs in a loop on its own connection through every reload below.
	loop := b.kmipClient()
	var stop atomic.Bool
	var signed, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if _, err := kmipSign(loop, privA, []byte("loop")); err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
			} else {
				signed.Add(1)
			}
		}
	}()

	b.config([]string{"roll-a", "roll-b"}, "roll-a", "roll-b")
	if ok, log := b.reload(); !ok {
		t.Fatalf("rollover config refused:\n%s", log)
	}
	if out, code := runCmd(t, b.env, "status", "--config", b.cfgPath); code != 0 || !strings.Contains(out, `ROLLOVER in progress: new keys go to "roll-b"`) ||
		!strings.Contains(out, "active 1") {
		t.Fatalf("status during rollover:\n%s", out)
	} else if !regexp.MustCompile(`(?m)^roll-a\s+default\s+true\s+2\s`).MatchString(out) {
		// The generate on kes-a and the signatures with krill_a made session copies of their keys
		// in token A: the AES key and the RSA private key.
		t.Fatalf("status does not show token A's two key copies:\n%s", out)
	}
	privB, pubB := krillKeyPair(t, c, "krill_b")
	if out, code := runCmd(t, b.env, "keys", "list", "--config", b.cfgPath, "--signer", "roll-b"); code != 0 || !strings.Contains(out, privB) || strings.Contains(out, privA) {
		t.Fatalf("keys list --signer roll-b while serving:\n%s", out)
	}
	if !b.onToken("roll-b", privB) || b.onToken("roll-a", privB) {
		t.Fatal("a key pair made during rollover is not on token B")
	}
	if err := kc.CreateKey(ctxBG, "kes-b"); err != nil {
		t.Fatal(err)
	}
	// Old keys keep working where they are.
	sig, err := kmipSign(c, privA, []byte("old key, new era"))
	if err != nil {
		t.Fatal(err)
	}
	verifyRSA(t, pubKeyA, []byte("old key, new era"), sig)
	if pt, err := kc.Decrypt(ctxBG, "kes-a", dekA.Ciphertext, []byte("ctx")); err != nil || !bytes.Equal(pt, dekA.Plaintext) {
		t.Fatalf("decrypt with the key on A: %v", err)
	}
	sigB, err := kmipSign(c, privB, []byte("new key"))
	if err != nil {
		t.Fatal(err)
	}
	verifyRSA(t, publicKey(t, c, pubB), []byte("new key"), sigB)
	dekB, err := kc.GenerateKey(ctxBG, "kes-b", nil)
	if err != nil {
		t.Fatal(err)
	}

	// Finish: B becomes the default; A cannot go while it holds live keys.
	b.config([]string{"roll-a", "roll-b"}, "roll-b", "")
	if ok, log := b.reload(); !ok {
		t.Fatalf("default switch refused:\n%s", log)
	}
	b.config([]string{"roll-b"}, "roll-b", "")
	if ok, log := b.reload(); ok || !strings.Contains(log, "still holds") {
		t.Fatalf("removing a signer with live keys was not refused:\n%s", log)
	}
	time.Sleep(200 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	if failed.Load() != 0 || signed.Load() == 0 {
		t.Fatalf("signing loop: %d signed, %d failed (first: %v)", signed.Load(), failed.Load(), firstErr.Load())
	}
	t.Logf("signing loop: %d signatures through three reloads, none failed", signed.Load())

	if _, err := c.Destroy(pubA).Exec(); err != nil {
		t.Fatalf("Destroy public A: %v", err)
	}
	if _, err := c.Revoke(privA).WithRevocationReasonCode(kmip.RevocationReasonCodeCessationOfOperation).Exec(); err != nil {
		t.Fatalf("Revoke private A: %v", err)
	}
	if _, err := c.Destroy(privA).Exec(); err != nil {
		t.Fatalf("Destroy private A: %v", err)
	}
	if err := kc.DeleteKey(ctxBG, "kes-a"); err != nil {
		t.Fatal(err)
	}
	if ok, log := b.reload(); !ok {
		t.Fatalf("removing an empty signer refused:\n%s", log)
	}

	// A restart keeps all of it.
	b.proc.stop(t)
	b.start()
	c = b.kmipClient()
	kc = b.kesClient()
	sigB, err = kmipSign(c, privB, []byte("after restart"))
	if err != nil {
		t.Fatal(err)
	}
	verifyRSA(t, publicKey(t, c, pubB), []byte("after restart"), sigB)
	if pt, err := kc.Decrypt(ctxBG, "kes-b", dekB.Ciphertext, nil); err != nil || !bytes.Equal(pt, dekB.Plaintext) {
		t.Fatalf("decrypt after restart: %v", err)
	}
	if _, err := kc.DescribeKey(ctxBG, "kes-a"); !errors.Is(err, kesclient.ErrKeyNotFound) {
		t.Fatalf("deleted key: %v", err)
	}
	if _, err := c.Get(privA).Exec(); err == nil {
		t.Fatal("a destroyed key is still there")
	}
}

// TestRebuildAfterLostKeymap: with the keymap CSV gone, `keys rebuild` restores a map with which every
// key signs and decrypts again, under the same identifiers and key identifiers.
func TestRebuildAfterLostKeymap(t *testing.T) {
	b := newBridge(t, t.TempDir(), "rebuild")
	b.config([]string{"rebuild"}, "rebuild", "")
	b.start()
	c := b.kmipClient()
	kc := b.kesClient()
	priv, pub := krillKeyPair(t, c, "rb")
	pk := publicKey(t, c, pub)
	if err := kc.CreateKey(ctxBG, "rb-kes"); err != nil {
		t.Fatal(err)
	}
	dek, err := kc.GenerateKey(ctxBG, "rb-kes", nil)
	if err != nil {
		t.Fatal(err)
	}
	b.proc.stop(t)
	before, code := runCmd(t, b.env, "keys", "show", "--config", b.cfgPath, priv)
	if code != 0 {
		t.Fatal(before)
	}
	if err := os.Remove(b.keymap); err != nil {
		t.Fatal(err)
	}
	if out, code := runCmd(t, b.env, "keys", "rebuild", "--config", b.cfgPath, "--signer", "rebuild", "--dry-run"); code != 0 || !strings.Contains(out, priv) {
		t.Fatalf("dry run: %s", out)
	}
	if out, code := runCmd(t, b.env, "keys", "rebuild", "--config", b.cfgPath, "--signer", "rebuild"); code != 0 || !strings.Contains(out, "3 objects added") {
		t.Fatalf("rebuild: %s", out)
	}
	after, _ := runCmd(t, b.env, "keys", "show", "--config", b.cfgPath, priv)
	if keyIDLine(before) == "" || keyIDLine(before) != keyIDLine(after) {
		t.Fatalf("key identifier changed:\n%s\n%s", before, after)
	}
	b.start()
	c = b.kmipClient()
	kc = b.kesClient()
	sig, err := kmipSign(c, priv, []byte("rebuilt"))
	if err != nil {
		t.Fatal(err)
	}
	verifyRSA(t, pk, []byte("rebuilt"), sig)
	if pt, err := kc.Decrypt(ctxBG, "rb-kes", dek.Ciphertext, nil); err != nil || !bytes.Equal(pt, dek.Plaintext) {
		t.Fatalf("decrypt after rebuild: %v", err)
	}
}

func keyIDLine(show string) string {
	for _, l := range strings.Split(show, "\n") {
		if strings.HasPrefix(l, "key id") {
			return l
		}
	}
	return ""
}

// TestTwoInstancesOneToken: a key made through one instance is usable through another instance in
// front of the same token, by its identifier.
func TestTwoInstancesOneToken(t *testing.T) {
	dir := t.TempDir()
	one := newBridge(t, dir, "shared")
	one.config([]string{"shared"}, "shared", "")
	one.start()
	two := newBridge(t, dir, "shared")
	two.cfgPath = dir + "/two.hcl"
	two.keymap = dir + "/two.csv"
	two.config([]string{"shared"}, "shared", "")
	two.start()
	priv, pub := krillKeyPair(t, one.kmipClient(), "shared")
	c2 := two.kmipClient()
	sig, err := kmipSign(c2, priv, []byte("from the other instance"))
	if err != nil {
		t.Fatalf("sign through the second instance: %v", err)
	}
	verifyRSA(t, publicKey(t, c2, pub), []byte("from the other instance"), sig)
}
