package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/p11bridge/p11bridge/conf"
	"github.com/p11bridge/p11bridge/kes"
	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/server"
	"github.com/p11bridge/p11bridge/server/pki"
	"github.com/p11bridge/p11bridge/signer"
)

func flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return usageError(err.Error())
	}
	return nil
}

// loadConfig parses the flags and loads the --config file they name.
func loadConfig(fs *flag.FlagSet, args []string, path *string) (*conf.Config, error) {
	if err := parse(fs, args); err != nil {
		return nil, err
	}
	if err := needConfig(*path); err != nil {
		return nil, err
	}
	return conf.Load(*path)
}

func needConfig(path string) error {
	if path == "" {
		return usageError("--config FILE is required")
	}
	return nil
}

func cmdServe(args []string, stderr io.Writer) error {
	fs := flags("serve")
	cfg := fs.String("config", "", "config file")
	dev := fs.Bool("dev", false, "relax production checks as dev mode does")
	inFlight := fs.Int("max-in-flight", server.DefaultMaxInFlight, "key operations one identity may have running at once (KMIP and KES together)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := needConfig(*cfg); err != nil {
		return err
	}
	tuneGC()
	stop, err := cpuProfile()
	if err != nil {
		return err
	}
	defer stop()
	return server.Run(*cfg, server.Options{Version: version, Dev: *dev, Stderr: stderr, MaxInFlightPerIdentity: *inFlight})
}

// cmdCheck validates the config and opens each signer on its own, so every broken one is reported.
func cmdCheck(args []string, stdout io.Writer) error {
	fs := flags("check")
	path := fs.String("config", "", "config file")
	dev := fs.Bool("dev", false, "check as serve --dev runs: production checks only reported")
	cfg, err := loadConfig(fs, args, path)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "config %s: ok (%d signers, default %q", *path, len(cfg.Signers), cfg.DefaultSigner)
	if cfg.RolloverSigner != "" {
		fmt.Fprintf(stdout, ", rollover to %q", cfg.RolloverSigner)
	}
	fmt.Fprintln(stdout, ")")
	var problems []string
	failed := 0
	if perr := cfg.Production(); perr != nil {
		if *dev {
			fmt.Fprintf(stdout, "dev mode accepts what production mode would refuse:\n%s\n", indent(perr.Error()))
		} else {
			fmt.Fprintf(stdout, "FAIL production mode (p11bridge serve) refuses:\n%s\n", indent(perr.Error()))
			problems = append(problems, "production mode refuses the config")
		}
	} else {
		fmt.Fprintln(stdout, "production checks: ok")
	}
	if err := checkStore(cfg, stdout); err != nil {
		fmt.Fprintf(stdout, "FAIL keymap: %v\n", err)
		problems = append(problems, "keymap store unusable")
	}
	km, err := keymap.Open(filepath.Join(os.TempDir(), fmt.Sprintf("p11bridge-check-%d.csv", os.Getpid())), nil)
	if err != nil {
		return err
	}
	defer func() { km.Close(); os.Remove(km.Path()) }()
	for _, sc := range server.SignerConfigs(cfg) {
		reg, err := signer.Open(signer.Options{Signers: []signer.Config{sc}, Default: sc.Name, NoIndex: true}, km)
		if err != nil {
			failed++
			fmt.Fprintf(stdout, "FAIL %v\n", err)
			continue
		}
		p, err := reg.Probe(context.Background(), sc.Name)
		if err != nil {
			failed++
			fmt.Fprintf(stdout, "FAIL %v\n", err)
		} else {
			fmt.Fprint(stdout, p.String())
			fmt.Fprint(stdout, server.Capabilities(p))
		}
		reg.Close()
	}
	if failed > 0 {
		problems = append(problems, fmt.Sprintf("%d of %d signers failed", failed, len(cfg.Signers)))
	}
	checkKESNames(cfg, *path, stdout)
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// checkKESNames lists the AES keys that earlier versions let KES use because their Name matched a
// KES request, and which now need the operator to share them. Reading works while a server runs.
func checkKESNames(cfg *conf.Config, path string, stdout io.Writer) {
	km, err := server.OpenStore(cfg, server.StoreRead, nil, version)
	if err != nil {
		return // no keymap yet: nothing to migrate
	}
	defer km.Close()
	if half := signer.HalfDestroyed(km); len(half) > 0 {
		fmt.Fprintf(stdout, "note: %d objects are half destroyed (a crash or a token fault cut their Destroy short); the server finishes them at its next start:\n", len(half))
		printHalfDestroyed(km, stdout)
	}
	recs := signer.UnsharedKESCandidates(km, kes.ValidName)
	if len(recs) == 0 {
		return
	}
	fmt.Fprintf(stdout, "note: %d AES keys made through KMIP have names KES requests may use; KES serves them only once shared:\n", len(recs))
	for _, r := range recs {
		fmt.Fprintf(stdout, "  %s %q (owner %s): p11bridge keys share-kes --config %s %s %s\n", r.ID, r.Name, ownerOrNobody(r.Owner), path, r.ID, r.Name)
	}
}

func indent(s string) string { return "  " + strings.ReplaceAll(s, "\n", "\n  ") }

func cmdDev(args []string, stdout, stderr io.Writer) error {
	fs := flags("dev")
	opts := server.DevOptions{}
	fs.StringVar(&opts.Dir, "dir", ".p11bridge-dev", "directory for the token, certificates and config")
	fs.StringVar(&opts.KMIP, "kmip", "127.0.0.1:5696", "KMIP listen address")
	fs.StringVar(&opts.KES, "kes", "127.0.0.1:7373", "KES listen address")
	fs.StringVar(&opts.Ops, "ops", "127.0.0.1:9464", "ops (health, metrics) listen address")
	if err := parse(fs, args); err != nil {
		return err
	}
	d, err := server.PrepareDev(opts)
	if err != nil {
		return err
	}
	tuneGC()
	cfg, err := conf.Load(d.Config)
	if err != nil {
		return err
	}
	s, err := server.New(cfg, server.Options{Version: version, Dev: true, DevSetup: true, Stderr: stderr})
	if err != nil {
		return err
	}
	if err := s.Start(); err != nil {
		s.Shutdown(context.Background())
		return err
	}
	fmt.Fprint(stdout, d.Instructions(opts))
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	<-sigs
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return s.Shutdown(ctx)
}

func cmdKeys(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError("keys needs list, show, rebuild, rotate or share-kes")
	}
	fs := flags("keys " + args[0])
	path := fs.String("config", "", "config file")
	only := fs.String("signer", "", "only objects on this signer")
	dry := fs.Bool("dry-run", false, "rebuild: only report what the keymap lacks")
	cfg, err := loadConfig(fs, args[1:], path)
	if err != nil {
		return err
	}
	mode := server.StoreWrite
	if args[0] == "list" || args[0] == "show" {
		// Reading works while a server holds the keymap.
		mode = server.StoreRead
	} else if args[0] == "rebuild" && *dry && cfg.Keymap.Postgres.Reveal() != "" {
		// Beside the running servers; a CSV keymap is opened as before (it may not exist yet).
		mode = server.StoreRead
	}
	km, err := server.OpenStore(cfg, mode, nil, version)
	if err != nil {
		return err
	}
	defer km.Close()
	switch args[0] {
	case "list":
		return keysList(km, *only, stdout)
	case "show":
		if fs.NArg() != 1 {
			return usageError("keys show ID")
		}
		rec, ok := km.Get(fs.Arg(0))
		if !ok {
			return fmt.Errorf("no object with identifier %q", fs.Arg(0))
		}
		return showRecord(rec, stdout)
	case "rebuild":
		if *only == "" {
			return usageError("keys rebuild --signer S")
		}
		reg, err := signer.Open(signer.Options{Signers: server.SignerConfigs(cfg), Default: cfg.DefaultSigner, Rollover: cfg.RolloverSigner, NoIndex: true}, km)
		if err != nil {
			return err
		}
		defer reg.Close()
		if !*dry {
			if _, err := reg.FinishDestroys(context.Background()); err != nil {
				return err
			}
		}
		recs, err := reg.Rebuild(context.Background(), *only, *dry)
		verb := "added"
		if *dry {
			verb = "not in the keymap (orphan or another instance's)"
		}
		for _, r := range recs {
			fmt.Fprintf(stdout, "%s\t%s\t%s-%d\t%q\t%s\n", r.ID, r.Class, r.Algorithm, r.Size, r.Name, verb)
		}
		if *dry {
			printHalfDestroyed(km, stdout)
		}
		fmt.Fprintf(stdout, "signer %s: %d objects %s\n", *only, len(recs), verb)
		return err
	case "rotate":
		if fs.NArg() != 1 {
			return usageError("keys rotate NAME")
		}
		reg, err := signer.Open(signer.Options{Signers: server.SignerConfigs(cfg), Default: cfg.DefaultSigner, Rollover: cfg.RolloverSigner, NoIndex: true}, km)
		if err != nil {
			return err
		}
		defer reg.Close()
		id, err := kes.Rotate(context.Background(), reg, fs.Arg(0))
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "key %q: new version %s\n", fs.Arg(0), id)
		return nil
	case "share-kes":
		return keysShareKES(cfg, km, fs, stdout)
	}
	return usageError("keys needs list, show, rebuild, rotate or share-kes")
}

// keysShareKES makes an AES key made through KMIP a KES key: the operator's explicit act, which
// earlier versions did implicitly for any AES key whose Name matched. It is audited.
func keysShareKES(cfg *conf.Config, km signer.Store, fs *flag.FlagSet, stdout io.Writer) error {
	if fs.NArg() != 2 {
		return usageError("keys share-kes ID NAME")
	}
	id, name := fs.Arg(0), fs.Arg(1)
	if !kes.ValidName(name) {
		return fmt.Errorf("KES key name %q: use 1 to %d of [0-9A-Za-z_-]", name, kes.MaxNameLen)
	}
	reg, err := signer.Open(signer.Options{Signers: server.SignerConfigs(cfg), Default: cfg.DefaultSigner, Rollover: cfg.RolloverSigner, NoIndex: true}, km)
	if err != nil {
		return err
	}
	defer reg.Close()
	rec, err := reg.ShareKES(signer.Operator, id, name)
	result := "success"
	if err != nil {
		result = "failure"
	}
	if aerr := server.AuditOperator(cfg, "keys/share-kes", id+" as "+name, result); aerr != nil {
		if err == nil && cfg.Audit.Required {
			return fmt.Errorf("object %s now serves KES key %q, but the act could not be audited: %w", id, name, aerr)
		}
		fmt.Fprintf(os.Stderr, "p11bridge: warning: %v\n", aerr)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "object %s (owner %s) now serves KES key %q; identities other than its owner need a policy `keys` pattern naming it\n", rec.ID, ownerOrNobody(rec.Owner), name)
	return nil
}

// printHalfDestroyed reports the destroys a crash or a fault cut short; the server finishes them
// at its next start (so does `keys rebuild` without --dry-run).
func printHalfDestroyed(km signer.Store, stdout io.Writer) {
	for _, r := range signer.HalfDestroyed(km) {
		fmt.Fprintf(stdout, "%s\t%s\t%s-%d\t%q\thalf destroyed (since %s): the next start finishes it\n",
			r.ID, r.Class, r.Algorithm, r.Size, r.Name, r.Attrs[signer.AttrDestroying])
	}
}

func ownerOrNobody(o string) string {
	if o == "" {
		return "nobody: the admin's"
	}
	return o
}

// keysList prints the rows (of one signer, when only is set) in identifier order, then a count per
// signer and state. It reads the rows where the keymap keeps them and writes each line as it goes:
// a first pass sizes the columns (as a tabwriter would, without holding the text), so memory
// beyond the loaded keymap is a pointer a row.
func keysList(km signer.Store, only string, stdout io.Writer) error {
	var q keymap.Query
	if only != "" {
		q.Signers = []string{only}
	}
	var views []keymap.View
	km.Select(q, func(v keymap.View) bool { views = append(views, v); return true })
	slices.SortFunc(views, func(a, b keymap.View) int { return strings.Compare(a.ID(), b.ID()) })
	alg := func(v keymap.View) string {
		if v.Size() > 0 {
			return v.Algorithm() + "-" + strconv.Itoa(v.Size())
		}
		return v.Algorithm()
	}
	head := []string{"ID", "SIGNER", "CLASS", "ALGORITHM", "STATE", "EXPORT", "NAME"}
	width := make([]int, len(head)-1)
	grow := func(i int, s string) { width[i] = max(width[i], utf8.RuneCountInString(s)) }
	counts := map[string]map[keymap.State]int{}
	for i, h := range head[:len(width)] {
		grow(i, h)
	}
	for _, v := range views {
		grow(0, v.ID())
		grow(1, v.Signer())
		grow(2, string(v.Class()))
		grow(3, alg(v))
		grow(4, string(v.State()))
		grow(5, exportWordOfView(v))
		if counts[v.Signer()] == nil {
			counts[v.Signer()] = map[keymap.State]int{}
		}
		counts[v.Signer()][v.State()]++
	}
	w := bufio.NewWriterSize(stdout, 64<<10)
	line := func(cells ...string) {
		for i, c := range cells[:len(width)] {
			w.WriteString(c)
			// Two spaces after the widest cell of a column, as tabwriter's padding of 2 gives.
			for n := utf8.RuneCountInString(c); n < width[i]+2; n++ {
				w.WriteByte(' ')
			}
		}
		w.WriteString(cells[len(width)])
		w.WriteByte('\n')
	}
	line(head...)
	for _, v := range views {
		line(v.ID(), v.Signer(), string(v.Class()), alg(v), string(v.State()), exportWordOfView(v), v.Name())
	}
	names := make([]string, 0, len(counts))
	for n := range counts {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		var parts []string
		for st, c := range counts[n] {
			parts = append(parts, fmt.Sprintf("%d %s", c, st))
		}
		sort.Strings(parts)
		fmt.Fprintf(w, "signer %s: %s\n", n, strings.Join(parts, ", "))
	}
	return w.Flush()
}

// exportWord says whether an object's material may leave its token, and why (attr reads the row).
func exportWord(exportable bool, attr func(string) string) string {
	switch {
	case !exportable:
		return "-"
	case attr(signer.AttrExportable) == signer.ExportRegistered:
		return "registered"
	case attr(signer.AttrWrapOnly) != "":
		return "wrapped"
	}
	return "yes"
}

func exportWordOfView(v keymap.View) string {
	return exportWord(signer.IsExportableView(v), func(k string) string { s, _ := v.Attr(k); return s })
}

func showRecord(r keymap.Record, stdout io.Writer) error {
	fmt.Fprintf(stdout, "id         %s\ntag        %s\nsigner     %s\nclass      %s\nalgorithm  %s\nsize       %d\n",
		r.ID, hex.EncodeToString(r.Tag), r.Signer, r.Class, r.Algorithm, r.Size)
	fmt.Fprintf(stdout, "key id     %s\nname       %s\nstate      %s\nowner      %s\ncreated    %s\nupdated    %s\n",
		hex.EncodeToString(r.KeyID), r.Name, r.State, r.Owner, r.Created.Format(time.RFC3339), r.Updated.Format(time.RFC3339))
	exp := map[string]string{
		"-":          "no: its material never leaves the token",
		"registered": "yes: registered by a client, which may have it back",
		"wrapped":    "yes, wrapped only (Sensitive): made under the export right",
		"yes":        "yes: made under the export right; each export is audited",
	}[exportWord(signer.IsExportable(r), func(k string) string { return r.Attrs[k] })]
	if r.Class == keymap.PublicKey || r.Class == keymap.Certificate {
		exp = "public"
	} else if !signer.Live(r) {
		exp = "no: destroyed"
	}
	fmt.Fprintf(stdout, "exportable %s\n", exp)
	keys := make([]string, 0, len(r.Attrs))
	for k := range r.Attrs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(stdout, "attr       %s = %s\n", k, r.Attrs[k])
	}
	return nil
}

func cmdIdentity(args []string, stdout io.Writer) error {
	if len(args) != 1 {
		return usageError("identity CERT.pem|API-KEY")
	}
	if strings.HasPrefix(args[0], "kes:v1:") {
		id, err := pki.APIKeyIdentity(args[0])
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, id)
		return nil
	}
	c, err := pki.LoadCert(args[0])
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s: no such file", args[0])
		}
		return err
	}
	fmt.Fprintln(stdout, pki.Identity(c))
	return nil
}

// cmdAPIKey makes a KES API key, as `kes identity new` does: MinIO turns it into a self-signed
// Ed25519 client certificate whose identity `p11bridge identity KEY` prints. The key goes to
// stdout alone, so that it can be redirected into a private file.
func cmdAPIKey(args []string, stdout io.Writer) error {
	if len(args) != 0 {
		return usageError("apikey takes no arguments")
	}
	key, _, err := pki.APIKey()
	if err != nil {
		return fmt.Errorf("make an API key: %w", err)
	}
	fmt.Fprintln(stdout, key)
	return nil
}

// cmdReload validates the config first, so a typo is reported here rather than only in the
// server's log, then sends SIGHUP to the server named by the pid file.
func cmdReload(args []string, stdout io.Writer) error {
	fs := flags("reload")
	path := fs.String("config", "", "config file")
	wait := fs.Bool("wait", false, "wait for the outcome (from the ops listener) and fail when the server refused the config")
	cfg, err := loadConfig(fs, args, path)
	if err != nil {
		return err
	}
	var before int64
	if *wait {
		if cfg.Listen.Ops == "" {
			return fmt.Errorf("--wait asks the ops listener, and the config has none (listen { ops = … })")
		}
		st, err := fetchStatus(cfg)
		if err != nil {
			return err
		}
		before = st.Reloads
	}
	b, err := os.ReadFile(server.PIDFile(cfg))
	if err != nil {
		return fmt.Errorf("no running p11bridge for this config (%v)", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return fmt.Errorf("%s does not hold a process id", server.PIDFile(cfg))
	}
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		return fmt.Errorf("signal process %d: %w", pid, err)
	}
	if !*wait {
		fmt.Fprintf(stdout, "sent SIGHUP to p11bridge (pid %d); its log says whether the new config was applied\n", pid)
		return nil
	}
	// Loading opens new signers (a network HSM may take a while) before anything switches.
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		st, err := fetchStatus(cfg)
		if err != nil || st.Reloads <= before {
			continue
		}
		if st.LastReloadError != "" {
			return fmt.Errorf("p11bridge (pid %d) refused the new configuration and keeps the running one: %s", pid, st.LastReloadError)
		}
		fmt.Fprintf(stdout, "p11bridge (pid %d) applied the new configuration (default signer %q", pid, st.Default)
		if st.Rollover != "" {
			fmt.Fprintf(stdout, ", new keys go to %q", st.Rollover)
		}
		fmt.Fprintln(stdout, ")")
		return nil
	}
	return fmt.Errorf("sent SIGHUP to p11bridge (pid %d), but it reported no outcome within 2 minutes; see its log", pid)
}

// fetchStatus asks the running server's ops listener for /status.
func fetchStatus(cfg *conf.Config) (server.Status, error) {
	var st server.Status
	client := http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + cfg.Listen.Ops + "/status")
	if err != nil {
		return st, fmt.Errorf("ask the server: %w", err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("status answer: %w", err)
	}
	return st, nil
}

// cmdStatus asks the running server's ops listener what each signer holds: what still depends on
// an old token during a rollover.
func cmdStatus(args []string, stdout io.Writer) error {
	fs := flags("status")
	path := fs.String("config", "", "config file")
	cfg, err := loadConfig(fs, args, path)
	if err != nil {
		return err
	}
	if cfg.Listen.Ops == "" {
		return fmt.Errorf("the config has no ops listener (listen { ops = … }) to ask")
	}
	st, err := fetchStatus(cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "p11bridge %s, up %s, default signer %q", st.Version, time.Duration(st.Uptime*float64(time.Second)).Round(time.Second), st.Default)
	if st.RolloverUnderway {
		fmt.Fprintf(stdout, ", ROLLOVER in progress: new keys go to %q", st.Rollover)
	}
	fmt.Fprintln(stdout)
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SIGNER\tROLE\tHEALTHY\tKEY COPIES\tKEYS BY STATE")
	for _, s := range st.Signers {
		role := ""
		switch {
		case s.Rollover:
			role = "rollover"
		case s.Default:
			role = "default"
		}
		states := make([]string, 0, len(s.Keys))
		for k, n := range s.Keys {
			states = append(states, fmt.Sprintf("%s %d", k, n))
		}
		sort.Strings(states)
		fmt.Fprintf(tw, "%s\t%s\t%v\t%d\t%s\n", s.Name, role, s.Healthy, s.Copies, strings.Join(states, ", "))
	}
	tw.Flush()
	k := st.Keymap
	fmt.Fprintf(stdout, "keymap: %s %s, %d rows", k.Kind, k.Location, k.Rows)
	if k.FeedUp != nil {
		feed := "change feed up"
		if !*k.FeedUp {
			feed = "CHANGE FEED LOST"
		}
		fmt.Fprintf(stdout, "; instance %s, %s, confirmed current %.3fs ago (limit %gs), %d reconnects", k.Instance, feed, k.LagSeconds, k.StalenessLimit, k.Reconnects)
		if k.LastError != "" {
			fmt.Fprintf(stdout, ", last error: %s", k.LastError)
		}
		for _, in := range k.Instances {
			fmt.Fprintf(stdout, "\n  instance %s on %s (pid %d, %s), seen %s ago, %d changes behind", in.Instance, in.Host, in.PID, in.Version,
				time.Since(in.Seen).Round(time.Millisecond), in.Behind)
		}
	}
	fmt.Fprintln(stdout)
	for _, name := range st.UnconfiguredHeldBy {
		fmt.Fprintf(stdout, "keys recorded on signer %q, which is no longer configured\n", name)
	}
	return nil
}
