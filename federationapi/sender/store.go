package sender

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/myelin-chat/myelin/internal/sqldb"
)

// This file is the sender's storage: every SQL statement of the package is here.

// store persists the outbound queue. It is safe for concurrent use.
type store struct{ db *sqldb.DB }

// queued is one item a destination has yet to receive: a PDU or an EDU.
type queued struct {
	nid    int64
	pduNID int64  // 0 for an EDU
	json   []byte // the PDU or the EDU as sent
}

// outPDU is a PDU to enqueue for its destinations.
type outPDU struct {
	eventID string
	json    []byte
	dests   []string
}

// position returns the saved stream position named name, or ok false if none is saved.
func (st *store) position(ctx context.Context, name string) (pos int64, ok bool, err error) {
	err = st.db.QueryRow(ctx, `SELECT pos FROM sender_state WHERE name = $1`, name).Scan(&pos)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("reading sender position %s: %w", name, err)
	}
	return pos, true, nil
}

func setPosition(ctx context.Context, tx *sqldb.Tx, name string, pos int64) error {
	_, err := tx.Exec(ctx, `INSERT INTO sender_state (name, pos) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET pos = excluded.pos`, name, pos)
	if err != nil {
		return fmt.Errorf("saving sender position %s: %w", name, err)
	}
	return nil
}

// savePosition records pos as the position name has reached.
func (st *store) savePosition(ctx context.Context, name string, pos int64) error {
	return st.db.WithTx(ctx, func(tx *sqldb.Tx) error { return setPosition(ctx, tx, name, pos) })
}

// enqueuePDUs stores pdus for their destinations and moves the position name to pos, in one
// transaction, so that a crash either loses both or neither.
func (st *store) enqueuePDUs(ctx context.Context, name string, pos int64, pdus []outPDU) error {
	return st.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		for _, p := range pdus {
			if len(p.dests) == 0 {
				continue
			}
			var nid int64
			if err := tx.QueryRow(ctx, `INSERT INTO sender_pdus (event_id, pdu_json) VALUES ($1, $2) RETURNING pdu_nid`,
				p.eventID, p.json).Scan(&nid); err != nil {
				return fmt.Errorf("storing outbound PDU %s: %w", p.eventID, err)
			}
			for _, d := range p.dests {
				if _, err := tx.Exec(ctx, `INSERT INTO sender_queue (destination, pdu_nid) VALUES ($1, $2)`, d, nid); err != nil {
					return fmt.Errorf("queueing PDU %s for %s: %w", p.eventID, d, err)
				}
			}
		}
		return setPosition(ctx, tx, name, pos)
	})
}

// enqueueEDU stores edu (as sent, without destination) for each of dests.
func (st *store) enqueueEDU(ctx context.Context, edu []byte, dests []string) error {
	return st.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		for _, d := range dests {
			if _, err := tx.Exec(ctx, `INSERT INTO sender_queue (destination, edu_json) VALUES ($1, $2)`, d, edu); err != nil {
				return fmt.Errorf("queueing EDU for %s: %w", d, err)
			}
		}
		return nil
	})
}

// next returns the oldest items queued for dest, in order, up to maxPDUs PDUs and maxEDUs
// EDUs: it stops before the first item that would exceed either limit, so order is kept.
func (st *store) next(ctx context.Context, dest string, maxPDUs, maxEDUs int) ([]queued, error) {
	rows, err := st.db.Query(ctx, `SELECT q.queue_nid, COALESCE(q.pdu_nid, 0), COALESCE(p.pdu_json, q.edu_json)
		FROM sender_queue q LEFT JOIN sender_pdus p ON p.pdu_nid = q.pdu_nid
		WHERE q.destination = $1 ORDER BY q.queue_nid LIMIT $2`, dest, maxPDUs+maxEDUs)
	if err != nil {
		return nil, fmt.Errorf("reading the queue of %s: %w", dest, err)
	}
	defer rows.Close()
	var (
		out        []queued
		pdus, edus int
	)
	for rows.Next() {
		var q queued
		if err := rows.Scan(&q.nid, &q.pduNID, &q.json); err != nil {
			return nil, fmt.Errorf("reading the queue of %s: %w", dest, err)
		}
		if q.pduNID != 0 {
			if pdus == maxPDUs {
				break
			}
			pdus++
		} else {
			if edus == maxEDUs {
				break
			}
			edus++
		}
		out = append(out, q)
	}
	return out, rows.Err()
}

// delivered removes the items of dest up to and including queue_nid upTo, the PDUs no other
// destination still needs, and dest's failure record.
func (st *store) delivered(ctx context.Context, dest string, upTo int64, pduNIDs []int64) error {
	err := st.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM sender_queue WHERE destination = $1 AND queue_nid <= $2`, dest, upTo); err != nil {
			return fmt.Errorf("removing delivered items of %s: %w", dest, err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM sender_destinations WHERE destination = $1`, dest); err != nil {
			return fmt.Errorf("clearing failures of %s: %w", dest, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// PDUs are collected only after the queue rows are committed: two destinations delivering
	// the same PDU at once would otherwise each still see the other's row (PostgreSQL reads
	// committed data) and leave the PDU behind. Whichever collection starts last sees both.
	for len(pduNIDs) > 0 {
		n := min(len(pduNIDs), 500)
		args := make([]any, n)
		for i, id := range pduNIDs[:n] {
			args[i] = id
		}
		if _, err := st.db.Exec(ctx, `DELETE FROM sender_pdus WHERE pdu_nid IN (`+inList(1, n)+`)
			AND NOT EXISTS (SELECT 1 FROM sender_queue q WHERE q.pdu_nid = sender_pdus.pdu_nid)`, args...); err != nil {
			return fmt.Errorf("removing delivered PDUs: %w", err)
		}
		pduNIDs = pduNIDs[n:]
	}
	return nil
}

// failed records dest's consecutive failures and when to try it again (unix milliseconds).
func (st *store) failed(ctx context.Context, dest string, failures int, retryAtMS int64) error {
	return st.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO sender_destinations (destination, failures, retry_at) VALUES ($1, $2, $3)
			ON CONFLICT (destination) DO UPDATE SET failures = excluded.failures, retry_at = excluded.retry_at`,
			dest, failures, retryAtMS)
		if err != nil {
			return fmt.Errorf("recording failure of %s: %w", dest, err)
		}
		return nil
	})
}

// destState is a destination's failure record.
type destState struct {
	failures  int
	retryAtMS int64
}

// failure returns dest's failure record (zero if it has none).
func (st *store) failure(ctx context.Context, dest string) (destState, error) {
	var d destState
	err := st.db.QueryRow(ctx, `SELECT failures, retry_at FROM sender_destinations WHERE destination = $1`, dest).
		Scan(&d.failures, &d.retryAtMS)
	if errors.Is(err, sql.ErrNoRows) {
		return destState{}, nil
	}
	if err != nil {
		return destState{}, fmt.Errorf("reading failures of %s: %w", dest, err)
	}
	return d, nil
}

// pendingDestinations lists the destinations with queued items.
func (st *store) pendingDestinations(ctx context.Context) ([]string, error) {
	rows, err := st.db.Query(ctx, `SELECT DISTINCT destination FROM sender_queue`)
	if err != nil {
		return nil, fmt.Errorf("listing destinations with queued items: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			return nil, fmt.Errorf("listing destinations with queued items: %w", err)
		}
		out = append(out, d)
	}
	return out, rows.Err()
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
