package ttlv

import (
	"crypto/tls"
	"encoding/binary"
	"io"
	"testing"
	"time"

	"github.com/gemalto/kmip-go/kmip14"
)

// rawClient speaks TTLV over a TLS connection with the package's own message types, for what the
// two real clients cannot send: KMIP 2.0 from Go, MAC, RNG, malformed and hand-made messages.
type rawClient struct {
	t testing.TB
	c *tls.Conn
}

func newRaw(t testing.TB, who string) *rawClient {
	c := dialTLS(t, who)
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, c: c}
}

// send writes bytes and reads one response message; ok is false when the server closed instead.
func (r *rawClient) send(b []byte) ([]byte, bool) {
	r.t.Helper()
	_ = r.c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := r.c.Write(b); err != nil {
		return nil, false
	}
	return r.read()
}

func (r *rawClient) read() ([]byte, bool) {
	var hdr [8]byte
	if _, err := io.ReadFull(r.c, hdr[:]); err != nil {
		return nil, false
	}
	body := make([]byte, binary.BigEndian.Uint32(hdr[4:]))
	if _, err := io.ReadFull(r.c, body); err != nil {
		r.t.Fatalf("truncated response: %v", err)
	}
	return append(hdr[:], body...), true
}

// roundtrip sends a request message and decodes the response.
func (r *rawClient) roundtrip(req *RequestMessage) *ResponseMessage {
	r.t.Helper()
	out, ok := r.send(req.encode())
	if !ok {
		r.t.Fatal("server closed the connection")
	}
	return mustDecodeResponse(r.t, out)
}

func mustDecodeResponse(t testing.TB, out []byte) *ResponseMessage {
	t.Helper()
	n, err := parseNode(out)
	if err != nil {
		t.Fatalf("response does not parse: %v", err)
	}
	resp, err := decodeResponse(n)
	if err != nil {
		t.Fatalf("response does not decode: %v", err)
	}
	return resp
}

// request builds a request message with one item per payload (payloads are structs or *node).
func request(v ProtocolVersion, items ...any) *RequestMessage {
	m := &RequestMessage{Header: RequestHeader{ProtocolVersion: v, BatchCount: int32(len(items) / 2)}}
	for i := 0; i+1 < len(items); i += 2 {
		var p *node
		switch x := items[i+1].(type) {
		case *node:
			p = x
		default:
			p = encodeStruct(kmip14.TagRequestPayload, x)
		}
		m.Items = append(m.Items, RequestBatchItem{Operation: uint32(items[i].(kmip14.Operation)), RequestPayload: retag(p, kmip14.TagRequestPayload)})
	}
	return m
}

// call runs one operation and returns its response item.
func (r *rawClient) call(v ProtocolVersion, o kmip14.Operation, payload any) ResponseBatchItem {
	r.t.Helper()
	resp := r.roundtrip(request(v, o, payload))
	if resp.Header.ProtocolVersion != v || len(resp.Items) != 1 {
		r.t.Fatalf("%s: response version %s with %d items", o, resp.Header.ProtocolVersion, len(resp.Items))
	}
	return resp.Items[0]
}

// ok fails the test unless the item succeeded, and returns its payload.
func ok(t testing.TB, it ResponseBatchItem) *node {
	t.Helper()
	if it.ResultStatus != uint32(kmip14.ResultStatusSuccess) {
		t.Fatalf("%s failed: %s: %s", opName(*it.Operation), tagEnumName(kmip14.TagResultReason, *it.ResultReason), *it.ResultMessage)
	}
	n, _ := it.Payload.(*node)
	return n
}

// failed checks that an item failed with reason and a message.
func failed(t testing.TB, it ResponseBatchItem, reason uint32) {
	t.Helper()
	if it.ResultStatus != uint32(kmip14.ResultStatusOperationFailed) || it.ResultReason == nil || *it.ResultReason != reason {
		got := "none"
		if it.ResultReason != nil {
			got = tagEnumName(kmip14.TagResultReason, *it.ResultReason) + ": " + *it.ResultMessage
		}
		t.Fatalf("want failure %s, got status %d reason %s", tagEnumName(kmip14.TagResultReason, reason), it.ResultStatus, got)
	}
	if it.ResultMessage == nil || *it.ResultMessage == "" {
		t.Fatalf("failure %s without a message", tagEnumName(kmip14.TagResultReason, reason))
	}
}
