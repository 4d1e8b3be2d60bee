package clientapi

import (
	"net/url"
	"slices"
	"testing"

	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
)

// TestMembersAt checks /members?at=: a token before the room's first event (the prev_batch of
// a timeline that starts at the create event) reads the members right after creation, a
// later token the members then, and a malformed token is 400.
func TestMembersAt(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		d := newDirServer(t, db, "alice", "bob")
		room := d.must("alice", "POST", "/createRoom", map[string]any{"preset": "public_chat"})["room_id"].(string)
		d.must("bob", "POST", "/join/"+url.PathEscape(room), map[string]any{})

		members := func(at string) (int, []string) {
			t.Helper()
			status, body := d.do("alice", "GET", "/rooms/"+url.PathEscape(room)+"/members?at="+url.QueryEscape(at), nil)
			var users []string
			chunk, _ := body["chunk"].([]any)
			for _, c := range chunk {
				ev := c.(map[string]any)
				if ev["room_id"] != room || ev["type"] != "m.room.member" {
					t.Errorf("members?at=%s: got event %v, want m.room.member events of %s", at, ev, room)
				}
				users = append(users, ev["state_key"].(string))
			}
			slices.Sort(users)
			return status, users
		}
		tests := []struct {
			at     string
			status int
			want   []string
		}{
			{at: "t0", status: 200, want: []string{"@alice:test.local"}},
			{at: "s0_0_0_0_0", status: 200, want: []string{"@alice:test.local"}},
			{at: "t1000000", status: 200, want: []string{"@alice:test.local", "@bob:test.local"}},
			{at: "x12", status: 400},
		}
		for _, tt := range tests {
			status, got := members(tt.at)
			if status != tt.status || (status == 200 && !slices.Equal(got, tt.want)) {
				t.Errorf("members?at=%s: got %d %v, want %d %v", tt.at, status, got, tt.status, tt.want)
			}
		}
	})
}
