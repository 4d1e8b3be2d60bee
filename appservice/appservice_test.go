package appservice

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// complementYAML is a registration as Complement writes it (see its docker builder).
const complementYAML = `id: my_as_id
hs_token: hs-secret
as_token: as-secret
url: 'http://localhost:9000'
sender_localpart: the-bridge-user
rate_limited: false
de.sorunome.msc2409.push_ephemeral: true
push_ephemeral: true
org.matrix.msc3202: false
namespaces:
  users:
    - exclusive: false
      regex: .*
  rooms: []
  aliases: []
`

// ircYAML is the spec's example registration, with a second user namespace.
const ircYAML = `id: "IRC Bridge"
url: "http://127.0.0.1:1234/"
as_token: "30c05ae90a248a4188e620216fa72e349803310ec83e2a77b34fe90be6081f46"
hs_token: "312df522183efd404ec1cd22d2ffa4bbc76a8c1ccf541dd692eef281356bb74e"
sender_localpart: "_irc_bot"
protocols: [irc]
namespaces:
  users:
    - exclusive: true
      regex: "@_irc_bridge_.*"
    - exclusive: false
      regex: "@irc_friend"
  aliases:
    - exclusive: false
      regex: "#_irc_bridge_.*"
  rooms:
    - exclusive: false
      regex: "!logged:example\\.org"
`

func mustParse(t *testing.T, data, file string) *Service {
	t.Helper()
	s, err := Parse([]byte(data), file, "example.org")
	if err != nil {
		t.Fatalf("Parse(%s): %v", file, err)
	}
	return s
}

func TestParse(t *testing.T) {
	c := mustParse(t, complementYAML, "complement.yaml")
	irc := mustParse(t, ircYAML, "irc.yaml")
	tests := []struct {
		name      string
		got, want any
	}{
		{"id", c.ID, "my_as_id"},
		{"sender", c.Sender, "@the-bridge-user:example.org"},
		{"url", c.URL, "http://localhost:9000"},
		{"url trailing slash trimmed", irc.URL, "http://127.0.0.1:1234"},
		{"rate_limited from file", c.RateLimited, false},
		{"rate_limited default", irc.RateLimited, true},
		{"push_ephemeral", c.ReceiveEphemeral, true},
		{"receive_ephemeral default", irc.ReceiveEphemeral, false},
		{"protocols", fmt.Sprint(irc.Protocols), "[irc]"},
		{"user namespaces", len(irc.Users), 2},
		{"file", irc.File, "irc.yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %v; want %v", tt.got, tt.want)
			}
		})
	}
}

func TestParseProblems(t *testing.T) {
	tests := []struct {
		name  string
		yaml  string
		wants []string // substrings of the error
	}{
		{"empty", "{}", []string{"bad.yaml", "id is required", "as_token is required", "hs_token is required",
			"sender_localpart is required", "url is required", "namespaces is required"}},
		{"not YAML", "id: [", []string{"bad.yaml"}},
		{"bad regex", strings.Replace(ircYAML, `"@_irc_bridge_.*"`, `"@_irc_(bridge"`, 1),
			[]string{"bad.yaml", "namespaces.users[0].regex"}},
		{"exclusive missing", strings.Replace(complementYAML, "exclusive: false\n", "", 1),
			[]string{"namespaces.users[0].exclusive must be true or false"}},
		{"regex missing", strings.Replace(complementYAML, "      regex: .*\n", "", 1),
			[]string{"namespaces.users[0].regex is required"}},
		{"bad sender", strings.Replace(complementYAML, "the-bridge-user", "the:bridge", 1),
			[]string{`sender_localpart "the:bridge"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml), "bad.yaml", "example.org")
			if err == nil {
				t.Fatalf("got no error; want one mentioning %q", tt.wants)
			}
			for _, w := range tt.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("got error %q; want it to mention %q", err, w)
				}
			}
		})
	}
}

func TestParseNullURL(t *testing.T) {
	s := mustParse(t, strings.Replace(complementYAML, "url: 'http://localhost:9000'", "url: null", 1), "null.yaml")
	if s.URL != "" {
		t.Errorf("URL: got %q; want empty", s.URL)
	}
}

func TestNamespaces(t *testing.T) {
	irc := mustParse(t, ircYAML, "irc.yaml")
	all := mustParse(t, complementYAML, "complement.yaml")
	tests := []struct {
		name string
		got  bool
		want bool
	}{
		{"sender is interesting", irc.IsInterestedInUser("@_irc_bot:example.org"), true},
		{"sender is exclusive", irc.IsExclusiveUser("@_irc_bot:example.org"), true},
		{"exclusive user", irc.IsExclusiveUser("@_irc_bridge_alice:example.org"), true},
		{"exclusive user is interesting", irc.IsInterestedInUser("@_irc_bridge_alice:example.org"), true},
		{"non-exclusive user", irc.IsInterestedInUser("@irc_friend:example.org"), true},
		{"non-exclusive user is not exclusive", irc.IsExclusiveUser("@irc_friend:example.org"), false},
		{"anchored at the start", irc.IsInterestedInUser("@x_irc_bridge_alice:example.org"), false},
		{"prefix match, as Synapse", irc.IsInterestedInUser("@irc_friendly:example.org"), true},
		{"remote users are never in a namespace", irc.IsInterestedInUser("@_irc_bridge_alice:elsewhere.org"), false},
		{"remote users are never exclusive", irc.IsExclusiveUser("@_irc_bridge_alice:elsewhere.org"), false},
		{"other user", irc.IsInterestedInUser("@alice:example.org"), false},
		{".* covers local users", all.IsInterestedInUser("@alice:example.org"), true},
		{".* is not exclusive", all.IsExclusiveUser("@alice:example.org"), false},
		{".* does not cover remote users", all.IsInterestedInUser("@alice:elsewhere.org"), false},
		{"alias", irc.IsInterestedInAlias("#_irc_bridge_chan:example.org"), true},
		{"alias not exclusive", irc.IsExclusiveAlias("#_irc_bridge_chan:example.org"), false},
		{"room", irc.IsInterestedInRoomID("!logged:example.org"), true},
		{"room escaped dot", irc.IsInterestedInRoomID("!logged:exampleXorg"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %v; want %v", tt.got, tt.want)
			}
		})
	}
}

func TestRegistry(t *testing.T) {
	irc := mustParse(t, ircYAML, "irc.yaml")
	c := mustParse(t, complementYAML, "complement.yaml")
	r, err := New(irc, c)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	tests := []struct {
		name      string
		got, want *Service
	}{
		{"as_token", r.ByToken("as-secret"), c},
		{"irc as_token", r.ByToken(irc.ASToken), irc},
		{"hs_token is not a client token", r.ByToken("hs-secret"), nil},
		{"unknown token", r.ByToken("as-secre"), nil},
		{"empty token", r.ByToken(""), nil},
		{"exclusive owner", r.ExclusiveUserOwner("@_irc_bridge_bob:example.org"), irc},
		{"sender owner", r.ExclusiveUserOwner("@the-bridge-user:example.org"), c},
		{"no exclusive owner", r.ExclusiveUserOwner("@bob:example.org"), nil},
		{"no alias owner", r.ExclusiveAliasOwner("#_irc_bridge_x:example.org"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %v; want %v", tt.got, tt.want)
			}
		})
	}
	if got := len(r.InterestedInUser("@_irc_bridge_bob:example.org")); got != 2 {
		t.Errorf("InterestedInUser: got %d services; want 2 (irc's namespace and complement's .*)", got)
	}
	var none *Registry
	if none.ByToken("as-secret") != nil || none.ExclusiveUserOwner("@a:example.org") != nil || none.Services() != nil {
		t.Errorf("a nil Registry: want no services")
	}
}

func TestRegistryDuplicates(t *testing.T) {
	base := mustParse(t, complementYAML, "a.yaml")
	variant := func(old, new string) *Service {
		return mustParse(t, strings.Replace(complementYAML, old, new, 1), "b.yaml")
	}
	tests := []struct {
		name  string
		other *Service
		want  string
	}{
		{"same id", variant("as_token: as-secret", "as_token: other"), "id must be unique"},
		{"same as_token", variant("id: my_as_id", "id: other"), "as_token must be unique"},
		{"same hs_token", mustParse(t, strings.NewReplacer("id: my_as_id", "id: other", "as_token: as-secret", "as_token: other").Replace(complementYAML), "b.yaml"),
			"hs_token must be unique"},
		{"as_token is another's hs_token", mustParse(t, strings.NewReplacer("id: my_as_id", "id: other", "as_token: as-secret", "as_token: hs-secret",
			"hs_token: hs-secret", "hs_token: other").Replace(complementYAML), "b.yaml"), "as_token is the hs_token"},
		{"one token both ways", mustParse(t, strings.NewReplacer("id: my_as_id", "id: other", "as_token: as-secret", "as_token: same",
			"hs_token: hs-secret", "hs_token: same").Replace(complementYAML), "b.yaml"), "as_token and hs_token must be unique"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(base, tt.other)
			if !errors.Is(err, ErrDuplicate) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "b.yaml") {
				t.Errorf("got %v; want ErrDuplicate mentioning %q and b.yaml", err, tt.want)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")
	if err := os.WriteFile(a, []byte(complementYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b, []byte(ircYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := Load([]string{a, b}, "example.org")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got := len(r.Services()); got != 2 {
		t.Errorf("got %d services; want 2", got)
	}
	if _, err := Load([]string{filepath.Join(dir, "missing.yaml")}, "example.org"); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: got %v; want an error naming it", err)
	}
	if _, err := Load([]string{a, a}, "example.org"); !errors.Is(err, ErrDuplicate) {
		t.Errorf("same file twice: got %v; want ErrDuplicate", err)
	}
}

func TestLogValueHidesTokens(t *testing.T) {
	s := mustParse(t, complementYAML, "a.yaml")
	var b strings.Builder
	slog.New(slog.NewTextHandler(&b, nil)).Info("x", "appservice", s)
	if strings.Contains(b.String(), "secret") || !strings.Contains(b.String(), "my_as_id") {
		t.Errorf("log line %q: want the id and no token", b.String())
	}
}
