package sender

import (
	"context"
	"crypto/ed25519"
	"slices"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/testkit"
	"github.com/myelin-chat/myelin/roomserver"
)

// fakeMembers answers JoinedMembers from a fixed map; the stream is empty (position 0), so
// every event the test feeds is applied to the cache.
type fakeMembers map[string][]string

func (f fakeMembers) SenderEvents(context.Context, int64, int64, int) ([]*roomserver.Event, int64, error) {
	return nil, 0, nil
}
func (f fakeMembers) JoinedMembers(_ context.Context, roomID string) ([]string, error) {
	return f[roomID], nil
}
func (f fakeMembers) MaxStreamPos(context.Context) (int64, error) { return 0, nil }
func (f fakeMembers) RoomsForUser(context.Context, string, ...string) ([]string, error) {
	return nil, nil
}

func TestDestinations(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(nil)
	ver := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionV10)
	build := func(roomID, sender, typ string, stateKey *string, content string) gomatrixserverlib.PDU {
		ev, err := ver.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
			SenderID: sender, RoomID: roomID, Type: typ, StateKey: stateKey, Content: spec.RawJSON(content),
			PrevEvents: []string{}, AuthEvents: []string{}, Depth: 1,
		}).Build(time.Now(), spec.ServerName(origin), "ed25519:a", priv)
		testkit.Must(t, err, "building event")
		return ev
	}
	member := func(roomID, sender, target, membership string) gomatrixserverlib.PDU {
		return build(roomID, sender, spec.MRoomMember, &target, `{"membership":"`+membership+`"}`)
	}
	withPrev := func(ev gomatrixserverlib.PDU, prev string) gomatrixserverlib.PDU {
		out, err := ev.SetUnsigned(map[string]any{"prev_content": map[string]string{"membership": prev}})
		testkit.Must(t, err, "setting unsigned")
		return out
	}
	const (
		room  = "!r:origin.test"
		other = "!o:elsewhere.test"
		carol = "@carol:b.test"
	)
	// Pure: no database or transport is needed to work out destinations.
	s := &Sender{cfg: Config{ServerName: origin}, rooms: fakeMembers{room: {alice, "@bob:a.test"}}, members: map[string]*roomMembers{}}

	for i, tc := range []struct {
		what string
		ev   gomatrixserverlib.PDU
		want []string
	}{
		{"a local message goes to the joined servers", build(room, alice, "m.room.message", nil, `{"body":"hi"}`), []string{"a.test"}},
		{"a remote join through us is forwarded", member(room, carol, carol, "join"), []string{"a.test"}},
		{"a remote message is not", build(room, carol, "m.room.message", nil, `{"body":"yo"}`), nil},
		{"a kick reaches the kicked server", member(room, alice, carol, "leave"), []string{"a.test", "b.test"}},
		{"a remote join from a server in the room is not forwarded", member(room, "@dave:a.test", "@dave:a.test", "join"), nil},
		{"a local invite goes to the joined servers only", member(room, alice, "@erin:c.test", "invite"), []string{"a.test"}},
		{"a rescinded invite reaches the invitee's server", withPrev(member(room, alice, "@erin:c.test", "leave"), "invite"), []string{"a.test", "c.test"}},
		{"our join through a resident server is not sent again", member(other, alice, alice, "join"), nil},
	} {
		got, err := s.destinations(context.Background(), &roomserver.Event{PDU: tc.ev, StreamPos: int64(i + 1)})
		testkit.Must(t, err, "destinations")
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v; want %v", tc.what, got, tc.want)
		}
	}
	if got, _ := s.JoinedServers(context.Background(), room); !slices.Equal(got, []string{"a.test"}) {
		t.Errorf("JoinedServers = %v; want [a.test]", got)
	}
}
