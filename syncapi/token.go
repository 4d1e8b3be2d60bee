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
}

// String encodes the token.
func (t Token) String() string { return fmt.Sprintf("s%d_%d", t.Rooms, t.AccountData) }

// ParseToken decodes a token; missing trailing fields are 0.
func ParseToken(s string) (Token, error) {
	if !strings.HasPrefix(s, "s") {
		return Token{}, fmt.Errorf("token %q does not start with s", s)
	}
	parts := strings.Split(s[1:], "_")
	var vals [2]int64
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
	return Token{Rooms: vals[0], AccountData: vals[1]}, nil
}

// after reports whether t is ahead of u in any stream.
func (t Token) after(u Token) bool { return t.Rooms > u.Rooms || t.AccountData > u.AccountData }
