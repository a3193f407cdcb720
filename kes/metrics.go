package kes

import (
	"net/http"
	"runtime"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics live in private registries, never the global one, so several handlers (tests, a reload)
// do not collide.
//
// kms-go's Client.Metrics refuses any metric family with more than one series, except the three
// request counters it sums. So two views are served: the KES families alone (request counters
// labelled by route and signer, one response-time histogram, system gauges) to clients that send
// no Accept header, as kms-go does; those plus per-route and per-signer latency histograms and
// signer health to everything else (Prometheus and curl send Accept).
type metrics struct {
	ok, clientErr, serverErr *prometheus.CounterVec
	active                   prometheus.Gauge
	respTime                 prometheus.Histogram
	detail                   *prometheus.HistogramVec
	audits, errs             prometheus.Counter
	compat, full             http.Handler
}

var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

func newMetrics(h *Handler) *metrics {
	m := &metrics{}
	labels := []string{"route", "signer"}
	m.ok = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kes_http_request_success", Help: "Requests answered with 2xx or 3xx."}, labels)
	m.clientErr = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kes_http_request_error", Help: "Requests answered with 4xx (a well-defined error)."}, labels)
	m.serverErr = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kes_http_request_failure", Help: "Requests answered with 5xx (a server or key store failure)."}, labels)
	m.active = prometheus.NewGauge(prometheus.GaugeOpts{Name: "kes_http_request_active", Help: "Requests in flight."})
	m.respTime = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kes_http_response_time", Help: "Response time of all requests, seconds.", Buckets: latencyBuckets})
	m.audits = prometheus.NewCounter(prometheus.CounterOpts{Name: "kes_log_audit_events", Help: "Audit records written."})
	m.errs = prometheus.NewCounter(prometheus.CounterOpts{Name: "kes_log_error_events", Help: "Requests that failed on the server side."})
	m.detail = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "p11bridge_kes_request_duration_seconds", Help: "Latency of KES requests by route and by the signer that served them.", Buckets: latencyBuckets,
	}, labels)

	compat := prometheus.NewRegistry()
	compat.MustRegister(m.ok, m.clientErr, m.serverErr, m.active, m.respTime, m.audits, m.errs)
	gauge := func(name, help string, f func() float64) {
		compat.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
	}
	mem := func(f func(*runtime.MemStats) uint64) func() float64 {
		return func() float64 {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			return float64(f(&ms))
		}
	}
	gauge("kes_system_up_time", "Seconds since the handler started.", func() float64 { return time.Since(h.started).Round(time.Second).Seconds() })
	gauge("kes_system_num_cpu", "Logical CPUs.", func() float64 { return float64(runtime.NumCPU()) })
	gauge("kes_system_num_cpu_used", "CPUs the Go scheduler uses (GOMAXPROCS).", func() float64 { return float64(runtime.GOMAXPROCS(0)) })
	gauge("kes_system_num_threads", "Goroutines.", func() float64 { return float64(runtime.NumGoroutine()) })
	gauge("kes_system_mem_heap_used", "Heap bytes allocated.", mem(func(ms *runtime.MemStats) uint64 { return ms.HeapAlloc }))
	gauge("kes_system_mem_heap_objects", "Heap objects allocated.", mem(func(ms *runtime.MemStats) uint64 { return ms.HeapObjects }))
	gauge("kes_system_mem_stack_used", "Stack bytes obtained from the OS.", mem(func(ms *runtime.MemStats) uint64 { return ms.StackSys }))

	detail := prometheus.NewRegistry()
	detail.MustRegister(m.detail, signerHealth{h})

	m.compat = promhttp.HandlerFor(compat, promhttp.HandlerOpts{})
	m.full = promhttp.HandlerFor(prometheus.Gatherers{compat, detail}, promhttp.HandlerOpts{})
	return m
}

// observe counts one answered request.
func (m *metrics) observe(route, signer string, status int, took time.Duration) {
	switch {
	case status >= 500:
		m.serverErr.WithLabelValues(route, signer).Inc()
	case status >= 400:
		m.clientErr.WithLabelValues(route, signer).Inc()
	default:
		m.ok.WithLabelValues(route, signer).Inc()
	}
	s := took.Seconds()
	m.respTime.Observe(s)
	m.detail.WithLabelValues(route, signer).Observe(s)
}

// signerHealth exposes each configured signer's health at scrape time; signers come and go with
// the registry's configuration, so they are read on every collection.
type signerHealth struct{ h *Handler }

var signerUpDesc = prometheus.NewDesc("p11bridge_kes_signer_up", "1 when the signer's last calls succeeded.", []string{"signer", "default"}, nil)

func (s signerHealth) Describe(ch chan<- *prometheus.Desc) { ch <- signerUpDesc }

func (s signerHealth) Collect(ch chan<- prometheus.Metric) {
	def := s.h.reg.Default()
	for _, t := range s.h.reg.Signers() {
		up := 0.0
		if t.Healthy() {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(signerUpDesc, prometheus.GaugeValue, up, t.Name(), strconv.FormatBool(t.Name() == def))
	}
}

func (h *Handler) serveMetrics(c *call) {
	if c.r.Header.Get("Accept") == "" {
		h.stats.compat.ServeHTTP(c.w, c.r)
		return
	}
	h.stats.full.ServeHTTP(c.w, c.r)
}
