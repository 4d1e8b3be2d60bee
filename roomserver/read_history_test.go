package roomserver

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
)

func event(t *testing.T, s *Service, id string) *Event {
	t.Helper()
	ev, err := s.Event(context.Background(), id)
	testkit.Must(t, err, "loading %s", id)
	return ev
}

// TestVisibleEvents walks bob through a room's life — before his invite, invited, joined,
// left — under each history visibility, and checks what he and a stranger may see, and bob's
// membership at each event (MSC4115).
func TestVisibleEvents(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		for _, tc := range []struct {
			visibility string
			bob        [4]bool // before invite, invited, joined, after leave
			carol      bool
		}{
			{VisibilityWorldReadable, [4]bool{true, true, true, true}, true},
			{VisibilityShared, [4]bool{true, true, true, false}, false},
			{VisibilityInvited, [4]bool{false, true, true, false}, false},
			{VisibilityJoined, [4]bool{false, false, true, false}, false},
		} {
			t.Run(tc.visibility, func(t *testing.T) {
				roomID := createRoom(t, s, "11", "public")
				send(t, s, state(roomID, alice, spec.MRoomHistoryVisibility, map[string]string{"history_visibility": tc.visibility}))
				var msgs []*Event
				msgs = append(msgs, event(t, s, send(t, s, message(roomID, alice, "before invite"))))
				send(t, s, member(roomID, alice, bob, spec.Invite))
				msgs = append(msgs, event(t, s, send(t, s, message(roomID, alice, "invited"))))
				join := event(t, s, send(t, s, member(roomID, bob, bob, spec.Join)))
				msgs = append(msgs, event(t, s, send(t, s, message(roomID, alice, "joined"))))
				leave := event(t, s, send(t, s, member(roomID, bob, bob, spec.Leave)))
				msgs = append(msgs, event(t, s, send(t, s, message(roomID, alice, "left"))))

				vis, ms, err := s.VisibleEvents(ctx, bob, msgs)
				testkit.Must(t, err, "VisibleEvents")
				wantMembership := []string{spec.Leave, spec.Invite, spec.Join, spec.Leave}
				var wantVis []*Event
				var wantMs []string
				for i, ok := range tc.bob {
					if ok {
						wantVis = append(wantVis, msgs[i])
						wantMs = append(wantMs, wantMembership[i])
					}
				}
				if !slices.Equal(vis, wantVis) || !slices.Equal(ms, wantMs) {
					t.Errorf("bob sees %d events with memberships %v; want %d with %v", len(vis), ms, len(wantVis), wantMs)
				}
				// Bob always sees his own join and leave, whatever the visibility.
				own, ms, err := s.VisibleEvents(ctx, bob, []*Event{join, leave})
				testkit.Must(t, err, "VisibleEvents own")
				if len(own) != 2 || !slices.Equal(ms, []string{spec.Join, spec.Leave}) {
					t.Errorf("bob's own membership events: %d visible, memberships %v; want 2, [join leave]", len(own), ms)
				}
				vis, _, err = s.VisibleEvents(ctx, carol, msgs)
				testkit.Must(t, err, "VisibleEvents carol")
				if got := len(vis) == len(msgs); got != tc.carol || (!tc.carol && len(vis) != 0) {
					t.Errorf("carol sees %d of %d events; want all=%v", len(vis), len(msgs), tc.carol)
				}
				_, ok, err := s.CanSeeEvent(ctx, bob, msgs[2])
				testkit.Must(t, err, "CanSeeEvent")
				if !ok {
					t.Errorf("CanSeeEvent(bob, joined message) = false")
				}
			})
		}
	})
}

// TestVisibilityFollowsChanges checks that each event is judged by the visibility in force
// when it was sent, across several changes in one batch.
func TestVisibilityFollowsChanges(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		roomID := createRoom(t, s, "10", "public")
		hv := func(v string) *Event {
			return event(t, s, send(t, s, state(roomID, alice, spec.MRoomHistoryVisibility, map[string]string{"history_visibility": v})))
		}
		msg := func(body string) *Event { return event(t, s, send(t, s, message(roomID, alice, body))) }
		toJoined := hv(VisibilityJoined)
		hidden := msg("joined-only")
		toWorld := hv(VisibilityWorldReadable)
		open := msg("world readable")
		toJoined2 := hv(VisibilityJoined)
		hidden2 := msg("joined-only again")
		vis, _, err := s.VisibleEvents(ctx, carol, []*Event{toJoined, hidden, toWorld, open, toJoined2, hidden2})
		testkit.Must(t, err, "VisibleEvents")
		// A visibility event is visible if the visibility before or after it allows.
		want := []*Event{toWorld, open, toJoined2}
		if !slices.Equal(vis, want) {
			var got []string
			for _, e := range vis {
				got = append(got, string(e.PDU.Content()))
			}
			t.Errorf("carol sees %v; want the change to world_readable, the open message and the change away", got)
		}
	})
}

func TestStateReadsAtAPoint(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		roomID := createRoom(t, s, "11", "public")
		first := event(t, s, send(t, s, message(roomID, alice, "hello")))
		send(t, s, state(roomID, alice, "m.room.name", map[string]string{"name": "before"}))
		send(t, s, member(roomID, bob, bob, spec.Join))
		bobMsg := event(t, s, send(t, s, message(roomID, bob, "hi")))
		leave := event(t, s, send(t, s, member(roomID, bob, bob, spec.Leave)))
		send(t, s, state(roomID, alice, "m.room.name", map[string]string{"name": "after"}))
		send(t, s, member(roomID, carol, carol, spec.Join))

		name, err := s.StateEventAfter(ctx, leave.PDU.EventID(), "m.room.name", "")
		testkit.Must(t, err, "StateEventAfter")
		if got := string(name.PDU.Content()); got != `{"name":"before"}` {
			t.Errorf("name after bob's leave = %s; want before", got)
		}
		if _, err := s.StateEventAfter(ctx, first.PDU.EventID(), "m.room.name", ""); err == nil {
			t.Errorf("name after the first message: got one, want not found")
		}
		members, err := s.MemberEventsAfter(ctx, leave.PDU.EventID())
		testkit.Must(t, err, "MemberEventsAfter")
		got := map[string]string{}
		for _, e := range members {
			got[*e.PDU.StateKey()], _ = e.PDU.Membership()
		}
		if len(got) != 2 || got[alice] != spec.Join || got[bob] != spec.Leave {
			t.Errorf("members after bob's leave = %v; want alice join, bob leave", got)
		}
		cur, err := s.MemberEvents(ctx, roomID, nil, []string{spec.Leave})
		testkit.Must(t, err, "MemberEvents")
		if len(cur) != 2 {
			t.Errorf("current members not left = %d; want 2 (alice, carol)", len(cur))
		}
		at, err := s.EventAtOrBefore(ctx, roomID, bobMsg.StreamPos)
		testkit.Must(t, err, "EventAtOrBefore")
		if at.PDU.EventID() != bobMsg.PDU.EventID() {
			t.Errorf("EventAtOrBefore(bob's message) = %s; want it", at.PDU.EventID())
		}
		if _, err := s.EventAtOrBefore(ctx, roomID, 0); err == nil {
			t.Errorf("EventAtOrBefore(0) found an event; want not found")
		}
		lazy, err := s.SenderMembers(ctx, []*Event{first, bobMsg})
		testkit.Must(t, err, "SenderMembers")
		if len(lazy) != 2 {
			t.Fatalf("SenderMembers = %d events; want 2", len(lazy))
		}
		for _, e := range lazy {
			if m, _ := e.PDU.Membership(); m != spec.Join {
				t.Errorf("SenderMembers: %s is %s; want join (as of their message)", *e.PDU.StateKey(), m)
			}
		}
		// A chunk reaching back to the room's creation: the create event's sender is not yet a
		// member after it, but is after their later events.
		creation, err := s.RoomEventsAfter(ctx, roomID, 0, 3)
		testkit.Must(t, err, "creation events")
		lazy, err = s.SenderMembers(ctx, creation)
		testkit.Must(t, err, "SenderMembers of the creation")
		if len(lazy) != 1 || *lazy[0].PDU.StateKey() != alice {
			t.Errorf("SenderMembers of the creation = %d events; want alice's", len(lazy))
		}
		hv, err := s.HistoryVisibility(ctx, roomID)
		testkit.Must(t, err, "HistoryVisibility")
		if hv != VisibilityShared {
			t.Errorf("HistoryVisibility = %s; want shared", hv)
		}
		if _, err := s.HistoryVisibility(ctx, "!nope:test.local"); err == nil {
			t.Errorf("HistoryVisibility of an unknown room: no error")
		}
	})
}

func TestEventNearTimestamp(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		roomID := createRoom(t, s, "11", "public")
		a := event(t, s, send(t, s, message(roomID, alice, "a")))
		ts := int64(a.PDU.OriginServerTS())
		for _, tc := range []struct {
			name     string
			ts       int64
			backward bool
			want     string // "" for none
		}{
			{"forward from a finds a", ts, false, a.PDU.EventID()},
			{"backward from a finds a", ts, true, a.PDU.EventID()},
			{"forward after everything", ts + int64(time.Hour/time.Millisecond), false, ""},
			{"backward before everything", 0, true, ""},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ev, err := s.EventNearTimestamp(ctx, roomID, tc.ts, tc.backward)
				if tc.want == "" {
					if err == nil {
						t.Fatalf("found %s; want none", ev.PDU.EventID())
					}
					return
				}
				testkit.Must(t, err, "EventNearTimestamp")
				// Events sent in the same millisecond tie; the newest wins going back.
				if got := ev.PDU.EventID(); got != tc.want && int64(ev.PDU.OriginServerTS()) != ts {
					t.Errorf("got %s; want %s", got, tc.want)
				}
			})
		}
	})
}

// TestVisibleEventsFastPath checks that the fast path for joined members (joinedThrough)
// decides exactly as the full rules do, over a room where bob joins, leaves and rejoins
// under "joined" visibility, for members, a former member and a stranger, and that it
// takes the events it should.
func TestVisibleEventsFastPath(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		roomID := createRoom(t, s, "11", "public")
		send(t, s, state(roomID, alice, spec.MRoomHistoryVisibility, map[string]string{"history_visibility": VisibilityJoined}))
		send(t, s, message(roomID, alice, "before bob"))
		send(t, s, member(roomID, bob, bob, spec.Join))
		send(t, s, message(roomID, alice, "with bob"))
		send(t, s, member(roomID, bob, bob, spec.Leave))
		send(t, s, message(roomID, alice, "bob away"))
		send(t, s, member(roomID, bob, bob, spec.Join))
		send(t, s, message(roomID, bob, "bob back"))
		// A profile change keeps him joined.
		send(t, s, SendRequest{RoomID: roomID, Sender: bob, Type: spec.MRoomMember, StateKey: ptr(bob),
			Content: raw(map[string]string{"membership": spec.Join, "displayname": "Bob"})})
		send(t, s, message(roomID, alice, "after the profile change"))
		all, _, err := s.RoomEvents(ctx, roomID, 0, 1<<62, 100)
		testkit.Must(t, err, "room events")
		for _, user := range []string{alice, bob, carol} {
			fast, fastMs, err := s.VisibleEvents(ctx, user, all)
			testkit.Must(t, err, "VisibleEvents")
			full, fullMs, err := s.visibleEvents(ctx, user, all)
			testkit.Must(t, err, "visibleEvents")
			if !slices.Equal(fast, full) || !slices.Equal(fastMs, fullMs) {
				t.Errorf("%s: fast path sees %d events %v; full rules %d events %v", user, len(fast), fastMs, len(full), fullMs)
			}
		}
		// Bob's fast path covers what was sent after his latest membership event.
		joined, err := s.joinedThrough(ctx, bob, all)
		testkit.Must(t, err, "joinedThrough")
		if n := len(joined); n != 1 {
			t.Errorf("fast path took %d events for bob; want 1 (the message after his profile change)", n)
		}
	})
}
