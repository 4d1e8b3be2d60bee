package matrix

import "github.com/tidwall/sjson"

// WithoutUnsigned returns a stored event's JSON as it goes to other servers: without the
// unsigned section this server keeps for clients (prev_content, invite_room_state,
// redacted_because…). It returns an error only for JSON that is not an object.
func WithoutUnsigned(stored []byte) ([]byte, error) {
	return sjson.DeleteBytes(stored, "unsigned")
}
