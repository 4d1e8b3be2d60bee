package syncapi

import (
	"fmt"
	"strconv"
	"strings"
)

// Token is a position in every stream /sync delivers. Its text form is "s" followed by the
// positions joined with "_", so new streams append fields without breaking old tokens.
type Token struct {
	Rooms       int64 // room-event stream
	AccountData int64
	Receipts    int64
	Typing      int64 // in memory; starts at the server's start time in ms so it never goes back
	Presence    int64
}

// tokenFields is how many positions a token holds.
const tokenFields = 5

// String encodes the token.
func (t Token) String() string {
	return fmt.Sprintf("s%d_%d_%d_%d_%d", t.Rooms, t.AccountData, t.Receipts, t.Typing, t.Presence)
}

// ParseToken decodes a token; missing trailing fields are 0 and extra ones are ignored.
func ParseToken(s string) (Token, error) {
	if !strings.HasPrefix(s, "s") {
		return Token{}, fmt.Errorf("token %q does not start with s", s)
	}
	parts := strings.Split(s[1:], "_")
	var vals [tokenFields]int64
	for i, p := range parts {
		if i >= len(vals) {
			break
		}
		v, err := strconv.ParseInt(p, 10, 64)
		if err != nil || v < 0 {
			return Token{}, fmt.Errorf("token %q has a bad position", s)
		}
		vals[i] = v
	}
	return Token{Rooms: vals[0], AccountData: vals[1], Receipts: vals[2], Typing: vals[3], Presence: vals[4]}, nil
}

// after reports whether t is ahead of u in any stream.
func (t Token) after(u Token) bool {
	return t.Rooms > u.Rooms || t.AccountData > u.AccountData || t.Receipts > u.Receipts ||
		t.Typing > u.Typing || t.Presence > u.Presence
}
