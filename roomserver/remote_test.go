package roomserver

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/bus"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
)

const carolRemote = "@carol:remote.test"

// fakeRemote plays the other servers: remote.test is a second roomserver; every other server
// is down.
type fakeRemote struct {
	t       *testing.T
	local   *Service // for its signing key
	res     *Service // remote.test
	tried   []string
	invited []gomatrixserverlib.PDU
	leaves  int
}

var errDown = errors.New("server down")

// sign builds the event of template p with the local server's key, as PerformJoin does.
func (f *fakeRemote) sign(p *gomatrixserverlib.ProtoEvent, ver gomatrixserverlib.IRoomVersion) gomatrixserverlib.PDU {
	ev, err := ver.NewEventBuilderFromProtoEvent(p).Build(time.Now(), spec.ServerName(f.local.cfg.ServerName), f.local.cfg.KeyID, f.local.cfg.PrivateKey)
	testkit.Must(f.t, err, "signing event")
	return ev
}

func (f *fakeRemote) memberEvent(ctx context.Context, server, roomID, userID string, content map[string]any) (gomatrixserverlib.PDU, error) {
	f.tried = append(f.tried, server)
	if server != "remote.test" {
		return nil, errDown
	}
	ri, err := f.res.roomInfo(ctx, roomID)
	if err != nil {
		return nil, err
	}
	p := &gomatrixserverlib.ProtoEvent{SenderID: userID, RoomID: roomID, Type: spec.MRoomMember, StateKey: &userID, Content: spec.RawJSON(raw(content))}
	if _, _, err := f.res.BuildTemplate(ctx, p); err != nil {
		return nil, err
	}
	ev := f.sign(p, ri.version)
	if _, err := f.res.InputEvent(ctx, ev, InputOptions{}); err != nil {
		return nil, err
	}
	return ev, nil
}

func (f *fakeRemote) Join(ctx context.Context, server, roomID, userID string, content map[string]any) (*RemoteJoin, error) {
	ev, err := f.memberEvent(ctx, server, roomID, userID, content)
	if err != nil {
		return nil, err
	}
	state, chain, err := f.res.StateAtEvent(ctx, roomID, ev.EventID())
	if err != nil {
		return nil, err
	}
	all := append(chain, state...)
	j := &RemoteJoin{Event: ev, Events: gomatrixserverlib.ReverseTopologicalOrdering(all, gomatrixserverlib.TopologicalOrderByAuthEvents)}
	for _, s := range state {
		j.State = append(j.State, s.EventID())
	}
	return j, nil
}

func (f *fakeRemote) Invite(_ context.Context, ev gomatrixserverlib.PDU, _ []json.RawMessage) (gomatrixserverlib.PDU, error) {
	f.invited = append(f.invited, ev)
	return ev, nil
}

func (f *fakeRemote) Leave(ctx context.Context, server, roomID, userID string, content map[string]any) (gomatrixserverlib.PDU, error) {
	f.leaves++
	return f.memberEvent(ctx, server, roomID, userID, content)
}

func (f *fakeRemote) Knock(context.Context, string, string, string, map[string]any) (gomatrixserverlib.PDU, []json.RawMessage, error) {
	return nil, nil, errDown
}

func (f *fakeRemote) Alias(context.Context, string, string) (string, []string, error) {
	return "", nil, errDown
}

func newRemotePair(t *testing.T, db *sqldb.DB) (*Service, *fakeRemote) {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(nil)
	f := &fakeRemote{t: t}
	local, err := New(Config{ServerName: "test.local", KeyID: "ed25519:l", PrivateKey: priv, Remote: f}, db, bus.NewStream(0),
		slog.New(slog.DiscardHandler))
	testkit.Must(t, err, "starting local roomserver")
	rdb, err := sqldb.Open(context.Background(), testkit.SQLiteConn(t), sqldb.Options{})
	testkit.Must(t, err, "opening remote database")
	t.Cleanup(func() { rdb.Close() })
	_, rpriv, _ := ed25519.GenerateKey(nil)
	res, err := New(Config{ServerName: "remote.test", KeyID: "ed25519:r", PrivateKey: rpriv}, rdb, bus.NewStream(0),
		slog.New(slog.DiscardHandler))
	testkit.Must(t, err, "starting remote roomserver")
	f.local, f.res = local, res
	return local, f
}

func TestJoinRemoteRoomFailsOver(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		ctx := context.Background()
		local, f := newRemotePair(t, db)
		roomID, err := f.res.CreateRoom(ctx, CreateRoomRequest{Creator: carolRemote, Initial: initial("11", carolRemote, "public")})
		testkit.Must(t, err, "creating the remote room")

		got, err := local.JoinRoom(ctx, MembershipRequest{RoomID: roomID, UserID: alice, Via: []string{"down.test", "test.local", "remote.test"}})
		testkit.Must(t, err, "joining")
		if got != roomID {
			t.Errorf("JoinRoom = %s; want %s", got, roomID)
		}
		if want := []string{"down.test", "remote.test"}; !slices.Equal(f.tried, want) {
			t.Errorf("tried %v; want %v (never ourselves)", f.tried, want)
		}
		members, err := local.JoinedMembers(ctx, roomID)
		testkit.Must(t, err, "listing members")
		if want := []string{alice, carolRemote}; !slices.Equal(members, want) {
			t.Errorf("members = %v; want %v", members, want)
		}
		if in, _ := local.ServerInRoom(ctx, roomID, "test.local"); !in {
			t.Error("after the join, this server is not in the room")
		}
		// Now in the room: a second local user joins locally.
		f.tried = nil
		_, err = local.JoinRoom(ctx, MembershipRequest{RoomID: roomID, UserID: bob, Via: []string{"remote.test"}})
		testkit.Must(t, err, "joining locally")
		if len(f.tried) != 0 {
			t.Errorf("a join to a room we are in went to %v", f.tried)
		}

		// Unknown room, no servers: 404.
		f.tried = nil
		if _, err := local.JoinRoom(ctx, MembershipRequest{RoomID: "!nope:test.local", UserID: alice}); !errors.Is(err, sqldb.ErrNotFound) && (err == nil || !strings.Contains(err.Error(), "404")) {
			t.Errorf("joining an unknown room with no servers: err = %v; want 404", err)
		}
	})
}

func TestRemoteInviteAndRejection(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		ctx := context.Background()
		local, f := newRemotePair(t, db)

		// alice invites carol@remote.test: the invitee's server gets the invite to sign.
		roomID := createRoom(t, local, "11", "invite")
		id, err := local.Send(ctx, SendRequest{RoomID: roomID, Sender: alice, Type: spec.MRoomMember, StateKey: ptr(carolRemote),
			Content: raw(map[string]string{"membership": "invite"})})
		testkit.Must(t, err, "inviting")
		if len(f.invited) != 1 || f.invited[0].EventID() != id {
			t.Fatalf("remote got invites %v; want the one event %s", f.invited, id)
		}
		if m, _, _ := local.Membership(ctx, roomID, carolRemote); m != spec.Invite {
			t.Errorf("carol's membership = %q; want invite", m)
		}

		// carol@remote.test invites alice to a remote room; alice rejects through remote.test.
		remoteRoom, err := f.res.CreateRoom(ctx, CreateRoomRequest{Creator: carolRemote, Initial: initial("11", carolRemote, "invite")})
		testkit.Must(t, err, "creating the remote room")
		inviteID, err := f.res.Send(ctx, SendRequest{RoomID: remoteRoom, Sender: carolRemote, Type: spec.MRoomMember, StateKey: ptr(alice),
			Content: raw(map[string]string{"membership": "invite"})})
		testkit.Must(t, err, "inviting alice")
		invite, err := f.res.Event(ctx, inviteID)
		testkit.Must(t, err, "loading invite")
		_, err = local.StoreOutOfBandMembership(ctx, invite.PDU, []json.RawMessage{json.RawMessage(`{"type":"m.room.name","state_key":"","sender":"` + carolRemote + `","content":{"name":"r"}}`)})
		testkit.Must(t, err, "storing the invite")
		if m, _, _ := local.Membership(ctx, remoteRoom, alice); m != spec.Invite {
			t.Fatalf("alice's membership = %q; want invite", m)
		}
		leaveID, err := local.Send(ctx, SendRequest{RoomID: remoteRoom, Sender: alice, Type: spec.MRoomMember, StateKey: ptr(alice),
			Content: raw(map[string]string{"membership": "leave"})})
		testkit.Must(t, err, "rejecting")
		if f.leaves != 1 {
			t.Errorf("make_leave/send_leave calls = %d; want 1", f.leaves)
		}
		if m, ev, _ := local.Membership(ctx, remoteRoom, alice); m != spec.Leave || ev.PDU.EventID() != leaveID {
			t.Errorf("alice's membership = %q; want leave %s", m, leaveID)
		}
		if m, _, _ := f.res.Membership(ctx, remoteRoom, alice); m != spec.Leave {
			t.Errorf("remote sees alice's membership %q; want leave", m)
		}
	})
}

func TestRejectionFallsBackToLocalLeave(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		ctx := context.Background()
		local, f := newRemotePair(t, db)
		remoteRoom, err := f.res.CreateRoom(ctx, CreateRoomRequest{Creator: carolRemote, Initial: initial("11", carolRemote, "invite")})
		testkit.Must(t, err, "creating the remote room")
		inviteID, err := f.res.Send(ctx, SendRequest{RoomID: remoteRoom, Sender: carolRemote, Type: spec.MRoomMember, StateKey: ptr(alice),
			Content: raw(map[string]string{"membership": "invite"})})
		testkit.Must(t, err, "inviting alice")
		invite, err := f.res.Event(ctx, inviteID)
		testkit.Must(t, err, "loading invite")
		// An invite "from" a server that is down.
		_, err = local.StoreOutOfBandMembership(ctx, invite.PDU, nil)
		testkit.Must(t, err, "storing the invite")
		local.cfg.Remote = downRemote{f} // and remote.test is down too
		leaveID, err := local.Send(ctx, SendRequest{RoomID: remoteRoom, Sender: alice, Type: spec.MRoomMember, StateKey: ptr(alice),
			Content: raw(map[string]string{"membership": "leave"})})
		testkit.Must(t, err, "rejecting with every server down")
		m, ev, err := local.Membership(ctx, remoteRoom, alice)
		testkit.Must(t, err, "reading membership")
		if m != spec.Leave || ev.PDU.EventID() != leaveID || !slices.Equal(ev.PDU.PrevEventIDs(), []string{inviteID}) {
			t.Errorf("membership %q by %v; want a local leave %s on top of the invite", m, ev, leaveID)
		}
	})
}

// downRemote is a federation where every server is down.
type downRemote struct{ *fakeRemote }

func (downRemote) Leave(context.Context, string, string, string, map[string]any) (gomatrixserverlib.PDU, error) {
	return nil, errDown
}
