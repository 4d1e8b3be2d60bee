package clientapi

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/internal/bus"
	"github.com/myelin-chat/myelin/internal/config"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/userapi"
)

// dirServer is the client API over real userapi and roomserver services, for HTTP tests.
type dirServer struct {
	t      *testing.T
	url    string
	tokens map[string]string // localpart → access token
	users  *userapi.Service
}

func newDirServer(t *testing.T, db *sqldb.DB, users ...string) *dirServer {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	cfg := config.Default()
	cfg.Global.ServerName = "test.local"
	cfg.ClientAPI.RateLimiting.Enabled = false
	us, err := userapi.New(userapi.Config{ServerName: "test.local", BCryptCost: 4}, db, bus.NewStream(0), log)
	testkit.Must(t, err, "starting userapi")
	_, priv, err := ed25519.GenerateKey(nil)
	testkit.Must(t, err, "generating key")
	rs, err := roomserver.New(roomserver.Config{ServerName: "test.local", KeyID: "ed25519:test", PrivateKey: priv},
		db, bus.NewStream(0), log)
	testkit.Must(t, err, "starting roomserver")
	router := httpx.NewRouter()
	New(cfg, us, rs, nil, nil, log).Register(router)
	srv := httptest.NewServer(router)
	t.Cleanup(srv.Close)
	d := &dirServer{t: t, url: srv.URL, tokens: map[string]string{}}
	for _, u := range users {
		id, err := us.CreateAccount(ctx, userapi.NewAccount{Localpart: u})
		testkit.Must(t, err, "creating %s", u)
		sess, err := us.StartSession(ctx, userapi.LoginRequest{UserID: id})
		testkit.Must(t, err, "logging in %s", u)
		d.tokens[u] = sess.AccessToken
	}
	return d
}

// do sends a request as user ("" for none) to the v3 path (or an absolute /_matrix path)
// and returns the status and decoded JSON body.
func (d *dirServer) do(user, method, path string, body any) (int, map[string]any) {
	d.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	if !strings.HasPrefix(path, "/_matrix/") {
		path = "/_matrix/client/v3" + path
	}
	req, err := http.NewRequest(method, d.url+path, rd)
	testkit.Must(d.t, err, "building request")
	if user != "" {
		req.Header.Set("Authorization", "Bearer "+d.tokens[user])
	}
	res, err := http.DefaultClient.Do(req)
	testkit.Must(d.t, err, "%s %s", method, path)
	defer res.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(res.Body).Decode(&out)
	return res.StatusCode, out
}

func (d *dirServer) must(user, method, path string, body any) map[string]any {
	d.t.Helper()
	status, out := d.do(user, method, path, body)
	if status != http.StatusOK {
		d.t.Fatalf("%s %s as %s = %d %v; want 200", method, path, user, status, out)
	}
	return out
}

func alias(a string) string { return url.PathEscape(a) }

func TestDirectoryHTTP(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		d := newDirServer(t, db, "alice", "bob", "carol")
		room := d.must("alice", "POST", "/createRoom", map[string]any{
			"visibility": "public", "preset": "public_chat", "room_alias_name": "lobby", "name": "Lobby", "topic": "Wombles",
		})["room_id"].(string)
		private := d.must("alice", "POST", "/createRoom", map[string]any{})["room_id"].(string)

		type check struct {
			name         string
			user, method string
			path         string
			body         any
			status       int
			errcode      string
			want         map[string]any // keys that must have these values
		}
		run := func(checks []check) {
			t.Helper()
			for _, c := range checks {
				status, out := d.do(c.user, c.method, c.path, c.body)
				if status != c.status || (c.errcode != "" && out["errcode"] != c.errcode) {
					t.Errorf("%s: %s %s = %d %v; want %d %s", c.name, c.method, c.path, status, out, c.status, c.errcode)
					continue
				}
				for k, v := range c.want {
					if got, _ := json.Marshal(out[k]); string(got) != mustJSON(v) {
						t.Errorf("%s: %s = %s; want %s", c.name, k, got, mustJSON(v))
					}
				}
			}
		}
		const unicodeAlias = "#老虎Â£я🤨👉ඞ:test.local"
		run([]check{
			{name: "createRoom alias resolves", method: "GET", path: "/directory/room/" + alias("#lobby:test.local"),
				status: 200, want: map[string]any{"room_id": room, "servers": []string{"test.local"}}},
			{name: "createRoom sets the canonical alias", user: "alice", method: "GET",
				path: "/rooms/" + room + "/state/m.room.canonical_alias", status: 200, want: map[string]any{"alias": "#lobby:test.local"}},
			{name: "taken room_alias_name", user: "alice", method: "POST", path: "/createRoom",
				body: map[string]any{"room_alias_name": "lobby"}, status: 400, errcode: "M_ROOM_IN_USE"},
			{name: "bad room_alias_name", user: "alice", method: "POST", path: "/createRoom",
				body: map[string]any{"room_alias_name": "a b"}, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "unicode alias", user: "alice", method: "PUT", path: "/directory/room/" + alias(unicodeAlias),
				body: map[string]string{"room_id": room}, status: 200},
			{name: "unicode alias resolves", method: "GET", path: "/directory/room/" + alias(unicodeAlias),
				status: 200, want: map[string]any{"room_id": room}},
			{name: "taken alias", user: "alice", method: "PUT", path: "/directory/room/" + alias(unicodeAlias),
				body: map[string]string{"room_id": private}, status: 409},
			{name: "remote alias", user: "alice", method: "PUT", path: "/directory/room/" + alias("#x:elsewhere"),
				body: map[string]string{"room_id": room}, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "non-member may not add an alias", user: "bob", method: "PUT", path: "/directory/room/" + alias("#bob:test.local"),
				body: map[string]string{"room_id": private}, status: 403, errcode: "M_FORBIDDEN"},
			{name: "unknown alias", method: "GET", path: "/directory/room/" + alias("#nope:test.local"), status: 404, errcode: "M_NOT_FOUND"},
			{name: "invalid alias", method: "GET", path: "/directory/room/" + alias("nope"), status: 400, errcode: "M_INVALID_PARAM"},
			{name: "join by alias", user: "bob", method: "POST", path: "/join/" + alias("#lobby:test.local"),
				status: 200, want: map[string]any{"room_id": room}},
			{name: "member lists aliases", user: "bob", method: "GET", path: "/rooms/" + room + "/aliases",
				status: 200, want: map[string]any{"aliases": []string{"#lobby:test.local", unicodeAlias}}},
			{name: "non-member may not list aliases", user: "carol", method: "GET", path: "/rooms/" + room + "/aliases",
				status: 403, errcode: "M_FORBIDDEN"},
			{name: "canonical alias: missing", user: "alice", method: "PUT", path: "/rooms/" + room + "/state/m.room.canonical_alias",
				body: map[string]any{"alias": "#missing:test.local"}, status: 400, errcode: "M_BAD_ALIAS"},
			{name: "canonical alias: invalid", user: "alice", method: "PUT", path: "/rooms/" + room + "/state/m.room.canonical_alias",
				body: map[string]any{"alias": "%bad:test.local"}, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "canonical alias: other room", user: "alice", method: "PUT", path: "/rooms/" + private + "/state/m.room.canonical_alias",
				body: map[string]any{"alias": "#lobby:test.local"}, status: 400, errcode: "M_BAD_ALIAS"},
			{name: "canonical alias: alt list", user: "alice", method: "PUT", path: "/rooms/" + room + "/state/m.room.canonical_alias",
				body: map[string]any{"alias": "#lobby:test.local", "alt_aliases": "#lobby:test.local"}, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "canonical alias: valid, remote unchecked", user: "alice", method: "PUT", path: "/rooms/" + room + "/state/m.room.canonical_alias",
				body: map[string]any{"alias": "#lobby:test.local", "alt_aliases": []string{unicodeAlias, "#x:elsewhere"}}, status: 200},
			{name: "others may not delete the alias", user: "bob", method: "DELETE", path: "/directory/room/" + alias(unicodeAlias),
				status: 403, errcode: "M_FORBIDDEN"},
			{name: "creator deletes the alias", user: "alice", method: "DELETE", path: "/directory/room/" + alias(unicodeAlias), status: 200},
			{name: "deleted alias leaves alt_aliases", user: "alice", method: "GET", path: "/rooms/" + room + "/state/m.room.canonical_alias",
				status: 200, want: map[string]any{"alias": "#lobby:test.local", "alt_aliases": []string{"#x:elsewhere"}}},
			{name: "deleting again", user: "alice", method: "DELETE", path: "/directory/room/" + alias(unicodeAlias), status: 404, errcode: "M_NOT_FOUND"},
			{name: "visibility of a public room", method: "GET", path: "/directory/list/room/" + room,
				status: 200, want: map[string]any{"visibility": "public"}},
			{name: "visibility of a private room", method: "GET", path: "/directory/list/room/" + private,
				status: 200, want: map[string]any{"visibility": "private"}},
			{name: "visibility of an unknown room", method: "GET", path: "/directory/list/room/!nope:test.local", status: 404},
			{name: "member without power may not publish", user: "bob", method: "PUT", path: "/directory/list/room/" + room,
				body: map[string]string{"visibility": "private"}, status: 403},
			{name: "summary of a public room", method: "GET", path: "/_matrix/client/v1/room_summary/" + alias("#lobby:test.local"),
				status: 200, want: map[string]any{"room_id": room, "name": "Lobby", "num_joined_members": 2, "join_rule": "public",
					"room_version": "11"}},
			{name: "summary as a member", user: "bob", method: "GET", path: "/_matrix/client/v1/room_summary/" + room,
				status: 200, want: map[string]any{"membership": "join"}},
			{name: "summary of a private room to a stranger", user: "bob", method: "GET", path: "/_matrix/client/v1/room_summary/" + private,
				status: 404, errcode: "M_NOT_FOUND"},
			{name: "summary of a private room to its member", user: "alice", method: "GET", path: "/_matrix/client/v1/room_summary/" + private,
				status: 200, want: map[string]any{"join_rule": "invite", "membership": "join"}},
		})

		list := d.must("", "GET", "/publicRooms", nil)
		chunk, _ := list["chunk"].([]any)
		if len(chunk) != 1 || list["total_room_count_estimate"] != float64(1) {
			t.Fatalf("GET /publicRooms = %v; want the one public room", list)
		}
		entry := chunk[0].(map[string]any)
		for k, want := range map[string]any{"room_id": room, "name": "Lobby", "topic": "Wombles", "canonical_alias": "#lobby:test.local",
			"num_joined_members": float64(2), "world_readable": false, "guest_can_join": false, "join_rule": "public"} {
			if entry[k] != want {
				t.Errorf("publicRooms entry %s = %v; want %v", k, entry[k], want)
			}
		}
		for _, c := range []struct {
			term string
			want int
		}{{"WOMBLE", 1}, {"lobby:test", 1}, {"nothing", 0}} {
			out := d.must("bob", "POST", "/publicRooms", map[string]any{"filter": map[string]any{"generic_search_term": c.term}})
			if got := len(out["chunk"].([]any)); got != c.want {
				t.Errorf("search %q found %d rooms; want %d", c.term, got, c.want)
			}
		}
		d.must("alice", "PUT", "/directory/list/room/"+room, map[string]string{"visibility": "private"})
		if out := d.must("alice", "GET", "/publicRooms", nil); len(out["chunk"].([]any)) != 0 {
			t.Errorf("publicRooms after unpublishing = %v; want none", out)
		}
		if status, _ := d.do("", "POST", "/publicRooms", map[string]any{}); status != http.StatusUnauthorized {
			t.Errorf("POST /publicRooms without a token = %d; want 401", status)
		}
		if status, _ := d.do("", "GET", "/publicRooms?server=elsewhere", nil); status != http.StatusNotFound {
			t.Errorf("GET /publicRooms of another server = %d; want 404", status)
		}

		// Deleting the canonical alias empties m.room.canonical_alias.
		d.must("alice", "PUT", "/rooms/"+room+"/state/m.room.canonical_alias", map[string]any{"alias": "#lobby:test.local"})
		d.must("alice", "DELETE", "/directory/room/"+alias("#lobby:test.local"), nil)
		if out := d.must("alice", "GET", "/rooms/"+room+"/state/m.room.canonical_alias", nil); len(out) != 0 {
			t.Errorf("canonical alias after deleting it = %v; want {}", out)
		}
		if status, _ := d.do("bob", "POST", "/join/"+alias("#lobby:test.local"), nil); status != http.StatusNotFound {
			t.Errorf("join by a deleted alias = %d; want 404", status)
		}
	})
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
