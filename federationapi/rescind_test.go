package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/bus"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/userapi"
)

// downRemote is a federation client whose every request fails, as a resident server that
// refuses to share the room's history with a server not in it.
type downRemote struct{}

var errRefused = errors.New("refused")

func (downRemote) GetEvent(context.Context, spec.ServerName, spec.ServerName, string) (gomatrixserverlib.Transaction, error) {
	return gomatrixserverlib.Transaction{}, errRefused
}

func (downRemote) GetEventAuth(context.Context, spec.ServerName, spec.ServerName, gomatrixserverlib.RoomVersion, string, string) (fclient.RespEventAuth, error) {
	return fclient.RespEventAuth{}, errRefused
}

func (downRemote) LookupStateIDs(context.Context, spec.ServerName, spec.ServerName, string, string) (fclient.RespStateIDs, error) {
	return fclient.RespStateIDs{}, errRefused
}

func (downRemote) LookupMissingEvents(context.Context, spec.ServerName, spec.ServerName, string, fclient.MissingEvents, gomatrixserverlib.RoomVersion) (fclient.RespMissingEvents, error) {
	return fclient.RespMissingEvents{}, errRefused
}

// noUsers is a user API with no profiles.
type noUsers struct{}

func (noUsers) Profile(context.Context, string) (*userapi.Profile, error) {
	return nil, userapi.ErrNoSuchUser
}

// TestRescindedInviteOverFederation: a remote room's inviter rescinds the invite of our user
// (this server is not in the room, so the room's history cannot be fetched): the leave is
// stored out of band. A leave sent by someone else is not.
func TestRescindedInviteOverFederation(t *testing.T) {
	tests := []struct {
		name    string
		sender  string // of the leave
		wantOOB bool
	}{
		{"by the inviter", charlie, true},
		{"by another member", "@dave:remote.test", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
				ctx := context.Background()
				log := slog.New(slog.DiscardHandler)
				f := newFixture(t, db)
				in, err := NewInbound(Config{ServerName: ourName, Key: newKey(t, "ed25519:ours2")},
					Deps{DB: db, KeyRing: f.ring, Rooms: f.rooms, Users: noUsers{}, Log: log, Remote: downRemote{}})
				testkit.Must(t, err, "starting inbound federation")
				r := httpx.NewRouter()
				in.Register(r)
				srv := httptest.NewServer(r)
				t.Cleanup(srv.Close)
				f.srv = srv

				// The remote server's room, where charlie invites alice.
				rdb, err := sqldb.Open(ctx, testkit.SQLiteConn(t), sqldb.Options{})
				testkit.Must(t, err, "opening the remote database")
				t.Cleanup(func() { rdb.Close() })
				res, err := roomserver.New(roomserver.Config{ServerName: remoteName,
					KeyID: gomatrixserverlib.KeyID(f.remoteKey.ID), PrivateKey: f.remoteKey.Private}, rdb, bus.NewStream(0), log)
				testkit.Must(t, err, "starting the remote roomserver")
				roomID, err := res.CreateRoom(ctx, roomserver.CreateRoomRequest{Creator: charlie, RoomVersion: "10", Initial: []roomserver.Fledgling{
					{Type: spec.MRoomMember, StateKey: ptr(charlie), Content: raw(map[string]string{"membership": "join"})},
					{Type: spec.MRoomPowerLevels, StateKey: ptr(""), Content: raw(map[string]any{"users": map[string]int{charlie: 100}})},
					{Type: spec.MRoomJoinRules, StateKey: ptr(""), Content: raw(map[string]string{"join_rule": "public"})},
				}})
				testkit.Must(t, err, "creating the remote room")
				if tt.sender != charlie {
					_, err = res.Send(ctx, roomserver.SendRequest{RoomID: roomID, Sender: tt.sender, Type: spec.MRoomMember,
						StateKey: ptr(tt.sender), Content: raw(map[string]string{"membership": "join"})})
					testkit.Must(t, err, "joining %s", tt.sender)
					_, err = res.Send(ctx, roomserver.SendRequest{RoomID: roomID, Sender: charlie, Type: spec.MRoomPowerLevels,
						StateKey: ptr(""), Content: raw(map[string]any{"users": map[string]int{charlie: 100, tt.sender: 100}})})
					testkit.Must(t, err, "raising %s", tt.sender)
				}
				inviteID, err := res.Send(ctx, roomserver.SendRequest{RoomID: roomID, Sender: charlie, Type: spec.MRoomMember,
					StateKey: ptr(alice), Content: raw(map[string]string{"membership": "invite"})})
				testkit.Must(t, err, "inviting alice")
				invite, err := res.Event(ctx, inviteID)
				testkit.Must(t, err, "loading the invite")
				_, err = f.rooms.StoreOutOfBandMembership(ctx, invite.PDU, nil)
				testkit.Must(t, err, "storing the invite")
				// Something in between, so the leave's prev_events are unknown here.
				_, err = res.Send(ctx, roomserver.SendRequest{RoomID: roomID, Sender: charlie, Type: "m.room.message",
					Content: raw(map[string]string{"body": "hi"})})
				testkit.Must(t, err, "sending a message")
				leaveID, err := res.Send(ctx, roomserver.SendRequest{RoomID: roomID, Sender: tt.sender, Type: spec.MRoomMember,
					StateKey: ptr(alice), Content: raw(map[string]string{"membership": "leave"})})
				testkit.Must(t, err, "rescinding")
				leave, err := res.Event(ctx, leaveID)
				testkit.Must(t, err, "loading the leave")

				code, body := f.remote("PUT", "/_matrix/federation/v1/send/t1", map[string]any{
					"origin": remoteName, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{leave.PDU.JSON()},
				})
				if code != 200 {
					t.Fatalf("send: %d %s", code, body)
				}
				m, _, err := f.rooms.Membership(ctx, roomID, alice)
				testkit.Must(t, err, "reading alice's membership")
				if want := map[bool]string{true: spec.Leave, false: spec.Invite}[tt.wantOOB]; m != want {
					t.Errorf("alice's membership = %q; want %q", m, want)
				}
			})
		})
	}
}
