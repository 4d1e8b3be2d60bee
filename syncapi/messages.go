package syncapi

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/userapi"
)

// Pagination tokens. A position P in the room-event stream names the gap after the event at
// P: paginating backwards from P returns events at positions <= P, newest first; forwards
// returns events at positions > P, oldest first. /messages and /context hand out
// "t<P>" tokens and accept those as well as /sync tokens ("s<P>_…": next_batch, and a
// timeline's prev_batch, which is the first timeline event's position minus one). History
// backfilled from other servers lies at negative positions (see roomserver.FillGaps), so P
// may be negative.

// historyToken encodes a pagination position.
func historyToken(pos int64) string { return "t" + strconv.FormatInt(pos, 10) }

// ParseHistoryToken decodes a pagination token ("t<pos>") or a /sync token into its room
// stream position. It returns an error for anything else.
func ParseHistoryToken(v string) (int64, error) {
	if rest, ok := strings.CutPrefix(v, "t"); ok {
		pos, err := strconv.ParseInt(rest, 10, 64)
		if err != nil {
			return 0, matrix.InvalidParam("invalid pagination token")
		}
		return pos, nil
	}
	t, err := ParseToken(v)
	if err != nil {
		return 0, matrix.InvalidParam("invalid pagination token")
	}
	return t.Rooms, nil
}

const (
	defaultHistoryLimit = 10
	maxHistoryLimit     = 1000
	// maxScan caps how many events one page may pass over while skipping those the filter
	// or history visibility hides; the page then ends early with an end token.
	maxScan = 5000
)

// page is a run of events read in one direction.
type page struct {
	events []*roomserver.Event
	client []matrix.ClientEvent
	next   int64 // the position after the last event passed over
	more   bool  // events may remain beyond next
}

// pageRequest is what paginate reads.
type pageRequest struct {
	userID, deviceID, roomID string
	from                     int64
	backward                 bool
	to                       *int64 // stop at this position (exclusive going back, inclusive going forward)
	bound                    int64  // the newest position the user may read
	limit                    int
	filter                   *matrix.RoomEventFilter
	now                      time.Time
}

// paginate reads up to p.limit events of a room that pass the filter and history
// visibility, in the direction asked, in batches from the database.
func (s *Service) paginate(ctx context.Context, p pageRequest) (page, error) {
	pg := page{next: p.from, more: true}
	if p.backward {
		pg.next = min(p.from, p.bound)
	}
	if !p.backward && p.from >= p.bound {
		pg.more = false
		return pg, nil
	}
	scanned := 0
	for len(pg.events) < p.limit {
		if scanned >= maxScan {
			return pg, nil
		}
		want := min(max(p.limit-len(pg.events), 10), maxHistoryLimit)
		var (
			batch []*roomserver.Event
			err   error
		)
		if p.backward {
			batch, err = s.rooms.RoomEventsBefore(ctx, p.roomID, pg.next+1, want)
		} else {
			batch, err = s.rooms.RoomEventsAfter(ctx, p.roomID, pg.next, want)
		}
		if err != nil {
			return page{}, err
		}
		scanned += len(batch)
		exhausted := len(batch) < want
		// Cut the batch where the range ends.
		cut := false
		for i, e := range batch {
			if (p.backward && p.to != nil && e.StreamPos <= *p.to) ||
				(!p.backward && (e.StreamPos > p.bound || (p.to != nil && e.StreamPos > *p.to))) {
				batch, exhausted, cut = batch[:i], true, true
				break
			}
		}
		// Going back, fetch from other servers the history missing before these events; it
		// lands below every position read so far, so the next batches reach it.
		if p.backward && !cut {
			filled, err := s.rooms.FillGaps(ctx, p.roomID, batch)
			if err != nil {
				return page{}, err
			}
			if filled {
				exhausted = false
			}
		}
		var candidates []*roomserver.Event
		for _, e := range batch {
			if p.filter.Matches(p.roomID, e.PDU.Type(), string(e.PDU.SenderID()), e.PDU.Content()) {
				candidates = append(candidates, e)
			}
		}
		vis, ms, err := s.rooms.VisibleEvents(ctx, p.userID, candidates)
		if err != nil {
			return page{}, err
		}
		visible := make(map[*roomserver.Event]string, len(vis))
		for i, e := range vis {
			visible[e] = ms[i]
		}
		full := false
		for _, e := range batch {
			if len(pg.events) == p.limit {
				full = true
				break
			}
			if p.backward {
				pg.next = e.StreamPos - 1
			} else {
				pg.next = e.StreamPos
			}
			if m, ok := visible[e]; ok {
				pg.events = append(pg.events, e)
				pg.client = append(pg.client, historyClientEvent(e, p.userID, p.deviceID, m, p.now))
			}
		}
		if exhausted && !full {
			pg.more = false
			break
		}
	}
	return pg, nil
}

// gapFiller is the roomserver's backfilling of history held only by other servers.
type gapFiller interface {
	FillGaps(ctx context.Context, roomID string, evs []*roomserver.Event) (bool, error)
}

type messagesResponse struct {
	Start string               `json:"start"`
	End   string               `json:"end,omitempty"`
	Chunk []matrix.ClientEvent `json:"chunk"`
	State []matrix.ClientEvent `json:"state,omitempty"`
}

// messagesRequest is a parsed GET /rooms/{roomId}/messages.
type messagesRequest struct {
	roomID   string
	from     *int64
	fromText string
	to       *int64
	backward bool
	limit    int
	filter   *matrix.RoomEventFilter
}

// parseLimit reads the limit query parameter: def when absent, capped at maxHistoryLimit.
func parseLimit(v string, def int) (int, error) {
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, matrix.InvalidParam("limit must be a non-negative integer")
	}
	return min(n, maxHistoryLimit), nil
}

// parseRoomEventFilter reads the filter query parameter, a JSON RoomEventFilter.
func parseRoomEventFilter(v string) (*matrix.RoomEventFilter, error) {
	if v == "" {
		return nil, nil
	}
	var f matrix.RoomEventFilter
	if err := httpx.UnmarshalObject([]byte(v), &f); err != nil {
		return nil, err
	}
	return &f, nil
}

func parseMessagesRequest(r *http.Request) (*messagesRequest, error) {
	q := r.URL.Query()
	req := &messagesRequest{roomID: httpx.Var(r, "roomID"), fromText: q.Get("from")}
	switch q.Get("dir") {
	case "b":
		req.backward = true
	case "f":
	case "":
		return nil, matrix.MissingParam("dir is required")
	default:
		return nil, matrix.InvalidParam("dir must be b or f")
	}
	if req.fromText != "" {
		pos, err := ParseHistoryToken(req.fromText)
		if err != nil {
			return nil, err
		}
		req.from = &pos
	}
	if v := q.Get("to"); v != "" {
		pos, err := ParseHistoryToken(v)
		if err != nil {
			return nil, err
		}
		req.to = &pos
	}
	var err error
	if req.limit, err = parseLimit(q.Get("limit"), defaultHistoryLimit); err != nil {
		return nil, err
	}
	if req.filter, err = parseRoomEventFilter(q.Get("filter")); err != nil {
		return nil, err
	}
	return req, nil
}

func (s *Service) messagesHandler(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	// A forgotten room's history is gone for its user, whatever else the request says.
	if forgotten, err := s.Forgotten(r.Context(), dev.UserID, httpx.Var(r, "roomID")); err != nil {
		return err
	} else if forgotten {
		return matrix.Forbidden("you have forgotten this room")
	}
	req, err := parseMessagesRequest(r)
	if err != nil {
		return err
	}
	resp, err := s.messages(r.Context(), dev, req)
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, resp)
}

// messages pages through a room's history for dev's user (GET /rooms/{roomId}/messages). It
// returns 403 M_FORBIDDEN unless the user is or was in the room or the room is world-readable.
func (s *Service) messages(ctx context.Context, dev *userapi.Device, req *messagesRequest) (*messagesResponse, error) {
	bound, err := s.readBound(ctx, req.roomID, dev.UserID)
	if err != nil {
		return nil, err
	}
	from := int64(0)
	switch {
	case req.from != nil:
		from = *req.from
	case req.backward:
		from = s.streams.Rooms.Pos()
	}
	now := time.Now()
	pg, err := s.paginate(ctx, pageRequest{
		userID: dev.UserID, deviceID: dev.DeviceID, roomID: req.roomID,
		from: from, backward: req.backward, to: req.to, bound: bound,
		limit: req.limit, filter: req.filter, now: now,
	})
	if err != nil {
		return nil, err
	}
	resp := &messagesResponse{Start: req.fromText, Chunk: pg.client}
	if resp.Start == "" {
		resp.Start = historyToken(from)
	}
	if resp.Chunk == nil {
		resp.Chunk = []matrix.ClientEvent{}
	}
	// As Synapse does, a page with events carries an end token even when it reached the
	// start of the room (the next page is then empty); Complement relies on it. A page that
	// stopped at `to` has none.
	if pg.more || (len(pg.client) > 0 && req.to == nil) {
		resp.End = historyToken(pg.next)
	}
	if req.filter != nil && req.filter.LazyLoadMembers && len(pg.events) > 0 {
		members, err := s.rooms.SenderMembers(ctx, pg.events)
		if err != nil {
			return nil, err
		}
		resp.State = stateClientEvents(members, now)
	}
	return resp, nil
}
