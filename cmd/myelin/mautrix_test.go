package main

// An end-to-end test with a real client library, maunium.net/go/mautrix (pinned in go.mod):
// two users create a room, invite, join, talk, follow it through /sync, page through its
// history with /messages, and leave — on SQLite and (with MYELIN_TEST_POSTGRES) PostgreSQL.

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testkit"
)

// mxUser is a mautrix client that remembers its /sync position and everything /sync has
// told it about rooms.
type mxUser struct {
	cli      *mautrix.Client
	since    string // next_batch of the last sync; "" before the first
	filterID string
	timeline map[id.RoomID][]*event.Event // joined-room timelines, concatenated in order
	invites  map[id.RoomID][]*event.Event // invite_state of rooms the user is invited to
	left     map[id.RoomID][]*event.Event // timelines of rooms that came down in rooms.leave
}

// newMXUser registers localpart with mautrix's m.login.dummy flow and uploads a filter with a
// timeline limit large enough that no test sync is ever limited.
func newMXUser(t *testing.T, ctx context.Context, s *server, localpart string) *mxUser {
	t.Helper()
	cli, err := mautrix.NewClient(s.url, "", "")
	testkit.Must(t, err, "mautrix.NewClient")
	resp, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: localpart, Password: "correct horse battery"})
	testkit.Must(t, err, "registering %s", localpart)
	if got, want := resp.UserID, id.UserID(userID(localpart)); got != want {
		t.Fatalf("register %s: got user_id %s; want %s", localpart, got, want)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	cli.DeviceID = resp.DeviceID
	f, err := cli.CreateFilter(ctx, &mautrix.Filter{Room: &mautrix.RoomFilter{Timeline: &mautrix.FilterPart{Limit: 200}}})
	testkit.Must(t, err, "creating %s's filter", localpart)
	return &mxUser{
		cli: cli, filterID: f.FilterID,
		timeline: map[id.RoomID][]*event.Event{},
		invites:  map[id.RoomID][]*event.Event{},
		left:     map[id.RoomID][]*event.Event{},
	}
}

// sync makes one /sync request from u's position, waiting up to timeout for news, and
// folds the response into u.
func (u *mxUser) sync(t *testing.T, ctx context.Context, timeout time.Duration) *mautrix.RespSync {
	t.Helper()
	resp, err := u.cli.FullSyncRequest(ctx, mautrix.ReqSync{
		Timeout: int(timeout.Milliseconds()), Since: u.since, FilterID: u.filterID,
	})
	testkit.Must(t, err, "%s: /sync since %q", u.cli.UserID, u.since)
	if resp.NextBatch == "" {
		t.Fatalf("%s: /sync since %q: got an empty next_batch", u.cli.UserID, u.since)
	}
	for roomID, r := range resp.Rooms.Join {
		// A newly joined room's timeline is marked limited, as Synapse does; after that,
		// nothing the test sends fills a limit of 200.
		if _, seen := u.timeline[roomID]; seen && r.Timeline.Limited {
			t.Errorf("%s: /sync since %q: timeline of %s is limited with a filter limit of 200", u.cli.UserID, u.since, roomID)
		}
		u.timeline[roomID] = append(u.timeline[roomID], r.Timeline.Events...)
		delete(u.invites, roomID)
	}
	for roomID, r := range resp.Rooms.Invite {
		u.invites[roomID] = r.State.Events
	}
	for roomID, r := range resp.Rooms.Leave {
		u.left[roomID] = append(u.left[roomID], r.Timeline.Events...)
		delete(u.invites, roomID)
	}
	u.since = resp.NextBatch
	return resp
}

// syncUntil long-polls /sync until done reports true, failing t after 15 s.
func (u *mxUser) syncUntil(t *testing.T, ctx context.Context, what string, done func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !done() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s: not seen through /sync within 15s", u.cli.UserID, what)
		}
		u.sync(t, ctx, 2*time.Second)
	}
}

// sentMessage is a message the test sent and expects everyone to see.
type sentMessage struct {
	id     id.EventID
	sender id.UserID
	body   string
	txnID  string
}

// messagesOf returns the m.room.message events of evs.
func messagesOf(evs []*event.Event) []*event.Event {
	var out []*event.Event
	for _, e := range evs {
		if e.Type == event.EventMessage {
			out = append(out, e)
		}
	}
	return out
}

// eventIDs returns the IDs of evs.
func eventIDs(evs []*event.Event) []id.EventID {
	out := make([]id.EventID, len(evs))
	for i, e := range evs {
		out[i] = e.ID
	}
	return out
}

// memberEvent returns the index in evs of user's m.room.member event with membership m, or -1.
func memberEvent(evs []*event.Event, user id.UserID, m event.Membership) int {
	return slices.IndexFunc(evs, func(e *event.Event) bool {
		return e.Type == event.StateMember && e.StateKey != nil && *e.StateKey == string(user) &&
			e.Content.Raw["membership"] == string(m)
	})
}

// checkMessages fails t unless got, the messages viewer sees, are exactly want in order, with
// unsigned.transaction_id present on the viewer's own messages only (each test user has one
// device, which sent all its messages).
func checkMessages(t *testing.T, viewer id.UserID, what string, got []*event.Event, want []sentMessage) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %s: got %d messages %v; want %d", viewer, what, len(got), eventIDs(got), len(want))
	}
	for i := range min(len(got), len(want)) {
		g, w := got[i], want[i]
		if g.ID != w.id || g.Sender != w.sender || g.Content.Raw["body"] != w.body || g.Content.Raw["msgtype"] != "m.text" {
			t.Errorf("%s: %s: message %d: got %s from %s %q (%v); want %s from %s %q",
				viewer, what, i, g.ID, g.Sender, g.Content.Raw["body"], g.Content.Raw["msgtype"], w.id, w.sender, w.body)
			continue
		}
		wantTxn := ""
		if w.sender == viewer {
			wantTxn = w.txnID
		}
		if g.Unsigned.TransactionID != wantTxn {
			t.Errorf("%s: %s: message %d from %s: got unsigned.transaction_id %q; want %q",
				viewer, what, i, g.Sender, g.Unsigned.TransactionID, wantTxn)
		}
	}
}

// TestMautrix drives Myelin with mautrix's client: alice creates a room and invites bob, who
// sees the invite in /sync and joins; they take turns sending messages, which both see through
// /sync in order; bob pages back through the whole history with /messages from a limited
// sync's prev_batch; and after bob leaves, the room moves to his leave section and he no
// longer receives its events.
func TestMautrix(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b testkit.Backend) {
		ctx := t.Context()
		s := startServer(t, b, serverOpts{})
		alice := newMXUser(t, ctx, s, "alice")
		bob := newMXUser(t, ctx, s, "bob")
		alice.sync(t, ctx, 0)
		bob.sync(t, ctx, 0)

		created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Proof"})
		testkit.Must(t, err, "alice: creating a room")
		room := created.RoomID
		_, err = alice.cli.InviteUser(ctx, room, &mautrix.ReqInviteUser{UserID: bob.cli.UserID})
		testkit.Must(t, err, "alice: inviting bob")

		bob.syncUntil(t, ctx, "the invite", func() bool { return len(bob.invites[room]) > 0 })
		inv := bob.invites[room]
		if i := memberEvent(inv, bob.cli.UserID, event.MembershipInvite); i < 0 {
			t.Errorf("bob: invite_state of %s: got %v; want bob's invite member event", room, eventIDs(inv))
		} else if inv[i].Sender != alice.cli.UserID {
			t.Errorf("bob: invite member event: got sender %s; want %s", inv[i].Sender, alice.cli.UserID)
		}
		if !slices.ContainsFunc(inv, func(e *event.Event) bool {
			return e.Type == event.StateRoomName && e.Content.Raw["name"] == "Proof"
		}) {
			t.Errorf("bob: invite_state of %s has no m.room.name \"Proof\"", room)
		}
		if _, ok := bob.timeline[room]; ok {
			t.Errorf("bob: %s is in rooms.join before bob joined", room)
		}

		joined, err := bob.cli.JoinRoomByID(ctx, room)
		testkit.Must(t, err, "bob: joining %s", room)
		if joined.RoomID != room {
			t.Errorf("bob: join: got room_id %s; want %s", joined.RoomID, room)
		}

		// Take turns, each send acknowledged before the next, so the order is defined.
		const n = 24
		var sent []sentMessage
		for i := range n {
			u := alice
			if i%2 == 1 {
				u = bob
			}
			m := sentMessage{sender: u.cli.UserID, body: fmt.Sprintf("message %02d from %s", i, u.cli.UserID.Localpart()),
				txnID: fmt.Sprintf("proof-txn-%02d", i)}
			resp, err := u.cli.SendMessageEvent(ctx, room, event.EventMessage,
				&event.MessageEventContent{MsgType: event.MsgText, Body: m.body}, mautrix.ReqSendEvent{TransactionID: m.txnID})
			testkit.Must(t, err, "%s: sending message %d", u.cli.UserID, i)
			m.id = resp.EventID
			sent = append(sent, m)
		}

		last := sent[n-1].id
		for _, u := range []*mxUser{alice, bob} {
			u.syncUntil(t, ctx, "the last message", func() bool {
				return slices.ContainsFunc(u.timeline[room], func(e *event.Event) bool { return e.ID == last })
			})
			tl := u.timeline[room]
			checkMessages(t, u.cli.UserID, "sync", messagesOf(tl), sent)
			join := memberEvent(tl, bob.cli.UserID, event.MembershipJoin)
			first := slices.IndexFunc(tl, func(e *event.Event) bool { return e.ID == sent[0].id })
			if join < 0 || join > first {
				t.Errorf("%s: timeline: bob's join at %d, first message at %d; want the join before it", u.cli.UserID, join, first)
			}
			if dup := duplicateIDs(eventIDs(tl)); len(dup) > 0 {
				t.Errorf("%s: timeline: events delivered more than once: %v", u.cli.UserID, dup)
			}
		}
		// alice synced from before the room existed, so her timeline is its whole history.
		history := eventIDs(alice.timeline[room])
		if len(history) == 0 || alice.timeline[room][0].Type != event.StateCreate {
			t.Fatalf("alice: timeline of %s does not start with m.room.create: %v", room, history)
		}

		// A fresh sync with a small timeline shows the newest messages and a prev_batch,
		// from which /messages pages back to m.room.create.
		small, err := bob.cli.CreateFilter(ctx, &mautrix.Filter{Room: &mautrix.RoomFilter{Timeline: &mautrix.FilterPart{Limit: 5}}})
		testkit.Must(t, err, "bob: creating a filter")
		fresh, err := bob.cli.FullSyncRequest(ctx, mautrix.ReqSync{FilterID: small.FilterID})
		testkit.Must(t, err, "bob: initial /sync with a timeline limit of 5")
		jr := fresh.Rooms.Join[room]
		if jr == nil {
			t.Fatalf("bob: initial /sync: %s not in rooms.join", room)
		}
		if got, want := eventIDs(jr.Timeline.Events), history[len(history)-5:]; !slices.Equal(got, want) {
			t.Errorf("bob: initial /sync timeline: got %v; want the last 5 events %v", got, want)
		}
		if !jr.Timeline.Limited || jr.Timeline.PrevBatch == "" {
			t.Fatalf("bob: initial /sync timeline: got limited=%t prev_batch=%q; want limited with a prev_batch",
				jr.Timeline.Limited, jr.Timeline.PrevBatch)
		}
		backwards := slices.Clone(jr.Timeline.Events)
		slices.Reverse(backwards)
		from := jr.Timeline.PrevBatch
		var pages []*mautrix.RespMessages
		for from != "" {
			if len(pages) > 20 {
				t.Fatalf("bob: /messages: still paginating after %d pages", len(pages))
			}
			pg, err := bob.cli.Messages(ctx, room, from, "", mautrix.DirectionBackward, nil, 10)
			testkit.Must(t, err, "bob: /messages backwards from %q", from)
			if pg.Start != from {
				t.Errorf("bob: /messages from %q: got start %q; want the from token", from, pg.Start)
			}
			if len(pg.Chunk) > 10 {
				t.Errorf("bob: /messages from %q: got %d events; want at most the limit 10", from, len(pg.Chunk))
			}
			if len(pg.Chunk) == 0 && pg.End != "" {
				t.Fatalf("bob: /messages from %q: got an empty chunk with end %q", from, pg.End)
			}
			for _, e := range pg.Chunk {
				if e.RoomID != room {
					t.Errorf("bob: /messages: event %s has room_id %q; want %s", e.ID, e.RoomID, room)
				}
			}
			pages = append(pages, pg)
			backwards = append(backwards, pg.Chunk...)
			from = pg.End
		}
		if len(pages) < 3 {
			t.Errorf("bob: /messages: history of %d events came in %d pages of 10; want at least 3", len(history), len(pages))
		}
		gotHistory := eventIDs(backwards)
		slices.Reverse(gotHistory)
		if !slices.Equal(gotHistory, history) {
			t.Errorf("bob: /sync timeline + /messages backwards, reversed:\n got %v\nwant %v (alice's /sync timeline)", gotHistory, history)
		}
		// Reverse the history back again to check the messages in chronological order.
		chrono := slices.Clone(backwards)
		slices.Reverse(chrono)
		checkMessages(t, bob.cli.UserID, "messages", messagesOf(chrono), sent)

		// Forwards from the first page's end token gives that page again, oldest first.
		if p1 := pages[0]; p1.End != "" {
			fwd, err := bob.cli.Messages(ctx, room, p1.End, "", mautrix.DirectionForward, nil, len(p1.Chunk))
			testkit.Must(t, err, "bob: /messages forwards from %q", p1.End)
			want := eventIDs(p1.Chunk)
			slices.Reverse(want)
			if got := eventIDs(fwd.Chunk); !slices.Equal(got, want) {
				t.Errorf("bob: /messages forwards from %q: got %v; want %v", p1.End, got, want)
			}
		}

		// bob leaves.
		_, err = bob.cli.LeaveRoom(ctx, room)
		testkit.Must(t, err, "bob: leaving %s", room)
		bob.syncUntil(t, ctx, "the room in rooms.leave", func() bool { return len(bob.left[room]) > 0 })
		leaveAt := memberEvent(bob.left[room], bob.cli.UserID, event.MembershipLeave)
		if leaveAt < 0 {
			t.Fatalf("bob: rooms.leave timeline of %s: got %v; want bob's leave event", room, eventIDs(bob.left[room]))
		}
		leaveID := bob.left[room][leaveAt].ID
		alice.syncUntil(t, ctx, "bob's leave", func() bool {
			return slices.ContainsFunc(alice.timeline[room], func(e *event.Event) bool { return e.ID == leaveID })
		})
		for _, tc := range []struct {
			u    *mxUser
			want bool
		}{{alice, true}, {bob, false}} {
			jr, err := tc.u.cli.JoinedRooms(ctx)
			testkit.Must(t, err, "%s: /joined_rooms", tc.u.cli.UserID)
			if got := slices.Contains(jr.JoinedRooms, room); got != tc.want {
				t.Errorf("%s: /joined_rooms %v: got %s listed %t; want %t", tc.u.cli.UserID, jr.JoinedRooms, room, got, tc.want)
			}
		}

		// A message sent after bob left does not reach him: not in /sync (the event is
		// committed before the sync starts, so a zero timeout suffices), not in /messages.
		after, err := alice.cli.SendText(ctx, room, "after bob left")
		testkit.Must(t, err, "alice: sending after bob left")
		resp := bob.sync(t, ctx, 0)
		if _, ok := resp.Rooms.Join[room]; ok {
			t.Errorf("bob: /sync after leaving: %s is in rooms.join", room)
		}
		if lr := resp.Rooms.Leave[room]; lr != nil && slices.Contains(eventIDs(lr.Timeline.Events), after.EventID) {
			t.Errorf("bob: /sync after leaving: got alice's later message %s", after.EventID)
		}
		tail, err := bob.cli.Messages(ctx, room, "", "", mautrix.DirectionBackward, nil, 3)
		testkit.Must(t, err, "bob: /messages after leaving")
		want := []id.EventID{leaveID, sent[n-1].id, sent[n-2].id}
		if got := eventIDs(tail.Chunk); !slices.Equal(got, want) {
			t.Errorf("bob: /messages backwards after leaving: got %v; want %v (his leave, then the history before it)", got, want)
		}
	})
}

// duplicateIDs returns the IDs that occur more than once in ids.
func duplicateIDs[T comparable](ids []T) []T {
	seen := map[T]int{}
	var dup []T
	for _, v := range ids {
		if seen[v]++; seen[v] == 2 {
			dup = append(dup, v)
		}
	}
	return dup
}
