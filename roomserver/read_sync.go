package roomserver

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/sqldb"
)

// This file holds the reads /sync needs beyond the general ones in read.go: memberships as of
// a stream position, a light view of the event stream for waking syncs, keyed state lookups
// as of a position (lazy-loading members without loading a room's whole state), member counts
// and who shares a room with whom.

// UserRoom is a user's current membership of one room.
type UserRoom struct {
	RoomID     string
	Membership string
	StreamPos  int64 // position of the membership event (0 for an outlier)
}

// UserRooms returns every room where userID has a membership (any, leave and ban included),
// with that membership and the position of its event, ordered by room ID.
func (s *Service) UserRooms(ctx context.Context, userID string) ([]UserRoom, error) {
	rows, err := s.db.Query(ctx, `SELECT r.room_id, m.membership, e.stream_pos FROM memberships m
		JOIN rooms r ON r.room_nid = m.room_nid JOIN events e ON e.event_nid = m.event_nid
		WHERE m.user_id = $1 ORDER BY r.room_id`, userID)
	if err != nil {
		return nil, fmt.Errorf("listing rooms of %s: %w", userID, err)
	}
	defer rows.Close()
	var out []UserRoom
	for rows.Next() {
		var ur UserRoom
		if err := rows.Scan(&ur.RoomID, &ur.Membership, &ur.StreamPos); err != nil {
			return nil, fmt.Errorf("listing rooms of %s: %w", userID, err)
		}
		out = append(out, ur)
	}
	return out, rows.Err()
}

// MembershipAt returns userID's membership of roomID as of stream position pos (the newest of
// the user's m.room.member events with position <= pos) and that event, or ("", nil, nil) if
// the user had none by then or the room is unknown.
func (s *Service) MembershipAt(ctx context.Context, roomID, userID string, pos int64) (string, *Event, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		if isNotFound(err) {
			return "", nil, nil
		}
		return "", nil, err
	}
	evs, err := queryEvents(ctx, s.db, `SELECT `+eventCols+eventFrom+`
		WHERE e.room_nid = $1 AND e.type = 'm.room.member' AND e.state_key = $2
		AND e.stream_pos > 0 AND e.stream_pos <= $3
		ORDER BY e.stream_pos DESC LIMIT 1`, ri.nid, userID, pos)
	if err != nil {
		return "", nil, fmt.Errorf("loading membership of %s in %s at %d: %w", userID, roomID, pos, err)
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

// StreamEntry is one event of the room-event stream, without its body: enough to tell whom it
// concerns.
type StreamEntry struct {
	StreamPos int64
	RoomID    string
	Type      string
	StateKey  *string
}

// StreamEntries returns the events with after < position <= upTo in stream order, at most
// limit of them.
func (s *Service) StreamEntries(ctx context.Context, after, upTo int64, limit int) ([]StreamEntry, error) {
	rows, err := s.db.Query(ctx, `SELECT e.stream_pos, r.room_id, e.type, e.state_key FROM events e
		JOIN rooms r ON r.room_nid = e.room_nid
		WHERE e.stream_pos > $1 AND e.stream_pos <= $2 ORDER BY e.stream_pos LIMIT $3`, max(after, 0), upTo, limit)
	if err != nil {
		return nil, fmt.Errorf("reading the event stream: %w", err)
	}
	defer rows.Close()
	var out []StreamEntry
	for rows.Next() {
		var (
			e  StreamEntry
			sk sql.NullString
		)
		if err := rows.Scan(&e.StreamPos, &e.RoomID, &e.Type, &sk); err != nil {
			return nil, fmt.Errorf("reading the event stream: %w", err)
		}
		if sk.Valid {
			e.StateKey = &sk.String
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// StateAtPosFiltered returns the state of roomID as of stream position pos (see StateAtPos)
// without its m.room.member entries, plus the entries named by members (a lazy-loading sync
// fetches the few members it needs without loading every member).
func (s *Service) StateAtPosFiltered(ctx context.Context, roomID string, pos int64, members []string) ([]*Event, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return nil, err
	}
	var snapshot int64
	err = s.db.QueryRow(ctx, `SELECT state_after FROM events
		WHERE room_nid = $1 AND stream_pos > 0 AND stream_pos <= $2
		ORDER BY stream_pos DESC LIMIT 1`, ri.nid, pos).Scan(&snapshot)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && snapshot == 0) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("looking up state of %s at %d: %w", roomID, pos, err)
	}
	// Entries outside the wanted set are excluded in SQL; the nearest entry for each key
	// still wins because the excluded keys are excluded at every level of the chain.
	where := ` WHERE se.type <> 'm.room.member'`
	args := []any{snapshot}
	if len(members) > 0 {
		where += ` OR (se.type = 'm.room.member' AND se.state_key IN (` + inList(2, len(members)) + `))`
		for _, m := range members {
			args = append(args, m)
		}
	}
	rows, err := s.db.Query(ctx, `WITH RECURSIVE chain (nid, parent, lvl) AS (
			SELECT snapshot_nid, parent_nid, 0 FROM state_snapshots WHERE snapshot_nid = $1
			UNION ALL
			SELECT s.snapshot_nid, s.parent_nid, chain.lvl + 1 FROM state_snapshots s JOIN chain ON s.snapshot_nid = chain.parent
		)
		SELECT se.type, se.state_key, se.event_nid, COALESCE(e.event_id, '')
		FROM chain JOIN state_entries se ON se.snapshot_nid = chain.nid
		LEFT JOIN events e ON e.event_nid = se.event_nid`+where+`
		ORDER BY chain.lvl`, args...)
	if err != nil {
		return nil, fmt.Errorf("reading state of %s at %d: %w", roomID, pos, err)
	}
	seen := map[gomatrixserverlib.StateKeyTuple]bool{}
	var ids []string
	for rows.Next() {
		var (
			t   gomatrixserverlib.StateKeyTuple
			nid int64
			id  string
		)
		if err := rows.Scan(&t.EventType, &t.StateKey, &nid, &id); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading state of %s at %d: %w", roomID, pos, err)
		}
		if seen[t] {
			continue
		}
		seen[t] = true
		if nid != 0 && id != "" {
			ids = append(ids, id)
		}
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return nil, fmt.Errorf("reading state of %s at %d: %w", roomID, pos, err)
	}
	evs, err := eventsByID(ctx, s.db, ids)
	if err != nil {
		return nil, fmt.Errorf("loading state of %s at %d: %w", roomID, pos, err)
	}
	return evs, nil
}

// MemberSummary is what a sync's room summary needs.
type MemberSummary struct {
	Joined, Invited int
	Heroes          []string // up to 5 joined or invited members other than the asking user
}

// Summary returns the current joined and invited member counts of roomID and up to five
// heroes other than userID (left members when nobody else is joined or invited).
func (s *Service) Summary(ctx context.Context, roomID, userID string) (MemberSummary, error) {
	var out MemberSummary
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return out, err
	}
	rows, err := s.db.Query(ctx, `SELECT membership, COUNT(*) FROM memberships WHERE room_nid = $1 GROUP BY membership`, ri.nid)
	if err != nil {
		return out, fmt.Errorf("counting members of %s: %w", roomID, err)
	}
	for rows.Next() {
		var (
			m string
			n int
		)
		if err := rows.Scan(&m, &n); err != nil {
			rows.Close()
			return out, fmt.Errorf("counting members of %s: %w", roomID, err)
		}
		switch m {
		case spec.Join:
			out.Joined = n
		case spec.Invite:
			out.Invited = n
		}
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return out, fmt.Errorf("counting members of %s: %w", roomID, err)
	}
	out.Heroes, err = queryStrings(ctx, s.db, `SELECT user_id FROM memberships
		WHERE room_nid = $1 AND user_id <> $2 AND membership IN ('join', 'invite') ORDER BY user_id LIMIT 5`, ri.nid, userID)
	if err != nil {
		return out, fmt.Errorf("listing heroes of %s: %w", roomID, err)
	}
	if len(out.Heroes) == 0 {
		out.Heroes, err = queryStrings(ctx, s.db, `SELECT user_id FROM memberships
			WHERE room_nid = $1 AND user_id <> $2 ORDER BY user_id LIMIT 5`, ri.nid, userID)
		if err != nil {
			return out, fmt.Errorf("listing heroes of %s: %w", roomID, err)
		}
	}
	return out, nil
}

// SharingUsers returns those of candidates that are joined to at least one room userID is
// joined to (userID itself included if it is among candidates and joined anywhere).
func (s *Service) SharingUsers(ctx context.Context, userID string, candidates []string) ([]string, error) {
	var out []string
	for len(candidates) > 0 {
		n := min(len(candidates), 400)
		args := make([]any, 0, n+1)
		args = append(args, userID)
		for _, c := range candidates[:n] {
			args = append(args, c)
		}
		ids, err := queryStrings(ctx, s.db, `SELECT DISTINCT o.user_id FROM memberships m
			JOIN memberships o ON o.room_nid = m.room_nid
			WHERE m.user_id = $1 AND m.membership = 'join' AND o.membership = 'join'
			AND o.user_id IN (`+inList(2, n)+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("finding users sharing a room with %s: %w", userID, err)
		}
		out = append(out, ids...)
		candidates = candidates[n:]
	}
	return out, nil
}

// SharedRoomMembers returns every user joined to a room userID is joined to, itself included.
func (s *Service) SharedRoomMembers(ctx context.Context, userID string) ([]string, error) {
	ids, err := queryStrings(ctx, s.db, `SELECT DISTINCT o.user_id FROM memberships m
		JOIN memberships o ON o.room_nid = m.room_nid
		WHERE m.user_id = $1 AND m.membership = 'join' AND o.membership = 'join'`, userID)
	if err != nil {
		return nil, fmt.Errorf("listing users sharing a room with %s: %w", userID, err)
	}
	return ids, nil
}

// MemberChange is a membership event of some room in a range of the stream.
type MemberChange struct {
	StreamPos  int64
	RoomID     string
	UserID     string
	Membership string
}

// MemberChanges returns the m.room.member events of the given rooms with after < position <=
// upTo, oldest first.
func (s *Service) MemberChanges(ctx context.Context, roomIDs []string, after, upTo int64) ([]MemberChange, error) {
	var out []MemberChange
	for len(roomIDs) > 0 {
		n := min(len(roomIDs), 400)
		args := []any{max(after, 0), upTo}
		for _, id := range roomIDs[:n] {
			args = append(args, id)
		}
		rows, err := s.db.Query(ctx, `SELECT e.stream_pos, r.room_id, e.state_key, e.event_json FROM events e
			JOIN rooms r ON r.room_nid = e.room_nid
			WHERE e.type = 'm.room.member' AND e.stream_pos > $1 AND e.stream_pos <= $2
			AND r.room_id IN (`+inList(3, n)+`) ORDER BY e.stream_pos`, args...)
		if err != nil {
			return nil, fmt.Errorf("loading membership changes: %w", err)
		}
		for rows.Next() {
			var (
				c  MemberChange
				js []byte
			)
			if err := rows.Scan(&c.StreamPos, &c.RoomID, &c.UserID, &js); err != nil {
				rows.Close()
				return nil, fmt.Errorf("loading membership changes: %w", err)
			}
			var ev struct {
				Content struct {
					Membership string `json:"membership"`
				} `json:"content"`
			}
			_ = json.Unmarshal(js, &ev)
			c.Membership = ev.Content.Membership
			out = append(out, c)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("loading membership changes: %w", err)
		}
		roomIDs = roomIDs[n:]
	}
	return out, nil
}

func isNotFound(err error) bool { return errors.Is(err, sqldb.ErrNotFound) }
