package test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"
	"github.com/ovh/kmip-go/payloads"
)

// RNGRetrieve, which Krill uses when the server offers it, is not among the ovh client's payloads.
type rngRetrieveRequest struct{ DataLength int32 }

func (*rngRetrieveRequest) Operation() kmip.Operation { return kmip.OperationRNGRetrieve }

type rngRetrieveResponse struct{ Data []byte }

func (*rngRetrieveResponse) Operation() kmip.Operation { return kmip.OperationRNGRetrieve }

func init() {
	kmip.RegisterOperationPayload[rngRetrieveRequest, rngRetrieveResponse](kmip.OperationRNGRetrieve)
}

// krillSigner is the KMIP [[signers]] entry of a krill.conf, read by Python's tomllib (a real
// TOML parser, so the how-to's file must be valid TOML).
type krillSigner struct {
	Type, Name, Host                string
	Port                            int
	ServerCA                        string `json:"server_ca_cert_path"`
	ClientCert                      string `json:"client_cert_path"`
	ClientKey                       string `json:"client_cert_private_key_path"`
	Insecure, Force                 bool
	Username, Password              string
	ConnectTimeout, ReadTimeoutSecs int
}

func readKrillConf(t *testing.T, path string) (krillSigner, string) {
	t.Helper()
	out, err := exec.Command("/usr/bin/python3", "-c", `import json, sys, tomllib
c = tomllib.load(open(sys.argv[1], "rb"))
print(json.dumps({"default_signer": c.get("default_signer"), "signers": c.get("signers", [])}))`, path).CombinedOutput()
	if err != nil {
		t.Fatalf("krill.conf is not valid TOML: %v\n%s", err, out)
	}
	var conf struct {
		DefaultSigner string            `json:"default_signer"`
		Signers       []json.RawMessage `json:"signers"`
	}
	if err := json.Unmarshal(out, &conf); err != nil {
		t.Fatal(err)
	}
	for _, raw := range conf.Signers {
		var s krillSigner
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatal(err)
		}
		if s.Type == "KMIP" {
			return s, conf.DefaultSigner
		}
	}
	t.Fatalf("krill.conf has no KMIP signer: %s", out)
	return krillSigner{}, ""
}

// krillClient connects as Krill's KMIP client does with these settings: its certificate, the
// server CA, the host name verified (insecure = false), Krill's 5 s timeouts.
func krillClient(t *testing.T, s krillSigner) *kmipclient.Client {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(s.ClientCert, s.ClientKey)
	if err != nil {
		t.Fatalf("client_cert_path/client_cert_private_key_path: %v", err)
	}
	pem, err := os.ReadFile(s.ServerCA)
	if err != nil {
		t.Fatalf("server_ca_cert_path: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("server_ca_cert_path holds no certificate")
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: s.Host, InsecureSkipVerify: s.Insecure}
	c, err := kmipclient.Dial(net.JoinHostPort(s.Host, strconv.Itoa(s.Port)), kmipclient.WithTlsConfig(cfg),
		kmipclient.EnforceVersion(kmip10)) // Krill sends no DiscoverVersions
	if err != nil {
		t.Fatalf("connect as Krill: %v", err)
	}
	return c
}

var (
	kmip10 = kmip.ProtocolVersion{ProtocolVersionMajor: 1, ProtocolVersionMinor: 0}
	kmip12 = kmip.ProtocolVersion{ProtocolVersionMajor: 1, ProtocolVersionMinor: 2}
)

// krillRequest sends one request at version v and checks what Krill's client relies on: an answer
// in the request's version, one batch item, the operation echoed, success.
func krillRequest(c *kmipclient.Client, v kmip.ProtocolVersion, pl kmip.OperationPayload) (kmip.OperationPayload, error) {
	msg := kmip.NewRequestMessage(v, pl)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.Roundtrip(ctx, &msg)
	if err != nil {
		return nil, fmt.Errorf("%v: %w", pl.Operation(), err)
	}
	if resp.Header.ProtocolVersion != v || len(resp.BatchItem) != 1 || resp.BatchItem[0].Operation != pl.Operation() {
		return nil, fmt.Errorf("%v at %v: answered at %v with %d items, operation %v", pl.Operation(), v, resp.Header.ProtocolVersion,
			len(resp.BatchItem), resp.BatchItem[0].Operation)
	}
	if err := resp.BatchItem[0].Err(); err != nil {
		return nil, fmt.Errorf("%v: %w", pl.Operation(), err)
	}
	return resp.BatchItem[0].ResponsePayload, nil
}

func krillNameAttr(n string) kmip.Attribute {
	return kmip.Attribute{AttributeName: kmip.AttributeNameName, AttributeValue: kmip.Name{NameValue: n, NameType: kmip.NameTypeUninterpretedTextString}}
}

// krillMakeKey is Krill's build_key: CreateKeyPair, Get of the public key, two renames, Activate.
func krillMakeKey(c *kmipclient.Client) (priv, pub string, key *rsa.PublicKey, err error) {
	stamp := time.Now().Unix()
	out, err := krillRequest(c, kmip10, &payloads.CreateKeyPairRequestPayload{
		CommonTemplateAttribute: &kmip.TemplateAttribute{Attribute: []kmip.Attribute{
			{AttributeName: kmip.AttributeNameCryptographicAlgorithm, AttributeValue: kmip.CryptographicAlgorithmRSA},
			{AttributeName: kmip.AttributeNameCryptographicLength, AttributeValue: int32(2048)}}},
		PrivateKeyTemplateAttribute: &kmip.TemplateAttribute{Attribute: []kmip.Attribute{
			krillNameAttr(fmt.Sprintf("krill_new_key_%d_priv", stamp)),
			{AttributeName: kmip.AttributeNameCryptographicUsageMask, AttributeValue: kmip.CryptographicUsageSign}}},
		PublicKeyTemplateAttribute: &kmip.TemplateAttribute{Attribute: []kmip.Attribute{
			krillNameAttr(fmt.Sprintf("krill_new_key_%d_pub", stamp)),
			{AttributeName: kmip.AttributeNameCryptographicUsageMask, AttributeValue: kmip.CryptographicUsageVerify}}},
	})
	if err != nil {
		return "", "", nil, err
	}
	kp := out.(*payloads.CreateKeyPairResponsePayload)
	priv, pub = kp.PrivateKeyUniqueIdentifier, kp.PublicKeyUniqueIdentifier
	out, err = krillRequest(c, kmip10, &payloads.GetRequestPayload{UniqueIdentifier: pub})
	if err != nil {
		return "", "", nil, err
	}
	pk, ok := out.(*payloads.GetResponsePayload).Object.(*kmip.PublicKey)
	if !ok || pk.KeyBlock.KeyFormatType != kmip.KeyFormatTypePKCS_1 {
		return "", "", nil, fmt.Errorf("Get(public): not a PKCS#1 public key")
	}
	der, err := pk.KeyBlock.GetBytes()
	if err != nil {
		return "", "", nil, err
	}
	if key, err = x509.ParsePKCS1PublicKey(der); err != nil {
		return "", "", nil, fmt.Errorf("Get(public): %w", err)
	}
	ski := sha1.Sum(der)
	for id, name := range map[string]string{pub: "krill-public-key-" + hex.EncodeToString(ski[:]), priv: "krill-private-key-" + hex.EncodeToString(ski[:])} {
		if _, err := krillRequest(c, kmip10, &payloads.ModifyAttributeRequestPayload{UniqueIdentifier: id, Attribute: krillNameAttr(name)}); err != nil {
			return "", "", nil, err
		}
	}
	if _, err := krillRequest(c, kmip10, &payloads.ActivateRequestPayload{UniqueIdentifier: priv}); err != nil {
		return "", "", nil, err
	}
	return priv, pub, key, nil
}

func krillSign(c *kmipclient.Client, priv string, key *rsa.PublicKey, data []byte) error {
	out, err := krillRequest(c, kmip12, &payloads.SignRequestPayload{UniqueIdentifier: priv, Data: data, CryptographicParameters: &kmip.CryptographicParameters{
		PaddingMethod: kmip.PaddingMethodPKCS1V1_5, HashingAlgorithm: kmip.HashingAlgorithmSHA_256, CryptographicAlgorithm: kmip.CryptographicAlgorithmRSA}})
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	return rsa.VerifyPKCS1v15(key, crypto.SHA256, sum[:], out.(*payloads.SignResponsePayload).SignatureData)
}

// replayKrill sends what Krill sends, in its order and versions (docs/howto-krill.md, "What Krill
// sends"), and returns the first deviation.
func replayKrill(c *kmipclient.Client) error {
	out, err := krillRequest(c, kmip12, &payloads.QueryRequestPayload{QueryFunction: []kmip.QueryFunction{
		kmip.QueryFunctionOperations, kmip.QueryFunctionObjects, kmip.QueryFunctionServerInformation}})
	if err != nil {
		return err
	}
	q := out.(*payloads.QueryResponsePayload)
	have := map[kmip.Operation]bool{}
	for _, op := range q.Operations {
		have[op] = true
		if op > 0x29 {
			return fmt.Errorf("Query at 1.2 lists operation %#x, which Krill's enums do not know", uint32(op))
		}
	}
	for _, op := range []kmip.Operation{kmip.OperationCreateKeyPair, kmip.OperationActivate, kmip.OperationSign, kmip.OperationRevoke,
		kmip.OperationDestroy, kmip.OperationGet, kmip.OperationModifyAttribute, kmip.OperationRNGRetrieve} {
		if !have[op] {
			return fmt.Errorf("Query lacks %v; Krill would refuse the server (force = false)", op)
		}
	}
	if !strings.HasPrefix(q.VendorIdentification, "p11bridge") {
		return fmt.Errorf("VendorIdentification %q", q.VendorIdentification)
	}
	out, err = krillRequest(c, kmip12, &rngRetrieveRequest{DataLength: 32})
	if err != nil {
		return err
	}
	if n := len(out.(*rngRetrieveResponse).Data); n != 32 {
		return fmt.Errorf("RNGRetrieve gave %d bytes", n)
	}
	// The signer identity key, and its registration challenge.
	idPriv, _, idKey, err := krillMakeKey(c)
	if err != nil {
		return fmt.Errorf("signer identity key: %w", err)
	}
	challenge := make([]byte, 32)
	rand.Read(challenge)
	if err := krillSign(c, idPriv, idKey, challenge); err != nil {
		return fmt.Errorf("registration challenge: %w", err)
	}
	// A CA key, signing a few objects.
	caPriv, caPub, caKey, err := krillMakeKey(c)
	if err != nil {
		return fmt.Errorf("CA key: %w", err)
	}
	for i := 0; i < 5; i++ {
		if err := krillSign(c, caPriv, caKey, []byte(fmt.Sprintf("RPKI object %d", i))); err != nil {
			return err
		}
	}
	// A key roll: a new CA key, the old one retired.
	if _, _, _, err := krillMakeKey(c); err != nil {
		return fmt.Errorf("key roll: %w", err)
	}
	if _, err := krillRequest(c, kmip10, &payloads.DestroyRequestPayload{UniqueIdentifier: caPub}); err != nil {
		return err
	}
	if _, err := krillRequest(c, kmip10, &payloads.RevokeRequestPayload{UniqueIdentifier: caPriv,
		RevocationReason: kmip.RevocationReason{RevocationReasonCode: kmip.RevocationReasonCodeCessationOfOperation}}); err != nil {
		return err
	}
	if _, err := krillRequest(c, kmip10, &payloads.DestroyRequestPayload{UniqueIdentifier: caPriv}); err != nil {
		return err
	}
	// A failed setup: both halves destroyed without Revoke, the private one still Pre-Active.
	out, err = krillRequest(c, kmip10, &payloads.CreateKeyPairRequestPayload{
		CommonTemplateAttribute: &kmip.TemplateAttribute{Attribute: []kmip.Attribute{
			{AttributeName: kmip.AttributeNameCryptographicAlgorithm, AttributeValue: kmip.CryptographicAlgorithmRSA},
			{AttributeName: kmip.AttributeNameCryptographicLength, AttributeValue: int32(2048)}}},
	})
	if err != nil {
		return err
	}
	kp := out.(*payloads.CreateKeyPairResponsePayload)
	for _, id := range []string{kp.PublicKeyUniqueIdentifier, kp.PrivateKeyUniqueIdentifier} {
		if _, err := krillRequest(c, kmip10, &payloads.DestroyRequestPayload{UniqueIdentifier: id}); err != nil {
			return fmt.Errorf("cleanup after a failed setup: %w", err)
		}
	}
	return nil
}

// TestHowtoKrill runs docs/howto-krill.md as written and, where it says Krill connects, replays
// Krill's requests with the settings of the krill.conf it wrote.
func TestHowtoKrill(t *testing.T) {
	_, out := howtoRun(t, "howto-krill.md", nil, map[string]howtoHook{
		"krill": func(work string, ports map[string]string) {
			s, def := readKrillConf(t, filepath.Join(work, "krill.conf"))
			if def != s.Name || s.Insecure || s.Force || s.Username != "" {
				t.Errorf("krill.conf: default_signer %q, signer %+v", def, s)
			}
			c := krillClient(t, s)
			defer c.Close()
			if err := replayKrill(c); err != nil {
				t.Fatalf("Krill's request sequence: %v", err)
			}
		},
	})
	for _, want := range []string{"krill-private-key-", "krill-public-key-", "KMIP yes  CreateKeyPair RSA, Sign PKCS#1 v1.5 (Krill)"} {
		if !strings.Contains(out, want) {
			t.Errorf("the how-to's output lacks %q:\n%s", want, out)
		}
	}
	// The keys list shows the identity key and the new CA key live, the rolled one destroyed (its
	// metadata stays), and the audit log counts the challenge and the five object signatures.
	live, destroyed := 0, 0
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "krill-private-key-") {
			if strings.Contains(l, " destroyed ") {
				destroyed++
			} else {
				live++
			}
		}
	}
	if live != 2 || destroyed != 1 {
		t.Errorf("keys list shows %d live and %d destroyed Krill private keys, want 2 and 1:\n%s", live, destroyed, out)
	}
	if !strings.Contains(out, "\n6\n") {
		t.Errorf("the audit log does not count 6 signatures:\n%s", out)
	}
}
