package roomserver

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/sqldb"
)

// This file holds the reads behind room history: history visibility, pagination helpers,
// state at a point (members, single keys) and timestamp lookups. Every query touches only
// the rows it needs: state is read by (type, state_key) or by type prefix from the snapshot
// chain, never whole.

// History visibility values (m.room.history_visibility).
const (
	VisibilityWorldReadable = "world_readable"
	VisibilityShared        = "shared"
	VisibilityInvited       = "invited"
	VisibilityJoined        = "joined"
)

// eventSnapshot is where an event sits: its room and the state snapshots around it.
type eventSnapshot struct {
	roomNID, before, after int64
}

// eventSnapshots returns the snapshots of the stored events among ids, by event ID.
func eventSnapshots(ctx context.Context, q querier, ids []string) (map[string]eventSnapshot, error) {
	out := make(map[string]eventSnapshot, len(ids))
	for len(ids) > 0 {
		n := min(len(ids), 500)
		args := make([]any, n)
		for i, id := range ids[:n] {
			args[i] = id
		}
		rows, err := q.Query(ctx, `SELECT event_id, room_nid, state_before, state_after FROM events
			WHERE event_id IN (`+inList(1, n)+`)`, args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var (
				id string
				es eventSnapshot
			)
			if err := rows.Scan(&id, &es.roomNID, &es.before, &es.after); err != nil {
				rows.Close()
				return nil, err
			}
			out[id] = es
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, err
		}
		ids = ids[n:]
	}
	return out, nil
}

// stateQuery names state entries to look up in a snapshot: keys of evType, or every key of
// evType when keys is nil.
type stateQuery struct {
	evType string
	keys   []string
}

// stateKey is a (type, state_key) pair.
type stateKey struct{ evType, key string }

// stateEntriesAt looks up the entries wanted by queries in each of snapshots, walking each
// snapshot's delta chain in one query. It returns snapshot → (type, key) → event_nid, leaving
// out removed and missing entries.
func stateEntriesAt(ctx context.Context, q querier, snapshots []int64, queries []stateQuery) (map[int64]map[stateKey]int64, error) {
	out := map[int64]map[stateKey]int64{}
	var starts []int64
	seenStart := map[int64]bool{}
	for _, s := range snapshots {
		if s != 0 && !seenStart[s] {
			seenStart[s] = true
			starts = append(starts, s)
		}
	}
	if len(starts) == 0 || len(queries) == 0 {
		return out, nil
	}
	args := make([]any, 0, len(starts)+8)
	for _, s := range starts {
		args = append(args, s)
	}
	var b strings.Builder
	b.WriteString(`WITH RECURSIVE chain (start, nid, parent, lvl) AS (
			SELECT snapshot_nid, snapshot_nid, parent_nid, 0 FROM state_snapshots WHERE snapshot_nid IN (` + inList(1, len(starts)) + `)
			UNION ALL
			SELECT chain.start, s.snapshot_nid, s.parent_nid, chain.lvl + 1 FROM state_snapshots s JOIN chain ON s.snapshot_nid = chain.parent
		)`)
	for i, sq := range queries {
		if i > 0 {
			b.WriteString(" UNION ALL")
		}
		args = append(args, sq.evType)
		fmt.Fprintf(&b, ` SELECT chain.start, chain.lvl, se.type, se.state_key, se.event_nid
			FROM chain JOIN state_entries se ON se.snapshot_nid = chain.nid AND se.type = $%d`, len(args))
		if sq.keys != nil {
			if len(sq.keys) == 0 {
				b.WriteString(` AND 1 = 0`)
			} else {
				fmt.Fprintf(&b, ` AND se.state_key IN (%s)`, inList(len(args)+1, len(sq.keys)))
				for _, k := range sq.keys {
					args = append(args, k)
				}
			}
		}
	}
	rows, err := q.Query(ctx, b.String(), args...)
	if err != nil {
		return nil, fmt.Errorf("looking up state entries: %w", err)
	}
	defer rows.Close()
	type found struct {
		lvl, nid int64
	}
	best := map[int64]map[stateKey]found{}
	for rows.Next() {
		var (
			start, lvl, nid int64
			k               stateKey
		)
		if err := rows.Scan(&start, &lvl, &k.evType, &k.key, &nid); err != nil {
			return nil, fmt.Errorf("looking up state entries: %w", err)
		}
		m := best[start]
		if m == nil {
			m = map[stateKey]found{}
			best[start] = m
		}
		if f, ok := m[k]; !ok || lvl < f.lvl {
			m[k] = found{lvl, nid}
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("looking up state entries: %w", err)
	}
	for start, m := range best {
		o := map[stateKey]int64{}
		for k, f := range m {
			if f.nid != 0 {
				o[k] = f.nid
			}
		}
		out[start] = o
	}
	return out, nil
}

// eventsByNID loads the events with the given event_nids (with RedactedBecause), by NID.
func eventsByNID(ctx context.Context, q querier, nids []int64) (map[int64]*Event, error) {
	out := make(map[int64]*Event, len(nids))
	seen := map[int64]bool{}
	var uniq []any
	for _, n := range nids {
		if n != 0 && !seen[n] {
			seen[n] = true
			uniq = append(uniq, n)
		}
	}
	for len(uniq) > 0 {
		n := min(len(uniq), 500)
		// queryEvents keeps row order, so the NIDs come back in a parallel query.
		rows, err := q.Query(ctx, `SELECT event_nid, event_id FROM events WHERE event_nid IN (`+inList(1, n)+`)`, uniq[:n]...)
		if err != nil {
			return nil, err
		}
		idToNID := map[string]int64{}
		for rows.Next() {
			var (
				nid int64
				id  string
			)
			if err := rows.Scan(&nid, &id); err != nil {
				rows.Close()
				return nil, err
			}
			idToNID[id] = nid
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, err
		}
		evs, err := queryEvents(ctx, q, `SELECT `+eventCols+eventFrom+` WHERE e.event_nid IN (`+inList(1, n)+`)`, uniq[:n]...)
		if err != nil {
			return nil, err
		}
		for _, e := range evs {
			out[idToNID[e.PDU.EventID()]] = e
		}
		uniq = uniq[n:]
	}
	return out, nil
}

// VisibleEvents returns the events of evs that userID may see under the rules of history
// visibility, in their order, together with userID's membership at each returned event (the
// state after it, as MSC4115's unsigned.membership wants: "join", "invite", "leave", "ban",
// "knock"; "leave" when the user has none). Visibility is judged against the state before
// each event; a m.room.history_visibility event, or userID's own m.room.member event, is
// visible if the state before or after it allows it. It reads the two state entries that
// matter once per distinct snapshot, not once per event, and the user's membership history
// only when a shared room needs it.
func (s *Service) VisibleEvents(ctx context.Context, userID string, evs []*Event) ([]*Event, []string, error) {
	if len(evs) == 0 {
		return nil, nil, nil
	}
	joined, err := s.joinedThrough(ctx, userID, evs)
	if err != nil {
		return nil, nil, err
	}
	if len(joined) == 0 {
		return s.visibleEvents(ctx, userID, evs)
	}
	// Judge the others by their state, then merge, keeping evs' order.
	var rest []*Event
	for _, e := range evs {
		if !joined[e] {
			rest = append(rest, e)
		}
	}
	restVis, restMs, err := s.visibleEvents(ctx, userID, rest)
	if err != nil {
		return nil, nil, err
	}
	restMember := make(map[*Event]string, len(restVis))
	for i, e := range restVis {
		restMember[e] = restMs[i]
	}
	out := make([]*Event, 0, len(evs))
	memberships := make([]string, 0, len(evs))
	for _, e := range evs {
		if joined[e] {
			out, memberships = append(out, e), append(memberships, spec.Join)
		} else if m, ok := restMember[e]; ok {
			out, memberships = append(out, e), append(memberships, m)
		}
	}
	return out, memberships, nil
}

// joinedThrough returns the events of evs that userID certainly sees because they were
// joined when the event was made: events this server made after the user's current
// membership, a join, was stored. This server builds its events on the room's forward
// extremities, so such an event descends from that join and the state before it has the
// user joined, whatever the history visibility. It is the fast path of VisibleEvents for
// the common case, new messages to a joined member, and costs one indexed lookup per
// room instead of reading two state entries per event through the snapshot chain. The
// user's own membership events are left to the full rules.
func (s *Service) joinedThrough(ctx context.Context, userID string, evs []*Event) (map[*Event]bool, error) {
	type since struct {
		joined bool
		pos    int64
	}
	rooms := map[string]since{}
	var out map[*Event]bool
	for _, e := range evs {
		if e.StreamPos == 0 || domainOf(string(e.PDU.SenderID())) != s.cfg.ServerName {
			continue
		}
		if e.PDU.Type() == spec.MRoomMember && e.PDU.StateKeyEquals(userID) {
			continue
		}
		roomID := e.PDU.RoomID().String()
		r, ok := rooms[roomID]
		if !ok {
			m, pos, err := s.currentMembershipPos(ctx, roomID, userID)
			if err != nil {
				return nil, err
			}
			r = since{joined: m == spec.Join, pos: pos}
			rooms[roomID] = r
		}
		if r.joined && r.pos < e.StreamPos {
			if out == nil {
				out = map[*Event]bool{}
			}
			out[e] = true
		}
	}
	return out, nil
}

// currentMembershipPos returns userID's current membership in roomID and the stream
// position of the event that set it ("" and 0 when none).
func (s *Service) currentMembershipPos(ctx context.Context, roomID, userID string) (string, int64, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if errors.Is(err, sqldb.ErrNotFound) {
		return "", 0, nil
	}
	if err != nil {
		return "", 0, err
	}
	var (
		m   string
		pos int64
	)
	err = s.db.QueryRow(ctx, `SELECT m.membership, e.stream_pos FROM memberships m JOIN events e ON e.event_nid = m.event_nid
		WHERE m.room_nid = $1 AND m.user_id = $2`, ri.nid, userID).Scan(&m, &pos)
	if errors.Is(err, sql.ErrNoRows) {
		return "", 0, nil
	}
	if err != nil {
		return "", 0, fmt.Errorf("loading membership of %s in %s: %w", userID, roomID, err)
	}
	return m, pos, nil
}

// visibleEvents is VisibleEvents by the full rules, for every event of evs.
func (s *Service) visibleEvents(ctx context.Context, userID string, evs []*Event) ([]*Event, []string, error) {
	if len(evs) == 0 {
		return nil, nil, nil
	}
	ids := make([]string, 0, len(evs))
	for _, e := range evs {
		ids = append(ids, e.PDU.EventID())
	}
	snaps, err := eventSnapshots(ctx, s.db, ids)
	if err != nil {
		return nil, nil, fmt.Errorf("loading event snapshots: %w", err)
	}
	befores := make([]int64, 0, len(snaps))
	for _, sn := range snaps {
		befores = append(befores, sn.before)
	}
	hvKey := stateKey{spec.MRoomHistoryVisibility, ""}
	memKey := stateKey{spec.MRoomMember, userID}
	entries, err := stateEntriesAt(ctx, s.db, befores, []stateQuery{
		{evType: hvKey.evType, keys: []string{""}},
		{evType: memKey.evType, keys: []string{userID}},
	})
	if err != nil {
		return nil, nil, err
	}
	var nids []int64
	for _, m := range entries {
		for _, nid := range m {
			nids = append(nids, nid)
		}
	}
	stateEvs, err := eventsByNID(ctx, s.db, nids)
	if err != nil {
		return nil, nil, fmt.Errorf("loading visibility state: %w", err)
	}
	// lastJoin[room] is the position of the user's newest join in the room, loaded lazily.
	lastJoin := map[int64]int64{}
	joinedAfter := func(roomNID, pos int64) (bool, error) {
		p, ok := lastJoin[roomNID]
		if !ok {
			if p, err = s.lastJoinPos(ctx, roomNID, userID); err != nil {
				return false, err
			}
			lastJoin[roomNID] = p
		}
		return p > pos, nil
	}

	out := make([]*Event, 0, len(evs))
	memberships := make([]string, 0, len(evs))
	for _, e := range evs {
		sn, stored := snaps[e.PDU.EventID()]
		hvBefore, memBefore := VisibilityShared, spec.Leave
		if stored {
			if ev := stateEvs[entries[sn.before][hvKey]]; ev != nil {
				hvBefore = historyVisibility(ev)
			}
			if ev := stateEvs[entries[sn.before][memKey]]; ev != nil {
				memBefore = membershipOf(ev)
			}
		}
		hvAfter, memAfter := hvBefore, memBefore
		own := false
		if sk := e.PDU.StateKey(); sk != nil {
			switch {
			case e.PDU.Type() == hvKey.evType && *sk == "":
				hvAfter = historyVisibility(e)
			case e.PDU.Type() == memKey.evType && *sk == userID:
				memAfter, own = membershipOf(e), true
			}
		}
		allowed := func(hv, m string) (bool, error) {
			switch {
			case hv == VisibilityWorldReadable, m == spec.Join:
				return true, nil
			case m == spec.Invite && hv == VisibilityInvited:
				return true, nil
			case hv == VisibilityShared && stored:
				return joinedAfter(sn.roomNID, e.StreamPos)
			}
			return false, nil
		}
		var ok bool
		switch {
		case own && (e.StreamPos == 0 || !stored || sn.before == 0):
			ok = true // our own membership outside the room's DAG, such as an invite over federation
		case own && memAfter == spec.Leave && (memBefore == spec.Invite || memBefore == spec.Knock):
			ok = true // a rejected or rescinded invite or knock
		default:
			for _, c := range [][2]string{{hvBefore, memBefore}, {hvAfter, memBefore}, {hvBefore, memAfter}, {hvAfter, memAfter}} {
				if ok, err = allowed(c[0], c[1]); err != nil {
					return nil, nil, err
				}
				if ok {
					break
				}
			}
		}
		if ok {
			out = append(out, e)
			memberships = append(memberships, memAfter)
		}
	}
	return out, memberships, nil
}

// CanSeeEvent reports whether userID may see ev under history visibility, and userID's
// membership after it (see VisibleEvents).
func (s *Service) CanSeeEvent(ctx context.Context, userID string, ev *Event) (membership string, ok bool, err error) {
	vis, ms, err := s.VisibleEvents(ctx, userID, []*Event{ev})
	if err != nil || len(vis) == 0 {
		return "", false, err
	}
	return ms[0], true, nil
}

// lastJoinPos returns the stream position of userID's newest join to the room, or -1.
func (s *Service) lastJoinPos(ctx context.Context, roomNID int64, userID string) (int64, error) {
	evs, err := queryEvents(ctx, s.db, `SELECT `+eventCols+eventFrom+`
		WHERE e.type = 'm.room.member' AND e.state_key = $1 AND e.room_nid = $2 AND e.stream_pos > 0
		ORDER BY e.stream_pos DESC`, userID, roomNID)
	if err != nil {
		return 0, fmt.Errorf("loading membership history of %s: %w", userID, err)
	}
	for _, e := range evs {
		if membershipOf(e) == spec.Join {
			return e.StreamPos, nil
		}
	}
	return -1, nil
}

// historyVisibility reads an m.room.history_visibility event; an unknown value is "shared".
func historyVisibility(e *Event) string {
	var c struct {
		V string `json:"history_visibility"`
	}
	_ = json.Unmarshal(e.PDU.Content(), &c)
	switch c.V {
	case VisibilityWorldReadable, VisibilityInvited, VisibilityJoined:
		return c.V
	}
	return VisibilityShared
}

// membershipOf reads an m.room.member event; anything unreadable is "leave".
func membershipOf(e *Event) string {
	m, err := e.PDU.Membership()
	if err != nil || m == "" {
		return spec.Leave
	}
	return m
}

// HistoryVisibility returns the current history visibility of roomID ("shared" when unset).
// It returns an error wrapping sqldb.ErrNotFound if the room is unknown.
func (s *Service) HistoryVisibility(ctx context.Context, roomID string) (string, error) {
	ev, err := s.CurrentStateEvent(ctx, roomID, spec.MRoomHistoryVisibility, "")
	if errors.Is(err, sqldb.ErrNotFound) {
		if _, rerr := s.roomInfo(ctx, roomID); rerr != nil {
			return "", rerr
		}
		return VisibilityShared, nil
	}
	if err != nil {
		return "", err
	}
	return historyVisibility(ev), nil
}

// MemberEvents returns the current m.room.member events of roomID whose membership is in
// memberships (all when empty) and not in notMemberships, in no particular order. It returns
// an error wrapping sqldb.ErrNotFound if the room is unknown.
func (s *Service) MemberEvents(ctx context.Context, roomID string, memberships, notMemberships []string) ([]*Event, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return nil, err
	}
	q := `SELECT ` + eventCols + ` FROM memberships m
		JOIN events e ON e.event_nid = m.event_nid JOIN rooms r ON r.room_nid = e.room_nid
		WHERE m.room_nid = $1`
	args := []any{ri.nid}
	if len(memberships) > 0 {
		q += ` AND m.membership IN (` + inList(len(args)+1, len(memberships)) + `)`
		for _, m := range memberships {
			args = append(args, m)
		}
	}
	if len(notMemberships) > 0 {
		q += ` AND m.membership NOT IN (` + inList(len(args)+1, len(notMemberships)) + `)`
		for _, m := range notMemberships {
			args = append(args, m)
		}
	}
	evs, err := queryEvents(ctx, s.db, q, args...)
	if err != nil {
		return nil, fmt.Errorf("loading members of %s: %w", roomID, err)
	}
	return evs, nil
}

// MemberEventsAfter returns the m.room.member events in the state after eventID. It returns
// an error wrapping sqldb.ErrNotFound if the event is unknown.
func (s *Service) MemberEventsAfter(ctx context.Context, eventID string) ([]*Event, error) {
	return s.stateAfterEvent(ctx, eventID, stateQuery{evType: spec.MRoomMember})
}

// StateEventAfter returns the state event (evType, stateKey) in the state after eventID. It
// returns an error wrapping sqldb.ErrNotFound (and a 404) if the event or the entry is unknown.
func (s *Service) StateEventAfter(ctx context.Context, eventID, evType, stateKey string) (*Event, error) {
	evs, err := s.stateAfterEvent(ctx, eventID, stateQuery{evType: evType, keys: []string{stateKey}})
	if err != nil {
		return nil, err
	}
	if len(evs) == 0 {
		return nil, errUnknownEvent(evType + "/" + stateKey)
	}
	return evs[0], nil
}

func (s *Service) stateAfterEvent(ctx context.Context, eventID string, sq stateQuery) ([]*Event, error) {
	snaps, err := eventSnapshots(ctx, s.db, []string{eventID})
	if err != nil {
		return nil, fmt.Errorf("looking up state of %s: %w", eventID, err)
	}
	sn, ok := snaps[eventID]
	if !ok {
		return nil, errUnknownEvent(eventID)
	}
	entries, err := stateEntriesAt(ctx, s.db, []int64{sn.after}, []stateQuery{sq})
	if err != nil {
		return nil, err
	}
	nids := make([]int64, 0, len(entries[sn.after]))
	for _, nid := range entries[sn.after] {
		nids = append(nids, nid)
	}
	byNID, err := eventsByNID(ctx, s.db, nids)
	if err != nil {
		return nil, fmt.Errorf("loading state of %s: %w", eventID, err)
	}
	out := make([]*Event, 0, len(byNID))
	for _, e := range byNID {
		out = append(out, e)
	}
	return out, nil
}

// SenderMembers returns, for each distinct sender of evs, the sender's m.room.member event
// in the state after the sender's newest event among evs (for lazy-loading members): after
// any event but a room's create event its sender is a member. evs must be stored events of
// one room; senders without a member event are left out.
func (s *Service) SenderMembers(ctx context.Context, evs []*Event) ([]*Event, error) {
	if len(evs) == 0 {
		return nil, nil
	}
	newest := map[string]*Event{}
	for _, e := range evs {
		sender := string(e.PDU.SenderID())
		if cur, ok := newest[sender]; !ok || e.StreamPos > cur.StreamPos {
			newest[sender] = e
		}
	}
	ids := make([]string, 0, len(newest))
	for _, e := range newest {
		ids = append(ids, e.PDU.EventID())
	}
	snaps, err := eventSnapshots(ctx, s.db, ids)
	if err != nil {
		return nil, fmt.Errorf("loading event snapshots: %w", err)
	}
	// One lookup per snapshot, asking it for every sender: simpler than a query per pair
	// and still a single statement.
	afters := make([]int64, 0, len(snaps))
	senders := make([]string, 0, len(newest))
	for sender, e := range newest {
		senders = append(senders, sender)
		afters = append(afters, snaps[e.PDU.EventID()].after)
	}
	entries, err := stateEntriesAt(ctx, s.db, afters, []stateQuery{{evType: spec.MRoomMember, keys: senders}})
	if err != nil {
		return nil, err
	}
	want := map[string]int64{}
	var nids []int64
	for sender, e := range newest {
		nid := entries[snaps[e.PDU.EventID()].after][stateKey{spec.MRoomMember, sender}]
		if nid != 0 {
			want[sender] = nid
			nids = append(nids, nid)
		}
	}
	byNID, err := eventsByNID(ctx, s.db, nids)
	if err != nil {
		return nil, fmt.Errorf("loading sender members: %w", err)
	}
	out := make([]*Event, 0, len(want))
	for _, sender := range senders {
		if ev := byNID[want[sender]]; ev != nil {
			out = append(out, ev)
		}
	}
	return out, nil
}

// EventAtOrBefore returns the newest event of roomID with 0 < position <= pos. It returns an
// error wrapping sqldb.ErrNotFound (and a 404) if the room is unknown or has no such event.
func (s *Service) EventAtOrBefore(ctx context.Context, roomID string, pos int64) (*Event, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return nil, err
	}
	evs, err := queryEvents(ctx, s.db, `SELECT `+eventCols+eventFrom+`
		WHERE e.room_nid = $1 AND e.stream_pos > 0 AND e.stream_pos <= $2
		ORDER BY e.stream_pos DESC LIMIT 1`, ri.nid, pos)
	if err != nil {
		return nil, fmt.Errorf("loading event of %s at %d: %w", roomID, pos, err)
	}
	if len(evs) == 0 {
		return nil, errUnknownEvent(fmt.Sprintf("at position %d", pos))
	}
	return evs[0], nil
}

// EventNearTimestamp returns the event of roomID whose origin_server_ts is closest to ts
// without passing it: the newest at or before ts when backward, else the oldest at or after
// ts; equal timestamps are ordered by stream position. It returns an error wrapping
// sqldb.ErrNotFound (and a 404) if there is none.
//
// The timestamp is not a column, so this reads the room's events' timestamps in one
// streaming pass; a column with an index belongs in a roomserver migration.
func (s *Service) EventNearTimestamp(ctx context.Context, roomID string, ts int64, backward bool) (*Event, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return nil, err
	}
	rows, err := s.db.Query(ctx, `SELECT event_id, stream_pos, event_json FROM events
		WHERE room_nid = $1 AND stream_pos <> 0 ORDER BY stream_pos ASC`, ri.nid)
	if err != nil {
		return nil, fmt.Errorf("scanning timestamps of %s: %w", roomID, err)
	}
	var (
		bestID string
		bestTS int64
		found  bool
	)
	for rows.Next() {
		var (
			id  string
			pos int64
			js  []byte
		)
		if err := rows.Scan(&id, &pos, &js); err != nil {
			rows.Close()
			return nil, fmt.Errorf("scanning timestamps of %s: %w", roomID, err)
		}
		var t struct {
			TS int64 `json:"origin_server_ts"`
		}
		if json.Unmarshal(js, &t) != nil {
			continue
		}
		if backward {
			// Rows come oldest first, so >= keeps the later of equal timestamps.
			if t.TS <= ts && (!found || t.TS >= bestTS) {
				bestID, bestTS, found = id, t.TS, true
			}
		} else if t.TS >= ts && (!found || t.TS < bestTS) {
			bestID, bestTS, found = id, t.TS, true
		}
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return nil, fmt.Errorf("scanning timestamps of %s: %w", roomID, err)
	}
	if !found {
		return nil, errUnknownEvent(fmt.Sprintf("near timestamp %d", ts))
	}
	return s.Event(ctx, bestID)
}
