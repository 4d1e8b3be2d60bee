package clientapi

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/userapi"
)

// membersRequest is a parsed GET /rooms/{roomId}/members.
type membersRequest struct {
	roomID                    string
	at                        *int64
	membership, notMembership string
}

func (s *Service) members(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	q := r.URL.Query()
	req := membersRequest{roomID: httpx.Var(r, "roomID"), membership: q.Get("membership"), notMembership: q.Get("not_membership")}
	for _, m := range []string{req.membership, req.notMembership} {
		switch m {
		case "", "join", "invite", "knock", "leave", "ban":
		default:
			return matrix.InvalidParam("unknown membership %q", m)
		}
	}
	if v := q.Get("at"); v != "" {
		pos, err := parseStreamToken(v)
		if err != nil {
			return err
		}
		req.at = &pos
	}
	evs, err := s.roomMembers(r.Context(), dev.UserID, req)
	if err != nil {
		return err
	}
	chunk := make([]matrix.ClientEvent, 0, len(evs))
	for _, e := range evs {
		chunk = append(chunk, matrix.ToClientEvent(e.PDU, matrix.ClientEventOptions{}))
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{"chunk": chunk})
}

// roomMembers returns the m.room.member events of a room that userID may read: the current
// ones, those as of their leave when departed, or those as of the stream position req.at
// (never later than their leave), filtered by membership. A room's creation (its create
// event and its creator's join) counts as one point: a token before or inside it, such as
// the prev_batch of a timeline that starts at the create event, reads the members right
// after it, the creator alone, rather than the empty state before the room existed.
// Errors: 403 M_FORBIDDEN for a room the user may not read, 404 M_NOT_FOUND for a room with
// no events.
func (s *Service) roomMembers(ctx context.Context, userID string, req membersRequest) ([]*roomserver.Event, error) {
	view, err := s.viewOf(ctx, req.roomID, userID)
	if err != nil {
		return nil, err
	}
	var in, notIn []string
	if req.membership != "" {
		in = []string{req.membership}
	}
	if req.notMembership != "" {
		notIn = []string{req.notMembership}
	}
	if req.at == nil && view.leave == nil {
		evs, err := s.rooms.MemberEvents(ctx, req.roomID, in, notIn)
		return evs, roomErr(err)
	}
	point := view.leave
	if req.at != nil && (view.leave == nil || *req.at < view.leave.StreamPos) {
		point, err = s.rooms.EventAtOrBefore(ctx, req.roomID, *req.at)
		if err != nil && !errors.Is(err, sqldb.ErrNotFound) {
			return nil, err
		}
		if point == nil || point.PDU.Type() == spec.MRoomCreate {
			if point, err = s.roomCreation(ctx, req.roomID); err != nil {
				return nil, err
			}
		}
	}
	all, err := s.rooms.MemberEventsAfter(ctx, point.PDU.EventID())
	if err != nil {
		return nil, roomErr(err)
	}
	out := all[:0]
	for _, e := range all {
		m, _ := e.PDU.Membership()
		if (in != nil && !slices.Contains(in, m)) || slices.Contains(notIn, m) {
			continue
		}
		out = append(out, e)
	}
	return out, nil
}

// roomCreation returns the event that ends a room's creation: the first membership event
// among its earliest stored events (the creator's join), or the earliest event when there is
// none. 404 M_NOT_FOUND for a room with no events.
func (s *Service) roomCreation(ctx context.Context, roomID string) (*roomserver.Event, error) {
	first, err := s.rooms.RoomEventsAfter(ctx, roomID, 0, 2)
	if err != nil {
		return nil, roomErr(err)
	}
	if len(first) == 0 {
		return nil, matrix.NotFound("no events in %s", roomID)
	}
	for _, e := range first {
		if e.PDU.Type() == spec.MRoomMember {
			return e, nil
		}
	}
	return first[0], nil
}

// parseStreamToken reads the room-event stream position out of a /sync token ("s<pos>_…")
// or a pagination token ("t<pos>"), the forms syncapi hands out. It returns 400
// M_INVALID_PARAM for anything else.
func parseStreamToken(v string) (int64, error) {
	if len(v) > 1 && (v[0] == 's' || v[0] == 't') {
		num, _, _ := strings.Cut(v[1:], "_")
		if pos, err := strconv.ParseInt(num, 10, 64); err == nil && pos >= 0 {
			return pos, nil
		}
	}
	return 0, matrix.InvalidParam("invalid token %q", v)
}
