package roomserver

import (
	"context"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
)

// TestSendOriginServerTS checks that SendRequest.OriginServerTS sets origin_server_ts (an
// application service's timestamp massaging) without moving the event in the room, and
// that 0 means now.
func TestSendOriginServerTS(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		room := createRoom(t, s, "11", "public")
		const past = int64(1641168000000)
		before := time.Now().UnixMilli()
		now := send(t, s, message(room, alice, "now"))
		r := message(room, alice, "imported")
		r.OriginServerTS = past
		old := send(t, s, r)
		st := state(room, alice, "m.room.topic", map[string]string{"topic": "old"})
		st.OriginServerTS = past
		oldState := send(t, s, st)

		tests := []struct {
			name    string
			eventID string
			check   func(ts int64) bool
			want    string
		}{
			{"0 is now", now, func(ts int64) bool { return ts >= before }, "now"},
			{"message in the past", old, func(ts int64) bool { return ts == past }, "the given time"},
			{"state in the past", oldState, func(ts int64) bool { return ts == past }, "the given time"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				ev, err := s.Event(ctx, tt.eventID)
				testkit.Must(t, err, "loading %s", tt.eventID)
				if got := int64(ev.PDU.OriginServerTS()); !tt.check(got) {
					t.Errorf("origin_server_ts: got %d; want %s", got, tt.want)
				}
			})
		}
		// The DAG order is unchanged: the imported event still follows the first.
		a, err := s.Event(ctx, now)
		testkit.Must(t, err, "loading %s", now)
		b, err := s.Event(ctx, old)
		testkit.Must(t, err, "loading %s", old)
		if !(b.StreamPos > a.StreamPos && b.PDU.Depth() > a.PDU.Depth()) {
			t.Errorf("imported event at pos %d depth %d; want after pos %d depth %d", b.StreamPos, b.PDU.Depth(), a.StreamPos, a.PDU.Depth())
		}
	})
}
