package roomserver

import (
	"context"
	"testing"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
)

// TestOwnLeaveAfterKnockIsVisible: a knocker who rescinds their knock, or whose knock is
// refused, sees their leave (sync shows it in the leave section), though never joined.
func TestOwnLeaveAfterKnockIsVisible(t *testing.T) {
	tests := []struct {
		name   string
		sender string // of the leave
	}{
		{"rescinded", bob},
		{"refused", alice},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
				ctx := context.Background()
				s, _ := newService(t, db)
				roomID := createRoom(t, s, "11", "knock")
				send(t, s, SendRequest{RoomID: roomID, Sender: bob, Type: spec.MRoomMember, StateKey: ptr(bob),
					Content: raw(map[string]string{"membership": "knock"})})
				leaveID := send(t, s, SendRequest{RoomID: roomID, Sender: tt.sender, Type: spec.MRoomMember, StateKey: ptr(bob),
					Content: raw(map[string]string{"membership": "leave"})})
				leave, err := s.Event(ctx, leaveID)
				testkit.Must(t, err, "loading the leave")
				vis, _, err := s.VisibleEvents(ctx, bob, []*Event{leave})
				testkit.Must(t, err, "checking visibility")
				if len(vis) != 1 {
					t.Errorf("bob cannot see his own leave %s after knocking", leaveID)
				}
			})
		})
	}
}
