package main

import (
	"bufio"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// module is this module's path.
const module = "github.com/myelin-chat/myelin"

// layoutRules says which of the module's packages each part of the house may import, as in
// STYLE.md's "who may import whom". A rule covers its package and every package below it; the
// longest matching rule wins. Allowed entries cover their packages and the packages below
// them. Packages no rule covers (cmd/*, tools under bench/, build/, scripts/) may import
// anything; nothing a rule covers may import them.
var layoutRules = []struct {
	pkg     string
	allowed []string
}{
	{"clientapi", []string{"clientapi", "roomserver", "userapi", "appservice", "internal"}},
	{"syncapi", []string{"syncapi", "roomserver", "userapi", "appservice", "internal"}},
	{"federationapi", []string{"federationapi", "roomserver", "userapi", "internal"}},
	{"federationapi/fedclient", []string{"federationapi/fedclient", "internal"}},
	{"mediaapi", []string{"mediaapi", "federationapi/fedclient", "internal"}},
	{"appservice", []string{"appservice", "internal"}},
	{"userapi", []string{"userapi", "internal"}},
	{"roomserver", []string{"roomserver", "internal"}},
	{"internal", []string{"internal"}},
}

// under reports whether pkg is p or a package below it.
func under(pkg, p string) bool { return pkg == p || strings.HasPrefix(pkg, p+"/") }

// importAllowed reports whether module package from (relative to the module) may import
// module package to, and returns the rule's allowed list ("" pkg: no rule applies).
func importAllowed(from, to string) (ok bool, rule string, allowed []string) {
	best := -1
	for i, r := range layoutRules {
		if under(from, r.pkg) && (best < 0 || len(r.pkg) > len(layoutRules[best].pkg)) {
			best = i
		}
	}
	if best < 0 {
		return true, "", nil
	}
	r := layoutRules[best]
	for _, a := range r.allowed {
		if under(to, a) {
			return true, r.pkg, r.allowed
		}
	}
	return false, r.pkg, r.allowed
}

// TestLayoutRules checks that layoutRules encode STYLE.md's arrows.
func TestLayoutRules(t *testing.T) {
	tests := []struct {
		from, to string
		want     bool
	}{
		{"cmd/myelin", "clientapi", true},
		{"cmd/myelinctl", "userapi", true},
		{"clientapi", "roomserver", true},
		{"clientapi", "userapi", true},
		{"clientapi", "appservice", true},
		{"clientapi", "internal/httpx", true},
		{"clientapi/storage", "clientapi", true},
		{"clientapi", "syncapi", false},
		{"clientapi", "federationapi", false},
		{"clientapi", "mediaapi", false},
		{"clientapi", "cmd/myelin", false},
		{"syncapi", "roomserver", true},
		{"syncapi", "clientapi", false},
		{"federationapi", "roomserver", true},
		{"federationapi", "userapi", true},
		{"federationapi", "federationapi/fedclient", true},
		{"federationapi/sender", "federationapi/fedclient", true},
		{"federationapi", "clientapi", false},
		{"federationapi/fedclient", "internal/matrix", true},
		{"federationapi/fedclient", "federationapi", false},
		{"federationapi/fedclient", "roomserver", false},
		{"mediaapi", "federationapi/fedclient", true},
		{"mediaapi", "federationapi", false},
		{"mediaapi", "federationapi/sender", false},
		{"mediaapi", "userapi", false},
		{"userapi", "internal/sqldb", true},
		{"userapi", "roomserver", false},
		{"appservice", "userapi", false},
		{"roomserver", "internal/bus", true},
		{"roomserver/state", "roomserver", true},
		{"roomserver", "userapi", false},
		{"roomserver", "federationapi/fedclient", false},
		{"internal/httpx", "internal/matrix", true},
		{"internal/httpx", "userapi", false},
		{"internal/testkit", "roomserver", false},
		{"internal/sqldb", "scripts/complement-summary", false},
	}
	for _, tc := range tests {
		if got, _, _ := importAllowed(tc.from, tc.to); got != tc.want {
			t.Errorf("importAllowed(%s, %s) = %t; want %t", tc.from, tc.to, got, tc.want)
		}
	}
}

// TestLayout enforces STYLE.md's "who may import whom" on the module's packages (their
// non-test imports), and that only tests import internal/testkit.
func TestLayout(t *testing.T) {
	cmd := exec.Command("go", "list", "-e", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "./...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		from, ok := strings.CutPrefix(f[0], module+"/")
		if !ok {
			continue // the module root, if it ever holds a package
		}
		pkgs = append(pkgs, from)
		for _, imp := range f[1:] {
			to, ok := strings.CutPrefix(imp, module+"/")
			if !ok {
				continue // standard library or third party
			}
			if allowed, rule, list := importAllowed(from, to); !allowed {
				t.Errorf("%s imports %s; under the %s rule it may import only %s", from, to, rule, strings.Join(list, ", "))
			}
			if under(to, "internal/testkit") && !under(from, "internal/testkit") {
				t.Errorf("%s imports internal/testkit; only tests may", from)
			}
		}
	}
	// Guard against a vacuous pass: the packages the rules are about must be seen.
	for _, want := range []string{"clientapi", "syncapi", "userapi", "roomserver", "internal/httpx", "cmd/myelin"} {
		if !slices.Contains(pkgs, want) {
			t.Errorf("go list did not report %s (got %v)", want, pkgs)
		}
	}
}
