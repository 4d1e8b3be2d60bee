package roomserver

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"net/http"
	"net/url"
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

// acceptAll is a JSONVerifier that accepts every signature.
type acceptAll struct{}

func (acceptAll) VerifyJSONs(_ context.Context, reqs []gomatrixserverlib.VerifyJSONRequest) ([]gomatrixserverlib.VerifyJSONResult, error) {
	return make([]gomatrixserverlib.VerifyJSONResult, len(reqs)), nil
}

// TestStoreBackfilled drops part of a room's history from the timeline (two events made
// outliers, one removed), then stores it as a /backfill answer would bring it back, and checks
// the gap is seen and closed, the history lands below every position oldest lowest, and a
// repeat adds nothing.
func TestStoreBackfilled(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		_, priv, err := ed25519.GenerateKey(nil)
		testkit.Must(t, err, "generating key")
		s, err := New(Config{ServerName: "test.local", KeyID: "ed25519:test", PrivateKey: priv, BackfillKeys: acceptAll{}},
			db, bus.NewStream(0), slog.New(slog.DiscardHandler))
		testkit.Must(t, err, "starting roomserver")
		ctx := context.Background()
		roomID := createRoom(t, s, "11", "public")
		var ids []string
		var raws []json.RawMessage
		for _, body := range []string{"m1", "m2", "m3", "m4"} {
			id := send(t, s, message(roomID, alice, body))
			ids = append(ids, id)
			raws = append(raws, event(t, s, id).PDU.JSON())
		}
		last := event(t, s, ids[3])
		_, err = db.Exec(ctx, `UPDATE events SET stream_pos = 0 WHERE event_id IN ($1, $2)`, ids[0], ids[1])
		testkit.Must(t, err, "making outliers")
		_, err = db.Exec(ctx, `DELETE FROM events WHERE event_id = $1`, ids[2])
		testkit.Must(t, err, "removing m3")

		gap, err := s.GapBefore(ctx, last)
		testkit.Must(t, err, "GapBefore")
		if !gap {
			t.Fatalf("GapBefore(m4) = false; want true")
		}
		// This server's own events are never taken to follow a gap: it builds them on its
		// forward extremities.
		if gaps, err := s.GapsBefore(ctx, []*Event{last}); err != nil || len(gaps) != 0 {
			t.Fatalf("GapsBefore(local m4) = %v, %v; want none", gaps, err)
		}
		ri, err := s.roomInfo(ctx, roomID)
		testkit.Must(t, err, "roomInfo")
		newestFirst := slices.Clone(raws[:3])
		slices.Reverse(newestFirst)
		n, err := s.storeBackfilled(ctx, ri, roomID, "", newestFirst, stateBeforeEarliest(ctx, s, []*Event{last}))
		testkit.Must(t, err, "storeBackfilled")
		if n != 3 {
			t.Fatalf("storeBackfilled added %d; want 3", n)
		}
		if gap, err = s.GapBefore(ctx, last); err != nil || gap {
			t.Fatalf("GapBefore(m4) after backfill = %v, %v; want false", gap, err)
		}
		evs, err := s.RoomEventsBefore(ctx, roomID, math.MaxInt64, 100)
		testkit.Must(t, err, "RoomEventsBefore")
		var got []string
		for _, e := range evs {
			if e.StreamPos < 0 {
				got = append(got, e.PDU.EventID())
			}
		}
		if want := []string{ids[2], ids[1], ids[0]}; !slices.Equal(got, want) {
			t.Fatalf("backfilled events newest first = %v; want %v", got, want)
		}
		if n, err := s.storeBackfilled(ctx, ri, roomID, "", newestFirst, 0); err != nil || n != 0 {
			t.Fatalf("storing again added %d, %v; want 0", n, err)
		}
	})
}

// fakeBackfiller is a server in the room answering /backfill with a fixed batch and
// /event_auth from the auth chains it holds.
type fakeBackfiller struct {
	batch      []json.RawMessage
	chains     map[string][]json.RawMessage // event ID → its auth chain
	authAsked  []string                     // event IDs /event_auth was asked for
	backfilled int
}

func (f *fakeBackfiller) Backfill(_ context.Context, _, _ spec.ServerName, _ string, _ int, _ []string) (gomatrixserverlib.Transaction, error) {
	f.backfilled++
	return gomatrixserverlib.Transaction{PDUs: f.batch}, nil
}

func (f *fakeBackfiller) DoRequestAndParseResponse(_ context.Context, req *http.Request, result any) error {
	const prefix = "/_matrix/federation/v1/event_auth/"
	if !strings.HasPrefix(req.URL.EscapedPath(), prefix) {
		return errors.New("unexpected request " + req.URL.String())
	}
	parts := strings.Split(strings.TrimPrefix(req.URL.EscapedPath(), prefix), "/")
	id, err := url.PathUnescape(parts[len(parts)-1])
	if err != nil {
		return err
	}
	f.authAsked = append(f.authAsked, id)
	chain, ok := f.chains[id]
	if !ok {
		return errors.New("404 event not found")
	}
	b, err := json.Marshal(map[string]any{"auth_chain": chain})
	if err != nil {
		return err
	}
	return json.Unmarshal(b, result)
}

// TestBackfillAuthRules has FillGaps fetch a batch of history in which some events break the
// auth rules: a message from a user never in the room and a power-level change by a user
// without power are rejected (remembered as rejected, never served); the valid events are
// stored, one of them after its auth event (a join not in the batch) is fetched with
// /event_auth, stored as an outlier and checked; an event whose auth event cannot be fetched
// is left out, neither stored nor rejected.
func TestBackfillAuthRules(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		_, priv, err := ed25519.GenerateKey(nil)
		testkit.Must(t, err, "generating key")
		_, remoteKey, err := ed25519.GenerateKey(nil)
		testkit.Must(t, err, "generating key")
		fake := &fakeBackfiller{chains: map[string][]json.RawMessage{}}
		s, err := New(Config{ServerName: "test.local", KeyID: "ed25519:test", PrivateKey: priv, Backfill: fake, BackfillKeys: acceptAll{}},
			db, bus.NewStream(0), slog.New(slog.DiscardHandler))
		testkit.Must(t, err, "starting roomserver")
		ctx := context.Background()
		roomID := createRoom(t, s, "11", "public")
		ri, err := s.roomInfo(ctx, roomID)
		testkit.Must(t, err, "roomInfo")
		stateID := func(evType, stateKey string) string {
			ev, err := s.CurrentStateEvent(ctx, roomID, evType, stateKey)
			testkit.Must(t, err, "loading %s", evType)
			return ev.PDU.EventID()
		}
		create, pl, jr := stateID(spec.MRoomCreate, ""), stateID(spec.MRoomPowerLevels, ""), stateID(spec.MRoomJoinRules, "")
		ext, depth, err := s.Extremities(ctx, roomID)
		testkit.Must(t, err, "extremities")
		build := func(sender, evType string, stateKey *string, content any, prev string, auth ...string) gomatrixserverlib.PDU {
			t.Helper()
			depth++
			prevs := []string{prev}
			if prev == "" {
				prevs = ext
			}
			ev, err := ri.version.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
				SenderID: sender, RoomID: roomID, Type: evType, StateKey: stateKey, Content: spec.RawJSON(raw(content)),
				PrevEvents: prevs, AuthEvents: auth, Depth: depth,
			}).Build(time.Now(), "remote.example", "ed25519:r", remoteKey)
			testkit.Must(t, err, "building %s", evType)
			return ev
		}
		const dave, erin, frank, mallory = "@dave:remote.example", "@erin:remote.example", "@frank:remote.example", "@mallory:evil.example"
		join := map[string]string{"membership": "join"}
		msg := func(body string) map[string]string { return map[string]string{"msgtype": "m.text", "body": body} }
		daveJoin := build(dave, spec.MRoomMember, ptr(dave), join, "", create, jr, pl)
		daveMsg := build(dave, "m.room.message", nil, msg("hi"), daveJoin.EventID(), create, pl, daveJoin.EventID())
		intruder := build(mallory, "m.room.message", nil, msg("never joined"), daveMsg.EventID(), create, pl)
		powerGrab := build(dave, spec.MRoomPowerLevels, ptr(""), map[string]any{"users": map[string]int{dave: 100}},
			intruder.EventID(), create, pl, daveJoin.EventID())
		erinJoin := build(erin, spec.MRoomMember, ptr(erin), join, daveMsg.EventID(), create, jr, pl)
		erinMsg := build(erin, "m.room.message", nil, msg("joined off-batch"), erinJoin.EventID(), create, pl, erinJoin.EventID())
		frankJoin := build(frank, spec.MRoomMember, ptr(frank), join, erinMsg.EventID(), create, jr, pl)
		frankMsg := build(frank, "m.room.message", nil, msg("unfetchable join"), frankJoin.EventID(), create, pl, frankJoin.EventID())
		tail := build(dave, "m.room.message", nil, msg("after the gap"), frankMsg.EventID(), create, pl, daveJoin.EventID())

		held := func(id string) json.RawMessage {
			ev, err := s.Event(ctx, id)
			testkit.Must(t, err, "loading %s", id)
			return ev.PDU.JSON()
		}
		// The server answers newest first; erin's and frank's joins are not in the batch, and
		// the server has only erin's auth chain.
		for _, ev := range []gomatrixserverlib.PDU{frankMsg, erinMsg, powerGrab, intruder, daveMsg, daveJoin} {
			fake.batch = append(fake.batch, ev.JSON())
		}
		fake.chains[erinMsg.EventID()] = []json.RawMessage{erinJoin.JSON(), held(pl), held(jr), held(create)}

		added, err := s.FillGaps(ctx, roomID, []*Event{{PDU: tail, StreamPos: 1}})
		testkit.Must(t, err, "FillGaps")
		if !added || fake.backfilled != 1 {
			t.Fatalf("FillGaps = %v after %d /backfill; want true after 1", added, fake.backfilled)
		}
		if want := []string{erinMsg.EventID(), frankMsg.EventID()}; !slices.Equal(sorted(fake.authAsked), sorted(want)) {
			t.Errorf("/event_auth asked for %v; want %v", fake.authAsked, want)
		}
		evs, err := s.RoomEventsBefore(ctx, roomID, math.MaxInt64, 100)
		testkit.Must(t, err, "RoomEventsBefore")
		var got []string
		for _, e := range evs {
			if e.StreamPos < 0 {
				got = append(got, e.PDU.EventID())
			}
		}
		if want := []string{erinMsg.EventID(), daveMsg.EventID(), daveJoin.EventID()}; !slices.Equal(got, want) {
			t.Errorf("backfilled timeline newest first = %v; want %v (erin's message, dave's message, dave's join)", got, want)
		}
		if ev, err := s.Event(ctx, erinJoin.EventID()); err != nil || ev.StreamPos != 0 {
			t.Errorf("fetched auth event: %v, %v; want an outlier", ev, err)
		}
		for name, id := range map[string]string{"intruder's message": intruder.EventID(), "power grab": powerGrab.EventID()} {
			if rej, err := s.Rejected(ctx, id); err != nil || !rej {
				t.Errorf("%s rejected = %v, %v; want true", name, rej, err)
			}
			if _, err := s.Event(ctx, id); err == nil {
				t.Errorf("%s is served", name)
			}
		}
		known, err := s.KnownEvents(ctx, []string{frankMsg.EventID(), frankJoin.EventID()})
		testkit.Must(t, err, "KnownEvents")
		if len(known) != 0 {
			t.Errorf("frank's events known: %v; want neither stored nor rejected", known)
		}

		// Asking again stores nothing more: the rejected events count as held.
		n, err := s.storeBackfilled(ctx, ri, roomID, "remote.example", fake.batch, 0)
		if err != nil || n != 0 {
			t.Errorf("storing the batch again added %d, %v; want 0", n, err)
		}
		if rej, err := s.Rejected(ctx, intruder.EventID()); err != nil || !rej {
			t.Errorf("intruder rejected after the repeat = %v, %v", rej, err)
		}
	})
}
