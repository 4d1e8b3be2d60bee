package syncapi

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/userapi"
)

type contextResponse struct {
	Start        string               `json:"start"`
	End          string               `json:"end"`
	EventsBefore []matrix.ClientEvent `json:"events_before"`
	Event        matrix.ClientEvent   `json:"event"`
	EventsAfter  []matrix.ClientEvent `json:"events_after"`
	State        []matrix.ClientEvent `json:"state"`
}

// contextRequest is a parsed GET /rooms/{roomId}/context/{eventId}.
type contextRequest struct {
	roomID, eventID string
	limit           int
	filter          *matrix.RoomEventFilter
}

func (s *Service) contextHandler(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	q := r.URL.Query()
	req := &contextRequest{roomID: httpx.Var(r, "roomID"), eventID: httpx.Var(r, "eventID")}
	var err error
	if req.limit, err = parseLimit(q.Get("limit"), defaultHistoryLimit); err != nil {
		return err
	}
	if req.filter, err = parseRoomEventFilter(q.Get("filter")); err != nil {
		return err
	}
	resp, err := s.eventContext(r.Context(), dev, req)
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, resp)
}

// eventContext returns an event with the events around it (GET /rooms/{roomId}/context/{eventId}):
// limit/2 before and the rest after, filtered and visibility-checked, and the state after
// the last event returned (only the senders' members when the filter lazy-loads them). It
// returns 403 M_FORBIDDEN for a room the user may not read and 404 M_NOT_FOUND for an event
// they may not see.
func (s *Service) eventContext(ctx context.Context, dev *userapi.Device, req *contextRequest) (*contextResponse, error) {
	bound, err := s.readBound(ctx, req.roomID, dev.UserID)
	if err != nil {
		return nil, err
	}
	ev, err := s.rooms.Event(ctx, req.eventID)
	if errors.Is(err, sqldb.ErrNotFound) {
		return nil, matrix.NotFound("event not found")
	}
	if err != nil {
		return nil, err
	}
	if ev.PDU.RoomID().String() != req.roomID || ev.StreamPos == 0 || ev.StreamPos > bound {
		return nil, matrix.NotFound("event not found")
	}
	now := time.Now()
	vis, cevs, err := s.visibleEvents(ctx, dev.UserID, dev.DeviceID, []*roomserver.Event{ev}, now)
	if err != nil {
		return nil, err
	}
	if len(vis) == 0 {
		return nil, matrix.NotFound("event not found")
	}
	base := pageRequest{userID: dev.UserID, deviceID: dev.DeviceID, roomID: req.roomID, bound: bound,
		filter: req.filter, now: now}
	before, after := base, base
	before.from, before.backward, before.limit = ev.StreamPos-1, true, req.limit/2
	after.from, after.limit = ev.StreamPos, req.limit-req.limit/2
	pb, err := s.paginate(ctx, before)
	if err != nil {
		return nil, err
	}
	pa, err := s.paginate(ctx, after)
	if err != nil {
		return nil, err
	}
	resp := &contextResponse{
		Start: historyToken(pb.next), End: historyToken(pa.next),
		EventsBefore: pb.client, Event: cevs[0], EventsAfter: pa.client,
	}
	if resp.EventsBefore == nil {
		resp.EventsBefore = []matrix.ClientEvent{}
	}
	if resp.EventsAfter == nil {
		resp.EventsAfter = []matrix.ClientEvent{}
	}
	var state []*roomserver.Event
	if req.filter != nil && req.filter.LazyLoadMembers {
		all := append(append(append([]*roomserver.Event{}, pb.events...), ev), pa.events...)
		state, err = s.rooms.SenderMembers(ctx, all)
	} else {
		last := ev
		if n := len(pa.events); n > 0 {
			last = pa.events[n-1]
		}
		state, err = s.rooms.StateAfter(ctx, last.PDU.EventID())
	}
	if err != nil {
		return nil, err
	}
	resp.State = stateClientEvents(state, now)
	return resp, nil
}

type timestampResponse struct {
	EventID        string `json:"event_id"`
	OriginServerTS int64  `json:"origin_server_ts"`
}

func (s *Service) timestampHandler(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	q := r.URL.Query()
	ts, err := strconv.ParseInt(q.Get("ts"), 10, 64)
	if err != nil || ts < 0 {
		return matrix.InvalidParam("ts must be a timestamp in milliseconds")
	}
	var backward bool
	switch q.Get("dir") {
	case "b":
		backward = true
	case "f":
	default:
		return matrix.InvalidParam("dir must be b or f")
	}
	resp, err := s.timestampToEvent(r.Context(), dev.UserID, httpx.Var(r, "roomID"), ts, backward)
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, resp)
}

// timestampToEvent finds the event of roomID nearest ts in the direction asked
// (GET /rooms/{roomId}/timestamp_to_event, MSC3030). It returns 403 M_FORBIDDEN for a room the
// user may not read and 404 M_NOT_FOUND when no visible event qualifies.
func (s *Service) timestampToEvent(ctx context.Context, userID, roomID string, ts int64, backward bool) (*timestampResponse, error) {
	bound, err := s.readBound(ctx, roomID, userID)
	if err != nil {
		return nil, err
	}
	ev, err := s.rooms.EventNearTimestamp(ctx, roomID, ts, backward)
	if err != nil && !errors.Is(err, sqldb.ErrNotFound) {
		return nil, err
	}
	// Other servers may hold closer history: before this server joined, or in a gap.
	ask := ev == nil
	if ev != nil && !backward {
		if ask, err = s.rooms.GapBefore(ctx, ev); err != nil {
			return nil, err
		}
	}
	if ask {
		remote, rerr := s.rooms.RemoteEventNearTimestamp(ctx, roomID, ts, backward)
		if rerr != nil && !errors.Is(rerr, sqldb.ErrNotFound) {
			return nil, rerr
		}
		if remote != nil && (ev == nil || remote.PDU.OriginServerTS() <= ev.PDU.OriginServerTS()) {
			ev = remote
		}
	}
	if ev == nil {
		return nil, matrix.NotFound("no event found near %d", ts)
	}
	if ev.StreamPos > bound {
		return nil, matrix.NotFound("no event found near %d", ts)
	}
	vis, _, err := s.rooms.VisibleEvents(ctx, userID, []*roomserver.Event{ev})
	if err != nil {
		return nil, err
	}
	if len(vis) == 0 {
		return nil, matrix.NotFound("no event found near %d", ts)
	}
	return &timestampResponse{EventID: ev.PDU.EventID(), OriginServerTS: int64(ev.PDU.OriginServerTS())}, nil
}

// remoteTimestamps is the roomserver's asking other servers for history near a timestamp.
type remoteTimestamps interface {
	GapBefore(ctx context.Context, ev *roomserver.Event) (bool, error)
	RemoteEventNearTimestamp(ctx context.Context, roomID string, ts int64, backward bool) (*roomserver.Event, error)
}
