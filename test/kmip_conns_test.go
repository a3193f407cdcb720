package test

import (
	"crypto/tls"
	"fmt"
	"testing"
	"time"

	"github.com/ovh/kmip-go/kmipclient"
)

// One identity cannot take every KMIP connection slot (kmip.max_connections_per_identity), and
// identities with no KMIP rights — let in to be told Permission Denied — share a few slots of
// their own instead of the ones clients with work use.
func TestKMIPConnectionsPerIdentity(t *testing.T) {
	b := newBridge(t, t.TempDir(), "conns")
	user, nobody := b.issueClient("kmip-user"), b.issueClient("no-rights")
	b.writeConfig(hcfg{signers: []string{"conns"}, kmip: "max_connections_per_identity = 3",
		policies: fmt.Sprintf("policy \"kmip\" {\n  kmip = [\"*\"]\n  identities = [%q]\n}\n", user.id)})
	b.startBin(binary)
	dial := func(id clientID) error {
		c, err := kmipclient.Dial(b.kmip, kmipclient.WithTlsConfig(b.tlsFor(id)))
		if err != nil {
			return err
		}
		t.Cleanup(func() { closeKMIP(c) })
		_, err = c.Query().Exec()
		return err
	}
	for i := 0; i < 3; i++ {
		if err := dial(user); err != nil {
			t.Fatalf("connection %d of the identity: %v", i+1, err)
		}
	}
	if err := dial(user); err == nil {
		t.Fatal("a fourth connection of one identity was served past max_connections_per_identity = 3")
	}
	// Raw connections that stay open: each asks DiscoverVersions once, as a client would.
	refused := 0
	for i := 0; i < 70; i++ {
		c, err := tls.Dial("tcp", b.kmip, b.tlsFor(nobody))
		if err != nil {
			refused++
			continue
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(discoverVersionsRequest(t)); err != nil {
			refused++
			continue
		}
		if _, err := readTTLV(c); err != nil {
			refused++
		}
	}
	if refused != 70-64 {
		t.Fatalf("%d of 70 connections of an identity without rights refused, want 6 (64 share their slots)", refused)
	}
	// Meanwhile the admin, with rights, is served.
	if err := dial(b.adminClient()); err != nil {
		t.Fatalf("the admin while the unprivileged slots are full: %v", err)
	}
}
