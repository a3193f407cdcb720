// Package server is the p11bridge process: configuration → signer registry → listeners (KMIP, KES,
// ops), TLS, identities and policies, audit log, reload on SIGHUP and graceful stop.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/p11bridge/p11bridge/conf"
	"github.com/p11bridge/p11bridge/kes"
	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/signer"
	"github.com/p11bridge/p11bridge/ttlv"
)

// Options are the process-level settings that do not come from the config file.
type Options struct {
	Version string
	// Dev relaxes production mode's checks (conf.Config.Production: PINs written in the config,
	// secret files readable by others, a plaintext KES listener) and says so at start. `p11bridge
	// dev` and `p11bridge serve --dev` set it; production mode is the default.
	Dev bool
	// DevSetup says the configuration is dev mode's own (SoftHSM2 token, generated certificates).
	DevSetup bool
	Stderr   io.Writer // operational log; os.Stderr when nil
	// MaxInFlightPerIdentity bounds the key operations one identity has running at once on both
	// front ends together; 0 means DefaultMaxInFlight.
	MaxInFlightPerIdentity int
}

// Server is one running p11bridge.
type Server struct {
	opts   Options
	cfg    atomic.Pointer[conf.Config]
	log    *slog.Logger
	audit  *slog.Logger
	auditW *auditWriter
	// expired: configured identities seen with an expired certificate (auth.go).
	expired expiredCerts
	// stoppedListeners: listeners whose serving ended with an error (name → error); /ready fails.
	stoppedListeners sync.Map
	errors           *broadcast
	audits           *broadcast

	km      signer.Store
	reg     *signer.Registry
	metrics *storeMetrics

	auth  atomic.Pointer[auth]
	tls   atomic.Pointer[tlsState]
	start time.Time

	// relaxed is what production mode would have refused, when Options.Dev accepted it.
	relaxed error

	// reloads is the outcome of the SIGHUPs so far, for /status (`p11bridge reload --wait`).
	reloads atomic.Pointer[reloadOutcome]

	inFlight *inFlight

	kmip *ttlv.Server
	kes  *http.Server
	ops  *http.Server
	wg   sync.WaitGroup

	// Addresses the listeners got (useful with port 0).
	KMIPAddr, KESAddr, OpsAddr string
}

// Deadlines of KES requests (see Start).
const (
	kesReadTimeout  = 20 * time.Second
	kesWriteTimeout = 30 * time.Second
)

// SignerConfigs turns the config's signer blocks into registry configurations.
func SignerConfigs(cfg *conf.Config) []signer.Config {
	out := make([]signer.Config, 0, len(cfg.Signers))
	for _, s := range cfg.Signers {
		out = append(out, signer.Config{
			Name: s.Name, Module: s.Module, SlotID: s.SlotID, TokenLabel: s.TokenLabel, TokenSerial: s.TokenSerial,
			URI: s.URI, PIN: s.PIN.Reveal(), MaxSessions: s.MaxSessions, SessionTimeout: s.SessionTimeout,
			KeyCopies: s.KeyCopies,
		})
	}
	return out
}

// ErrProduction wraps what production mode refuses in a configuration.
var ErrProduction = errors.New("production mode refuses this configuration (p11bridge dev and serve --dev relax these checks)")

// productionCheck applies production mode's checks unless opts.Dev relaxes them.
func productionCheck(cfg *conf.Config, opts Options) (relaxed, err error) {
	perr := cfg.Production()
	if perr == nil {
		return nil, nil
	}
	if opts.Dev {
		return perr, nil
	}
	return nil, fmt.Errorf("%w:\n%v", ErrProduction, perr)
}

// New opens the keymap and every signer of cfg. Nothing listens yet. Outside dev mode it first
// refuses what production mode does not accept (conf.Config.Production).
func New(cfg *conf.Config, opts Options) (*Server, error) {
	if opts.Stderr == nil {
		opts.Stderr = os.Stderr
	}
	relaxed, err := productionCheck(cfg, opts)
	if err != nil {
		return nil, err
	}
	s := &Server{opts: opts, errors: newBroadcast(), audits: newBroadcast(), start: time.Now(), relaxed: relaxed,
		inFlight: newInFlight(opts.MaxInFlightPerIdentity)}
	level := parseLevel(cfg.LogLevel)
	s.log = slog.New(fanout{
		slog.NewTextHandler(opts.Stderr, &slog.HandlerOptions{Level: level}),
		slog.NewJSONHandler(teeWriter{io.Discard, s.errors}, &slog.HandlerOptions{Level: slog.LevelError}),
	})
	s.auditW = &auditWriter{stream: s.audits, log: s.log}
	s.auditW.required.Store(cfg.Audit.Required)
	if cfg.Audit.Path != "" {
		f, err := openFileLog(cfg.Audit.Path)
		if err != nil {
			return nil, fmt.Errorf("audit log: %w", err)
		}
		s.auditW.file = f
	}
	s.audit = slog.New(slog.NewJSONHandler(s.auditW, nil))
	s.metrics = newStoreMetrics()
	km, err := openStore(cfg, StoreServe, s.log, opts.Version, s.metrics)
	if err != nil {
		s.closeLogs()
		return nil, fmt.Errorf("keymap: %w", err)
	}
	s.km = km
	reg, err := signer.Open(signer.Options{Signers: SignerConfigs(cfg), Default: cfg.DefaultSigner, Rollover: cfg.RolloverSigner, Logger: s.log}, km)
	if err != nil {
		km.Close()
		s.closeLogs()
		return nil, err
	}
	s.reg = reg
	if n, err := reg.FinishDestroys(context.Background()); err != nil {
		s.log.Warn("a destroy cut short could not be finished yet; the next start tries again", "finished", n, "err", err)
	}
	// After the registry: the server's key may be in one of its tokens.
	st, err := s.prepareTLS(cfg)
	if err != nil {
		reg.Close()
		km.Close()
		s.closeLogs()
		return nil, err
	}
	s.tls.Store(st)
	s.cfg.Store(cfg)
	s.auth.Store(s.newAuth(cfg))
	return s, nil
}

func (s *Server) closeLogs() { s.auditW.close() }

// ReopenLogs starts a new audit file at the configured path: logrotate renames the old one, then
// sends SIGHUP.
func (s *Server) ReopenLogs() {
	if err := s.auditW.reopen(); err != nil {
		s.log.Error("reopen audit log; still writing to the old file", "err", err)
	}
}

// Registry is the server's signer registry (for tests and the CLI).
func (s *Server) Registry() *signer.Registry { return s.reg }

// Logger is the operational log.
func (s *Server) Logger() *slog.Logger { return s.log }

// Start opens the configured listeners.
func (s *Server) Start() error {
	cfg := s.cfg.Load()
	if s.opts.DevSetup {
		s.log.Warn("dev mode: SoftHSM2 token, generated certificates and PIN file in the dev directory; not for production keys")
	}
	if s.opts.Dev {
		s.log.Warn("dev mode relaxes production checks: PINs written in the config, secret files readable by others and a plaintext KES listener are accepted")
		if s.relaxed != nil {
			for _, line := range strings.Split(s.relaxed.Error(), "\n") {
				s.log.Warn("dev mode accepts what production mode refuses", "problem", line)
			}
		}
	}
	if st := s.tls.Load(); st.tokenKey != nil {
		s.log.Info("TLS key in a token", "key", st.tokenKey.String())
		if len(st.tokenKey.ID()) == signer.TagSize {
			s.log.Warn("the TLS key's CKA_ID is as long as p11bridge's key tags: `keys rebuild` and identifier lookups could take it for a managed key; give it a shorter id", "key", st.tokenKey.String())
		}
	}
	if st := s.tls.Load(); st.fips {
		s.log.Info("TLS restricted to FIPS 140-approved suites and curves", "suites_tls12", len(fipsSuites12), "suites_tls13", len(fipsSuites13))
	}
	for _, t := range s.reg.Signers() {
		p, err := s.reg.Probe(context.Background(), t.Name())
		if err != nil {
			return err
		}
		kmipN, kesN, missing := backedSummary(p)
		s.log.Info("signer ready", "signer", p.Signer, "token", p.Label, "serial", p.Serial, "mechanisms", p.Mechanisms,
			"default", p.Signer == s.reg.Default(), "rollover", p.Signer == s.reg.Rollover(), "kmip_features", kmipN, "kes_features", kesN)
		if len(missing) > 0 {
			s.log.Warn("signer cannot back every feature; requests for these fail on it", "signer", p.Signer, "lacks", strings.Join(missing, "; "))
		}
	}
	var lis []net.Listener
	fail := func(err error) error {
		for _, l := range lis {
			l.Close()
		}
		return err
	}
	if cfg.Listen.KMIP != "" {
		l, err := net.Listen("tcp", cfg.Listen.KMIP)
		if err != nil {
			return fail(fmt.Errorf("kmip listener: %w", err))
		}
		lis = append(lis, l)
		s.KMIPAddr = l.Addr().String()
		s.kmip = ttlv.New(ttlv.Options{
			Registry: s.reg, Auth: kmipAuth{s}, Log: s.log.With("front", "kmip"), Audit: s.audit, AuditCheck: s.auditW.check,
			MaxMessageSize: cfg.KMIP.MaxMessageSize, MaxConnections: cfg.KMIP.MaxConnections, MaxConnectionsPerIdentity: cfg.KMIP.MaxConnectionsPerIdentity,
			IdleTimeout: cfg.KMIP.IdleTimeout, HandshakeTimeout: cfg.KMIP.HandshakeTimeout,
			MaxHandshakes: cfg.KMIP.MaxHandshakes, MaxHandshakesPerAddress: cfg.KMIP.MaxHandshakesPerAddress,
			MaxLocateItems: cfg.KMIP.MaxLocateItems, ServerName: "p11bridge " + s.opts.Version,
		})
		tl := tls.NewListener(l, s.tlsConfig())
		s.goServe("kmip", func() error { return s.kmip.Serve(tl) })
	}
	if cfg.Listen.KES != "" {
		l, err := net.Listen("tcp", cfg.Listen.KES)
		if err != nil {
			return fail(fmt.Errorf("kes listener: %w", err))
		}
		lis = append(lis, l)
		s.KESAddr = l.Addr().String()
		h := kes.New(kes.Options{
			Registry: s.reg, Auth: kesAuth{s}, Log: s.log.With("front", "kes"), Audit: s.audit, AuditCheck: s.auditW.check,
			ErrorLog: s.errors, AuditLog: s.audits, Version: s.opts.Version, MaxBody: int64(cfg.KES.MaxBody),
		})
		// Deadlines, so that a slow client cannot hold a request forever: headers within 10 s, the
		// whole request (a body is at most max_body) within kesReadTimeout, the answer within
		// kesWriteTimeout, above the routes' own 10–15 s timeouts so those answer first. The log
		// streams lift both for themselves.
		// At most kesMaxConns connections, kesMaxPerAddress from one address: an unauthenticated
		// client must not take every file descriptor (an idle one goes after ReadHeaderTimeout).
		l = newConnLimit(l, kesMaxConns, kesMaxPerAddress, s.log.With("listener", "kes"))
		s.kes = &http.Server{Handler: h, TLSConfig: s.tlsConfig("h2", "http/1.1"), ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout: kesReadTimeout, WriteTimeout: kesWriteTimeout,
			IdleTimeout: 2 * time.Minute, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
		if cfg.KES.Plaintext {
			// Dev mode only (conf refuses it in production): behind a local TLS-terminating
			// proxy whose header names the client.
			s.log.Warn("KES listener without TLS; clients are named by the proxy header alone", "addr", s.KESAddr, "header", cfg.KES.Proxy.Header)
			s.kes.TLSConfig = nil
			s.goServe("kes", func() error { return s.kes.Serve(l) })
		} else {
			s.goServe("kes", func() error { return s.kes.ServeTLS(l, "", "") })
		}
	}
	if cfg.Listen.Ops != "" {
		l, err := net.Listen("tcp", cfg.Listen.Ops)
		if err != nil {
			return fail(fmt.Errorf("ops listener: %w", err))
		}
		s.OpsAddr = l.Addr().String()
		s.ops = &http.Server{Handler: s.opsHandler(), ReadHeaderTimeout: 10 * time.Second}
		if cfg.Ops.TLS {
			// Client certificates, and the policies' "/ops/..." paths, as for the KES API.
			s.ops.Handler = s.opsAuth(s.ops.Handler)
			s.ops.TLSConfig = s.tlsConfig("http/1.1")
			s.goServe("ops", func() error { return s.ops.ServeTLS(l, "", "") })
		} else {
			s.goServe("ops", func() error { return s.ops.Serve(l) })
		}
	}
	s.log.Info("p11bridge serving", "version", s.opts.Version, "kmip", s.KMIPAddr, "kes", s.KESAddr, "ops", s.OpsAddr,
		"default_signer", s.reg.Default(), "rollover_signer", s.reg.Rollover())
	return nil
}

func (s *Server) goServe(name string, serve func() error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := serve(); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			s.log.Error("listener stopped", "listener", name, "err", err)
			// Readiness says so: a load balancer must stop sending clients here.
			s.stoppedListeners.Store(name, err)
		}
	}()
}

// Reload applies a new configuration: signers (rollover switch), identities and policies, TLS
// files, audit.required. A configuration that fails leaves the running one in place. (Run reopens
// the audit log on SIGHUP before reloading, whether or not the new configuration is accepted.)
func (s *Server) Reload(cfg *conf.Config) error {
	old := s.cfg.Load()
	if cfg.Keymap.Path != old.Keymap.Path || cfg.Keymap.Postgres != old.Keymap.Postgres || cfg.Keymap.Instance != old.Keymap.Instance ||
		cfg.Keymap.Staleness != old.Keymap.Staleness {
		return fmt.Errorf("reload: the keymap settings cannot change while running (restart instead)")
	}
	if cfg.Listen != old.Listen {
		return fmt.Errorf("reload: listener addresses cannot change while running (restart instead)")
	}
	if cfg.KES.Plaintext != old.KES.Plaintext {
		return fmt.Errorf("reload: the KES listener cannot switch between TLS and plaintext while running (restart instead)")
	}
	relaxed, err := productionCheck(cfg, s.opts)
	if err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	if err := s.checkRemovedSigners(cfg); err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	// Prepared against the running signers: a key in a token is found through the signer that
	// serves that token now, and keeps finding it after the reconfiguration by its serial.
	st, err := s.prepareTLS(cfg)
	if err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	if err := s.reg.Reconfigure(signer.Options{Signers: SignerConfigs(cfg), Default: cfg.DefaultSigner, Rollover: cfg.RolloverSigner}); err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	s.tls.Store(st)
	s.relaxed = relaxed
	s.cfg.Store(cfg)
	s.auth.Store(s.newAuth(cfg))
	s.auditW.required.Store(cfg.Audit.Required)
	s.log.Info("configuration reloaded", "default_signer", s.reg.Default(), "rollover_signer", s.reg.Rollover(),
		"revoked_identities", len(cfg.TLS.Revoked))
	return nil
}

// checkRemovedSigners refuses a configuration that drops a signer still holding keys in use
// (Active or Pre-Active): their clients would fail from then on. The keys must be revoked or
// destroyed first.
func (s *Server) checkRemovedSigners(cfg *conf.Config) error {
	var msgs []string
	census := s.reg.Census()
	for _, t := range s.reg.Signers() {
		if _, kept := cfg.Signer(t.Name()); kept || slices.Contains(cfg.RetiredSigners, t.Name()) {
			continue
		}
		c := census[t.Name()]
		if n := c[keymap.Active] + c[keymap.PreActive]; n > 0 {
			var ids []string
			s.reg.Select(keymap.Query{Signers: []string{t.Name()}, States: []keymap.State{keymap.Active, keymap.PreActive}}, func(v keymap.View) bool {
				if len(ids) == 10 {
					ids = append(ids, "…")
					return false
				}
				ids = append(ids, v.ID()+" ("+v.Name()+")")
				return true
			})
			msgs = append(msgs, fmt.Sprintf("signer %q still holds %d active or pre-active keys: %s", t.Name(), n, strings.Join(ids, ", ")))
		}
	}
	if len(msgs) > 0 {
		return fmt.Errorf("%s; revoke or destroy them before removing the signer, or confirm with retired_signers = [...]", strings.Join(msgs, "; "))
	}
	return nil
}

// Shutdown stops accepting, lets requests in flight finish (until ctx ends), then closes signers
// and the keymap.
func (s *Server) Shutdown(ctx context.Context) error {
	var errs []error
	if s.kmip != nil {
		errs = append(errs, s.kmip.Shutdown(ctx))
	}
	if s.kes != nil {
		errs = append(errs, s.kes.Shutdown(ctx))
	}
	if s.ops != nil {
		errs = append(errs, s.ops.Shutdown(ctx))
	}
	s.wg.Wait()
	s.reg.Close()
	errs = append(errs, s.km.Close())
	s.closeLogs()
	return errors.Join(errs...)
}

// reloadOutcome is what became of the last SIGHUP.
type reloadOutcome struct {
	count int64
	at    time.Time
	err   string
}

func (s *Server) noteReload(err error) {
	o := &reloadOutcome{at: time.Now().UTC()}
	if prev := s.reloads.Load(); prev != nil {
		o.count = prev.count
	}
	o.count++
	if err != nil {
		o.err = err.Error()
	}
	s.reloads.Store(o)
}

// PIDFile is where a serving p11bridge writes its process id: next to its CSV keymap, which only one
// process may hold, or, with a PostgreSQL keymap that several share, next to its config file.
// `p11bridge reload` reads it.
func PIDFile(cfg *conf.Config) string {
	if cfg.Keymap.Path == "" {
		return cfg.File + ".pid"
	}
	return cfg.Keymap.Path + ".pid"
}

// Run starts a server from the config file and serves until SIGINT or SIGTERM; SIGHUP reloads.
func Run(path string, opts Options) error {
	cfg, err := conf.Load(path)
	if err != nil {
		return err
	}
	s, err := New(cfg, opts)
	if err != nil {
		return err
	}
	if err := s.Start(); err != nil {
		s.Shutdown(context.Background())
		return err
	}
	pidFile := PIDFile(cfg)
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		s.log.Warn("cannot write the pid file; `p11bridge reload` will not find this process", "file", pidFile, "err", err)
	}
	defer os.Remove(pidFile)
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	for sig := range sigs {
		if sig == syscall.SIGHUP {
			// Whatever becomes of the configuration: logrotate relies on SIGHUP for the new file.
			s.ReopenLogs()
			next, err := conf.Load(path)
			if err == nil {
				err = s.Reload(next)
			}
			if err != nil {
				s.log.Error("configuration refused; the running one stays", "err", err)
			}
			s.noteReload(err)
			continue
		}
		s.log.Info("stopping", "signal", sig.String())
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := s.Shutdown(ctx)
		cancel()
		return err
	}
	return nil
}
