package roomserver

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"log/slog"
	"math"
	"slices"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"

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
		n, err := s.storeBackfilled(ctx, ri, roomID, newestFirst, stateBeforeEarliest(ctx, s, []*Event{last}))
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
		if n, err := s.storeBackfilled(ctx, ri, roomID, newestFirst, 0); err != nil || n != 0 {
			t.Fatalf("storing again added %d, %v; want 0", n, err)
		}
	})
}
