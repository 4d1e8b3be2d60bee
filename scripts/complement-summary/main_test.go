package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// testdata/run.jsonl is real `go test -json` output of a throwaway module: package a has passing,
// failing, skipped and nested subtests, package b does not compile, and package c (written by
// hand) has a test that never reports, as after a timeout panic. A non-JSON line leads.

func parseFixture(t *testing.T) *Run {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "run.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	run, err := Parse(f, nil)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return run
}

func TestParse(t *testing.T) {
	run := parseFixture(t)
	results := map[string]Result{}
	for _, tt := range run.Tests {
		results[tt.Name] = tt.Result
	}
	tests := []struct {
		name string
		want Result
	}{
		{"TestPass", Pass},
		{"TestPass/two/deep", Pass},
		{"TestPass/two-x", Pass},
		{"TestMixed", Fail},
		{"TestMixed/parallel/bad", Fail},
		{"TestMixed/parallel/ok", Pass},
		{"TestMixed/parallel/skipped", Skip},
		{"TestSkipped", Skip},
		{"TestHung", NoResult},
	}
	for _, tt := range tests {
		if got := results[tt.name]; got != tt.want {
			t.Errorf("%s: got %q; want %q", tt.name, got, tt.want)
		}
	}
	top, sub := run.Totals()
	if want := (Counts{Pass: 1, Fail: 1, Skip: 1, NoResult: 1}); top != want {
		t.Errorf("got top-level totals %+v; want %+v", top, want)
	}
	if want := (Counts{Pass: 5, Fail: 2, Skip: 1}); sub != want {
		t.Errorf("got subtest totals %+v; want %+v", sub, want)
	}
	if got, want := len(run.Other), 1; got != want {
		t.Errorf("got %d non-event lines; want %d", got, want)
	}
	if !run.Failed() {
		t.Errorf("got Failed() false; want true")
	}
}

func TestFailed(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  bool
	}{
		{"all pass", `{"Action":"pass","Package":"p","Test":"TestA"}
{"Action":"skip","Package":"p","Test":"TestB"}
{"Action":"pass","Package":"p"}`, false},
		{"subtest fails", `{"Action":"fail","Package":"p","Test":"TestA/x"}
{"Action":"pass","Package":"p","Test":"TestA"}
{"Action":"pass","Package":"p"}`, true},
		{"build fails", `{"ImportPath":"p [p.test]","Action":"build-fail"}
{"Action":"fail","Package":"p","FailedBuild":"p [p.test]"}`, true},
		{"package never finishes", `{"Action":"start","Package":"p"}`, true},
		{"empty", ``, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			run, err := Parse(strings.NewReader(tt.input), nil)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got := run.Failed(); got != tt.want {
				t.Errorf("got Failed() %v; want %v", got, tt.want)
			}
		})
	}
}

func TestGolden(t *testing.T) {
	run := parseFixture(t)
	tests := []struct {
		golden string
		write  func(*bytes.Buffer) error
	}{
		{"summary.golden", func(b *bytes.Buffer) error { return WriteSummary(b, run) }},
		{"failures.golden", func(b *bytes.Buffer) error { return WriteFailures(b, run) }},
		{"progress.golden", func(b *bytes.Buffer) error {
			f, err := os.Open(filepath.Join("testdata", "run.jsonl"))
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = Parse(f, b)
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.golden, func(t *testing.T) {
			var got bytes.Buffer
			if err := tt.write(&got); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", tt.golden)
			if *update {
				if err := os.WriteFile(path, got.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Errorf("got:\n%s\nwant:\n%s", got.Bytes(), want)
			}
		})
	}
}

func TestRunExitCodes(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name  string
		args  []string
		stdin string
		want  int
	}{
		{"fixture fails", []string{"-o", filepath.Join(dir, "s.txt"), filepath.Join("testdata", "run.jsonl")}, "", 1},
		{"all pass from stdin", nil, `{"Action":"pass","Package":"p","Test":"TestA"}` + "\n" + `{"Action":"pass","Package":"p"}`, 0},
		{"missing file", []string{filepath.Join(dir, "absent.jsonl")}, "", 2},
		{"two files", []string{"a", "b"}, "", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			got, _ := run(tt.args, strings.NewReader(tt.stdin), &out)
			if got != tt.want {
				t.Errorf("got exit code %d; want %d (output %q)", got, tt.want, out.String())
			}
		})
	}
}
