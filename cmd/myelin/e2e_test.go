package main

// End-to-end tests of accounts: the real myelin binary over real HTTP on loopback, on SQLite
// and (with MYELIN_TEST_POSTGRES) PostgreSQL. See harness_test.go for the harness.

import (
	"crypto/hmac"
	"crypto/sha1"
	"database/sql"
	"encoding/hex"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // "pgx" driver, to inspect a PostgreSQL test database
	_ "modernc.org/sqlite"             // "sqlite" driver, to inspect a SQLite test database

	"github.com/myelin-chat/myelin/internal/testkit"
)

const v3 = "/_matrix/client/v3"

// TestAcceptance is the first-run story: an operator creates an account with myelinctl, the
// user logs in every way the spec allows, and the session and the account survive a restart.
func TestAcceptance(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b testkit.Backend) {
		s := startServer(t, b, serverOpts{})
		out, err := s.myelinctl(t, "create-account", "-u", "alice", "-p", "correct horse", "--config", s.config)
		if err != nil {
			t.Fatalf("myelinctl create-account: %v\n%s", err, out)
		}
		if !strings.Contains(out, userID("alice")) {
			t.Errorf("myelinctl create-account output %q; want it to name %s", out, userID("alice"))
		}

		ident := func(user string) map[string]any {
			return map[string]any{"type": "m.login.password", "password": "correct horse",
				"identifier": map[string]string{"type": "m.id.user", "user": user}}
		}
		legacy := func(user string) map[string]any {
			return map[string]any{"type": "m.login.password", "password": "correct horse", "user": user}
		}
		tests := []struct {
			name string
			body map[string]any
		}{
			{"identifier localpart", ident("alice")},
			{"identifier full user ID", ident(userID("alice"))},
			{"identifier upper-case localpart", ident("ALICE")},
			{"identifier upper-case full user ID", ident("@Alice:" + serverName)},
			{"legacy user localpart", legacy("alice")},
			{"legacy user full user ID", legacy(userID("alice"))},
		}
		type session struct{ token, device string }
		var sessions []session
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				m := s.anon().do(t, "POST", v3+"/login", tc.body).wantOK(t)
				if got := str(t, m, "user_id"); got != userID("alice") {
					t.Errorf("got user_id %q; want %q", got, userID("alice"))
				}
				sess := session{str(t, m, "access_token"), str(t, m, "device_id")}
				who := s.as(sess.token).whoami(t).wantOK(t)
				if got := who["user_id"]; got != userID("alice") {
					t.Errorf("whoami: got user_id %v; want %s", got, userID("alice"))
				}
				if got := who["device_id"]; got != sess.device {
					t.Errorf("whoami: got device_id %v; want %s", got, sess.device)
				}
				for _, prev := range sessions {
					if prev.device == sess.device || prev.token == sess.token {
						t.Errorf("login reused device %s / a token of an earlier login; want a new device each time", sess.device)
					}
				}
				sessions = append(sessions, sess)
			})
		}
		if len(sessions) == 0 {
			t.Fatal("no login succeeded")
		}
		keyBefore := serverKeyIDs(t, s)
		alice := s.as(sessions[0].token)
		aliceData := v3 + "/user/" + userID("alice") + "/account_data/com.example.acceptance"
		alice.do(t, "PUT", aliceData, map[string]any{"kept": true}).wantOK(t)
		alice.do(t, "PUT", v3+"/profile/"+userID("alice")+"/displayname", map[string]any{"displayname": "Alice A."}).wantOK(t)
		alice.do(t, "PUT", v3+"/devices/"+sessions[0].device, map[string]any{"display_name": "Alice's laptop"}).wantOK(t)

		s.restart(t)

		for _, sess := range sessions {
			who := s.as(sess.token).whoami(t).wantOK(t)
			if who["user_id"] != userID("alice") || who["device_id"] != sess.device {
				t.Errorf("after restart, whoami: got %v; want user %s device %s", who, userID("alice"), sess.device)
			}
		}
		if m := alice.do(t, "GET", aliceData, nil).wantOK(t); m["kept"] != true {
			t.Errorf("after restart, account data: got %v; want {kept: true}", m)
		}
		if m := s.anon().do(t, "GET", v3+"/profile/"+userID("alice"), nil).wantOK(t); m["displayname"] != "Alice A." {
			t.Errorf("after restart, displayname: got %v; want Alice A.", m["displayname"])
		}
		if m := alice.do(t, "GET", v3+"/devices/"+sessions[0].device, nil).wantOK(t); m["display_name"] != "Alice's laptop" {
			t.Errorf("after restart, device display_name: got %v; want Alice's laptop", m["display_name"])
		}
		s.login(t, "alice", "correct horse")
		s.anon().do(t, "POST", v3+"/login", map[string]any{"type": "m.login.password", "user": "alice", "password": "wrong"}).
			wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
		if got := serverKeyIDs(t, s); !slices.Equal(got, keyBefore) {
			t.Errorf("after restart, signing key IDs: got %v; want %v (the key must persist)", got, keyBefore)
		}
		if out, err := s.myelinctl(t, "create-account", "-u", "alice", "-p", "other", "--config", s.config); err == nil {
			t.Errorf("myelinctl create-account of an existing user: got success (%q); want an error", out)
		}
	})
}

// serverKeyIDs returns the key IDs of GET /_matrix/key/v2/server.
func serverKeyIDs(t testing.TB, s *server) []string {
	t.Helper()
	var keys struct {
		ServerName string         `json:"server_name"`
		VerifyKeys map[string]any `json:"verify_keys"`
	}
	s.anon().do(t, "GET", "/_matrix/key/v2/server", nil).wantOKInto(t, &keys)
	if keys.ServerName != serverName {
		t.Errorf("key server_name: got %q; want %q", keys.ServerName, serverName)
	}
	var ids []string
	for id := range keys.VerifyKeys {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	if len(ids) == 0 {
		t.Fatalf("GET /_matrix/key/v2/server: no verify_keys")
	}
	return ids
}

// TestBadInput sends requests no client should send. Each must get a 4xx Matrix error, as
// JSON with errcode and error, and never a 5xx.
func TestBadInput(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b testkit.Backend) {
		const maxBody = 2048
		s := startServer(t, b, serverOpts{maxRequestBytes: maxBody})
		u := s.register(t, "mallory", "pw")
		big := `{"type":"m.login.password","user":"alice","password":"` + strings.Repeat("a", 2*maxBody) + `"}`

		const (
			none  = ""
			valid = "valid"
		)
		tests := []struct {
			name         string
			method, path string
			token        string // none, valid, or a literal token
			body         any
			hdr          []string
			status       int
			errcode      string
		}{
			{"malformed JSON", "POST", v3 + "/login", none, rawBody(`{"type": "m.login.password",`), nil, 400, "M_NOT_JSON"},
			{"empty body", "POST", v3 + "/login", none, rawBody(``), nil, 400, "M_NOT_JSON"},
			{"trailing garbage", "POST", v3 + "/login", none, rawBody(`{"type":"m.login.password"} x`), nil, 400, "M_NOT_JSON"},
			{"invalid UTF-8 in a string", "POST", v3 + "/login", none,
				rawBody("{\"type\":\"m.login.password\",\"user\":\"al\xffice\",\"password\":\"x\"}"), nil, 400, "M_NOT_JSON"},
			{"invalid UTF-8 on register before UIA", "POST", v3 + "/register", none,
				rawBody("{\"username\":\"\xc3\x28\",\"password\":\"x\"}"), nil, 400, "M_NOT_JSON"},
			{"malformed JSON on register before UIA", "POST", v3 + "/register", none, rawBody(`{`), nil, 400, "M_NOT_JSON"},
			{"JSON array", "POST", v3 + "/login", none, rawBody(`[{"type":"m.login.password"}]`), nil, 400, "M_BAD_JSON"},
			{"JSON string", "POST", v3 + "/login", none, rawBody(`"m.login.password"`), nil, 400, "M_BAD_JSON"},
			{"JSON null", "POST", v3 + "/register", none, rawBody(`null`), nil, 400, "M_BAD_JSON"},
			{"JSON number", "POST", v3 + "/register", none, rawBody(`42`), nil, 400, "M_BAD_JSON"},
			{"password is a number", "POST", v3 + "/login", none,
				rawBody(`{"type":"m.login.password","identifier":{"type":"m.id.user","user":"mallory"},"password":5}`), nil, 400, "M_BAD_JSON"},
			{"identifier is a string", "POST", v3 + "/login", none,
				rawBody(`{"type":"m.login.password","identifier":"mallory","password":"pw"}`), nil, 400, "M_BAD_JSON"},
			{"refresh_token is a string", "POST", v3 + "/login", none,
				rawBody(`{"type":"m.login.password","user":"mallory","password":"pw","refresh_token":"yes"}`), nil, 400, "M_BAD_JSON"},
			{"username is a number", "POST", v3 + "/register", none, rawBody(`{"username":5}`), nil, 400, "M_BAD_JSON"},
			{"auth is a string", "POST", v3 + "/register", none, rawBody(`{"username":"x1","password":"pw","auth":"dummy"}`), nil, 400, "M_BAD_JSON"},
			{"register kind unknown", "POST", v3 + "/register?kind=admin", none, rawBody(`{}`), nil, 400, "M_INVALID_PARAM"},
			{"display_name is a number", "PUT", v3 + "/devices/X", valid, rawBody(`{"display_name":5}`), nil, 400, "M_BAD_JSON"},
			{"account data is an array", "PUT", v3 + "/user/" + u.userID + "/account_data/com.example.x", valid, rawBody(`[1]`), nil, 400, "M_BAD_JSON"},
			{"password change body is a string", "POST", v3 + "/account/password", valid, rawBody(`"pw"`), nil, 400, "M_BAD_JSON"},
			{"displayname is an object", "PUT", v3 + "/profile/" + u.userID + "/displayname", valid, rawBody(`{"displayname":{}}`), nil, 400, "M_BAD_JSON"},
			{"oversized body", "POST", v3 + "/login", none, rawBody(big), nil, 413, "M_TOO_LARGE"},
			{"oversized chunked body", "POST", v3 + "/login", none, strings.NewReader(big), nil, 413, "M_TOO_LARGE"},
			{"oversized authenticated body", "PUT", v3 + "/user/" + u.userID + "/account_data/com.example.big", valid,
				rawBody(`{"k":"` + strings.Repeat("b", 2*maxBody) + `"}`), nil, 413, "M_TOO_LARGE"},
			{"missing token", "GET", v3 + "/account/whoami", none, nil, nil, 401, "M_MISSING_TOKEN"},
			{"not a bearer token", "GET", v3 + "/account/whoami", none, nil, []string{"Authorization", "Basic bWU6cHc="}, 401, "M_MISSING_TOKEN"},
			{"unknown token", "GET", v3 + "/account/whoami", "not-a-token", nil, nil, 401, "M_UNKNOWN_TOKEN"},
			{"unknown token with our prefix", "GET", v3 + "/account/whoami", "myt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", nil, nil, 401, "M_UNKNOWN_TOKEN"},
			{"unknown token in query", "GET", v3 + "/account/whoami?access_token=bogus", none, nil, nil, 401, "M_UNKNOWN_TOKEN"},
			{"sync without token", "GET", v3 + "/sync?timeout=0", none, nil, nil, 401, "M_MISSING_TOKEN"},
			{"sync with unknown token", "GET", v3 + "/sync?timeout=0", "bogus", nil, nil, 401, "M_UNKNOWN_TOKEN"},
			{"unknown client endpoint", "GET", v3 + "/no/such/endpoint", none, nil, nil, 404, "M_UNRECOGNIZED"},
			{"unknown endpoint with token", "POST", v3 + "/no_such_endpoint", valid, rawBody(`{}`), nil, 404, "M_UNRECOGNIZED"},
			{"unknown API version", "GET", "/_matrix/client/v9/login", none, nil, nil, 404, "M_UNRECOGNIZED"},
			{"unknown root path", "GET", "/nothing-here", none, nil, nil, 404, "M_UNRECOGNIZED"},
			{"PUT on login", "PUT", v3 + "/login", none, rawBody(`{}`), nil, 405, "M_UNRECOGNIZED"},
			{"DELETE on whoami", "DELETE", v3 + "/account/whoami", valid, nil, nil, 405, "M_UNRECOGNIZED"},
			{"GET on register", "GET", v3 + "/register", none, nil, nil, 405, "M_UNRECOGNIZED"},
			{"POST on versions", "POST", "/_matrix/client/versions", none, rawBody(`{}`), nil, 405, "M_UNRECOGNIZED"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				c := s.anon()
				switch tc.token {
				case none:
				case valid:
					c = s.as(u.token)
				default:
					c = s.as(tc.token)
				}
				r := c.do(t, tc.method, tc.path, tc.body, tc.hdr...)
				if r.status >= 500 {
					t.Fatalf("%s: got a server error; want %d %s", r, tc.status, tc.errcode)
				}
				r.wantErr(t, tc.status, tc.errcode)
			})
		}

		t.Run("server still healthy", func(t *testing.T) {
			s.as(u.token).whoami(t).wantOK(t)
		})
		t.Run("sync with a valid token", func(t *testing.T) {
			m := s.as(u.token).do(t, "GET", v3+"/sync?timeout=0", nil).wantOK(t)
			str(t, m, "next_batch")
		})
	})
}

// TestRegistration covers /register with the dummy flow, /register/available and
// inhibit_login on an open server.
func TestRegistration(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b testkit.Backend) {
		s := startServer(t, b, serverOpts{})
		reg := v3 + "/register"
		dummy := map[string]string{"type": "m.login.dummy"}

		t.Run("challenge", func(t *testing.T) {
			r := s.anon().do(t, "POST", reg, map[string]any{})
			wantChallenge(t, r, [][]string{{"m.login.dummy"}})
			if m := r.obj(t); m["errcode"] != nil {
				t.Errorf("first /register: got errcode %v; want none on a plain challenge", m["errcode"])
			}
		})
		t.Run("dummy without session", func(t *testing.T) {
			bob := s.register(t, "bob", "pw")
			who := bob.whoami(t).wantOK(t)
			if who["user_id"] != userID("bob") || who["device_id"] != bob.deviceID {
				t.Errorf("whoami: got %v; want %s on %s", who, userID("bob"), bob.deviceID)
			}
			s.login(t, "bob", "pw")
		})
		t.Run("dummy with session", func(t *testing.T) {
			session := wantChallenge(t, s.anon().do(t, "POST", reg, map[string]any{"username": "carol", "password": "pw"}),
				[][]string{{"m.login.dummy"}})
			m := s.anon().do(t, "POST", reg, map[string]any{"username": "carol", "password": "pw",
				"auth": map[string]string{"type": "m.login.dummy", "session": session}}).wantOK(t)
			if got := str(t, m, "user_id"); got != userID("carol") {
				t.Errorf("got user_id %q; want %q", got, userID("carol"))
			}
			str(t, m, "access_token")
			str(t, m, "device_id")
		})
		t.Run("session-only auth once the flow is complete", func(t *testing.T) {
			// The dummy stage completes, then the request fails for want of a password. The
			// spec: a retry whose auth dict holds only the session performs the call once all
			// stages of a flow are complete.
			session := wantChallenge(t, s.anon().do(t, "POST", reg, map[string]any{"username": "oscar"}), [][]string{{"m.login.dummy"}})
			s.anon().do(t, "POST", reg, map[string]any{"username": "oscar",
				"auth": map[string]string{"type": "m.login.dummy", "session": session}}).wantErr(t, http.StatusBadRequest, "M_MISSING_PARAM")
			r := s.anon().do(t, "POST", reg, map[string]any{"username": "oscar", "password": "pw",
				"auth": map[string]string{"session": session}})
			if got := str(t, r.wantOK(t), "user_id"); got != userID("oscar") {
				t.Errorf("got user_id %q; want %q", got, userID("oscar"))
			}
		})
		t.Run("unoffered stage", func(t *testing.T) {
			r := s.anon().do(t, "POST", reg, map[string]any{"username": "cuthbert", "password": "pw",
				"auth": map[string]string{"type": "m.login.registration_token", "token": "x"}})
			wantChallenge(t, r, [][]string{{"m.login.dummy"}})
			s.anon().do(t, "GET", reg+"/available?username=cuthbert", nil).wantOK(t)
		})

		s.register(t, "taken", "pw")
		tests := []struct {
			name     string
			username any
			wantUser string // "" for an error
			errcode  string
		}{
			{"upper case is downcased", "Dave", userID("dave"), ""},
			{"all allowed characters", "a.b_c=d-e/f+0", userID("a.b_c=d-e/f+0"), ""},
			{"taken", "taken", "", "M_USER_IN_USE"},
			{"taken in another case", "TAKEN", "", "M_USER_IN_USE"},
			{"space", "bad name", "", "M_INVALID_USERNAME"},
			{"non-ASCII", "zoë", "", "M_INVALID_USERNAME"},
			{"full user ID", userID("erin"), "", "M_INVALID_USERNAME"},
			{"colon", "er:in", "", "M_INVALID_USERNAME"},
			{"user ID over 255 bytes", strings.Repeat("x", 250), "", "M_INVALID_USERNAME"},
		}
		for _, tc := range tests {
			t.Run("username "+tc.name, func(t *testing.T) {
				r := s.anon().do(t, "POST", reg, map[string]any{"username": tc.username, "password": "pw", "auth": dummy})
				if tc.wantUser == "" {
					r.wantErr(t, http.StatusBadRequest, tc.errcode)
					// The name is checked before the auth dance starts.
					s.anon().do(t, "POST", reg, map[string]any{"username": tc.username, "password": "pw"}).
						wantErr(t, http.StatusBadRequest, tc.errcode)
					return
				}
				if got := str(t, r.wantOK(t), "user_id"); got != tc.wantUser {
					t.Errorf("got user_id %q; want %q", got, tc.wantUser)
				}
			})
		}
		t.Run("no username", func(t *testing.T) {
			m := s.anon().do(t, "POST", reg, map[string]any{"password": "pw", "auth": dummy}).wantOK(t)
			id := str(t, m, "user_id")
			if !strings.HasPrefix(id, "@") || !strings.HasSuffix(id, ":"+serverName) || len(id) < len("@x:"+serverName) {
				t.Errorf("got generated user_id %q; want @something:%s", id, serverName)
			}
			if who := s.as(str(t, m, "access_token")).whoami(t).wantOK(t); who["user_id"] != id {
				t.Errorf("whoami: got %v; want %s", who["user_id"], id)
			}
		})

		avail := []struct {
			name, query string
			status      int
			errcode     string
		}{
			{"free", "username=freddie", 200, ""},
			{"free in upper case", "username=FREDDIE", 200, ""},
			{"taken", "username=taken", 400, "M_USER_IN_USE"},
			{"taken in upper case", "username=Taken", 400, "M_USER_IN_USE"},
			{"invalid", "username=bad%20name", 400, "M_INVALID_USERNAME"},
			{"missing", "", 400, "M_MISSING_PARAM"},
		}
		for _, tc := range avail {
			t.Run("available "+tc.name, func(t *testing.T) {
				r := s.anon().do(t, "GET", reg+"/available?"+tc.query, nil)
				if tc.errcode != "" {
					r.wantErr(t, tc.status, tc.errcode)
					return
				}
				if m := r.wantOK(t); m["available"] != true {
					t.Errorf("got %v; want available true", m)
				}
			})
		}

		t.Run("inhibit_login", func(t *testing.T) {
			m := s.anon().do(t, "POST", reg, map[string]any{"username": "ivan", "password": "pw", "auth": dummy, "inhibit_login": true}).wantOK(t)
			if got := str(t, m, "user_id"); got != userID("ivan") {
				t.Errorf("got user_id %q; want %q", got, userID("ivan"))
			}
			for _, k := range []string{"access_token", "device_id", "refresh_token"} {
				if v, ok := m[k]; ok {
					t.Errorf("got %s %v; want none with inhibit_login", k, v)
				}
			}
			s.login(t, "ivan", "pw")
		})
		t.Run("device_id and display name", func(t *testing.T) {
			jo := s.register(t, "jo", "pw", "device_id", "REGDEVICE", "initial_device_display_name", "Jo's laptop")
			if jo.deviceID != "REGDEVICE" {
				t.Errorf("got device_id %q; want REGDEVICE", jo.deviceID)
			}
			d := jo.do(t, "GET", v3+"/devices/REGDEVICE", nil).wantOK(t)
			if d["display_name"] != "Jo's laptop" {
				t.Errorf("got display_name %v; want Jo's laptop", d["display_name"])
			}
		})
		passwords := []struct {
			name, password string
			ok             bool
		}{
			{"72 bytes", strings.Repeat("p", 72), true},
			{"73 bytes", strings.Repeat("p", 73), false},
			{"25 three-byte runes", strings.Repeat("€", 25), false},
		}
		for i, tc := range passwords {
			t.Run("password "+tc.name, func(t *testing.T) {
				name := "pwlen" + string(rune('a'+i))
				r := s.anon().do(t, "POST", reg, map[string]any{"username": name, "password": tc.password, "auth": dummy})
				if !tc.ok {
					m := r.wantErr(t, http.StatusBadRequest, "M_WEAK_PASSWORD")
					if msg, _ := m["error"].(string); !strings.Contains(msg, "72") {
						t.Errorf("got error %q; want it to say the limit is 72 bytes", msg)
					}
					return
				}
				r.wantOK(t)
				s.login(t, name, tc.password)
				// bcrypt ignores bytes after the 72nd; the server must not let them log in.
				s.anon().do(t, "POST", v3+"/login", map[string]any{"type": "m.login.password", "user": name, "password": tc.password + "x"}).
					wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
			})
		}
		t.Run("guest", func(t *testing.T) {
			s.anon().do(t, "POST", reg+"?kind=guest", map[string]any{}).wantErr(t, http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN")
		})
		t.Run("r0 prefix", func(t *testing.T) {
			wantChallenge(t, s.anon().do(t, "POST", "/_matrix/client/r0/register", map[string]any{}), [][]string{{"m.login.dummy"}})
		})
	})
}

// TestRegistrationRequiresToken checks that with registration_requires_token only the
// registration-token flow is offered and only a configured token opens it.
func TestRegistrationRequiresToken(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b testkit.Backend) {
		s := startServer(t, b, serverOpts{requiresToken: true, tokens: []string{"let-me-in_42"}})
		reg := v3 + "/register"
		flows := [][]string{{"m.login.registration_token"}}

		session := wantChallenge(t, s.anon().do(t, "POST", reg, map[string]any{"username": "kim", "password": "pw"}), flows)

		tests := []struct {
			name    string
			auth    map[string]string
			errcode string // on the 401
		}{
			{"dummy is not offered", map[string]string{"type": "m.login.dummy", "session": session}, "M_UNRECOGNIZED"},
			{"dummy without session", map[string]string{"type": "m.login.dummy"}, "M_UNRECOGNIZED"},
			{"wrong token", map[string]string{"type": "m.login.registration_token", "token": "let-me-in", "session": session}, "M_UNAUTHORIZED"},
			{"empty token", map[string]string{"type": "m.login.registration_token", "session": session}, "M_UNAUTHORIZED"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				r := s.anon().do(t, "POST", reg, map[string]any{"username": "kim", "password": "pw", "auth": tc.auth})
				wantChallenge(t, r, flows)
				if got := r.obj(t)["errcode"]; got != tc.errcode {
					t.Errorf("%s: got errcode %v; want %s", r, got, tc.errcode)
				}
				s.anon().do(t, "GET", reg+"/available?username=kim", nil).wantOK(t)
			})
		}
		t.Run("right token", func(t *testing.T) {
			m := s.anon().do(t, "POST", reg, map[string]any{"username": "kim", "password": "pw",
				"auth": map[string]string{"type": "m.login.registration_token", "token": "let-me-in_42", "session": session}}).wantOK(t)
			if got := str(t, m, "user_id"); got != userID("kim") {
				t.Errorf("got user_id %q; want %q", got, userID("kim"))
			}
			s.as(str(t, m, "access_token")).whoami(t).wantOK(t)
		})
		t.Run("config token is reusable", func(t *testing.T) {
			s.anon().do(t, "POST", reg, map[string]any{"username": "lee", "password": "pw",
				"auth": map[string]string{"type": "m.login.registration_token", "token": "let-me-in_42"}}).wantOK(t)
		})
		t.Run("shared secret registration is off", func(t *testing.T) {
			s.anon().do(t, "GET", "/_synapse/admin/v1/register", nil).wantErr(t, http.StatusBadRequest, "M_UNKNOWN")
		})
	})
}

// macFor is the shared-secret registration MAC: HMAC-SHA1 over
// nonce\0user\0password\0admin|notadmin[\0user_type], hex-encoded.
func macFor(secret, nonce, user, password string, admin bool, userType string) string {
	m := hmac.New(sha1.New, []byte(secret))
	m.Write([]byte(nonce + "\x00" + user + "\x00" + password + "\x00"))
	if admin {
		m.Write([]byte("admin"))
	} else {
		m.Write([]byte("notadmin"))
	}
	if userType != "" {
		m.Write([]byte("\x00" + userType))
	}
	return hex.EncodeToString(m.Sum(nil))
}

// TestSharedSecretRegistration covers /_synapse/admin/v1/register on a server whose open
// registration is disabled: the shared secret still registers users, admins included.
func TestSharedSecretRegistration(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b testkit.Backend) {
		const secret = "a shared secret"
		s := startServer(t, b, serverOpts{registrationDisabled: true, sharedSecret: secret})
		const path = "/_synapse/admin/v1/register"
		nonce := func(t *testing.T) string {
			t.Helper()
			return str(t, s.anon().do(t, "GET", path, nil).wantOK(t), "nonce")
		}

		t.Run("open registration is disabled", func(t *testing.T) {
			s.anon().do(t, "POST", v3+"/register", map[string]any{}).wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
			s.anon().do(t, "POST", v3+"/register", map[string]any{"username": "x", "password": "pw",
				"auth": map[string]string{"type": "m.login.dummy"}}).wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
			s.anon().do(t, "GET", v3+"/register/available?username=x", nil).wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
		})
		t.Run("nonces differ", func(t *testing.T) {
			if a, b := nonce(t), nonce(t); a == b {
				t.Errorf("got the same nonce twice (%q); want fresh ones", a)
			}
		})

		tests := []struct {
			name, user, password string
			admin                bool
			userType             string
			nonce                string                    // "": a fresh one from the server
			mac                  func(nonce string) string // nil: the right MAC
			status               int
			errcode              string
		}{
			{name: "user", user: "sam", password: "pw", status: 200},
			{name: "admin", user: "root", password: "pw", admin: true, status: 200},
			{name: "user_type bot", user: "robot", password: "pw", userType: "bot", status: 200},
			{name: "upper-case name is downcased", user: "Tess", password: "pw", status: 200},
			{name: "wrong secret", user: "una", password: "pw", status: 403, errcode: "M_FORBIDDEN",
				mac: func(n string) string { return macFor("wrong", n, "una", "pw", false, "") }},
			{name: "MAC says notadmin, request says admin", user: "vic", password: "pw", admin: true, status: 403, errcode: "M_FORBIDDEN",
				mac: func(n string) string { return macFor(secret, n, "vic", "pw", false, "") }},
			{name: "MAC over another password", user: "wes", password: "pw", status: 403, errcode: "M_FORBIDDEN",
				mac: func(n string) string { return macFor(secret, n, "wes", "pw2", false, "") }},
			{name: "MAC not hex", user: "xia", password: "pw", status: 403, errcode: "M_FORBIDDEN",
				mac: func(string) string { return "zz" }},
			{name: "invalid username", user: "bad name", password: "pw", status: 400, errcode: "M_INVALID_USERNAME"},
			{name: "taken username", user: "sam", password: "pw", status: 400, errcode: "M_USER_IN_USE"},
			{name: "password too long", user: "yan", password: strings.Repeat("p", 73), status: 400, errcode: "M_WEAK_PASSWORD"},
			{name: "missing password", user: "zed", password: "", status: 400, errcode: "M_MISSING_PARAM"},
			{name: "unknown nonce", user: "abe", password: "pw", nonce: "not-a-nonce-we-issued", status: 400, errcode: "M_UNKNOWN"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				n := tc.nonce
				if n == "" {
					n = nonce(t)
				}
				mac := macFor(secret, n, tc.user, tc.password, tc.admin, tc.userType)
				if tc.mac != nil {
					mac = tc.mac(n)
				}
				body := map[string]any{"nonce": n, "username": tc.user, "password": tc.password, "admin": tc.admin, "mac": mac}
				if tc.userType != "" {
					body["user_type"] = tc.userType
				}
				r := s.anon().do(t, "POST", path, body)
				if tc.status != 200 {
					r.wantErr(t, tc.status, tc.errcode)
					return
				}
				m := r.wantOK(t)
				want := userID(strings.ToLower(tc.user))
				if got := str(t, m, "user_id"); got != want {
					t.Errorf("got user_id %q; want %q", got, want)
				}
				if who := s.as(str(t, m, "access_token")).whoami(t).wantOK(t); who["user_id"] != want {
					t.Errorf("whoami: got %v; want %s", who["user_id"], want)
				}
				if got := isAdmin(t, s, want); got != tc.admin {
					t.Errorf("accounts.is_admin of %s: got %t; want %t", want, got, tc.admin)
				}
				s.login(t, tc.user, tc.password)
			})
		}

		t.Run("nonce is single use", func(t *testing.T) {
			n := nonce(t)
			s.anon().do(t, "POST", path, map[string]any{"nonce": n, "username": "once", "password": "pw",
				"mac": macFor(secret, n, "once", "pw", false, "")}).wantOK(t)
			s.anon().do(t, "POST", path, map[string]any{"nonce": n, "username": "twice", "password": "pw",
				"mac": macFor(secret, n, "twice", "pw", false, "")}).wantErr(t, http.StatusBadRequest, "M_UNKNOWN")
			s.anon().do(t, "POST", v3+"/login", map[string]any{"type": "m.login.password", "user": "twice", "password": "pw"}).
				wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
		})
		t.Run("displayname", func(t *testing.T) {
			n := nonce(t)
			s.anon().do(t, "POST", path, map[string]any{"nonce": n, "username": "dora", "password": "pw", "displayname": "Dora D.",
				"mac": macFor(secret, n, "dora", "pw", false, "")}).wantOK(t)
			m := s.anon().do(t, "GET", v3+"/profile/"+userID("dora")+"/displayname", nil).wantOK(t)
			if m["displayname"] != "Dora D." {
				t.Errorf("got displayname %v; want Dora D.", m["displayname"])
			}
		})
	})
}

// openDB opens the server's database for inspection.
func (s *server) openDB(t testing.TB) *sql.DB {
	t.Helper()
	var db *sql.DB
	var err error
	if s.backend == "sqlite" {
		db, err = sql.Open("sqlite", s.conn+"?_pragma=busy_timeout(10000)&_pragma=query_only(ON)")
	} else {
		db, err = sql.Open("pgx", s.conn)
	}
	if err != nil {
		t.Fatalf("opening the %s database: %v", s.backend, err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// isAdmin reads accounts.is_admin of user from the database.
func isAdmin(t testing.TB, s *server, user string) bool {
	t.Helper()
	rows, err := s.openDB(t).Query(`SELECT user_id, is_admin FROM accounts`)
	if err != nil {
		t.Fatalf("reading accounts: %v", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var admin bool
		if err := rows.Scan(&id, &admin); err != nil {
			t.Fatalf("reading accounts: %v", err)
		}
		if id == user {
			return admin
		}
	}
	t.Fatalf("no account %s in the database (%v)", user, rows.Err())
	return false
}

// TestLogin covers GET and POST /login, device reuse and refresh tokens.
func TestLogin(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b testkit.Backend) {
		const lifetime = 3 * time.Second
		s := startServer(t, b, serverOpts{accessTokenLifetime: lifetime.String()})
		s.register(t, "lara", "secret")
		login := v3 + "/login"

		t.Run("flows", func(t *testing.T) {
			var got struct {
				Flows []struct {
					Type string `json:"type"`
				} `json:"flows"`
			}
			s.anon().do(t, "GET", login, nil).wantOKInto(t, &got)
			var types []string
			for _, f := range got.Flows {
				types = append(types, f.Type)
			}
			if !slices.Contains(types, "m.login.password") {
				t.Errorf("GET /login: got flow types %v; want m.login.password among them", types)
			}
		})

		fail := []struct {
			name    string
			body    map[string]any
			status  int
			errcode string
		}{
			{"wrong password", map[string]any{"type": "m.login.password", "user": "lara", "password": "Secret"}, 403, "M_FORBIDDEN"},
			{"empty password", map[string]any{"type": "m.login.password", "user": "lara", "password": ""}, 403, "M_FORBIDDEN"},
			{"unknown user", map[string]any{"type": "m.login.password", "user": "nobody", "password": "secret"}, 403, "M_FORBIDDEN"},
			{"user of another server", map[string]any{"type": "m.login.password", "user": "@lara:elsewhere.test", "password": "secret"}, 403, "M_FORBIDDEN"},
			{"invalid user ID", map[string]any{"type": "m.login.password", "user": "@lara", "password": "secret"}, 403, "M_FORBIDDEN"},
			{"unsupported login type", map[string]any{"type": "m.login.magic", "user": "lara", "password": "secret"}, 400, "M_UNKNOWN"},
			{"third-party identifier", map[string]any{"type": "m.login.password", "password": "secret",
				"identifier": map[string]string{"type": "m.id.thirdparty", "medium": "email", "address": "lara@example.com"}}, 400, "M_UNKNOWN"},
			{"no user", map[string]any{"type": "m.login.password", "password": "secret"}, 400, "M_MISSING_PARAM"},
		}
		for _, tc := range fail {
			t.Run(tc.name, func(t *testing.T) {
				s.anon().do(t, "POST", login, tc.body).wantErr(t, tc.status, tc.errcode)
			})
		}

		t.Run("device_id reuse", func(t *testing.T) {
			first := s.login(t, "lara", "secret", "device_id", "PHONE", "initial_device_display_name", "Old phone")
			if first.deviceID != "PHONE" {
				t.Fatalf("got device_id %q; want PHONE", first.deviceID)
			}
			second := s.login(t, "lara", "secret", "device_id", "PHONE", "initial_device_display_name", "New phone")
			if second.deviceID != "PHONE" {
				t.Errorf("second login: got device_id %q; want PHONE again", second.deviceID)
			}
			if second.token == first.token {
				t.Errorf("second login returned the same access token; want a new one")
			}
			second.whoami(t).wantOK(t)
			first.whoami(t).wantErr(t, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
			var list struct {
				Devices []struct {
					DeviceID    string `json:"device_id"`
					DisplayName string `json:"display_name"`
				} `json:"devices"`
			}
			second.do(t, "GET", v3+"/devices", nil).wantOKInto(t, &list)
			n := 0
			for _, d := range list.Devices {
				if d.DeviceID == "PHONE" {
					n++
					if d.DisplayName != "New phone" {
						t.Errorf("PHONE display_name: got %q; want New phone", d.DisplayName)
					}
				}
			}
			if n != 1 {
				t.Errorf("got %d devices named PHONE in %+v; want 1", n, list.Devices)
			}
		})

		t.Run("no refresh token unless asked", func(t *testing.T) {
			m := s.anon().do(t, "POST", login, map[string]any{"type": "m.login.password", "user": "lara", "password": "secret"}).wantOK(t)
			for _, k := range []string{"refresh_token", "expires_in_ms"} {
				if v, ok := m[k]; ok {
					t.Errorf("got %s %v; want none without refresh_token: true", k, v)
				}
			}
		})

		t.Run("refresh", func(t *testing.T) {
			refresh := func(t *testing.T, rt string) *response {
				t.Helper()
				return s.anon().do(t, "POST", v3+"/refresh", map[string]any{"refresh_token": rt})
			}
			wantExpires := func(t *testing.T, m map[string]any) {
				t.Helper()
				if got, _ := m["expires_in_ms"].(float64); int64(got) != lifetime.Milliseconds() {
					t.Errorf("got expires_in_ms %v; want %d", m["expires_in_ms"], lifetime.Milliseconds())
				}
			}
			m := s.anon().do(t, "POST", login, map[string]any{"type": "m.login.password", "user": "lara", "password": "secret",
				"refresh_token": true}).wantOK(t)
			wantExpires(t, m)
			a1, r1, dev := str(t, m, "access_token"), str(t, m, "refresh_token"), str(t, m, "device_id")

			m = refresh(t, r1).wantOK(t)
			wantExpires(t, m)
			a2, r2 := str(t, m, "access_token"), str(t, m, "refresh_token")
			if a2 == a1 || r2 == r1 {
				t.Errorf("refresh did not rotate: got access %t-new, refresh %t-new; want both new", a2 != a1, r2 != r1)
			}
			if who := s.as(a2).whoami(t).wantOK(t); who["device_id"] != dev {
				t.Errorf("refreshed token: got device %v; want %s", who["device_id"], dev)
			}
			// a2 has been used, so r1 is spent.
			rm := refresh(t, r1).wantErr(t, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
			if rm["soft_logout"] == true {
				t.Errorf("spent refresh token: got soft_logout true; want false or absent")
			}
			m = refresh(t, r2).wantOK(t)
			a3, r3 := str(t, m, "access_token"), str(t, m, "refresh_token")
			s.as(a3).whoami(t).wantOK(t)

			var expired *response
			eventually(t, lifetime+10*time.Second, "access token expiry", func() bool {
				expired = s.as(a3).whoami(t)
				return expired.status != http.StatusOK
			})
			em := expired.wantErr(t, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
			if em["soft_logout"] != true {
				t.Errorf("%s: got soft_logout %v; want true", expired, em["soft_logout"])
			}
			// Soft logout: the refresh token still gets a new access token for the same device.
			m = refresh(t, r3).wantOK(t)
			a4, r4 := str(t, m, "access_token"), str(t, m, "refresh_token")
			if who := s.as(a4).whoami(t).wantOK(t); who["device_id"] != dev {
				t.Errorf("after soft logout: got device %v; want %s", who["device_id"], dev)
			}
			// Logging out ends the refresh token too.
			s.as(a4).do(t, "POST", v3+"/logout", map[string]any{}).wantOK(t)
			refresh(t, r4).wantErr(t, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
		})
		t.Run("refresh with bad input", func(t *testing.T) {
			s.anon().do(t, "POST", v3+"/refresh", map[string]any{"refresh_token": "myr_nope"}).wantErr(t, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
			s.anon().do(t, "POST", v3+"/refresh", map[string]any{}).wantErr(t, http.StatusBadRequest, "M_MISSING_PARAM")
		})
	})
}
