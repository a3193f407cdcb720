package server

import (
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/p11bridge/p11bridge/signer"
)

// SignerStatus is one signer in the ops status view.
type SignerStatus struct {
	Name     string         `json:"name"`
	Healthy  bool           `json:"healthy"`
	Default  bool           `json:"default"`
	Rollover bool           `json:"rollover"`
	Keys     map[string]int `json:"keys"`       // objects per KMIP state (destroyed ones keep their metadata)
	Copies   int            `json:"key_copies"` // session copies of keys held in the token
	// Exportable names the live objects whose material may leave the token (policy export).
	Exportable []string `json:"exportable_keys"`
	// ExportWay says how exportable keys leave this signer's token.
	ExportWay string      `json:"export_way"`
	Index     IndexStatus `json:"handle_index"`
}

// IndexStatus is a signer's handle index (signer/index.go): the pass over the token's objects
// at start, after which no first use of a key searches the token.
type IndexStatus struct {
	Done     bool    `json:"done"`
	Objects  int     `json:"objects"`           // token objects the pass saw
	Indexed  int     `json:"indexed"`           // handles it cached
	Seconds  float64 `json:"seconds,omitempty"` // how long the pass took
	Error    string  `json:"error,omitempty"`   // why it failed (keys are then found one search each)
	Searches int64   `json:"searches"`          // targeted searches since start (keys the index did not know)
}

// Status is what /status answers: per signer, what it holds, and whether a rollover is in progress.
type Status struct {
	Version            string         `json:"version"`
	Uptime             float64        `json:"uptime_seconds"`
	Default            string         `json:"default_signer"`
	Rollover           string         `json:"rollover_signer,omitempty"`
	RolloverUnderway   bool           `json:"rollover_in_progress"`
	Signers            []SignerStatus `json:"signers"`
	UnconfiguredHeldBy []string       `json:"keys_on_unconfigured_signers,omitempty"`
	// SealHeavy names the keys past 2^31 AES-GCM seals with their counts: rotate them before 2^32,
	// where random 96-bit IVs stop being safe from repeats.
	SealHeavy map[string]uint64 `json:"keys_to_rotate_for_seals,omitempty"`
	// ExpiredCertificates names the configured identities that presented an expired certificate
	// (accepted, as KES accepts them), with its expiry.
	ExpiredCertificates map[string]time.Time `json:"identities_with_expired_certificates,omitempty"`
	// Reloads counts the SIGHUPs handled; LastReloadError is why the last one was refused ("" when
	// it was applied). `p11bridge reload --wait` watches them.
	Reloads         int64  `json:"reloads"`
	LastReload      string `json:"last_reload,omitempty"`
	LastReloadError string `json:"last_reload_error,omitempty"`
	// Keymap is the store: CSV or PostgreSQL, and for PostgreSQL its change feed and the cluster.
	Keymap StoreStatus `json:"keymap"`
}

// Status collects the status view.
func (s *Server) Status() Status {
	census := s.reg.Census()
	exportable := s.reg.Exportable()
	st := Status{Version: s.opts.Version, Uptime: time.Since(s.start).Seconds(), Default: s.reg.Default(), Rollover: s.reg.Rollover()}
	st.RolloverUnderway = st.Rollover != ""
	st.Keymap = storeStatus(context.Background(), s.km)
	if o := s.reloads.Load(); o != nil {
		st.Reloads, st.LastReload, st.LastReloadError = o.count, o.at.Format(time.RFC3339), o.err
	}
	seen := map[string]bool{}
	for _, t := range s.reg.Signers() {
		seen[t.Name()] = true
		keys := map[string]int{}
		for state, n := range census[t.Name()] {
			keys[string(state)] = n
		}
		ex := exportable[t.Name()]
		if ex == nil {
			ex = []string{}
		}
		st.Signers = append(st.Signers, SignerStatus{Name: t.Name(), Healthy: t.Healthy(), Default: t.Name() == st.Default,
			Rollover: t.Name() == st.Rollover, Keys: keys, Copies: t.Copies(), Exportable: ex, ExportWay: t.ExportWay(),
			Index: indexStatus(t.Index())})
	}
	for name := range census {
		if !seen[name] {
			st.UnconfiguredHeldBy = append(st.UnconfiguredHeldBy, name)
		}
	}
	if h := s.reg.SealHeavy(); len(h) > 0 {
		st.SealHeavy = h
	}
	if e := s.expired.snapshot(); len(e) > 0 {
		st.ExpiredCertificates = e
	}
	return st
}

func indexStatus(ix signer.IndexStats) IndexStatus {
	st := IndexStatus{Done: ix.Done, Objects: ix.Objects, Indexed: ix.Indexed, Searches: ix.Searches}
	if ix.Done {
		st.Seconds = ix.Took.Seconds()
	}
	if ix.Err != nil {
		st.Error = ix.Err.Error()
	}
	return st
}

// signerCollector reports signer health and key counts at scrape time, so reloads need no
// re-registration.
type signerCollector struct {
	s                       *Server
	up, keys, copies, seals *prometheus.Desc
}

func (c signerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.up
	ch <- c.keys
	ch <- c.copies
	ch <- c.seals
}

func (c signerCollector) Collect(ch chan<- prometheus.Metric) {
	for _, t := range c.s.reg.Signers() {
		v := 0.0
		if t.Healthy() {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, v, t.Name())
		ch <- prometheus.MustNewConstMetric(c.copies, prometheus.GaugeValue, float64(t.Copies()), t.Name())
	}
	for name, counts := range c.s.reg.Census() {
		for state, n := range counts {
			ch <- prometheus.MustNewConstMetric(c.keys, prometheus.GaugeValue, float64(n), name, string(state))
		}
	}
	for id, n := range c.s.reg.SealHeavy() {
		ch <- prometheus.MustNewConstMetric(c.seals, prometheus.GaugeValue, float64(n), id)
	}
}

func (s *Server) opsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(
		// The live heap (what the last collection kept), besides the MemStats figures: with GOGC=400
		// the heap in use may be five times it, garbage not yet collected.
		collectors.WithGoCollectorRuntimeMetrics(collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/gc/heap/live:bytes$`)})), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		signerCollector{s: s,
			up:   prometheus.NewDesc("p11bridge_signer_up", "Whether the signer's last token calls succeeded.", []string{"signer"}, nil),
			keys: prometheus.NewDesc("p11bridge_keys", "Live objects per signer and KMIP state.", []string{"signer", "state"}, nil),
			copies: prometheus.NewDesc("p11bridge_signer_key_copies", "Session copies of keys (AES, HMAC, private) the signer holds in its token (key_copies).",
				[]string{"signer"}, nil),
			seals: prometheus.NewDesc("p11bridge_key_gcm_seals", "AES-GCM seals of the keys past 2^31 of them (rotate before 2^32).", []string{"key"}, nil)},
		newStoreCollector(s), s.metrics.write, s.metrics.lag)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
		stopped := ""
		s.stoppedListeners.Range(func(k, _ any) bool { stopped = k.(string); return false })
		if stopped != "" {
			http.Error(w, "the "+stopped+" listener has stopped", http.StatusServiceUnavailable)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		// An instance that cannot confirm its keymap is current refuses keys: take it out of rotation.
		if err := s.km.Fresh(); err != nil {
			http.Error(w, "keymap: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		for _, t := range s.reg.Signers() {
			if _, err := t.Ping(ctx); err != nil {
				http.Error(w, "signer "+t.Name()+" unavailable", http.StatusServiceUnavailable)
				return
			}
		}
		w.Write([]byte("ready\n"))
	})
	if h := signer.FaultHandler(); h != nil {
		// Only in binaries built with -tags p11fault, for the failure tests.
		mux.Handle("/debug/fault", h)
	}
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(s.Status())
	})
	return mux
}

// opsAuth admits a request to the ops listener served with TLS: the admin, or an identity whose
// policy allows "/ops" followed by the path (e.g. "/ops/metrics", or "/ops/*"). Others get 403.
func (s *Server) opsAuth(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := s.auth.Load()
		id, err := identify(r.TLS, a, s.clientCAs())
		if err != nil || !a.allowPath(id, "/ops"+r.URL.Path) {
			http.Error(w, "not authorized", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}
