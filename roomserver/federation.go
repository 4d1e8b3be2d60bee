package roomserver

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
)

// This file holds the reads that remote servers need: the state and auth chain at an event,
// missing events and backfill (filtered by history visibility for the asking server), the
// servers in a room, and event templates for make_join, make_leave and make_knock.

// BuildTemplate fills in p's prev_events, auth_events and depth from the room's forward
// extremities and current state, as make_join/make_leave/make_knock answer, and returns the
// event built from it (signed by this server, never stored) with the state events that
// authorise it. Errors: 404 for an unknown room, 403 when the auth rules reject the event.
func (s *Service) BuildTemplate(ctx context.Context, p *gomatrixserverlib.ProtoEvent) (gomatrixserverlib.PDU, []gomatrixserverlib.PDU, error) {
	ri, err := s.roomInfo(ctx, p.RoomID)
	if err != nil {
		return nil, nil, err
	}
	var (
		ev   gomatrixserverlib.PDU
		auth []gomatrixserverlib.PDU
	)
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		room, err := s.lockRoomRow(ctx, tx, p.RoomID, ri)
		if err != nil {
			return err
		}
		if ev, err = s.build(ctx, tx, room, p); err != nil {
			return err
		}
		evs, err := currentStateEvents(ctx, tx, room.nid, gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{ev}).Tuples())
		if err != nil {
			return fmt.Errorf("loading auth state: %w", err)
		}
		for _, e := range evs {
			auth = append(auth, e.PDU)
		}
		return nil
	})
	if err != nil {
		if matrix.AsError(err) != nil {
			return nil, nil, err
		}
		return nil, nil, fmt.Errorf("building template: %w", err)
	}
	var refs struct {
		AuthEvents json.RawMessage `json:"auth_events"`
		PrevEvents json.RawMessage `json:"prev_events"`
	}
	if err := json.Unmarshal(ev.JSON(), &refs); err != nil {
		return nil, nil, fmt.Errorf("reading template: %w", err)
	}
	p.AuthEvents, p.PrevEvents = refs.AuthEvents, refs.PrevEvents
	return ev, auth, nil
}

// eventWithState is a stored event with the snapshot of the state before it.
type eventWithState struct {
	*Event
	stateBefore int64
	outlier     bool
}

// eventsWithState loads the stored events ids of roomNID (others are skipped).
func eventsWithState(ctx context.Context, q querier, roomNID int64, ids []string) (map[string]*eventWithState, error) {
	out := map[string]*eventWithState{}
	for start := 0; start < len(ids); start += 500 {
		chunk := ids[start:min(start+500, len(ids))]
		args := []any{roomNID}
		for _, id := range chunk {
			args = append(args, id)
		}
		rows, err := q.Query(ctx, `SELECT e.state_before, `+eventCols+eventFrom+`
			WHERE e.room_nid = $1 AND e.event_id IN (`+inList(2, len(chunk))+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("loading events: %w", err)
		}
		for rows.Next() {
			var before int64
			var r rawEvent
			if err := rows.Scan(append([]any{&before}, r.dest()...)...); err != nil {
				rows.Close()
				return nil, fmt.Errorf("loading events: %w", err)
			}
			ev, err := r.parse()
			if err != nil {
				rows.Close()
				return nil, err
			}
			out[r.id] = &eventWithState{Event: ev, stateBefore: before, outlier: r.pos == 0}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("loading events: %w", err)
		}
	}
	return out, nil
}

// StateAtEvent returns the state of roomID before eventID and the auth chain of that state,
// as /state and /state_ids answer. Errors: 404 when the room or the event (in the room's
// timeline) is unknown.
func (s *Service) StateAtEvent(ctx context.Context, roomID, eventID string) (state, authChain []gomatrixserverlib.PDU, err error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return nil, nil, err
	}
	evs, err := eventsWithState(ctx, s.db, ri.nid, []string{eventID})
	if err != nil {
		return nil, nil, err
	}
	e := evs[eventID]
	if e == nil || e.outlier {
		return nil, nil, errUnknownEvent(eventID)
	}
	st, err := snapshotState(ctx, s.db, e.stateBefore)
	if err != nil {
		return nil, nil, err
	}
	state = st.pdus()
	chain, err := authChainOf(ctx, s.db, state)
	if err != nil {
		return nil, nil, err
	}
	return state, chain, nil
}

// AuthChain returns the full auth chain of the stored events ids (not including them).
func (s *Service) AuthChain(ctx context.Context, ids []string) ([]gomatrixserverlib.PDU, error) {
	evs, err := eventsByID(ctx, s.db, ids)
	if err != nil {
		return nil, fmt.Errorf("loading events: %w", err)
	}
	pdus := make([]gomatrixserverlib.PDU, 0, len(evs))
	for _, e := range evs {
		pdus = append(pdus, e.PDU)
	}
	return authChainOf(ctx, s.db, pdus)
}

// EventAuth returns the auth chain of eventID in roomID, as /event_auth answers. Errors: 404
// for an unknown room or event.
func (s *Service) EventAuth(ctx context.Context, roomID, eventID string) ([]gomatrixserverlib.PDU, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return nil, err
	}
	evs, err := eventsWithState(ctx, s.db, ri.nid, []string{eventID})
	if err != nil {
		return nil, err
	}
	e := evs[eventID]
	if e == nil {
		return nil, errUnknownEvent(eventID)
	}
	return authChainOf(ctx, s.db, []gomatrixserverlib.PDU{e.PDU})
}

// MissingEvents walks prev_events back from latest, stopping at earliest, events with depth
// below minDepth and after limit events, and returns the events found (latest and earliest
// excluded), oldest first, as server may see them (see VisibleToServer).
func (s *Service) MissingEvents(ctx context.Context, roomID string, earliest, latest []string, limit int, minDepth int64, server string) ([]gomatrixserverlib.PDU, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return nil, err
	}
	stop := map[string]bool{}
	for _, id := range earliest {
		stop[id] = true
	}
	start, err := eventsWithState(ctx, s.db, ri.nid, latest)
	if err != nil {
		return nil, err
	}
	var frontier []string
	seen := map[string]bool{}
	for _, id := range latest {
		seen[id] = true
		if e := start[id]; e != nil {
			frontier = append(frontier, e.PDU.PrevEventIDs()...)
		}
	}
	var found []*eventWithState
	for len(frontier) > 0 && len(found) < limit {
		var next []string
		var want []string
		for _, id := range frontier {
			if seen[id] || stop[id] {
				continue
			}
			seen[id] = true
			want = append(want, id)
		}
		evs, err := eventsWithState(ctx, s.db, ri.nid, want)
		if err != nil {
			return nil, err
		}
		for _, id := range want {
			e := evs[id]
			if e == nil || e.outlier || e.PDU.Depth() < minDepth {
				continue
			}
			found = append(found, e)
			if len(found) >= limit {
				break
			}
			next = append(next, e.PDU.PrevEventIDs()...)
		}
		frontier = next
	}
	sort.SliceStable(found, func(i, j int) bool {
		if found[i].PDU.Depth() != found[j].PDU.Depth() {
			return found[i].PDU.Depth() < found[j].PDU.Depth()
		}
		return found[i].StreamPos < found[j].StreamPos
	})
	return s.visibleToServer(ctx, ri, found, server)
}

// Backfill walks prev_events back from the events from (included) and returns up to limit
// events, newest first, as server may see them.
func (s *Service) Backfill(ctx context.Context, roomID string, from []string, limit int, server string) ([]gomatrixserverlib.PDU, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	frontier := from
	var found []*eventWithState
	for len(frontier) > 0 && len(found) < limit {
		var want []string
		for _, id := range frontier {
			if !seen[id] {
				seen[id] = true
				want = append(want, id)
			}
		}
		evs, err := eventsWithState(ctx, s.db, ri.nid, want)
		if err != nil {
			return nil, err
		}
		var next []string
		for _, id := range want {
			e := evs[id]
			if e == nil || e.outlier {
				continue
			}
			found = append(found, e)
			if len(found) >= limit {
				break
			}
			next = append(next, e.PDU.PrevEventIDs()...)
		}
		frontier = next
	}
	sort.SliceStable(found, func(i, j int) bool {
		if found[i].PDU.Depth() != found[j].PDU.Depth() {
			return found[i].PDU.Depth() > found[j].PDU.Depth()
		}
		return found[i].StreamPos > found[j].StreamPos
	})
	return s.visibleToServer(ctx, ri, found, server)
}

// visibleToServer returns evs as server may see them, in order: in full where the history
// visibility before the event is world_readable or shared, or where server had a joined user
// (or an invited one, for invited); redacted otherwise (as Synapse's filter_events_for_server).
func (s *Service) visibleToServer(ctx context.Context, ri roomInfo, evs []*eventWithState, server string) ([]gomatrixserverlib.PDU, error) {
	type verdict struct{ full bool }
	cache := map[int64]verdict{}
	out := make([]gomatrixserverlib.PDU, 0, len(evs))
	for _, e := range evs {
		v, ok := cache[e.stateBefore]
		if !ok {
			st, err := snapshotState(ctx, s.db, e.stateBefore)
			if err != nil {
				return nil, err
			}
			v = verdict{full: serverMaySee(st, server)}
			cache[e.stateBefore] = v
		}
		if v.full || e.PDU.Redacted() {
			out = append(out, e.PDU)
			continue
		}
		red, err := ri.version.RedactEventJSON(e.PDU.JSON())
		if err != nil {
			return nil, fmt.Errorf("redacting %s: %w", e.PDU.EventID(), err)
		}
		p, err := ri.version.NewEventFromTrustedJSONWithEventID(e.PDU.EventID(), red, true)
		if err != nil {
			return nil, fmt.Errorf("parsing redacted %s: %w", e.PDU.EventID(), err)
		}
		out = append(out, p)
	}
	return out, nil
}

// serverMaySee applies the history visibility of st to server.
func serverMaySee(st stateSet, server string) bool {
	vis := gomatrixserverlib.HistoryVisibilityShared
	if e, ok := st[gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomHistoryVisibility}]; ok {
		if v, err := e.pdu.HistoryVisibility(); err == nil {
			vis = v
		}
	}
	switch vis {
	case gomatrixserverlib.HistoryVisibilityWorldReadable, gomatrixserverlib.HistoryVisibilityShared:
		return true
	}
	for t, e := range st {
		if t.EventType != spec.MRoomMember || domainOf(t.StateKey) != server {
			continue
		}
		m, _ := e.pdu.Membership()
		if m == spec.Join || (m == spec.Invite && vis == gomatrixserverlib.HistoryVisibilityInvited) {
			return true
		}
	}
	return false
}

// ServersInRoom returns the servers of the users currently joined to roomID, sorted.
func (s *Service) ServersInRoom(ctx context.Context, roomID string) ([]string, error) {
	members, err := s.JoinedMembers(ctx, roomID)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, u := range members {
		if d := domainOf(u); d != "" {
			out = append(out, d)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// ServerInRoom reports whether server has a user joined to roomID (false for an unknown room).
func (s *Service) ServerInRoom(ctx context.Context, roomID, server string) (bool, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if errors.Is(err, sqldb.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var one int
	err = s.db.QueryRow(ctx, `SELECT 1 FROM memberships WHERE room_nid = $1 AND membership = $2 AND user_id LIKE $3 ESCAPE '\' LIMIT 1`,
		ri.nid, spec.Join, "%:"+escapeLike(server)).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("checking whether %s is in %s: %w", server, roomID, err)
	}
	return true, nil
}
