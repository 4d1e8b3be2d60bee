package roomserver

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
)

// unsignedOf returns the unsigned section of a stored event.
func unsignedOf(t *testing.T, s *Service, eventID string) map[string]json.RawMessage {
	t.Helper()
	ev, err := s.Event(context.Background(), eventID)
	testkit.Must(t, err, "loading %s", eventID)
	u := map[string]json.RawMessage{}
	if b := ev.PDU.Unsigned(); len(b) > 0 {
		testkit.Must(t, json.Unmarshal(b, &u), "decoding unsigned of %s", eventID)
	}
	return u
}

func contentOf(t *testing.T, s *Service, roomID, evType, stateKey string) map[string]any {
	t.Helper()
	ev, err := s.CurrentStateEvent(context.Background(), roomID, evType, stateKey)
	testkit.Must(t, err, "loading %s/%s", evType, stateKey)
	c := map[string]any{}
	testkit.Must(t, json.Unmarshal(ev.PDU.Content(), &c), "decoding %s", evType)
	return c
}

func TestStateIdempotencyAndUnsigned(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, stream := newService(t, db)
		room := createRoom(t, s, "", "public")

		topic := state(room, alice, spec.MRoomTopic, map[string]string{"topic": "one"})
		first := send(t, s, topic)
		pos := stream.Pos()
		if again := send(t, s, topic); again != first {
			t.Errorf("setting the same state again returned %s; want %s", again, first)
		}
		if stream.Pos() != pos {
			t.Errorf("repeated state advanced the stream to %d from %d", stream.Pos(), pos)
		}
		second := send(t, s, state(room, alice, spec.MRoomTopic, map[string]string{"topic": "two"}))
		if second == first {
			t.Fatalf("new content returned the old event %s", first)
		}
		u := unsignedOf(t, s, second)
		if got := string(u["replaces_state"]); got != `"`+first+`"` {
			t.Errorf("replaces_state = %s; want %q", got, first)
		}
		if got := string(u["prev_content"]); got != `{"topic":"one"}` {
			t.Errorf("prev_content = %s; want {\"topic\":\"one\"}", got)
		}
		if _, ok := unsignedOf(t, s, first)["replaces_state"]; ok {
			t.Errorf("the first topic has replaces_state")
		}

		join := send(t, s, member(room, bob, bob, "join"))
		if again := send(t, s, member(room, bob, bob, "join")); again != join {
			t.Errorf("joining twice returned %s; want %s", again, join)
		}
		// The same content from another sender is a new event.
		other := send(t, s, state(room, alice, spec.MRoomTopic, map[string]string{"topic": "two"}))
		if other != second {
			t.Errorf("same sender, same content: got %s; want %s", other, second)
		}
	})
}

func TestInviteRoomState(t *testing.T) {
	for _, v := range []string{"10", "12"} {
		t.Run("v"+v, func(t *testing.T) {
			testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
				s, _ := newService(t, db)
				room := createRoom(t, s, v, "invite")
				send(t, s, state(room, alice, spec.MRoomName, map[string]string{"name": "Invited"}))
				inv := send(t, s, member(room, alice, bob, "invite"))
				var stripped []map[string]json.RawMessage
				testkit.Must(t, json.Unmarshal(unsignedOf(t, s, inv)["invite_room_state"], &stripped), "invite_room_state")
				var types []string
				for _, e := range stripped {
					var typ string
					_ = json.Unmarshal(e["type"], &typ)
					types = append(types, typ)
				}
				want := []string{spec.MRoomCreate, spec.MRoomJoinRules, spec.MRoomMember, spec.MRoomName}
				if len(types) == 0 || types[0] != spec.MRoomCreate || !slices.Equal(slices.Sorted(slices.Values(types)), want) {
					t.Fatalf("invite_room_state types = %v; want %v with the create event first", types, want)
				}
				if _, ok := stripped[0]["origin_server_ts"]; !ok {
					t.Errorf("the create event in invite_room_state is not the full event: %v", stripped[0])
				}
				// Rejecting the invite is a leave while invited.
				leave := send(t, s, member(room, bob, bob, "leave"))
				if m, ev, _ := s.Membership(context.Background(), room, bob); m != spec.Leave || ev.PDU.EventID() != leave {
					t.Errorf("after rejecting: membership %q; want leave", m)
				}
			})
		})
	}
}

func TestKickNeedsTargetInRoom(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		room := createRoom(t, s, "", "public")
		_, err := s.Send(ctx, member(room, alice, bob, "leave"))
		checkMatrixError(t, err, 403, matrix.CodeForbidden)
		send(t, s, member(room, bob, bob, "join"))
		send(t, s, member(room, bob, bob, "leave"))
		_, err = s.Send(ctx, member(room, alice, bob, "leave"))
		checkMatrixError(t, err, 403, matrix.CodeForbidden)
		send(t, s, member(room, alice, bob, "ban"))
		send(t, s, member(room, alice, bob, "leave")) // unban
		send(t, s, member(room, bob, bob, "join"))
		send(t, s, member(room, alice, bob, "leave")) // kick
	})
}

func TestTxnScopedToRoom(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		one, two := createRoom(t, s, "", "public"), createRoom(t, s, "", "public")
		txn := &Txn{DeviceID: "DEV", TxnID: "t"}
		r1, r2 := message(one, alice, "a"), message(two, alice, "a")
		r1.Txn, r2.Txn = txn, txn
		a, b := send(t, s, r1), send(t, s, r2)
		if a == b {
			t.Errorf("the same txn in two rooms returned one event %s", a)
		}
		if again := send(t, s, r2); again != b {
			t.Errorf("resend in the second room returned %s; want %s", again, b)
		}
	})
}

func TestCreateEventRefused(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		for _, v := range []string{"11", "12"} {
			room := createRoom(t, s, v, "public")
			_, err := s.Send(context.Background(), state(room, alice, spec.MRoomCreate, map[string]any{"room_version": v, "entropy": 1}))
			checkMatrixError(t, err, 400, matrix.CodeBadJSON)
		}
	})
}

func TestV12CreatorsInPowerLevels(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		room := createRoom(t, s, "12", "public")
		_, err := s.Send(ctx, state(room, alice, spec.MRoomPowerLevels, map[string]any{"users": map[string]int{alice: 100}}))
		checkMatrixError(t, err, 400, matrix.CodeBadJSON)
		_, err = s.CreateRoom(ctx, CreateRoomRequest{Creator: alice, RoomVersion: "12",
			CreateContent: raw(map[string]any{"additional_creators": []any{"@ok:test.local", 42}})})
		checkMatrixError(t, err, 400, matrix.CodeBadJSON)
	})
}

func TestRedactedBecause(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		room := createRoom(t, s, "", "public")
		msg := send(t, s, message(room, alice, "oops"))
		red := send(t, s, SendRequest{RoomID: room, Sender: alice, Type: spec.MRoomRedaction, Redacts: msg, Content: raw(map[string]string{"reason": "typo"})})
		var because struct {
			EventID string `json:"event_id"`
			Type    string `json:"type"`
			Redacts string `json:"redacts"`
		}
		testkit.Must(t, json.Unmarshal(unsignedOf(t, s, msg)["redacted_because"], &because), "redacted_because")
		if because.EventID != red || because.Type != spec.MRoomRedaction || because.Redacts != msg {
			t.Errorf("redacted_because = %+v; want the redaction %s of %s", because, red, msg)
		}
	})
}

func TestRestrictedJoin(t *testing.T) {
	for _, tc := range []struct{ version, rule string }{{"8", "restricted"}, {"10", "knock_restricted"}, {"12", "restricted"}} {
		t.Run(tc.version+"/"+tc.rule, func(t *testing.T) {
			testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
				s, _ := newService(t, db)
				ctx := context.Background()
				allowed := createRoom(t, s, "", "public")
				room := createRoom(t, s, tc.version, "invite")
				send(t, s, state(room, alice, spec.MRoomJoinRules, map[string]any{
					"join_rule": tc.rule,
					"allow":     []map[string]any{{"type": "m.room_membership", "room_id": allowed}},
				}))

				_, err := s.Send(ctx, member(room, bob, bob, "join"))
				checkMatrixError(t, err, 403, matrix.CodeForbidden)

				send(t, s, member(allowed, bob, bob, "join"))
				send(t, s, member(room, bob, bob, "join"))
				if got := contentOf(t, s, room, spec.MRoomMember, bob)[authorisingUserKey]; got != alice {
					t.Errorf("%s = %v; want %s", authorisingUserKey, got, alice)
				}
				// join → join ignores a client-supplied authoriser.
				send(t, s, SendRequest{RoomID: room, Sender: bob, Type: spec.MRoomMember, StateKey: ptr(bob),
					Content: raw(map[string]string{"membership": "join", "displayname": "Bobby", authorisingUserKey: "unused"})})
				c := contentOf(t, s, room, spec.MRoomMember, bob)
				if _, ok := c[authorisingUserKey]; ok || c["displayname"] != "Bobby" {
					t.Errorf("join → join content = %v; want displayname Bobby and no authoriser", c)
				}

				send(t, s, member(room, bob, bob, "leave"))
				send(t, s, member(allowed, bob, bob, "leave"))
				_, err = s.Send(ctx, member(room, bob, bob, "join"))
				checkMatrixError(t, err, 403, matrix.CodeForbidden)

				// A mangled allow list lets nobody in without an invite.
				send(t, s, member(allowed, bob, bob, "join"))
				send(t, s, state(room, alice, spec.MRoomJoinRules, map[string]any{"join_rule": tc.rule, "allow": "invalid"}))
				_, err = s.Send(ctx, member(room, bob, bob, "join"))
				checkMatrixError(t, err, 403, matrix.CodeForbidden)
			})
		})
	}
}

func TestUpgradeRoom(t *testing.T) {
	tests := []struct {
		name        string
		from        string
		users       map[string]int // power levels users set by alice in the old room
		upgrader    string
		additional  []string
		wantCreator []string // additional_creators of the new room
		wantUsers   map[string]float64
	}{
		{"admin upgrades v11 to v12", "11", map[string]int{bob: 100}, bob, nil, nil, map[string]float64{}},
		{"moderators are kept", "11", map[string]int{bob: 100, carol: 50}, bob, nil, nil, map[string]float64{carol: 50}},
		{"v12 to v12 with a new creator", "12", map[string]int{bob: 150, carol: 50}, bob, []string{carol}, []string{carol}, map[string]float64{}},
		{"creator upgrades v11 to v12 with additional creators", "11", map[string]int{alice: 100, bob: 100, carol: 50}, alice, []string{bob}, []string{bob}, map[string]float64{carol: 50}},
		{"v10 to v11 raises the upgrader while copying", "10", map[string]int{alice: 100, bob: 100}, bob, nil, nil, map[string]float64{alice: 100, bob: 100}},
	}
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				old := createRoom(t, s, tt.from, "public")
				send(t, s, member(old, bob, bob, "join"))
				send(t, s, member(old, carol, carol, "join"))
				send(t, s, state(old, alice, spec.MRoomName, map[string]string{"name": "Old"}))
				send(t, s, member(old, alice, "@mallory:test.local", "ban"))
				alias := "#up-" + strings.ReplaceAll(tt.name, " ", "-") + ":test.local"
				testkit.Must(t, s.CreateAlias(ctx, alias, old, alice), "creating an alias")
				send(t, s, state(old, alice, spec.MRoomCanonicalAlias, map[string]string{"alias": alias}))
				testkit.Must(t, s.SetPublished(ctx, old, true), "publishing")
				pl := map[string]any{"users": tt.users, "events": map[string]int{"m.room.tombstone": 100}}
				if tt.from == "12" {
					pl["events"] = map[string]int{"m.room.tombstone": 150}
				}
				send(t, s, state(old, alice, spec.MRoomPowerLevels, pl))

				newVersion := "12"
				if tt.from == "10" {
					newVersion = "11"
				}
				_, err := s.UpgradeRoom(ctx, UpgradeRequest{RoomID: old, Sender: carol, NewVersion: newVersion,
					MemberContent: raw(map[string]string{"membership": "join"})})
				checkMatrixError(t, err, 403, matrix.CodeForbidden)

				newID, err := s.UpgradeRoom(ctx, UpgradeRequest{RoomID: old, Sender: tt.upgrader, NewVersion: newVersion,
					AdditionalCreators: tt.additional, MemberContent: raw(map[string]string{"membership": "join"})})
				testkit.Must(t, err, "upgrading")

				create := contentOf(t, s, newID, spec.MRoomCreate, "")
				pred, _ := create["predecessor"].(map[string]any)
				if pred["room_id"] != old {
					t.Errorf("predecessor = %v; want room_id %s", create["predecessor"], old)
				}
				if _, has := pred["event_id"]; has != (newVersion != "12") {
					t.Errorf("predecessor = %v: event_id present = %v", pred, has)
				}
				var gotCreators []string
				if ac, ok := create["additional_creators"].([]any); ok {
					for _, c := range ac {
						gotCreators = append(gotCreators, c.(string))
					}
				}
				if !slices.Equal(gotCreators, tt.wantCreator) {
					t.Errorf("additional_creators = %v; want %v", gotCreators, tt.wantCreator)
				}
				users, _ := contentOf(t, s, newID, spec.MRoomPowerLevels, "")["users"].(map[string]any)
				if len(users) != len(tt.wantUsers) {
					t.Errorf("new users = %v; want %v", users, tt.wantUsers)
				}
				for u, l := range tt.wantUsers {
					if users[u] != l {
						t.Errorf("new users = %v; want %v", users, tt.wantUsers)
					}
				}
				if got := contentOf(t, s, newID, spec.MRoomName, "")["name"]; got != "Old" {
					t.Errorf("new room name = %v; want Old", got)
				}
				if m, _, _ := s.Membership(ctx, newID, "@mallory:test.local"); m != spec.Ban {
					t.Errorf("mallory in the new room: %q; want ban", m)
				}
				// The alias, the canonical alias and the directory entry move to the new room.
				if got, _, err := s.Alias(ctx, alias); err != nil || got != newID {
					t.Errorf("alias %s points to %s (%v); want %s", alias, got, err, newID)
				}
				if got := contentOf(t, s, newID, spec.MRoomCanonicalAlias, "")["alias"]; got != alias {
					t.Errorf("new canonical alias = %v; want %s", got, alias)
				}
				if got := contentOf(t, s, old, spec.MRoomCanonicalAlias, ""); len(got) != 0 {
					t.Errorf("old canonical alias = %v; want it emptied", got)
				}
				if pub, _ := s.Published(ctx, newID); !pub {
					t.Error("the new room is not in the directory")
				}
				if pub, _ := s.Published(ctx, old); pub {
					t.Error("the old room is still in the directory")
				}
				if got := contentOf(t, s, old, "m.room.tombstone", "")["replacement_room"]; got != newID {
					t.Errorf("tombstone replacement_room = %v; want %s", got, newID)
				}
				oldPL := contentOf(t, s, old, spec.MRoomPowerLevels, "")
				if oldPL["events_default"] != float64(50) || oldPL["invite"] != float64(50) {
					t.Errorf("old room power levels = %v; want events_default and invite 50", oldPL)
				}
			})
		}
		_, err := s.UpgradeRoom(ctx, UpgradeRequest{RoomID: createRoom(t, s, "", "public"), Sender: alice, NewVersion: "99"})
		checkMatrixError(t, err, 400, matrix.CodeUnsupportedRoomVer)
	})
}

func TestVisibleInDirectory(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		createRoom(t, s, "", "public") // alice is in a public room
		private := createRoom(t, s, "", "invite")
		send(t, s, member(private, alice, bob, "invite"))
		send(t, s, member(private, bob, bob, "join"))
		everyone := []string{alice, bob, carol}
		tests := []struct {
			searcher string
			want     []string
		}{
			{carol, []string{alice}},      // only users in public rooms
			{bob, []string{alice}},        // not themself: bob is in no public room
			{alice, []string{alice, bob}}, // shares the private room with bob
		}
		for _, tt := range tests {
			got, err := s.VisibleInDirectory(ctx, tt.searcher, everyone)
			testkit.Must(t, err, "visibility for %s", tt.searcher)
			var ids []string
			for u := range got {
				ids = append(ids, u)
			}
			if !slices.Equal(slices.Sorted(slices.Values(ids)), tt.want) {
				t.Errorf("%s sees %v; want %v", tt.searcher, ids, tt.want)
			}
		}
	})
}
