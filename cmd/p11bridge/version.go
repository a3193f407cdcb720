package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
)

// writeVersion prints the version, the Go toolchain and platform, the VCS state the binary was
// built from, and every module linked into it with its version: what an operator quotes in a bug
// report, and what a security review checks against advisories.
func writeVersion(w io.Writer) {
	v := version
	bi, ok := debug.ReadBuildInfo()
	if v == "dev" && ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version // go install …@vX.Y.Z sets it; make build sets main.version
	}
	fmt.Fprintln(w, "p11bridge", v)
	if !ok {
		fmt.Fprintf(w, "built with %s for %s/%s (no build information)\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	build := fmt.Sprintf("built with %s for %s/%s", bi.GoVersion, runtime.GOOS, runtime.GOARCH)
	if settings["CGO_ENABLED"] == "1" {
		build += ", cgo"
	}
	fmt.Fprintln(w, build)
	if rev := settings["vcs.revision"]; rev != "" {
		state := rev
		if settings["vcs.modified"] == "true" {
			state += " (modified)"
		}
		if t := settings["vcs.time"]; t != "" {
			state += " " + t
		}
		fmt.Fprintf(w, "source %s %s\n", settings["vcs"], state)
	}
	fmt.Fprintf(w, "module %s %s\n", bi.Main.Path, bi.Main.Version)
	fmt.Fprintln(w, "dependencies:")
	for _, d := range bi.Deps {
		line := "  " + d.Path + " " + d.Version
		if r := d.Replace; r != nil {
			line += " => " + strings.TrimSpace(r.Path+" "+r.Version)
		}
		fmt.Fprintln(w, line)
	}
}
