package roomserver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
)

// errNeedsStateResolution is returned by inputEvent for an event that does not extend the
// room's forward extremities exactly: persisting it needs state resolution, which is not
// implemented yet.
var errNeedsStateResolution = errors.New("event forks the room DAG: state resolution is not implemented yet")

// errMissingPrevEvents is returned by inputEvent when some prev_events are unknown.
var errMissingPrevEvents = errors.New("prev_events are missing")

// inputEvent persists ev, an already-built PDU whose signatures the caller has checked (a
// remote event, later from federation), in an existing room. It authorises ev against its own
// auth_events (rejecting duplicates, wrong types and events from other rooms) and against the
// room's current state, then persists it through the same path as local events and returns
// its stream position. An event already stored returns its position. Errors: 403 M_FORBIDDEN
// when the auth rules reject ev, errMissingPrevEvents, errNeedsStateResolution.
func (s *Service) inputEvent(ctx context.Context, ev gomatrixserverlib.PDU) (pos int64, err error) {
	defer func() {
		if rec := recover(); rec != nil {
			pos, err = 0, fmt.Errorf("inputting event: gomatrixserverlib panicked: %v", rec)
		}
	}()
	eventID := ev.EventID()
	if ev.Type() == spec.MRoomCreate {
		return 0, errors.New("inputting create events is not implemented yet")
	}
	roomID := ev.RoomID().String()
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return 0, err
	}
	if ri.version.Version() != ev.Version() {
		return 0, fmt.Errorf("event %s has room version %s, room %s has %s", eventID, ev.Version(), roomID, ri.version.Version())
	}
	if len(ev.JSON()) > maxEventSize {
		return 0, matrix.Errorf(413, matrix.CodeTooLarge, "event %s is too large", eventID)
	}

	unlock := s.locks.lock(roomID)
	defer unlock()
	var existing bool
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		err := tx.QueryRow(ctx, `SELECT stream_pos FROM events WHERE event_id = $1`, eventID).Scan(&pos)
		if err == nil {
			existing = true
			return nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("looking up event %s: %w", eventID, err)
		}
		room, err := s.lockRoomRow(ctx, tx, roomID, ri)
		if err != nil {
			return err
		}

		// Auth against the event's own auth_events.
		authIDs := ev.AuthEventIDs()
		authEvs, err := eventsByID(ctx, tx, authIDs)
		if err != nil {
			return fmt.Errorf("loading auth events of %s: %w", eventID, err)
		}
		if len(authEvs) != len(slices.Compact(slices.Sorted(slices.Values(authIDs)))) {
			return matrix.Forbidden("event %s has unknown or duplicate auth events", eventID)
		}
		seen := map[gomatrixserverlib.StateKeyTuple]bool{}
		var own []gomatrixserverlib.PDU
		for _, a := range authEvs {
			p := a.PDU
			if p.StateKey() == nil || p.RoomID().String() != roomID {
				return matrix.Forbidden("event %s has an auth event %s that is not state of the room", eventID, p.EventID())
			}
			switch p.Type() {
			case spec.MRoomCreate, spec.MRoomPowerLevels, spec.MRoomJoinRules, spec.MRoomMember, spec.MRoomThirdPartyInvite:
			default:
				return matrix.Forbidden("event %s has an auth event of type %s", eventID, p.Type())
			}
			t := gomatrixserverlib.StateKeyTuple{EventType: p.Type(), StateKey: *p.StateKey()}
			if seen[t] {
				return matrix.Forbidden("event %s has two auth events for %s/%s", eventID, t.EventType, t.StateKey)
			}
			seen[t] = true
			own = append(own, p)
		}
		if err := allowed(ev, own); err != nil {
			return err
		}

		// Only events that extend the current forward extremities are accepted for now.
		prev := slices.Sorted(slices.Values(ev.PrevEventIDs()))
		ext := slices.Sorted(slices.Values(room.extremities))
		if !slices.Equal(prev, ext) {
			known, err := eventsByID(ctx, tx, prev)
			if err != nil {
				return fmt.Errorf("loading prev events of %s: %w", eventID, err)
			}
			if len(known) != len(prev) {
				return errMissingPrevEvents
			}
			return errNeedsStateResolution
		}

		// Auth against the current state (the state before ev, since ev extends the tip).
		needed := gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{ev})
		cur, err := currentStateEvents(ctx, tx, room.nid, needed.Tuples())
		if err != nil {
			return fmt.Errorf("loading current auth state: %w", err)
		}
		state := make([]gomatrixserverlib.PDU, 0, len(cur))
		for _, e := range cur {
			state = append(state, e.PDU)
		}
		if err := allowed(ev, state); err != nil {
			return err
		}

		if pos, err = s.persist(ctx, tx, room, ev, nil); err != nil {
			return err
		}
		// A redaction of ev may have arrived before ev.
		pending, err := queryStrings(ctx, tx, `SELECT d.redaction_id FROM redactions d WHERE d.redacts_id = $1 AND d.applied = FALSE`, eventID)
		if err != nil {
			return fmt.Errorf("looking up redactions of %s: %w", eventID, err)
		}
		for _, id := range pending {
			var sender string
			if err := tx.QueryRow(ctx, `SELECT sender FROM events WHERE event_id = $1`, id).Scan(&sender); err != nil {
				return fmt.Errorf("loading redaction %s: %w", id, err)
			}
			if err := s.applyRedaction(ctx, tx, room, id, sender, eventID); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		if matrix.AsError(err) != nil || errors.Is(err, errNeedsStateResolution) || errors.Is(err, errMissingPrevEvents) {
			return 0, err
		}
		return 0, fmt.Errorf("inputting event %s: %w", eventID, err)
	}
	if !existing {
		s.advance(pos)
	}
	return pos, nil
}

// allowed runs the auth rules on ev against authEvents, as a 403 when they reject it.
func allowed(ev gomatrixserverlib.PDU, authEvents []gomatrixserverlib.PDU) error {
	provider, err := gomatrixserverlib.NewAuthEvents(authEvents)
	if err != nil {
		return fmt.Errorf("collecting auth events: %w", err)
	}
	return allowedBy(ev, provider)
}

// allowedBy runs the auth rules on ev against provider, as a 403 when they reject it.
func allowedBy(ev gomatrixserverlib.PDU, provider gomatrixserverlib.AuthEventProvider) error {
	if err := gomatrixserverlib.Allowed(ev, provider, userIDForSender); err != nil {
		var na *gomatrixserverlib.NotAllowed
		if errors.As(err, &na) {
			return matrix.Forbidden("%s", na.Message)
		}
		return matrix.Forbidden("%v", err)
	}
	return nil
}
