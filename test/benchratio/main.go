// Command benchratio reads `go test -bench` output and prints, per benchmark and concurrency, the
// throughput of p11bridge relative to the references measured in the same run (direct PKCS#11
// calls, a real KES, pykmip-server; PostgreSQL against the CSV map for the keymap store
// benchmarks; flat values beside hostile ones for the attribute benchmarks). Sub-benchmarks are
// named SUBJECT/cN; the references are the subjects listed in refs.
package main

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

var refs = map[string]bool{"pkcs11": true, "kes-v0.24": true, "pykmip-server": true, "csv": true, "flat": true}

var line = regexp.MustCompile(`^(Benchmark[^/\s]+)/([^/\s]+)/(c\d+)(?:-\d+)?\s+\d+\s+([\d.]+) ns/op`)

func main() {
	// ns[bench][conc][subject]
	ns := map[string]map[string]map[string]float64{}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		m := line.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		v, err := strconv.ParseFloat(m[4], 64)
		if err != nil {
			continue
		}
		if ns[m[1]] == nil {
			ns[m[1]] = map[string]map[string]float64{}
		}
		if ns[m[1]][m[3]] == nil {
			ns[m[1]][m[3]] = map[string]float64{}
		}
		ns[m[1]][m[3]][m[2]] = v
	}
	benches := make([]string, 0, len(ns))
	for b := range ns {
		benches = append(benches, b)
	}
	sort.Strings(benches)
	fmt.Printf("\n%-28s %-5s %-12s %12s %-14s %12s %8s\n", "benchmark", "conc", "subject", "ops/s", "reference", "ops/s", "ratio")
	for _, b := range benches {
		concs := make([]string, 0, len(ns[b]))
		for c := range ns[b] {
			concs = append(concs, c)
		}
		sort.Slice(concs, func(i, j int) bool { return num(concs[i]) < num(concs[j]) })
		for _, c := range concs {
			row := ns[b][c]
			for subj, sv := range row {
				if refs[subj] {
					continue
				}
				for ref, rv := range row {
					if !refs[ref] {
						continue
					}
					fmt.Printf("%-28s %-5s %-12s %12.0f %-14s %12.0f %7.2fx\n", strings.TrimPrefix(b, "Benchmark"), c, subj, 1e9/sv, ref, 1e9/rv, rv/sv)
				}
			}
		}
	}
}

func num(c string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(c, "c"))
	return n
}
