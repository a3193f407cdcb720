package ttlv

import (
	"encoding/binary"
	"runtime"
	"strings"
	"testing"

	"github.com/gemalto/kmip-go/kmip14"
	"github.com/gemalto/kmip-go/kmip20"
	tt "github.com/gemalto/kmip-go/ttlv"
)

func queryReq(v ProtocolVersion) *RequestMessage {
	return request(v, kmip14.OperationQuery, queryRequest{Functions: []uint32{uint32(kmip14.QueryFunctionQueryOperations)}})
}

// stillServes checks that a connection (and the server) still answers a well-formed request.
func stillServes(t *testing.T, r *rawClient) {
	t.Helper()
	ok(t, r.roundtrip(queryReq(v14)).Items[0])
}

// onlyFailure checks a whole-message failure response.
func onlyFailure(t *testing.T, out []byte, v ProtocolVersion, reason uint32, msgPart string) {
	t.Helper()
	resp := mustDecodeResponse(t, out)
	if resp.Header.ProtocolVersion != v {
		t.Errorf("error response speaks %s, want %s", resp.Header.ProtocolVersion, v)
	}
	failed(t, resp.Items[0], reason)
	if !strings.Contains(*resp.Items[0].ResultMessage, msgPart) {
		t.Errorf("message %q does not say %q", *resp.Items[0].ResultMessage, msgPart)
	}
}

func TestResponseHeaderFields(t *testing.T) {
	r := newRaw(t, "raw")
	out, _ := r.send(queryReq(ProtocolVersion{1, 2}).encode())
	n, err := parseNode(out)
	if err != nil {
		t.Fatal(err)
	}
	h := n.find(kmip14.TagResponseHeader)
	var tags []string
	for _, k := range h.Kids {
		tags = append(tags, tagName(k.Tag))
	}
	if strings.Join(tags, ",") != "ProtocolVersion,TimeStamp,BatchCount" {
		t.Fatalf("response header holds %v", tags)
	}
}

func TestMalformedMessages(t *testing.T) {
	r := newRaw(t, "raw")
	good := queryReq(v14).encode()

	t.Run("truncated inside", func(t *testing.T) {
		// The outer length is right but an inner item claims more bytes than there are.
		b := append([]byte(nil), good...)
		binary.BigEndian.PutUint32(b[12:], 0xffff)
		out, ok := r.send(b)
		if !ok {
			t.Fatal("server closed the connection")
		}
		onlyFailure(t, out, ProtocolVersion{1, 0}, rInvalidMsg, "truncated")
		// With the header intact, the answer speaks the request's version.
		b = append([]byte(nil), good...)
		hl := 8 + int(binary.BigEndian.Uint32(good[12:16]))
		binary.BigEndian.PutUint32(b[8+hl+4:], 0xfff0)
		out, _ = r.send(b)
		onlyFailure(t, out, v14, rInvalidMsg, "BatchItem")
		stillServes(t, r)
	})
	t.Run("wrong types", func(t *testing.T) {
		m := newStruct(kmip14.TagRequestMessage,
			newStruct(kmip14.TagRequestHeader, encodeStruct(kmip14.TagProtocolVersion, v14), newText(kmip14.TagBatchCount, "one")),
			newStruct(kmip14.TagBatchItem, newEnum(kmip14.TagOperation, uint32(kmip14.OperationQuery)), newStruct(kmip14.TagRequestPayload)))
		out, _ := r.send(m.bytes())
		onlyFailure(t, out, v14, rInvalidMsg, "BatchCount: expected Integer, got TextString")
		m = newStruct(kmip14.TagRequestMessage, newStruct(kmip14.TagRequestHeader,
			newStruct(kmip14.TagProtocolVersion, newEnum(kmip14.TagProtocolVersionMajor, 1), newInt(kmip14.TagProtocolVersionMinor, 2)), newInt(kmip14.TagBatchCount, 1)))
		out, _ = r.send(m.bytes())
		onlyFailure(t, out, ProtocolVersion{1, 0}, rInvalidMsg, "ProtocolVersionMajor")
		stillServes(t, r)
	})
	t.Run("bad payload fails its item only", func(t *testing.T) {
		m := request(v14, kmip14.OperationGet, newStruct(0, newInt(kmip14.TagUniqueIdentifier, 5)), kmip14.OperationQuery, queryRequest{})
		m.Header.BatchErrorContinuationOption = ptr(uint32(kmip14.BatchErrorContinuationOptionContinue))
		resp := r.roundtrip(m)
		failed(t, resp.Items[0], rInvalidField)
		ok(t, resp.Items[1])
	})
	t.Run("wrong versions", func(t *testing.T) {
		for _, c := range []struct {
			send, want ProtocolVersion
			reason     uint32
		}{
			{ProtocolVersion{3, 0}, ProtocolVersion{2, 0}, uint32(kmip20.ResultReasonUnsupportedProtocolVersion)},
			{ProtocolVersion{2, 1}, ProtocolVersion{2, 0}, uint32(kmip20.ResultReasonUnsupportedProtocolVersion)},
			{ProtocolVersion{1, 5}, ProtocolVersion{1, 4}, rInvalidMsg},
			{ProtocolVersion{0, 9}, ProtocolVersion{1, 0}, rInvalidMsg},
		} {
			out, _ := r.send(queryReq(c.send).encode())
			onlyFailure(t, out, c.want, c.reason, "not supported")
		}
		stillServes(t, r)
	})
	t.Run("batch count mismatch", func(t *testing.T) {
		m := queryReq(v14)
		m.Header.BatchCount = 3
		out, _ := r.send(m.encode())
		onlyFailure(t, out, v14, rInvalidMsg, "BatchCount")
	})
	t.Run("unknown operation", func(t *testing.T) {
		for _, o := range []kmip14.Operation{kmip14.OperationCertify, kmip14.OperationHash, 0x77} {
			failed(t, r.call(v14, o, newStruct(0)), rNotSupported)
		}
		// Encrypt exists from 1.2 on only.
		failed(t, r.call(ProtocolVersion{1, 1}, kmip14.OperationEncrypt, newStruct(0)), rNotSupported)
	})
	t.Run("response message as request", func(t *testing.T) {
		m := &ResponseMessage{Header: ResponseHeader{ProtocolVersion: v14, BatchCount: 0}}
		out, ok := r.send(m.encode())
		if !ok {
			t.Fatal("closed")
		}
		onlyFailure(t, out, ProtocolVersion{1, 0}, rInvalidMsg, "expected a RequestMessage")
		stillServes(t, r)
	})
	t.Run("deep nesting", func(t *testing.T) {
		n := newStruct(kmip14.TagRequestPayload)
		for i := 0; i < 2000; i++ {
			n = newStruct(kmip14.TagRequestPayload, n)
		}
		m := request(v14, kmip14.OperationQuery, n)
		out, _ := r.send(m.encode())
		onlyFailure(t, out, v14, rInvalidMsg, "nested deeper")
		stillServes(t, r)
	})
}

// TestOversizedMessage sends a header claiming 2 GiB: the server answers from the header alone,
// without allocating the body, and closes the connection.
func TestOversizedMessage(t *testing.T) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for _, l := range []uint32{1 << 31, 0xfffffff8, 1<<20 + 8} {
		r := newRaw(t, "raw")
		hdr := []byte{0x42, 0x00, 0x78, byte(tt.TypeStructure), 0, 0, 0, 0}
		binary.BigEndian.PutUint32(hdr[4:], l)
		out, ok := r.send(hdr)
		if !ok {
			t.Fatalf("length %d: no answer", l)
		}
		onlyFailure(t, out, ProtocolVersion{1, 0}, rInvalidMsg, "exceeds the limit")
		if _, ok := r.read(); ok {
			t.Fatal("connection stays open after an oversized message")
		}
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<20 {
		t.Fatalf("oversized headers made the process allocate %d MiB", grew>>20)
	}
	stillServes(t, newRaw(t, "raw"))
}

// TestNotKMIP sends bytes that are not TTLV, and a stream that ends inside a message: the server
// closes those connections cleanly and keeps serving others.
func TestNotKMIP(t *testing.T) {
	r := newRaw(t, "raw")
	if _, ok := r.send([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); ok {
		t.Fatal("answered HTTP")
	}
	r = newRaw(t, "raw")
	b := queryReq(v14).encode()
	if _, err := r.c.Write(b[:len(b)-5]); err != nil {
		t.Fatal(err)
	}
	_ = r.c.CloseWrite()
	if _, ok := r.read(); ok {
		t.Fatal("answered a truncated stream")
	}
	stillServes(t, newRaw(t, "raw"))
}
