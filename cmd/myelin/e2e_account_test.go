package main

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/internal/testkit"
)

// deviceIDs lists the device IDs of c's user.
func deviceIDs(t testing.TB, c *client) []string {
	t.Helper()
	var list struct {
		Devices []struct {
			DeviceID string `json:"device_id"`
		} `json:"devices"`
	}
	c.do(t, "GET", v3+"/devices", nil).wantOKInto(t, &list)
	var ids []string
	for _, d := range list.Devices {
		ids = append(ids, d.DeviceID)
	}
	slices.Sort(ids)
	return ids
}

// TestDevices covers listing, reading, renaming and deleting devices, with user-interactive
// auth where the spec asks for it, and logout.
func TestDevices(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b testkit.Backend) {
		s := startServer(t, b, serverOpts{})
		dana := s.register(t, "dana", "dana-pw", "device_id", "D1")
		eve := s.register(t, "eve", "eve-pw")
		d2 := s.login(t, "dana", "dana-pw", "device_id", "D2", "initial_device_display_name", "Phone")

		t.Run("list", func(t *testing.T) {
			var list struct {
				Devices []struct {
					DeviceID    string  `json:"device_id"`
					DisplayName *string `json:"display_name"`
					LastSeenIP  *string `json:"last_seen_ip"`
					LastSeenTS  *int64  `json:"last_seen_ts"`
				} `json:"devices"`
			}
			dana.do(t, "GET", v3+"/devices", nil).wantOKInto(t, &list)
			if len(list.Devices) != 2 {
				t.Fatalf("got %d devices; want 2 (D1, D2)", len(list.Devices))
			}
			for _, d := range list.Devices {
				switch d.DeviceID {
				case "D1":
				case "D2":
					if d.DisplayName == nil || *d.DisplayName != "Phone" {
						t.Errorf("D2 display_name: got %v; want Phone", d.DisplayName)
					}
				default:
					t.Errorf("unexpected device %q", d.DeviceID)
				}
				if d.LastSeenTS == nil || *d.LastSeenTS <= 0 {
					t.Errorf("%s last_seen_ts: got %v; want a timestamp", d.DeviceID, d.LastSeenTS)
				}
				if d.LastSeenIP == nil || *d.LastSeenIP != "127.0.0.1" {
					t.Errorf("%s last_seen_ip: got %v; want 127.0.0.1", d.DeviceID, d.LastSeenIP)
				}
			}
		})

		tests := []struct {
			name    string
			c       *client
			method  string
			device  string
			body    any
			status  int
			errcode string
		}{
			{"get own device", dana, "GET", "D2", nil, 200, ""},
			{"get unknown device", dana, "GET", "NOPE", nil, 404, "M_NOT_FOUND"},
			{"get another user's device", eve, "GET", "D2", nil, 404, "M_NOT_FOUND"},
			{"rename unknown device", dana, "PUT", "NOPE", map[string]any{"display_name": "x"}, 404, "M_NOT_FOUND"},
			{"rename another user's device", eve, "PUT", "D2", map[string]any{"display_name": "mine now"}, 404, "M_NOT_FOUND"},
			{"rename without a name", dana, "PUT", "D2", map[string]any{}, 200, ""},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				r := tc.c.do(t, tc.method, v3+"/devices/"+tc.device, tc.body)
				if tc.errcode != "" {
					r.wantErr(t, tc.status, tc.errcode)
					return
				}
				r.want(t, tc.status)
			})
		}
		t.Run("rename", func(t *testing.T) {
			dana.do(t, "PUT", v3+"/devices/D2", map[string]any{"display_name": "Tablet"}).wantOK(t)
			m := dana.do(t, "GET", v3+"/devices/D2", nil).wantOK(t)
			if m["device_id"] != "D2" || m["display_name"] != "Tablet" {
				t.Errorf("after rename: got %v; want device_id D2, display_name Tablet", m)
			}
		})

		del := v3 + "/devices/D2"
		t.Run("delete needs auth", func(t *testing.T) {
			r := dana.do(t, "DELETE", del, nil)
			wantChallenge(t, r, [][]string{{"m.login.password"}})
			if m := r.obj(t); m["errcode"] != nil {
				t.Errorf("got errcode %v; want none on a plain challenge", m["errcode"])
			}
			d2.whoami(t).wantOK(t)
		})
		t.Run("delete with wrong password", func(t *testing.T) {
			session := wantChallenge(t, dana.do(t, "DELETE", del, map[string]any{}), [][]string{{"m.login.password"}})
			r := dana.do(t, "DELETE", del, map[string]any{"auth": passwordAuth("dana", "wrong", session)})
			wantChallenge(t, r, [][]string{{"m.login.password"}})
			r.wantErr(t, http.StatusUnauthorized, "M_FORBIDDEN")
			d2.whoami(t).wantOK(t)
		})
		t.Run("delete with another user's credentials", func(t *testing.T) {
			session := wantChallenge(t, dana.do(t, "DELETE", del, map[string]any{}), [][]string{{"m.login.password"}})
			dana.do(t, "DELETE", del, map[string]any{"auth": passwordAuth("eve", "eve-pw", session)}).
				wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
			d2.whoami(t).wantOK(t)
		})
		t.Run("delete", func(t *testing.T) {
			session := wantChallenge(t, dana.do(t, "DELETE", del, map[string]any{}), [][]string{{"m.login.password"}})
			dana.do(t, "DELETE", del, map[string]any{"auth": passwordAuth("dana", "dana-pw", session)}).wantOK(t)
			d2.whoami(t).wantErr(t, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
			dana.do(t, "GET", del, nil).wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
			if got := deviceIDs(t, dana); !slices.Equal(got, []string{"D1"}) {
				t.Errorf("devices after delete: got %v; want [D1]", got)
			}
		})
		t.Run("delete another user's device", func(t *testing.T) {
			// dana authenticates as herself, naming eve's device: eve's device must survive.
			path := v3 + "/devices/" + eve.deviceID
			session := wantChallenge(t, dana.do(t, "DELETE", path, map[string]any{}), [][]string{{"m.login.password"}})
			r := dana.do(t, "DELETE", path, map[string]any{"auth": passwordAuth("dana", "dana-pw", session)})
			if r.status >= 500 {
				t.Fatalf("%s: got a server error", r)
			}
			eve.whoami(t).wantOK(t)
		})
		t.Run("auth session bound to its request", func(t *testing.T) {
			// A session begun to delete one device cannot authorise deleting another.
			d3 := s.login(t, "dana", "dana-pw", "device_id", "D3")
			session := wantChallenge(t, dana.do(t, "DELETE", v3+"/devices/D1", map[string]any{}), [][]string{{"m.login.password"}})
			r := dana.do(t, "DELETE", v3+"/devices/D3", map[string]any{"auth": passwordAuth("dana", "dana-pw", session)})
			if r.status == http.StatusOK {
				t.Errorf("%s: an auth session started for D1 deleted D3", r)
			}
			d3.whoami(t).wantOK(t)
			dana.whoami(t).wantOK(t)
		})

		authForms := []struct {
			name string
			auth map[string]any
		}{
			{"identifier with full user ID", map[string]any{"type": "m.login.password", "password": "dana-pw",
				"identifier": map[string]string{"type": "m.id.user", "user": userID("dana")}}},
			{"identifier in upper case", map[string]any{"type": "m.login.password", "password": "dana-pw",
				"identifier": map[string]string{"type": "m.id.user", "user": "DANA"}}},
			{"legacy user field", map[string]any{"type": "m.login.password", "password": "dana-pw", "user": "dana"}},
			{"no user: the requester", map[string]any{"type": "m.login.password", "password": "dana-pw"}},
		}
		for i, tc := range authForms {
			t.Run("password auth "+tc.name, func(t *testing.T) {
				dev := "FORM" + strconv.Itoa(i)
				victim := s.login(t, "dana", "dana-pw", "device_id", dev)
				dana.do(t, "DELETE", v3+"/devices/"+dev, map[string]any{"auth": tc.auth}).wantOK(t)
				victim.whoami(t).wantErr(t, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
			})
		}
		t.Run("device ID needing escapes", func(t *testing.T) {
			const odd = "my/dev ice+1%"
			c := s.login(t, "dana", "dana-pw", "device_id", odd)
			if c.deviceID != odd {
				t.Fatalf("got device_id %q; want %q", c.deviceID, odd)
			}
			path := v3 + "/devices/" + url.PathEscape(odd)
			if m := c.do(t, "GET", path, nil).wantOK(t); m["device_id"] != odd {
				t.Errorf("GET %s: got device_id %v; want %q", path, m["device_id"], odd)
			}
			c.do(t, "PUT", path, map[string]any{"display_name": "odd"}).wantOK(t)
			dana.do(t, "DELETE", path, map[string]any{"auth": passwordAuth("dana", "dana-pw", "")}).wantOK(t)
			c.whoami(t).wantErr(t, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
		})

		t.Run("delete_devices", func(t *testing.T) {
			d4 := s.login(t, "dana", "dana-pw", "device_id", "D4")
			d5 := s.login(t, "dana", "dana-pw", "device_id", "D5")
			path := v3 + "/delete_devices"
			dana.do(t, "POST", path, map[string]any{}).wantErr(t, http.StatusBadRequest, "M_MISSING_PARAM")
			body := map[string]any{"devices": []string{"D3", "D4", "D5", "NOT-A-DEVICE"}}
			session := wantChallenge(t, dana.do(t, "POST", path, body), [][]string{{"m.login.password"}})
			body["auth"] = passwordAuth("dana", "wrong", session)
			dana.do(t, "POST", path, body).wantErr(t, http.StatusUnauthorized, "M_FORBIDDEN")
			body["auth"] = passwordAuth("dana", "dana-pw", session)
			dana.do(t, "POST", path, body).wantOK(t)
			d4.whoami(t).wantErr(t, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
			d5.whoami(t).wantErr(t, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
			if got := deviceIDs(t, dana); !slices.Equal(got, []string{"D1"}) {
				t.Errorf("devices after delete_devices: got %v; want [D1]", got)
			}
		})
		t.Run("logout", func(t *testing.T) {
			d6 := s.login(t, "dana", "dana-pw", "device_id", "D6")
			d6.do(t, "POST", v3+"/logout", map[string]any{}).wantOK(t)
			d6.whoami(t).wantErr(t, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
			if got := deviceIDs(t, dana); !slices.Equal(got, []string{"D1"}) {
				t.Errorf("devices after logout: got %v; want [D1]", got)
			}
			d6.do(t, "POST", v3+"/logout", map[string]any{}).wantErr(t, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
		})
		t.Run("logout/all", func(t *testing.T) {
			d7 := s.login(t, "dana", "dana-pw", "device_id", "D7")
			d7.do(t, "POST", v3+"/logout/all", map[string]any{}).wantOK(t)
			d7.whoami(t).wantErr(t, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
			dana.whoami(t).wantErr(t, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
			eve.whoami(t).wantOK(t)
			again := s.login(t, "dana", "dana-pw")
			if got := deviceIDs(t, again); !slices.Equal(got, []string{again.deviceID}) {
				t.Errorf("devices after logout/all and a new login: got %v; want only %s", got, again.deviceID)
			}
		})
	})
}

// TestPassword covers changing the password, its length limit, and deactivation.
func TestPassword(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b testkit.Backend) {
		s := startServer(t, b, serverOpts{})
		path := v3 + "/account/password"
		pwFlows := [][]string{{"m.login.password"}}
		badLogin := func(t *testing.T, user, pw string) {
			t.Helper()
			s.anon().do(t, "POST", v3+"/login", map[string]any{"type": "m.login.password", "user": user, "password": pw}).
				wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
		}

		t.Run("change logs out other devices", func(t *testing.T) {
			main := s.register(t, "frank", "old-pw")
			other := s.login(t, "frank", "old-pw")
			session := wantChallenge(t, main.do(t, "POST", path, map[string]any{"new_password": "new-pw"}), pwFlows)
			main.do(t, "POST", path, map[string]any{"new_password": "new-pw", "auth": passwordAuth("frank", "wrong", session)}).
				wantErr(t, http.StatusUnauthorized, "M_FORBIDDEN")
			other.whoami(t).wantOK(t)
			main.do(t, "POST", path, map[string]any{"new_password": "new-pw", "auth": passwordAuth("frank", "old-pw", session)}).wantOK(t)
			main.whoami(t).wantOK(t)
			other.whoami(t).wantErr(t, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
			badLogin(t, "frank", "old-pw")
			s.login(t, "frank", "new-pw")
		})
		t.Run("logout_devices false keeps them", func(t *testing.T) {
			main := s.register(t, "gus", "old-pw")
			other := s.login(t, "gus", "old-pw")
			main.do(t, "POST", path, map[string]any{"new_password": "new-pw", "logout_devices": false,
				"auth": passwordAuth("gus", "old-pw", "")}).wantOK(t)
			main.whoami(t).wantOK(t)
			other.whoami(t).wantOK(t)
			badLogin(t, "gus", "old-pw")
			s.login(t, "gus", "new-pw")
		})
		t.Run("too long", func(t *testing.T) {
			main := s.register(t, "hal", "old-pw")
			for _, pw := range []string{strings.Repeat("x", 73), strings.Repeat("ü", 37)} {
				m := main.do(t, "POST", path, map[string]any{"new_password": pw, "auth": passwordAuth("hal", "old-pw", "")}).
					wantErr(t, http.StatusBadRequest, "M_WEAK_PASSWORD")
				if msg, _ := m["error"].(string); !strings.Contains(msg, "72") {
					t.Errorf("got error %q; want it to say the limit is 72 bytes", msg)
				}
			}
			s.login(t, "hal", "old-pw")
		})
		t.Run("another user's credentials", func(t *testing.T) {
			ida := s.register(t, "ida", "ida-pw")
			s.register(t, "jay", "jay-pw")
			ida.do(t, "POST", path, map[string]any{"new_password": "new-pw", "auth": passwordAuth("jay", "jay-pw", "")}).
				wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
			s.login(t, "ida", "ida-pw")
			s.login(t, "jay", "jay-pw")
		})

		t.Run("deactivate", func(t *testing.T) {
			gina := s.register(t, "gina", "gina-pw")
			other := s.login(t, "gina", "gina-pw")
			deact := v3 + "/account/deactivate"
			session := wantChallenge(t, gina.do(t, "POST", deact, nil), pwFlows)
			gina.do(t, "POST", deact, map[string]any{"auth": passwordAuth("gina", "wrong", session)}).
				wantErr(t, http.StatusUnauthorized, "M_FORBIDDEN")
			gina.whoami(t).wantOK(t)
			m := gina.do(t, "POST", deact, map[string]any{"auth": passwordAuth("gina", "gina-pw", session)}).wantOK(t)
			if m["id_server_unbind_result"] != "no-support" {
				t.Errorf("got id_server_unbind_result %v; want no-support", m["id_server_unbind_result"])
			}
			gina.whoami(t).wantErr(t, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
			other.whoami(t).wantErr(t, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
			s.anon().do(t, "POST", v3+"/login", map[string]any{"type": "m.login.password", "user": "gina", "password": "gina-pw"}).
				wantErr(t, http.StatusForbidden, "M_USER_DEACTIVATED")
			s.anon().do(t, "POST", v3+"/register", map[string]any{"username": "gina", "password": "pw",
				"auth": map[string]string{"type": "m.login.dummy"}}).wantErr(t, http.StatusBadRequest, "M_USER_IN_USE")
			s.anon().do(t, "GET", v3+"/register/available?username=gina", nil).wantErr(t, http.StatusBadRequest, "M_USER_IN_USE")
			if p := s.anon().do(t, "GET", v3+"/profile/"+userID("gina"), nil); p.status == http.StatusOK {
				if m := p.obj(t); m["displayname"] != nil || m["avatar_url"] != nil {
					t.Errorf("profile after deactivation: got %v; want it cleared", m)
				}
			}
		})
	})
}

// TestClientEndpoints covers the read-mostly endpoints on one server: profiles, account
// data, filters, capabilities, versions, CORS, health, metrics and /sync.
func TestClientEndpoints(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b testkit.Backend) {
		s := startServer(t, b, serverOpts{metrics: true})
		hank := s.register(t, "hank", "pw")
		ivy := s.register(t, "ivy", "pw")

		t.Run("profile", func(t *testing.T) {
			p := v3 + "/profile/" + hank.userID
			if m := s.anon().do(t, "GET", p, nil).wantOK(t); m["displayname"] != "hank" {
				t.Errorf("default displayname: got %v; want the localpart hank", m["displayname"])
			}
			hank.do(t, "PUT", p+"/displayname", map[string]any{"displayname": "Hank Hill"}).wantOK(t)
			hank.do(t, "PUT", p+"/avatar_url", map[string]any{"avatar_url": "mxc://hs1.test/abc"}).wantOK(t)
			if m := s.anon().do(t, "GET", p+"/displayname", nil).wantOK(t); !reflect.DeepEqual(m, map[string]any{"displayname": "Hank Hill"}) {
				t.Errorf("GET displayname: got %v; want {displayname: Hank Hill}", m)
			}
			if m := s.anon().do(t, "GET", p+"/avatar_url", nil).wantOK(t); !reflect.DeepEqual(m, map[string]any{"avatar_url": "mxc://hs1.test/abc"}) {
				t.Errorf("GET avatar_url: got %v; want {avatar_url: mxc://hs1.test/abc}", m)
			}
			if m := s.anon().do(t, "GET", p, nil).wantOK(t); m["displayname"] != "Hank Hill" || m["avatar_url"] != "mxc://hs1.test/abc" {
				t.Errorf("GET profile: got %v; want both fields set", m)
			}
			// Percent-encoded user IDs are decoded.
			if m := s.anon().do(t, "GET", v3+"/profile/"+url.PathEscape(hank.userID), nil).wantOK(t); m["displayname"] != "Hank Hill" {
				t.Errorf("GET profile by escaped ID: got %v", m)
			}
		})
		profileErrs := []struct {
			name         string
			c            *client
			method, path string
			body         any
			status       int
			errcode      string
		}{
			{"set another user's displayname", ivy, "PUT", "/profile/" + hank.userID + "/displayname", map[string]any{"displayname": "pwned"}, 403, "M_FORBIDDEN"},
			{"set another user's avatar", ivy, "PUT", "/profile/" + hank.userID + "/avatar_url", map[string]any{"avatar_url": "mxc://x/y"}, 403, "M_FORBIDDEN"},
			{"set without token", s.anon(), "PUT", "/profile/" + hank.userID + "/displayname", map[string]any{"displayname": "x"}, 401, "M_MISSING_TOKEN"},
			{"set without the field", hank, "PUT", "/profile/" + hank.userID + "/displayname", map[string]any{}, 400, "M_MISSING_PARAM"},
			{"unknown user", s.anon(), "GET", "/profile/" + userID("nobody"), nil, 404, "M_NOT_FOUND"},
			{"not a user ID", s.anon(), "GET", "/profile/nobody", nil, 400, "M_INVALID_PARAM"},
			{"unknown field", s.anon(), "GET", "/profile/" + hank.userID + "/status", nil, 404, "M_UNRECOGNIZED"},
		}
		for _, tc := range profileErrs {
			t.Run("profile "+tc.name, func(t *testing.T) {
				tc.c.do(t, tc.method, v3+tc.path, tc.body).wantErr(t, tc.status, tc.errcode)
			})
		}
		t.Run("profile unchanged by refused writes", func(t *testing.T) {
			if m := s.anon().do(t, "GET", v3+"/profile/"+hank.userID+"/displayname", nil).wantOK(t); m["displayname"] != "Hank Hill" {
				t.Errorf("got %v; want Hank Hill", m["displayname"])
			}
		})

		t.Run("account data", func(t *testing.T) {
			const room = "!room1:hs1.test"
			global := v3 + "/user/" + hank.userID + "/account_data/com.example.settings"
			inRoom := v3 + "/user/" + hank.userID + "/rooms/" + url.PathEscape(room) + "/account_data/com.example.settings"
			content := map[string]any{"theme": "dark", "n": 3.5, "list": []any{true, nil, "x"}, "nested": map[string]any{"a": "b"}}
			roomContent := map[string]any{"pinned": true}

			hank.do(t, "PUT", global, content).wantOK(t)
			hank.do(t, "PUT", inRoom, roomContent).wantOK(t)
			if got := hank.do(t, "GET", global, nil).wantOK(t); !reflect.DeepEqual(got, content) {
				t.Errorf("GET global account data: got %v; want the raw content %v", got, content)
			}
			if got := hank.do(t, "GET", inRoom, nil).wantOK(t); !reflect.DeepEqual(got, roomContent) {
				t.Errorf("GET room account data: got %v; want the raw content %v", got, roomContent)
			}
			// Overwrite.
			hank.do(t, "PUT", global, map[string]any{"theme": "light"}).wantOK(t)
			if got := hank.do(t, "GET", global, nil).wantOK(t); !reflect.DeepEqual(got, map[string]any{"theme": "light"}) {
				t.Errorf("GET after overwrite: got %v; want {theme: light}", got)
			}
			// Unescaped room ID in the path works too.
			if got := hank.do(t, "GET", v3+"/user/"+hank.userID+"/rooms/"+room+"/account_data/com.example.settings", nil).wantOK(t); !reflect.DeepEqual(got, roomContent) {
				t.Errorf("GET room account data, unescaped path: got %v; want %v", got, roomContent)
			}
		})
		acctErrs := []struct {
			name         string
			c            *client
			method, path string
			body         any
			status       int
			errcode      string
		}{
			{"unknown type", hank, "GET", "/user/" + hank.userID + "/account_data/com.example.none", nil, 404, "M_NOT_FOUND"},
			{"room data is not global", hank, "GET", "/user/" + hank.userID + "/rooms/!other:hs1.test/account_data/com.example.settings", nil, 404, "M_NOT_FOUND"},
			{"m.fully_read globally", hank, "PUT", "/user/" + hank.userID + "/account_data/m.fully_read", map[string]any{"event_id": "$x"}, 405, "M_BAD_JSON"},
			{"m.fully_read in a room", hank, "PUT", "/user/" + hank.userID + "/rooms/!room1:hs1.test/account_data/m.fully_read", map[string]any{"event_id": "$x"}, 405, "M_BAD_JSON"},
			{"read another user's", ivy, "GET", "/user/" + hank.userID + "/account_data/com.example.settings", nil, 403, "M_FORBIDDEN"},
			{"write another user's", ivy, "PUT", "/user/" + hank.userID + "/account_data/com.example.settings", map[string]any{"x": 1}, 403, "M_FORBIDDEN"},
			{"write another user's room data", ivy, "PUT", "/user/" + hank.userID + "/rooms/!room1:hs1.test/account_data/com.example.settings", map[string]any{"x": 1}, 403, "M_FORBIDDEN"},
			{"not a room ID", hank, "PUT", "/user/" + hank.userID + "/rooms/room1/account_data/com.example.settings", map[string]any{"x": 1}, 400, "M_INVALID_PARAM"},
			{"without token", s.anon(), "GET", "/user/" + hank.userID + "/account_data/com.example.settings", nil, 401, "M_MISSING_TOKEN"},
		}
		for _, tc := range acctErrs {
			t.Run("account data "+tc.name, func(t *testing.T) {
				tc.c.do(t, tc.method, v3+tc.path, tc.body).wantErr(t, tc.status, tc.errcode)
			})
		}

		t.Run("filter round-trip", func(t *testing.T) {
			filter := map[string]any{
				"event_fields": []any{"type", "content", "sender"},
				"event_format": "client",
				"presence":     map[string]any{"types": []any{"m.presence"}, "limit": 5.0},
				"account_data": map[string]any{"not_types": []any{"m.push_rules"}},
				"room": map[string]any{
					"rooms":    []any{"!room1:hs1.test"},
					"timeline": map[string]any{"limit": 10.0, "senders": []any{hank.userID}, "not_types": []any{"m.room.member"}},
					"state":    map[string]any{"lazy_load_members": true},
				},
			}
			id := str(t, hank.do(t, "POST", v3+"/user/"+hank.userID+"/filter", filter).wantOK(t), "filter_id")
			if got := hank.do(t, "GET", v3+"/user/"+hank.userID+"/filter/"+id, nil).wantOK(t); !reflect.DeepEqual(got, filter) {
				gotJSON, _ := json.Marshal(got)
				wantJSON, _ := json.Marshal(filter)
				t.Errorf("GET filter %s:\n got %s\nwant %s", id, gotJSON, wantJSON)
			}
			id2 := str(t, hank.do(t, "POST", v3+"/user/"+hank.userID+"/filter", map[string]any{}).wantOK(t), "filter_id")
			if id2 == id {
				t.Errorf("two filters got the same ID %q", id)
			}
			ivy.do(t, "GET", v3+"/user/"+hank.userID+"/filter/"+id, nil).wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
			ivy.do(t, "GET", v3+"/user/"+ivy.userID+"/filter/"+id, nil).wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
			// The stored filter works in /sync.
			hank.do(t, "GET", v3+"/sync?timeout=0&filter="+id, nil).wantOK(t)
		})
		badFilters := []struct {
			name, body string
		}{
			// Complement's TestFilter list.
			{"room ID not a room ID", `{"room":{"timeline":{"rooms":["not_a_room_id"]}}}`},
			{"sender not a user ID", `{"room":{"timeline":{"senders":["not_a_sender_id"]}}}`},
			{"presence not an object", `{"presence":"not_an_object"}`},
			{"type not a string", `{"room":{"timeline":{"types":[1]}}}`},
			// And a few more of the same kind.
			{"not_rooms not room IDs", `{"room":{"not_rooms":["nope"]}}`},
			{"negative limit", `{"room":{"timeline":{"limit":-1}}}`},
			{"unknown event_format", `{"event_format":"xml"}`},
		}
		for _, tc := range badFilters {
			t.Run("bad filter "+tc.name, func(t *testing.T) {
				hank.do(t, "POST", v3+"/user/"+hank.userID+"/filter", rawBody(tc.body)).wantErr(t, http.StatusBadRequest, "M_BAD_JSON")
			})
		}
		filterErrs := []struct {
			name         string
			c            *client
			method, path string
			body         any
			status       int
			errcode      string
		}{
			{"create for another user", ivy, "POST", "/user/" + hank.userID + "/filter", map[string]any{}, 403, "M_FORBIDDEN"},
			{"unknown ID", hank, "GET", "/user/" + hank.userID + "/filter/999999", nil, 404, "M_NOT_FOUND"},
			{"non-numeric ID", hank, "GET", "/user/" + hank.userID + "/filter/abc", nil, 404, "M_NOT_FOUND"},
			{"huge ID", hank, "GET", "/user/" + hank.userID + "/filter/99999999999999999999999", nil, 404, "M_NOT_FOUND"},
		}
		for _, tc := range filterErrs {
			t.Run("filter "+tc.name, func(t *testing.T) {
				tc.c.do(t, tc.method, v3+tc.path, tc.body).wantErr(t, tc.status, tc.errcode)
			})
		}

		t.Run("capabilities", func(t *testing.T) {
			s.anon().do(t, "GET", v3+"/capabilities", nil).wantErr(t, http.StatusUnauthorized, "M_MISSING_TOKEN")
			var caps struct {
				Capabilities struct {
					ChangePassword *struct {
						Enabled bool `json:"enabled"`
					} `json:"m.change_password"`
					RoomVersions *struct {
						Default   string            `json:"default"`
						Available map[string]string `json:"available"`
					} `json:"m.room_versions"`
				} `json:"capabilities"`
			}
			hank.do(t, "GET", v3+"/capabilities", nil).wantOKInto(t, &caps)
			if cp := caps.Capabilities.ChangePassword; cp == nil || !cp.Enabled {
				t.Errorf("m.change_password: got %+v; want enabled", cp)
			}
			rv := caps.Capabilities.RoomVersions
			if rv == nil {
				t.Fatalf("m.room_versions missing")
			}
			if rv.Default != "11" {
				t.Errorf("m.room_versions.default: got %q; want 11 (the config default)", rv.Default)
			}
			if rv.Available[rv.Default] != "stable" {
				t.Errorf("m.room_versions.available: got %v; want the default %q to be stable", rv.Available, rv.Default)
			}
		})
		t.Run("versions", func(t *testing.T) {
			var v struct {
				Versions         []string        `json:"versions"`
				UnstableFeatures map[string]bool `json:"unstable_features"`
			}
			s.anon().do(t, "GET", "/_matrix/client/versions", nil).wantOKInto(t, &v)
			valid := regexp.MustCompile(`^(r0\.\d+\.\d+|v1\.\d+)$`)
			for _, ver := range v.Versions {
				if !valid.MatchString(ver) {
					t.Errorf("version %q is not a spec version", ver)
				}
			}
			for _, want := range []string{"r0.6.1", "v1.1"} {
				if !slices.Contains(v.Versions, want) {
					t.Errorf("versions %v; want %s among them", v.Versions, want)
				}
			}
			if v.UnstableFeatures == nil {
				t.Errorf("unstable_features: got none; want an object")
			}
		})
		t.Run("CORS", func(t *testing.T) {
			for _, path := range []string{v3 + "/login", v3 + "/account/whoami", "/_matrix/client/versions", v3 + "/no/such/path"} {
				r := s.anon().do(t, "OPTIONS", path, nil, "Origin", "https://app.example", "Access-Control-Request-Method", "POST",
					"Access-Control-Request-Headers", "Authorization, Content-Type")
				if r.status != http.StatusOK {
					t.Errorf("OPTIONS %s: got %d; want 200", path, r.status)
				}
				if got := r.header.Get("Access-Control-Allow-Origin"); got != "*" {
					t.Errorf("OPTIONS %s: Access-Control-Allow-Origin %q; want *", path, got)
				}
				for _, h := range []string{"Authorization", "Content-Type"} {
					if got := r.header.Get("Access-Control-Allow-Headers"); !strings.Contains(got, h) {
						t.Errorf("OPTIONS %s: Access-Control-Allow-Headers %q; want %s", path, got, h)
					}
				}
				if got := r.header.Get("Access-Control-Allow-Methods"); !strings.Contains(got, "POST") || !strings.Contains(got, "PUT") {
					t.Errorf("OPTIONS %s: Access-Control-Allow-Methods %q; want POST and PUT", path, got)
				}
			}
			for _, r := range []*response{
				s.anon().do(t, "GET", "/_matrix/client/versions", nil, "Origin", "https://app.example"),
				s.anon().do(t, "GET", v3+"/account/whoami", nil, "Origin", "https://app.example"),
			} {
				if got := r.header.Get("Access-Control-Allow-Origin"); got != "*" {
					t.Errorf("%s: Access-Control-Allow-Origin %q; want *", r, got)
				}
			}
		})
		t.Run("health", func(t *testing.T) {
			if m := s.anon().do(t, "GET", "/health", nil).wantOK(t); m["status"] != "ok" {
				t.Errorf("/health: got %v; want status ok", m)
			}
		})
		t.Run("metrics", func(t *testing.T) {
			const series = `myelin_http_requests_total{code="200",method="GET",route="/_matrix/client/{apiVersion:(?:r0|v3)}/account/whoami"}`
			before := metricValue(t, s, series)
			for range 3 {
				hank.whoami(t).wantOK(t)
			}
			if after := metricValue(t, s, series); after != before+3 {
				t.Errorf("%s: got %v after 3 more whoami; want %v", series, after, before+3)
			}
		})
		t.Run("sync", func(t *testing.T) {
			r := hank.do(t, "GET", v3+"/sync?timeout=0", nil)
			str(t, r.wantOK(t), "next_batch")
			s.as("myt_nope").do(t, "GET", v3+"/sync?timeout=0", nil).wantErr(t, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
			s.anon().do(t, "GET", v3+"/sync?timeout=0", nil).wantErr(t, http.StatusUnauthorized, "M_MISSING_TOKEN")
		})
	})
}

// metricValue returns the value of one series on /metrics (0 when it is not there yet).
func metricValue(t testing.TB, s *server, series string) float64 {
	t.Helper()
	r := s.anon().do(t, "GET", "/metrics", nil)
	if r.status != http.StatusOK {
		t.Fatalf("%s: got %d; want 200", r, r.status)
	}
	sc := bufio.NewScanner(strings.NewReader(string(r.body)))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("parsing %q: %v", sc.Text(), err)
			}
			return f
		}
	}
	return 0
}

// TestRateLimit checks that with a threshold of 2 and a long cool-off the third quick
// login or registration from one address is refused, and that /metrics is off by default.
func TestRateLimit(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b testkit.Backend) {
		s := startServer(t, b, serverOpts{rateLimit: &rateLimit{threshold: 2, cooloffMS: 600_000}})
		tests := []struct {
			name, path string
			body       map[string]any
			first      int // the status of the first two requests
		}{
			{"login", v3 + "/login", map[string]any{"type": "m.login.password", "user": "nobody", "password": "x"}, 403},
			{"register", v3 + "/register", map[string]any{}, 401},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				for i := range 2 {
					if r := s.anon().do(t, "POST", tc.path, tc.body); r.status != tc.first {
						t.Fatalf("request %d: %s: got %d; want %d", i+1, r, r.status, tc.first)
					}
				}
				m := s.anon().do(t, "POST", tc.path, tc.body).wantErr(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
				retry, ok := m["retry_after_ms"].(float64)
				if !ok || retry <= 0 || retry > 600_001 || retry != float64(int64(retry)) {
					t.Errorf("got retry_after_ms %v; want a whole number of ms in (0, 600001]", m["retry_after_ms"])
				}
			})
		}
		t.Run("other endpoints unaffected", func(t *testing.T) {
			s.anon().do(t, "GET", "/_matrix/client/versions", nil).wantOK(t)
			s.anon().do(t, "GET", v3+"/login", nil).wantOK(t)
		})
		t.Run("metrics disabled", func(t *testing.T) {
			s.anon().do(t, "GET", "/metrics", nil).wantErr(t, http.StatusNotFound, "M_UNRECOGNIZED")
		})
	})
}

// TestTokensStoredHashed checks that access and refresh tokens are stored only as SHA-256
// hashes and passwords only as bcrypt hashes.
func TestTokensStoredHashed(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b testkit.Backend) {
		s := startServer(t, b, serverOpts{accessTokenLifetime: "1h"})
		s.register(t, "kate", "kate-password")
		m := s.anon().do(t, "POST", v3+"/login", map[string]any{"type": "m.login.password", "user": "kate",
			"password": "kate-password", "refresh_token": true}).wantOK(t)
		access, refresh := str(t, m, "access_token"), str(t, m, "refresh_token")
		db := s.openDB(t)

		tests := []struct {
			table, token string
		}{
			{"access_tokens", access},
			{"refresh_tokens", refresh},
		}
		for _, tc := range tests {
			t.Run(tc.table, func(t *testing.T) {
				sum := sha256.Sum256([]byte(tc.token))
				hash := hex.EncodeToString(sum[:])
				rows, err := db.Query(`SELECT * FROM ` + tc.table)
				if err != nil {
					t.Fatalf("reading %s: %v", tc.table, err)
				}
				defer rows.Close()
				cols, _ := rows.Columns()
				foundHash := false
				for rows.Next() {
					vals := make([]any, len(cols))
					ptrs := make([]any, len(cols))
					for i := range vals {
						ptrs[i] = &vals[i]
					}
					if err := rows.Scan(ptrs...); err != nil {
						t.Fatalf("scanning %s: %v", tc.table, err)
					}
					for i, v := range vals {
						var cell string
						switch v := v.(type) {
						case string:
							cell = v
						case []byte:
							cell = string(v)
						default:
							continue
						}
						if strings.Contains(cell, tc.token) {
							t.Errorf("%s.%s holds the token itself; want only its hash", tc.table, cols[i])
						}
						if cell == hash {
							foundHash = true
						}
					}
				}
				if err := rows.Err(); err != nil {
					t.Fatalf("reading %s: %v", tc.table, err)
				}
				if !foundHash {
					t.Errorf("%s holds no row with the token's SHA-256 %s", tc.table, hash)
				}
			})
		}
		t.Run("password", func(t *testing.T) {
			var hashes []string
			rows, err := db.Query(`SELECT password_hash FROM accounts`)
			if err != nil {
				t.Fatalf("reading accounts: %v", err)
			}
			defer rows.Close()
			for rows.Next() {
				var h string
				if err := rows.Scan(&h); err != nil {
					t.Fatal(err)
				}
				hashes = append(hashes, h)
			}
			if len(hashes) != 1 {
				t.Fatalf("got %d password hashes; want 1", len(hashes))
			}
			if h := hashes[0]; !strings.HasPrefix(h, "$2a$04$") && !strings.HasPrefix(h, "$2b$04$") || strings.Contains(h, "kate-password") {
				t.Errorf("password_hash %q; want a bcrypt hash of cost 4 (user_api.bcrypt_cost)", h)
			}
		})
	})
}

// TestGeneratedKeyServed checks that a key from `myelinctl generate-keys` is the one myelin
// serves and signs its key response with.
func TestGeneratedKeyServed(t *testing.T) {
	t.Parallel()
	b := testkit.Backends(t)[0] // SQLite: the key does not depend on the database
	keyPath := filepath.Join(t.TempDir(), "keys", "matrix_key.pem")
	_, ctl := binaries(t)
	out, err := runCmd(ctl, "generate-keys", "--out", keyPath)
	if err != nil {
		t.Fatalf("myelinctl generate-keys: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(raw)
	if blk == nil || blk.Type != "MATRIX PRIVATE KEY" || len(blk.Bytes) != ed25519.SeedSize {
		t.Fatalf("generated key: got PEM block %+v; want a MATRIX PRIVATE KEY with a 32-byte seed", blk)
	}
	keyID := blk.Headers["Key-ID"]
	if !strings.HasPrefix(keyID, "ed25519:") {
		t.Fatalf("generated key: Key-ID %q; want ed25519:…", keyID)
	}
	if !strings.Contains(out, keyID) {
		t.Errorf("myelinctl output %q; want it to name the key ID %s", out, keyID)
	}
	pub := ed25519.NewKeyFromSeed(blk.Bytes).Public().(ed25519.PublicKey)

	s := startServer(t, b, serverOpts{privateKey: keyPath})
	var keys struct {
		ServerName string `json:"server_name"`
		VerifyKeys map[string]struct {
			Key string `json:"key"`
		} `json:"verify_keys"`
		Signatures map[string]map[string]string `json:"signatures"`
	}
	r := s.anon().do(t, "GET", "/_matrix/key/v2/server", nil)
	r.wantOK(t)
	r.decode(t, &keys)
	if len(keys.VerifyKeys) != 1 {
		t.Fatalf("verify_keys: got %v; want only %s", keys.VerifyKeys, keyID)
	}
	if got, want := keys.VerifyKeys[keyID].Key, base64.RawStdEncoding.EncodeToString(pub); got != want {
		t.Errorf("verify_keys[%s].key: got %q; want %q", keyID, got, want)
	}
	sig, err := base64.RawStdEncoding.DecodeString(keys.Signatures[serverName][keyID])
	if err != nil || len(sig) != ed25519.SignatureSize {
		t.Fatalf("signatures[%s][%s]: got %q; want an ed25519 signature", serverName, keyID, keys.Signatures[serverName][keyID])
	}
	// The signature covers the canonical JSON of the response without signatures (and
	// unsigned). encoding/json of a map sorts keys and writes no spaces, which is canonical
	// for this response (ASCII only; numbers kept as written by UseNumber).
	var whole map[string]any
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.UseNumber()
	if err := dec.Decode(&whole); err != nil {
		t.Fatal(err)
	}
	delete(whole, "signatures")
	delete(whole, "unsigned")
	canon, _ := json.Marshal(whole)
	if !ed25519.Verify(pub, canon, sig) {
		t.Errorf("the key response's signature does not verify with the generated key")
	}
}
