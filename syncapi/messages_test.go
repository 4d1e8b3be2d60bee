package syncapi

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"log/slog"
	"net/http"
	"slices"
	"testing"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/bus"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/userapi"
)

const (
	hAlice = "@alice:test.local"
	hBob   = "@bob:test.local"
	hCarol = "@carol:test.local"
)

// historyFixture is a roomserver over a real database and a syncapi Service reading it.
type historyFixture struct {
	t     *testing.T
	rooms *roomserver.Service
	s     *Service
}

func newHistoryFixture(t *testing.T, db *sqldb.DB) *historyFixture {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(nil)
	testkit.Must(t, err, "generating key")
	stream := bus.NewStream(0)
	rs, err := roomserver.New(roomserver.Config{ServerName: "test.local", KeyID: "ed25519:test", PrivateKey: priv},
		db, stream, slog.New(slog.DiscardHandler))
	testkit.Must(t, err, "starting roomserver")
	return &historyFixture{t: t, rooms: rs, s: &Service{rooms: rs, streams: Streams{Rooms: stream}}}
}

func (f *historyFixture) room(creator, visibility string) string {
	f.t.Helper()
	sk := func(s string) *string { return &s }
	id, err := f.rooms.CreateRoom(context.Background(), roomserver.CreateRoomRequest{
		Creator: creator, RoomVersion: "11",
		Initial: []roomserver.Fledgling{
			{Type: spec.MRoomMember, StateKey: sk(creator), Content: json.RawMessage(`{"membership":"join"}`)},
			{Type: spec.MRoomPowerLevels, StateKey: sk(""), Content: json.RawMessage(`{"users":{"` + creator + `":100}}`)},
			{Type: spec.MRoomJoinRules, StateKey: sk(""), Content: json.RawMessage(`{"join_rule":"public"}`)},
			{Type: spec.MRoomHistoryVisibility, StateKey: sk(""), Content: json.RawMessage(`{"history_visibility":"` + visibility + `"}`)},
		},
	})
	testkit.Must(f.t, err, "creating room")
	return id
}

func (f *historyFixture) send(roomID, sender, evType string, stateKey *string, content string) *roomserver.Event {
	f.t.Helper()
	id, err := f.rooms.Send(context.Background(), roomserver.SendRequest{RoomID: roomID, Sender: sender, Type: evType,
		StateKey: stateKey, Content: json.RawMessage(content)})
	testkit.Must(f.t, err, "sending %s", evType)
	ev, err := f.rooms.Event(context.Background(), id)
	testkit.Must(f.t, err, "loading %s", id)
	return ev
}

func (f *historyFixture) msg(roomID, sender, body string) *roomserver.Event {
	return f.send(roomID, sender, "m.room.message", nil, `{"msgtype":"m.text","body":"`+body+`"}`)
}

func (f *historyFixture) membership(roomID, userID, m string) *roomserver.Event {
	return f.send(roomID, userID, spec.MRoomMember, &userID, `{"membership":"`+m+`"}`)
}

// pageAll follows /messages from `from` until it has no end token, returning every event ID.
func (f *historyFixture) pageAll(userID, roomID string, backward bool, from *int64, limit int, filter *matrix.RoomEventFilter) []string {
	f.t.Helper()
	var ids []string
	req := &messagesRequest{roomID: roomID, from: from, backward: backward, limit: limit, filter: filter}
	for range 100 {
		resp, err := f.s.messages(context.Background(), &userapi.Device{UserID: userID, DeviceID: "D"}, req)
		testkit.Must(f.t, err, "/messages")
		for _, e := range resp.Chunk {
			ids = append(ids, e.EventID)
		}
		if len(resp.Chunk) > limit {
			f.t.Fatalf("page of %d events; limit %d", len(resp.Chunk), limit)
		}
		if resp.End == "" {
			return ids
		}
		pos, err := ParseHistoryToken(resp.End)
		testkit.Must(f.t, err, "parsing end token %q", resp.End)
		req.from = &pos
	}
	f.t.Fatal("pagination did not end")
	return nil
}

func ids(evs ...*roomserver.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.PDU.EventID()
	}
	return out
}

func TestMessagesPagination(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		f := newHistoryFixture(t, db)
		roomID := f.room(hAlice, "shared")
		var msgs []*roomserver.Event
		for i := range 23 {
			msgs = append(msgs, f.msg(roomID, hAlice, "m"+string(rune('a'+i))))
		}
		all, err := f.rooms.RoomEventsAfter(context.Background(), roomID, 0, 1000)
		testkit.Must(t, err, "all events")
		want := ids(all...)

		back := f.pageAll(hAlice, roomID, true, nil, 4, nil)
		slices.Reverse(back)
		if !slices.Equal(back, want) {
			t.Errorf("backward pagination: %d events %v; want %d", len(back), back, len(want))
		}
		zero := int64(0)
		if fwd := f.pageAll(hAlice, roomID, false, &zero, 7, nil); !slices.Equal(fwd, want) {
			t.Errorf("forward pagination: %d events; want %d", len(fwd), len(want))
		}
		// A sync prev_batch (first timeline event's position minus one) and a `to` bound.
		from := msgs[10].StreamPos - 1
		to := msgs[5].StreamPos - 1
		req := &messagesRequest{roomID: roomID, from: &from, to: &to, backward: true, limit: 100}
		resp, err := f.s.messages(context.Background(), &userapi.Device{UserID: hAlice}, req)
		testkit.Must(t, err, "/messages with to")
		var got []string
		for _, e := range resp.Chunk {
			got = append(got, e.EventID)
		}
		wantRange := ids(msgs[5:10]...)
		slices.Reverse(wantRange)
		if !slices.Equal(got, wantRange) || resp.End != "" {
			t.Errorf("from %d to %d: %v end %q; want %v and no end", from, to, got, resp.End, wantRange)
		}
		// Filters: types and senders.
		filter := &matrix.RoomEventFilter{EventFilter: matrix.EventFilter{Types: []string{"m.room.*"}, NotTypes: []string{"m.room.message"}}}
		if got := f.pageAll(hAlice, roomID, true, nil, 3, filter); len(got) != 5 {
			t.Errorf("state-only filter: %d events; want the 5 creation events", len(got))
		}
	})
}

func TestMessagesVisibilityAndAccess(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		f := newHistoryFixture(t, db)
		ctx := context.Background()
		roomID := f.room(hAlice, "joined")
		hidden := f.msg(roomID, hAlice, "before bob")
		join := f.membership(roomID, hBob, spec.Join)
		m1 := f.msg(roomID, hAlice, "with bob 1")
		m2 := f.msg(roomID, hBob, "with bob 2")
		leave := f.membership(roomID, hBob, spec.Leave)
		f.msg(roomID, hAlice, "after bob")

		// Bob, departed, sees from his join to his leave, however he pages, and before it
		// only the room's creation, sent before any history visibility was set (so "shared").
		want := ids(leave, m2, m1, join)
		got := f.pageAll(hBob, roomID, true, nil, 2, nil)
		if len(got) != len(want)+5 || !slices.Equal(got[:len(want)], want) || slices.Contains(got, hidden.PDU.EventID()) {
			t.Errorf("bob backward: %v; want %v then the 5 creation events", got, want)
		}
		after := leave.StreamPos
		if got := f.pageAll(hBob, roomID, false, &after, 10, nil); len(got) != 0 {
			t.Errorf("bob forward after leaving: %v; want nothing", got)
		}
		// Carol was never in the room: 403; so is an unknown room.
		for _, room := range []string{roomID, "!unknown:test.local"} {
			_, err := f.s.messages(ctx, &userapi.Device{UserID: hCarol}, &messagesRequest{roomID: room, backward: true, limit: 10})
			if e := matrix.AsError(err); e == nil || e.Status != http.StatusForbidden {
				t.Errorf("carol /messages in %s: %v; want 403", room, err)
			}
		}
		// Lazy-loaded members: the senders of the chunk, once each.
		from := m2.StreamPos
		resp, err := f.s.messages(ctx, &userapi.Device{UserID: hAlice}, &messagesRequest{roomID: roomID, from: &from,
			backward: true, limit: 2, filter: &matrix.RoomEventFilter{LazyLoadMembers: true}})
		testkit.Must(t, err, "/messages lazy")
		var members []string
		for _, e := range resp.State {
			members = append(members, *e.StateKey)
			if e.Type != spec.MRoomMember {
				t.Errorf("lazy state has a %s", e.Type)
			}
		}
		slices.Sort(members)
		if !slices.Equal(members, []string{hAlice, hBob}) {
			t.Errorf("lazy members %v; want alice and bob", members)
		}
		if m, _ := resp.Chunk[0].Unsigned["membership"].(string); m != spec.Join {
			t.Errorf("unsigned.membership = %q; want join", m)
		}
	})
}

func TestEventContext(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		f := newHistoryFixture(t, db)
		ctx := context.Background()
		roomID := f.room(hAlice, "shared")
		var msgs []*roomserver.Event
		for i := range 9 {
			msgs = append(msgs, f.msg(roomID, hAlice, "c"+string(rune('a'+i))))
		}
		dev := &userapi.Device{UserID: hAlice}
		resp, err := f.s.eventContext(ctx, dev, &contextRequest{roomID: roomID, eventID: msgs[4].PDU.EventID(), limit: 4})
		testkit.Must(t, err, "/context")
		var before, after []string
		for _, e := range resp.EventsBefore {
			before = append(before, e.EventID)
		}
		for _, e := range resp.EventsAfter {
			after = append(after, e.EventID)
		}
		if !slices.Equal(before, ids(msgs[3], msgs[2])) || !slices.Equal(after, ids(msgs[5], msgs[6])) {
			t.Errorf("context before %v after %v; want 2 each side", before, after)
		}
		if resp.Event.EventID != msgs[4].PDU.EventID() || len(resp.State) != 5 {
			t.Errorf("context event %s with %d state events; want %s with 5", resp.Event.EventID, len(resp.State), msgs[4].PDU.EventID())
		}
		// Paginating on from the tokens continues without gaps.
		start, err := ParseHistoryToken(resp.Start)
		testkit.Must(t, err, "start token")
		if start != msgs[2].StreamPos-1 {
			t.Errorf("start token %s; want position %d", resp.Start, msgs[2].StreamPos-1)
		}
		_, err = f.s.eventContext(ctx, &userapi.Device{UserID: hCarol}, &contextRequest{roomID: roomID, eventID: msgs[4].PDU.EventID(), limit: 4})
		if e := matrix.AsError(err); e == nil || e.Status != http.StatusForbidden {
			t.Errorf("carol /context: %v; want 403", err)
		}
		_, err = f.s.eventContext(ctx, dev, &contextRequest{roomID: roomID, eventID: "$nope", limit: 4})
		if e := matrix.AsError(err); e == nil || e.Status != http.StatusNotFound {
			t.Errorf("/context of an unknown event: %v; want 404", err)
		}
	})
}

func TestParseHistoryToken(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"t12", 12, true}, {"s7_3", 7, true}, {"s9", 9, true}, {"t-1", -1, true}, {"t-x", 0, false}, {"x1", 0, false}, {"", 0, false},
	} {
		got, err := ParseHistoryToken(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseHistoryToken(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}
