package kes

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/p11bridge/p11bridge/signer"
)

// Handler serves the KES API. It is safe for concurrent use.
type Handler struct {
	reg         *signer.Registry
	auth        Authorizer
	admit       Admitter // nil when auth does not bound operations per identity
	auditCheck  func() error
	log         *slog.Logger
	audit       *slog.Logger
	errLog      LogStream
	auditLS     LogStream
	versionName string
	commit      string
	maxBody     int64
	started     time.Time
	routes      *router
	stats       *metrics
}

// New returns the KES API handler. Registry and Auth are required.
func New(opts Options) http.Handler { return newHandler(opts) }

func newHandler(opts Options) *Handler {
	if opts.Registry == nil || opts.Auth == nil {
		panic("kes.New: Options.Registry and Options.Auth are required")
	}
	h := &Handler{
		reg: opts.Registry, auth: opts.Auth, log: opts.Log, audit: opts.Audit, auditCheck: opts.AuditCheck,
		errLog: opts.ErrorLog, auditLS: opts.AuditLog,
		versionName: opts.Version, commit: buildCommit(), maxBody: opts.MaxBody,
		started: time.Now(), routes: newRouter(routeTable()),
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.versionName == "" {
		h.versionName = "dev"
	}
	if h.maxBody <= 0 {
		h.maxBody = DefaultMaxBody
	}
	h.admit, _ = opts.Auth.(Admitter)
	h.stats = newMetrics(h)
	return h
}

// call is one request in flight: what the route handlers need and what metrics and audit record.
type call struct {
	w        *recorder
	r        *http.Request
	ctx      context.Context
	route    *route
	arg      string // the route argument (key name, list pattern, …)
	identity string
	caller   signer.Caller // who asks, for the registry's key model
	deadline deadlineCtx   // ctx when the route has a timeout (see deadline.go)
	// Set by key handlers as they learn them, for the audit record and metrics.
	key, version, signer string
	audited              bool // the audit record is written
}

// recorder remembers the status written, for metrics and audit.
type recorder struct {
	http.ResponseWriter
	status int
	// commit runs once before a successful answer of a key operation starts: it writes the audit
	// record, and an error it returns is sent instead of the answer (audit.required).
	commit  func(code int) *apiError
	swallow bool // the handler's answer was replaced; drop its body
}

func (w *recorder) WriteHeader(code int) {
	if w.status == 0 && w.commit != nil && code < 400 {
		commit := w.commit
		w.commit = nil
		if e := commit(code); e != nil {
			w.swallow = true
			w.status = e.status
			writeError(w.ResponseWriter, e)
			return
		}
	}
	if w.swallow {
		return
	}
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *recorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.swallow {
		return len(b), nil
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Flush and deadlines of the real writer.
func (w *recorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// ServeHTTP serves one request; key operations run on a pooled goroutine (see workers.go). Only
// they do: they are the hot, short and deep calls, while a log stream would hold a worker for as
// long as its client listens.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/v1/key/") {
		h.onWorker(w, r)
		return
	}
	h.serve(w, r)
}

// serve routes, checks method, identity and policy (in KES's order), limits the body and runs the
// route. Every answer is counted; key operations are audited.
func (h *Handler) serve(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	h.stats.active.Inc()
	defer h.stats.active.Dec()
	rec := &recorder{ResponseWriter: w}
	p := r.URL.Path
	if p == "" || p[0] != '/' {
		p = "/" + p
	}
	ro, arg, redirect := h.routes.match(p)
	if ro == nil {
		writeError(rec, errNotFound)
		h.stats.observe("unknown", "", rec.status, time.Since(start))
		return
	}
	c := &call{w: rec, r: r, ctx: r.Context(), route: ro, arg: arg}
	defer h.finish(c, start)

	if r.Method != ro.method && !(ro.method == http.MethodPut && r.Method == http.MethodPost) {
		rec.Header().Set("Allow", allowed(ro))
		writeError(rec, failf(http.StatusMethodNotAllowed, "received method '%s' expected '%s'", r.Method, ro.method))
		return
	}
	if redirect {
		u := *r.URL
		u.Path, u.RawPath = p+"/", ""
		http.Redirect(rec, r, u.String(), http.StatusMovedPermanently)
		return
	}
	if ro.auth != authNone {
		id, err := h.auth.Identify(r)
		if err != nil || id == "" {
			writeError(rec, errNotAllowed)
			return
		}
		c.identity = id
		c.caller = h.auth.Caller(id)
		if ro.auth == authPolicy && !h.auth.AllowKES(id, p) {
			writeError(rec, errNotAllowed)
			return
		}
	}
	if ro.keyOp && h.admit != nil {
		release, err := h.admit.Admit(c.identity)
		if err != nil {
			writeError(rec, failf(http.StatusTooManyRequests, "%v", err))
			return
		}
		defer release()
	}
	if ro.keyOp && h.auditCheck != nil {
		// Refused requests are audited like the others: their records retry the log.
		if err := h.auditCheck(); err != nil {
			writeError(rec, failf(http.StatusServiceUnavailable, "%v", err))
			return
		}
	}
	if ro.keyOp && h.audit != nil {
		// A successful key operation is on record before its answer leaves, so with audit.required an
		// answer whose record cannot be written is never given (a generated data key is withheld).
		rec.commit = func(code int) *apiError {
			h.record(c, code, time.Since(start))
			if h.auditCheck != nil {
				if err := h.auditCheck(); err != nil {
					return failf(http.StatusServiceUnavailable, "%v", err)
				}
			}
			return nil
		}
	}
	if ro.body {
		r.Body = http.MaxBytesReader(rec, r.Body, h.maxBody)
	} else if r.Body != nil {
		// Routes without a body never read it; KES limits them to 0 bytes the same way.
		r.Body = http.MaxBytesReader(rec, r.Body, 0)
	}
	if ro.timeout > 0 {
		c.deadline = deadlineCtx{Context: c.ctx, deadline: start.Add(ro.timeout)}
		c.ctx = &c.deadline
		defer c.deadline.release()
	}
	ro.serve(h, c)
}

func allowed(ro *route) string {
	if ro.method == http.MethodPut {
		return "PUT, POST"
	}
	return ro.method
}

// finish records metrics and, for key operations, one audit record.
func (h *Handler) finish(c *call, start time.Time) {
	took := time.Since(start)
	status := c.w.status
	if status == 0 {
		status = http.StatusOK
	}
	h.stats.observe(c.route.op, c.signer, status, took)
	if status >= 500 {
		h.stats.errs.Inc()
	}
	if c.route.keyOp && h.audit != nil && !c.audited {
		h.record(c, status, took)
	}
}

// record writes the audit record of a key operation.
func (h *Handler) record(c *call, status int, took time.Duration) {
	c.audited = true
	result := "success"
	if status >= 400 {
		result = "failure"
	}
	h.stats.audits.Inc()
	// The handler directly, as LogAttrs would call it but without its runtime.Callers: the record
	// has no source position to show. A write error is the audit writer's to report.
	r := slog.NewRecord(time.Now(), slog.LevelInfo, c.route.auditMsg, 0)
	r.AddAttrs(
		slog.String("identity", c.identity),
		slog.String("protocol", "kes"),
		slog.String("operation", c.route.op),
		slog.String("key", c.key),
		slog.String("version", c.version),
		slog.String("signer", c.signer),
		slog.Int("status", status),
		slog.String("result", result),
		slog.Duration("latency", took),
		slog.String("remote", c.r.RemoteAddr),
	)
	if ah := h.audit.Handler(); ah.Enabled(context.Background(), slog.LevelInfo) {
		_ = ah.Handle(context.Background(), r)
	}
}

// fail answers with err: an apiError as is, a registry error mapped by fromSigner. Server-side
// failures are logged with the request, since the client only sees the short message.
func (c *call) fail(h *Handler, err error, what string) {
	ae := fromSigner(err, what)
	if ae.status >= 500 {
		h.log.LogAttrs(c.ctx, slog.LevelError, "kes: request failed",
			slog.String("op", c.route.op), slog.String("key", c.key), slog.String("identity", c.identity),
			slog.Int("status", ae.status), slog.Any("err", err))
	}
	writeError(c.w, ae)
}

// writeError sends KES's error shape: JSON {"message": …} with the status.
func writeError(w http.ResponseWriter, e *apiError) {
	b, _ := json.Marshal(struct {
		Message string `json:"message"`
	}{e.msg})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(e.status)
	_, _ = w.Write(b)
}

// reply sends v as JSON with status 200.
func (c *call) reply(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(c.w, failf(http.StatusInternalServerError, "encode response: %v", err))
		return
	}
	c.send(b)
}

// send answers 200 with the JSON body b.
func (c *call) send(b []byte) {
	h := c.w.Header()
	h["Content-Type"] = jsonType
	h["Content-Length"] = []string{strconv.Itoa(len(b))}
	c.w.WriteHeader(http.StatusOK)
	_, _ = c.w.Write(b)
}

var jsonType = []string{"application/json"}

// field is one member of a reply whose members are all byte strings.
type field struct {
	name  string
	value []byte
}

// replyBytes answers {"name":"base64",…}, what json.Marshal makes of a struct of []byte fields,
// without its reflection and allocations on the hot routes. The body is cleared once sent: it
// may hold a data key.
func (c *call) replyBytes(fs ...field) {
	n := 2
	for _, f := range fs {
		n += len(f.name) + 6 + base64.StdEncoding.EncodedLen(len(f.value))
	}
	b := make([]byte, 0, n)
	b = append(b, '{')
	for i, f := range fs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, f.name...) // names are constants that need no escaping
		b = append(b, '"', ':', '"')
		b = base64.StdEncoding.AppendEncode(b, f.value)
		b = append(b, '"')
	}
	b = append(b, '}')
	c.send(b)
	clear(b)
}

// ok sends 200 with an empty body.
func (c *call) ok() {
	c.w.Header().Set("Content-Length", "0")
	c.w.WriteHeader(http.StatusOK)
}

// bodies holds buffers for request bodies: MinIO's are a few hundred bytes, and reading each
// into a fresh growing slice was a fifth of the handler's allocations.
var bodies = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledBody keeps the rare large body's buffer out of the pool.
const maxPooledBody = 64 << 10

// readBody decodes the JSON request body into v. An empty body leaves v as is when optional,
// since MinIO and kms-go may send generate without one.
func (c *call) readBody(v any, optional bool) *apiError {
	buf := bodies.Get().(*bytes.Buffer)
	defer func() {
		// The body may carry a plaintext: wipe what was read before the buffer is reused.
		b := buf.Bytes()
		clear(b[:cap(b)])
		buf.Reset()
		if buf.Cap() <= maxPooledBody {
			bodies.Put(buf)
		}
	}()
	_, err := buf.ReadFrom(c.r.Body)
	data := buf.Bytes()
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return errBodyTooLarge
		}
		return failf(http.StatusBadRequest, "read request body: %v", err)
	}
	if len(data) == 0 && optional {
		return nil
	}
	if f, ok := v.(byteFields); ok {
		if names, dst := f.fields(); bytesObject(data, names, dst) {
			return nil
		}
	}
	// Unmarshal, not a Decoder: it refuses trailing data after the object.
	if err := json.Unmarshal(data, v); err != nil {
		return errBadBody
	}
	return nil
}
