package roomserver

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
)

// TestRejoinAfterUnbanViaInvite: a local user joined to a remote room is banned, unbanned
// while this server is out of the room, invited again (out of band) and joins again.
func TestRejoinAfterUnbanViaInvite(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		ctx := context.Background()
		local, f := newRemotePair(t, db)
		roomID, err := f.res.CreateRoom(ctx, CreateRoomRequest{Creator: carolRemote, Initial: initial("10", carolRemote, "public")})
		testkit.Must(t, err, "creating the remote room")
		_, err = local.JoinRoom(ctx, MembershipRequest{RoomID: roomID, UserID: alice, Via: []string{"remote.test"}})
		testkit.Must(t, err, "joining")

		send := func(membership string, push bool) string {
			id, err := f.res.Send(ctx, SendRequest{RoomID: roomID, Sender: carolRemote, Type: spec.MRoomMember, StateKey: ptr(alice),
				Content: raw(map[string]string{"membership": membership})})
			testkit.Must(t, err, "sending %s", membership)
			if push {
				ev, err := f.res.Event(ctx, id)
				testkit.Must(t, err, "loading %s", membership)
				_, err = local.InputEvent(ctx, ev.PDU, InputOptions{})
				testkit.Must(t, err, "inputting %s", membership)
			}
			return id
		}
		send(spec.Ban, true)
		send(spec.Leave, false)
		inviteID := send(spec.Invite, false)
		invite, err := f.res.Event(ctx, inviteID)
		testkit.Must(t, err, "loading invite")
		_, err = local.StoreOutOfBandMembership(ctx, invite.PDU, nil)
		testkit.Must(t, err, "storing the invite")

		_, err = local.JoinRoom(ctx, MembershipRequest{RoomID: roomID, UserID: alice, Via: []string{"remote.test"}})
		testkit.Must(t, err, "joining again")
		if m, _, _ := local.Membership(ctx, roomID, alice); m != spec.Join {
			t.Errorf("alice's membership = %q; want join", m)
		}
		ev, err := local.CurrentStateEvent(ctx, roomID, spec.MRoomMember, alice)
		testkit.Must(t, err, "loading alice's current member event")
		if m, _ := ev.PDU.Membership(); m != spec.Join {
			t.Errorf("alice's member event in the current state is %q; want join", m)
		}
		// The join replaces the invite: clients are told what it replaced (is_direct etc.).
		var u struct {
			PrevContent struct {
				Membership string `json:"membership"`
			} `json:"prev_content"`
		}
		_ = json.Unmarshal(ev.PDU.Unsigned(), &u)
		if u.PrevContent.Membership != spec.Invite {
			t.Errorf("the join's unsigned = %s; want prev_content of the invite", ev.PDU.Unsigned())
		}
		ext, _, err := local.Extremities(ctx, roomID)
		testkit.Must(t, err, "loading extremities")
		if len(ext) != 1 || ext[0] != ev.PDU.EventID() {
			t.Errorf("forward extremities = %v; want only the join %s", ext, ev.PDU.EventID())
		}
	})
}
