package roomserver

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
)

// maxEventSize is the spec's limit on the size of a PDU in bytes.
const maxEventSize = 65536

// maxPrevEvents bounds prev_events of the events this server builds.
const maxPrevEvents = 20

// Fledgling is an event to build: its type, state key (nil for a non-state event) and content.
type Fledgling struct {
	Type     string
	StateKey *string
	Content  json.RawMessage
}

// CreateRoomRequest asks for a new room.
type CreateRoomRequest struct {
	Creator       string          // user ID
	RoomVersion   string          // "" = the default; unknown → 400 M_UNSUPPORTED_ROOM_VERSION
	CreateContent json.RawMessage // extra m.room.create content (creation_content), may be nil; room_version, and creator for v1–v10, are added
	Initial       []Fledgling     // every event after m.room.create, in order, all sent by Creator
}

// Txn identifies a client transaction: resending it returns the first event's ID.
type Txn struct{ DeviceID, TxnID string }

// SendRequest asks for one event to be built, authorised and persisted.
type SendRequest struct {
	RoomID, Sender, Type string
	StateKey             *string
	Content              json.RawMessage
	Redacts              string // for m.room.redaction
	Txn                  *Txn   // idempotency: the same (Sender, DeviceID, TxnID) returns the first event's ID
	// OriginServerTS is the event's origin_server_ts in milliseconds since the Unix epoch, for
	// application services' timestamp massaging; 0 means now. It does not change the event's
	// place in the room: the event is still appended at the tip of the DAG.
	OriginServerTS int64
}

// Event is a stored room event.
type Event struct {
	PDU             gomatrixserverlib.PDU
	StreamPos       int64                 // position in the room-event stream (0 for outliers)
	TxnID           string                // set when the event was sent with a Txn …
	DeviceID        string                // … by this device of its sender
	RedactedBecause gomatrixserverlib.PDU // nil unless redacted
}

// CreateRoom creates a room with r.Creator's m.room.create event followed by r.Initial, all in
// one transaction, and returns the room ID: for v12 it is derived from the create event's ID,
// otherwise it is random on this server. Errors: 400 M_UNSUPPORTED_ROOM_VERSION, 400
// M_BAD_JSON for malformed content, 403 M_FORBIDDEN when an initial event fails the auth
// rules, 413 M_TOO_LARGE; nothing is stored then.
func (s *Service) CreateRoom(ctx context.Context, r CreateRoomRequest) (string, error) {
	v := r.RoomVersion
	if v == "" {
		v = s.cfg.DefaultRoomVersion
	}
	ver, err := supportedVersion(v)
	if err != nil {
		return "", err
	}
	if err := checkUserID(r.Creator); err != nil {
		return "", err
	}
	content := map[string]json.RawMessage{}
	if len(r.CreateContent) > 0 && string(r.CreateContent) != "null" {
		if err := json.Unmarshal(r.CreateContent, &content); err != nil {
			return "", matrix.BadJSON("creation_content must be a JSON object")
		}
	}
	content["room_version"], _ = json.Marshal(v)
	if preV11(ver) {
		content["creator"], _ = json.Marshal(r.Creator)
	}
	createContent, err := json.Marshal(content)
	if err != nil {
		return "", fmt.Errorf("encoding create content: %w", err)
	}

	room := &roomRow{roomInfo: roomInfo{version: ver}}
	if !ver.DomainlessRoomIDs() {
		room.id = "!" + randomString(18) + ":" + s.cfg.ServerName
	}
	empty := ""
	create, err := s.build(ctx, nil, room, &gomatrixserverlib.ProtoEvent{
		SenderID: r.Creator, Type: spec.MRoomCreate, StateKey: &empty, Content: createContent,
	})
	if err != nil {
		if e := matrix.AsError(err); e != nil && e.Status == http.StatusForbidden {
			// The create event's auth rules only check its content.
			return "", matrix.BadJSON("invalid creation_content: %s", e.Message)
		}
		return "", err
	}
	if ver.DomainlessRoomIDs() {
		room.id = create.RoomID().String()
	}

	unlock := s.locks.lock(room.id)
	defer unlock()
	var pos int64
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		row, err := insertRoom(ctx, tx, room.id, ver)
		if err != nil {
			return err
		}
		room = row
		if pos, err = s.persist(ctx, tx, room, create, nil); err != nil {
			return err
		}
		for i, f := range r.Initial {
			ev, err := s.build(ctx, tx, room, &gomatrixserverlib.ProtoEvent{
				SenderID: r.Creator, Type: f.Type, StateKey: f.StateKey, Content: spec.RawJSON(f.Content),
			})
			if err != nil {
				return fmt.Errorf("initial event %d (%s): %w", i, f.Type, err)
			}
			if pos, err = s.persist(ctx, tx, room, ev, nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		if sqldb.IsUniqueViolation(err) {
			return "", fmt.Errorf("creating room %s: room ID taken: %w", room.id, err)
		}
		return "", fmt.Errorf("creating room: %w", err)
	}
	s.rooms.Store(room.id, room.roomInfo)
	s.advance(pos)
	return room.id, nil
}

// Send builds r's event on the room's forward extremities, authorises it against the current
// state and persists it, returning its event ID. With r.Txn set, a repeat of the same
// (room, Sender, DeviceID, TxnID) returns the first event's ID without sending again. A state
// event whose sender and content equal the current state's returns the current event's ID
// without sending (as Synapse does). Membership events get the server's rules beyond the auth
// rules (see prepareMember): restricted joins are authorised via a local user, and a kick
// needs a target in the room. Errors: 404 M_NOT_FOUND for an unknown room, 403 M_FORBIDDEN
// when the auth rules reject the event (with the reason), 413 M_TOO_LARGE for an event over
// 65536 bytes, 400 M_BAD_JSON for invalid content or an m.room.create event.
func (s *Service) Send(ctx context.Context, r SendRequest) (string, error) {
	if err := checkUserID(r.Sender); err != nil {
		return "", err
	}
	if r.Type == "" {
		return "", matrix.BadJSON("event type is empty")
	}
	if len(r.Content) > maxEventSize {
		return "", matrix.Errorf(http.StatusRequestEntityTooLarge, matrix.CodeTooLarge, "event content is too large")
	}
	if r.Type == spec.MRoomCreate {
		return "", matrix.BadJSON("m.room.create can only be sent when creating a room")
	}
	if id, handled, err := s.remoteMembership(ctx, r); handled {
		return id, err
	}
	ri, err := s.roomInfo(ctx, r.RoomID)
	if err != nil {
		return "", err
	}
	if r.Txn != nil {
		id, err := txnEvent(ctx, s.db, ri.nid, r.Sender, r.Txn)
		if err != nil || id != "" {
			return id, err
		}
	}
	proto := &gomatrixserverlib.ProtoEvent{
		SenderID: r.Sender, Type: r.Type, StateKey: r.StateKey, Content: spec.RawJSON(r.Content),
	}
	if r.Type == spec.MRoomRedaction {
		if len(r.Redacts) < 2 || r.Redacts[0] != '$' {
			return "", matrix.BadJSON("redaction needs the ID of the event to redact")
		}
		proto.Redacts = r.Redacts
		if !preV11(ri.version) {
			// From v11 redacts lives in content; it stays at the top level too for older servers.
			c, err := setContentKey(r.Content, "redacts", r.Redacts)
			if err != nil {
				return "", err
			}
			proto.Content = c
		}
	}

	unlock := s.locks.lock(r.RoomID)
	defer unlock()
	var (
		eventID  string
		pos      int64
		repeated bool
	)
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		if r.Txn != nil {
			id, err := txnEvent(ctx, tx, ri.nid, r.Sender, r.Txn)
			if err != nil {
				return err
			}
			if id != "" {
				eventID, repeated = id, true
				return nil
			}
		}
		room, err := s.lockRoomRow(ctx, tx, r.RoomID, ri)
		if err != nil {
			return err
		}
		if r.Type == spec.MRoomRedaction {
			if err := s.checkLocalRedaction(ctx, tx, room, r.Sender, r.Redacts); err != nil {
				return err
			}
		}
		if r.Type == spec.MRoomMember && r.StateKey != nil {
			c, err := s.prepareMember(ctx, tx, room, r.Sender, *r.StateKey, proto.Content)
			if err != nil {
				return err
			}
			proto.Content = c
		}
		if r.StateKey != nil {
			// Synapse's deduplication: the same sender setting the same content again gets
			// the current event back rather than a no-op event.
			id, err := sameState(ctx, tx, room.nid, r.Sender, r.Type, *r.StateKey, proto.Content)
			if err != nil {
				return err
			}
			if id != "" {
				eventID, repeated = id, true
				return nil
			}
		}
		at := time.Time{}
		if r.OriginServerTS != 0 {
			at = time.UnixMilli(r.OriginServerTS)
		}
		ev, err := s.buildAt(ctx, tx, room, proto, at)
		if err != nil {
			return err
		}
		eventID = ev.EventID()
		pos, err = s.persist(ctx, tx, room, ev, r.Txn)
		return err
	})
	if err != nil {
		if r.Txn != nil && sqldb.IsUniqueViolation(err) {
			// The same transaction was committed concurrently by another process.
			if id, err2 := txnEvent(ctx, s.db, ri.nid, r.Sender, r.Txn); err2 == nil && id != "" {
				return id, nil
			}
		}
		if matrix.AsError(err) != nil {
			return "", err
		}
		return "", fmt.Errorf("sending %s to %s: %w", r.Type, r.RoomID, err)
	}
	if !repeated {
		s.advance(pos)
	}
	return eventID, nil
}

// advance tells readers that the stream is committed up to pos.
func (s *Service) advance(pos int64) {
	if s.events != nil && pos > 0 {
		s.events.Advance(pos)
	}
}

// build fills in p's room, prev_events, depth and auth_events from room (read under its lock)
// and the current state, builds and signs the event, and authorises it against that state.
// tx may be nil when the room does not exist yet (the create event).
func (s *Service) build(ctx context.Context, tx *sqldb.Tx, room *roomRow, p *gomatrixserverlib.ProtoEvent) (ev gomatrixserverlib.PDU, err error) {
	return s.buildAt(ctx, tx, room, p, time.Time{})
}

// buildAt is build with the event's origin_server_ts set to at (the zero time: now).
func (s *Service) buildAt(ctx context.Context, tx *sqldb.Tx, room *roomRow, p *gomatrixserverlib.ProtoEvent, at time.Time) (ev gomatrixserverlib.PDU, err error) {
	if at.IsZero() {
		at = time.Now()
	}
	defer func() {
		if rec := recover(); rec != nil {
			ev, err = nil, fmt.Errorf("building %s event: gomatrixserverlib panicked: %v", p.Type, rec)
		}
	}()
	if len(p.Content) == 0 || p.Content[0] != '{' || !json.Valid(p.Content) {
		return nil, matrix.BadJSON("content of %s must be a JSON object", p.Type)
	}
	if p.Type != spec.MRoomCreate || !room.version.DomainlessRoomIDs() {
		p.RoomID = room.id
	}
	prev := room.extremities
	if len(prev) > maxPrevEvents {
		prev = prev[len(prev)-maxPrevEvents:]
	}
	p.PrevEvents = append([]string{}, prev...) // never a typed nil: that would encode as null
	p.Depth = room.depth + 1
	if p.Depth > maxDepth {
		p.Depth = maxDepth
	}

	needed, err := gomatrixserverlib.StateNeededForProtoEvent(p)
	if err != nil {
		return nil, matrix.BadJSON("invalid %s event: %v", p.Type, err)
	}
	var authEvents []gomatrixserverlib.PDU
	if tuples := needed.Tuples(); len(tuples) > 0 && tx != nil {
		evs, err := currentStateEvents(ctx, tx, room.nid, tuples)
		if err != nil {
			return nil, fmt.Errorf("loading auth events: %w", err)
		}
		for _, e := range evs {
			authEvents = append(authEvents, e.PDU)
		}
	}
	provider, err := gomatrixserverlib.NewAuthEvents(authEvents)
	if err != nil {
		return nil, fmt.Errorf("collecting auth events: %w", err)
	}
	if p.Type == spec.MRoomPowerLevels && room.version.PrivilegedCreators() {
		if create, _ := provider.Create(); create != nil {
			if err := checkCreatorsNotInUsers(create, p.Content); err != nil {
				return nil, err
			}
		}
	}
	eb := room.version.NewEventBuilderFromProtoEvent(p)
	if err := eb.AddAuthEvents(provider); err != nil {
		return nil, matrix.BadJSON("invalid %s event: %v", p.Type, err)
	}
	ev, err = eb.Build(at, spec.ServerName(s.cfg.ServerName), s.cfg.KeyID, s.cfg.PrivateKey)
	if err != nil {
		var ve gomatrixserverlib.EventValidationError
		if errors.As(err, &ve) && ve.Code == gomatrixserverlib.EventValidationTooLarge {
			return nil, matrix.Errorf(http.StatusRequestEntityTooLarge, matrix.CodeTooLarge, "%s", ve.Message)
		}
		return nil, matrix.BadJSON("invalid %s event: %v", p.Type, err)
	}
	if err := allowedBy(ev, provider); err != nil {
		return nil, err
	}
	_ = ev.EventID() // computed lazily and cached unsynchronised: compute it before sharing
	return ev, nil
}

// maxDepth is the largest depth the spec allows (2^53 - 1).
const maxDepth = 1<<53 - 1

// persist stores ev, which must be authorised and whose prev_events must be exactly the room's
// forward extremities, as the room's newest event inside tx, and returns its stream position.
// It updates the forward extremities, the state snapshot, the current state, memberships and
// redactions, and room (in memory) to match.
func (s *Service) persist(ctx context.Context, tx *sqldb.Tx, room *roomRow, ev gomatrixserverlib.PDU, txn *Txn) (int64, error) {
	// Allocate the position last: on PostgreSQL it holds the sequence row until commit.
	pos, err := tx.NextSeq(ctx, "room_events")
	if err != nil {
		return 0, err
	}
	stateBefore, stateAfter := room.stateNID, room.stateNID
	chain := room.stateChain
	full := false
	sk := ev.StateKey()
	if sk != nil {
		full = room.stateNID == 0 || room.stateChain+1 >= maxSnapshotChain
		parent := room.stateNID
		if full {
			parent, chain = 0, 0
		} else {
			chain++
		}
		if stateAfter, err = insertSnapshot(ctx, tx, room.nid, parent); err != nil {
			return 0, err
		}
	}
	var js []byte
	if sk != nil {
		if js, err = s.servedJSON(ctx, tx, room, ev, nil); err != nil {
			return 0, err
		}
	}
	nid, err := insertEvent(ctx, tx, storedEvent{
		pdu: ev, roomNID: room.nid, streamPos: pos, stateBefore: stateBefore, stateAfter: stateAfter, txn: txn, js: js,
	})
	if err != nil {
		return 0, err
	}
	if sk != nil {
		if err := upsertCurrentState(ctx, tx, room.nid, ev.Type(), *sk, nid); err != nil {
			return 0, err
		}
		if full {
			err = copyCurrentState(ctx, tx, stateAfter, room.nid)
		} else {
			err = insertStateEntry(ctx, tx, stateAfter, ev.Type(), *sk, nid)
		}
		if err != nil {
			return 0, err
		}
		if ev.Type() == spec.MRoomMember {
			m, err := ev.Membership()
			if err != nil {
				return 0, fmt.Errorf("reading membership of %s: %w", ev.EventID(), err)
			}
			if err := upsertMembership(ctx, tx, room.nid, *sk, m, nid); err != nil {
				return 0, err
			}
		}
	}
	if ev.Type() == spec.MRoomRedaction && ev.Redacts() != "" {
		if err := s.recordRedaction(ctx, tx, room, ev); err != nil {
			return 0, err
		}
	}
	room.extremities = []string{ev.EventID()}
	room.depth = ev.Depth()
	room.stateNID, room.stateChain = stateAfter, chain
	if err := updateRoom(ctx, tx, room); err != nil {
		return 0, err
	}
	return pos, nil
}

// checkLocalRedaction refuses a local user's redaction of someone else's event unless the
// user's power level reaches the room's redact level. Redacting an unknown event is allowed
// (it is applied if the event arrives later).
func (s *Service) checkLocalRedaction(ctx context.Context, tx *sqldb.Tx, room *roomRow, sender, targetID string) error {
	var targetSender string
	var targetRoom int64
	err := tx.QueryRow(ctx, `SELECT sender, room_nid FROM events WHERE event_id = $1`, targetID).Scan(&targetSender, &targetRoom)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("looking up redacted event %s: %w", targetID, err)
	}
	if targetRoom != room.nid {
		return matrix.BadJSON("event %s is not in room %s", targetID, room.id)
	}
	if targetSender == sender {
		return nil
	}
	level, redact, err := s.powerToRedact(ctx, tx, room, sender)
	if err != nil {
		return err
	}
	if level < redact {
		return matrix.Forbidden("%s may not redact events of other users: power level %d < %d", sender, level, redact)
	}
	return nil
}

// powerToRedact returns sender's power level and the room's redact level from the current state.
func (s *Service) powerToRedact(ctx context.Context, q querier, room *roomRow, sender string) (level, redact int64, err error) {
	evs, err := currentStateEvents(ctx, q, room.nid, []gomatrixserverlib.StateKeyTuple{
		{EventType: spec.MRoomCreate}, {EventType: spec.MRoomPowerLevels},
	})
	if err != nil {
		return 0, 0, fmt.Errorf("loading power levels: %w", err)
	}
	var create, pl gomatrixserverlib.PDU
	for _, e := range evs {
		switch e.PDU.Type() {
		case spec.MRoomCreate:
			create = e.PDU
		case spec.MRoomPowerLevels:
			pl = e.PDU
		}
	}
	if create != nil && room.version.PrivilegedCreators() && slices.Contains(gomatrixserverlib.CreatorsFromCreateEvent(create), sender) {
		return gomatrixserverlib.CreatorPowerLevel, 50, nil
	}
	if pl == nil {
		if create != nil && string(create.SenderID()) == sender {
			return 100, 50, nil
		}
		return 0, 50, nil
	}
	c, err := pl.PowerLevels()
	if err != nil {
		return 0, 0, fmt.Errorf("parsing power levels: %w", err)
	}
	return c.UserLevel(spec.SenderID(sender)), c.Redact, nil
}

// recordRedaction stores the redaction red and, when its target is known and in the same
// room and the redaction is permitted (same sender domain, or enough power), replaces the
// target's stored JSON by its redacted form.
func (s *Service) recordRedaction(ctx context.Context, tx *sqldb.Tx, room *roomRow, red gomatrixserverlib.PDU) error {
	if _, err := tx.Exec(ctx, `INSERT INTO redactions (redaction_id, redacts_id) VALUES ($1, $2)`,
		red.EventID(), red.Redacts()); err != nil {
		return fmt.Errorf("recording redaction %s: %w", red.EventID(), err)
	}
	return s.applyRedaction(ctx, tx, room, red.EventID(), string(red.SenderID()), red.Redacts())
}

// applyRedaction redacts the stored target of a redaction if permitted; see recordRedaction.
func (s *Service) applyRedaction(ctx context.Context, tx *sqldb.Tx, room *roomRow, redactionID, redactionSender, targetID string) error {
	var (
		nid, roomNID int64
		js           []byte
		sender       string
		redacted     bool
	)
	err := tx.QueryRow(ctx, `SELECT event_nid, room_nid, event_json, sender, redacted FROM events WHERE event_id = $1`, targetID).
		Scan(&nid, &roomNID, &js, &sender, &redacted)
	if errors.Is(err, sql.ErrNoRows) {
		return nil // applied if the target arrives
	}
	if err != nil {
		return fmt.Errorf("loading redacted event %s: %w", targetID, err)
	}
	if roomNID != room.nid || redacted {
		return nil
	}
	if domainOf(sender) != domainOf(redactionSender) {
		level, redact, err := s.powerToRedact(ctx, tx, room, redactionSender)
		if err != nil {
			return err
		}
		if level < redact {
			return nil
		}
	}
	out, err := room.version.RedactEventJSON(js)
	if err != nil {
		return fmt.Errorf("redacting %s: %w", targetID, err)
	}
	if out, err = s.withRedactedBecause(ctx, tx, out, redactionID); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `UPDATE events SET event_json = $1, redacted = TRUE, redacted_by = $2 WHERE event_nid = $3`,
		out, redactionID, nid); err != nil {
		return fmt.Errorf("storing redacted %s: %w", targetID, err)
	}
	if _, err := tx.Exec(ctx, `UPDATE redactions SET applied = TRUE WHERE redaction_id = $1`, redactionID); err != nil {
		return fmt.Errorf("marking redaction %s applied: %w", redactionID, err)
	}
	// A redacted state event may be part of the room's directory summary (its name or
	// topic); the state snapshot does not change, so mark the entry stale by hand.
	if gjson.GetBytes(js, "state_key").Exists() {
		if _, err := tx.Exec(ctx, `UPDATE published_rooms SET state_nid = -1 WHERE room_nid = $1`, room.nid); err != nil {
			return fmt.Errorf("marking the directory entry of a redacted state event stale: %w", err)
		}
	}
	return nil
}

// domainOf returns the server name of a user ID, or "".
func domainOf(userID string) string {
	_, server, err := matrix.SplitID('@', userID)
	if err != nil {
		return ""
	}
	return server
}

// preV11 reports whether ver keeps redacts only at the top level (room versions 1–10).
func preV11(ver gomatrixserverlib.IRoomVersion) bool {
	switch ver.Version() {
	case gomatrixserverlib.RoomVersionV11, gomatrixserverlib.RoomVersionV12:
		return false
	}
	return true
}

// setContentKey returns content (a JSON object) with key set to value.
func setContentKey(content json.RawMessage, key, value string) (spec.RawJSON, error) {
	m := map[string]json.RawMessage{}
	if len(content) > 0 {
		if err := json.Unmarshal(content, &m); err != nil {
			return nil, matrix.BadJSON("content must be a JSON object")
		}
	}
	m[key], _ = json.Marshal(value)
	out, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encoding content: %w", err)
	}
	return out, nil
}

// checkUserID returns 400 M_INVALID_PARAM unless id is a user ID gmsl can handle.
func checkUserID(id string) error {
	if _, err := spec.NewUserID(id, true); err != nil {
		return matrix.InvalidParam("invalid user ID %q", id)
	}
	return nil
}

// randomString returns n random characters from [A-Za-z].
func randomString(n int) string {
	const letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	return string(b)
}

// withRedactedBecause returns the redacted event JSON js with unsigned.redacted_because set to
// the redaction redactionID in the client format, so that every reader serves it.
func (s *Service) withRedactedBecause(ctx context.Context, tx *sqldb.Tx, js []byte, redactionID string) ([]byte, error) {
	reds, err := eventsByID(ctx, tx, []string{redactionID})
	if err != nil {
		return nil, fmt.Errorf("loading redaction %s: %w", redactionID, err)
	}
	if len(reds) == 0 {
		return js, nil
	}
	red := reds[0].PDU
	because := map[string]any{
		"content": json.RawMessage(red.Content()), "event_id": red.EventID(), "origin_server_ts": red.OriginServerTS(),
		"sender": string(red.SenderID()), "type": red.Type(), "room_id": red.RoomID().String(), "unsigned": map[string]any{},
	}
	if r := red.Redacts(); r != "" {
		because["redacts"] = r
	}
	b, err := json.Marshal(because)
	if err != nil {
		return nil, fmt.Errorf("encoding redacted_because: %w", err)
	}
	out, err := sjson.SetRawBytes(js, "unsigned", append(append([]byte(`{"redacted_because":`), b...), '}'))
	if err != nil {
		return nil, fmt.Errorf("adding redacted_because: %w", err)
	}
	return out, nil
}
