package config

import (
	"errors"
	"io/fs"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// problems returns the formatted problems of an *Errors, or fails the test.
func problems(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		return nil
	}
	var errs *Errors
	if !errors.As(err, &errs) {
		t.Fatalf("got error %T %q; want *Errors", err, err)
	}
	out := make([]string, len(errs.Problems))
	for i, p := range errs.Problems {
		out[i] = p.String()
	}
	return out
}

// problemPaths returns the paths of an *Errors' problems, or fails the test.
func problemPaths(t *testing.T, err error) []string {
	t.Helper()
	var errs *Errors
	if err == nil {
		return nil
	}
	if !errors.As(err, &errs) {
		t.Fatalf("got error %T %q; want *Errors", err, err)
	}
	var out []string
	for _, p := range errs.Problems {
		out = append(out, p.Path)
	}
	return out
}

func warningPaths(ws []Warning) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.Path)
	}
	return out
}

// bare returns c without its origin, for comparing values only.
func bare(c *Config) Config {
	b := *c
	b.origin = origin{}
	return b
}

// minimal is the smallest file that loads without warnings.
const minimal = "client_api:\n  registration_disabled: false\n"

func TestSampleLoadsCleanly(t *testing.T) {
	c, warnings, err := Load(filepath.Join("..", "..", "dendrite.yaml"))
	if err != nil {
		t.Fatalf("Load(dendrite.yaml): got error\n%v\nwant none", err)
	}
	if len(warnings) != 0 {
		t.Errorf("Load(dendrite.yaml): got warnings %v; want none", warnings)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate(dendrite.yaml): got\n%v\nwant nil", err)
	}
	// The sample documents the defaults: every value in it is the default.
	if got, want := bare(c), bare(Default()); !reflect.DeepEqual(got, want) {
		t.Errorf("dendrite.yaml differs from Default():\ngot  %+v\nwant %+v", got, want)
	}
}

func TestDefaultValidates(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Errorf("Default().Validate(): got\n%v\nwant nil", err)
	}
}

func TestDefaults(t *testing.T) {
	c := Default()
	tests := []struct {
		name      string
		got, want any
	}{
		{"version", c.Version, 2},
		{"server_name", c.Global.ServerName, "localhost"},
		{"data_dir", c.Myelin.DataDir, "./myelin-data"},
		{"database", c.Global.Database.ConnectionString, "file:./myelin-data/myelin.db"},
		{"private_key", c.Global.PrivateKeyPath, "./myelin-data/matrix_key.pem"},
		{"base_path", c.MediaAPI.BasePath, "./myelin-data/media"},
		{"key_validity_period", c.Global.KeyValidityPeriod, 168 * time.Hour},
		{"listen", c.Myelin.Listen, "127.0.0.1:8008"},
		{"listen_tls", c.Myelin.ListenTLS, ""},
		{"registration_disabled", c.ClientAPI.RegistrationDisabled, false},
		{"rate_limiting", c.ClientAPI.RateLimiting, RateLimiting{Enabled: true, Threshold: 20, CooloffMS: 500}},
		{"bcrypt_cost", c.UserAPI.BCryptCost, 10},
		{"max_file_size_bytes", c.MediaAPI.MaxFileSizeBytes, int64(10485760)},
		{"max_request_bytes", c.Myelin.MaxRequestBytes, int64(1 << 20)},
		{"default_room_version", c.RoomServer.DefaultRoomVersion, "11"},
		{"logging", c.Logging, []Logging{{Type: "std", Level: "info"}}},
		{"thumbnail_sizes", c.MediaAPI.ThumbnailSizes, []ThumbnailSize{
			{Width: 32, Height: 32, Method: "crop"},
			{Width: 96, Height: 96, Method: "crop"},
			{Width: 640, Height: 480, Method: "scale"},
		}},
		{"is_sqlite", c.IsSQLite(), true},
		{"sqlite_path", c.SQLitePath(), "./myelin-data/myelin.db"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !reflect.DeepEqual(tt.got, tt.want) {
				t.Errorf("got %#v; want %#v", tt.got, tt.want)
			}
		})
	}
}

func TestDendriteSampleLoadsWithWarnings(t *testing.T) {
	c, warnings, err := Load(filepath.Join("testdata", "dendrite-sample.yaml"))
	if err != nil {
		t.Fatalf("Load(dendrite-sample.yaml): got error\n%v\nwant none", err)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate(dendrite-sample.yaml): got\n%v\nwant nil", err)
	}
	got := warningPaths(warnings)
	for _, want := range []string{
		"global.cache.max_size_estimated",
		"global.jetstream.storage_path",
		"global.trusted_third_party_id_servers",
		"client_api.turn.turn_uris",
		"sync_api.search.enabled",
		"mscs.mscs",
		"tracing.jaeger",
	} {
		if !slices.Contains(got, want) {
			t.Errorf("warnings: got %v; want one for %s", got, want)
		}
	}
	for _, w := range warnings {
		if w.Line == 0 || w.Message == "" {
			t.Errorf("warning %+v: want a line and a message", w)
		}
	}
	// Values from the file, not the defaults.
	if got, want := c.Global.Database.ConnectionString, "postgresql://username:password@hostname/dendrite?sslmode=disable"; got != want {
		t.Errorf("connection_string: got %q; want %q", got, want)
	}
	if got, want := c.Global.Database.MaxIdleConns, 5; got != want {
		t.Errorf("max_idle_conns: got %d; want %d", got, want)
	}
	if got, want := c.Global.PrivateKeyPath, "matrix_key.pem"; got != want {
		t.Errorf("private_key: got %q; want %q (relative paths are kept as written)", got, want)
	}
	if got, want := c.MediaAPI.BasePath, "./media_store"; got != want {
		t.Errorf("base_path: got %q; want %q", got, want)
	}
	if got, want := c.ClientAPI.RegistrationDisabled, true; got != want {
		t.Errorf("registration_disabled: got %v; want %v", got, want)
	}
	if got, want := len(c.FederationAPI.KeyPerspectives), 1; got != want {
		t.Errorf("key_perspectives: got %d; want %d", got, want)
	}
	if got, want := c.Logging[1].Params["path"], any("./logs"); got != want {
		t.Errorf("logging[1].params.path: got %v; want %v", got, want)
	}
}

func TestParseProblems(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{
			name: "typo with hint",
			yaml: "global:\n  sever_name: example.com\n",
			want: []string{"global.sever_name: unknown key (did you mean server_name?) (line 2)"},
		},
		{
			name: "unknown key without hint",
			yaml: "global:\n  colour: blue\n",
			want: []string{"global.colour: unknown key (line 2)"},
		},
		{
			name: "unknown top-level section",
			yaml: "clientapi:\n  registration_disabled: true\n",
			want: []string{"clientapi: unknown key (did you mean client_api?) (line 1)"},
		},
		{
			name: "typo inside a Dendrite-only section",
			yaml: "sync_api:\n  search:\n    enabld: true\n",
			want: []string{"sync_api.search.enabld: unknown key (did you mean enabled?) (line 3)"},
		},
		{
			name: "typo of a Dendrite-only key",
			yaml: "global:\n  jetstrem:\n    addresses: []\n",
			want: []string{"global.jetstrem: unknown key (did you mean jetstream?) (line 2)"},
		},
		{
			name: "typo in a list element",
			yaml: "media_api:\n  thumbnail_sizes:\n    - width: 1\n      height: 1\n      methd: crop\n",
			want: []string{"media_api.thumbnail_sizes[0].methd: unknown key (did you mean method?) (line 5)"},
		},
		{
			name: "string for an integer",
			yaml: "user_api:\n  bcrypt_cost: high\n",
			want: []string{`user_api.bcrypt_cost: want an integer, got string "high" (line 2)`},
		},
		{
			name: "integer for a duration",
			yaml: "global:\n  key_validity_period: 604800\n",
			want: []string{`global.key_validity_period: want a duration such as "168h" or "30s", got integer "604800" (line 2)`},
		},
		{
			name: "mapping for a string",
			yaml: "global:\n  server_name:\n    name: x\n",
			want: []string{"global.server_name: want a string, got a mapping (line 3)"},
		},
		{
			name: "scalar for a section",
			yaml: "global: example.com\n",
			want: []string{`global: want a mapping, got string "example.com" (line 1)`},
		},
		{
			name: "scalar for a list",
			yaml: "federation_api:\n  deny_networks: 10.0.0.0/8\n",
			want: []string{`federation_api.deny_networks: want a list, got string "10.0.0.0/8" (line 2)`},
		},
		{
			name: "wrong type in a list element",
			yaml: "federation_api:\n  allow_networks:\n    - 0.0.0.0/0\n    - [a]\n",
			want: []string{"federation_api.allow_networks[1]: want a string, got a list (line 4)"},
		},
		{
			name: "negative unsigned",
			yaml: "federation_api:\n  send_max_retries: -1\n",
			want: []string{`federation_api.send_max_retries: want a non-negative integer, got integer "-1" (line 2)`},
		},
		{
			name: "duplicate key",
			yaml: "global:\n  server_name: a\n  server_name: b\n",
			want: []string{"global.server_name: key given twice (first on line 2) (line 3)"},
		},
		{
			name: "invalid YAML",
			yaml: "global:\n  server_name: [a\n",
			want: []string{"invalid YAML: line 1: did not find expected ',' or ']'"},
		},
		{
			name: "not a mapping",
			yaml: "- a\n- b\n",
			want: []string{"want a mapping of sections (version, global, …), got a list (line 1)"},
		},
		{
			name: "alias cycle",
			yaml: "global: &g\n  <<: *g\n",
			want: []string{"global: an alias refers to a node that contains it (line 1)"},
		},
		{
			name: "two documents",
			yaml: "version: 2\n---\nversion: 2\n",
			want: []string{"the file holds more than one YAML document (line 2)"},
		},
		{
			name: "every problem at once",
			yaml: "version: two\n" +
				"global:\n  sever_name: x\n  key_validity_period: soon\n" +
				"client_api:\n  registration_disabled: maybe\n" +
				"sync_api:\n  search:\n    enabled: true\n" + // a warning, not a problem
				"logging:\n  - type: std\n    levl: info\n" +
				"frobnicate: 1\n",
			want: []string{
				`version: want an integer, got string "two" (line 1)`,
				"global.sever_name: unknown key (did you mean server_name?) (line 3)",
				`global.key_validity_period: want a duration such as "168h" or "30s", got string "soon" (line 4)`,
				`client_api.registration_disabled: want true or false, got string "maybe" (line 6)`,
				"logging[0].levl: unknown key (did you mean level?) (line 12)",
				"frobnicate: unknown key (line 13)",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _, err := Parse([]byte(tt.yaml))
			if got := problems(t, err); !slices.Equal(got, tt.want) {
				t.Errorf("got problems\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if c != nil {
				t.Errorf("got a config alongside problems; want nil")
			}
		})
	}
}

func TestParseWarnings(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{
			name: "nothing unused",
			yaml: minimal,
			want: nil,
		},
		{
			name: "Dendrite-only key",
			yaml: minimal + "sync_api:\n  search:\n    enabled: true\n",
			want: []string{"sync_api.search.enabled"},
		},
		{
			name: "Dendrite-only section given as null",
			yaml: minimal + "global:\n  cache:\n",
			want: []string{"global.cache"},
		},
		{
			name: "opaque Dendrite section",
			yaml: minimal + "tracing:\n  enabled: false\n  jaeger:\n    serviceName: x\n    anything: [1, 2]\n",
			want: []string{"tracing.enabled", "tracing.jaeger"},
		},
		{
			name: "old polylith listeners",
			yaml: minimal + "sync_api:\n  internal_api:\n    listen: http://localhost:7773\n  external_api:\n    listen: http://[::]:8073\n",
			want: []string{"sync_api.internal_api", "sync_api.external_api"},
		},
		{
			name: "obsolete Dendrite section",
			yaml: minimal + "global:\n  kafka:\n    use_naffka: true\nsigning_key_server:\n  prefer_direct_fetch: false\n",
			want: []string{"global.kafka", "signing_key_server"},
		},
		{
			name: "per-component databases without a global one",
			yaml: minimal + "room_server:\n  database:\n    connection_string: file:roomserver.db\nuser_api:\n  account_database:\n    connection_string: file:userapi.db\n",
			want: []string{"room_server.database", "user_api.account_database", "global.database.connection_string"},
		},
		{
			name: "per-component databases beside a global one",
			yaml: minimal + "global:\n  database:\n    connection_string: file:all.db\nroom_server:\n  database:\n    connection_string: file:roomserver.db\n",
			want: []string{"room_server.database"},
		},
		{
			name: "application service keys Myelin does not use",
			yaml: minimal + "app_service_api:\n  disable_tls_validation: false\n  legacy_auth: false\n  legacy_paths: false\n  config_files: [a.yaml]\n",
			want: []string{"app_service_api.disable_tls_validation", "app_service_api.legacy_auth", "app_service_api.legacy_paths"},
		},
		{
			name: "registration left unset",
			yaml: "global:\n  server_name: example.com\n",
			want: []string{"client_api.registration_disabled"},
		},
		{
			name: "empty file",
			yaml: "",
			want: []string{"client_api.registration_disabled"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, warnings, err := Parse([]byte(tt.yaml))
			if err != nil {
				t.Fatalf("got error\n%v\nwant none", err)
			}
			if got := warningPaths(warnings); !slices.Equal(got, tt.want) {
				t.Errorf("got warnings at %v; want %v", got, tt.want)
			}
		})
	}
}

func TestWarningMessage(t *testing.T) {
	_, warnings, err := Parse([]byte(minimal + "sync_api:\n  search:\n    enabled: true\n"))
	if err != nil {
		t.Fatalf("got error %v; want none", err)
	}
	want := []Warning{{Path: "sync_api.search.enabled", Line: 5, Message: "not used by Myelin yet"}}
	if !slices.Equal(warnings, want) {
		t.Errorf("got %+v; want %+v", warnings, want)
	}
	if got, want := warnings[0].String(), "sync_api.search.enabled: not used by Myelin yet (line 5)"; got != want {
		t.Errorf("String(): got %q; want %q", got, want)
	}
}

func TestParseAppliesOverDefaults(t *testing.T) {
	c, _, err := Parse([]byte(minimal +
		"global:\n  server_name: example.com\n" +
		"  metrics:\n    enabled: true\n" + // basic_auth stays default
		"user_api:\n  bcrypt_cost:\n" + // null keeps the default
		"  auto_join_rooms: ['#a:example.com']\n" +
		"media_api:\n  thumbnail_sizes:\n    - {width: 1, height: 2, method: scale}\n" + // replaces the list
		"federation_api:\n  deny_networks:\n" + // null empties the list
		"app_service_api:\n  config_files: [irc.yaml, /etc/slack.yaml]\n" +
		"logging:\n  - type: file\n    level: debug\n    params: {path: ./logs, extra: 1}\n"))
	if err != nil {
		t.Fatalf("got error\n%v\nwant none", err)
	}
	want := Default()
	want.Global.ServerName = "example.com"
	want.Global.Metrics.Enabled = true
	want.UserAPI.AutoJoinRooms = []string{"#a:example.com"}
	want.MediaAPI.ThumbnailSizes = []ThumbnailSize{{Width: 1, Height: 2, Method: "scale"}}
	want.FederationAPI.DenyNetworks = nil
	want.AppServiceAPI.ConfigFiles = []string{"irc.yaml", "/etc/slack.yaml"}
	want.Logging = []Logging{{Type: "file", Level: "debug", Params: map[string]any{"path": "./logs", "extra": 1}}}
	if got, want := bare(c), bare(want); !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

func TestParseAnchorsAndMerges(t *testing.T) {
	c, _, err := Parse([]byte(minimal +
		"global:\n  server_name: &name example.com\n  well_known_server_name: *name\n" +
		"  database:\n    <<: {connection_string: 'postgres://h/db', max_open_conns: 7}\n    max_open_conns: 8\n"))
	if err != nil {
		t.Fatalf("got error\n%v\nwant none", err)
	}
	tests := []struct {
		name      string
		got, want any
	}{
		{"alias", c.Global.WellKnownServerName, "example.com"},
		{"merged", c.Global.Database.ConnectionString, "postgres://h/db"},
		{"explicit beats merged", c.Global.Database.MaxOpenConns, 8},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %v; want %v", tt.name, tt.got, tt.want)
		}
	}
}

func TestDataDir(t *testing.T) {
	tests := []struct {
		name                       string
		yaml                       string
		env                        map[string]string
		wantDB, wantKey, wantMedia string
		wantDataDir                string
	}{
		{
			name:        "defaults",
			yaml:        minimal,
			wantDataDir: "./myelin-data",
			wantDB:      "file:./myelin-data/myelin.db",
			wantKey:     "./myelin-data/matrix_key.pem",
			wantMedia:   "./myelin-data/media",
		},
		{
			name:        "data_dir in the file",
			yaml:        minimal + "myelin:\n  data_dir: /var/lib/myelin\n",
			wantDataDir: "/var/lib/myelin",
			wantDB:      "file:/var/lib/myelin/myelin.db",
			wantKey:     "/var/lib/myelin/matrix_key.pem",
			wantMedia:   "/var/lib/myelin/media",
		},
		{
			name:        "data_dir and an explicit key in the file",
			yaml:        minimal + "myelin:\n  data_dir: /var/lib/myelin/\nglobal:\n  private_key: /etc/myelin/key.pem\n",
			wantDataDir: "/var/lib/myelin/",
			wantDB:      "file:/var/lib/myelin/myelin.db",
			wantKey:     "/etc/myelin/key.pem",
			wantMedia:   "/var/lib/myelin/media",
		},
		{
			name:        "MYELIN_DATA_DIR moves only what the file did not set",
			yaml:        minimal + "myelin:\n  data_dir: /var/lib/myelin\nmedia_api:\n  base_path: /srv/media\n",
			env:         map[string]string{"MYELIN_DATA_DIR": "/data"},
			wantDataDir: "/data",
			wantDB:      "file:/data/myelin.db",
			wantKey:     "/data/matrix_key.pem",
			wantMedia:   "/srv/media",
		},
		{
			name:        "MYELIN_DATABASE wins over MYELIN_DATA_DIR",
			yaml:        minimal,
			env:         map[string]string{"MYELIN_DATA_DIR": "/data", "MYELIN_DATABASE": "postgres://h/db"},
			wantDataDir: "/data",
			wantDB:      "postgres://h/db",
			wantKey:     "/data/matrix_key.pem",
			wantMedia:   "/data/media",
		},
		{
			name:        "a null path keeps following data_dir",
			yaml:        minimal + "global:\n  private_key:\nmyelin:\n  data_dir: d\n",
			wantDataDir: "d",
			wantDB:      "file:d/myelin.db",
			wantKey:     "d/matrix_key.pem",
			wantMedia:   "d/media",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _, err := Parse([]byte(tt.yaml))
			if err != nil {
				t.Fatalf("got error\n%v\nwant none", err)
			}
			c.ApplyEnv(func(k string) string { return tt.env[k] })
			for _, f := range []struct{ name, got, want string }{
				{"data_dir", c.Myelin.DataDir, tt.wantDataDir},
				{"connection_string", c.Global.Database.ConnectionString, tt.wantDB},
				{"private_key", c.Global.PrivateKeyPath, tt.wantKey},
				{"base_path", c.MediaAPI.BasePath, tt.wantMedia},
			} {
				if f.got != f.want {
					t.Errorf("%s: got %q; want %q", f.name, f.got, f.want)
				}
			}
		})
	}
}

func TestApplyEnv(t *testing.T) {
	file := minimal + "global:\n  server_name: file.example\n  database:\n    connection_string: postgres://file/db\nmyelin:\n  listen: 0.0.0.0:8008\n"
	tests := []struct {
		name             string
		env              map[string]string
		wantName, wantDB string
		wantListen       string
	}{
		{
			name:       "no environment",
			wantName:   "file.example",
			wantDB:     "postgres://file/db",
			wantListen: "0.0.0.0:8008",
		},
		{
			name:       "empty values change nothing",
			env:        map[string]string{"MYELIN_SERVER_NAME": "", "MYELIN_DATABASE": "", "MYELIN_LISTEN": ""},
			wantName:   "file.example",
			wantDB:     "postgres://file/db",
			wantListen: "0.0.0.0:8008",
		},
		{
			name: "environment wins",
			env: map[string]string{
				"MYELIN_SERVER_NAME": "env.example",
				"MYELIN_DATABASE":    "file:env.db",
				"MYELIN_LISTEN":      ":9000",
				"MYELIN_DATA_DIR":    "/ignored/for/database",
			},
			wantName:   "env.example",
			wantDB:     "file:env.db",
			wantListen: ":9000",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _, err := Parse([]byte(file))
			if err != nil {
				t.Fatalf("got error\n%v\nwant none", err)
			}
			c.ApplyEnv(func(k string) string { return tt.env[k] })
			for _, f := range []struct{ name, got, want string }{
				{"server_name", c.Global.ServerName, tt.wantName},
				{"connection_string", c.Global.Database.ConnectionString, tt.wantDB},
				{"listen", c.Myelin.Listen, tt.wantListen},
			} {
				if f.got != f.want {
					t.Errorf("%s: got %q; want %q", f.name, f.got, f.want)
				}
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(c *Config)
		want   []string // problem paths
	}{
		{"defaults", func(c *Config) {}, nil},
		{"version", func(c *Config) { c.Version = 1 }, []string{"version"}},
		{"empty server name", func(c *Config) { c.Global.ServerName = "" }, []string{"global.server_name"}},
		{"bad server name", func(c *Config) { c.Global.ServerName = "https://example.com" }, []string{"global.server_name"}},
		{"server name with port", func(c *Config) { c.Global.ServerName = "example.com:8448" }, nil},
		{"empty private key", func(c *Config) { c.Global.PrivateKeyPath = "" }, []string{"global.private_key"}},
		{"old key without key_id", func(c *Config) {
			c.Global.OldPrivateKeys = []OldKey{{PrivateKeyPath: "old.pem"}, {PublicKey: "abc"}}
		}, []string{"global.old_private_keys[1]"}},
		{"zero key validity", func(c *Config) { c.Global.KeyValidityPeriod = 0 }, []string{"global.key_validity_period"}},
		{"empty database", func(c *Config) { c.Global.Database.ConnectionString = "" }, []string{"global.database.connection_string"}},
		{"key=value database", func(c *Config) {
			c.Global.Database.ConnectionString = "host=localhost user=myelin"
		}, []string{"global.database.connection_string"}},
		{"file: without a path", func(c *Config) { c.Global.Database.ConnectionString = "file:?mode=memory" }, []string{"global.database.connection_string"}},
		{"postgres database", func(c *Config) { c.Global.Database.ConnectionString = "postgres://u:p@h/db" }, nil},
		{"postgresql database", func(c *Config) { c.Global.Database.ConnectionString = "postgresql://u:p@h/db" }, nil},
		{"well-known client without scheme", func(c *Config) {
			c.Global.WellKnownClientName = "matrix.example.com"
		}, []string{"global.well_known_client_name"}},
		{"empty application service path", func(c *Config) {
			c.AppServiceAPI.ConfigFiles = []string{"irc.yaml", " "}
		}, []string{"app_service_api.config_files[1]"}},
		{"zero rate limit threshold", func(c *Config) { c.ClientAPI.RateLimiting.Threshold = 0 }, []string{"client_api.rate_limiting.threshold"}},
		{"zero rate limit cooloff", func(c *Config) { c.ClientAPI.RateLimiting.CooloffMS = 0 }, []string{"client_api.rate_limiting.cooloff_ms"}},
		{"zero threshold with rate limiting off", func(c *Config) {
			c.ClientAPI.RateLimiting = RateLimiting{Enabled: false}
		}, nil},
		{"bad CIDR", func(c *Config) { c.FederationAPI.DenyNetworks = []string{"10.0.0.0/8", "10.0.0.0"} }, []string{"federation_api.deny_networks[1]"}},
		{"bad allow CIDR", func(c *Config) { c.FederationAPI.AllowNetworks = []string{"everything"} }, []string{"federation_api.allow_networks[0]"}},
		{"empty media path", func(c *Config) { c.MediaAPI.BasePath = "" }, []string{"media_api.base_path"}},
		{"negative file size", func(c *Config) { c.MediaAPI.MaxFileSizeBytes = -1 }, []string{"media_api.max_file_size_bytes"}},
		{"negative thumbnail generators", func(c *Config) { c.MediaAPI.MaxThumbnailGenerators = -1 }, []string{"media_api.max_thumbnail_generators"}},
		{"thumbnail method", func(c *Config) { c.MediaAPI.ThumbnailSizes[1].Method = "stretch" }, []string{"media_api.thumbnail_sizes[1].method"}},
		{"thumbnail size", func(c *Config) { c.MediaAPI.ThumbnailSizes[0].Width = 0 }, []string{"media_api.thumbnail_sizes[0].width"}},
		{"bcrypt too low", func(c *Config) { c.UserAPI.BCryptCost = 3 }, []string{"user_api.bcrypt_cost"}},
		{"bcrypt too high", func(c *Config) { c.UserAPI.BCryptCost = 32 }, []string{"user_api.bcrypt_cost"}},
		{"bcrypt bounds", func(c *Config) { c.UserAPI.BCryptCost = 4 }, nil},
		{"negative openid lifetime", func(c *Config) { c.UserAPI.OpenIDTokenLifetimeMS = -1 }, []string{"user_api.openid_token_lifetime_ms"}},
		{"room version 13", func(c *Config) { c.RoomServer.DefaultRoomVersion = "13" }, []string{"room_server.default_room_version"}},
		{"room version 01", func(c *Config) { c.RoomServer.DefaultRoomVersion = "01" }, []string{"room_server.default_room_version"}},
		{"room version 1", func(c *Config) { c.RoomServer.DefaultRoomVersion = "1" }, nil},
		{"room version 12", func(c *Config) { c.RoomServer.DefaultRoomVersion = "12" }, nil},
		{"logging level", func(c *Config) { c.Logging[0].Level = "verbose" }, []string{"logging[0].level"}},
		{"logging type", func(c *Config) { c.Logging[0].Type = "syslog" }, []string{"logging[0].type"}},
		{"file logging without path", func(c *Config) {
			c.Logging = append(c.Logging, Logging{Type: "file", Level: "warn"})
		}, []string{"logging[1].params.path"}},
		{"file logging with path", func(c *Config) {
			c.Logging = []Logging{{Type: "file", Level: "trace", Params: map[string]any{"path": "./logs"}}}
		}, nil},
		{"no listener", func(c *Config) { c.Myelin.Listen = "" }, []string{"myelin.listen"}},
		{"bad listener", func(c *Config) { c.Myelin.Listen = "8008" }, []string{"myelin.listen"}},
		{"TLS without certificate", func(c *Config) { c.Myelin.ListenTLS = ":8448" }, []string{"myelin.tls_cert", "myelin.tls_key"}},
		{"TLS only", func(c *Config) {
			c.Myelin.Listen, c.Myelin.ListenTLS, c.Myelin.TLSCert, c.Myelin.TLSKey = "", ":8448", "c.pem", "k.pem"
		}, nil},
		{"zero request size", func(c *Config) { c.Myelin.MaxRequestBytes = 0 }, []string{"myelin.max_request_bytes"}},
		{"negative token lifetime", func(c *Config) { c.Myelin.AccessTokenLifetime = -time.Second }, []string{"myelin.access_token_lifetime"}},
		{"every problem at once", func(c *Config) {
			c.Version = 3
			c.Global.ServerName = "bad name"
			c.Global.Database.ConnectionString = "mysql://x"
			c.UserAPI.BCryptCost = 99
			c.RoomServer.DefaultRoomVersion = "0"
			c.Logging[0].Level = "loud"
		}, []string{
			"version",
			"global.server_name",
			"global.database.connection_string",
			"user_api.bcrypt_cost",
			"room_server.default_room_version",
			"logging[0].level",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.change(c)
			if got := problemPaths(t, c.Validate()); !slices.Equal(got, tt.want) {
				t.Errorf("got problems at %v; want %v", got, tt.want)
			}
		})
	}
}

func TestValidateDoesNotEchoPasswords(t *testing.T) {
	c := Default()
	c.Global.Database.ConnectionString = "mysql://user:hunter2@host/db"
	err := c.Validate()
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("got %v; want an error that does not contain the password", err)
	}
}

func TestValidateLocatesProblems(t *testing.T) {
	c, _, err := Parse([]byte(minimal + "user_api:\n  bcrypt_cost: 2\nglobal:\n  server_name: ok.example\n"))
	if err != nil {
		t.Fatalf("got error\n%v\nwant none", err)
	}
	c.ApplyEnv(func(k string) string {
		return map[string]string{"MYELIN_SERVER_NAME": "not valid"}[k]
	})
	want := []string{
		`global.server_name: "not valid" is not a valid server name: the hostname may hold only letters, digits, "-" and ".", not ' ' (from MYELIN_SERVER_NAME)`,
		"user_api.bcrypt_cost: must be between 4 and 31, got 2 (line 4)",
	}
	if got := problems(t, c.Validate()); !slices.Equal(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestCheckServerName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"localhost", true},
		{"example.com", true},
		{"example.com:8448", true},
		{"matrix-1.Example.ORG", true},
		{"1.2.3.4", true},
		{"1.2.3.4:1234", true},
		{"[1234:5678::abcd]", true},
		{"[1234:5678::abcd]:5678", true},
		{"", false},
		{":8448", false},
		{"example.com:", false},
		{"example.com:123456", false},
		{"example.com:65536", false},
		{"example.com:http", false},
		{"exa mple.com", false},
		{"example_com", false},
		{"https://example.com", false},
		{"[1234:5678::abcd", false},
		{"[1.2.3.4]", false},
		{"[::1]8448", false},
		{"1234:5678::abcd", false},
		{strings.Repeat("a", 256), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkServerName(tt.name)
			if got := err == nil; got != tt.ok {
				t.Errorf("checkServerName(%q): got %v; want ok=%v", tt.name, err, tt.ok)
			}
		})
	}
}

func TestSQLitePath(t *testing.T) {
	tests := []struct {
		conn       string
		wantSQLite bool
		wantPath   string
	}{
		{"file:myelin.db", true, "myelin.db"},
		{"file:./data/myelin.db?_pragma=busy_timeout(5000)", true, "./data/myelin.db"},
		{"file:/var/lib/myelin/myelin.db", true, "/var/lib/myelin/myelin.db"},
		{"file:///var/lib/myelin/myelin.db", true, "/var/lib/myelin/myelin.db"},
		{"file://localhost/var/lib/a.db#frag", true, "/var/lib/a.db"},
		{"file:my%20db.db", true, "my db.db"},
		{"file:", true, ""},
		{"postgres://u:p@h/db", false, ""},
		{"", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.conn, func(t *testing.T) {
			c := Default()
			c.Global.Database.ConnectionString = tt.conn
			if got := c.IsSQLite(); got != tt.wantSQLite {
				t.Errorf("IsSQLite(): got %v; want %v", got, tt.wantSQLite)
			}
			if got := c.SQLitePath(); got != tt.wantPath {
				t.Errorf("SQLitePath(): got %q; want %q", got, tt.wantPath)
			}
		})
	}
}

func TestIsLocalServerName(t *testing.T) {
	g := Global{ServerName: "example.com"}
	tests := []struct {
		name string
		want bool
	}{
		{"example.com", true},
		{"example.com:8448", false},
		{"other.example", false},
		{"", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := g.IsLocalServerName(tt.name); got != tt.want {
				t.Errorf("IsLocalServerName(%q): got %v; want %v", tt.name, got, tt.want)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, _, err := Load(filepath.Join(t.TempDir(), "absent.yaml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("got %v; want an error wrapping fs.ErrNotExist", err)
	}
}

func TestErrorsJoinsProblems(t *testing.T) {
	err := &Errors{Problems: []Problem{
		{Path: "a.b", Line: 3, Message: "unknown key"},
		{Path: "c", Message: "must be set"},
		{Message: "invalid YAML"},
	}}
	if got, want := err.Error(), "a.b: unknown key (line 3)\nc: must be set\ninvalid YAML"; got != want {
		t.Errorf("got %q; want %q", got, want)
	}
}

func TestHint(t *testing.T) {
	names := []string{"server_name", "private_key", "database", "key_validity_period"}
	tests := []struct {
		name, want string
	}{
		{"sever_name", " (did you mean server_name?)"},
		{"Server_Name", " (did you mean server_name?)"},
		{"private_kye", " (did you mean private_key?)"},
		{"databse", " (did you mean database?)"},
		{"key_validity", ""},
		{"xyz", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := hint(tt.name, names); got != tt.want {
				t.Errorf("hint(%q): got %q; want %q", tt.name, got, tt.want)
			}
		})
	}
}
