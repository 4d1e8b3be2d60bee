package roomserver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
)

func TestAliases(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		room := createRoom(t, s, "11", "public")
		other := createRoom(t, s, "11", "public")
		const unicode = "#老虎Â£я🤨👉ඞ:test.local"

		for _, a := range []string{"#b:test.local", "#a:test.local", unicode} {
			testkit.Must(t, s.CreateAlias(ctx, a, room, alice), "creating %s", a)
		}
		if err := s.CreateAlias(ctx, "#a:test.local", other, bob); !errors.Is(err, sqldb.ErrExists) {
			t.Errorf("CreateAlias of a taken alias = %v; want ErrExists", err)
		}
		if err := s.CreateAlias(ctx, "#c:test.local", "!nope:test.local", bob); !errors.Is(err, sqldb.ErrNotFound) {
			t.Errorf("CreateAlias for an unknown room = %v; want ErrNotFound", err)
		}

		gotRoom, creator, err := s.Alias(ctx, unicode)
		testkit.Must(t, err, "looking up %s", unicode)
		if gotRoom != room || creator != alice {
			t.Errorf("Alias(%s) = %s, %s; want %s, %s", unicode, gotRoom, creator, room, alice)
		}
		got, err := s.RoomAliases(ctx, room)
		testkit.Must(t, err, "listing aliases")
		want := []string{"#a:test.local", "#b:test.local", unicode}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("RoomAliases = %q; want %q", got, want)
		}
		if got, err := s.RoomAliases(ctx, other); err != nil || len(got) != 0 {
			t.Errorf("RoomAliases(other) = %q, %v; want none", got, err)
		}

		deleted, err := s.DeleteAlias(ctx, "#a:test.local")
		testkit.Must(t, err, "deleting alias")
		if deleted != room {
			t.Errorf("DeleteAlias returned room %s; want %s", deleted, room)
		}
		if _, _, err := s.Alias(ctx, "#a:test.local"); !errors.Is(err, sqldb.ErrNotFound) {
			t.Errorf("Alias after delete = %v; want ErrNotFound", err)
		}
		if _, err := s.DeleteAlias(ctx, "#a:test.local"); !errors.Is(err, sqldb.ErrNotFound) {
			t.Errorf("second DeleteAlias = %v; want ErrNotFound", err)
		}
		// A deleted alias may be taken again, for another room.
		testkit.Must(t, s.CreateAlias(ctx, "#a:test.local", other, bob), "re-creating alias")
	})
}

func TestMaySendState(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		for _, v := range []string{"11", "12"} {
			room := createRoom(t, s, v, "public")
			send(t, s, member(room, bob, bob, "join"))
			for _, c := range []struct {
				user string
				want bool
			}{{alice, true}, {bob, false}} {
				got, err := s.MaySendState(ctx, room, c.user, spec.MRoomCanonicalAlias)
				testkit.Must(t, err, "MaySendState")
				if got != c.want {
					t.Errorf("v%s: MaySendState(%s) = %v; want %v", v, c.user, got, c.want)
				}
			}
		}
		if _, err := s.MaySendState(ctx, "!nope:test.local", alice, spec.MRoomName); !errors.Is(err, sqldb.ErrNotFound) {
			t.Errorf("MaySendState for an unknown room = %v; want ErrNotFound", err)
		}
	})
}

// directoryRoom creates a public room named name with extra joined members and publishes it.
func directoryRoom(t *testing.T, s *Service, name string, extra int) string {
	t.Helper()
	room := createRoom(t, s, "11", "public")
	send(t, s, state(room, alice, spec.MRoomName, map[string]string{"name": name}))
	for i := range extra {
		u := fmt.Sprintf("@%s-%d:test.local", name, i)
		send(t, s, member(room, u, u, "join"))
	}
	testkit.Must(t, s.SetPublished(context.Background(), room, true), "publishing %s", name)
	return room
}

func names(rooms []RoomSummary) []string {
	var out []string
	for _, r := range rooms {
		out = append(out, r.Name)
	}
	return out
}

func TestPublicRoomsPaging(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		ids := map[string]string{}
		for _, r := range []struct {
			name  string
			extra int
		}{{"e", 0}, {"c", 2}, {"a", 4}, {"b", 3}, {"d", 2}} {
			ids[r.name] = directoryRoom(t, s, r.name, r.extra)
		}
		// c and d tie on 3 members; ties go by room ID, descending.
		cd := []string{"c", "d"}
		if ids["c"] < ids["d"] {
			cd = []string{"d", "c"}
		}
		order := append(append([]string{"a", "b"}, cd...), "e")

		// Unlisted: not published, or published but invite-only.
		createRoom(t, s, "11", "public")
		testkit.Must(t, s.SetPublished(ctx, createRoom(t, s, "11", "invite"), true), "publishing invite-only room")

		// Forward two at a time through every page.
		var (
			got   []string
			since string
			pages []*PublicRoomsPage
		)
		for {
			p, err := s.PublicRooms(ctx, PublicRoomsRequest{Limit: 2, Since: since})
			testkit.Must(t, err, "listing page %d", len(pages))
			if p.Total != 5 {
				t.Errorf("page %d: Total = %d; want 5", len(pages), p.Total)
			}
			if (p.PrevBatch == "") != (since == "") {
				t.Errorf("page %d: PrevBatch = %q with since %q", len(pages), p.PrevBatch, since)
			}
			pages = append(pages, p)
			got = append(got, names(p.Rooms)...)
			if p.NextBatch == "" {
				break
			}
			since = p.NextBatch
			if len(pages) > 5 {
				t.Fatalf("paging does not end: %q", got)
			}
		}
		if !slices.Equal(got, order) {
			t.Fatalf("forward paging = %q; want %q", got, order)
		}
		if len(pages) != 3 || pages[0].Rooms[0].JoinedMembers != 5 {
			t.Fatalf("got %d pages, first room %+v; want 3 pages, 5 members first", len(pages), pages[0].Rooms[0])
		}

		// Backward from the last page gives the middle and then the first page again.
		back, err := s.PublicRooms(ctx, PublicRoomsRequest{Limit: 2, Since: pages[2].PrevBatch})
		testkit.Must(t, err, "paging back")
		if !slices.Equal(names(back.Rooms), names(pages[1].Rooms)) || back.PrevBatch == "" || back.NextBatch == "" {
			t.Errorf("back from page 3 = %q (prev %q, next %q); want %q with both tokens",
				names(back.Rooms), back.PrevBatch, back.NextBatch, names(pages[1].Rooms))
		}
		first, err := s.PublicRooms(ctx, PublicRoomsRequest{Limit: 2, Since: back.PrevBatch})
		testkit.Must(t, err, "paging back again")
		if !slices.Equal(names(first.Rooms), names(pages[0].Rooms)) || first.PrevBatch != "" {
			t.Errorf("back to page 1 = %q (prev %q); want %q and no prev", names(first.Rooms), first.PrevBatch, names(pages[0].Rooms))
		}

		if _, err := s.PublicRooms(ctx, PublicRoomsRequest{Since: "garbage"}); err == nil {
			t.Errorf("a malformed since token was accepted")
		}

		// Changes to a listed room show on the next listing; unpublishing removes it.
		send(t, s, state(ids["e"], alice, spec.MRoomTopic, map[string]string{"topic": "All about WOMBLES"}))
		send(t, s, state(ids["e"], alice, spec.MRoomName, map[string]string{"name": "renamed"}))
		p, err := s.PublicRooms(ctx, PublicRoomsRequest{Search: "wombles"})
		testkit.Must(t, err, "searching")
		if len(p.Rooms) != 1 || p.Rooms[0].RoomID != ids["e"] || p.Rooms[0].Name != "renamed" || p.Total != 1 {
			t.Errorf("search for wombles = %+v (total %d); want only the renamed room e", p.Rooms, p.Total)
		}
		for _, term := range []string{"%", "_"} {
			p, err := s.PublicRooms(ctx, PublicRoomsRequest{Search: term})
			testkit.Must(t, err, "searching %q", term)
			if len(p.Rooms) != 0 {
				t.Errorf("search for %q matched %q; wildcards must be literal", term, names(p.Rooms))
			}
		}
		testkit.Must(t, s.SetPublished(ctx, ids["a"], false), "unpublishing")
		p, err = s.PublicRooms(ctx, PublicRoomsRequest{})
		testkit.Must(t, err, "listing")
		if want := append([]string{"b"}, append(cd, "renamed")...); !slices.Equal(names(p.Rooms), want) {
			t.Errorf("after unpublishing a: %q; want %q", names(p.Rooms), want)
		}
		pub, err := s.Published(ctx, ids["a"])
		testkit.Must(t, err, "Published")
		if pub {
			t.Errorf("Published(a) = true after unpublishing")
		}
	})
}

func TestRoomSummary(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		space := createRoom(t, s, "11", "public")
		room := createRoom(t, s, "11", "public")
		send(t, s, state(room, alice, spec.MRoomJoinRules, map[string]any{
			"join_rule": "restricted",
			"allow":     []map[string]string{{"type": "m.room_membership", "room_id": space}},
		}))
		send(t, s, state(room, alice, spec.MRoomTopic, map[string]any{
			"topic":   "plain",
			"m.topic": map[string]any{"m.text": []map[string]string{{"mimetype": "text/html", "body": "<b>rich</b>"}, {"body": "rich"}}},
		}))
		send(t, s, state(room, alice, spec.MRoomHistoryVisibility, map[string]string{"history_visibility": "world_readable"}))
		send(t, s, state(room, alice, "m.room.encryption", map[string]string{"algorithm": "m.megolm.v1.aes-sha2"}))
		sum, err := s.RoomSummary(ctx, room)
		testkit.Must(t, err, "summarising")
		if sum.RoomID != room || sum.JoinRule != "restricted" || !slices.Equal(sum.AllowedRoomIDs, []string{space}) ||
			sum.Topic != "rich" || !sum.WorldReadable() || sum.Encryption != "m.megolm.v1.aes-sha2" ||
			sum.RoomVersion != "11" || sum.JoinedMembers != 1 {
			t.Errorf("RoomSummary = %+v", sum)
		}
		if _, err := s.RoomSummary(ctx, "!nope:test.local"); !errors.Is(err, sqldb.ErrNotFound) {
			t.Errorf("RoomSummary of an unknown room = %v; want ErrNotFound", err)
		}
	})
}

// TestDirectoryFollowsRedactedState checks that redacting a published room's name removes it
// from the room's directory entry, although redaction leaves the state snapshot as it was.
func TestDirectoryFollowsRedactedState(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		room := createRoom(t, s, "", "public")
		nameID := send(t, s, state(room, alice, spec.MRoomName, map[string]string{"name": "Secret plans"}))
		testkit.Must(t, s.SetPublished(ctx, room, true), "publishing")
		name := func() string {
			t.Helper()
			p, err := s.PublicRooms(ctx, PublicRoomsRequest{})
			testkit.Must(t, err, "listing the directory")
			for _, r := range p.Rooms {
				if r.RoomID == room {
					return r.Name
				}
			}
			t.Fatalf("room %s is not in the directory", room)
			return ""
		}
		if got := name(); got != "Secret plans" {
			t.Fatalf("name before the redaction = %q; want Secret plans", got)
		}
		send(t, s, SendRequest{RoomID: room, Sender: alice, Type: spec.MRoomRedaction, Redacts: nameID, Content: raw(map[string]string{})})
		if got := name(); got != "" {
			t.Errorf("name after the redaction = %q; want none", got)
		}
	})
}
