package matrix

import (
	"encoding/json"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
)

// ClientEvent is an event in the client format of the Client-Server API.
type ClientEvent struct {
	Content        json.RawMessage `json:"content"`
	EventID        string          `json:"event_id"`
	OriginServerTS int64           `json:"origin_server_ts"`
	RoomID         string          `json:"room_id,omitempty"`
	Sender         string          `json:"sender"`
	StateKey       *string         `json:"state_key,omitempty"`
	Type           string          `json:"type"`
	Redacts        string          `json:"redacts,omitempty"`
	Unsigned       map[string]any  `json:"unsigned,omitempty"`
}

// ClientEventOptions say what to add to a client event.
type ClientEventOptions struct {
	// TxnID is the transaction ID to echo to the device that sent the event.
	TxnID string
	// OmitRoomID drops room_id, as /sync does inside a room's section.
	OmitRoomID bool
	// RedactedBecause is the redaction event that redacted this one, if any.
	RedactedBecause *ClientEvent
	Now             time.Time
	// Membership is the requesting user's membership at the event (MSC4115), sent as
	// unsigned.membership when set.
	Membership string
}

// ToClientEvent converts a PDU to the client format.
func ToClientEvent(ev gomatrixserverlib.PDU, o ClientEventOptions) ClientEvent {
	ce := ClientEvent{
		Content:        json.RawMessage(ev.Content()),
		EventID:        ev.EventID(),
		OriginServerTS: int64(ev.OriginServerTS()),
		Sender:         string(ev.SenderID()),
		StateKey:       ev.StateKey(),
		Type:           ev.Type(),
	}
	if len(ce.Content) == 0 {
		ce.Content = json.RawMessage("{}")
	}
	if !o.OmitRoomID {
		ce.RoomID = ev.RoomID().String()
	}
	if ev.Type() == "m.room.redaction" {
		ce.Redacts = ev.Redacts()
	}
	unsigned := map[string]any{}
	if u := ev.Unsigned(); len(u) > 2 {
		_ = json.Unmarshal(u, &unsigned)
	}
	now := o.Now
	if now.IsZero() {
		now = time.Now()
	}
	unsigned["age"] = now.UnixMilli() - ce.OriginServerTS
	if o.TxnID != "" {
		unsigned["transaction_id"] = o.TxnID
	}
	if o.Membership != "" {
		unsigned["membership"] = o.Membership
	}
	if o.RedactedBecause != nil {
		unsigned["redacted_because"] = o.RedactedBecause
	}
	ce.Unsigned = unsigned
	return ce
}
