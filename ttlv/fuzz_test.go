package ttlv

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/p11bridge/p11bridge/signer"
)

// fuzzAuth lets the fuzzer run every operation except those that make token objects, so a long
// fuzzing run does not fill the test token; the payloads of those are still decoded below.
type fuzzAuth struct{}

func (fuzzAuth) Identify(*tls.ConnectionState) (string, error) { return "fuzzer", nil }

func (fuzzAuth) AllowKMIP(_, op string) bool {
	switch op {
	case "Create", "CreateKeyPair", "Register", "ReKey", "ReKeyKeyPair":
		return false
	}
	return true
}

func (fuzzAuth) Caller(id string) signer.Caller { return signer.Caller{Identity: id} }
func (fuzzAuth) HasKMIP(string) bool            { return true }

// FuzzMessage feeds arbitrary bytes to the message handler (parser, message decoder, dispatcher and
// handlers, with the real registry) and to the payload decoders the dispatcher does not reach. A
// panic anywhere fails, as does a response that is not a well-formed ResponseMessage.
func FuzzMessage(f *testing.F) {
	// More seeds live in testdata/fuzz/FuzzMessage: OASIS vector requests and hand-made messages.
	f.Add(queryReq(v14).encode())
	f.Add(queryReq(v20).encode())
	quiet := slog.New(slog.DiscardHandler)
	srv := New(Options{Registry: env.reg, Auth: fuzzAuth{}, Log: quiet, Audit: quiet})
	fatal := func(r any) { panic(fmt.Sprintf("recovered panic: %v", r)) }
	panicHook.Store(&fatal)
	f.Cleanup(func() { panicHook.Store(nil) })
	f.Fuzz(func(t *testing.T, b []byte) {
		// A time budget linear in the message's size (the token's operations included): a message
		// over it is run twice more and fails only when every run is over, since on a shared
		// machine one run can stall; a superlinear input is slow every time.
		var out []byte
		run := func() time.Duration {
			start := time.Now()
			out = srv.handleMessage(context.Background(), "fuzzer", b)
			return time.Since(start)
		}
		budget := time.Second + time.Duration(len(b))*50*time.Microsecond
		if took := run(); took > budget {
			if took = min(took, run(), run()); took > budget {
				t.Fatalf("a message of %d bytes took %v (the least of three runs), over its linear budget of %v", len(b), took, budget)
			}
		}
		if msg := encodeMismatch.Load(); msg != nil {
			t.Fatal(*msg)
		}
		n, err := parseNode(out)
		if err != nil {
			t.Fatalf("response does not parse: %v", err)
		}
		resp, err := decodeResponse(n)
		if err != nil {
			t.Fatalf("response does not decode: %v", err)
		}
		if !resp.Header.ProtocolVersion.supported() || int(resp.Header.BatchCount) != len(resp.Items) || len(resp.Items) == 0 {
			t.Fatalf("bad response header %+v with %d items", resp.Header, len(resp.Items))
		}
		// Registry-free paths: the template, attribute and object decoders of every item.
		in, err := parseNode(b)
		if err != nil {
			return
		}
		req, err := decodeRequest(in)
		if err != nil {
			return
		}
		for _, it := range req.Items {
			p := it.RequestPayload
			if p == nil {
				continue
			}
			for _, k := range p.Kids {
				_, _ = parseTemplate(k)
				_, _ = parseAttrs(true, k)
				_, _ = parseAttrs(false, k)
				_, _ = fromItem(k, true)
				_, _, _ = parseRef(k)
				for ot := range objectTag {
					_, _ = parseObject(ot, k)
				}
			}
			var ck createKeyPairRequest
			if decodeStruct(p, &ck) == nil {
				_, _, _ = pairTemplates(&ck)
			}
			var cr createRequest
			_ = decodeStruct(p, &cr)
		}
	})
}
