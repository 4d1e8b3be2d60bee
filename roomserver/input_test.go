package roomserver

import (
	"context"
	"crypto/ed25519"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
)

// remoteBuilder builds events of room as a remote server would, on chosen prev_events.
type remoteBuilder struct {
	t    *testing.T
	s    *Service
	room string
	key  ed25519.PrivateKey
}

func (b *remoteBuilder) build(sender, evType string, stateKey *string, content any, prev []string, depth int64, auth ...gomatrixserverlib.StateKeyTuple) gomatrixserverlib.PDU {
	b.t.Helper()
	ctx := context.Background()
	ri, err := b.s.roomInfo(ctx, b.room)
	testkit.Must(b.t, err, "room")
	evs, err := currentStateEvents(ctx, b.s.db, ri.nid, auth)
	testkit.Must(b.t, err, "auth events")
	var ids []string
	for _, e := range evs {
		ids = append(ids, e.PDU.EventID())
	}
	ev, err := ri.version.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
		SenderID: sender, RoomID: b.room, Type: evType, StateKey: stateKey, Content: spec.RawJSON(raw(content)),
		PrevEvents: prev, AuthEvents: ids, Depth: depth,
	}).Build(time.Now(), "remote.example", "ed25519:r", b.key)
	testkit.Must(b.t, err, "building %s", evType)
	return ev
}

func TestInputForksAndRejections(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		ctx := context.Background()
		s, _ := newService(t, db)
		room := createRoom(t, s, "10", "public")
		_, key, _ := ed25519.GenerateKey(nil)
		b := &remoteBuilder{t: t, s: s, room: room, key: key}
		const dave, erin = "@dave:remote.example", "@erin:remote.example"
		base := []gomatrixserverlib.StateKeyTuple{{EventType: spec.MRoomCreate}, {EventType: spec.MRoomPowerLevels}, {EventType: spec.MRoomJoinRules}}
		ext, depth, err := s.Extremities(ctx, room)
		testkit.Must(t, err, "extremities")

		// Two joins on the same prev_events fork the DAG; both count.
		j1 := b.build(dave, spec.MRoomMember, ptr(dave), map[string]string{"membership": "join"}, ext, depth+1, base...)
		j2 := b.build(erin, spec.MRoomMember, ptr(erin), map[string]string{"membership": "join"}, ext, depth+1, base...)
		for _, j := range []gomatrixserverlib.PDU{j1, j2} {
			res, err := s.InputEvent(ctx, j, InputOptions{})
			testkit.Must(t, err, "inputting %s", j.EventID())
			if res.Pos == 0 || res.SoftFailed {
				t.Errorf("join %s: %+v; want a timeline event", j.EventID(), res)
			}
		}
		ext2, _, err := s.Extremities(ctx, room)
		testkit.Must(t, err, "extremities")
		if !sameSet(ext2, []string{j1.EventID(), j2.EventID()}) {
			t.Errorf("extremities %v; want both joins", ext2)
		}
		for _, u := range []string{dave, erin} {
			if m, _, _ := s.Membership(ctx, room, u); m != spec.Join {
				t.Errorf("%s membership %q; want join", u, m)
			}
		}
		// A local event merges the fork.
		id := send(t, s, message(room, alice, "merge"))
		ev, err := s.Event(ctx, id)
		testkit.Must(t, err, "loading")
		if !sameSet(ev.PDU.PrevEventIDs(), ext2) {
			t.Errorf("merge prev_events %v; want %v", ev.PDU.PrevEventIDs(), ext2)
		}

		// An event failing the auth rules is rejected and remembered; an event built on it
		// is accepted with the state before it.
		ext, depth, _ = s.Extremities(ctx, room)
		pl := b.build(dave, spec.MRoomPowerLevels, ptr(""), map[string]any{"users": map[string]int{dave: 100}}, ext, depth+1,
			gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomCreate}, gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomPowerLevels},
			gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomMember, StateKey: dave})
		if _, err := s.InputEvent(ctx, pl, InputOptions{}); !errors.Is(err, ErrRejected) {
			t.Fatalf("power levels from dave: %v; want a rejection", err)
		}
		if _, err := s.InputEvent(ctx, pl, InputOptions{}); !errors.Is(err, ErrRejected) {
			t.Errorf("power levels again: %v; want the remembered rejection", err)
		}
		if _, err := s.Event(ctx, pl.EventID()); err == nil {
			t.Errorf("rejected event is served")
		}
		msg := b.build(dave, "m.room.message", nil, map[string]string{"body": "after"}, []string{pl.EventID()}, depth+2,
			gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomCreate}, gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomPowerLevels},
			gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomMember, StateKey: dave})
		res, err := s.InputEvent(ctx, msg, InputOptions{})
		testkit.Must(t, err, "inputting the event after the rejected one")
		if res.Pos == 0 {
			t.Errorf("event after a rejected one: %+v", res)
		}
		ext, _, _ = s.Extremities(ctx, room)
		if !slices.Equal(ext, []string{msg.EventID()}) {
			t.Errorf("extremities %v; want [%s]", ext, msg.EventID())
		}
		cur, err := s.CurrentStateEvent(ctx, room, spec.MRoomPowerLevels, "")
		testkit.Must(t, err, "power levels")
		if cur.PDU.EventID() == pl.EventID() {
			t.Errorf("rejected power levels became current")
		}

		// Missing prev_events are reported.
		orphan := b.build(dave, "m.room.message", nil, map[string]string{"body": "?"}, []string{"$unknown"}, depth+3,
			gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomCreate}, gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomPowerLevels},
			gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomMember, StateKey: dave})
		var me *MissingEventsError
		if _, err := s.InputEvent(ctx, orphan, InputOptions{}); !errors.As(err, &me) || me.Auth || !slices.Equal(me.IDs, []string{"$unknown"}) {
			t.Errorf("orphan: %v; want missing prev $unknown", err)
		}
	})
}

// TestRoomEventsByDepth checks topological paging: an event of an old fork that arrives
// after newer events comes after them in stream order but before them by depth.
func TestRoomEventsByDepth(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		ctx := context.Background()
		s, _ := newService(t, db)
		room := createRoom(t, s, "10", "public")
		_, key, _ := ed25519.GenerateKey(nil)
		b := &remoteBuilder{t: t, s: s, room: room, key: key}
		const dave = "@dave:remote.example"
		base := []gomatrixserverlib.StateKeyTuple{{EventType: spec.MRoomCreate}, {EventType: spec.MRoomPowerLevels}, {EventType: spec.MRoomJoinRules}}
		ext, depth, err := s.Extremities(ctx, room)
		testkit.Must(t, err, "extremities")
		join := b.build(dave, spec.MRoomMember, ptr(dave), map[string]string{"membership": "join"}, ext, depth+1, base...)
		_, err = s.InputEvent(ctx, join, InputOptions{})
		testkit.Must(t, err, "joining dave")
		forkPoint, forkDepth, _ := s.Extremities(ctx, room)
		e3 := send(t, s, message(room, alice, "e3"))
		e4 := send(t, s, message(room, alice, "e4"))
		// The fork: built on the join, so one deeper than it, but stored after e4.
		late := b.build(dave, spec.MRoomMember, ptr(dave), map[string]string{"membership": "join", "displayname": "late"}, forkPoint, forkDepth+1,
			append(base, gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomMember, StateKey: dave})...)
		_, err = s.InputEvent(ctx, late, InputOptions{})
		testkit.Must(t, err, "inputting the late fork")
		end, _ := s.MaxStreamPos(ctx)

		var got []string
		var cursor *DepthCursor
		for {
			page, more, err := s.RoomEventsByDepth(ctx, room, end, cursor, 2)
			testkit.Must(t, err, "paging by depth")
			for _, e := range page {
				got = append(got, e.PDU.EventID())
			}
			if !more {
				break
			}
			last := page[len(page)-1]
			cursor = &DepthCursor{Depth: last.PDU.Depth(), StreamPos: last.StreamPos}
		}
		// Newest first: e4 (deepest), then late and e3 (same depth, late stored after e3),
		// then the join, then the room's creation events.
		if len(got) < 4 || !slices.Equal(got[:4], []string{e4, late.EventID(), e3, join.EventID()}) {
			t.Errorf("by depth = %v; want e4 %s, late %s, e3 %s, join %s first", got, e4, late.EventID(), e3, join.EventID())
		}
		ids, err := s.StateEventIDsBetween(ctx, room, 0, end)
		testkit.Must(t, err, "state events")
		if !slices.Contains(ids, late.EventID()) || slices.Contains(ids, e3) {
			t.Errorf("StateEventIDsBetween = %v; want the late member event and no message", ids)
		}
	})
}
