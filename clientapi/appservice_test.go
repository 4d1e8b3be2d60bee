package clientapi

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/myelin-chat/myelin/appservice"
	"github.com/myelin-chat/myelin/internal/bus"
	"github.com/myelin-chat/myelin/internal/config"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/userapi"
)

// bridgeYAML registers a bridge with an exclusive user namespace, as the spec's example does.
const bridgeYAML = `id: bridge
url: null
as_token: bridge-as-token
hs_token: bridge-hs-token
sender_localpart: bridgebot
namespaces:
  users:
    - exclusive: true
      regex: "@_bridge_.*"
  aliases:
    - exclusive: true
      regex: "#_bridge_.*"
  rooms: []
`

// newASServer is newDirServer with the bridge registered as an application service; the
// token of user "as" is the bridge's as_token, and "hs" its hs_token.
func newASServer(t *testing.T, db *sqldb.DB, users ...string) *dirServer {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	cfg := config.Default()
	cfg.Global.ServerName = "test.local"
	cfg.ClientAPI.RateLimiting.Enabled = false
	bridge, err := appservice.Parse([]byte(bridgeYAML), "bridge.yaml", "test.local")
	testkit.Must(t, err, "parsing the registration")
	apps, err := appservice.New(bridge)
	testkit.Must(t, err, "building the registry")
	us, err := userapi.New(userapi.Config{ServerName: "test.local", BCryptCost: 4}, db, bus.NewStream(0), log)
	testkit.Must(t, err, "starting userapi")
	_, priv, err := ed25519.GenerateKey(nil)
	testkit.Must(t, err, "generating key")
	rs, err := roomserver.New(roomserver.Config{ServerName: "test.local", KeyID: "ed25519:test", PrivateKey: priv},
		db, bus.NewStream(0), log)
	testkit.Must(t, err, "starting roomserver")
	client := New(cfg, us, rs, nil, apps, log)
	testkit.Must(t, client.CreateAppServiceSenders(ctx), "creating senders")
	testkit.Must(t, client.CreateAppServiceSenders(ctx), "creating senders again")
	router := httpx.NewRouter()
	client.Register(router)
	srv := httptest.NewServer(router)
	t.Cleanup(srv.Close)
	d := &dirServer{t: t, url: srv.URL, tokens: map[string]string{"as": bridge.ASToken, "hs": bridge.HSToken}, users: us}
	for _, u := range users {
		id, err := us.CreateAccount(ctx, userapi.NewAccount{Localpart: u})
		testkit.Must(t, err, "creating %s", u)
		sess, err := us.StartSession(ctx, userapi.LoginRequest{UserID: id})
		testkit.Must(t, err, "logging in %s", u)
		d.tokens[u] = sess.AccessToken
	}
	return d
}

// q builds a query string.
func q(kv ...string) string {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Set(kv[i], kv[i+1])
	}
	return "?" + v.Encode()
}

func TestAppServiceHTTP(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		d := newASServer(t, db, "alice")

		// A user for the bridge, and one of its devices (by logging in as it).
		d.must("as", "POST", "/register", map[string]any{
			"type": "m.login.application_service", "username": "_bridge_alice", "inhibit_login": true,
		})
		login := d.must("as", "POST", "/_matrix/client/v3/login", map[string]any{
			"type": "m.login.application_service", "identifier": map[string]string{"type": "m.id.user", "user": "_bridge_alice"},
			"device_id": "BRIDGEDEV",
		})
		if login["user_id"] != "@_bridge_alice:test.local" || login["device_id"] != "BRIDGEDEV" {
			t.Fatalf("appservice login: got %v; want @_bridge_alice:test.local with BRIDGEDEV", login)
		}

		type check struct {
			name    string
			user    string
			method  string
			path    string
			body    any
			status  int
			errcode string
			want    map[string]any // keys that must have these values
			absent  []string       // keys that must be missing
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
				for _, k := range c.absent {
					if _, ok := out[k]; ok {
						t.Errorf("%s: got %s = %v; want none", c.name, k, out[k])
					}
				}
			}
		}
		run([]check{
			// Identity assertion.
			{name: "as_token acts as the sender", user: "as", method: "GET", path: "/account/whoami",
				status: 200, want: map[string]any{"user_id": "@bridgebot:test.local"}, absent: []string{"device_id"}},
			{name: "user_id of the sender", user: "as", method: "GET", path: "/account/whoami" + q("user_id", "@bridgebot:test.local"),
				status: 200, want: map[string]any{"user_id": "@bridgebot:test.local"}},
			{name: "user_id in the namespace", user: "as", method: "GET", path: "/account/whoami" + q("user_id", "@_bridge_alice:test.local"),
				status: 200, want: map[string]any{"user_id": "@_bridge_alice:test.local"}, absent: []string{"device_id"}},
			{name: "user_id and device_id", user: "as", method: "GET",
				path:   "/account/whoami" + q("user_id", "@_bridge_alice:test.local", "device_id", "BRIDGEDEV"),
				status: 200, want: map[string]any{"user_id": "@_bridge_alice:test.local", "device_id": "BRIDGEDEV"}},
			{name: "MSC3202 device_id", user: "as", method: "GET",
				path:   "/account/whoami" + q("user_id", "@_bridge_alice:test.local", "org.matrix.msc3202.device_id", "BRIDGEDEV"),
				status: 200, want: map[string]any{"device_id": "BRIDGEDEV"}},
			{name: "unknown device", user: "as", method: "GET",
				path:   "/account/whoami" + q("user_id", "@_bridge_alice:test.local", "device_id", "NOPE"),
				status: 400, errcode: "M_UNKNOWN_DEVICE"},
			{name: "device of another user", user: "as", method: "GET", path: "/account/whoami" + q("device_id", "BRIDGEDEV"),
				status: 400, errcode: "M_UNKNOWN_DEVICE"},
			{name: "user_id outside the namespace", user: "as", method: "GET", path: "/account/whoami" + q("user_id", "@alice:test.local"),
				status: 403, errcode: "M_FORBIDDEN"},
			{name: "user_id not registered", user: "as", method: "GET", path: "/account/whoami" + q("user_id", "@_bridge_nobody:test.local"),
				status: 403, errcode: "M_FORBIDDEN"},
			{name: "remote user_id", user: "as", method: "GET", path: "/account/whoami" + q("user_id", "@_bridge_alice:elsewhere.org"),
				status: 403, errcode: "M_FORBIDDEN"},
			{name: "hs_token is no client token", user: "hs", method: "GET", path: "/account/whoami",
				status: 401, errcode: "M_UNKNOWN_TOKEN"},
			{name: "a user's token ignores user_id", user: "alice", method: "GET", path: "/account/whoami" + q("user_id", "@_bridge_alice:test.local"),
				status: 200, want: map[string]any{"user_id": "@alice:test.local"}},
			{name: "login flows offer application services", method: "GET", path: "/_matrix/client/v3/login",
				status: 200, want: map[string]any{"flows": []map[string]string{{"type": "m.login.password"}, {"type": "m.login.application_service"}}}},

			// Registration.
			{name: "registration without inhibit_login logs in", user: "as", method: "POST", path: "/register",
				body:   map[string]any{"type": "m.login.application_service", "username": "_bridge_bob"},
				status: 200, want: map[string]any{"user_id": "@_bridge_bob:test.local"}},
			{name: "registration outside the namespace", user: "as", method: "POST", path: "/register",
				body:   map[string]any{"type": "m.login.application_service", "username": "carol"},
				status: 400, errcode: "M_EXCLUSIVE"},
			{name: "registration of a taken user", user: "as", method: "POST", path: "/register",
				body:   map[string]any{"type": "m.login.application_service", "username": "_bridge_bob"},
				status: 400, errcode: "M_USER_IN_USE"},
			{name: "registration without username", user: "as", method: "POST", path: "/register",
				body:   map[string]any{"type": "m.login.application_service"},
				status: 400, errcode: "M_MISSING_PARAM"},
			{name: "registration with a user's token", user: "alice", method: "POST", path: "/register",
				body:   map[string]any{"type": "m.login.application_service", "username": "_bridge_carol"},
				status: 401, errcode: "M_UNKNOWN_TOKEN"},
			{name: "registration without a token", method: "POST", path: "/register",
				body:   map[string]any{"type": "m.login.application_service", "username": "_bridge_carol"},
				status: 401, errcode: "M_MISSING_TOKEN"},
			{name: "a user cannot take an exclusive name", method: "POST", path: "/register",
				body:   map[string]any{"username": "_bridge_carol", "password": "secret", "auth": map[string]string{"type": "m.login.dummy"}},
				status: 400, errcode: "M_EXCLUSIVE"},
			{name: "nor the sender's name", method: "POST", path: "/register",
				body:   map[string]any{"username": "BridgeBot", "password": "secret", "auth": map[string]string{"type": "m.login.dummy"}},
				status: 400, errcode: "M_EXCLUSIVE"},
			{name: "exclusive names are not available", method: "GET", path: "/register/available" + q("username", "_bridge_carol"),
				status: 400, errcode: "M_EXCLUSIVE"},
			{name: "other names are", method: "POST", path: "/register",
				body:   map[string]any{"username": "carol", "password": "secret", "auth": map[string]string{"type": "m.login.dummy"}},
				status: 200, want: map[string]any{"user_id": "@carol:test.local"}},

			// Login.
			{name: "appservice login outside the namespace", user: "as", method: "POST", path: "/_matrix/client/v3/login",
				body:   map[string]any{"type": "m.login.application_service", "identifier": map[string]string{"type": "m.id.user", "user": "alice"}},
				status: 403, errcode: "M_EXCLUSIVE"},
			{name: "appservice login with a user's token", user: "alice", method: "POST", path: "/_matrix/client/v3/login",
				body:   map[string]any{"type": "m.login.application_service", "identifier": map[string]string{"type": "m.id.user", "user": "_bridge_alice"}},
				status: 401, errcode: "M_UNKNOWN_TOKEN"},
			{name: "appservice login of an unregistered user", user: "as", method: "POST", path: "/_matrix/client/v3/login",
				body:   map[string]any{"type": "m.login.application_service", "identifier": map[string]string{"type": "m.id.user", "user": "_bridge_nobody"}},
				status: 403, errcode: "M_FORBIDDEN"},
		})

		// Timestamp massaging: the sender and a masqueraded user join alice's room.
		room := d.must("alice", "POST", "/createRoom", map[string]any{"preset": "public_chat",
			"power_level_content_override": map[string]any{"users": map[string]int{"@alice:test.local": 100, "@bridgebot:test.local": 50}}})["room_id"].(string)
		d.must("as", "POST", "/join/"+url.PathEscape(room), map[string]any{})
		d.must("as", "POST", "/join/"+url.PathEscape(room)+q("user_id", "@_bridge_alice:test.local"), map[string]any{})
		const ts = 1641168000000 // 2022-01-03
		msg := map[string]string{"msgtype": "m.text", "body": "hi"}
		sent := func(user, path string) map[string]any {
			t.Helper()
			id := d.must(user, "PUT", path, msg)["event_id"].(string)
			return d.must("alice", "GET", "/rooms/"+room+"/event/"+url.PathEscape(id), nil)
		}
		tests := []struct {
			name   string
			user   string
			path   string
			sender string
			tsSet  bool
		}{
			{"appservice send with ts", "as", "/rooms/" + room + "/send/m.room.message/t1" + q("ts", "1641168000000"), "@bridgebot:test.local", true},
			{"masqueraded send with ts", "as", "/rooms/" + room + "/send/m.room.message/t1" + q("ts", "1641168000000", "user_id", "@_bridge_alice:test.local"),
				"@_bridge_alice:test.local", true},
			{"appservice state with ts", "as", "/rooms/" + room + "/state/m.bridge/x" + q("ts", "1641168000000"), "@bridgebot:test.local", true},
			{"appservice send without ts", "as", "/rooms/" + room + "/send/m.room.message/t2", "@bridgebot:test.local", false},
			{"user's ts is ignored", "alice", "/rooms/" + room + "/send/m.room.message/t1" + q("ts", "1641168000000"), "@alice:test.local", false},
			{"user's bad ts is ignored", "alice", "/rooms/" + room + "/send/m.room.message/t2" + q("ts", "yesterday"), "@alice:test.local", false},
			{"user's state ts is ignored", "alice", "/rooms/" + room + "/state/m.bridge/y" + q("ts", "1641168000000"), "@alice:test.local", false},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				ev := sent(tt.user, tt.path)
				if ev["sender"] != tt.sender {
					t.Errorf("sender: got %v; want %s", ev["sender"], tt.sender)
				}
				got, _ := ev["origin_server_ts"].(float64)
				if (int64(got) == ts) != tt.tsSet {
					t.Errorf("origin_server_ts: got %d; want ts honoured = %v", int64(got), tt.tsSet)
				}
			})
		}
		first := d.must("as", "PUT", "/rooms/"+room+"/send/m.room.message/again"+q("ts", "1641168000000"), msg)["event_id"]
		if again := d.must("as", "PUT", "/rooms/"+room+"/send/m.room.message/again"+q("ts", "1641168000000"), msg)["event_id"]; again != first {
			t.Errorf("repeated transaction: got %v then %v; want the same event", first, again)
		}
		// A deactivated user of the namespace can no longer be acted as.
		d.must("as", "POST", "/register", map[string]any{
			"type": "m.login.application_service", "username": "_bridge_gone", "inhibit_login": true,
		})
		testkit.Must(t, d.users.Deactivate(context.Background(), "@_bridge_gone:test.local"), "deactivating")
		if status, out := d.do("as", "GET", "/account/whoami"+q("user_id", "@_bridge_gone:test.local"), nil); status != 403 || out["errcode"] != "M_USER_DEACTIVATED" {
			t.Errorf("acting as a deactivated user: got %d %v; want 403 M_USER_DEACTIVATED", status, out)
		}

		// Exclusive alias namespace: closed to users, open to the bridge.
		alias := func(a string) string { return "/directory/room/" + url.PathEscape(a) }
		if status, out := d.do("alice", "PUT", alias("#_bridge_x:test.local"), map[string]string{"room_id": room}); status != 400 || out["errcode"] != "M_EXCLUSIVE" {
			t.Errorf("user claims a bridge alias: got %d %v; want 400 M_EXCLUSIVE", status, out)
		}
		if status, out := d.do("alice", "POST", "/createRoom", map[string]string{"room_alias_name": "_bridge_y"}); status != 400 || out["errcode"] != "M_EXCLUSIVE" {
			t.Errorf("user creates a room with a bridge alias: got %d %v; want 400 M_EXCLUSIVE", status, out)
		}
		d.must("as", "PUT", alias("#_bridge_x:test.local"), map[string]string{"room_id": room})
		d.must("alice", "PUT", alias("#plain:test.local"), map[string]string{"room_id": room})
		for _, bad := range []string{"yesterday", "-1", "9007199254740992", "1.5"} {
			if status, out := d.do("as", "PUT", "/rooms/"+room+"/send/m.room.message/bad"+q("ts", bad), msg); status != 400 || out["errcode"] != "M_INVALID_PARAM" {
				t.Errorf("ts=%s: got %d %v; want 400 M_INVALID_PARAM", bad, status, out)
			}
		}
	})
}

// TestAppServiceTokenQueryParameter checks that an as_token works as the access_token
// query parameter too, and that a header and a body are not needed for GET.
func TestAppServiceTokenQueryParameter(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		d := newASServer(t, db)
		res, err := http.Get(d.url + "/_matrix/client/v3/account/whoami" + q("access_token", "bridge-as-token"))
		testkit.Must(t, err, "whoami")
		defer res.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(res.Body).Decode(&out)
		if res.StatusCode != 200 || out["user_id"] != "@bridgebot:test.local" {
			t.Errorf("got %d %v; want 200 @bridgebot:test.local", res.StatusCode, out)
		}
	})
}
