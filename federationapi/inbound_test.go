package federationapi

import (
	"bytes"
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

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/sjson"

	"github.com/myelin-chat/myelin/internal/bus"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/serverkey"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/userapi"
)

const (
	ourName    = "hs.test"
	remoteName = "remote.test"
	alice      = "@alice:hs.test"
	charlie    = "@charlie:remote.test"
)

// staticKeys is a key database holding fixed keys: the test's key ring.
type staticKeys map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult

func (k staticKeys) FetcherName() string { return "static test keys" }

func (k staticKeys) FetchKeys(_ context.Context, reqs map[gomatrixserverlib.PublicKeyLookupRequest]spec.Timestamp) (map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult, error) {
	out := map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult{}
	for r := range reqs {
		if v, ok := k[r]; ok {
			out[r] = v
		}
	}
	return out, nil
}

func (k staticKeys) StoreKeys(context.Context, map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult) error {
	return nil
}

func (k staticKeys) add(server string, key serverkey.Key) {
	k[gomatrixserverlib.PublicKeyLookupRequest{ServerName: spec.ServerName(server), KeyID: gomatrixserverlib.KeyID(key.ID)}] =
		gomatrixserverlib.PublicKeyLookupResult{
			VerifyKey:    gomatrixserverlib.VerifyKey{Key: spec.Base64Bytes(key.Public())},
			ValidUntilTS: spec.AsTimestamp(time.Now().Add(24 * time.Hour)), ExpiredTS: gomatrixserverlib.PublicKeyNotExpired,
		}
}

func newKey(t *testing.T, id string) serverkey.Key {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(nil)
	testkit.Must(t, err, "generating key")
	return serverkey.Key{ID: id, Private: priv}
}

// fixture is a Myelin federation API over real components, and a remote server's key.
type fixture struct {
	t         *testing.T
	srv       *httptest.Server
	rooms     *roomserver.Service
	remoteKey serverkey.Key
	ring      *gomatrixserverlib.KeyRing
	room      string
}

func newFixture(t *testing.T, db *sqldb.DB) *fixture {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	ourKey, remoteKey := newKey(t, "ed25519:ours"), newKey(t, "ed25519:remote")
	keys := staticKeys{}
	keys.add(ourName, ourKey)
	keys.add(remoteName, remoteKey)
	ring := &gomatrixserverlib.KeyRing{KeyDatabase: keys}
	users, err := userapi.New(userapi.Config{ServerName: ourName, BCryptCost: 4}, db, bus.NewStream(0), log)
	testkit.Must(t, err, "starting userapi")
	_, err = users.CreateAccount(ctx, userapi.NewAccount{Localpart: "alice", DisplayName: "Alice"})
	testkit.Must(t, err, "creating alice")
	rooms, err := roomserver.New(roomserver.Config{ServerName: ourName, KeyID: gomatrixserverlib.KeyID(ourKey.ID), PrivateKey: ourKey.Private},
		db, bus.NewStream(0), log)
	testkit.Must(t, err, "starting roomserver")
	in, err := NewInbound(Config{ServerName: ourName, Key: ourKey}, Deps{DB: db, KeyRing: ring, Rooms: rooms, Users: users, Log: log})
	testkit.Must(t, err, "starting inbound federation")
	r := httpx.NewRouter()
	in.Register(r)
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	room, err := rooms.CreateRoom(ctx, roomserver.CreateRoomRequest{Creator: alice, RoomVersion: "10", Initial: []roomserver.Fledgling{
		{Type: spec.MRoomMember, StateKey: ptr(alice), Content: raw(map[string]string{"membership": "join"})},
		{Type: spec.MRoomPowerLevels, StateKey: ptr(""), Content: raw(map[string]any{"users": map[string]int{alice: 100}})},
		{Type: spec.MRoomJoinRules, StateKey: ptr(""), Content: raw(map[string]string{"join_rule": "public"})},
		{Type: spec.MRoomHistoryVisibility, StateKey: ptr(""), Content: raw(map[string]string{"history_visibility": "shared"})},
	}})
	testkit.Must(t, err, "creating room")
	return &fixture{t: t, srv: srv, rooms: rooms, remoteKey: remoteKey, ring: ring, room: room}
}

func ptr(s string) *string { return &s }

func raw(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

// do sends a federation request signed by origin with key (nil content: no body).
func (f *fixture) do(method, origin string, key serverkey.Key, dest, path string, content any) (int, []byte) {
	f.t.Helper()
	req := fclient.NewFederationRequest(method, spec.ServerName(origin), spec.ServerName(dest), path)
	if content != nil {
		testkit.Must(f.t, req.SetContent(content), "setting content")
	}
	testkit.Must(f.t, req.Sign(spec.ServerName(origin), gomatrixserverlib.KeyID(key.ID), key.Private), "signing")
	hr, err := req.HTTPRequest()
	testkit.Must(f.t, err, "building request")
	u, _ := url.Parse(f.srv.URL)
	hr.URL.Scheme, hr.URL.Host, hr.Host = u.Scheme, u.Host, u.Host
	hr.RequestURI = ""
	resp, err := http.DefaultClient.Do(hr)
	testkit.Must(f.t, err, "sending %s %s", method, path)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// remote sends a request from the remote server, properly signed.
func (f *fixture) remote(method, path string, content any) (int, []byte) {
	return f.do(method, remoteName, f.remoteKey, ourName, path, content)
}

// join makes charlie join the room through make_join and send_join v2, and returns the
// send_join response.
func (f *fixture) join() (gomatrixserverlib.PDU, fclient.RespSendJoin) {
	f.t.Helper()
	code, body := f.remote("GET", "/_matrix/federation/v1/make_join/"+url.PathEscape(f.room)+"/"+url.PathEscape(charlie)+"?ver=10", nil)
	if code != 200 {
		f.t.Fatalf("make_join: %d %s", code, body)
	}
	var mj fclient.RespMakeJoin
	testkit.Must(f.t, json.Unmarshal(body, &mj), "decoding make_join")
	ver := gomatrixserverlib.MustGetRoomVersion(mj.RoomVersion)
	ev, err := ver.NewEventBuilderFromProtoEvent(&mj.JoinEvent).Build(time.Now(), remoteName, gomatrixserverlib.KeyID(f.remoteKey.ID), f.remoteKey.Private)
	testkit.Must(f.t, err, "building join")
	code, body = f.remote("PUT", "/_matrix/federation/v2/send_join/"+url.PathEscape(f.room)+"/"+url.PathEscape(ev.EventID()), json.RawMessage(ev.JSON()))
	if code != 200 {
		f.t.Fatalf("send_join: %d %s", code, body)
	}
	var sj fclient.RespSendJoin
	testkit.Must(f.t, json.Unmarshal(body, &sj), "decoding send_join")
	return ev, sj
}

// build builds an event of the room sent by charlie on the current forward extremities.
func (f *fixture) build(evType string, stateKey *string, content any, key serverkey.Key) gomatrixserverlib.PDU {
	f.t.Helper()
	ctx := context.Background()
	ext, depth, err := f.rooms.Extremities(ctx, f.room)
	testkit.Must(f.t, err, "extremities")
	var auth []string
	for _, t := range []gomatrixserverlib.StateKeyTuple{{EventType: spec.MRoomCreate}, {EventType: spec.MRoomPowerLevels}, {EventType: spec.MRoomMember, StateKey: charlie}} {
		if ev, err := f.rooms.CurrentStateEvent(ctx, f.room, t.EventType, t.StateKey); err == nil {
			auth = append(auth, ev.PDU.EventID())
		}
	}
	ver := gomatrixserverlib.MustGetRoomVersion("10")
	ev, err := ver.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
		SenderID: charlie, RoomID: f.room, Type: evType, StateKey: stateKey, Content: spec.RawJSON(raw(content)),
		PrevEvents: ext, AuthEvents: auth, Depth: depth + 1,
	}).Build(time.Now(), remoteName, gomatrixserverlib.KeyID(key.ID), key.Private)
	testkit.Must(f.t, err, "building %s", evType)
	return ev
}

func (f *fixture) sendTxn(txnID string, pdus ...json.RawMessage) fclient.RespSend {
	f.t.Helper()
	code, body := f.remote("PUT", "/_matrix/federation/v1/send/"+txnID, map[string]any{
		"origin": remoteName, "origin_server_ts": time.Now().UnixMilli(), "pdus": pdus,
	})
	if code != 200 {
		f.t.Fatalf("send: %d %s", code, body)
	}
	var resp fclient.RespSend
	testkit.Must(f.t, json.Unmarshal(body, &resp), "decoding send response")
	return resp
}

func TestRequestAuthentication(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		f := newFixture(t, db)
		path := "/_matrix/federation/v1/query/profile?user_id=" + url.QueryEscape(alice)
		tests := []struct {
			name       string
			origin     string
			key        serverkey.Key
			dest       string
			wantStatus int
		}{
			{"valid", remoteName, f.remoteKey, ourName, 200},
			{"unknown key", remoteName, newKey(t, "ed25519:remote"), ourName, 401},
			{"wrong destination", remoteName, f.remoteKey, "other.test", 400},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				code, body := f.do("GET", tt.origin, tt.key, tt.dest, path, nil)
				if code != tt.wantStatus {
					t.Errorf("got %d %s; want %d", code, body, tt.wantStatus)
				}
				if code != 200 && !bytes.Contains(body, []byte("M_UNAUTHORIZED")) {
					t.Errorf("body %s; want M_UNAUTHORIZED", body)
				}
			})
		}
		t.Run("no signature", func(t *testing.T) {
			resp, err := http.Get(f.srv.URL + path)
			testkit.Must(t, err, "GET")
			resp.Body.Close()
			if resp.StatusCode != 401 {
				t.Errorf("got %d; want 401", resp.StatusCode)
			}
		})
		t.Run("body too large", func(t *testing.T) {
			req, _ := http.NewRequest("PUT", f.srv.URL+"/_matrix/federation/v1/send/big", strings.NewReader(strings.Repeat("x", maxRequestBody+1)))
			resp, err := http.DefaultClient.Do(req)
			testkit.Must(t, err, "PUT")
			resp.Body.Close()
			if resp.StatusCode != 413 {
				t.Errorf("got %d; want 413", resp.StatusCode)
			}
		})
	})
}

func TestJoinRoundTrip(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		f := newFixture(t, db)
		join, sj := f.join()
		ver := gomatrixserverlib.MustGetRoomVersion("10")
		_, err := gomatrixserverlib.CheckSendJoinResponse(context.Background(), ver.Version(), &sj, f.ring, join,
			func(gomatrixserverlib.RoomVersion, []string) ([]gomatrixserverlib.PDU, error) { return nil, nil }, userIDForSender)
		testkit.Must(t, err, "checking the send_join response")
		if len(sj.ServersInRoom) != 2 || sj.MembersOmitted {
			t.Errorf("servers_in_room %v, members_omitted %v; want both servers, false", sj.ServersInRoom, sj.MembersOmitted)
		}
		m, _, err := f.rooms.Membership(context.Background(), f.room, charlie)
		testkit.Must(t, err, "membership")
		if m != spec.Join {
			t.Errorf("charlie's membership %q; want join", m)
		}

		// Only joins go through send_join.
		leave := f.build(spec.MRoomMember, ptr(charlie), map[string]string{"membership": "leave"}, f.remoteKey)
		code, body := f.remote("PUT", "/_matrix/federation/v2/send_join/"+url.PathEscape(f.room)+"/"+url.PathEscape(leave.EventID()), json.RawMessage(leave.JSON()))
		if code != 400 {
			t.Errorf("leave through send_join: %d %s; want 400", code, body)
		}
	})
}

func TestSendTransaction(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		ctx := context.Background()
		f := newFixture(t, db)
		f.join()
		stateBefore, err := f.rooms.CurrentState(ctx, f.room)
		testkit.Must(t, err, "state")

		msg := f.build("m.room.message", nil, map[string]string{"body": "hello"}, f.remoteKey)
		badSig := f.build("m.room.message", nil, map[string]string{"body": "forged"}, newKey(t, "ed25519:remote"))
		// charlie has power 0: changing the power levels fails the auth rules.
		pl := f.build(spec.MRoomPowerLevels, ptr(""), map[string]any{"users": map[string]int{charlie: 100}}, f.remoteKey)
		// An event over 64 KiB: the padding sits in unsigned, which signatures do not cover.
		big := f.build("m.room.message", nil, map[string]string{"body": "big"}, f.remoteKey)
		bigJSON, err := sjson.SetBytes(big.JSON(), "unsigned.pad", strings.Repeat("x", 70000))
		testkit.Must(t, err, "padding")

		resp := f.sendTxn("t1", msg.JSON(), badSig.JSON(), pl.JSON(), bigJSON)
		if r, ok := resp.PDUs[msg.EventID()]; !ok || r.Error != "" {
			t.Errorf("message result %+v (present %v); want success", r, ok)
		}
		for name, ev := range map[string]gomatrixserverlib.PDU{"bad signature": badSig, "unauthorised": pl} {
			if r := resp.PDUs[ev.EventID()]; r.Error == "" {
				t.Errorf("%s: no error in result", name)
			}
			if _, err := f.rooms.Event(ctx, ev.EventID()); err == nil {
				t.Errorf("%s: event stored", name)
			}
		}
		if _, err := f.rooms.Event(ctx, big.EventID()); err == nil {
			t.Errorf("oversized event stored")
		}
		if _, err := f.rooms.Event(ctx, msg.EventID()); err != nil {
			t.Errorf("message not stored: %v", err)
		}
		stateAfter, err := f.rooms.CurrentState(ctx, f.room)
		testkit.Must(t, err, "state")
		if fmt.Sprint(ids(stateAfter)) != fmt.Sprint(ids(stateBefore)) {
			t.Errorf("state changed: %v → %v", ids(stateBefore), ids(stateAfter))
		}

		// A retried transaction is answered from memory, even with another body.
		other := f.build("m.room.message", nil, map[string]string{"body": "later"}, f.remoteKey)
		again := f.sendTxn("t1", other.JSON())
		if fmt.Sprint(again) != fmt.Sprint(resp) {
			t.Errorf("retried transaction got %v; want %v", again, resp)
		}
		if _, err := f.rooms.Event(ctx, other.EventID()); err == nil {
			t.Errorf("retried transaction processed its body again")
		}
	})
}

func ids(evs []*roomserver.Event) map[string]bool {
	out := map[string]bool{}
	for _, e := range evs {
		out[e.PDU.EventID()] = true
	}
	return out
}
