//go:build p11fault

package ttlv

import (
	"bytes"
	"testing"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/payloads"

	"github.com/p11bridge/p11bridge/signer"
)

// A token that replaces the client's GCM IV with its own (FIPS-mode HSMs do) has its IV returned in
// IVCounterNonce, without which the client could not decrypt; an IV the token keeps is not echoed.
func TestTokenChoosesGCMIV(t *testing.T) {
	cl := ovhClient(t, "ovh")
	cr := must[*payloads.CreateResponsePayload](t)(cl.Create().AES(256, kmip.CryptographicUsageEncrypt|kmip.CryptographicUsageDecrypt).
		WithName("token-iv").Exec())
	id := cr.UniqueIdentifier
	must[*payloads.ActivateResponsePayload](t)(cl.Activate(id).Exec())
	gcm := kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeGCM}
	given := bytes.Repeat([]byte{0x01}, 12)
	tokenIV := bytes.Repeat([]byte{0xA5}, 12)

	enc := must[*payloads.EncryptResponsePayload](t)(cl.Encrypt(id).WithCryptographicParameters(gcm).WithIvCounterNonce(given).Data([]byte("hello")).Exec())
	if enc.IVCounterNonce != nil {
		t.Fatalf("the client's IV, kept by the token, came back: %x", enc.IVCounterNonce)
	}
	signer.SetTokenIV(tokenIV)
	enc, err := cl.Encrypt(id).WithCryptographicParameters(gcm).WithIvCounterNonce(given).Data([]byte("hello")).Exec()
	signer.SetTokenIV(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(enc.IVCounterNonce, tokenIV) {
		t.Fatalf("IVCounterNonce %x, want the token's %x", enc.IVCounterNonce, tokenIV)
	}
	dec := must[*payloads.DecryptResponsePayload](t)(cl.Decrypt(id).WithCryptographicParameters(gcm).
		WithIvCounterNonce(enc.IVCounterNonce).WithAuthTag(enc.AuthenticatedEncryptionTag).Data(enc.Data).Exec())
	if string(dec.Data) != "hello" {
		t.Fatalf("decrypt with the returned IV: %q", dec.Data)
	}
}
