package ttlv

import (
	"context"
	"testing"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"
)

// ovhClient dials the server with github.com/ovh/kmip-go's client as a test identity.
func ovhClient(t testing.TB, who string, opts ...kmipclient.Option) *kmipclient.Client {
	t.Helper()
	c := env.clients[who]
	all := append([]kmipclient.Option{
		kmipclient.WithRootCAFile(env.caFile),
		kmipclient.WithClientCertFiles(c.certFile, c.keyFile),
		kmipclient.WithServerName("127.0.0.1"),
	}, opts...)
	cl, err := kmipclient.DialContext(context.Background(), env.addr, all...)
	if err != nil {
		t.Fatalf("ovh client dial as %s: %v", who, err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func TestOVHSmoke(t *testing.T) {
	cl := ovhClient(t, "ovh")
	t.Logf("negotiated %s", cl.Version())
	q, err := cl.Query().Operations().Objects().ServerInformation().Exec()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("query: %+v", q)
	cr, err := cl.Create().AES(256, kmip.CryptographicUsageEncrypt|kmip.CryptographicUsageDecrypt).WithName("smoke-aes").Exec()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("created %s", cr.UniqueIdentifier)
	if _, err := cl.Activate(cr.UniqueIdentifier).Exec(); err != nil {
		t.Fatal(err)
	}
	enc, err := cl.Encrypt(cr.UniqueIdentifier).WithCryptographicParameters(kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeGCM}).Data([]byte("hello")).Exec()
	if err != nil {
		t.Fatal(err)
	}
	dec, err := cl.Decrypt(cr.UniqueIdentifier).WithCryptographicParameters(kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeGCM}).
		WithIvCounterNonce(enc.IVCounterNonce).WithAuthTag(enc.AuthenticatedEncryptionTag).Data(enc.Data).Exec()
	if err != nil {
		t.Fatal(err)
	}
	if string(dec.Data) != "hello" {
		t.Fatalf("decrypt gave %q", dec.Data)
	}
	ga, err := cl.GetAttributes(cr.UniqueIdentifier).Exec()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range ga.Attribute {
		t.Logf("attr %s = %v", a.AttributeName, a.AttributeValue)
	}
}
