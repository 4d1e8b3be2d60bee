package syncapi

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/myelin-chat/myelin/internal/sqldb"
)

// This file is syncapi's storage: every SQL statement of the package is here. Queries are
// written once for both databases (PostgreSQL placeholders; sqldb rewrites them for SQLite).

// Sequences of syncapi's streams.
const (
	seqReceipts = "sync_receipts"
	seqPresence = "sync_presence"
)

// store persists receipts, presence and forgotten rooms. It is safe for concurrent use.
type store struct{ db *sqldb.DB }

// Receipt is one user's receipt in a room.
type Receipt struct {
	RoomID    string
	Type      string // m.read or m.read.private
	UserID    string
	ThreadID  string // "" when unthreaded
	EventID   string
	TS        int64
	StreamPos int64
}

// putReceipt stores r (replacing the user's previous receipt of that type and thread) and
// returns its stream position.
func (st *store) putReceipt(ctx context.Context, r Receipt) (int64, error) {
	var pos int64
	err := st.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		var err error
		if pos, err = tx.NextSeq(ctx, seqReceipts); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, ts, stream_pos)
			VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (room_id, receipt_type, user_id, thread_id)
			DO UPDATE SET event_id = excluded.event_id, ts = excluded.ts, stream_pos = excluded.stream_pos`,
			r.RoomID, r.Type, r.UserID, r.ThreadID, r.EventID, r.TS, pos)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("storing receipt of %s in %s: %w", r.UserID, r.RoomID, err)
	}
	return pos, nil
}

const receiptCols = `room_id, receipt_type, user_id, thread_id, event_id, ts, stream_pos`

func scanReceipts(rows *sql.Rows, err error) ([]Receipt, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Receipt
	for rows.Next() {
		var r Receipt
		if err := rows.Scan(&r.RoomID, &r.Type, &r.UserID, &r.ThreadID, &r.EventID, &r.TS, &r.StreamPos); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// receiptsSince returns the receipts changed with after < position <= upTo, in stream order.
func (st *store) receiptsSince(ctx context.Context, after, upTo int64) ([]Receipt, error) {
	rs, err := scanReceipts(st.db.Query(ctx, `SELECT `+receiptCols+` FROM receipts
		WHERE stream_pos > $1 AND stream_pos <= $2 ORDER BY stream_pos`, after, upTo))
	if err != nil {
		return nil, fmt.Errorf("loading receipts: %w", err)
	}
	return rs, nil
}

// roomReceipts returns every receipt of the given rooms with position <= upTo.
func (st *store) roomReceipts(ctx context.Context, roomIDs []string, upTo int64) ([]Receipt, error) {
	var out []Receipt
	for len(roomIDs) > 0 {
		n := min(len(roomIDs), 400)
		args := []any{upTo}
		for _, id := range roomIDs[:n] {
			args = append(args, id)
		}
		rs, err := scanReceipts(st.db.Query(ctx, `SELECT `+receiptCols+` FROM receipts
			WHERE stream_pos <= $1 AND room_id IN (`+inList(2, n)+`)`, args...))
		if err != nil {
			return nil, fmt.Errorf("loading receipts: %w", err)
		}
		out = append(out, rs...)
		roomIDs = roomIDs[n:]
	}
	return out, nil
}

// Presence is a user's stored presence.
type Presence struct {
	UserID       string
	Presence     string // online, unavailable or offline
	StatusMsg    *string
	LastActiveTS int64
	StreamPos    int64
}

// setPresence records userID's presence. statusMsg nil keeps the stored message. The stream
// position moves (and changed is true) only when the state or the message changes; otherwise
// only the last-active time is refreshed when active is set.
func (st *store) setPresence(ctx context.Context, userID, presence string, statusMsg *string, setMsg bool, nowMS int64) (pos int64, changed bool, err error) {
	err = st.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		var (
			old    string
			oldMsg sql.NullString
		)
		err := tx.QueryRow(ctx, `SELECT presence, status_msg FROM presence WHERE user_id = $1`, userID).Scan(&old, &oldMsg)
		exists := err == nil
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		msg := statusMsg
		if !setMsg && oldMsg.Valid {
			m := oldMsg.String
			msg = &m
		}
		same := exists && old == presence && oldMsg.Valid == (msg != nil) && (msg == nil || *msg == oldMsg.String)
		if same {
			if presence == "online" {
				_, err = tx.Exec(ctx, `UPDATE presence SET last_active_ts = $1 WHERE user_id = $2`, nowMS, userID)
			}
			return err
		}
		if pos, err = tx.NextSeq(ctx, seqPresence); err != nil {
			return err
		}
		changed = true
		_, err = tx.Exec(ctx, `INSERT INTO presence (user_id, presence, status_msg, last_active_ts, stream_pos)
			VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (user_id) DO UPDATE SET presence = excluded.presence, status_msg = excluded.status_msg,
				last_active_ts = excluded.last_active_ts, stream_pos = excluded.stream_pos`,
			userID, presence, msg, nowMS, pos)
		return err
	})
	if err != nil {
		return 0, false, fmt.Errorf("storing presence of %s: %w", userID, err)
	}
	return pos, changed, nil
}

const presenceCols = `user_id, presence, status_msg, last_active_ts, stream_pos`

func scanPresence(rows *sql.Rows, err error) ([]Presence, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Presence
	for rows.Next() {
		var (
			p   Presence
			msg sql.NullString
		)
		if err := rows.Scan(&p.UserID, &p.Presence, &msg, &p.LastActiveTS, &p.StreamPos); err != nil {
			return nil, err
		}
		if msg.Valid {
			p.StatusMsg = &msg.String
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// presence returns userID's stored presence, or nil if none is stored.
func (st *store) presence(ctx context.Context, userID string) (*Presence, error) {
	ps, err := scanPresence(st.db.Query(ctx, `SELECT `+presenceCols+` FROM presence WHERE user_id = $1`, userID))
	if err != nil {
		return nil, fmt.Errorf("loading presence of %s: %w", userID, err)
	}
	if len(ps) == 0 {
		return nil, nil
	}
	return &ps[0], nil
}

// presenceSince returns the presence changed with after < position <= upTo.
func (st *store) presenceSince(ctx context.Context, after, upTo int64) ([]Presence, error) {
	ps, err := scanPresence(st.db.Query(ctx, `SELECT `+presenceCols+` FROM presence
		WHERE stream_pos > $1 AND stream_pos <= $2 ORDER BY stream_pos`, after, upTo))
	if err != nil {
		return nil, fmt.Errorf("loading presence changes: %w", err)
	}
	return ps, nil
}

// presenceOf returns the stored presence of the given users.
func (st *store) presenceOf(ctx context.Context, userIDs []string) ([]Presence, error) {
	var out []Presence
	for len(userIDs) > 0 {
		n := min(len(userIDs), 400)
		args := make([]any, n)
		for i, id := range userIDs[:n] {
			args[i] = id
		}
		ps, err := scanPresence(st.db.Query(ctx, `SELECT `+presenceCols+` FROM presence
			WHERE user_id IN (`+inList(1, n)+`)`, args...))
		if err != nil {
			return nil, fmt.Errorf("loading presence: %w", err)
		}
		out = append(out, ps...)
		userIDs = userIDs[n:]
	}
	return out, nil
}

// forget records that userID forgot roomID at its membership event at position pos.
func (st *store) forget(ctx context.Context, userID, roomID string, pos int64) error {
	_, err := st.db.Exec(ctx, `INSERT INTO forgotten_rooms (user_id, room_id, membership_pos) VALUES ($1, $2, $3)
		ON CONFLICT (user_id, room_id) DO UPDATE SET membership_pos = excluded.membership_pos`, userID, roomID, pos)
	if err != nil {
		return fmt.Errorf("forgetting %s for %s: %w", roomID, userID, err)
	}
	return nil
}

// forgotten returns the rooms userID forgot, each with the membership position it was
// forgotten at.
func (st *store) forgotten(ctx context.Context, userID string) (map[string]int64, error) {
	rows, err := st.db.Query(ctx, `SELECT room_id, membership_pos FROM forgotten_rooms WHERE user_id = $1`, userID)
	if err != nil {
		return nil, fmt.Errorf("loading forgotten rooms of %s: %w", userID, err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var (
			id  string
			pos int64
		)
		if err := rows.Scan(&id, &pos); err != nil {
			return nil, fmt.Errorf("loading forgotten rooms of %s: %w", userID, err)
		}
		out[id] = pos
	}
	return out, rows.Err()
}

// forgottenAt returns the membership position userID forgot roomID at, or -1.
func (st *store) forgottenAt(ctx context.Context, userID, roomID string) (int64, error) {
	var pos int64
	err := st.db.QueryRow(ctx, `SELECT membership_pos FROM forgotten_rooms WHERE user_id = $1 AND room_id = $2`,
		userID, roomID).Scan(&pos)
	if errors.Is(err, sql.ErrNoRows) {
		return -1, nil
	}
	if err != nil {
		return 0, fmt.Errorf("looking up forgotten room %s of %s: %w", roomID, userID, err)
	}
	return pos, nil
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
