package syncapi

import (
	"context"
	"errors"
	"math"
	"net/http"
	"time"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/roomserver"
)

// historyRooms is what /messages, /context and /timestamp_to_event need of the roomserver,
// beyond Rooms. History visibility itself is roomserver's VisibleEvents, so /sync, these
// endpoints and clientapi's /event judge it the same way.
type historyRooms interface {
	VisibleEvents(ctx context.Context, userID string, evs []*roomserver.Event) ([]*roomserver.Event, []string, error)
	RoomEventsBefore(ctx context.Context, roomID string, before int64, limit int) ([]*roomserver.Event, error)
	RoomEventsAfter(ctx context.Context, roomID string, after int64, limit int) ([]*roomserver.Event, error)
	SenderMembers(ctx context.Context, evs []*roomserver.Event) ([]*roomserver.Event, error)
	HistoryVisibility(ctx context.Context, roomID string) (string, error)
	StateAfter(ctx context.Context, eventID string) ([]*roomserver.Event, error)
	EventNearTimestamp(ctx context.Context, roomID string, ts int64, backward bool) (*roomserver.Event, error)
}

// registerHistory adds the room history endpoints: /messages, /context and
// /timestamp_to_event.
func (s *Service) registerHistory(r *mux.Router) {
	const v3 = "/_matrix/client/{apiVersion:(?:r0|v3)}"
	get := http.MethodGet
	r.Handle(v3+"/rooms/{roomID}/messages", s.authed(s.messagesHandler)).Methods(get)
	r.Handle(v3+"/rooms/{roomID}/context/{eventID}", s.authed(s.contextHandler)).Methods(get)
	r.Handle("/_matrix/client/v1/rooms/{roomID}/timestamp_to_event", s.authed(s.timestampHandler)).Methods(get)
	r.Handle("/_matrix/client/unstable/org.matrix.msc3030/rooms/{roomID}/timestamp_to_event", s.authed(s.timestampHandler)).Methods(get)
}

// readBound returns the newest stream position of roomID that userID may read: every
// position for a joined user or a world-readable room, the position of the user's leave (or
// ban) for a departed one. Anyone else gets 403 M_FORBIDDEN, also when the room is unknown.
func (s *Service) readBound(ctx context.Context, roomID, userID string) (int64, error) {
	m, ev, err := s.rooms.Membership(ctx, roomID, userID)
	if err != nil {
		return 0, err
	}
	switch {
	case m == spec.Join:
		return math.MaxInt64, nil
	case (m == spec.Leave || m == spec.Ban) && ev != nil && ev.StreamPos > 0:
		// A departed user sees no further than their leave, whatever the visibility
		// (Synapse does the same).
		return ev.StreamPos, nil
	}
	hv, err := s.rooms.HistoryVisibility(ctx, roomID)
	if errors.Is(err, sqldb.ErrNotFound) {
		return 0, matrix.Forbidden("you are not a member of %s", roomID)
	}
	if err != nil {
		return 0, err
	}
	if hv == roomserver.VisibilityWorldReadable {
		return math.MaxInt64, nil
	}
	return 0, matrix.Forbidden("you are not a member of %s", roomID)
}

// visibleEvents filters evs by history visibility for userID and turns the rest into client
// events carrying unsigned.membership (MSC4115).
func (s *Service) visibleEvents(ctx context.Context, userID, deviceID string, evs []*roomserver.Event, now time.Time) ([]*roomserver.Event, []matrix.ClientEvent, error) {
	vis, ms, err := s.rooms.VisibleEvents(ctx, userID, evs)
	if err != nil {
		return nil, nil, err
	}
	out := make([]matrix.ClientEvent, len(vis))
	for i, e := range vis {
		out[i] = historyClientEvent(e, userID, deviceID, ms[i], now)
	}
	return vis, out, nil
}

// historyClientEvent is e in the client format with room_id, for a user's device.
func historyClientEvent(e *roomserver.Event, userID, deviceID, membership string, now time.Time) matrix.ClientEvent {
	o := matrix.ClientEventOptions{Now: now, Membership: membership}
	if e.TxnID != "" && e.DeviceID == deviceID && string(e.PDU.SenderID()) == userID {
		o.TxnID = e.TxnID
	}
	if e.RedactedBecause != nil {
		rb := matrix.ToClientEvent(e.RedactedBecause, matrix.ClientEventOptions{Now: now})
		o.RedactedBecause = &rb
	}
	return matrix.ToClientEvent(e.PDU, o)
}

// stateClientEvents turns state events into client events (no membership annotation).
func stateClientEvents(evs []*roomserver.Event, now time.Time) []matrix.ClientEvent {
	out := make([]matrix.ClientEvent, 0, len(evs))
	for _, e := range evs {
		out = append(out, matrix.ToClientEvent(e.PDU, matrix.ClientEventOptions{Now: now}))
	}
	return out
}
