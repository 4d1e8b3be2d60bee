package roomserver

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/sqldb"
)

// This file is roomserver's storage: every SQL statement of the package is here. Queries are
// written once for both databases (PostgreSQL placeholders; sqldb rewrites them for SQLite).

// maxSnapshotChain is how many delta snapshots may follow a full one before the next state
// event writes a full snapshot again. Reading a state touches one full snapshot plus at most
// this many one-row deltas; writing a state event writes one row except once per this many.
const maxSnapshotChain = 64

// querier is what both *sqldb.DB and *sqldb.Tx offer for reading.
type querier interface {
	Query(ctx context.Context, q string, args ...any) (*sql.Rows, error)
	QueryRow(ctx context.Context, q string, args ...any) *sql.Row
}

var (
	_ querier = (*sqldb.DB)(nil)
	_ querier = (*sqldb.Tx)(nil)
)

// roomRow is a room's row, read under the room's lock by a writer.
type roomRow struct {
	roomInfo
	id          string
	extremities []string
	depth       int64
	stateNID    int64
	stateChain  int64
}

// roomInfo returns the immutable part of the row of roomID, from the cache or the database.
func (s *Service) roomInfo(ctx context.Context, roomID string) (roomInfo, error) {
	if v, ok := s.rooms.Load(roomID); ok {
		return v.(roomInfo), nil
	}
	var (
		ri  roomInfo
		ver string
	)
	err := s.db.QueryRow(ctx, `SELECT room_nid, room_version FROM rooms WHERE room_id = $1`, roomID).Scan(&ri.nid, &ver)
	if errors.Is(err, sql.ErrNoRows) {
		return roomInfo{}, errUnknownRoom(roomID)
	}
	if err != nil {
		return roomInfo{}, fmt.Errorf("looking up room %s: %w", roomID, err)
	}
	if ri.version, err = gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(ver)); err != nil {
		return roomInfo{}, fmt.Errorf("room %s has version %q: %w", roomID, ver, err)
	}
	s.rooms.Store(roomID, ri)
	return ri, nil
}

// lockRoomRow takes the cross-process room lock (PostgreSQL) and reads the room's row.
func (s *Service) lockRoomRow(ctx context.Context, tx *sqldb.Tx, roomID string, ri roomInfo) (*roomRow, error) {
	if s.db.Dialect() == sqldb.Postgres {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, ri.nid); err != nil {
			return nil, fmt.Errorf("locking room %s: %w", roomID, err)
		}
	}
	r := &roomRow{roomInfo: ri, id: roomID}
	var ext string
	err := tx.QueryRow(ctx, `SELECT extremities, depth, state_nid, state_chain FROM rooms WHERE room_nid = $1`, ri.nid).
		Scan(&ext, &r.depth, &r.stateNID, &r.stateChain)
	if err != nil {
		return nil, fmt.Errorf("reading room %s: %w", roomID, err)
	}
	if err := json.Unmarshal([]byte(ext), &r.extremities); err != nil {
		return nil, fmt.Errorf("decoding extremities of room %s: %w", roomID, err)
	}
	return r, nil
}

// insertRoom creates the row of a new room and returns it.
func insertRoom(ctx context.Context, tx *sqldb.Tx, roomID string, ver gomatrixserverlib.IRoomVersion) (*roomRow, error) {
	r := &roomRow{roomInfo: roomInfo{version: ver}, id: roomID}
	err := tx.QueryRow(ctx, `INSERT INTO rooms (room_id, room_version) VALUES ($1, $2) RETURNING room_nid`,
		roomID, string(ver.Version())).Scan(&r.nid)
	if err != nil {
		return nil, fmt.Errorf("inserting room %s: %w", roomID, err)
	}
	return r, nil
}

// updateRoom writes the mutable columns of r.
func updateRoom(ctx context.Context, tx *sqldb.Tx, r *roomRow) error {
	ext, err := json.Marshal(r.extremities)
	if err != nil {
		return fmt.Errorf("encoding extremities: %w", err)
	}
	_, err = tx.Exec(ctx, `UPDATE rooms SET extremities = $1, depth = $2, state_nid = $3, state_chain = $4 WHERE room_nid = $5`,
		string(ext), r.depth, r.stateNID, r.stateChain, r.nid)
	if err != nil {
		return fmt.Errorf("updating room %s: %w", r.id, err)
	}
	return nil
}

// storedEvent is an events row about to be written.
type storedEvent struct {
	pdu         gomatrixserverlib.PDU
	roomNID     int64
	streamPos   int64
	stateBefore int64
	stateAfter  int64
	txn         *Txn
	js          []byte // the JSON to store (the PDU with the unsigned section we serve); nil: pdu.JSON()
}

func nullable(s *string) any {
	if s == nil {
		return nil
	}
	return *s
}

// insertEvent writes an events row and returns its event_nid.
func insertEvent(ctx context.Context, tx *sqldb.Tx, e storedEvent) (int64, error) {
	var txnDevice, txnID any
	if e.txn != nil {
		txnDevice, txnID = e.txn.DeviceID, e.txn.TxnID
	}
	js := e.js
	if js == nil {
		js = e.pdu.JSON()
	}
	var nid int64
	err := tx.QueryRow(ctx, `INSERT INTO events (event_id, room_nid, stream_pos, type, state_key, sender, depth,
			state_before, state_after, event_json, txn_device, txn_id)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING event_nid`,
		e.pdu.EventID(), e.roomNID, e.streamPos, e.pdu.Type(), nullable(e.pdu.StateKey()), string(e.pdu.SenderID()),
		e.pdu.Depth(), e.stateBefore, e.stateAfter, js, txnDevice, txnID).Scan(&nid)
	if err != nil {
		return 0, fmt.Errorf("inserting event %s: %w", e.pdu.EventID(), err)
	}
	return nid, nil
}

// insertSnapshot allocates a snapshot whose entries are relative to parent (0: a full snapshot).
func insertSnapshot(ctx context.Context, tx *sqldb.Tx, roomNID, parent int64) (int64, error) {
	var nid int64
	err := tx.QueryRow(ctx, `INSERT INTO state_snapshots (room_nid, parent_nid) VALUES ($1, $2) RETURNING snapshot_nid`,
		roomNID, parent).Scan(&nid)
	if err != nil {
		return 0, fmt.Errorf("inserting state snapshot: %w", err)
	}
	return nid, nil
}

func insertStateEntry(ctx context.Context, tx *sqldb.Tx, snapshot int64, evType, stateKey string, eventNID int64) error {
	_, err := tx.Exec(ctx, `INSERT INTO state_entries (snapshot_nid, type, state_key, event_nid) VALUES ($1, $2, $3, $4)`,
		snapshot, evType, stateKey, eventNID)
	if err != nil {
		return fmt.Errorf("inserting state entry: %w", err)
	}
	return nil
}

// copyCurrentState fills the full snapshot with the room's current state.
func copyCurrentState(ctx context.Context, tx *sqldb.Tx, snapshot, roomNID int64) error {
	_, err := tx.Exec(ctx, `INSERT INTO state_entries (snapshot_nid, type, state_key, event_nid)
		SELECT CAST($1 AS BIGINT), type, state_key, event_nid FROM current_state WHERE room_nid = $2`, snapshot, roomNID)
	if err != nil {
		return fmt.Errorf("writing full state snapshot: %w", err)
	}
	return nil
}

func upsertCurrentState(ctx context.Context, tx *sqldb.Tx, roomNID int64, evType, stateKey string, eventNID int64) error {
	_, err := tx.Exec(ctx, `INSERT INTO current_state (room_nid, type, state_key, event_nid) VALUES ($1, $2, $3, $4)
		ON CONFLICT (room_nid, type, state_key) DO UPDATE SET event_nid = excluded.event_nid`,
		roomNID, evType, stateKey, eventNID)
	if err != nil {
		return fmt.Errorf("updating current state: %w", err)
	}
	return nil
}

func upsertMembership(ctx context.Context, tx *sqldb.Tx, roomNID int64, userID, membership string, eventNID int64) error {
	_, err := tx.Exec(ctx, `INSERT INTO memberships (room_nid, user_id, membership, event_nid) VALUES ($1, $2, $3, $4)
		ON CONFLICT (room_nid, user_id) DO UPDATE SET membership = excluded.membership, event_nid = excluded.event_nid`,
		roomNID, userID, membership, eventNID)
	if err != nil {
		return fmt.Errorf("updating membership of %s: %w", userID, err)
	}
	return nil
}

// txnEvent returns the ID of the event sender sent to the room with txn, or "".
func txnEvent(ctx context.Context, q querier, roomNID int64, sender string, txn *Txn) (string, error) {
	var id string
	err := q.QueryRow(ctx, `SELECT event_id FROM events WHERE room_nid = $1 AND sender = $2 AND txn_device = $3 AND txn_id = $4`,
		roomNID, sender, txn.DeviceID, txn.TxnID).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("looking up transaction %s: %w", txn.TxnID, err)
	}
	return id, nil
}

// Reading events. Every event query selects eventCols from eventFrom, possibly joined with
// more tables, and scans with scanEvent.

const eventCols = `e.event_id, e.event_json, e.redacted, COALESCE(e.redacted_by, ''), e.stream_pos,
	COALESCE(e.txn_id, ''), COALESCE(e.txn_device, ''), r.room_version`

const eventFrom = ` FROM events e JOIN rooms r ON r.room_nid = e.room_nid`

type scanner interface{ Scan(dest ...any) error }

// rawEvent is a scanned events row, not yet parsed.
type rawEvent struct {
	id, redactedBy, txnID, deviceID, version string
	json                                     []byte
	redacted                                 bool
	pos                                      int64
}

func (r *rawEvent) dest() []any {
	return []any{&r.id, &r.json, &r.redacted, &r.redactedBy, &r.pos, &r.txnID, &r.deviceID, &r.version}
}

func (r *rawEvent) parse() (*Event, error) {
	ver, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(r.version))
	if err != nil {
		return nil, fmt.Errorf("event %s: %w", r.id, err)
	}
	pdu, err := ver.NewEventFromTrustedJSONWithEventID(r.id, r.json, r.redacted)
	if err != nil {
		return nil, fmt.Errorf("parsing stored event %s: %w", r.id, err)
	}
	return &Event{PDU: pdu, StreamPos: r.pos, TxnID: r.txnID, DeviceID: r.deviceID}, nil
}

// eventLoader collects the redaction events to attach to loaded events.
type eventLoader struct {
	evs        []*Event
	redactedBy map[string][]*Event // redaction event ID → events it redacted
}

func (l *eventLoader) add(r *rawEvent) error {
	ev, err := r.parse()
	if err != nil {
		return err
	}
	l.evs = append(l.evs, ev)
	if r.redactedBy != "" {
		if l.redactedBy == nil {
			l.redactedBy = map[string][]*Event{}
		}
		l.redactedBy[r.redactedBy] = append(l.redactedBy[r.redactedBy], ev)
	}
	return nil
}

// finish loads the redaction events and sets RedactedBecause.
func (l *eventLoader) finish(ctx context.Context, q querier) ([]*Event, error) {
	if len(l.redactedBy) == 0 {
		return l.evs, nil
	}
	ids := make([]string, 0, len(l.redactedBy))
	for id := range l.redactedBy {
		ids = append(ids, id)
	}
	reds, err := eventsByID(ctx, q, ids)
	if err != nil {
		return nil, fmt.Errorf("loading redaction events: %w", err)
	}
	for _, red := range reds {
		for _, ev := range l.redactedBy[red.PDU.EventID()] {
			ev.RedactedBecause = red.PDU
		}
	}
	return l.evs, nil
}

// queryEvents runs a query selecting eventCols and returns the events in row order.
func queryEvents(ctx context.Context, q querier, query string, args ...any) ([]*Event, error) {
	rows, err := q.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var l eventLoader
	for rows.Next() {
		var r rawEvent
		if err := rows.Scan(r.dest()...); err != nil {
			return nil, err
		}
		if err := l.add(&r); err != nil {
			return nil, err
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return l.finish(ctx, q)
}

// inList returns "$first, $first+1, …" for n placeholders.
func inList(first, n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('$')
		b.WriteString(strconv.Itoa(first + i))
	}
	return b.String()
}

// eventsByID loads the known events among ids (without RedactedBecause), in no particular order.
func eventsByID(ctx context.Context, q querier, ids []string) ([]*Event, error) {
	var out []*Event
	for len(ids) > 0 {
		n := min(len(ids), 500)
		args := make([]any, n)
		for i, id := range ids[:n] {
			args[i] = id
		}
		rows, err := q.Query(ctx, `SELECT `+eventCols+eventFrom+` WHERE e.event_id IN (`+inList(1, n)+`)`, args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var r rawEvent
			if err := rows.Scan(r.dest()...); err != nil {
				rows.Close()
				return nil, err
			}
			ev, err := r.parse()
			if err != nil {
				rows.Close()
				return nil, err
			}
			out = append(out, ev)
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

// currentStateEvents loads the current state events of the room for the given (type,
// state_key) tuples; missing ones are skipped.
func currentStateEvents(ctx context.Context, q querier, roomNID int64, tuples []gomatrixserverlib.StateKeyTuple) ([]*Event, error) {
	if len(tuples) == 0 {
		return nil, nil
	}
	// One point lookup on the primary key per tuple: an OR of the tuples makes SQLite scan
	// the room's whole state, which grows with its membership.
	var b strings.Builder
	args := make([]any, 0, 1+2*len(tuples))
	args = append(args, roomNID)
	for i, t := range tuples {
		if i > 0 {
			b.WriteString(" UNION ALL ")
		}
		fmt.Fprintf(&b, `SELECT %s FROM current_state c
			JOIN events e ON e.event_nid = c.event_nid JOIN rooms r ON r.room_nid = e.room_nid
			WHERE c.room_nid = $1 AND c.type = $%d AND c.state_key = $%d`, eventCols, len(args)+1, len(args)+2)
		args = append(args, t.EventType, t.StateKey)
	}
	return queryEvents(ctx, q, b.String(), args...)
}

// snapshotEvents loads the full state of a snapshot: its full base plus the deltas up to it,
// the entry nearest the snapshot winning for each (type, state_key).
func snapshotEvents(ctx context.Context, q querier, snapshot int64) ([]*Event, error) {
	if snapshot == 0 {
		return nil, nil
	}
	rows, err := q.Query(ctx, `WITH RECURSIVE chain (nid, parent, lvl) AS (
			SELECT snapshot_nid, parent_nid, 0 FROM state_snapshots WHERE snapshot_nid = $1
			UNION ALL
			SELECT s.snapshot_nid, s.parent_nid, chain.lvl + 1 FROM state_snapshots s JOIN chain ON s.snapshot_nid = chain.parent
		)
		SELECT se.type, se.state_key, se.event_nid, `+eventCols+`
		FROM chain JOIN state_entries se ON se.snapshot_nid = chain.nid
		LEFT JOIN events e ON e.event_nid = se.event_nid LEFT JOIN rooms r ON r.room_nid = e.room_nid
		ORDER BY chain.lvl`, snapshot)
	if err != nil {
		return nil, fmt.Errorf("reading state snapshot %d: %w", snapshot, err)
	}
	defer rows.Close()
	seen := map[gomatrixserverlib.StateKeyTuple]bool{}
	var l eventLoader
	for rows.Next() {
		var (
			t        gomatrixserverlib.StateKeyTuple
			eventNID int64
			id, rb   sql.NullString
			txnID    sql.NullString
			device   sql.NullString
			version  sql.NullString
			redacted sql.NullBool
			pos      sql.NullInt64
			js       []byte
		)
		if err := rows.Scan(&t.EventType, &t.StateKey, &eventNID, &id, &js, &redacted, &rb, &pos, &txnID, &device, &version); err != nil {
			return nil, fmt.Errorf("reading state snapshot %d: %w", snapshot, err)
		}
		if seen[t] {
			continue
		}
		seen[t] = true
		if eventNID == 0 {
			continue // removed
		}
		if !id.Valid {
			return nil, fmt.Errorf("state snapshot %d names missing event %d", snapshot, eventNID)
		}
		r := rawEvent{id: id.String, json: js, redacted: redacted.Bool, redactedBy: rb.String, pos: pos.Int64,
			txnID: txnID.String, deviceID: device.String, version: version.String}
		if err := l.add(&r); err != nil {
			return nil, err
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading state snapshot %d: %w", snapshot, err)
	}
	return l.finish(ctx, q)
}

// userIDForSender maps a sender ID to a user ID. Myelin has no pseudo-ID rooms, so sender IDs
// are user IDs; it never returns (nil, nil), which would make gmsl panic.
func userIDForSender(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
	if senderID == "" {
		return nil, errors.New("empty sender")
	}
	u := senderID.ToUserID()
	if u == nil {
		return nil, fmt.Errorf("sender %q is not a user ID", senderID)
	}
	return u, nil
}
