package server

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/p11bridge/p11bridge/conf"
	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/signer"
)

// StoreMode says what a keymap store is opened for.
type StoreMode int

const (
	// StoreServe: the server's store (PostgreSQL: schema migrated, change feed, heartbeat).
	StoreServe StoreMode = iota
	// StoreRead: a snapshot for tools that only read (keys list/show, export), beside a running server.
	StoreRead
	// StoreWrite: tools that change rows (keys rebuild/rotate/share-kes, import). The CSV file is
	// locked, so its server must be stopped; PostgreSQL is shared with running servers.
	StoreWrite
)

// storeMetrics are the PostgreSQL store's metrics; nil observers for the CSV map.
type storeMetrics struct {
	write *prometheus.HistogramVec
	lag   prometheus.Histogram
}

func newStoreMetrics() *storeMetrics {
	return &storeMetrics{
		write: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "p11bridge_keymap_write_seconds",
			Help:    "Time of keymap writes to PostgreSQL (a transaction each), by operation and outcome.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 5}}, []string{"op", "result"}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "p11bridge_keymap_feed_lag_seconds",
			Help:    "Time from a change's commit (its writer's clock) to its apply on this instance through the change feed.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 5}}),
	}
}

// OpenStore opens the keymap store cfg names. version goes into the PostgreSQL heartbeat.
func OpenStore(cfg *conf.Config, mode StoreMode, log *slog.Logger, version string) (signer.Store, error) {
	return openStore(cfg, mode, log, version, nil)
}

func openStore(cfg *conf.Config, mode StoreMode, log *slog.Logger, version string, m *storeMetrics) (signer.Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	k := cfg.Keymap
	if k.Postgres.Reveal() == "" {
		switch mode {
		case StoreRead:
			return keymap.OpenReadOnly(k.Path, log)
		case StoreWrite:
			km, err := keymap.Open(k.Path, log)
			if err != nil {
				return nil, fmt.Errorf("%w (is a p11bridge serving with this keymap? stop it first)", err)
			}
			return km, nil
		}
		return keymap.Open(k.Path, log)
	}
	opts := keymap.PGOptions{DSN: k.Postgres.Reveal(), Instance: k.Instance, Staleness: k.Staleness, Version: version,
		Log: log, ReadOnly: mode == StoreRead, Migrate: mode != StoreRead}
	if mode == StoreWrite {
		// A tool beside the servers: its own heartbeat row, gone when it ends.
		host, _ := os.Hostname()
		opts.Instance = fmt.Sprintf("cli@%s/%d", host, os.Getpid())
	}
	if m != nil {
		opts.ObserveWrite = func(op string, d time.Duration, err error) {
			res := "ok"
			if err != nil {
				res = "error"
			}
			m.write.WithLabelValues(op, res).Observe(d.Seconds())
		}
		opts.ObserveFeedLag = func(d time.Duration) { m.lag.Observe(d.Seconds()) }
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := keymap.OpenPG(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("%w (connection string from %s)", err, k.PostgresSource)
	}
	return s, nil
}

// StoreStatus is the keymap store in the ops status view.
type StoreStatus struct {
	Kind     string `json:"kind"`     // csv or postgres
	Location string `json:"location"` // the CSV path, or host:port/database
	Rows     int    `json:"rows"`
	// For PostgreSQL: this instance, whether its change feed is up, how long since it last
	// confirmed its rows current (refused above staleness), and the instances seen.
	Instance       string          `json:"instance,omitempty"`
	FeedUp         *bool           `json:"feed_up,omitempty"`
	LagSeconds     float64         `json:"lag_seconds"`
	StalenessLimit float64         `json:"staleness_seconds,omitempty"`
	AppliedChange  int64           `json:"applied_change,omitempty"`
	Reconnects     int64           `json:"reconnects"`
	LastError      string          `json:"last_error,omitempty"`
	Instances      []InstanceState `json:"instances,omitempty"`
}

// InstanceState is one instance of a cluster, from its heartbeat row.
type InstanceState struct {
	Instance string    `json:"instance"`
	Host     string    `json:"host"`
	PID      int       `json:"pid"`
	Version  string    `json:"version"`
	Started  time.Time `json:"started"`
	Seen     time.Time `json:"seen"`
	Behind   int64     `json:"changes_behind"`
}

func storeStatus(ctx context.Context, s signer.Store) StoreStatus {
	st := StoreStatus{Kind: s.Kind(), Location: s.Location(), Rows: s.Len()}
	pg, ok := s.(*keymap.PG)
	if !ok {
		return st
	}
	p := pg.Status(ctx)
	st.Instance, st.FeedUp, st.LagSeconds, st.StalenessLimit = p.Instance, &p.FeedUp, p.Age.Seconds(), p.Staleness.Seconds()
	st.AppliedChange, st.Reconnects, st.LastError = p.Applied, p.Reconnects, p.LastError
	for _, in := range p.Instances {
		st.Instances = append(st.Instances, InstanceState{Instance: in.Instance, Host: in.Host, PID: in.PID, Version: in.Version,
			Started: in.Started, Seen: in.Seen, Behind: in.Behind})
	}
	return st
}

// storeCollector exports the store's state at scrape time.
type storeCollector struct {
	s                      *Server
	age, up, reconnects, n *prometheus.Desc
}

func newStoreCollector(s *Server) storeCollector {
	return storeCollector{s: s,
		age:        prometheus.NewDesc("p11bridge_keymap_age_seconds", "Time since this instance last confirmed that its keymap rows are current (PostgreSQL; keys are refused above the staleness bound).", nil, nil),
		up:         prometheus.NewDesc("p11bridge_keymap_feed_up", "Whether the PostgreSQL change feed is connected.", nil, nil),
		reconnects: prometheus.NewDesc("p11bridge_keymap_reconnects_total", "Times the PostgreSQL change feed reconnected.", nil, nil),
		n:          prometheus.NewDesc("p11bridge_keymap_instances", "Instances whose heartbeat was seen in the last minute.", nil, nil),
	}
}

func (c storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.age
	ch <- c.up
	ch <- c.reconnects
	ch <- c.n
}

func (c storeCollector) Collect(ch chan<- prometheus.Metric) {
	pg, ok := c.s.km.(*keymap.PG)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	p := pg.Status(ctx)
	up := 0.0
	if p.FeedUp {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, p.Age.Seconds())
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up)
	ch <- prometheus.MustNewConstMetric(c.reconnects, prometheus.CounterValue, float64(p.Reconnects))
	if p.Instances != nil {
		ch <- prometheus.MustNewConstMetric(c.n, prometheus.GaugeValue, float64(len(p.Instances)))
	}
}
