package roomserver

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
)

// This file is the input of remote events: PDUs built and signed elsewhere (federation), whose
// signatures the caller has checked. They are authorised against their own auth_events
// (rejected on failure, and remembered as rejected), against the state before them (rejected)
// and against the room's current state (soft-failed), and persisted with the state before and
// after them. When an event does not extend the forward extremities exactly, the state before
// it is computed from its prev_events (state resolution when they disagree) and the room's new
// current state is resolved from its forward extremities.

// ErrRejected is wrapped by the errors of InputEvent and InputOutlier for an event that the
// auth rules reject; the event is remembered as rejected. The error is also a 403 M_FORBIDDEN.
var ErrRejected = errors.New("event rejected")

// MissingEventsError is returned by InputEvent and InputOutlier when events the input needs
// are not stored: auth_events (Auth) or prev_events without known state.
type MissingEventsError struct {
	Auth bool
	IDs  []string
}

// Error implements error.
func (e *MissingEventsError) Error() string {
	what := "prev_events"
	if e.Auth {
		what = "auth_events"
	}
	return fmt.Sprintf("%s missing: %s", what, strings.Join(e.IDs, ", "))
}

// InputOptions tells InputEvent the state around an event whose prev_events are not stored.
type InputOptions struct {
	// StateBefore, when set, is the state before the event (event IDs, all stored already,
	// e.g. as outliers): prev_events are not looked at. The room is created if it is unknown
	// and the state holds its create event (a remote join).
	StateBefore []string
	// PrevStates gives, for prev_events not stored with state, the state after each one
	// (event IDs, all stored already).
	PrevStates map[string][]string
}

// InputResult says what InputEvent did with an event.
type InputResult struct {
	Pos        int64 // stream position of the event; 0 when soft-failed
	SoftFailed bool  // stored, but it fails the auth rules against the current state
	Existing   bool  // it was already stored
}

func rejectf(format string, args ...any) error {
	return fmt.Errorf("%w: %w", ErrRejected, matrix.Forbidden(format, args...))
}

// InputEvent persists ev, a remote PDU whose signatures the caller has verified, in the room's
// timeline. It returns *MissingEventsError when auth_events or prev_events (without state in
// opts) are not stored; an error wrapping ErrRejected when the auth rules reject ev (against
// its auth_events or the state before it); SoftFailed when ev passes them at its own state but
// not against the current state. An event already stored returns its earlier result; a stored
// outlier is moved into the timeline. Errors: 404 for an unknown room, 413 for an event over
// 65536 bytes.
func (s *Service) InputEvent(ctx context.Context, ev gomatrixserverlib.PDU, opts InputOptions) (res InputResult, err error) {
	defer func() {
		if rec := recover(); rec != nil {
			res, err = InputResult{}, fmt.Errorf("inputting event: gomatrixserverlib panicked: %v", rec)
		}
	}()
	eventID := ev.EventID()
	if len(ev.JSON()) > maxEventSize {
		return InputResult{}, matrix.Errorf(413, matrix.CodeTooLarge, "event %s is too large", eventID)
	}
	roomID := ev.RoomID().String()
	ri, err := s.roomInfo(ctx, roomID)
	if errors.Is(err, sqldb.ErrNotFound) && opts.StateBefore != nil {
		ri, err = s.createRemoteRoom(ctx, roomID, ev.Version())
	}
	if err != nil {
		return InputResult{}, err
	}
	if ri.version.Version() != ev.Version() {
		return InputResult{}, fmt.Errorf("event %s has room version %s, room %s has %s", eventID, ev.Version(), roomID, ri.version.Version())
	}

	unlock := s.locks.lock(roomID)
	defer unlock()
	var rejection error
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		res, rejection, err = s.inputTx(ctx, tx, ri, ev, opts)
		return err
	})
	if err == nil && rejection != nil {
		// The rejection is remembered: store it in its own transaction.
		err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
			return s.rememberRejected(ctx, tx, ri, ev, rejection)
		})
		if err == nil {
			err = rejection
		}
	}
	if err != nil {
		var me *MissingEventsError
		if matrix.AsError(err) != nil || errors.As(err, &me) {
			return InputResult{}, err
		}
		return InputResult{}, fmt.Errorf("inputting event %s: %w", eventID, err)
	}
	if !res.Existing {
		s.advance(res.Pos)
	}
	return res, nil
}

// rejectedEvent is the stored rejection to write after the failed transaction rolled back.
type rejectedEvent struct {
	err        error
	softFailed bool
	stateAfter int64
	snapshot   stateSet // written as stateAfter when stateAfter is 0 and this is set
}

func (r *rejectedEvent) Error() string { return r.err.Error() }
func (r *rejectedEvent) Unwrap() error { return r.err }

// rememberRejected stores ev as rejected (rejection is a *rejectedEvent or a plain error).
func (s *Service) rememberRejected(ctx context.Context, tx *sqldb.Tx, ri roomInfo, ev gomatrixserverlib.PDU, rejection error) error {
	var after int64
	var re *rejectedEvent
	if errors.As(rejection, &re) {
		after = re.stateAfter
		if after == 0 && re.snapshot != nil {
			var err error
			if after, err = writeSnapshot(ctx, tx, ri.nid, re.snapshot); err != nil {
				return err
			}
		}
	}
	return insertRejected(ctx, tx, ri.nid, ev, false, after, rejection.Error())
}

// inputTx does InputEvent's work inside tx. A rejection is returned separately (the
// transaction commits nothing then) so that InputEvent can remember it.
func (s *Service) inputTx(ctx context.Context, tx *sqldb.Tx, ri roomInfo, ev gomatrixserverlib.PDU, opts InputOptions) (InputResult, error, error) {
	eventID := ev.EventID()
	var (
		pos, outlierNID int64
	)
	err := tx.QueryRow(ctx, `SELECT event_nid, stream_pos FROM events WHERE event_id = $1`, eventID).Scan(&outlierNID, &pos)
	switch {
	case err == nil && pos > 0:
		return InputResult{Pos: pos, Existing: true}, nil, nil
	case err == nil: // an outlier: move it into the timeline
	case errors.Is(err, sql.ErrNoRows):
		outlierNID = 0
	default:
		return InputResult{}, nil, fmt.Errorf("looking up event %s: %w", eventID, err)
	}
	if rej, soft, err := rejectedStatus(ctx, tx, eventID); err != nil {
		return InputResult{}, nil, err
	} else if rej != "" {
		if soft {
			return InputResult{SoftFailed: true, Existing: true}, nil, nil
		}
		return InputResult{}, nil, rejectf("event %s was rejected: %s", eventID, rej)
	}
	room, err := s.lockRoomRow(ctx, tx, ev.RoomID().String(), ri)
	if err != nil {
		return InputResult{}, nil, err
	}

	// The state before ev.
	var (
		before    stateSet
		beforeNID int64
		removeExt []string
	)
	extendsTip := false
	if opts.StateBefore != nil {
		if before, err = stateFromIDs(ctx, tx, opts.StateBefore); err != nil {
			return InputResult{}, nil, err
		}
		// The given state (a resident server's, for a join through it) supersedes what
		// this server last saw of the room: ev becomes its only forward extremity.
		removeExt = append(removeExt, room.extremities...)
	} else {
		prevIDs := ev.PrevEventIDs()
		if ev.Type() == spec.MRoomCreate {
			return InputResult{}, nil, rejectf("a create event can only start a room")
		}
		prevs, err := loadPrevs(ctx, tx, prevIDs)
		if err != nil {
			return InputResult{}, nil, err
		}
		var missing []string
		type source struct {
			nid int64    // a stored snapshot, or 0
			st  stateSet // a given state
		}
		var sources []source
		for _, id := range prevIDs {
			p := prevs[id]
			if p != nil && p.stateAfter != 0 {
				removeExt = append(removeExt, p.ancestors...)
				sources = append(sources, source{nid: p.stateAfter})
				continue
			}
			if given, ok := opts.PrevStates[id]; ok {
				st, err := stateFromIDs(ctx, tx, given)
				if err != nil {
					return InputResult{}, nil, err
				}
				sources = append(sources, source{st: st})
				continue
			}
			missing = append(missing, id)
		}
		if len(missing) > 0 {
			// Reported before missing auth events, as Synapse does: the sender is asked
			// for the gap first.
			return InputResult{}, nil, &MissingEventsError{IDs: missing}
		}
		removeExt = append(removeExt, prevIDs...)
		extendsTip = sameSet(prevIDs, room.extremities) && outlierNID == 0
		if !extendsTip {
			var sets []stateSet
			loaded := map[int64]bool{}
			for _, src := range sources {
				if src.nid == 0 {
					sets = append(sets, src.st)
					continue
				}
				if loaded[src.nid] {
					continue
				}
				loaded[src.nid] = true
				st, err := snapshotState(ctx, tx, src.nid)
				if err != nil {
					return InputResult{}, nil, err
				}
				sets = append(sets, st)
				if len(sources) == 1 {
					beforeNID = src.nid
				}
			}
			sets = dedupeStates(sets)
			if len(sets) == 1 {
				before = sets[0]
			} else if before, err = s.resolve(ctx, tx, room.version, sets); err != nil {
				return InputResult{}, nil, fmt.Errorf("resolving the state before %s: %w", eventID, err)
			} else {
				beforeNID = 0
			}
		}
	}

	// Auth against the state before ev.
	needed := gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{ev})
	if extendsTip {
		beforeNID = room.stateNID
	}
	// A rejection by ev's own auth events is returned once the state before ev is known:
	// events built on ev see that state.
	if ownErr := s.checkOwnAuthEvents(ctx, tx, room, ev); ownErr != nil {
		var me *MissingEventsError
		if errors.As(ownErr, &me) || !errors.Is(ownErr, ErrRejected) {
			return InputResult{}, nil, ownErr
		}
		return InputResult{}, &rejectedEvent{err: ownErr, stateAfter: beforeNID, snapshot: before}, nil
	}
	var beforeAuth []gomatrixserverlib.PDU
	if extendsTip {
		cur, err := currentStateEvents(ctx, tx, room.nid, needed.Tuples())
		if err != nil {
			return InputResult{}, nil, fmt.Errorf("loading current auth state: %w", err)
		}
		for _, e := range cur {
			beforeAuth = append(beforeAuth, e.PDU)
		}
		beforeNID = room.stateNID
	} else {
		beforeAuth = before.pick(needed.Tuples())
	}
	if err := allowed(ev, beforeAuth); err != nil {
		return InputResult{}, &rejectedEvent{err: fmt.Errorf("%w: %w", ErrRejected, err), stateAfter: beforeNID, snapshot: before}, nil
	}

	// Soft-fail: auth against the current state, unless the state before ev was given.
	if !extendsTip && opts.StateBefore == nil {
		cur, err := currentStateEvents(ctx, tx, room.nid, needed.Tuples())
		if err != nil {
			return InputResult{}, nil, fmt.Errorf("loading current auth state: %w", err)
		}
		var curAuth []gomatrixserverlib.PDU
		for _, e := range cur {
			curAuth = append(curAuth, e.PDU)
		}
		if room.stateNID != 0 {
			if err := allowed(ev, curAuth); err != nil {
				if beforeNID == 0 {
					var werr error
					if beforeNID, werr = writeSnapshot(ctx, tx, room.nid, before); werr != nil {
						return InputResult{}, nil, werr
					}
				}
				// Events built on a soft-failed event see the state before it: it is not in
				// the events table, so no snapshot can name it.
				after := beforeNID
				if err := insertRejected(ctx, tx, room.nid, ev, true, after, err.Error()); err != nil {
					return InputResult{}, nil, err
				}
				s.log.Info("soft-failed remote event", "event_id", eventID, "room_id", room.id, "reason", err.Error())
				return InputResult{SoftFailed: true}, nil, nil
			}
		}
	}

	if extendsTip {
		pos, err := s.persist(ctx, tx, room, ev, nil)
		if err != nil {
			return InputResult{}, nil, err
		}
		if err := s.applyPendingRedactions(ctx, tx, room, eventID); err != nil {
			return InputResult{}, nil, err
		}
		return InputResult{Pos: pos}, nil, nil
	}
	pos, err = s.persistForked(ctx, tx, room, ev, before, beforeNID, removeExt, outlierNID)
	if err != nil {
		return InputResult{}, nil, err
	}
	if err := s.applyPendingRedactions(ctx, tx, room, eventID); err != nil {
		return InputResult{}, nil, err
	}
	return InputResult{Pos: pos}, nil, nil
}

// applyPendingRedactions applies the redactions of eventID that arrived before it.
func (s *Service) applyPendingRedactions(ctx context.Context, tx *sqldb.Tx, room *roomRow, eventID string) error {
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
}

// checkOwnAuthEvents authorises ev against its own auth_events: they must all be stored and
// not rejected, be state of the room of an auth type, name each (type, state_key) once, and
// allow ev. It returns *MissingEventsError or an error wrapping ErrRejected.
func (s *Service) checkOwnAuthEvents(ctx context.Context, tx *sqldb.Tx, room *roomRow, ev gomatrixserverlib.PDU) error {
	eventID := ev.EventID()
	authIDs := ev.AuthEventIDs()
	if ev.Type() == spec.MRoomCreate {
		if len(authIDs) > 0 {
			return rejectf("create event %s has auth events", eventID)
		}
		return allowedRejection(ev, nil)
	}
	unique := slices.Compact(sortedCopy(authIDs))
	if len(unique) != len(authIDs) {
		return rejectf("event %s lists an auth event twice", eventID)
	}
	for _, id := range unique {
		if rej, _, err := rejectedStatus(ctx, tx, id); err != nil {
			return err
		} else if rej != "" {
			return rejectf("event %s has a rejected auth event %s", eventID, id)
		}
	}
	authEvs, err := eventsByID(ctx, tx, unique)
	if err != nil {
		return fmt.Errorf("loading auth events of %s: %w", eventID, err)
	}
	if len(authEvs) != len(unique) {
		have := map[string]bool{}
		for _, a := range authEvs {
			have[a.PDU.EventID()] = true
		}
		var missing []string
		for _, id := range unique {
			if !have[id] {
				missing = append(missing, id)
			}
		}
		return &MissingEventsError{Auth: true, IDs: missing}
	}
	seen := map[gomatrixserverlib.StateKeyTuple]bool{}
	own := make([]gomatrixserverlib.PDU, 0, len(authEvs)+1)
	for _, a := range authEvs {
		p := a.PDU
		if p.StateKey() == nil || p.RoomID().String() != ev.RoomID().String() {
			return rejectf("event %s has an auth event %s that is not state of the room", eventID, p.EventID())
		}
		switch p.Type() {
		case spec.MRoomCreate, spec.MRoomPowerLevels, spec.MRoomJoinRules, spec.MRoomMember, spec.MRoomThirdPartyInvite:
		default:
			return rejectf("event %s has an auth event of type %s", eventID, p.Type())
		}
		t := gomatrixserverlib.StateKeyTuple{EventType: p.Type(), StateKey: *p.StateKey()}
		if seen[t] {
			return rejectf("event %s has two auth events for %s/%s", eventID, t.EventType, t.StateKey)
		}
		seen[t] = true
		own = append(own, p)
	}
	// From v12 (MSC4291) the create event is implied by the room ID rather than listed (a
	// listing is tolerated, as other servers do).
	if room.version.DomainlessRoomIDs() && !seen[gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomCreate}] {
		createID := "$" + strings.TrimPrefix(ev.RoomID().String(), "!")
		creates, err := eventsByID(ctx, tx, []string{createID})
		if err != nil {
			return fmt.Errorf("loading the create event of %s: %w", eventID, err)
		}
		if len(creates) == 0 {
			return &MissingEventsError{Auth: true, IDs: []string{createID}}
		}
		own = append(own, creates[0].PDU)
	}
	// Only the auth events the rules would select may be listed.
	needed := gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{ev})
	want := map[gomatrixserverlib.StateKeyTuple]bool{}
	for _, t := range needed.Tuples() {
		want[t] = true
	}
	for t := range seen {
		if !want[t] {
			return rejectf("event %s has an unneeded auth event for %s/%s", eventID, t.EventType, t.StateKey)
		}
	}
	return allowedRejection(ev, own)
}

// allowedRejection is allowed, as an error wrapping ErrRejected.
func allowedRejection(ev gomatrixserverlib.PDU, authEvents []gomatrixserverlib.PDU) error {
	if err := allowed(ev, authEvents); err != nil {
		if matrix.AsError(err) != nil {
			return fmt.Errorf("%w: %w", ErrRejected, err)
		}
		return err
	}
	return nil
}

// InputOutlier stores ev, a remote PDU whose signatures the caller has verified, as an
// outlier: an event known for auth chains and state but not part of the timeline, with no
// state of its own. It is authorised against its own auth_events only. It returns
// *MissingEventsError when auth_events are not stored, an error wrapping ErrRejected (the
// event is remembered as rejected), and nil for an event already stored.
func (s *Service) InputOutlier(ctx context.Context, ev gomatrixserverlib.PDU) error {
	errs, err := s.InputOutliers(ctx, []gomatrixserverlib.PDU{ev})
	if err != nil {
		return err
	}
	return errs[0]
}

// outlierBatch bounds how many outliers share one transaction.
const outlierBatch = 500

// InputOutliers stores evs like InputOutlier, all of one room and in auth order (an event's
// auth events before it), committing them in a few transactions rather than one per event: a
// remote join of a large room brings thousands. errs[i] is evs[i]'s own failure (rejected,
// missing events, too large); err is a failure of the whole, after which nothing more is
// stored.
func (s *Service) InputOutliers(ctx context.Context, evs []gomatrixserverlib.PDU) (errs []error, err error) {
	defer func() {
		if rec := recover(); rec != nil {
			err = fmt.Errorf("inputting outliers: gomatrixserverlib panicked: %v", rec)
		}
	}()
	errs = make([]error, len(evs))
	if len(evs) == 0 {
		return errs, nil
	}
	// The room row is looked up (or made, for a room joined from elsewhere) before any
	// transaction: on SQLite a second write transaction would wait on the first.
	roomID := evs[0].RoomID().String()
	ri, err := s.roomInfo(ctx, roomID)
	if errors.Is(err, sqldb.ErrNotFound) {
		for _, ev := range evs {
			if ev.Type() == spec.MRoomCreate && ev.RoomID().String() == roomID {
				ri, err = s.createRemoteRoom(ctx, roomID, ev.Version())
				break
			}
		}
	}
	if err != nil {
		return nil, err
	}
	for start := 0; start < len(evs); start += outlierBatch {
		end := min(start+outlierBatch, len(evs))
		err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
			for i := start; i < end; i++ {
				evErr, err := s.outlierTx(ctx, tx, ri, roomID, evs[i])
				if err != nil {
					return err
				}
				errs[i] = evErr
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return errs, nil
}

// outlierTx stores one outlier inside tx. evErr is the event's own failure, also recorded as a
// rejection when the event breaks the auth rules; err fails the transaction.
func (s *Service) outlierTx(ctx context.Context, tx *sqldb.Tx, ri roomInfo, roomID string, ev gomatrixserverlib.PDU) (evErr, err error) {
	eventID := ev.EventID()
	if len(ev.JSON()) > maxEventSize {
		return matrix.Errorf(413, matrix.CodeTooLarge, "event %s is too large", eventID), nil
	}
	if ev.RoomID().String() != roomID {
		return fmt.Errorf("event %s is in room %s, not %s", eventID, ev.RoomID().String(), roomID), nil
	}
	if ri.version.Version() != ev.Version() {
		return fmt.Errorf("event %s has room version %s, room %s has %s", eventID, ev.Version(), roomID, ri.version.Version()), nil
	}
	var n int
	if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM events WHERE event_id = $1`, eventID).Scan(&n); err != nil {
		return nil, fmt.Errorf("looking up event %s: %w", eventID, err)
	}
	if n > 0 {
		return nil, nil
	}
	if rej, _, err := rejectedStatus(ctx, tx, eventID); err != nil {
		return nil, err
	} else if rej != "" {
		return rejectf("event %s was rejected: %s", eventID, rej), nil
	}
	room := &roomRow{roomInfo: ri, id: roomID}
	if err := s.checkOwnAuthEvents(ctx, tx, room, ev); err != nil {
		if errors.Is(err, ErrRejected) {
			if err := insertRejected(ctx, tx, ri.nid, ev, false, 0, err.Error()); err != nil {
				return nil, err
			}
			return err, nil
		}
		var me *MissingEventsError
		if errors.As(err, &me) {
			return err, nil
		}
		return nil, err
	}
	if _, err := insertEvent(ctx, tx, storedEvent{pdu: ev, roomNID: ri.nid}); err != nil {
		return nil, err
	}
	return nil, nil
}

// createRemoteRoom inserts the row of a room created elsewhere, which this server is joining.
func (s *Service) createRemoteRoom(ctx context.Context, roomID string, v gomatrixserverlib.RoomVersion) (roomInfo, error) {
	ver, err := supportedVersion(string(v))
	if err != nil {
		return roomInfo{}, err
	}
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		var n int
		if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM rooms WHERE room_id = $1`, roomID).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
		_, err := insertRoom(ctx, tx, roomID, ver)
		return err
	})
	if err != nil && !sqldb.IsUniqueViolation(err) {
		return roomInfo{}, fmt.Errorf("creating room %s: %w", roomID, err)
	}
	return s.roomInfo(ctx, roomID)
}

// KnownEvents returns, of ids, those stored (in the timeline, as outliers, or rejected).
func (s *Service) KnownEvents(ctx context.Context, ids []string) (map[string]bool, error) {
	out := map[string]bool{}
	for len(ids) > 0 {
		n := min(len(ids), 500)
		args := make([]any, n)
		for i, id := range ids[:n] {
			args[i] = id
		}
		list := inList(1, n)
		found, err := queryStrings(ctx, s.db, `SELECT event_id FROM events WHERE event_id IN (`+list+`)
			UNION SELECT event_id FROM rejected_events WHERE event_id IN (`+list+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("looking up known events: %w", err)
		}
		for _, id := range found {
			out[id] = true
		}
		ids = ids[n:]
	}
	return out, nil
}

// Rejected reports whether eventID is stored as rejected (not soft-failed).
func (s *Service) Rejected(ctx context.Context, eventID string) (bool, error) {
	var soft bool
	err := s.db.QueryRow(ctx, `SELECT soft_failed FROM rejected_events WHERE event_id = $1`, eventID).Scan(&soft)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("looking up rejection of %s: %w", eventID, err)
	}
	return !soft, nil
}

// Extremities returns the forward extremities of roomID and their greatest depth.
func (s *Service) Extremities(ctx context.Context, roomID string) ([]string, int64, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return nil, 0, err
	}
	var ext string
	var depth int64
	if err := s.db.QueryRow(ctx, `SELECT extremities, depth FROM rooms WHERE room_nid = $1`, ri.nid).Scan(&ext, &depth); err != nil {
		return nil, 0, fmt.Errorf("reading room %s: %w", roomID, err)
	}
	var ids []string
	if err := json.Unmarshal([]byte(ext), &ids); err != nil {
		return nil, 0, fmt.Errorf("decoding extremities of %s: %w", roomID, err)
	}
	return ids, depth, nil
}

// rejectedStatus returns the rejection reason of eventID ("" if not rejected) and whether it
// was soft-failed.
func rejectedStatus(ctx context.Context, q querier, eventID string) (string, bool, error) {
	var reason string
	var soft bool
	err := q.QueryRow(ctx, `SELECT reason, soft_failed FROM rejected_events WHERE event_id = $1`, eventID).Scan(&reason, &soft)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("looking up rejection of %s: %w", eventID, err)
	}
	if reason == "" {
		reason = "rejected"
	}
	return reason, soft, nil
}

func insertRejected(ctx context.Context, tx *sqldb.Tx, roomNID int64, ev gomatrixserverlib.PDU, soft bool, stateAfter int64, reason string) error {
	_, err := tx.Exec(ctx, `INSERT INTO rejected_events (event_id, room_nid, soft_failed, state_after, event_json, reason)
		VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING`,
		ev.EventID(), roomNID, soft, stateAfter, ev.JSON(), reason)
	if err != nil {
		return fmt.Errorf("remembering rejected event %s: %w", ev.EventID(), err)
	}
	return nil
}

// prevInfo is what input needs of a prev event.
type prevInfo struct {
	stateAfter int64    // 0: no state known (an outlier)
	ancestors  []string // for a rejected or soft-failed prev: the events before it, which it hides from the extremities
}

// loadPrevs looks up the prev events ids in the timeline and among rejected events.
func loadPrevs(ctx context.Context, tx *sqldb.Tx, ids []string) (map[string]*prevInfo, error) {
	out := map[string]*prevInfo{}
	if len(ids) == 0 {
		return out, nil
	}
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	rows, err := tx.Query(ctx, `SELECT event_id, stream_pos, state_after FROM events WHERE event_id IN (`+inList(1, len(ids))+`)`, args...)
	if err != nil {
		return nil, fmt.Errorf("loading prev events: %w", err)
	}
	for rows.Next() {
		var id string
		var pos, after int64
		if err := rows.Scan(&id, &pos, &after); err != nil {
			rows.Close()
			return nil, fmt.Errorf("loading prev events: %w", err)
		}
		if pos == 0 {
			after = 0
		}
		out[id] = &prevInfo{stateAfter: after}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("loading prev events: %w", err)
	}
	// Rejected and soft-failed prev events: follow their prev_events so that the events they
	// hide stop being forward extremities.
	var rejectedIDs []string
	for _, id := range ids {
		if out[id] == nil {
			rejectedIDs = append(rejectedIDs, id)
		}
	}
	for range 50 {
		if len(rejectedIDs) == 0 {
			break
		}
		args := make([]any, len(rejectedIDs))
		for i, id := range rejectedIDs {
			args[i] = id
		}
		rows, err := tx.Query(ctx, `SELECT event_id, state_after, event_json FROM rejected_events WHERE event_id IN (`+inList(1, len(rejectedIDs))+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("loading rejected prev events: %w", err)
		}
		var next []string
		for rows.Next() {
			var id string
			var after int64
			var js []byte
			if err := rows.Scan(&id, &after, &js); err != nil {
				rows.Close()
				return nil, fmt.Errorf("loading rejected prev events: %w", err)
			}
			var partial struct {
				PrevEvents []json.RawMessage `json:"prev_events"`
			}
			_ = json.Unmarshal(js, &partial)
			var prevs []string
			for _, p := range partial.PrevEvents {
				var s string
				if json.Unmarshal(p, &s) == nil {
					prevs = append(prevs, s)
					continue
				}
				var pair []json.RawMessage // room v1/v2: [id, hashes]
				if json.Unmarshal(p, &pair) == nil && len(pair) > 0 && json.Unmarshal(pair[0], &s) == nil {
					prevs = append(prevs, s)
				}
			}
			if p, ok := out[id]; ok {
				p.ancestors = append(p.ancestors, prevs...)
			} else {
				out[id] = &prevInfo{stateAfter: after, ancestors: prevs}
			}
			next = append(next, prevs...)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("loading rejected prev events: %w", err)
		}
		rejectedIDs = next
	}
	// Ancestors of a rejected prev: propagate them to the prev events named by the caller.
	for _, id := range ids {
		p := out[id]
		if p == nil || len(p.ancestors) == 0 {
			continue
		}
		seen := map[string]bool{}
		queue := append([]string{}, p.ancestors...)
		var all []string
		for len(queue) > 0 && len(all) < 1000 {
			a := queue[0]
			queue = queue[1:]
			if seen[a] {
				continue
			}
			seen[a] = true
			all = append(all, a)
			if q := out[a]; q != nil && a != id {
				queue = append(queue, q.ancestors...)
			}
		}
		p.ancestors = all
	}
	return out, nil
}

// stateEntry is one entry of a room state: the event and its event_nid.
type stateEntry struct {
	nid int64
	pdu gomatrixserverlib.PDU
}

// stateSet is a full room state.
type stateSet map[gomatrixserverlib.StateKeyTuple]stateEntry

// pick returns the events of m for tuples.
func (m stateSet) pick(tuples []gomatrixserverlib.StateKeyTuple) []gomatrixserverlib.PDU {
	var out []gomatrixserverlib.PDU
	for _, t := range tuples {
		if e, ok := m[t]; ok {
			out = append(out, e.pdu)
		}
	}
	return out
}

func (m stateSet) pdus() []gomatrixserverlib.PDU {
	out := make([]gomatrixserverlib.PDU, 0, len(m))
	for _, e := range m {
		out = append(out, e.pdu)
	}
	return out
}

func (m stateSet) equal(o stateSet) bool {
	if len(m) != len(o) {
		return false
	}
	for t, e := range m {
		if o[t].nid != e.nid {
			return false
		}
	}
	return true
}

func dedupeStates(sets []stateSet) []stateSet {
	var out []stateSet
	for _, s := range sets {
		dup := false
		for _, o := range out {
			if o.equal(s) {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, s)
		}
	}
	return out
}

// stateFromIDs loads the stored state events ids as a state. Events not stored give
// *MissingEventsError; non-state events are ignored.
func stateFromIDs(ctx context.Context, q querier, ids []string) (stateSet, error) {
	out := stateSet{}
	unique := slices.Compact(sortedCopy(ids))
	found := map[string]bool{}
	for start := 0; start < len(unique); start += 500 {
		chunk := unique[start:min(start+500, len(unique))]
		args := make([]any, len(chunk))
		for i, id := range chunk {
			args[i] = id
		}
		rows, err := q.Query(ctx, `SELECT e.event_nid, `+eventCols+eventFrom+` WHERE e.event_id IN (`+inList(1, len(chunk))+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("loading state events: %w", err)
		}
		for rows.Next() {
			var nid int64
			var r rawEvent
			if err := rows.Scan(append([]any{&nid}, r.dest()...)...); err != nil {
				rows.Close()
				return nil, fmt.Errorf("loading state events: %w", err)
			}
			ev, err := r.parse()
			if err != nil {
				rows.Close()
				return nil, err
			}
			found[r.id] = true
			if sk := ev.PDU.StateKey(); sk != nil {
				out[gomatrixserverlib.StateKeyTuple{EventType: ev.PDU.Type(), StateKey: *sk}] = stateEntry{nid: nid, pdu: ev.PDU}
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("loading state events: %w", err)
		}
	}
	var missing []string
	for _, id := range unique {
		if !found[id] {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		return nil, &MissingEventsError{IDs: missing}
	}
	return out, nil
}

// snapshotState loads the full state of a snapshot with event_nids.
func snapshotState(ctx context.Context, q querier, snapshot int64) (stateSet, error) {
	out := stateSet{}
	if snapshot == 0 {
		return out, nil
	}
	rows, err := q.Query(ctx, `WITH RECURSIVE chain (nid, parent, lvl) AS (
			SELECT snapshot_nid, parent_nid, 0 FROM state_snapshots WHERE snapshot_nid = $1
			UNION ALL
			SELECT s.snapshot_nid, s.parent_nid, chain.lvl + 1 FROM state_snapshots s JOIN chain ON s.snapshot_nid = chain.parent
		)
		SELECT se.type, se.state_key, se.event_nid FROM chain JOIN state_entries se ON se.snapshot_nid = chain.nid
		ORDER BY chain.lvl`, snapshot)
	if err != nil {
		return nil, fmt.Errorf("reading state snapshot %d: %w", snapshot, err)
	}
	seen := map[gomatrixserverlib.StateKeyTuple]bool{}
	var nids []int64
	tuples := map[int64]gomatrixserverlib.StateKeyTuple{}
	for rows.Next() {
		var t gomatrixserverlib.StateKeyTuple
		var nid int64
		if err := rows.Scan(&t.EventType, &t.StateKey, &nid); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading state snapshot %d: %w", snapshot, err)
		}
		if seen[t] {
			continue
		}
		seen[t] = true
		if nid != 0 {
			nids = append(nids, nid)
			tuples[nid] = t
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading state snapshot %d: %w", snapshot, err)
	}
	for start := 0; start < len(nids); start += 500 {
		chunk := nids[start:min(start+500, len(nids))]
		args := make([]any, len(chunk))
		for i, n := range chunk {
			args[i] = n
		}
		rows, err := q.Query(ctx, `SELECT e.event_nid, `+eventCols+eventFrom+` WHERE e.event_nid IN (`+inList(1, len(chunk))+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("loading state snapshot %d: %w", snapshot, err)
		}
		for rows.Next() {
			var nid int64
			var r rawEvent
			if err := rows.Scan(append([]any{&nid}, r.dest()...)...); err != nil {
				rows.Close()
				return nil, fmt.Errorf("loading state snapshot %d: %w", snapshot, err)
			}
			ev, err := r.parse()
			if err != nil {
				rows.Close()
				return nil, err
			}
			out[tuples[nid]] = stateEntry{nid: nid, pdu: ev.PDU}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("loading state snapshot %d: %w", snapshot, err)
		}
	}
	return out, nil
}

// currentState loads the room's current state with event_nids.
func currentState(ctx context.Context, q querier, roomNID int64) (stateSet, error) {
	rows, err := q.Query(ctx, `SELECT c.event_nid, `+eventCols+` FROM current_state c
		JOIN events e ON e.event_nid = c.event_nid JOIN rooms r ON r.room_nid = e.room_nid
		WHERE c.room_nid = $1`, roomNID)
	if err != nil {
		return nil, fmt.Errorf("loading current state: %w", err)
	}
	defer rows.Close()
	out := stateSet{}
	for rows.Next() {
		var nid int64
		var r rawEvent
		if err := rows.Scan(append([]any{&nid}, r.dest()...)...); err != nil {
			return nil, fmt.Errorf("loading current state: %w", err)
		}
		ev, err := r.parse()
		if err != nil {
			return nil, err
		}
		out[gomatrixserverlib.StateKeyTuple{EventType: ev.PDU.Type(), StateKey: *ev.PDU.StateKey()}] = stateEntry{nid: nid, pdu: ev.PDU}
	}
	return out, rows.Err()
}

// writeSnapshot writes st as a full snapshot and returns its nid.
func writeSnapshot(ctx context.Context, tx *sqldb.Tx, roomNID int64, st stateSet) (int64, error) {
	nid, err := insertSnapshot(ctx, tx, roomNID, 0)
	if err != nil {
		return 0, err
	}
	if err := writeEntries(ctx, tx, nid, st); err != nil {
		return 0, err
	}
	return nid, nil
}

func writeEntries(ctx context.Context, tx *sqldb.Tx, snapshot int64, st stateSet) error {
	type row struct {
		t   gomatrixserverlib.StateKeyTuple
		nid int64
	}
	rows := make([]row, 0, len(st))
	for t, e := range st {
		rows = append(rows, row{t, e.nid})
	}
	for start := 0; start < len(rows); start += 200 {
		chunk := rows[start:min(start+200, len(rows))]
		var b strings.Builder
		args := make([]any, 0, 4*len(chunk))
		for i, r := range chunk {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "($%d, $%d, $%d, $%d)", len(args)+1, len(args)+2, len(args)+3, len(args)+4)
			args = append(args, snapshot, r.t.EventType, r.t.StateKey, r.nid)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO state_entries (snapshot_nid, type, state_key, event_nid) VALUES `+b.String(), args...); err != nil {
			return fmt.Errorf("writing state snapshot: %w", err)
		}
	}
	return nil
}

// persistForked stores ev (authorised) whose state before is before (written already as
// beforeNID, or 0), in the timeline of room: it writes ev's snapshots, makes it a forward
// extremity in place of removeExt, and resolves the room's new current state from the
// remaining extremities' state. outlierNID is the row of ev stored as an outlier, or 0.
func (s *Service) persistForked(ctx context.Context, tx *sqldb.Tx, room *roomRow, ev gomatrixserverlib.PDU, before stateSet, beforeNID int64, removeExt []string, outlierNID int64) (int64, error) {
	var err error
	if beforeNID == 0 {
		if beforeNID, err = writeSnapshot(ctx, tx, room.nid, before); err != nil {
			return 0, err
		}
	}
	afterNID := beforeNID
	sk := ev.StateKey()
	if sk != nil {
		if afterNID, err = insertSnapshot(ctx, tx, room.nid, 0); err != nil {
			return 0, err
		}
	}
	var js []byte
	if sk != nil {
		if js, err = s.servedJSON(ctx, tx, room, ev, before); err != nil {
			return 0, err
		}
	}
	pos, err := tx.NextSeq(ctx, "room_events")
	if err != nil {
		return 0, err
	}
	nid := outlierNID
	if nid != 0 {
		if js == nil {
			js = ev.JSON()
		}
		if _, err := tx.Exec(ctx, `UPDATE events SET stream_pos = $1, state_before = $2, state_after = $3, event_json = $4 WHERE event_nid = $5`,
			pos, beforeNID, afterNID, js, nid); err != nil {
			return 0, fmt.Errorf("moving outlier %s into the timeline: %w", ev.EventID(), err)
		}
	} else if nid, err = insertEvent(ctx, tx, storedEvent{
		pdu: ev, roomNID: room.nid, streamPos: pos, stateBefore: beforeNID, stateAfter: afterNID, js: js,
	}); err != nil {
		return 0, err
	}
	after := before
	if sk != nil {
		after = make(stateSet, len(before)+1)
		for t, e := range before {
			after[t] = e
		}
		after[gomatrixserverlib.StateKeyTuple{EventType: ev.Type(), StateKey: *sk}] = stateEntry{nid: nid, pdu: ev}
		if err := writeEntries(ctx, tx, afterNID, after); err != nil {
			return 0, err
		}
	}

	// The new forward extremities and current state.
	remove := map[string]bool{}
	for _, id := range removeExt {
		remove[id] = true
	}
	var ext []string
	for _, id := range room.extremities {
		if !remove[id] && id != ev.EventID() {
			ext = append(ext, id)
		}
	}
	cur, err := currentState(ctx, tx, room.nid)
	if err != nil {
		return 0, err
	}
	newCur, newNID := after, afterNID
	if len(ext) > 0 && len(cur) > 0 {
		resolved, err := s.resolve(ctx, tx, room.version, dedupeStates([]stateSet{cur, after}))
		if err != nil {
			return 0, fmt.Errorf("resolving the current state: %w", err)
		}
		if !resolved.equal(after) {
			newCur = resolved
			if resolved.equal(cur) {
				newNID = room.stateNID
			} else if newNID, err = writeSnapshot(ctx, tx, room.nid, resolved); err != nil {
				return 0, err
			}
		}
	}
	if err := applyCurrentState(ctx, tx, room.nid, cur, newCur); err != nil {
		return 0, err
	}
	if ev.Type() == spec.MRoomRedaction && ev.Redacts() != "" {
		if err := s.recordRedaction(ctx, tx, room, ev); err != nil {
			return 0, err
		}
	}
	room.extremities = append(ext, ev.EventID())
	if len(room.extremities) > maxPrevEvents*2 {
		room.extremities = room.extremities[len(room.extremities)-maxPrevEvents*2:]
	}
	room.depth = max(room.depth, ev.Depth())
	room.stateNID, room.stateChain = newNID, 0
	if err := updateRoom(ctx, tx, room); err != nil {
		return 0, err
	}
	return pos, nil
}

// applyCurrentState rewrites the room's current_state and memberships rows from cur to next.
func applyCurrentState(ctx context.Context, tx *sqldb.Tx, roomNID int64, cur, next stateSet) error {
	for t, e := range next {
		if c, ok := cur[t]; ok && c.nid == e.nid {
			continue
		}
		if err := upsertCurrentState(ctx, tx, roomNID, t.EventType, t.StateKey, e.nid); err != nil {
			return err
		}
		if t.EventType == spec.MRoomMember {
			m, err := e.pdu.Membership()
			if err != nil {
				return fmt.Errorf("reading membership of %s: %w", e.pdu.EventID(), err)
			}
			if err := upsertMembership(ctx, tx, roomNID, t.StateKey, m, e.nid); err != nil {
				return err
			}
		}
	}
	for t := range cur {
		if _, ok := next[t]; ok {
			continue
		}
		if _, err := tx.Exec(ctx, `DELETE FROM current_state WHERE room_nid = $1 AND type = $2 AND state_key = $3`,
			roomNID, t.EventType, t.StateKey); err != nil {
			return fmt.Errorf("removing current state: %w", err)
		}
		if t.EventType == spec.MRoomMember {
			if _, err := tx.Exec(ctx, `DELETE FROM memberships WHERE room_nid = $1 AND user_id = $2`, roomNID, t.StateKey); err != nil {
				return fmt.Errorf("removing membership: %w", err)
			}
		}
	}
	return nil
}

// errStateResPanicked marks a panic inside gmsl's state resolution.
var errStateResPanicked = errors.New("state resolution panicked")

// resolve runs state resolution over two or more states of a room. The auth chains of their
// events are loaded from the database. An empty result or one without a create event is an
// error (gmsl returns that silently when the create event is missing).
func (s *Service) resolve(ctx context.Context, q querier, ver gomatrixserverlib.IRoomVersion, sets []stateSet) (out stateSet, err error) {
	if len(sets) == 1 {
		return sets[0], nil
	}
	if len(sets) == 0 {
		return nil, errors.New("no states to resolve")
	}
	nids := map[string]int64{}
	var pduSets [][]gomatrixserverlib.PDU
	var all []gomatrixserverlib.PDU
	for _, st := range sets {
		pduSets = append(pduSets, st.pdus())
		for _, e := range st {
			if _, ok := nids[e.pdu.EventID()]; !ok {
				nids[e.pdu.EventID()] = e.nid
				all = append(all, e.pdu)
			}
		}
	}
	chain, err := authChainOf(ctx, q, all)
	if err != nil {
		return nil, err
	}
	// gmsl's v2.1 walk looks up the state events themselves (the conflicted subgraph's
	// paths start at them) in the map it builds from this list: give it them too.
	inChain := make(map[string]bool, len(chain))
	for _, p := range chain {
		inChain[p.EventID()] = true
	}
	for _, p := range all {
		if !inChain[p.EventID()] {
			inChain[p.EventID()] = true
			chain = append(chain, p)
		}
	}
	notRejected := func(string) bool { return false }
	resolved, err := func() (resolved []gomatrixserverlib.PDU, err error) {
		defer func() {
			if rec := recover(); rec != nil {
				err = fmt.Errorf("%w: %v", errStateResPanicked, rec)
			}
		}()
		if ver.StateResAlgorithm() == gomatrixserverlib.StateResV2_1 {
			// Our own v2.1 (gmsl's panics for privileged creators); Allowed may still panic.
			return resolveStateV21Sets(pduSets, chain)
		}
		return gomatrixserverlib.ResolveConflictsNew(ver.Version(), pduSets, chain, userIDForSender, notRejected)
	}()
	if err != nil {
		return nil, err
	}
	out = stateSet{}
	for _, p := range resolved {
		if p.StateKey() == nil {
			continue
		}
		nid, ok := nids[p.EventID()]
		if !ok && ver.StateResAlgorithm() == gomatrixserverlib.StateResV2_1 {
			// v2.1 may pick an event of the full conflicted set that no input state holds.
			if nid, err = storedEventNID(ctx, q, p.EventID()); err != nil {
				return nil, err
			}
			ok = true
		}
		if !ok {
			return nil, fmt.Errorf("state resolution returned %s, which is in no input state", p.EventID())
		}
		out[gomatrixserverlib.StateKeyTuple{EventType: p.Type(), StateKey: *p.StateKey()}] = stateEntry{nid: nid, pdu: p}
	}
	if err != nil {
		return nil, err
	}
	if _, ok := out[gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomCreate}]; !ok {
		return nil, errors.New("state resolution returned no create event")
	}
	return out, nil
}

// authChainOf returns the auth chain of evs (not including evs themselves unless reachable),
// loaded from the database level by level; unknown auth events are skipped.
func authChainOf(ctx context.Context, q querier, evs []gomatrixserverlib.PDU) ([]gomatrixserverlib.PDU, error) {
	seen := map[string]bool{}
	var out []gomatrixserverlib.PDU
	var next []string
	for _, e := range evs {
		for _, id := range e.AuthEventIDs() {
			if !seen[id] {
				seen[id] = true
				next = append(next, id)
			}
		}
	}
	for len(next) > 0 {
		loaded, err := eventsByID(ctx, q, next)
		if err != nil {
			return nil, fmt.Errorf("loading auth chain: %w", err)
		}
		next = nil
		for _, e := range loaded {
			out = append(out, e.PDU)
			for _, id := range e.PDU.AuthEventIDs() {
				if !seen[id] {
					seen[id] = true
					next = append(next, id)
				}
			}
		}
	}
	return out, nil
}

func sortedCopy[T interface{ ~string | ~int64 }](v []T) []T {
	return slices.Sorted(slices.Values(v))
}

func sameSet(a, b []string) bool {
	return slices.Equal(slices.Compact(sortedCopy(a)), slices.Compact(sortedCopy(b)))
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
