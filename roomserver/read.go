package roomserver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
)

// Event returns the stored event eventID (redacted if it was redacted). It returns an error
// wrapping sqldb.ErrNotFound (and a 404 M_NOT_FOUND) if the event is unknown.
func (s *Service) Event(ctx context.Context, eventID string) (*Event, error) {
	evs, err := queryEvents(ctx, s.db, `SELECT `+eventCols+eventFrom+` WHERE e.event_id = $1`, eventID)
	if err != nil {
		return nil, fmt.Errorf("loading event %s: %w", eventID, err)
	}
	if len(evs) == 0 {
		return nil, errUnknownEvent(eventID)
	}
	return evs[0], nil
}

// RoomVersion returns the version of roomID, or an error wrapping sqldb.ErrNotFound (and a
// 404 M_NOT_FOUND) if the room is unknown.
func (s *Service) RoomVersion(ctx context.Context, roomID string) (gomatrixserverlib.RoomVersion, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return "", err
	}
	return ri.version.Version(), nil
}

// CurrentState returns the room's current state events, in no particular order. It returns
// an error wrapping sqldb.ErrNotFound if the room is unknown.
func (s *Service) CurrentState(ctx context.Context, roomID string) ([]*Event, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return nil, err
	}
	evs, err := queryEvents(ctx, s.db, `SELECT `+eventCols+` FROM current_state c
		JOIN events e ON e.event_nid = c.event_nid JOIN rooms r ON r.room_nid = e.room_nid
		WHERE c.room_nid = $1`, ri.nid)
	if err != nil {
		return nil, fmt.Errorf("loading current state of %s: %w", roomID, err)
	}
	return evs, nil
}

// CurrentStateEvent returns the current state event (evType, stateKey) of roomID. It returns
// an error wrapping sqldb.ErrNotFound if the room or the state entry is unknown.
func (s *Service) CurrentStateEvent(ctx context.Context, roomID, evType, stateKey string) (*Event, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return nil, err
	}
	evs, err := currentStateEvents(ctx, s.db, ri.nid, []gomatrixserverlib.StateKeyTuple{{EventType: evType, StateKey: stateKey}})
	if err != nil {
		return nil, fmt.Errorf("loading %s/%s of %s: %w", evType, stateKey, roomID, err)
	}
	if len(evs) == 0 {
		return nil, fmt.Errorf("%w: %w", matrix.NotFound("no %s state with key %q in %s", evType, stateKey, roomID), sqldb.ErrNotFound)
	}
	return evs[0], nil
}

// Membership returns userID's current membership of roomID and its m.room.member event, or
// ("", nil, nil) if the user has none or the room is unknown.
func (s *Service) Membership(ctx context.Context, roomID, userID string) (string, *Event, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if errors.Is(err, sqldb.ErrNotFound) {
		return "", nil, nil
	}
	if err != nil {
		return "", nil, err
	}
	evs, err := queryEvents(ctx, s.db, `SELECT `+eventCols+` FROM memberships m
		JOIN events e ON e.event_nid = m.event_nid JOIN rooms r ON r.room_nid = e.room_nid
		WHERE m.room_nid = $1 AND m.user_id = $2`, ri.nid, userID)
	if err != nil {
		return "", nil, fmt.Errorf("loading membership of %s in %s: %w", userID, roomID, err)
	}
	if len(evs) == 0 {
		return "", nil, nil
	}
	m, err := evs[0].PDU.Membership()
	if err != nil {
		return "", nil, fmt.Errorf("reading membership of %s in %s: %w", userID, roomID, err)
	}
	return m, evs[0], nil
}

// RoomsForUser returns the IDs of the rooms where userID's current membership is one of
// memberships (any membership when none is given), sorted.
func (s *Service) RoomsForUser(ctx context.Context, userID string, memberships ...string) ([]string, error) {
	q := `SELECT r.room_id FROM memberships m JOIN rooms r ON r.room_nid = m.room_nid WHERE m.user_id = $1`
	args := []any{userID}
	if len(memberships) > 0 {
		q += ` AND m.membership IN (` + inList(2, len(memberships)) + `)`
		for _, m := range memberships {
			args = append(args, m)
		}
	}
	ids, err := queryStrings(ctx, s.db, q+` ORDER BY r.room_id`, args...)
	if err != nil {
		return nil, fmt.Errorf("listing rooms of %s: %w", userID, err)
	}
	return ids, nil
}

// StateAfter returns the full room state after eventID (including eventID if it is a state
// event). It returns an error wrapping sqldb.ErrNotFound if the event is unknown.
func (s *Service) StateAfter(ctx context.Context, eventID string) ([]*Event, error) {
	return s.stateAt(ctx, eventID, "state_after")
}

// StateBefore returns the full room state before eventID. It returns an error wrapping
// sqldb.ErrNotFound if the event is unknown.
func (s *Service) StateBefore(ctx context.Context, eventID string) ([]*Event, error) {
	return s.stateAt(ctx, eventID, "state_before")
}

func (s *Service) stateAt(ctx context.Context, eventID, column string) ([]*Event, error) {
	var snapshot int64
	err := s.db.QueryRow(ctx, `SELECT `+column+` FROM events WHERE event_id = $1`, eventID).Scan(&snapshot)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errUnknownEvent(eventID)
	}
	if err != nil {
		return nil, fmt.Errorf("looking up state of %s: %w", eventID, err)
	}
	evs, err := snapshotEvents(ctx, s.db, snapshot)
	if err != nil {
		return nil, fmt.Errorf("loading state of %s: %w", eventID, err)
	}
	return evs, nil
}

// MaxStreamPos returns the newest committed position of the room-event stream (0 when empty).
func (s *Service) MaxStreamPos(ctx context.Context) (int64, error) {
	var pos int64
	if err := s.db.QueryRow(ctx, `SELECT COALESCE(MAX(stream_pos), 0) FROM events`).Scan(&pos); err != nil {
		return 0, fmt.Errorf("reading newest stream position: %w", err)
	}
	return pos, nil
}

// RoomEvents returns the newest limit events of roomID with after < position <= upTo, oldest
// first; limited reports that older events in the range were left out. It returns an error
// wrapping sqldb.ErrNotFound if the room is unknown.
func (s *Service) RoomEvents(ctx context.Context, roomID string, after, upTo int64, limit int) (evs []*Event, limited bool, err error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return nil, false, err
	}
	limit = max(limit, 0)
	evs, err = queryEvents(ctx, s.db, `SELECT `+eventCols+eventFrom+`
		WHERE e.room_nid = $1 AND e.stream_pos > $2 AND e.stream_pos <= $3
		ORDER BY e.stream_pos DESC LIMIT $4`, ri.nid, max(after, 0), upTo, limit+1)
	if err != nil {
		return nil, false, fmt.Errorf("loading events of %s: %w", roomID, err)
	}
	if len(evs) > limit {
		evs, limited = evs[:limit], true
	}
	slices.Reverse(evs)
	return evs, limited, nil
}

// RoomEventsBefore returns up to limit events of roomID with position < before, newest first
// (for paginating backwards). It returns an error wrapping sqldb.ErrNotFound if the room is
// unknown.
func (s *Service) RoomEventsBefore(ctx context.Context, roomID string, before int64, limit int) ([]*Event, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return nil, err
	}
	evs, err := queryEvents(ctx, s.db, `SELECT `+eventCols+eventFrom+`
		WHERE e.room_nid = $1 AND e.stream_pos <> 0 AND e.stream_pos < $2
		ORDER BY e.stream_pos DESC LIMIT $3`, ri.nid, before, max(limit, 0))
	if err != nil {
		return nil, fmt.Errorf("loading events of %s: %w", roomID, err)
	}
	return evs, nil
}

// RoomEventsAfter returns up to limit events of roomID with position > after, oldest first.
// It returns an error wrapping sqldb.ErrNotFound if the room is unknown.
func (s *Service) RoomEventsAfter(ctx context.Context, roomID string, after int64, limit int) ([]*Event, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return nil, err
	}
	evs, err := queryEvents(ctx, s.db, `SELECT `+eventCols+eventFrom+`
		WHERE e.room_nid = $1 AND e.stream_pos > $2 AND e.stream_pos <> 0
		ORDER BY e.stream_pos ASC LIMIT $3`, ri.nid, after, max(limit, 0))
	if err != nil {
		return nil, fmt.Errorf("loading events of %s: %w", roomID, err)
	}
	return evs, nil
}

// DepthCursor is a position in a room's topological order: an event's depth and stream
// position.
type DepthCursor struct {
	Depth, StreamPos int64
}

// RoomEventsByDepth returns up to limit events of roomID with 0 < position <= upTo that come
// before the cursor in topological order (depth, then stream position; all of them when
// before is nil), newest first; more reports that older ones remain. It returns an error
// wrapping sqldb.ErrNotFound if the room is unknown.
func (s *Service) RoomEventsByDepth(ctx context.Context, roomID string, upTo int64, before *DepthCursor, limit int) (evs []*Event, more bool, err error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return nil, false, err
	}
	limit = max(limit, 0)
	cur := DepthCursor{Depth: math.MaxInt64, StreamPos: math.MaxInt64}
	if before != nil {
		cur = *before
	}
	evs, err = queryEvents(ctx, s.db, `SELECT `+eventCols+eventFrom+`
		WHERE e.room_nid = $1 AND e.stream_pos > 0 AND e.stream_pos <= $2
		AND (e.depth < $3 OR (e.depth = $3 AND e.stream_pos < $4))
		ORDER BY e.depth DESC, e.stream_pos DESC LIMIT $5`, ri.nid, upTo, cur.Depth, cur.StreamPos, limit+1)
	if err != nil {
		return nil, false, fmt.Errorf("loading events of %s by depth: %w", roomID, err)
	}
	if len(evs) > limit {
		evs, more = evs[:limit], true
	}
	return evs, more, nil
}

// StateEventIDsBetween returns the IDs of roomID's state events with after < position <= upTo.
func (s *Service) StateEventIDsBetween(ctx context.Context, roomID string, after, upTo int64) ([]string, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return nil, err
	}
	ids, err := queryStrings(ctx, s.db, `SELECT event_id FROM events
		WHERE room_nid = $1 AND stream_pos > $2 AND stream_pos <= $3 AND state_key IS NOT NULL`, ri.nid, max(after, 0), upTo)
	if err != nil {
		return nil, fmt.Errorf("loading state events of %s: %w", roomID, err)
	}
	return ids, nil
}

// RoomsWithEvents returns the IDs of the rooms that got events with after < position <= upTo,
// sorted.
func (s *Service) RoomsWithEvents(ctx context.Context, after, upTo int64) ([]string, error) {
	ids, err := queryStrings(ctx, s.db, `SELECT r.room_id FROM rooms r WHERE r.room_nid IN (
			SELECT DISTINCT e.room_nid FROM events e WHERE e.stream_pos > $1 AND e.stream_pos <= $2
		) ORDER BY r.room_id`, max(after, 0), upTo)
	if err != nil {
		return nil, fmt.Errorf("listing rooms with events: %w", err)
	}
	return ids, nil
}

// MembershipEvents returns the m.room.member events whose state_key is userID with
// after < position <= upTo, oldest first.
func (s *Service) MembershipEvents(ctx context.Context, userID string, after, upTo int64) ([]*Event, error) {
	evs, err := queryEvents(ctx, s.db, `SELECT `+eventCols+eventFrom+`
		WHERE e.type = 'm.room.member' AND e.state_key = $1 AND e.stream_pos > $2 AND e.stream_pos <= $3
		ORDER BY e.stream_pos ASC`, userID, max(after, 0), upTo)
	if err != nil {
		return nil, fmt.Errorf("loading membership events of %s: %w", userID, err)
	}
	return evs, nil
}

// StateAtPos returns the state of roomID as of stream position pos: the state after the last
// event of the room with position <= pos (empty if the room had no events by then). It
// returns an error wrapping sqldb.ErrNotFound if the room is unknown.
func (s *Service) StateAtPos(ctx context.Context, roomID string, pos int64) ([]*Event, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return nil, err
	}
	var snapshot int64
	err = s.db.QueryRow(ctx, `SELECT state_after FROM events
		WHERE room_nid = $1 AND stream_pos > 0 AND stream_pos <= $2
		ORDER BY stream_pos DESC LIMIT 1`, ri.nid, pos).Scan(&snapshot)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("looking up state of %s at %d: %w", roomID, pos, err)
	}
	evs, err := snapshotEvents(ctx, s.db, snapshot)
	if err != nil {
		return nil, fmt.Errorf("loading state of %s at %d: %w", roomID, pos, err)
	}
	return evs, nil
}

// JoinedMembers returns the user IDs currently joined to roomID, sorted.
func (s *Service) JoinedMembers(ctx context.Context, roomID string) ([]string, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return nil, err
	}
	ids, err := queryStrings(ctx, s.db, `SELECT user_id FROM memberships WHERE room_nid = $1 AND membership = $2
		ORDER BY user_id`, ri.nid, spec.Join)
	if err != nil {
		return nil, fmt.Errorf("listing members of %s: %w", roomID, err)
	}
	return ids, nil
}

func queryStrings(ctx context.Context, q querier, query string, args ...any) ([]string, error) {
	rows, err := q.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
