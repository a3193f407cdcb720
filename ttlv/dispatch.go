package ttlv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/gemalto/kmip-go/kmip14"
	"github.com/gemalto/kmip-go/kmip20"

	"github.com/p11bridge/p11bridge/signer"
)

// onPanic sees every recovered panic; the fuzz test makes it fatal, so that recovery (which keeps a
// server up) does not hide bugs from the fuzzer.
var panicHook atomic.Pointer[func(any)]

func onPanic(r any) {
	if h := panicHook.Load(); h != nil {
		(*h)(r)
	}
}

// handler runs one operation. It decodes its own payload (so a bad payload fails only its item)
// and returns a response payload struct.
type handler func(o *op, payload *node) (any, error)

type opDef struct {
	fn    handler
	since ProtocolVersion // first protocol version that defines the operation
}

// handlers is filled by the op_*.go files.
var handlers = map[kmip14.Operation]opDef{}

func register(o kmip14.Operation, since ProtocolVersion, fn handler) {
	handlers[o] = opDef{fn: fn, since: since}
}

// batch is what the items of one request message share.
type batch struct {
	// placeholder is the KMIP ID Placeholder: the object the last creating or locating item
	// produced, used by later items that omit their Unique Identifier.
	placeholder string
	// last holds, for KMIP 2.0 Unique Identifier enumerations, the identifier the last item of
	// each kind produced.
	last map[kmip20.UniqueIdentifier]string
}

// op is the context of one batch item.
type op struct {
	ctx      context.Context
	s        *Server
	v        ProtocolVersion
	identity string
	caller   signer.Caller // who asks, for the registry's key model
	b        *batch
	name     string

	// For the audit record.
	key    string
	signer string
	// exports are the keys whose material the item takes out of the token; each is audited as an
	// event of its own (operation "Export") before the answer goes out.
	exports []exportEvent

	// undo reverts what the item did (BatchErrorContinuationOption Undo); irreversible marks an
	// item that cannot be reverted (Destroy).
	undo         []func(ctx context.Context) error
	irreversible bool
}

// produced records an identifier an item created or found, for the ID Placeholder.
func (o *op) produced(id string, kinds ...kmip20.UniqueIdentifier) {
	o.b.placeholder = id
	for _, k := range kinds {
		if o.b.last == nil {
			o.b.last = map[kmip20.UniqueIdentifier]string{}
		}
		o.b.last[k] = id
	}
	if o.key == "" {
		o.key = id
	}
}

func (o *op) onUndo(fn func(ctx context.Context) error) { o.undo = append(o.undo, fn) }

// exportEvent is one key's material leaving its token, and how it left.
type exportEvent struct{ key, via string }

func (o *op) exported(key, via string) { o.exports = append(o.exports, exportEvent{key, via}) }

// handleMessage answers one request message (raw TTLV bytes). It never panics and always returns a
// response; the fuzz test drives it directly.
func (s *Server) handleMessage(ctx context.Context, identity string, raw []byte) (out []byte) {
	v := ProtocolVersion{1, 0}
	defer func() {
		if r := recover(); r != nil {
			onPanic(r)
			s.log.Error("kmip: request handler panicked", "identity", identity, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			out = failureResponse(v, nil, rGeneral, "internal error; the request was not completed")
		}
	}()
	n, err := parseNode(raw)
	if err != nil {
		// The header may still be intact: answer in the client's version when it is.
		if len(raw) > hdrLen {
			h := new(node)
			if _, herr := parseItem(h, raw[hdrLen:], 1, nil, nil); herr == nil {
				if pv, ok := peekVersion(newStruct(0, h)); ok && pv.supported() {
					v = pv
				}
			}
		}
		return failureResponse(v, nil, rInvalidMsg, "malformed TTLV: "+err.Error())
	}
	if pv, ok := peekVersion(n); ok {
		v = pv
		if !v.supported() {
			v = nearestSupported(pv)
			return failureResponse(v, nil, uint32(kmip20.ResultReasonUnsupportedProtocolVersion),
				fmt.Sprintf("protocol version %s is not supported; this server speaks KMIP 1.0 to 1.4 and 2.0", pv))
		}
	}
	req, err := decodeRequest(n)
	if err != nil {
		return failureResponse(v, nil, rInvalidMsg, "invalid request: "+err.Error())
	}
	if int(req.Header.BatchCount) != len(req.Items) {
		return failureResponse(v, req.Items, rInvalidMsg,
			fmt.Sprintf("BatchCount is %d but the message holds %d batch items", req.Header.BatchCount, len(req.Items)))
	}
	resp := s.runBatch(ctx, identity, req)
	b := resp.encode()
	if m := req.Header.MaximumResponseSize; m != nil && *m > 0 && len(b) > int(*m) {
		return failureResponse(v, req.Items, rTooLarge,
			fmt.Sprintf("the response of %d bytes exceeds the MaximumResponseSize of %d bytes", len(b), *m))
	}
	return b
}

// runBatch runs the items of a request in order, honouring BatchErrorContinuationOption.
func (s *Server) runBatch(ctx context.Context, identity string, req *RequestMessage) *ResponseMessage {
	v := req.Header.ProtocolVersion
	onErr := kmip14.BatchErrorContinuationOptionStop
	if o := req.Header.BatchErrorContinuationOption; o != nil {
		onErr = kmip14.BatchErrorContinuationOption(*o)
	}
	b := &batch{} // last is made by the first item that produces an identifier
	caller := s.auth.Caller(identity)
	resp := &ResponseMessage{Header: ResponseHeader{ProtocolVersion: v, TimeStamp: time.Now().UTC().Truncate(time.Second)}}
	var done []doneItem
	for i := range req.Items {
		item := &req.Items[i]
		o := &op{ctx: ctx, s: s, v: v, identity: identity, caller: caller, b: b, name: opName(item.Operation)}
		res := s.runItem(o, item)
		resp.Items = append(resp.Items, res)
		if res.ResultStatus == uint32(kmip14.ResultStatusSuccess) {
			done = append(done, doneItem{o, i})
			continue
		}
		if onErr == kmip14.BatchErrorContinuationOptionContinue {
			continue
		}
		if onErr == kmip14.BatchErrorContinuationOptionUndo {
			s.undo(ctx, done, resp.Items)
		}
		// Every request item gets a response item (clients match them by position): the ones
		// not run are reported as cancelled by the requester's continuation option.
		for j := i + 1; j < len(req.Items); j++ {
			opv := req.Items[j].Operation
			reason := uint32(kmip14.ResultReasonOperationCanceledByRequester)
			msg := fmt.Sprintf("not run: batch item %d failed and BatchErrorContinuationOption is %s", i+1, onErr)
			resp.Items = append(resp.Items, ResponseBatchItem{Operation: &opv, UniqueBatchItemID: req.Items[j].UniqueBatchItemID,
				ResultStatus: uint32(kmip14.ResultStatusOperationFailed), ResultReason: &reason, ResultMessage: &msg})
		}
		break
	}
	resp.Header.BatchCount = int32(len(resp.Items))
	return resp
}

// doneItem is a batch item that succeeded, and its position in the response.
type doneItem struct {
	o   *op
	idx int
}

// undo reverts the successful items before a failure, newest first, as far as they can be.
func (s *Server) undo(ctx context.Context, done []doneItem, items []ResponseBatchItem) {
	for i := len(done) - 1; i >= 0; i-- {
		o, idx := done[i].o, done[i].idx
		if o.irreversible {
			continue
		}
		ok := true
		for j := len(o.undo) - 1; j >= 0; j-- {
			if err := o.undo[j](ctx); err != nil {
				ok = false
				s.log.Error("kmip: undo failed", "operation", o.name, "key", o.key, "identity", o.identity, "err", err)
			}
		}
		if ok {
			items[idx].ResultStatus = uint32(kmip14.ResultStatusOperationUndone)
			items[idx].Payload = nil
			_ = s.auditf(o, "undone", 0) // the undo has happened either way; a lost record is in the operator's log
		}
	}
}

// failure is an error whose response still carries a payload (a failed Check names what failed).
type failure struct {
	error
	payload any
}

func (f *failure) Unwrap() error { return f.error }

// runItem runs one batch item and writes its audit record.
func (s *Server) runItem(o *op, item *RequestBatchItem) (res ResponseBatchItem) {
	start := time.Now()
	opv := item.Operation
	res = ResponseBatchItem{Operation: &opv, UniqueBatchItemID: item.UniqueBatchItemID}
	payload, err := s.call(o, item)
	if err == nil {
		// The records are written before the client is answered; when one cannot be written and
		// records are required, the client is told so instead of getting the result.
		var aerr error
		for _, e := range o.exports {
			if aerr = s.auditExport(o, e); aerr != nil {
				break
			}
		}
		if aerr == nil {
			aerr = s.auditf(o, "success", time.Since(start))
		}
		if aerr == nil {
			res.ResultStatus = uint32(kmip14.ResultStatusSuccess)
			res.Payload = payload
			return res
		}
		s.log.Error("kmip: audit record not written", "operation", o.name, "identity", o.identity, "key", o.key, "err", aerr)
		err = kerr(rGeneral, "%s was done but could not be audited, and audit records are required: %v", o.name, aerr)
	}
	reason, msg := resultOf(err, o.v)
	var f *failure
	if errors.As(err, &f) {
		res.Payload = f.payload
	}
	res.ResultStatus = uint32(kmip14.ResultStatusOperationFailed)
	res.ResultReason = &reason
	res.ResultMessage = &msg
	if aerr := s.auditf(o, tagEnumName(kmip14.TagResultReason, reason), time.Since(start)); aerr != nil {
		s.log.Error("kmip: audit record not written", "operation", o.name, "identity", o.identity, "key", o.key, "err", aerr)
	}
	if reason == rGeneral {
		s.log.Warn("kmip: operation failed", "operation", o.name, "identity", o.identity, "key", o.key, "err", err)
	}
	return res
}

// call checks that the operation exists and is allowed, then runs it, turning a panic into a
// failure of this item only.
func (s *Server) call(o *op, item *RequestBatchItem) (payload any, err error) {
	def, ok := handlers[kmip14.Operation(item.Operation)]
	if !ok || !o.v.atLeast(def.since.Major, def.since.Minor) {
		return nil, kerr(rNotSupported, "operation %s is not supported in KMIP %s", o.name, o.v)
	}
	if item.MessageExtension != nil {
		if crit := item.MessageExtension.find(kmip14.TagCriticalityIndicator); crit != nil && crit.boolean() {
			return nil, kerr(rFeature, "critical message extensions are not supported")
		}
	}
	if !s.auth.AllowKMIP(o.identity, o.name) {
		return nil, kerr(rDenied, "identity %s may not run %s", o.identity, o.name)
	}
	if s.admit != nil {
		release, err := s.admit.Admit(o.identity)
		if err != nil {
			return nil, kerr(rGeneral, "%v", err)
		}
		defer release()
	}
	if s.opts.AuditCheck != nil {
		if err := s.opts.AuditCheck(); err != nil {
			return nil, kerr(rGeneral, "%v", err)
		}
	}
	defer func() {
		if r := recover(); r != nil {
			onPanic(r)
			s.log.Error("kmip: operation panicked", "operation", o.name, "identity", o.identity, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			payload, err = nil, kerr(rGeneral, "internal error in %s", o.name)
		}
	}()
	return def.fn(o, item.RequestPayload)
}

// auditf writes the audit record of an item. Typed attributes spare slog boxing each value in an
// interface and converting it back, once per request. The record goes to the handler directly,
// not through a Logger method, because its error matters: with required audit records the
// handler reports a write that failed, and the item must fail with it (Options.AuditCheck).
func (s *Server) auditf(o *op, result string, latency time.Duration) error {
	h := s.audit.Handler()
	if !h.Enabled(context.Background(), slog.LevelInfo) {
		return nil
	}
	r := slog.NewRecord(time.Now(), slog.LevelInfo, "kmip", 0)
	r.AddAttrs(slog.String("identity", o.identity), slog.String("protocol", "kmip"), slog.String("operation", o.name),
		slog.String("key", o.key), slog.String("signer", o.signer), slog.String("result", result), slog.Duration("latency", latency))
	return h.Handle(context.Background(), r)
}

// auditExport writes the record of one export: operation "Export", the key, and how its material
// left the token (via), beside the record of the operation that asked for it.
func (s *Server) auditExport(o *op, e exportEvent) error {
	h := s.audit.Handler()
	if !h.Enabled(context.Background(), slog.LevelInfo) {
		return nil
	}
	r := slog.NewRecord(time.Now(), slog.LevelInfo, "kmip", 0)
	r.AddAttrs(slog.String("identity", o.identity), slog.String("protocol", "kmip"), slog.String("operation", "Export"),
		slog.String("key", e.key), slog.String("signer", o.signer), slog.String("result", "success"), slog.String("via", e.via),
		slog.String("request", o.name))
	return h.Handle(context.Background(), r)
}

// failureResponse is a whole-message failure: one failed item per request item (echoing each
// Operation and batch item ID), or a single item when the items could not be read.
func failureResponse(v ProtocolVersion, items []RequestBatchItem, reason uint32, msg string) []byte {
	reason = reasonFor(reason, v)
	resp := &ResponseMessage{Header: ResponseHeader{ProtocolVersion: v, TimeStamp: time.Now().UTC().Truncate(time.Second)}}
	fail := func() ResponseBatchItem {
		r, m := reason, msg
		return ResponseBatchItem{ResultStatus: uint32(kmip14.ResultStatusOperationFailed), ResultReason: &r, ResultMessage: &m}
	}
	if len(items) == 0 {
		resp.Items = []ResponseBatchItem{fail()}
	}
	for i := range items {
		it := fail()
		opv := items[i].Operation
		it.Operation = &opv
		it.UniqueBatchItemID = items[i].UniqueBatchItemID
		resp.Items = append(resp.Items, it)
	}
	resp.Header.BatchCount = int32(len(resp.Items))
	return resp.encode()
}
