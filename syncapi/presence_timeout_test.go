package syncapi

import (
	"context"
	"crypto/ed25519"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/bus"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/userapi"
)

// TestPresenceTimeout checks that a user whose syncs ended more than syncOnlineTimeout ago
// goes offline, and that one still syncing, or who synced recently, stays online.
func TestPresenceTimeout(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		ctx := context.Background()
		log := slog.New(slog.DiscardHandler)
		_, priv, err := ed25519.GenerateKey(nil)
		testkit.Must(t, err, "generating key")
		roomEvents, accountData := bus.NewStream(0), bus.NewStream(0)
		users, err := userapi.New(userapi.Config{ServerName: "test.local", BCryptCost: 4}, db, accountData, log)
		testkit.Must(t, err, "starting userapi")
		rooms, err := roomserver.New(roomserver.Config{ServerName: "test.local", KeyID: "ed25519:test", PrivateKey: priv}, db, roomEvents, log)
		testkit.Must(t, err, "starting roomserver")
		noAuth := func(*http.Request) (*userapi.Device, error) { return nil, nil }
		s, err := New(db, rooms, users, noAuth, Streams{Rooms: roomEvents, AccountData: accountData}, log)
		testkit.Must(t, err, "starting syncapi")
		t.Cleanup(s.Close)

		const gone, polling, recent = "@gone:test.local", "@polling:test.local", "@recent:test.local"
		for _, u := range []string{gone, polling, recent} {
			testkit.Must(t, s.touchPresence(ctx, u, "online"), "presence of %s", u)
		}
		s.activity.started(gone)()
		s.activity.started(recent)()
		stillPolling := s.activity.started(polling)
		defer stillPolling()

		s.sweepPresence(ctx, time.Now().Add(syncOnlineTimeout/2))
		s.sweepPresence(ctx, time.Now()) // nothing has timed out yet
		want := map[string]string{gone: "online", polling: "online", recent: "online"}
		check := func(when string) {
			t.Helper()
			for u, p := range want {
				got, err := s.Presence(ctx, u, u)
				testkit.Must(t, err, "reading presence of %s", u)
				if got.Presence != p {
					t.Errorf("%s: %s is %s; want %s", when, u, got.Presence, p)
				}
			}
		}
		check("before the timeout")

		// Recent syncs again just before the sweep; the others' last sync is long over.
		s.activity.started(recent)()
		s.activity.mu.Lock()
		s.activity.users[gone].last = time.Now().Add(-2 * syncOnlineTimeout)
		s.activity.mu.Unlock()
		s.sweepPresence(ctx, time.Now())
		want[gone] = "offline"
		check("after the timeout")

		// Syncing again brings the user back online at once, despite the write throttle.
		testkit.Must(t, s.touchPresence(ctx, gone, "online"), "presence of %s", gone)
		want[gone] = "online"
		check("after syncing again")
	})
}
