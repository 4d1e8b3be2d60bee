package matrix

import (
	"fmt"
	"strings"
)

// Filter is a client's event filter (POST /user/{userId}/filter, /sync?filter=).
type Filter struct {
	EventFields []string     `json:"event_fields,omitempty"`
	EventFormat string       `json:"event_format,omitempty"`
	Presence    *EventFilter `json:"presence,omitempty"`
	AccountData *EventFilter `json:"account_data,omitempty"`
	Room        *RoomFilter  `json:"room,omitempty"`
}

// EventFilter filters presence and global account data.
type EventFilter struct {
	Limit      *int     `json:"limit,omitempty"`
	NotSenders []string `json:"not_senders,omitempty"`
	NotTypes   []string `json:"not_types,omitempty"`
	Senders    []string `json:"senders,omitempty"`
	Types      []string `json:"types,omitempty"`
}

// RoomFilter filters the rooms part of sync.
type RoomFilter struct {
	NotRooms     []string         `json:"not_rooms,omitempty"`
	Rooms        []string         `json:"rooms,omitempty"`
	Ephemeral    *RoomEventFilter `json:"ephemeral,omitempty"`
	IncludeLeave bool             `json:"include_leave,omitempty"`
	State        *RoomEventFilter `json:"state,omitempty"`
	Timeline     *RoomEventFilter `json:"timeline,omitempty"`
	AccountData  *RoomEventFilter `json:"account_data,omitempty"`
}

// RoomEventFilter filters room events.
type RoomEventFilter struct {
	EventFilter
	NotRooms                  []string `json:"not_rooms,omitempty"`
	Rooms                     []string `json:"rooms,omitempty"`
	ContainsURL               *bool    `json:"contains_url,omitempty"`
	LazyLoadMembers           bool     `json:"lazy_load_members,omitempty"`
	IncludeRedundantMembers   bool     `json:"include_redundant_members,omitempty"`
	UnreadThreadNotifications bool     `json:"unread_thread_notifications,omitempty"`
}

// Check validates the filter's values beyond their JSON types: room IDs, user IDs, limits and
// the event format. It returns 400 M_BAD_JSON naming the first bad field.
func (f *Filter) Check() error {
	if f.EventFormat != "" && f.EventFormat != "client" && f.EventFormat != "federation" {
		return BadJSON("event_format must be client or federation")
	}
	if err := f.Presence.check("presence"); err != nil {
		return err
	}
	if err := f.AccountData.check("account_data"); err != nil {
		return err
	}
	if r := f.Room; r != nil {
		if err := checkRoomIDs("room.rooms", r.Rooms); err != nil {
			return err
		}
		if err := checkRoomIDs("room.not_rooms", r.NotRooms); err != nil {
			return err
		}
		for name, rf := range map[string]*RoomEventFilter{"room.ephemeral": r.Ephemeral, "room.state": r.State, "room.timeline": r.Timeline, "room.account_data": r.AccountData} {
			if rf == nil {
				continue
			}
			if err := rf.EventFilter.check(name); err != nil {
				return err
			}
			if err := checkRoomIDs(name+".rooms", rf.Rooms); err != nil {
				return err
			}
			if err := checkRoomIDs(name+".not_rooms", rf.NotRooms); err != nil {
				return err
			}
		}
	}
	return nil
}

func (e *EventFilter) check(name string) error {
	if e == nil {
		return nil
	}
	if e.Limit != nil && *e.Limit < 0 {
		return BadJSON("%s.limit must not be negative", name)
	}
	for _, s := range append(append([]string(nil), e.Senders...), e.NotSenders...) {
		if _, _, err := SplitID('@', s); err != nil {
			return BadJSON("%s: %q is not a user ID", name, s)
		}
	}
	return nil
}

func checkRoomIDs(name string, ids []string) error {
	for _, id := range ids {
		// v12 room IDs have no server part, so only the sigil is checked.
		if !strings.HasPrefix(id, "!") || len(id) < 2 {
			return BadJSON("%s: %q is not a room ID", name, id)
		}
	}
	return nil
}

// String is for logs.
func (f *Filter) String() string { return fmt.Sprintf("filter(room=%v)", f.Room != nil) }
