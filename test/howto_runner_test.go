package test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The how-tos in docs/ run as written. A how-to is Markdown; its steps are:
//
//   - ```sh blocks, run in order by one bash (set -euo pipefail) in an empty working directory;
//   - a ```sh block after <!-- howto: background --> runs in the background, as an operator runs
//     a server in another terminal or under systemd; it is stopped when the how-to ends;
//   - any block after <!-- howto: file NAME --> is written to NAME, as the text says to save it;
//   - <!-- howto: hook NAME --> pauses the how-to while the test checks something (servers of the
//     how-to are running then), e.g. replays a client that cannot run here.
//
// HTML comments are invisible in rendered Markdown, so the reader sees only the steps. What the
// test changes: the well-known ports of the how-tos become free ports (several tests and several
// engineers share this machine), PATH finds the p11bridge under test (and MinIO and mc where a
// how-to needs them), HOME is the working directory. Nothing else.

type howtoStep struct {
	kind string // "sh", "bg", "file", "hook"
	name string // file name or hook name
	body string
	line int
}

var howtoDirective = regexp.MustCompile(`^<!-- howto: (background|file|hook)\s*(\S*)\s*-->$`)

// parseHowto reads docs/NAME into steps.
func parseHowto(t *testing.T, name string) []howtoStep {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "docs", name))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	var steps []howtoStep
	var pending *howtoStep
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if m := howtoDirective.FindStringSubmatch(strings.TrimSpace(l)); m != nil {
			switch m[1] {
			case "background":
				pending = &howtoStep{kind: "bg"}
			case "file":
				pending = &howtoStep{kind: "file", name: m[2]}
			case "hook":
				steps = append(steps, howtoStep{kind: "hook", name: m[2], line: i + 1})
			}
			continue
		}
		fence, ok := strings.CutPrefix(l, "```")
		if !ok || fence == "" && pending == nil {
			continue
		}
		start := i + 1
		var body []string
		for i++; i < len(lines) && lines[i] != "```"; i++ {
			body = append(body, lines[i])
		}
		s := howtoStep{kind: "skip", body: strings.Join(body, "\n") + "\n", line: start}
		switch {
		case pending != nil && pending.kind == "file":
			s.kind, s.name = "file", pending.name
		case pending != nil && fence == "sh":
			s.kind = "bg"
		case fence == "sh":
			s.kind = "sh"
		}
		pending = nil
		if s.kind != "skip" {
			steps = append(steps, s)
		}
	}
	if len(steps) == 0 {
		t.Fatalf("docs/%s has no steps", name)
	}
	return steps
}

// howtoPorts are the ports the how-tos use; each becomes a free port in the run.
var howtoPorts = []string{"5696", "7373", "9464", "9000", "9001"}

// howtoScript turns steps into one bash script. Hooks print a marker and wait for a line on fd 3.
func howtoScript(doc string, steps []howtoStep, ports map[string]string) string {
	var s strings.Builder
	s.WriteString("set -euo pipefail\nbgpids=\"\"\n")
	// Background steps run in sessions of their own, so that stopping one stops what it started.
	s.WriteString("stop_bg() { for p in $bgpids; do kill -TERM -- -$p 2>/dev/null || true; done; for p in $bgpids; do while kill -0 $p 2>/dev/null; do sleep 0.1; done; done; }\ntrap stop_bg EXIT\n")
	for i, st := range steps {
		fmt.Fprintf(&s, "echo '@@howto step %d (docs/%s:%d)'\n", i+1, doc, st.line)
		body := st.body
		for from, to := range ports {
			body = regexp.MustCompile(`\b`+from+`\b`).ReplaceAllString(body, to)
		}
		switch st.kind {
		case "sh":
			s.WriteString(body)
		case "bg":
			fmt.Fprintf(&s, "setsid bash -c %s > bg-%d.log 2>&1 3<&- &\nbgpids=\"$bgpids $!\"\necho $! >> .howto-bg.pids\n", shellQuote(body), i+1)
		case "file":
			fmt.Fprintf(&s, "cat > %s <<'HOWTO_EOF'\n%sHOWTO_EOF\n", shellQuote(st.name), body)
		case "hook":
			fmt.Fprintf(&s, "echo '@@howto hook %s'\nread -r _ <&3\n", st.name)
		}
	}
	s.WriteString("echo '@@howto done'\n")
	return s.String()
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// howtoHook checks something while a how-to is paused; work is its working directory, ports maps
// the how-to's ports to those of the run ("5696" → the port used instead). It runs on the test's
// goroutine, so it may call t.Fatal.
type howtoHook func(work string, ports map[string]string)

// howtoRun runs docs/doc in a fresh working directory with extra directories on PATH. It returns
// the working directory and the whole output.
func howtoRun(t *testing.T, doc string, pathDirs []string, hooks map[string]howtoHook) (string, string) {
	t.Helper()
	steps := parseHowto(t, doc)
	work := t.TempDir()
	ports := map[string]string{}
	for _, p := range howtoPorts {
		addr := freeAddr(t)
		ports[p] = addr[strings.LastIndex(addr, ":")+1:]
	}
	script := howtoScript(doc, steps, ports)
	if err := os.WriteFile(filepath.Join(work, ".howto.sh"), []byte(script), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(work, ".howto.sh"))
	cmd.Dir = work
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "SOFTHSM2_CONF=") && !strings.HasPrefix(e, "HOME=") && !strings.HasPrefix(e, "PATH=") {
			env = append(env, e)
		}
	}
	path := append(append([]string{filepath.Dir(binary)}, pathDirs...), os.Getenv("PATH"))
	cmd.Env = append(env, "HOME="+work, "PATH="+strings.Join(path, ":"))
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	hookR, hookW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.ExtraFiles = []*os.File{hookR}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	hookR.Close()
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }) // ours; gone already when all went well
	// Background steps live in sessions of their own; if the script could not stop them (a
	// timeout killed it), stop them here, by the ids the script recorded.
	t.Cleanup(func() {
		b, _ := os.ReadFile(filepath.Join(work, ".howto-bg.pids"))
		for _, f := range strings.Fields(string(b)) {
			var pid int
			if _, err := fmt.Sscan(f, &pid); err == nil && pid > 1 {
				syscall.Kill(-pid, syscall.SIGKILL)
			}
		}
	})
	var out strings.Builder
	var mu sync.Mutex
	hookCh := make(chan string)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			mu.Lock()
			out.WriteString(line + "\n")
			mu.Unlock()
			if name, ok := strings.CutPrefix(line, "@@howto hook "); ok {
				hookCh <- name
			}
		}
	}()
	waited := make(chan error, 1)
	go func() {
		err := cmd.Wait() // returns once the output is copied into pw, i.e. read by the scanner
		pw.Close()
		waited <- err
	}()
loop:
	for {
		select {
		case name := <-hookCh:
			h := hooks[name]
			if h == nil {
				t.Fatalf("docs/%s: no hook %q in the test", doc, name)
			}
			h(work, ports)
			hookW.Write([]byte("\n"))
		case err = <-waited:
			break loop
		}
	}
	go func() { // a hook line the script printed just before it ended needs no answer
		for range hookCh {
		}
	}()
	<-done
	close(hookCh)
	hookW.Close()
	mu.Lock()
	o := out.String()
	mu.Unlock()
	if err != nil || !strings.Contains(o, "@@howto done") {
		var logs strings.Builder
		bg, _ := filepath.Glob(filepath.Join(work, "bg-*.log"))
		for _, f := range bg {
			b, _ := os.ReadFile(f)
			fmt.Fprintf(&logs, "--- %s ---\n%s\n", filepath.Base(f), b)
		}
		t.Fatalf("docs/%s does not run as written: %v\n%s\n%s", doc, err, o, logs.String())
	}
	return work, o
}

// stepOutput is what the how-to printed from its step that starts at the first line holding
// marker until the next step.
func stepOutput(out, marker string) string {
	_, rest, _ := strings.Cut(out, marker)
	if i := strings.Index(rest, "@@howto step"); i >= 0 {
		return rest[:i]
	}
	return rest
}
