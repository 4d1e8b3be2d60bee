package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/internal/config"
	"github.com/myelin-chat/myelin/internal/serverkey"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
	"github.com/myelin-chat/myelin/userapi"
)

// sample is the repository's sample configuration.
const sample = "../../dendrite.yaml"

// clearEnv keeps the MYELIN_* overrides of the developer's shell out of the test.
func clearEnv(t *testing.T) {
	for _, k := range []string{config.EnvServerName, config.EnvDatabase, config.EnvListen, config.EnvDataDir} {
		t.Setenv(k, "")
	}
}

// ctl runs myelinctl with args and returns its stdout, stderr and error.
func ctl(args ...string) (stdout, stderr string, err error) {
	var out, errOut bytes.Buffer
	err = run(args, &out, &errOut)
	return out.String(), errOut.String(), err
}

// writeFile writes content to name in a new temporary folder and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckConfig(t *testing.T) {
	clearEnv(t)
	raw, err := os.ReadFile(sample)
	if err != nil {
		t.Fatalf("reading the sample config: %v", err)
	}
	sampleText := string(raw)
	// edit returns the sample with old replaced by new, failing if old is not in it.
	edit := func(pairs ...string) string {
		s := sampleText
		for i := 0; i+1 < len(pairs); i += 2 {
			if !strings.Contains(s, pairs[i]) {
				t.Fatalf("sample config has no %q to edit", pairs[i])
			}
			s = strings.Replace(s, pairs[i], pairs[i+1], 1)
		}
		return s
	}

	tests := []struct {
		name    string
		content string   // written to a temporary file; "" uses args as they are
		args    []string // after "check-config"; FILE is replaced by the file's path
		wantErr []string // substrings of the error; nil for success
		wantOut []string // substrings of stdout
	}{
		{name: "sample", args: []string{sample}, wantOut: []string{"is valid"}},
		{name: "typo at the top", content: edit("\nglobal:\n", "\ngloabl:\n"), args: []string{"FILE"},
			wantErr: []string{"gloabl", "global"}},
		{name: "typo in global", content: edit("  server_name: localhost", "  sever_name: localhost"), args: []string{"FILE"},
			wantErr: []string{"global.sever_name", "server_name"}},
		{name: "typo deep down", content: edit("    threshold: 20", "    treshold: 20"), args: []string{"FILE"},
			wantErr: []string{"client_api.rate_limiting.treshold"}},
		{name: "every problem at once", content: edit("  server_name: localhost", "  sever_name: localhost",
			"    threshold: 20", "    threshold: lots", "  max_thumbnail_generators: 10", "  max_thumbnail_generatorz: 10"),
			args: []string{"FILE"}, wantErr: []string{"global.sever_name", "client_api.rate_limiting.threshold", "media_api.max_thumbnail_generatorz"}},
		{name: "every invalid value at once", content: edit("  bcrypt_cost: 10", "  bcrypt_cost: 3", `  default_room_version: "11"`, `  default_room_version: "99"`),
			args: []string{"FILE"}, wantErr: []string{"user_api.bcrypt_cost", "room_server.default_room_version"}},
		{name: "bad value", content: edit(`  default_room_version: "11"`, `  default_room_version: "99"`), args: []string{"FILE"},
			wantErr: []string{"room_server.default_room_version"}},
		{name: "wrong type", content: edit("    threshold: 20", "    threshold: lots"), args: []string{"FILE"},
			wantErr: []string{"client_api.rate_limiting.threshold"}},
		{name: "Dendrite key Myelin does not use", content: edit("\nglobal:\n", "\nglobal:\n  jetstream:\n    storage_path: ./\n"),
			args: []string{"FILE"}, wantOut: []string{"global.jetstream", "is valid"}},
		{name: "missing file", args: []string{"/nonexistent/dendrite.yaml"}, wantErr: []string{"/nonexistent/dendrite.yaml"}},
		{name: "missing application service registration", content: edit("  config_files:\n", "  config_files: [/nonexistent/bridge.yaml]\n"),
			args: []string{"FILE"}, wantErr: []string{"/nonexistent/bridge.yaml"}},
		{name: "no file", args: nil, wantErr: []string{"one file"}},
		{name: "two files", args: []string{sample, sample}, wantErr: []string{"one file"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string(nil), tc.args...)
			if tc.content != "" {
				p := writeFile(t, "dendrite.yaml", tc.content)
				for i, a := range args {
					if a == "FILE" {
						args[i] = p
					}
				}
			}
			out, _, err := ctl(append([]string{"check-config"}, args...)...)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("check-config %v: got error %v; want success", args, err)
				}
			} else {
				if err == nil {
					t.Fatalf("check-config %v: got success (%q); want an error mentioning %q", args, out, tc.wantErr)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("check-config %v: got error %q; want it to mention %q", args, err, w)
					}
				}
			}
			for _, w := range tc.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("check-config %v: got output %q; want it to mention %q", args, out, w)
				}
			}
		})
	}
}

func TestGenerateKeys(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()

	t.Run("out", func(t *testing.T) {
		path := filepath.Join(dir, "sub", "matrix_key.pem")
		out, _, err := ctl("generate-keys", "--out", path)
		if err != nil {
			t.Fatalf("generate-keys: %v", err)
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		blk, rest := pem.Decode(raw)
		if blk == nil || blk.Type != "MATRIX PRIVATE KEY" {
			t.Fatalf("got PEM block %+v; want MATRIX PRIVATE KEY", blk)
		}
		if len(bytes.TrimSpace(rest)) != 0 {
			t.Errorf("got %d bytes after the PEM block; want none", len(rest))
		}
		id := blk.Headers["Key-ID"]
		if !strings.HasPrefix(id, "ed25519:") || len(id) <= len("ed25519:") {
			t.Errorf("got Key-ID %q; want ed25519:<id>", id)
		}
		if len(blk.Bytes) != ed25519.SeedSize {
			t.Errorf("got a %d-byte seed; want %d", len(blk.Bytes), ed25519.SeedSize)
		}
		if !strings.Contains(out, id) || !strings.Contains(out, path) {
			t.Errorf("got output %q; want it to name %s and %s", out, id, path)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			t.Errorf("key file mode %v; want no access for group or others", perm)
		}
		// myelin loads its key with serverkey.Load(OrGenerate).
		k, err := serverkey.Load(path)
		if err != nil {
			t.Fatalf("loading the generated key: %v", err)
		}
		if k.ID != id {
			t.Errorf("loaded key ID %q; want %q", k.ID, id)
		}
		if !bytes.Equal(k.Private.Seed(), blk.Bytes) {
			t.Errorf("loaded key differs from the file's seed")
		}
		if k2, created, err := serverkey.LoadOrGenerate(path); err != nil || created || k2.ID != id {
			t.Errorf("LoadOrGenerate: got %q, created %t, %v; want the existing key %s", k2.ID, created, err, id)
		}

		// It refuses to overwrite a key.
		if _, _, err := ctl("generate-keys", "--out", path); err == nil {
			t.Errorf("second generate-keys to %s: got success; want an error", path)
		}
		again, _ := os.ReadFile(path)
		if !bytes.Equal(again, raw) {
			t.Errorf("the existing key was changed")
		}
	})
	t.Run("fresh each time", func(t *testing.T) {
		a, b := filepath.Join(dir, "a.pem"), filepath.Join(dir, "b.pem")
		for _, p := range []string{a, b} {
			if _, _, err := ctl("generate-keys", "--out", p); err != nil {
				t.Fatal(err)
			}
		}
		ka, errA := serverkey.Load(a)
		kb, errB := serverkey.Load(b)
		if errA != nil || errB != nil {
			t.Fatalf("loading: %v, %v", errA, errB)
		}
		if bytes.Equal(ka.Private.Seed(), kb.Private.Seed()) {
			t.Errorf("two generated keys are the same")
		}
	})
	t.Run("config", func(t *testing.T) {
		keyPath := filepath.Join(dir, "from-config.pem")
		cfg := writeFile(t, "dendrite.yaml", fmt.Sprintf(
			"version: 2\nglobal:\n  server_name: hs1.test\n  private_key: %q\nclient_api:\n  registration_disabled: true\nmyelin:\n  data_dir: %q\n",
			keyPath, dir))
		if _, _, err := ctl("generate-keys", "--config", cfg); err != nil {
			t.Fatalf("generate-keys --config: %v", err)
		}
		if _, err := serverkey.Load(keyPath); err != nil {
			t.Errorf("loading the key at the config's private_key: %v", err)
		}
	})
}

func TestCreateAccount(t *testing.T) {
	clearEnv(t)
	for _, b := range testkit.Backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			conn := b.Conn(t)
			cfg := writeFile(t, "dendrite.yaml", fmt.Sprintf(
				"version: 2\nglobal:\n  server_name: hs1.test\n  database:\n    connection_string: %q\n"+
					"client_api:\n  registration_disabled: true\nuser_api:\n  bcrypt_cost: 4\nmyelin:\n  data_dir: %q\n",
				conn, t.TempDir()))

			tests := []struct {
				name    string
				args    []string
				wantErr string // "" for success
				wantOut string
			}{
				{"user", []string{"-u", "alice", "-p", "pw"}, "", "created @alice:hs1.test"},
				{"admin", []string{"-u", "root", "-p", "pw", "--admin"}, "", "created @root:hs1.test"},
				{"taken", []string{"-u", "alice", "-p", "other"}, "already taken", ""},
				{"upper case", []string{"-u", "Bob", "-p", "pw"}, "not a valid localpart", ""},
				{"space", []string{"-u", "bad name", "-p", "pw"}, "not a valid localpart", ""},
				{"full user ID", []string{"-u", "@carl:hs1.test", "-p", "pw"}, "not a valid localpart", ""},
				{"non-ASCII", []string{"-u", "zoë", "-p", "pw"}, "not a valid localpart", ""},
				{"no user", []string{"-p", "pw"}, "required", ""},
				{"no password", []string{"-u", "dan"}, "required", ""},
				{"password over 72 bytes", []string{"-u", "erin", "-p", strings.Repeat("p", 73)}, "72", ""},
			}
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					out, _, err := ctl(append([]string{"create-account", "--config", cfg}, tc.args...)...)
					if tc.wantErr != "" {
						if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
							t.Errorf("create-account %v: got error %v; want one mentioning %q", tc.args, err, tc.wantErr)
						}
						return
					}
					if err != nil {
						t.Fatalf("create-account %v: %v", tc.args, err)
					}
					if !strings.Contains(out, tc.wantOut) {
						t.Errorf("got output %q; want %q", out, tc.wantOut)
					}
				})
			}

			// What was created is what the server will see.
			ctx := context.Background()
			db, err := sqldb.Open(ctx, conn, sqldb.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			users, err := userapi.New(userapi.Config{ServerName: "hs1.test", BCryptCost: 4}, db, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err != nil {
				t.Fatal(err)
			}
			accounts := []struct {
				user, password string
				admin          bool
			}{
				{"@alice:hs1.test", "pw", false},
				{"@root:hs1.test", "pw", true},
			}
			for _, a := range accounts {
				if err := users.CheckPassword(ctx, a.user, a.password); err != nil {
					t.Errorf("CheckPassword(%s): %v; want nil", a.user, err)
				}
				acct, err := users.Account(ctx, a.user)
				if err != nil {
					t.Fatalf("Account(%s): %v", a.user, err)
				}
				if acct.Admin != a.admin {
					t.Errorf("%s admin: got %t; want %t", a.user, acct.Admin, a.admin)
				}
			}
			for _, never := range []string{"@bob:hs1.test", "@dan:hs1.test", "@erin:hs1.test"} {
				if _, err := users.Account(ctx, never); err == nil {
					t.Errorf("account %s exists; want it refused", never)
				}
			}
		})
	}
}

func TestCreateAccountBadConfig(t *testing.T) {
	clearEnv(t)
	cfg := writeFile(t, "dendrite.yaml", "version: 2\nglobal:\n  sever_name: hs1.test\n")
	_, _, err := ctl("create-account", "--config", cfg, "-u", "alice", "-p", "pw")
	if err == nil || !strings.Contains(err.Error(), "global.sever_name") {
		t.Errorf("create-account with a typo in the config: got %v; want an error naming global.sever_name", err)
	}
}

func TestUsage(t *testing.T) {
	tests := []struct {
		args    []string
		wantErr bool
	}{
		{nil, true},
		{[]string{"frobnicate"}, true},
		{[]string{"help"}, false},
		{[]string{"--help"}, false},
	}
	for _, tc := range tests {
		out, errOut, err := ctl(tc.args...)
		if (err != nil) != tc.wantErr {
			t.Errorf("myelinctl %v: got error %v; want error %t", tc.args, err, tc.wantErr)
		}
		if !strings.Contains(out+errOut, "create-account") {
			t.Errorf("myelinctl %v: got output %q; want the usage", tc.args, out+errOut)
		}
	}
}
