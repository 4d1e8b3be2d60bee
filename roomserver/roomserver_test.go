package roomserver

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/bus"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
)

const (
	alice = "@alice:test.local"
	bob   = "@bob:test.local"
	carol = "@carol:test.local"
)

func newService(t *testing.T, db *sqldb.DB) (*Service, *bus.Stream) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(nil)
	testkit.Must(t, err, "generating key")
	stream := bus.NewStream(0)
	s, err := New(Config{ServerName: "test.local", KeyID: "ed25519:test", PrivateKey: priv}, db, stream,
		slog.New(slog.DiscardHandler))
	testkit.Must(t, err, "starting roomserver")
	return s, stream
}

func ptr(s string) *string { return &s }

func raw(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// initial returns the usual initial events of a room created by creator: join, power levels
// (creator 100 except in v12, where creators are implicitly all-powerful), join rules, history
// visibility.
func initial(version, creator, joinRule string) []Fledgling {
	pl := map[string]any{"users_default": 0, "events_default": 0, "state_default": 50,
		"ban": 50, "kick": 50, "redact": 50, "invite": 0}
	if version != "12" {
		pl["users"] = map[string]int{creator: 100}
	}
	return []Fledgling{
		{Type: spec.MRoomMember, StateKey: ptr(creator), Content: raw(map[string]string{"membership": "join"})},
		{Type: spec.MRoomPowerLevels, StateKey: ptr(""), Content: raw(pl)},
		{Type: spec.MRoomJoinRules, StateKey: ptr(""), Content: raw(map[string]string{"join_rule": joinRule})},
		{Type: spec.MRoomHistoryVisibility, StateKey: ptr(""), Content: raw(map[string]string{"history_visibility": "shared"})},
	}
}

func createRoom(t *testing.T, s *Service, version, joinRule string) string {
	t.Helper()
	id, err := s.CreateRoom(context.Background(), CreateRoomRequest{
		Creator: alice, RoomVersion: version, Initial: initial(version, alice, joinRule),
	})
	testkit.Must(t, err, "creating v%s room", version)
	return id
}

func send(t *testing.T, s *Service, r SendRequest) string {
	t.Helper()
	id, err := s.Send(context.Background(), r)
	testkit.Must(t, err, "sending %s as %s", r.Type, r.Sender)
	return id
}

func message(roomID, sender, body string) SendRequest {
	return SendRequest{RoomID: roomID, Sender: sender, Type: "m.room.message",
		Content: raw(map[string]string{"msgtype": "m.text", "body": body})}
}

func member(roomID, sender, target, membership string) SendRequest {
	return SendRequest{RoomID: roomID, Sender: sender, Type: spec.MRoomMember, StateKey: ptr(target),
		Content: raw(map[string]string{"membership": membership})}
}

func state(roomID, sender, evType string, content any) SendRequest {
	return SendRequest{RoomID: roomID, Sender: sender, Type: evType, StateKey: ptr(""), Content: raw(content)}
}

// stateMap indexes state events by "type|state_key" → event ID.
func stateMap(evs []*Event) map[string]string {
	m := map[string]string{}
	for _, e := range evs {
		m[e.PDU.Type()+"|"+*e.PDU.StateKey()] = e.PDU.EventID()
	}
	return m
}

func TestCreateRoomEveryVersion(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, stream := newService(t, db)
		ctx := context.Background()
		for _, v := range SupportedRoomVersions() {
			t.Run("v"+v, func(t *testing.T) {
				roomID := createRoom(t, s, v, "public")
				got, err := s.RoomVersion(ctx, roomID)
				testkit.Must(t, err, "room version")
				if string(got) != v {
					t.Fatalf("RoomVersion = %s; want %s", got, v)
				}
				create, err := s.CurrentStateEvent(ctx, roomID, spec.MRoomCreate, "")
				testkit.Must(t, err, "create event")
				var cc map[string]any
				testkit.Must(t, json.Unmarshal(create.PDU.Content(), &cc), "create content")
				if cc["room_version"] != v {
					t.Errorf("create content room_version = %v; want %s", cc["room_version"], v)
				}
				if _, has := cc["creator"]; has != (v != "11" && v != "12") {
					t.Errorf("create content %v: creator present = %v", cc, has)
				}
				if v == "12" {
					if want := "!" + create.PDU.EventID()[1:]; roomID != want {
						t.Errorf("v12 room ID = %s; want %s", roomID, want)
					}
				} else if !strings.HasSuffix(roomID, ":test.local") {
					t.Errorf("room ID %s lacks the server name", roomID)
				}

				name := send(t, s, state(roomID, alice, spec.MRoomName, map[string]string{"name": "Room v" + v}))
				msg := send(t, s, message(roomID, alice, "hello"))
				ev, err := s.Event(ctx, msg)
				testkit.Must(t, err, "loading message")
				if !slices.Equal(ev.PDU.PrevEventIDs(), []string{name}) {
					t.Errorf("message prev_events = %v; want [%s]", ev.PDU.PrevEventIDs(), name)
				}
				if v == "12" && slices.Contains(authEventsInJSON(t, ev.PDU), create.PDU.EventID()) {
					t.Errorf("v12 auth_events lists the create event")
				}
				if ev.StreamPos != stream.Pos() {
					t.Errorf("message at %d; stream at %d", ev.StreamPos, stream.Pos())
				}
				cur, err := s.CurrentStateEvent(ctx, roomID, spec.MRoomName, "")
				testkit.Must(t, err, "name")
				if cur.PDU.EventID() != name {
					t.Errorf("current name = %s; want %s", cur.PDU.EventID(), name)
				}
				all, err := s.CurrentState(ctx, roomID)
				testkit.Must(t, err, "current state")
				if len(all) != 6 {
					t.Errorf("got %d current state events; want 6", len(all))
				}
			})
		}
	})
}

func authEventsInJSON(t *testing.T, ev gomatrixserverlib.PDU) []string {
	var v struct {
		AuthEvents []string `json:"auth_events"`
	}
	testkit.Must(t, json.Unmarshal(ev.JSON(), &v), "auth_events")
	return v.AuthEvents
}

func TestCreateRoomErrors(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		tests := []struct {
			name       string
			req        CreateRoomRequest
			wantStatus int
			wantCode   string
		}{
			{"unknown version", CreateRoomRequest{Creator: alice, RoomVersion: "99"}, 400, matrix.CodeUnsupportedRoomVer},
			{"msc version", CreateRoomRequest{Creator: alice, RoomVersion: "org.matrix.msc4242.12"}, 400, matrix.CodeUnsupportedRoomVer},
			{"bad creation content", CreateRoomRequest{Creator: alice, CreateContent: raw([]int{1})}, 400, matrix.CodeBadJSON},
			{"initial event forbidden", CreateRoomRequest{Creator: alice, Initial: []Fledgling{
				{Type: spec.MRoomName, StateKey: ptr(""), Content: raw(map[string]string{"name": "x"})},
			}}, 403, matrix.CodeForbidden},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				_, err := s.CreateRoom(ctx, tt.req)
				checkMatrixError(t, err, tt.wantStatus, tt.wantCode)
			})
		}
		var n int
		testkit.Must(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM rooms`).Scan(&n), "counting rooms")
		if n != 0 {
			t.Errorf("failed creations left %d rooms", n)
		}
	})
}

func checkMatrixError(t *testing.T, err error, status int, code string) {
	t.Helper()
	me := matrix.AsError(err)
	if me == nil {
		t.Fatalf("got error %v; want %d %s", err, status, code)
	}
	if me.Status != status || me.Code != code {
		t.Fatalf("got %d %s (%s); want %d %s", me.Status, me.Code, me.Message, status, code)
	}
}

func TestSendRejects(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		public := createRoom(t, s, "", "public")
		private := createRoom(t, s, "", "invite")
		send(t, s, member(public, bob, bob, "join"))
		big := strings.Repeat("x", 70000)
		tests := []struct {
			name       string
			req        SendRequest
			wantStatus int
			wantCode   string
		}{
			{"unknown room", message("!nope:test.local", alice, "hi"), 404, matrix.CodeNotFound},
			{"non-member message", message(public, carol, "hi"), 403, matrix.CodeForbidden},
			{"non-member in private room", message(private, bob, "hi"), 403, matrix.CodeForbidden},
			{"below power level changes state", state(public, bob, spec.MRoomName, map[string]string{"name": "x"}), 403, matrix.CodeForbidden},
			{"join invite-only without invite", member(private, bob, bob, "join"), 403, matrix.CodeForbidden},
			{"join someone else", member(public, bob, carol, "join"), 403, matrix.CodeForbidden},
			{"too large", message(public, alice, big), http.StatusRequestEntityTooLarge, matrix.CodeTooLarge},
			{"almost too large", message(public, alice, big[:65400]), http.StatusRequestEntityTooLarge, matrix.CodeTooLarge},
			{"content not an object", SendRequest{RoomID: public, Sender: alice, Type: "m.room.message", Content: raw("x")}, 400, matrix.CodeBadJSON},
			{"member without membership", SendRequest{RoomID: public, Sender: alice, Type: spec.MRoomMember, StateKey: ptr(alice), Content: raw(map[string]int{"membership": 1})}, 400, matrix.CodeBadJSON},
			{"float in v11", SendRequest{RoomID: public, Sender: alice, Type: "m.room.message", Content: json.RawMessage(`{"n":1.5}`)}, 400, matrix.CodeBadJSON},
			{"bad sender", message(public, "alice", "hi"), 400, matrix.CodeInvalidParam},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				_, err := s.Send(context.Background(), tt.req)
				checkMatrixError(t, err, tt.wantStatus, tt.wantCode)
			})
		}
	})
}

func TestMembershipFlow(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		room := createRoom(t, s, "", "invite")
		other := createRoom(t, s, "10", "public")
		send(t, s, member(other, bob, bob, "join"))

		steps := []struct {
			req        SendRequest
			want       string
			wantJoined []string
			wantAny    []string
		}{
			{member(room, alice, bob, "invite"), "invite", []string{other}, []string{room, other}},
			{member(room, bob, bob, "join"), "join", []string{room, other}, []string{room, other}},
			{member(room, bob, bob, "leave"), "leave", []string{other}, []string{room, other}},
		}
		for _, st := range steps {
			id := send(t, s, st.req)
			got, ev, err := s.Membership(ctx, room, bob)
			testkit.Must(t, err, "membership")
			if got != st.want || ev == nil || ev.PDU.EventID() != id {
				t.Fatalf("after %s: Membership = %q, %v; want %q, %s", st.want, got, ev, st.want, id)
			}
			joined, err := s.RoomsForUser(ctx, bob, spec.Join)
			testkit.Must(t, err, "joined rooms")
			if !slices.Equal(joined, sorted(st.wantJoined)) {
				t.Errorf("after %s: joined rooms = %v; want %v", st.want, joined, st.wantJoined)
			}
			anyRooms, err := s.RoomsForUser(ctx, bob)
			testkit.Must(t, err, "rooms")
			if !slices.Equal(anyRooms, sorted(st.wantAny)) {
				t.Errorf("after %s: rooms = %v; want %v", st.want, anyRooms, st.wantAny)
			}
		}
		if _, err := s.Send(ctx, message(room, bob, "after leaving")); matrix.AsError(err) == nil {
			t.Errorf("message after leave: got %v; want 403", err)
		}
		got, ev, err := s.Membership(ctx, room, carol)
		if got != "" || ev != nil || err != nil {
			t.Errorf("Membership of a stranger = %q, %v, %v; want empty", got, ev, err)
		}
		members, err := s.JoinedMembers(ctx, room)
		testkit.Must(t, err, "members")
		if !slices.Equal(members, []string{alice}) {
			t.Errorf("JoinedMembers = %v; want [%s]", members, alice)
		}
		evs, err := s.MembershipEvents(ctx, bob, 0, 1<<62)
		testkit.Must(t, err, "membership events")
		var ms []string
		for _, e := range evs {
			m, _ := e.PDU.Membership()
			ms = append(ms, e.PDU.RoomID().String()+" "+m)
		}
		want := []string{other + " join", room + " invite", room + " join", room + " leave"}
		if !slices.Equal(ms, want) {
			t.Errorf("MembershipEvents = %v; want %v", ms, want)
		}
	})
}

func sorted(s []string) []string { return slices.Sorted(slices.Values(s)) }

func TestTxnIdempotency(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, stream := newService(t, db)
		ctx := context.Background()
		room := createRoom(t, s, "", "public")
		withTxn := func(device, txn string) SendRequest {
			r := message(room, alice, "once")
			r.Txn = &Txn{DeviceID: device, TxnID: txn}
			return r
		}
		first := send(t, s, withTxn("DEV1", "t1"))
		pos := stream.Pos()
		if again := send(t, s, withTxn("DEV1", "t1")); again != first {
			t.Errorf("resend returned %s; want %s", again, first)
		}
		if stream.Pos() != pos {
			t.Errorf("resend advanced the stream to %d from %d", stream.Pos(), pos)
		}
		if other := send(t, s, withTxn("DEV2", "t1")); other == first {
			t.Errorf("another device's txn returned the first event %s", first)
		}
		if other := send(t, s, withTxn("DEV1", "t2")); other == first {
			t.Errorf("another txn returned the first event %s", first)
		}
		ev, err := s.Event(ctx, first)
		testkit.Must(t, err, "loading event")
		if ev.TxnID != "t1" || ev.DeviceID != "DEV1" {
			t.Errorf("event txn = %q/%q; want t1/DEV1", ev.TxnID, ev.DeviceID)
		}
		evs, _, err := s.RoomEvents(ctx, room, 0, stream.Pos(), 100)
		testkit.Must(t, err, "room events")
		n := 0
		for _, e := range evs {
			if e.PDU.Type() == "m.room.message" {
				n++
			}
		}
		if n != 3 {
			t.Errorf("room has %d messages; want 3", n)
		}
	})
}

func TestRedaction(t *testing.T) {
	for _, v := range []string{"1", "3", "10", "11", "12"} {
		t.Run("v"+v, func(t *testing.T) {
			testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
				s, _ := newService(t, db)
				ctx := context.Background()
				room := createRoom(t, s, v, "public")
				send(t, s, member(room, bob, bob, "join"))
				msg := send(t, s, message(room, alice, "secret"))
				bobMsg := send(t, s, message(room, bob, "oops"))

				// bob (power 0) may not redact alice's message, but may redact his own.
				_, err := s.Send(ctx, SendRequest{RoomID: room, Sender: bob, Type: spec.MRoomRedaction, Redacts: msg, Content: raw(map[string]string{})})
				checkMatrixError(t, err, 403, matrix.CodeForbidden)
				own := send(t, s, SendRequest{RoomID: room, Sender: bob, Type: spec.MRoomRedaction, Redacts: bobMsg, Content: raw(map[string]string{"reason": "typo"})})
				red := send(t, s, SendRequest{RoomID: room, Sender: alice, Type: spec.MRoomRedaction, Redacts: msg, Content: raw(map[string]string{})})

				for target, by := range map[string]string{msg: red, bobMsg: own} {
					ev, err := s.Event(ctx, target)
					testkit.Must(t, err, "loading redacted event")
					if !ev.PDU.Redacted() || string(ev.PDU.Content()) != "{}" {
						t.Errorf("redacted event: Redacted() = %v, content %s; want true, {}", ev.PDU.Redacted(), ev.PDU.Content())
					}
					if ev.RedactedBecause == nil || ev.RedactedBecause.EventID() != by {
						t.Errorf("RedactedBecause = %v; want %s", ev.RedactedBecause, by)
					}
				}
				// Served through the timeline too.
				evs, _, err := s.RoomEvents(ctx, room, 0, 1<<62, 10)
				testkit.Must(t, err, "room events")
				for _, e := range evs {
					if e.PDU.EventID() == msg && !strings.Contains(string(e.PDU.JSON()), `"content":{}`) {
						t.Errorf("timeline serves unredacted %s", e.PDU.JSON())
					}
				}
				// The redaction event itself names its target.
				rev, err := s.Event(ctx, red)
				testkit.Must(t, err, "loading redaction")
				if rev.PDU.Redacts() != msg {
					t.Errorf("redaction redacts %q; want %s", rev.PDU.Redacts(), msg)
				}
				if v == "11" || v == "12" {
					var c struct{ Redacts string }
					_ = json.Unmarshal(rev.PDU.Content(), &c)
					if c.Redacts != msg {
						t.Errorf("v%s redaction content.redacts = %q; want %s", v, c.Redacts, msg)
					}
				}
				// Redacting an unknown event is stored, and applied to nothing.
				send(t, s, SendRequest{RoomID: room, Sender: alice, Type: spec.MRoomRedaction, Redacts: "$unknown:elsewhere.example", Content: raw(map[string]string{})})
			})
		})
	}
}

func TestStateAtEvents(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		room := createRoom(t, s, "", "public")
		pos0, _ := s.MaxStreamPos(ctx)
		nameA := send(t, s, state(room, alice, spec.MRoomName, map[string]string{"name": "A"}))
		posA, _ := s.MaxStreamPos(ctx)
		msg := send(t, s, message(room, alice, "between"))
		topic := send(t, s, state(room, alice, spec.MRoomTopic, map[string]string{"topic": "T"}))
		join := send(t, s, member(room, bob, bob, "join"))
		posJoin, _ := s.MaxStreamPos(ctx)
		nameB := send(t, s, state(room, alice, spec.MRoomName, map[string]string{"name": "B"}))
		posB, _ := s.MaxStreamPos(ctx)

		nameOf := func(m map[string]string) string { return m[spec.MRoomName+"|"] }
		tests := []struct {
			name      string
			get       func() ([]*Event, error)
			wantName  string
			wantTopic string
			wantBob   string
			wantLen   int
		}{
			{"after nameA", func() ([]*Event, error) { return s.StateAfter(ctx, nameA) }, nameA, "", "", 6},
			{"before nameA", func() ([]*Event, error) { return s.StateBefore(ctx, nameA) }, "", "", "", 5},
			{"after message", func() ([]*Event, error) { return s.StateAfter(ctx, msg) }, nameA, "", "", 6},
			{"before message", func() ([]*Event, error) { return s.StateBefore(ctx, msg) }, nameA, "", "", 6},
			{"after topic", func() ([]*Event, error) { return s.StateAfter(ctx, topic) }, nameA, topic, "", 7},
			{"before join", func() ([]*Event, error) { return s.StateBefore(ctx, join) }, nameA, topic, "", 7},
			{"after join", func() ([]*Event, error) { return s.StateAfter(ctx, join) }, nameA, topic, join, 8},
			{"before nameB", func() ([]*Event, error) { return s.StateBefore(ctx, nameB) }, nameA, topic, join, 8},
			{"after nameB", func() ([]*Event, error) { return s.StateAfter(ctx, nameB) }, nameB, topic, join, 8},
			{"at pos of create+initial", func() ([]*Event, error) { return s.StateAtPos(ctx, room, pos0) }, "", "", "", 5},
			{"at pos of nameA", func() ([]*Event, error) { return s.StateAtPos(ctx, room, posA) }, nameA, "", "", 6},
			{"at pos of join", func() ([]*Event, error) { return s.StateAtPos(ctx, room, posJoin) }, nameA, topic, join, 8},
			{"at pos of nameB", func() ([]*Event, error) { return s.StateAtPos(ctx, room, posB) }, nameB, topic, join, 8},
			{"at pos 0", func() ([]*Event, error) { return s.StateAtPos(ctx, room, 0) }, "", "", "", 0},
			{"current", func() ([]*Event, error) { return s.CurrentState(ctx, room) }, nameB, topic, join, 8},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				evs, err := tt.get()
				testkit.Must(t, err, "loading state")
				m := stateMap(evs)
				if len(m) != tt.wantLen || len(evs) != tt.wantLen {
					t.Errorf("got %d state events (%d keys); want %d: %v", len(evs), len(m), tt.wantLen, m)
				}
				if got := nameOf(m); got != tt.wantName {
					t.Errorf("name = %q; want %q", got, tt.wantName)
				}
				if got := m[spec.MRoomTopic+"|"]; got != tt.wantTopic {
					t.Errorf("topic = %q; want %q", got, tt.wantTopic)
				}
				if got := m[spec.MRoomMember+"|"+bob]; got != tt.wantBob {
					t.Errorf("bob = %q; want %q", got, tt.wantBob)
				}
			})
		}
		if _, err := s.StateAfter(ctx, "$nope"); !errors.Is(err, sqldb.ErrNotFound) {
			t.Errorf("StateAfter(unknown) error = %v; want ErrNotFound", err)
		}
		if _, err := s.Event(ctx, "$nope"); !errors.Is(err, sqldb.ErrNotFound) {
			t.Errorf("Event(unknown) error = %v; want ErrNotFound", err)
		}
		if _, err := s.CurrentStateEvent(ctx, room, spec.MRoomAvatar, ""); !errors.Is(err, sqldb.ErrNotFound) {
			t.Errorf("CurrentStateEvent(missing) error = %v; want ErrNotFound", err)
		}
	})
}

func TestRoomEvents(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		room := createRoom(t, s, "", "public")
		other := createRoom(t, s, "", "public")
		start, _ := s.MaxStreamPos(ctx)
		var ids []string
		for i := range 10 {
			ids = append(ids, send(t, s, message(room, alice, fmt.Sprint(i))))
			send(t, s, message(other, alice, fmt.Sprint(i)))
		}
		end, _ := s.MaxStreamPos(ctx)
		idsOf := func(evs []*Event) []string {
			var out []string
			for _, e := range evs {
				out = append(out, e.PDU.EventID())
			}
			return out
		}
		tests := []struct {
			name        string
			limit       int
			want        []string
			wantLimited bool
		}{
			{"all", 20, ids, false},
			{"exact", 10, ids, false},
			{"limited", 4, ids[6:], true},
			{"zero", 0, nil, true},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				evs, limited, err := s.RoomEvents(ctx, room, start, end, tt.limit)
				testkit.Must(t, err, "room events")
				if got := idsOf(evs); !slices.Equal(got, tt.want) || limited != tt.wantLimited {
					t.Errorf("got %v limited=%v; want %v limited=%v", got, limited, tt.want, tt.wantLimited)
				}
			})
		}
		before, err := s.RoomEventsBefore(ctx, room, end+1, 3)
		testkit.Must(t, err, "before")
		if got, want := idsOf(before), []string{ids[9], ids[8], ids[7]}; !slices.Equal(got, want) {
			t.Errorf("RoomEventsBefore = %v; want %v", got, want)
		}
		after, err := s.RoomEventsAfter(ctx, room, start, 3)
		testkit.Must(t, err, "after")
		if got := idsOf(after); !slices.Equal(got, ids[:3]) {
			t.Errorf("RoomEventsAfter = %v; want %v", got, ids[:3])
		}
		rooms, err := s.RoomsWithEvents(ctx, start, end)
		testkit.Must(t, err, "rooms with events")
		if !slices.Equal(rooms, sorted([]string{room, other})) {
			t.Errorf("RoomsWithEvents = %v; want both rooms", rooms)
		}
		rooms, err = s.RoomsWithEvents(ctx, end, end)
		testkit.Must(t, err, "rooms with events")
		if len(rooms) != 0 {
			t.Errorf("RoomsWithEvents(empty range) = %v", rooms)
		}
		// A restarted service resumes the stream at the newest position.
		s2, stream2 := newService(t, db)
		if stream2.Pos() != end {
			t.Errorf("restarted stream at %d; want %d", stream2.Pos(), end)
		}
		send(t, s2, message(room, alice, "after restart"))
		if stream2.Pos() != end+1 {
			t.Errorf("stream at %d after send; want %d", stream2.Pos(), end+1)
		}
	})
}

// TestManyJoins proves that state is stored as deltas: 500 joins write a bounded number of
// snapshot entries instead of a full copy of the state per event.
func TestManyJoins(t *testing.T) {
	const joins = 500
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		room := createRoom(t, s, "", "public")
		var ids []string
		for i := range joins {
			u := fmt.Sprintf("@user%d:test.local", i)
			ids = append(ids, send(t, s, member(room, u, u, "join")))
		}
		var snapshots, entries int
		testkit.Must(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM state_snapshots`).Scan(&snapshots), "counting snapshots")
		testkit.Must(t, db.QueryRow(ctx, `SELECT COUNT(*) FROM state_entries`).Scan(&entries), "counting entries")
		stateEvents := joins + 5
		// A full copy per event would be ~stateEvents²/2 ≈ 128,000 rows. Deltas plus a full
		// snapshot every maxSnapshotChain events need under stateEvents + stateEvents²/(2·64).
		limit := stateEvents + stateEvents*stateEvents/(2*maxSnapshotChain) + stateEvents
		t.Logf("%d state events: %d snapshots, %d entries (limit %d)", stateEvents, snapshots, entries, limit)
		if snapshots != stateEvents {
			t.Errorf("got %d snapshots; want one per state event (%d)", snapshots, stateEvents)
		}
		if entries > limit {
			t.Errorf("got %d state entries; want at most %d", entries, limit)
		}
		for _, i := range []int{0, 62, 63, 200, joins - 1} {
			st, err := s.StateAfter(ctx, ids[i])
			testkit.Must(t, err, "state after join %d", i)
			if want := 5 + 1 + i; len(st) != want {
				t.Errorf("state after join %d has %d events; want %d", i, len(st), want)
			}
		}
		members, err := s.JoinedMembers(ctx, room)
		testkit.Must(t, err, "members")
		if len(members) != joins+1 {
			t.Errorf("got %d members; want %d", len(members), joins+1)
		}
	})
}

func TestConcurrentSends(t *testing.T) {
	const writers, each = 4, 15
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, stream := newService(t, db)
		ctx := context.Background()
		room := createRoom(t, s, "", "public")
		room2 := createRoom(t, s, "", "public")
		start := stream.Pos()
		var wg sync.WaitGroup
		errs := make(chan error, writers*each)
		for w := range writers {
			wg.Go(func() {
				for i := range each {
					target := room
					if w%2 == 1 && i%3 == 0 {
						target = room2
					}
					if _, err := s.Send(ctx, message(target, alice, fmt.Sprintf("%d/%d", w, i))); err != nil {
						errs <- err
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("concurrent send: %v", err)
		}
		if got, want := stream.Pos(), start+writers*each; got != want {
			t.Errorf("stream at %d; want %d", got, want)
		}
		for _, r := range []string{room, room2} {
			evs, _, err := s.RoomEvents(ctx, r, 0, stream.Pos(), 1000)
			testkit.Must(t, err, "room events")
			seen := map[int64]bool{}
			for i, e := range evs {
				if seen[e.StreamPos] {
					t.Fatalf("position %d used twice", e.StreamPos)
				}
				seen[e.StreamPos] = true
				if i == 0 {
					continue
				}
				prev := evs[i-1]
				if !slices.Equal(e.PDU.PrevEventIDs(), []string{prev.PDU.EventID()}) || e.PDU.Depth() != prev.PDU.Depth()+1 {
					t.Fatalf("event %d: prev %v depth %d; want [%s] depth %d", i, e.PDU.PrevEventIDs(), e.PDU.Depth(), prev.PDU.EventID(), prev.PDU.Depth()+1)
				}
			}
		}
	})
}

// TestInputEvent feeds events built elsewhere (as a remote server would) into the persist path.
func TestInputEvent(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, stream := newService(t, db)
		ctx := context.Background()
		room := createRoom(t, s, "", "public")
		_, remoteKey, _ := ed25519.GenerateKey(nil)
		const remote = "@dave:remote.example"
		build := func(evType string, stateKey *string, content any, authTypes ...gomatrixserverlib.StateKeyTuple) gomatrixserverlib.PDU {
			t.Helper()
			ri, err := s.roomInfo(ctx, room)
			testkit.Must(t, err, "room")
			var row *roomRow
			testkit.Must(t, db.WithTx(ctx, func(tx *sqldb.Tx) error {
				row, err = s.lockRoomRow(ctx, tx, room, ri)
				return err
			}), "room row")
			auth, err := currentStateEvents(ctx, db, ri.nid, authTypes)
			testkit.Must(t, err, "auth events")
			var authIDs []string
			for _, a := range auth {
				authIDs = append(authIDs, a.PDU.EventID())
			}
			eb := ri.version.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
				SenderID: remote, RoomID: room, Type: evType, StateKey: stateKey, Content: spec.RawJSON(raw(content)),
				PrevEvents: row.extremities, AuthEvents: authIDs, Depth: row.depth + 1,
			})
			ev, err := eb.Build(time.Now(), "remote.example", "ed25519:r", remoteKey)
			testkit.Must(t, err, "building remote event")
			return ev
		}
		base := []gomatrixserverlib.StateKeyTuple{{EventType: spec.MRoomCreate}, {EventType: spec.MRoomPowerLevels}}
		msg := build("m.room.message", nil, map[string]string{"body": "not joined"}, append(base, gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomMember, StateKey: remote})...)
		_, err := s.InputEvent(ctx, msg, InputOptions{})
		checkMatrixError(t, err, 403, matrix.CodeForbidden)

		join := build(spec.MRoomMember, ptr(remote), map[string]string{"membership": "join"},
			append(base, gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomJoinRules})...)
		res, err := s.InputEvent(ctx, join, InputOptions{})
		pos := res.Pos
		testkit.Must(t, err, "inputting remote join")
		if pos != stream.Pos() {
			t.Errorf("join at %d; stream at %d", pos, stream.Pos())
		}
		again, err := s.InputEvent(ctx, join, InputOptions{})
		testkit.Must(t, err, "inputting the join again")
		if again.Pos != pos {
			t.Errorf("repeated input at %d; want %d", again.Pos, pos)
		}
		m, _, err := s.Membership(ctx, room, remote)
		testkit.Must(t, err, "membership")
		if m != spec.Join {
			t.Errorf("remote membership = %q; want join", m)
		}
		// A stale event (built before the join) would fork the DAG.
		_, err = s.InputEvent(ctx, msg, InputOptions{})
		if !errors.Is(err, ErrRejected) {
			t.Errorf("stale event: got %v; want a rejection", err)
		}
		// Local sends continue on top of the remote event.
		id := send(t, s, message(room, alice, "welcome"))
		ev, err := s.Event(ctx, id)
		testkit.Must(t, err, "loading")
		if !slices.Equal(ev.PDU.PrevEventIDs(), []string{join.EventID()}) {
			t.Errorf("local event prev = %v; want [%s]", ev.PDU.PrevEventIDs(), join.EventID())
		}
	})
}

// BenchmarkSend measures sending messages to one room and joins to a growing room on SQLite.
func BenchmarkSend(b *testing.B) {
	ctx := context.Background()
	db, err := sqldb.Open(ctx, testkit.SQLiteConn(b), sqldb.Options{})
	testkit.Must(b, err, "opening database")
	b.Cleanup(func() { db.Close() })
	_, priv, _ := ed25519.GenerateKey(nil)
	s, err := New(Config{ServerName: "test.local", KeyID: "ed25519:test", PrivateKey: priv}, db, bus.NewStream(0),
		slog.New(slog.DiscardHandler))
	testkit.Must(b, err, "starting roomserver")
	room, err := s.CreateRoom(ctx, CreateRoomRequest{Creator: alice, Initial: initial("11", alice, "public")})
	testkit.Must(b, err, "creating room")
	b.Run("message", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			if _, err := s.Send(ctx, message(room, alice, fmt.Sprint(i))); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("join", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			u := fmt.Sprintf("@bench%d:test.local", i)
			if _, err := s.Send(ctx, member(room, u, u, "join")); err != nil {
				b.Fatal(err)
			}
		}
	})
}
