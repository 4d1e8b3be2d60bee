// Command complement-summary reads a `go test -json` stream (a Complement run) and writes a
// summary: every top-level test and subtest with its result, then totals. It is a development
// tool run by scripts/complement.sh; nothing imports it.
//
// Usage:
//
//	complement-summary [-progress] [-o summary.txt] [-failures failures.txt] [results.jsonl]
//
// With no file it reads standard input. The summary goes to -o (standard output by default)
// and the totals always go to standard output. -failures writes the captured output of every
// failed test. -progress prints each top-level test and package result as it arrives, for
// reading a run as it happens. It exits 0 when no test failed, 1 when one did (or a package failed without
// a failing test, as a build error does), and 2 when the input cannot be read.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"
)

// event is one line of `go test -json` output (see `go doc test2json`).
type event struct {
	Time       time.Time
	Action     string
	Package    string
	ImportPath string // set instead of Package on build-output and build-fail events
	Test       string
	Elapsed    float64
	Output     string
}

// Result is the outcome of one test.
type Result string

// The results a test can have. NoResult is a test that started but never reported, as when
// the test binary panics or times out.
const (
	Pass     Result = "PASS"
	Fail     Result = "FAIL"
	Skip     Result = "SKIP"
	NoResult Result = "NONE"
)

// Test is one top-level test or subtest.
type Test struct {
	Package string
	Name    string // "TestA" or "TestA/sub/subsub"
	Result  Result
	Elapsed float64
	Output  []string
}

// TopLevel reports whether t is a top-level test rather than a subtest.
func (t *Test) TopLevel() bool { return !strings.Contains(t.Name, "/") }

// Package is the outcome of one test package.
type Package struct {
	Name   string
	Result Result
	Output []string // output not attributed to a test, such as build errors
}

// Run is a parsed `go test -json` stream.
type Run struct {
	Tests    []*Test // sorted by package, then by name segment by segment
	Packages []*Package
	Other    []string // lines that were not test events, such as "go: downloading …"
}

// Counts tallies results.
type Counts struct {
	Pass, Fail, Skip, NoResult int
}

func (c *Counts) add(r Result) {
	switch r {
	case Pass:
		c.Pass++
	case Fail:
		c.Fail++
	case Skip:
		c.Skip++
	default:
		c.NoResult++
	}
}

// Totals returns the counts of top-level tests and of subtests.
func (r *Run) Totals() (top, sub Counts) {
	for _, t := range r.Tests {
		if t.TopLevel() {
			top.add(t.Result)
		} else {
			sub.add(t.Result)
		}
	}
	return top, sub
}

// Failed reports whether anything failed: a test failed or never reported, or a package
// failed (a build error fails a package with no test at all).
func (r *Run) Failed() bool {
	for _, t := range r.Tests {
		if t.Result == Fail || t.Result == NoResult {
			return true
		}
	}
	for _, p := range r.Packages {
		if p.Result == Fail || p.Result == NoResult {
			return true
		}
	}
	return false
}

// Parse reads a `go test -json` stream. Lines that are not JSON (go command messages printed
// before the tests start) are kept in Other. If progress is not nil, each top-level test's and
// package's result is written to it as it arrives. It returns an error only if reading fails.
func Parse(r io.Reader, progress io.Writer) (*Run, error) {
	type key struct{ pkg, test string }
	run := &Run{}
	tests := map[key]*Test{}
	pkgs := map[string]*Package{}
	pkg := func(name string) *Package {
		p, ok := pkgs[name]
		if !ok {
			p = &Package{Name: name, Result: NoResult}
			pkgs[name] = p
		}
		return p
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Bytes()
		var ev event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &ev) != nil {
			run.Other = append(run.Other, string(line)+"\n")
			continue
		}
		if ev.Test == "" {
			name := ev.Package
			if name == "" {
				// "example.com/p [example.com/p.test]" names the package p.
				name, _, _ = strings.Cut(ev.ImportPath, " ")
			}
			p := pkg(name)
			switch ev.Action {
			case "output", "build-output":
				p.Output = append(p.Output, ev.Output)
			case "pass":
				p.Result = Pass
			case "fail", "build-fail":
				p.Result = Fail
			case "skip":
				p.Result = Skip
			}
			if progress != nil && (ev.Action == "pass" || ev.Action == "fail" || ev.Action == "skip") {
				fmt.Fprintf(progress, "%s package %s (%.1fs)\n", p.Result, p.Name, ev.Elapsed)
			}
			continue
		}
		k := key{ev.Package, ev.Test}
		t, ok := tests[k]
		if !ok {
			t = &Test{Package: ev.Package, Name: ev.Test, Result: NoResult}
			tests[k] = t
		}
		switch ev.Action {
		case "output":
			t.Output = append(t.Output, ev.Output)
		case "pass":
			t.Result, t.Elapsed = Pass, ev.Elapsed
		case "fail":
			t.Result, t.Elapsed = Fail, ev.Elapsed
		case "skip":
			t.Result, t.Elapsed = Skip, ev.Elapsed
		}
		if progress != nil && t.TopLevel() && t.Result != NoResult {
			fmt.Fprintf(progress, "%s %s (%.1fs)\n", t.Result, t.Name, t.Elapsed)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading test events: %w", err)
	}
	for _, t := range tests {
		run.Tests = append(run.Tests, t)
	}
	slices.SortFunc(run.Tests, func(a, b *Test) int {
		if c := strings.Compare(a.Package, b.Package); c != 0 {
			return c
		}
		// Compare segment by segment so that "TestA/b-c" sorts after "TestA/b/d", keeping
		// every subtest directly under its parent.
		return slices.Compare(strings.Split(a.Name, "/"), strings.Split(b.Name, "/"))
	})
	for _, p := range pkgs {
		run.Packages = append(run.Packages, p)
	}
	slices.SortFunc(run.Packages, func(a, b *Package) int { return strings.Compare(a.Name, b.Name) })
	return run, nil
}

func hasText(lines []string) bool {
	for _, l := range lines {
		if strings.TrimSpace(l) != "" {
			return true
		}
	}
	return false
}

// WriteSummary writes every test with its result, indented by depth and grouped by package,
// followed by the totals.
func WriteSummary(w io.Writer, run *Run) error {
	bw := bufio.NewWriter(w)
	pkg := "\x00"
	for _, t := range run.Tests {
		if t.Package != pkg {
			pkg = t.Package
			fmt.Fprintf(bw, "# %s\n", pkg)
		}
		indent := strings.Repeat("  ", strings.Count(t.Name, "/"))
		if t.Result == NoResult {
			fmt.Fprintf(bw, "%s %s%s\n", t.Result, indent, t.Name)
		} else {
			fmt.Fprintf(bw, "%s %s%s (%.2fs)\n", t.Result, indent, t.Name, t.Elapsed)
		}
	}
	fmt.Fprintln(bw)
	for _, p := range run.Packages {
		fmt.Fprintf(bw, "package %s %s\n", p.Result, p.Name)
	}
	fmt.Fprintln(bw)
	WriteTotals(bw, run)
	return bw.Flush()
}

// WriteTotals writes the counts of top-level tests and subtests by result, and the names of
// failed top-level tests.
func WriteTotals(w io.Writer, run *Run) {
	top, sub := run.Totals()
	fmt.Fprintf(w, "top-level tests: %d passed, %d failed, %d skipped", top.Pass, top.Fail, top.Skip)
	if top.NoResult > 0 {
		fmt.Fprintf(w, ", %d without result", top.NoResult)
	}
	fmt.Fprintf(w, "\nsubtests:        %d passed, %d failed, %d skipped", sub.Pass, sub.Fail, sub.Skip)
	if sub.NoResult > 0 {
		fmt.Fprintf(w, ", %d without result", sub.NoResult)
	}
	fmt.Fprintln(w)
	for _, p := range run.Packages {
		if p.Result == Fail || p.Result == NoResult {
			fmt.Fprintf(w, "package %s: %s\n", p.Result, p.Name)
		}
	}
}

// WriteFailures writes the captured output of every failed or unfinished test and of every
// failed package (a build error, say), after any lines that were not test events.
func WriteFailures(w io.Writer, run *Run) error {
	bw := bufio.NewWriter(w)
	if hasText(run.Other) {
		fmt.Fprintln(bw, "=== not test events")
		for _, l := range run.Other {
			bw.WriteString(l)
		}
		fmt.Fprintln(bw)
	}
	for _, p := range run.Packages {
		if p.Result == Pass || p.Result == Skip || !hasText(p.Output) {
			continue
		}
		fmt.Fprintf(bw, "=== package %s %s\n", p.Result, p.Name)
		for _, l := range p.Output {
			bw.WriteString(l)
		}
		fmt.Fprintln(bw)
	}
	for _, t := range run.Tests {
		if t.Result != Fail && t.Result != NoResult {
			continue
		}
		fmt.Fprintf(bw, "=== %s %s %s\n", t.Result, t.Package, t.Name)
		for _, l := range t.Output {
			bw.WriteString(l)
		}
		fmt.Fprintln(bw)
	}
	return bw.Flush()
}

func main() {
	code, err := run(os.Args[1:], os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "complement-summary:", err)
	}
	os.Exit(code)
}

// errUsage is returned for bad arguments; the flag package has already explained them.
var errUsage = errors.New("bad arguments")

func run(args []string, stdin io.Reader, stdout io.Writer) (int, error) {
	fs := flag.NewFlagSet("complement-summary", flag.ContinueOnError)
	out := fs.String("o", "", "write the summary to this `file` instead of standard output")
	failures := fs.String("failures", "", "write the output of failed tests to this `file`")
	progress := fs.Bool("progress", false, "print top-level test and package results as they arrive")
	if err := fs.Parse(args); err != nil {
		return 2, errUsage
	}
	in := stdin
	switch fs.NArg() {
	case 0:
	case 1:
		f, err := os.Open(fs.Arg(0))
		if err != nil {
			return 2, err
		}
		defer f.Close()
		in = f
	default:
		fs.Usage()
		return 2, errUsage
	}
	var pw io.Writer
	if *progress {
		pw = stdout
	}
	res, err := Parse(in, pw)
	if err != nil {
		return 2, err
	}
	if *out == "" {
		if err := WriteSummary(stdout, res); err != nil {
			return 2, fmt.Errorf("writing summary: %w", err)
		}
	} else {
		if err := writeFile(*out, func(w io.Writer) error { return WriteSummary(w, res) }); err != nil {
			return 2, err
		}
		WriteTotals(stdout, res)
	}
	if *failures != "" {
		if err := writeFile(*failures, func(w io.Writer) error { return WriteFailures(w, res) }); err != nil {
			return 2, err
		}
	}
	if res.Failed() {
		return 1, nil
	}
	return 0, nil
}

func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
