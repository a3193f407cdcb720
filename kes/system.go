package kes

import (
	"context"
	"net/http"
	"runtime"
	"runtime/debug"
	"strings"
	"time"
)

func buildCommit() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return ""
}

func (h *Handler) version(c *call) {
	c.reply(struct {
		Version string `json:"version"`
		Commit  string `json:"commit"`
	}{h.versionName, h.commit})
}

// status reports the process and the default signer's round-trip time, in KES's field names and
// units (uptime in seconds, keystore_latency in milliseconds, at least 1 when reachable).
func (h *Handler) status(c *call) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	type statusJSON struct {
		Version     string `json:"version"`
		OS          string `json:"os"`
		Arch        string `json:"arch"`
		UpTime      uint64 `json:"uptime"`
		CPUs        int    `json:"num_cpu"`
		UsableCPUs  int    `json:"num_cpu_used"`
		HeapAlloc   uint64 `json:"mem_heap_used"`
		StackAlloc  uint64 `json:"mem_stack_used"`
		Latency     int64  `json:"keystore_latency,omitempty"`
		Unreachable bool   `json:"keystore_unreachable,omitempty"`
		// kms-go refuses "unreachable" without "unavailable", so both are sent together.
		Unavailable bool `json:"keystore_unavailable,omitempty"`
	}
	st := statusJSON{
		Version: h.versionName, OS: runtime.GOOS, Arch: runtime.GOARCH,
		UpTime: uint64(time.Since(h.started).Round(time.Second).Seconds()),
		CPUs:   runtime.NumCPU(), UsableCPUs: runtime.GOMAXPROCS(0),
		HeapAlloc: ms.HeapAlloc, StackAlloc: ms.StackSys,
	}
	if lat, err := h.pingDefault(c.ctx); err != nil {
		h.log.Warn("kes: status: default signer unreachable", "err", err)
		st.Unreachable, st.Unavailable = true, true
	} else {
		st.Latency = max(lat.Milliseconds(), 1)
	}
	c.reply(st)
}

func (h *Handler) pingDefault(ctx context.Context) (time.Duration, error) {
	t, err := h.reg.Signer(h.reg.Default())
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return t.Ping(ctx)
}

// ready is 200 when every signer is healthy. A signer marked unhealthy gets one ping first: the
// registry only notices recovery when a call succeeds, and an idle signer gets no other calls.
func (h *Handler) ready(c *call) {
	ts := h.reg.Signers()
	if len(ts) == 0 {
		writeError(c.w, failf(http.StatusServiceUnavailable, "key store is not ready: no signer is configured"))
		return
	}
	var down []string
	for _, t := range ts {
		if t.Healthy() {
			continue
		}
		ctx, cancel := context.WithTimeout(c.ctx, 2*time.Second)
		_, err := t.Ping(ctx)
		cancel()
		if err != nil || !t.Healthy() {
			down = append(down, t.Name())
		}
	}
	if len(down) > 0 {
		writeError(c.w, failf(http.StatusServiceUnavailable, "key store is not ready: signer %s unavailable", strings.Join(down, ", ")))
		return
	}
	c.ok()
}

// listAPI describes the routes as KES does: method, path, body limit, timeout in seconds.
func (h *Handler) listAPI(c *call) {
	type apiJSON struct {
		Method  string `json:"method"`
		Path    string `json:"path"`
		MaxBody int64  `json:"max_body"`
		Timeout int64  `json:"timeout"`
	}
	out := make([]apiJSON, 0, len(h.routes.all))
	for _, ro := range h.routes.all {
		a := apiJSON{Method: ro.method, Path: ro.path, Timeout: int64(ro.timeout / time.Second)}
		if ro.body {
			a.MaxBody = h.maxBody
		}
		out = append(out, a)
	}
	c.reply(out)
}
