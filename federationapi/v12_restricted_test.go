package federationapi

import (
	"context"
	"encoding/json"
	"net/url"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
	"github.com/myelin-chat/myelin/roomserver"
)

// joinV12 makes charlie join roomID (v12) through make_join and send_join v2.
func (f *fixture) joinVersion(roomID, ver string) (int, []byte) {
	f.t.Helper()
	code, body := f.remote("GET", "/_matrix/federation/v1/make_join/"+url.PathEscape(roomID)+"/"+url.PathEscape(charlie)+"?ver="+ver, nil)
	if code != 200 {
		return code, body
	}
	var mj fclient.RespMakeJoin
	testkit.Must(f.t, json.Unmarshal(body, &mj), "decoding make_join")
	v := gomatrixserverlib.MustGetRoomVersion(mj.RoomVersion)
	ev, err := v.NewEventBuilderFromProtoEvent(&mj.JoinEvent).Build(time.Now(), remoteName, gomatrixserverlib.KeyID(f.remoteKey.ID), f.remoteKey.Private)
	testkit.Must(f.t, err, "building join")
	return f.remote("PUT", "/_matrix/federation/v2/send_join/"+url.PathEscape(roomID)+"/"+url.PathEscape(ev.EventID()), json.RawMessage(ev.JSON()))
}

// TestRestrictedJoinV12: a remote user in the allowed room joins a v12 restricted room whose
// only member is its creator (not in the power levels' users).
func TestRestrictedJoinV12(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		ctx := context.Background()
		f := newFixture(t, db)
		allowed := f.room // a v10 room
		room, err := f.rooms.CreateRoom(ctx, roomserver.CreateRoomRequest{Creator: alice, RoomVersion: "12", Initial: []roomserver.Fledgling{
			{Type: spec.MRoomMember, StateKey: ptr(alice), Content: raw(map[string]string{"membership": "join"})},
			{Type: spec.MRoomPowerLevels, StateKey: ptr(""), Content: raw(map[string]any{})},
			{Type: spec.MRoomJoinRules, StateKey: ptr(""), Content: raw(map[string]any{"join_rule": "restricted",
				"allow": []map[string]string{{"type": "m.room_membership", "room_id": allowed}}})},
		}})
		testkit.Must(t, err, "creating the restricted room")
		if code, body := f.joinVersion(allowed, "10"); code != 200 {
			t.Fatalf("joining the allowed room: %d %s", code, body)
		}
		if code, body := f.joinVersion(room, "12"); code != 200 {
			t.Fatalf("joining the restricted room: %d %s", code, body)
		}
	})
}
