package test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	kesclient "github.com/minio/kms-go/kes"
	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"

	"github.com/p11bridge/p11bridge/server/pki"
)

// TestRefusedClients: outside dev mode both front ends refuse a client without a certificate, a
// client limited to TLS 1.1, and certificates whose identity is neither configured nor chained to
// client_ca (self-signed, or from another CA). A CA-chained certificate and a configured KES API
// key (self-signed Ed25519) are let in, as the controls. Each row asserts the answer
// docs/guarantees.md names for it (section 3, "Who gets in").
func TestRefusedClients(t *testing.T) {
	b := newBridge(t, t.TempDir(), "refuse")
	apiKey, apiID, err := pki.APIKey()
	if err != nil {
		t.Fatal(err)
	}
	b.writeConfig(hcfg{signers: []string{"refuse"}, policies: fmt.Sprintf("policy \"api\" {\n  allow = [\"/v1/key/*\"]\n  identities = [%q]\n}\n", apiID)})
	b.startBin(binary)

	const (
		forbidden    = "not authorized: insufficient permissions"
		noIdentity   = "identity does not exist"
		kmipDenied   = `reason="PermissionDenied"`
		closedByPeer = "closed after the handshake" // KMIP: no TLS alert, the connection just ends
	)
	type kesAnswer struct {
		status int
		msg    string // the error answer's message; "" for a success
	}
	ok := kesAnswer{status: http.StatusOK}
	// KES routes asked, in this order: a key route, the self-describe route (needs an identity,
	// no policy) and /version (needs no identity).
	routes := []string{"/v1/key/list/*", "/v1/identity/self/describe", "/version"}
	apiCert := apiKeyClient(t, apiKey)
	otherCA := selfSigned(t, "other CA client") // issued by a CA the server does not know
	cases := []struct {
		name   string
		id     clientID
		tlsMax uint16
		kmip   string      // in the error of the first KMIP request; "" for a success
		kesTLS string      // in the KES handshake error; "" when the handshake succeeds
		kes    []kesAnswer // the answers on routes otherwise
	}{
		{name: "no certificate", id: clientID{name: "none"},
			kmip: "remote error: tls: certificate required", kesTLS: "remote error: tls: certificate required"},
		{name: "TLS 1.1", id: b.adminClient(), tlsMax: tls.VersionTLS11,
			kmip: "remote error: tls: protocol version not supported", kesTLS: "remote error: tls: protocol version not supported"},
		{name: "unknown certificate from another CA", id: otherCA,
			kmip: closedByPeer, kes: []kesAnswer{{403, forbidden}, {403, forbidden}, ok}},
		{name: "CA-chained certificate", id: b.issueClient("chained"),
			kmip: kmipDenied, kes: []kesAnswer{{403, forbidden}, {404, noIdentity}, ok}},
		{name: "configured API key (self-signed Ed25519)", id: apiCert,
			kmip: kmipDenied, kes: []kesAnswer{ok, ok, ok}},
		{name: "admin with TLS 1.2", id: b.adminClient(), tlsMax: tls.VersionTLS12,
			kes: []kesAnswer{ok, ok, ok}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := b.tlsFor(c.id)
			if c.tlsMax != 0 {
				cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS10, c.tlsMax
			}
			// KMIP: the client's version negotiation is the first request on the connection.
			kc, kerr := kmipclient.Dial(b.kmip, kmipclient.WithTlsConfig(cfg))
			if kerr == nil {
				_, kerr = kc.Query().Exec()
				closeKMIP(kc)
			}
			switch {
			case c.kmip == "":
				if kerr != nil {
					t.Errorf("KMIP: %v; want an answer", kerr)
				}
			case c.kmip == closedByPeer:
				// The server closes the connection: the client sees the end of the stream, or, when
				// its request was still being written, its own write fail on the closed connection.
				if !errors.Is(kerr, io.EOF) && !errors.Is(kerr, io.ErrClosedPipe) && !errors.Is(kerr, syscall.EPIPE) && !errors.Is(kerr, syscall.ECONNRESET) {
					t.Errorf("KMIP: %v; want the connection closed after the handshake (EOF)", kerr)
				}
			case kerr == nil || !strings.Contains(kerr.Error(), c.kmip):
				t.Errorf("KMIP: %v; want %s", kerr, c.kmip)
			}

			if c.kesTLS != "" {
				// The refusal is an alert; under TLS 1.3 it comes after the client's side of the
				// handshake, and an HTTP client that writes first may see its own broken pipe
				// instead. Reading is what surfaces the alert, every time.
				herr := kesRefusal(b.kes, cfg)
				if herr == nil || !strings.Contains(herr.Error(), c.kesTLS) {
					t.Errorf("KES: %v; want the handshake refused: %s", herr, c.kesTLS)
				}
				t.Logf("KMIP: %s; KES: %s", firstLine(kerr), firstLine(herr))
				return
			}
			tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}
			defer tr.CloseIdleConnections()
			hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			var got []kesAnswer
			var herr error
			for _, p := range routes {
				resp, err := hc.Get("https://" + b.kes + p)
				if err != nil {
					herr = err
					break
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					t.Fatalf("KES %s: read answer: %v", p, err)
				}
				a := kesAnswer{status: resp.StatusCode}
				if a.status != http.StatusOK {
					var e struct{ Message string }
					if err := json.Unmarshal(body, &e); err != nil {
						t.Fatalf("KES %s: %d with a body that is not {\"message\": …}: %q", p, a.status, body)
					}
					a.msg = e.Message
				}
				got = append(got, a)
			}
			if herr != nil || !slices.Equal(got, c.kes) {
				t.Errorf("KES on %v: %v (error %v); want %v", routes, got, herr, c.kes)
			}
			t.Logf("KMIP: %s; KES: %v %v", firstLine(kerr), got, firstLine(herr))
		})
	}
}

// kesRefusal handshakes with the KES listener as cfg and reads: the error the server's alert
// gives, or nil when the connection is kept open (a refusal would have come within the second).
func kesRefusal(addr string, cfg *tls.Config) error {
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"h2", "http/1.1"}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(time.Second))
	_, err = conn.Read(make([]byte, 1))
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return nil
	}
	return err
}

func firstLine(err error) string {
	if err == nil {
		return "<nil>"
	}
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// apiKeyClient is the certificate a kms-go client makes from a KES API key: self-signed Ed25519.
func apiKeyClient(t *testing.T, key string) clientID {
	t.Helper()
	ak, err := kesclient.ParseAPIKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := kesclient.GenerateCertificate(ak)
	if err != nil {
		t.Fatal(err)
	}
	return clientID{name: "api key", id: ak.Identity().String(), cert: cert}
}

// TestNoSecretsInOutput runs a busy session — KMIP and KES key operations, registered and
// imported key material, data keys, failures of every kind including token faults and a reload
// with a wrong PIN — at log level debug, then searches everything the server wrote (its log, the
// audit file, the /v1/log/error and /v1/log/audit streams, the keymap, every answer that was an
// error) for the PINs, for the key bytes clients registered or imported, and for every plaintext
// data key the server handed out, raw, in hex and in base64.
func TestNoSecretsInOutput(t *testing.T) {
	b := newBridge(t, t.TempDir(), "secrets", "secrets2")
	b.writeConfig(hcfg{signers: []string{"secrets"}, logLevel: "debug"})
	b.startBin(faultBinary)
	admin := b.adminClient()
	k := b.kesAs(admin)

	// Subscribe to both log streams for the whole session.
	var streams bytes.Buffer
	var smu sync.Mutex
	var swg sync.WaitGroup
	streamCtx, stopStreams := context.WithCancel(context.Background())
	defer stopStreams()
	for _, p := range []string{"/v1/log/error", "/v1/log/audit"} {
		req, _ := http.NewRequestWithContext(streamCtx, http.MethodGet, "https://"+b.kes+p, nil)
		resp, err := k.c.Do(req)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("subscribe %s: %v", p, err)
		}
		swg.Add(1)
		go func() {
			defer swg.Done()
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				smu.Lock()
				streams.Write(sc.Bytes())
				streams.WriteByte('\n')
				smu.Unlock()
			}
		}()
	}

	var secrets [][]byte // what must never appear
	var answers bytes.Buffer
	note := func(err error) {
		if err != nil {
			answers.WriteString(err.Error() + "\n")
		}
	}
	for _, tok := range b.tokens {
		secrets = append(secrets, []byte(tok.PIN))
	}
	wrongPIN := []byte("wrong-pin-8b1e4c")
	secrets = append(secrets, wrongPIN)

	// KES: data keys, an imported key, bad requests.
	if err := kesWant(k, http.MethodPost, "/v1/key/create/secret-kes", nil, 200); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		dk, st, msg, err := k.generate("secret-kes", []byte(fmt.Sprintf("ctx-%d", i)))
		if err != nil || st != 200 {
			t.Fatalf("generate: %d %s %v", st, msg, err)
		}
		secrets = append(secrets, dk.Plaintext)
		if _, st, msg, _ := k.decrypt("secret-kes", dk.Ciphertext, []byte("wrong context")); st != 400 {
			t.Fatalf("decrypt with a wrong context: %d %s", st, msg)
		} else {
			answers.WriteString(msg + "\n")
		}
		pt, st, msg, err := k.decrypt("secret-kes", dk.Ciphertext, []byte(fmt.Sprintf("ctx-%d", i)))
		if err != nil || st != 200 || !bytes.Equal(pt, dk.Plaintext) {
			t.Fatalf("decrypt: %d %s %v", st, msg, err)
		}
	}
	imported := randomBytes(t, 32)
	secrets = append(secrets, imported)
	if err := kesWant(k, http.MethodPost, "/v1/key/import/secret-import", map[string]any{"key": imported, "cipher": "AES256"}, 200); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []struct{ path, body string }{
		{"/v1/key/import/secret-import2", `{"key":"` + b64(imported[:31]) + `","cipher":"AES256"}`},
		{"/v1/key/import/secret-import", `{"key":"` + b64(imported) + `","cipher":"AES256"}`},
		{"/v1/key/encrypt/secret-kes", `{"plaintext":"` + b64(imported) + `","context":12}`},
		{"/v1/key/decrypt/secret-kes", `{"ciphertext":"` + b64(imported) + `"}`},
		{"/v1/key/generate/no-such-key", `{}`},
	} {
		req, _ := http.NewRequest(http.MethodPost, k.base+bad.path, strings.NewReader(bad.body))
		resp, err := k.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		answers.Write(body)
		answers.WriteByte('\n')
	}

	// KMIP: registered key bytes, encrypt/decrypt, signatures, failures.
	c, err := b.kmipAs(admin)
	if err != nil {
		t.Fatal(err)
	}
	regKey := randomBytes(t, 32)
	secrets = append(secrets, regKey)
	reg, err := c.Register().SymmetricKey(kmip.CryptographicAlgorithmAES, kmip.CryptographicUsageEncrypt|kmip.CryptographicUsageDecrypt, regKey).Exec()
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Activate(reg.UniqueIdentifier).Exec()
	note(err)
	plain := randomBytes(t, 48)
	secrets = append(secrets, plain)
	params := kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeGCM, TagLength: 16}
	enc, err := c.Encrypt(reg.UniqueIdentifier).WithCryptographicParameters(params).Data(plain).Exec()
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Decrypt(reg.UniqueIdentifier).WithCryptographicParameters(params).WithIvCounterNonce(enc.IVCounterNonce).
		WithAuthTag(make([]byte, 16)).Data(enc.Data).Exec()
	note(err)
	priv, _ := krillKeyPair(t, c, "secret-rsa")
	if _, err := kmipSign(c, priv, plain); err != nil {
		t.Fatal(err)
	}
	_, err = c.Get("ffffffffffffffffffffffffffffffffffffffff").Exec()
	note(err)
	_, err = c.Create().AES(100, kmip.CryptographicUsageEncrypt).Exec()
	note(err)

	// Token faults while both front ends work, then a reload that brings a signer with a wrong PIN.
	b.fault(0x30)
	for i := 0; i < 5; i++ {
		_, st, msg, _ := k.generate("secret-kes", nil)
		answers.WriteString(fmt.Sprintf("%d %s\n", st, msg))
		_, err := kmipSign(c, priv, plain)
		note(err)
		_, err = c.Encrypt(reg.UniqueIdentifier).WithCryptographicParameters(params).Data(plain).Exec()
		note(err)
	}
	b.fault(0)
	wrongFile := filepath.Join(b.dir, "wrong.pin")
	os.WriteFile(wrongFile, append(wrongPIN, '\n'), 0o600)
	b.writeConfig(hcfg{signers: []string{"secrets", "secrets2"}, logLevel: "debug"})
	cfg, _ := os.ReadFile(b.cfgPath)
	tok2 := b.tokens["secrets2"]
	cfg = bytes.Replace(cfg, []byte(filepath.Join(filepath.Dir(tok2.Conf), tok2.Label+".pin")), []byte(wrongFile), 1)
	os.WriteFile(b.cfgPath, cfg, 0o600)
	if ok, log := b.reload(); ok || !strings.Contains(log, "wrong PIN") {
		t.Fatalf("reload with a wrong PIN: %v\n%s", ok, log)
	}
	time.Sleep(300 * time.Millisecond) // the streams catch up
	stopStreams()
	b.proc.stop(t)
	swg.Wait()

	sources := map[string][]byte{"server log": []byte(b.proc.Output()), "error answers": answers.Bytes(), "log streams": streams.Bytes()}
	for _, f := range []string{"audit.log", "keymap.csv"} {
		data, err := os.ReadFile(filepath.Join(b.dir, f))
		if err != nil {
			t.Fatal(err)
		}
		sources[f] = data
	}
	found := 0
	for name, data := range sources {
		for _, s := range secrets {
			for _, form := range [][]byte{s, []byte(hex.EncodeToString(s)), []byte(strings.ToUpper(hex.EncodeToString(s))), []byte(b64(s)), []byte(strings.TrimRight(b64(s), "="))} {
				if len(form) >= 4 && bytes.Contains(data, form) {
					found++
					t.Errorf("%s contains a secret (%q)", name, form)
				}
			}
		}
	}
	if len(sources["server log"]) < 1000 || len(sources["audit.log"]) == 0 || len(sources["log streams"]) == 0 || len(sources["error answers"]) == 0 {
		t.Fatalf("too little output to judge: %d bytes of log, %d of audit, %d of streams, %d of error answers",
			len(sources["server log"]), len(sources["audit.log"]), len(sources["log streams"]), len(sources["error answers"]))
	}
	t.Logf("%d secrets (2 PINs and a wrong one, 50 data keys, imported and registered key bytes, a plaintext) searched in %d bytes of server log, %d of audit file, %d of log streams, %d of keymap, %d of error answers: %d found",
		len(secrets), len(sources["server log"]), len(sources["audit.log"]), len(sources["log streams"]), len(sources["keymap.csv"]), len(sources["error answers"]), found)
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}
