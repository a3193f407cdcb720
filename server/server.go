// Package server is the p11bridge process: configuration → signer registry → listeners (KMIP, KES,
// ops), TLS, identities and policies, audit log, reload on SIGHUP and graceful stop.
package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
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
	Dev     bool      // dev mode: say so at start
	Stderr  io.Writer // operational log; os.Stderr when nil
}

// Server is one running p11bridge.
type Server struct {
	opts   Options
	cfg    atomic.Pointer[conf.Config]
	log    *slog.Logger
	audit  *slog.Logger
	auditF *fileLog
	errors *broadcast
	audits *broadcast

	km  *keymap.Map
	reg *signer.Registry

	auth  atomic.Pointer[auth]
	cert  atomic.Pointer[tls.Certificate]
	cas   atomic.Pointer[x509.CertPool]
	start time.Time

	kmip *ttlv.Server
	kes  *http.Server
	ops  *http.Server
	wg   sync.WaitGroup

	// Addresses the listeners got (useful with port 0).
	KMIPAddr, KESAddr, OpsAddr string
}

// SignerConfigs turns the config's signer blocks into registry configurations.
func SignerConfigs(cfg *conf.Config) []signer.Config {
	out := make([]signer.Config, 0, len(cfg.Signers))
	for _, s := range cfg.Signers {
		out = append(out, signer.Config{
			Name: s.Name, Module: s.Module, SlotID: s.SlotID, TokenLabel: s.TokenLabel, TokenSerial: s.TokenSerial,
			URI: s.URI, PIN: s.PIN.Reveal(), MaxSessions: s.MaxSessions, SessionTimeout: s.SessionTimeout,
		})
	}
	return out
}

// New opens the keymap and every signer of cfg. Nothing listens yet.
func New(cfg *conf.Config, opts Options) (*Server, error) {
	if opts.Stderr == nil {
		opts.Stderr = os.Stderr
	}
	s := &Server{opts: opts, errors: newBroadcast(), audits: newBroadcast(), start: time.Now()}
	level := parseLevel(cfg.LogLevel)
	s.log = slog.New(fanout{
		slog.NewTextHandler(opts.Stderr, &slog.HandlerOptions{Level: level}),
		slog.NewJSONHandler(teeWriter{io.Discard, s.errors}, &slog.HandlerOptions{Level: slog.LevelError}),
	})
	var auditOut io.Writer = io.Discard
	if cfg.Audit.Path != "" {
		f, err := openFileLog(cfg.Audit.Path)
		if err != nil {
			return nil, fmt.Errorf("audit log: %w", err)
		}
		s.auditF, auditOut = f, f
	}
	s.audit = slog.New(slog.NewJSONHandler(teeWriter{auditOut, s.audits}, nil))
	if err := s.loadTLS(cfg); err != nil {
		s.closeLogs()
		return nil, err
	}
	km, err := keymap.Open(cfg.Keymap.Path, s.log)
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
	s.cfg.Store(cfg)
	s.auth.Store(newAuth(cfg))
	return s, nil
}

func (s *Server) closeLogs() {
	if s.auditF != nil {
		s.auditF.Close()
	}
}

// Registry is the server's signer registry (for tests and the CLI).
func (s *Server) Registry() *signer.Registry { return s.reg }

// Logger is the operational log.
func (s *Server) Logger() *slog.Logger { return s.log }

// loadTLS reads the server certificate and client CA; a reload swaps them for new handshakes.
func (s *Server) loadTLS(cfg *conf.Config) error {
	if cfg.Listen.KMIP == "" && cfg.Listen.KES == "" {
		return nil
	}
	cert, err := tls.LoadX509KeyPair(cfg.TLS.Cert, cfg.TLS.Key)
	if err != nil {
		return fmt.Errorf("tls: load %s and %s: %w", cfg.TLS.Cert, cfg.TLS.Key, err)
	}
	var pool *x509.CertPool
	if cfg.TLS.ClientCA != "" {
		pem, err := os.ReadFile(cfg.TLS.ClientCA)
		if err != nil {
			return fmt.Errorf("tls: client_ca: %w", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("tls: client_ca %s holds no PEM certificate", cfg.TLS.ClientCA)
		}
	}
	s.cert.Store(&cert)
	s.cas.Store(pool)
	return nil
}

func (s *Server) clientCAs() *x509.CertPool { return s.cas.Load() }

// tlsConfig asks every client for a certificate; which ones are accepted is decided per request
// by identify (chains against the client CA, or exactly configured identities such as API keys).
func (s *Server) tlsConfig(protos ...string) *tls.Config {
	cfg := s.cfg.Load()
	min := cfg.TLS.MinVersion
	if min == 0 {
		min = tls.VersionTLS12
	}
	return &tls.Config{
		MinVersion: min,
		ClientAuth: tls.RequireAnyClientCert,
		NextProtos: protos,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.cert.Load(), nil
		},
	}
}

// Start opens the configured listeners.
func (s *Server) Start() error {
	cfg := s.cfg.Load()
	if s.opts.Dev {
		s.log.Warn("dev mode: SoftHSM2 token, generated certificates and PIN file in the dev directory; not for production keys")
	}
	for _, t := range s.reg.Signers() {
		p, err := s.reg.Probe(context.Background(), t.Name())
		if err != nil {
			return err
		}
		s.log.Info("signer ready", "signer", p.Signer, "token", p.Label, "serial", p.Serial, "mechanisms", p.Mechanisms,
			"default", p.Signer == s.reg.Default(), "rollover", p.Signer == s.reg.Rollover())
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
			Registry: s.reg, Auth: kmipAuth{s}, Log: s.log.With("front", "kmip"), Audit: s.audit,
			MaxMessageSize: cfg.KMIP.MaxMessageSize, MaxConnections: cfg.KMIP.MaxConnections,
			IdleTimeout: cfg.KMIP.IdleTimeout, ServerName: "p11bridge " + s.opts.Version,
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
			Registry: s.reg, Auth: kesAuth{s}, Log: s.log.With("front", "kes"), Audit: s.audit,
			ErrorLog: s.errors, AuditLog: s.audits, Version: s.opts.Version, MaxBody: int64(cfg.KES.MaxBody),
		})
		s.kes = &http.Server{Handler: h, TLSConfig: s.tlsConfig("h2", "http/1.1"), ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout: 2 * time.Minute, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
		s.goServe("kes", func() error { return s.kes.ServeTLS(l, "", "") })
	}
	if cfg.Listen.Ops != "" {
		l, err := net.Listen("tcp", cfg.Listen.Ops)
		if err != nil {
			return fail(fmt.Errorf("ops listener: %w", err))
		}
		s.OpsAddr = l.Addr().String()
		s.ops = &http.Server{Handler: s.opsHandler(), ReadHeaderTimeout: 10 * time.Second}
		s.goServe("ops", func() error { return s.ops.Serve(l) })
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
		}
	}()
}

// Reload applies a new configuration: signers (rollover switch), identities and policies, TLS
// files, and reopens the audit log. A configuration that fails leaves the running one in place.
func (s *Server) Reload(cfg *conf.Config) error {
	old := s.cfg.Load()
	if cfg.Keymap.Path != old.Keymap.Path {
		return fmt.Errorf("reload: the keymap path cannot change while running (restart instead)")
	}
	if cfg.Listen != old.Listen {
		return fmt.Errorf("reload: listener addresses cannot change while running (restart instead)")
	}
	if err := s.checkRemovedSigners(cfg); err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	if err := s.loadTLS(cfg); err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	if err := s.reg.Reconfigure(signer.Options{Signers: SignerConfigs(cfg), Default: cfg.DefaultSigner, Rollover: cfg.RolloverSigner}); err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	s.cfg.Store(cfg)
	s.auth.Store(newAuth(cfg))
	if s.auditF != nil {
		if err := s.auditF.Reopen(); err != nil {
			s.log.Error("reopen audit log", "err", err)
		}
	}
	s.log.Info("configuration reloaded", "default_signer", s.reg.Default(), "rollover_signer", s.reg.Rollover())
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
			for _, rec := range s.reg.List(t.Name()) {
				if rec.State == keymap.Active || rec.State == keymap.PreActive {
					ids = append(ids, rec.ID+" ("+rec.Name+")")
				}
				if len(ids) == 10 {
					ids = append(ids, "…")
					break
				}
			}
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

// PIDFile is where a serving p11bridge writes its process id: next to its keymap, which only one
// process may hold. `p11bridge reload` reads it.
func PIDFile(cfg *conf.Config) string { return cfg.Keymap.Path + ".pid" }

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
			next, err := conf.Load(path)
			if err == nil {
				err = s.Reload(next)
			}
			if err != nil {
				s.log.Error("configuration refused; the running one stays", "err", err)
			}
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
