package syncapi_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/bus"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/syncapi"
	"github.com/myelin-chat/myelin/userapi"
)

const (
	alice = "@alice:test.local"
	bob   = "@bob:test.local"
	carol = "@carol:test.local"
)

// env is a sync API over a real roomserver and userapi, served by httptest. Requests
// authenticate as "Bearer <user ID>".
type env struct {
	t     *testing.T
	rooms *roomserver.Service
	users *userapi.Service
	srv   *httptest.Server
}

func newEnv(t *testing.T, db *sqldb.DB) *env {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	_, priv, err := ed25519.GenerateKey(nil)
	testkit.Must(t, err, "generating key")
	roomEvents, accountData := bus.NewStream(0), bus.NewStream(0)
	users, err := userapi.New(userapi.Config{ServerName: "test.local", BCryptCost: 4}, db, accountData, log)
	testkit.Must(t, err, "starting userapi")
	rooms, err := roomserver.New(roomserver.Config{ServerName: "test.local", KeyID: "ed25519:test", PrivateKey: priv}, db, roomEvents, log)
	testkit.Must(t, err, "starting roomserver")
	auth := func(r *http.Request) (*userapi.Device, error) {
		user, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			return nil, matrix.Errorf(http.StatusUnauthorized, matrix.CodeMissingToken, "no token")
		}
		return &userapi.Device{UserID: user, DeviceID: "DEV"}, nil
	}
	s, err := syncapi.New(db, rooms, users, auth, syncapi.Streams{Rooms: roomEvents, AccountData: accountData}, log)
	testkit.Must(t, err, "starting syncapi")
	router := httpx.NewRouter()
	s.Register(router)
	srv := httptest.NewServer(router)
	t.Cleanup(func() {
		srv.Close()
		s.Close()
	})
	return &env{t: t, rooms: rooms, users: users, srv: srv}
}

// do sends a request as user and decodes the JSON answer, failing the test unless the status
// is want.
func (e *env) do(user, method, path string, body any, want int) map[string]any {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = strings.NewReader(string(b))
	}
	req, _ := http.NewRequest(method, e.srv.URL+path, rd)
	req.Header.Set("Authorization", "Bearer "+user)
	resp, err := http.DefaultClient.Do(req)
	testkit.Must(e.t, err, "%s %s", method, path)
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode != want {
		e.t.Fatalf("%s %s: got %d %v; want %d", method, path, resp.StatusCode, out, want)
	}
	return out
}

// sync runs /sync as user with the given query parameters.
func (e *env) sync(user string, q url.Values) syncResp {
	e.t.Helper()
	if q.Get("timeout") == "" {
		q.Set("timeout", "0")
	}
	return syncResp(e.do(user, http.MethodGet, "/_matrix/client/v3/sync?"+q.Encode(), nil, http.StatusOK))
}

// trySync is sync for goroutines other than the test's, which must not call t.Fatal.
func (e *env) trySync(user string, q url.Values) (syncResp, error) {
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/_matrix/client/v3/sync?"+q.Encode(), nil)
	req.Header.Set("Authorization", "Bearer "+user)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out syncResp
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("sync: got %d %v", resp.StatusCode, out)
	}
	return out, nil
}

func since(tok string) url.Values { return url.Values{"since": {tok}} }

type syncResp map[string]any

func (r syncResp) next() string { return r["next_batch"].(string) }

// get walks a path of object keys.
func (r syncResp) get(path ...string) any {
	var cur any = map[string]any(r)
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[p]
	}
	return cur
}

// events returns the events at path.
func (r syncResp) events(path ...string) []map[string]any {
	l, _ := r.get(append(path, "events")...).([]any)
	out := make([]map[string]any, 0, len(l))
	for _, e := range l {
		out = append(out, e.(map[string]any))
	}
	return out
}

func hasEvent(evs []map[string]any, evType, stateKey string) bool {
	for _, e := range evs {
		if e["type"] == evType && (stateKey == "*" || e["state_key"] == stateKey) {
			return true
		}
	}
	return false
}

func raw(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

func ptr(s string) *string { return &s }

func createRoom(t *testing.T, rooms *roomserver.Service, creator string) string {
	t.Helper()
	id, err := rooms.CreateRoom(context.Background(), roomserver.CreateRoomRequest{
		Creator: creator, RoomVersion: "10",
		Initial: []roomserver.Fledgling{
			{Type: "m.room.member", StateKey: ptr(creator), Content: raw(map[string]string{"membership": "join"})},
			{Type: "m.room.power_levels", StateKey: ptr(""), Content: raw(map[string]any{"users": map[string]int{creator: 100}})},
			{Type: "m.room.join_rules", StateKey: ptr(""), Content: raw(map[string]string{"join_rule": "public"})},
			{Type: "m.room.history_visibility", StateKey: ptr(""), Content: raw(map[string]string{"history_visibility": "shared"})},
		},
	})
	testkit.Must(t, err, "creating room")
	return id
}

func send(t *testing.T, rooms *roomserver.Service, roomID, sender, evType string, stateKey *string, content any) string {
	t.Helper()
	id, err := rooms.Send(context.Background(), roomserver.SendRequest{
		RoomID: roomID, Sender: sender, Type: evType, StateKey: stateKey, Content: raw(content),
	})
	testkit.Must(t, err, "sending %s", evType)
	return id
}

func member(t *testing.T, rooms *roomserver.Service, roomID, user string, content map[string]any) string {
	t.Helper()
	return send(t, rooms, roomID, user, "m.room.member", ptr(user), content)
}

func TestSyncRoundTrip(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		e := newEnv(t, db)
		roomID := createRoom(t, e.rooms, alice)
		room := []string{"rooms", "join", roomID}

		// An initial sync holds the room with its whole state.
		first := e.sync(alice, url.Values{})
		if !hasEvent(append(first.events(append(room, "state")...), first.events(append(room, "timeline")...)...), "m.room.create", "") {
			t.Fatalf("initial sync: no m.room.create in state or timeline: %v", first.get(room...))
		}
		bobStart := e.sync(bob, url.Values{}).next()
		carolStart := e.sync(carol, url.Values{}).next()

		// A long-poll wakes when something arrives for the user, well before its timeout.
		// (It may first return bob's presence, which arrives with his join.)
		type result struct {
			r       syncResp
			elapsed time.Duration
		}
		done := make(chan result, 1)
		go func() {
			start := time.Now()
			tok := first.next()
			for time.Since(start) < 15*time.Second {
				q := since(tok)
				q.Set("timeout", "20000")
				r, err := e.trySync(alice, q)
				if err != nil {
					break
				}
				if hasEvent(r.events(append(room, "timeline")...), "m.room.member", bob) {
					done <- result{r, time.Since(start)}
					return
				}
				tok = r.next()
			}
			done <- result{}
		}()
		member(t, e.rooms, roomID, bob, map[string]any{"membership": "join"})
		msg := send(t, e.rooms, roomID, bob, "m.room.message", nil, map[string]string{"body": "hi"})
		got := <-done
		if got.r == nil {
			t.Fatalf("incremental sync: bob's join never arrived")
		}
		if got.elapsed > 10*time.Second {
			t.Errorf("the long-poll took %v", got.elapsed)
		}

		// Bob's real join gives him the whole state; his profile change later does not.
		bobJoin := e.sync(bob, since(bobStart))
		bobRoom := bobJoin.get("rooms", "join", roomID)
		if bobRoom == nil {
			t.Fatalf("bob's sync after joining: room missing: %v", bobJoin)
		}
		all := append(bobJoin.events("rooms", "join", roomID, "state"), bobJoin.events("rooms", "join", roomID, "timeline")...)
		if !hasEvent(all, "m.room.create", "") {
			t.Errorf("newly joined room without full state: %v", bobRoom)
		}
		bobTok := bobJoin.next()
		member(t, e.rooms, roomID, bob, map[string]any{"membership": "join", "displayname": "Bobby"})
		profile := e.sync(bob, since(bobTok))
		if st := profile.events("rooms", "join", roomID, "state"); len(st) != 0 {
			t.Errorf("a profile change was synced as a new join: state %v", st)
		}
		if !hasEvent(profile.events("rooms", "join", roomID, "timeline"), "m.room.member", bob) {
			t.Errorf("profile change missing from the timeline: %v", profile.get("rooms", "join", roomID))
		}
		bobTok = profile.next()

		// Typing reaches room members only.
		e.do(alice, http.MethodPut, "/_matrix/client/v3/rooms/"+roomID+"/typing/"+alice, map[string]any{"typing": true, "timeout": 30000}, http.StatusOK)
		typing := e.sync(bob, since(bobTok))
		eph := typing.events("rooms", "join", roomID, "ephemeral")
		if len(eph) != 1 || eph[0]["type"] != "m.typing" || fmt.Sprint(eph[0]["content"]) != "map[user_ids:["+alice+"]]" {
			t.Errorf("typing: got ephemeral %v; want alice typing", eph)
		}
		q := since(carolStart)
		q.Set("timeout", "200")
		if r := e.sync(carol, q); r.get("rooms", "join", roomID) != nil {
			t.Errorf("typing leaked to a non-member: %v", r)
		}
		e.do(carol, http.MethodPut, "/_matrix/client/v3/rooms/"+roomID+"/typing/"+carol, map[string]any{"typing": true}, http.StatusForbidden)
		e.do(alice, http.MethodPut, "/_matrix/client/v3/rooms/"+roomID+"/typing/"+bob, map[string]any{"typing": true}, http.StatusForbidden)
		bobTok = typing.next()

		// Receipts: public ones reach everyone, private ones only their owner.
		e.do(alice, http.MethodPost, "/_matrix/client/v3/rooms/"+roomID+"/receipt/m.read/"+url.PathEscape(msg), map[string]any{}, http.StatusOK)
		e.do(bob, http.MethodPost, "/_matrix/client/v3/rooms/"+roomID+"/receipt/m.read.private/"+url.PathEscape(msg), map[string]any{}, http.StatusOK)
		e.do(bob, http.MethodPost, "/_matrix/client/v3/rooms/"+roomID+"/receipt/m.bogus/"+url.PathEscape(msg), map[string]any{}, http.StatusBadRequest)
		for _, c := range []struct {
			user        string
			wantPrivate bool
		}{{alice, false}, {bob, true}} {
			r := e.sync(c.user, url.Values{})
			var content map[string]any
			for _, ev := range r.events("rooms", "join", roomID, "ephemeral") {
				if ev["type"] == "m.receipt" {
					content, _ = ev["content"].(map[string]any)
				}
			}
			byType, _ := content[msg].(map[string]any)
			if byType["m.read"] == nil {
				t.Errorf("%s: no public receipt in %v", c.user, content)
			}
			if got := byType["m.read.private"] != nil; got != c.wantPrivate {
				t.Errorf("%s: private receipt present = %v; want %v (%v)", c.user, got, c.wantPrivate, content)
			}
		}

		// Presence reaches users sharing a room.
		e.do(alice, http.MethodPut, "/_matrix/client/v3/presence/"+alice+"/status", map[string]any{"presence": "unavailable", "status_msg": "away"}, http.StatusOK)
		pr := e.sync(bob, since(bobTok))
		found := false
		for _, ev := range pr.events("presence") {
			c, _ := ev["content"].(map[string]any)
			if ev["sender"] == alice && c["presence"] == "unavailable" && c["status_msg"] == "away" {
				found = true
			}
		}
		if !found {
			t.Errorf("alice's presence missing from bob's sync: %v", pr["presence"])
		}
		if got := e.do(bob, http.MethodGet, "/_matrix/client/v3/presence/"+alice+"/status", nil, http.StatusOK); got["presence"] != "unavailable" {
			t.Errorf("GET presence: got %v", got)
		}
		e.do(carol, http.MethodGet, "/_matrix/client/v3/presence/"+alice+"/status", nil, http.StatusForbidden)
		bobTok = pr.next()

		// Leaving ends bob's view of the room at his leave.
		e.do(bob, http.MethodPost, "/_matrix/client/v3/rooms/"+roomID+"/forget", map[string]any{}, http.StatusBadRequest)
		member(t, e.rooms, roomID, bob, map[string]any{"membership": "leave"})
		after := send(t, e.rooms, roomID, alice, "m.room.message", nil, map[string]string{"body": "after bob left"})
		left := e.sync(bob, since(bobTok))
		tl := left.events("rooms", "leave", roomID, "timeline")
		if len(tl) == 0 || tl[len(tl)-1]["type"] != "m.room.member" {
			t.Fatalf("leave section: timeline %v does not end at the leave", tl)
		}
		for _, ev := range tl {
			if ev["event_id"] == after {
				t.Errorf("leave section holds an event from after the leave")
			}
		}
		includeLeave := url.Values{"filter": {`{"room":{"include_leave":true}}`}}
		if r := e.sync(bob, includeLeave); r.get("rooms", "leave", roomID) == nil {
			t.Errorf("include_leave: left room missing")
		}
		e.do(bob, http.MethodPost, "/_matrix/client/v3/rooms/"+roomID+"/forget", map[string]any{}, http.StatusOK)
		if r := e.sync(bob, includeLeave); r.get("rooms", "leave", roomID) != nil {
			t.Errorf("include_leave: forgotten room still listed")
		}
	})
}

func TestSyncFilters(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		e := newEnv(t, db)
		roomID := createRoom(t, e.rooms, alice)
		for i := range 5 {
			send(t, e.rooms, roomID, alice, "m.room.message", nil, map[string]string{"body": fmt.Sprint(i)})
		}
		send(t, e.rooms, roomID, alice, "x.custom", nil, map[string]string{})
		for _, c := range []struct {
			name        string
			filter      string
			wantTypes   string
			wantLimited bool
		}{
			{"limit", `{"room":{"timeline":{"limit":2}}}`, "[m.room.message x.custom]", true},
			{"types", `{"room":{"timeline":{"limit":3,"types":["m.room.message"]}}}`, "[m.room.message m.room.message m.room.message]", true},
			{"not_types wildcard", `{"room":{"timeline":{"limit":50,"not_types":["m.room.*"]}}}`, "[x.custom]", false},
			{"not_rooms", `{"room":{"not_rooms":["` + roomID + `"]}}`, "", false},
		} {
			t.Run(c.name, func(t *testing.T) {
				r := e.sync(alice, url.Values{"filter": {c.filter}})
				if c.wantTypes == "" {
					if r.get("rooms", "join", roomID) != nil {
						t.Fatalf("room present despite the filter")
					}
					return
				}
				var types []string
				for _, ev := range r.events("rooms", "join", roomID, "timeline") {
					types = append(types, ev["type"].(string))
				}
				if fmt.Sprint(types) != c.wantTypes {
					t.Errorf("timeline types: got %v; want %v", types, c.wantTypes)
				}
				if got := r.get("rooms", "join", roomID, "timeline", "limited"); got != c.wantLimited {
					t.Errorf("limited: got %v; want %v", got, c.wantLimited)
				}
			})
		}
		// use_state_after: the state at the end of the timeline, lazy-loaded members included
		// even though their events are in the timeline.
		r := e.sync(alice, url.Values{"use_state_after": {"true"}, "filter": {`{"room":{"timeline":{"limit":20},"state":{"lazy_load_members":true}}}`}})
		sa := r.events("rooms", "join", roomID, "state_after")
		if !hasEvent(sa, "m.room.member", alice) || !hasEvent(sa, "m.room.create", "") {
			t.Errorf("state_after: got %v; want the create event and alice's membership", sa)
		}
		if r.get("rooms", "join", roomID, "state") != nil {
			t.Errorf("state present beside state_after")
		}
	})
}
