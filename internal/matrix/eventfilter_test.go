package matrix

import (
	"encoding/json"
	"testing"
)

func TestRoomEventFilterMatches(t *testing.T) {
	yes, no := true, false
	for _, tc := range []struct {
		name    string
		f       *RoomEventFilter
		evType  string
		sender  string
		content string
		want    bool
	}{
		{"nil passes", nil, "m.room.message", "@a:x", `{}`, true},
		{"type wildcard", &RoomEventFilter{EventFilter: EventFilter{Types: []string{"m.room.*"}}}, "m.room.name", "@a:x", `{}`, true},
		{"type wildcard misses", &RoomEventFilter{EventFilter: EventFilter{Types: []string{"m.room.*"}}}, "m.reaction", "@a:x", `{}`, false},
		{"inner wildcard", &RoomEventFilter{EventFilter: EventFilter{Types: []string{"m.*.name"}}}, "m.room.name", "@a:x", `{}`, true},
		{"not_types wins", &RoomEventFilter{EventFilter: EventFilter{Types: []string{"*"}, NotTypes: []string{"m.room.message"}}}, "m.room.message", "@a:x", `{}`, false},
		{"empty types passes nothing", &RoomEventFilter{EventFilter: EventFilter{Types: []string{}}}, "m.room.message", "@a:x", `{}`, false},
		{"senders", &RoomEventFilter{EventFilter: EventFilter{Senders: []string{"@b:x"}}}, "m.room.message", "@a:x", `{}`, false},
		{"not_senders", &RoomEventFilter{EventFilter: EventFilter{NotSenders: []string{"@a:x"}}}, "m.room.message", "@a:x", `{}`, false},
		{"contains_url true", &RoomEventFilter{ContainsURL: &yes}, "m.room.message", "@a:x", `{"url":"mxc://x/y"}`, true},
		{"contains_url false", &RoomEventFilter{ContainsURL: &no}, "m.room.message", "@a:x", `{"url":"mxc://x/y"}`, false},
		{"not_rooms", &RoomEventFilter{NotRooms: []string{"!r:x"}}, "m.room.message", "@a:x", `{}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.f.Matches("!r:x", tc.evType, tc.sender, json.RawMessage(tc.content)); got != tc.want {
				t.Errorf("Matches(%s from %s) = %v; want %v", tc.evType, tc.sender, got, tc.want)
			}
		})
	}
}
