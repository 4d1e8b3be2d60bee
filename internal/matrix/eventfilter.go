package matrix

import (
	"encoding/json"
	"slices"
	"strings"
)

// Matches reports whether an event of evType from sender passes the filter's senders, types
// and their negations; a nil filter passes everything. Types may use '*' as a wildcard for
// any sequence of characters. An empty sender skips the sender checks, for events that have
// none (account data).
func (e *EventFilter) Matches(evType, sender string) bool {
	if e == nil {
		return true
	}
	if sender != "" {
		if slices.Contains(e.NotSenders, sender) {
			return false
		}
		if e.Senders != nil && !slices.Contains(e.Senders, sender) {
			return false
		}
	}
	for _, t := range e.NotTypes {
		if typeMatches(t, evType) {
			return false
		}
	}
	if e.Types != nil {
		for _, t := range e.Types {
			if typeMatches(t, evType) {
				return true
			}
		}
		return false
	}
	return true
}

// Matches reports whether a room event passes the filter: senders, types, rooms and
// contains_url (content has a string "url" field). A nil filter passes everything.
func (f *RoomEventFilter) Matches(roomID, evType, sender string, content json.RawMessage) bool {
	if f == nil {
		return true
	}
	if !f.EventFilter.Matches(evType, sender) {
		return false
	}
	if slices.Contains(f.NotRooms, roomID) || (f.Rooms != nil && !slices.Contains(f.Rooms, roomID)) {
		return false
	}
	if f.ContainsURL != nil {
		var c struct {
			URL any `json:"url"`
		}
		_ = json.Unmarshal(content, &c)
		_, has := c.URL.(string)
		if has != *f.ContainsURL {
			return false
		}
	}
	return true
}

// typeMatches matches an event type against a filter pattern where '*' is any sequence.
func typeMatches(pattern, evType string) bool {
	if !strings.Contains(pattern, "*") {
		return pattern == evType
	}
	parts := strings.Split(pattern, "*")
	if !strings.HasPrefix(evType, parts[0]) {
		return false
	}
	rest := evType[len(parts[0]):]
	for i, p := range parts[1:] {
		if i == len(parts)-2 {
			return strings.HasSuffix(rest, p) && len(rest) >= len(p)
		}
		j := strings.Index(rest, p)
		if j < 0 {
			return false
		}
		rest = rest[j+len(p):]
	}
	return true
}
