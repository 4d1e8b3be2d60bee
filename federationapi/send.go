package federationapi

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/roomserver"
)

// This file serves PUT /send/{txnID}: remote PDUs and EDUs.

const (
	maxTxnPDUs       = 50
	maxTxnEDUs       = 100
	missingEventsMax = 10  // events asked of /get_missing_events at a time
	maxStateFetch    = 500 // events fetched one by one to complete a state from /state_ids
	txnRetention     = 24 * time.Hour
)

// txnGate serialises the processing of one (origin, txnID) within this process.
type txnGate struct {
	mu sync.Mutex
	m  map[string]chan struct{}
}

func (g *txnGate) enter(key string) (leave func()) {
	for {
		g.mu.Lock()
		ch, busy := g.m[key]
		if !busy {
			ch = make(chan struct{})
			g.m[key] = ch
			g.mu.Unlock()
			return func() {
				g.mu.Lock()
				delete(g.m, key)
				g.mu.Unlock()
				close(ch)
			}
		}
		g.mu.Unlock()
		<-ch
	}
}

// transaction is the body of PUT /send.
type transaction struct {
	Origin         string                  `json:"origin"`
	OriginServerTS int64                   `json:"origin_server_ts"`
	PDUs           []json.RawMessage       `json:"pdus"`
	EDUs           []gomatrixserverlib.EDU `json:"edus"`
}

func (in *Inbound) send(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	txnID := httpx.Var(r, "txnID")
	var txn transaction
	if err := httpx.UnmarshalObject(req.content, &txn); err != nil {
		return err
	}
	if len(txn.PDUs) > maxTxnPDUs || len(txn.EDUs) > maxTxnEDUs {
		return matrix.BadJSON("a transaction holds at most %d PDUs and %d EDUs", maxTxnPDUs, maxTxnEDUs)
	}
	ctx := r.Context()
	leave := in.txns.enter(string(req.origin) + "\x00" + txnID)
	defer leave()
	if prev, err := in.txnResponse(ctx, req.origin, txnID); err != nil {
		return err
	} else if prev != nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, err = w.Write(prev)
		return err
	}
	// Processing continues if the sender gives up waiting: the answer is remembered.
	pctx := context.WithoutCancel(ctx)
	resp := fclient.RespSend{PDUs: in.processPDUs(pctx, req.origin, txn.PDUs)}
	in.processEDUs(pctx, req.origin, txn.EDUs)
	b, err := json.Marshal(resp)
	if err != nil {
		return err
	}
	if err := in.rememberTxn(pctx, req.origin, txnID, b); err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, err = w.Write(b)
	return err
}

func (in *Inbound) txnResponse(ctx context.Context, origin spec.ServerName, txnID string) ([]byte, error) {
	var resp string
	err := in.db.QueryRow(ctx, `SELECT response FROM federation_txns WHERE origin = $1 AND txn_id = $2`, string(origin), txnID).Scan(&resp)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("looking up transaction %s from %s: %w", txnID, origin, err)
	}
	return []byte(resp), nil
}

func (in *Inbound) rememberTxn(ctx context.Context, origin spec.ServerName, txnID string, resp []byte) error {
	now := time.Now()
	return in.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO federation_txns (origin, txn_id, response, created_ts) VALUES ($1, $2, $3, $4)
			ON CONFLICT (origin, txn_id) DO NOTHING`, string(origin), txnID, string(resp), now.UnixMilli()); err != nil {
			return fmt.Errorf("remembering transaction %s from %s: %w", txnID, origin, err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM federation_txns WHERE created_ts < $1`, now.Add(-txnRetention).UnixMilli()); err != nil {
			return fmt.Errorf("expiring transactions: %w", err)
		}
		return nil
	})
}

// processPDUs verifies and inputs each PDU; one failing never fails the others. PDUs of
// unknown rooms are skipped without a result, as Synapse does.
func (in *Inbound) processPDUs(ctx context.Context, origin spec.ServerName, raws []json.RawMessage) map[string]fclient.PDUResult {
	results := map[string]fclient.PDUResult{}
	var evs []gomatrixserverlib.PDU
	// Nothing is stored before the second loop, so one ACL check per room serves the
	// whole transaction.
	acl := map[string]error{}
	for _, raw := range raws {
		roomID := gjson.GetBytes(raw, "room_id").Str
		if roomID == "" {
			continue
		}
		ver, err := in.roomVersion(ctx, roomID)
		if err != nil {
			if !errors.Is(err, sqldb.ErrNotFound) {
				in.log.Warn("loading room of inbound PDU", "room_id", roomID, "error", err)
			}
			continue
		}
		ev, err := parsePDU(ver, raw)
		if err != nil {
			in.log.Debug("dropping malformed PDU", "origin", origin, "error", err)
			continue
		}
		aclErr, checked := acl[roomID]
		if !checked {
			aclErr = in.checkACL(ctx, roomID, origin)
			acl[roomID] = aclErr
		}
		if aclErr != nil {
			results[ev.EventID()] = fclient.PDUResult{Error: aclErr.Error()}
			continue
		}
		if err := gomatrixserverlib.VerifyEventSignatures(ctx, ev, in.keys, userIDForSender); err != nil {
			results[ev.EventID()] = fclient.PDUResult{Error: fmt.Sprintf("signature check failed: %v", err)}
			continue
		}
		evs = append(evs, ev)
	}
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].Depth() < evs[j].Depth() })
	for _, ev := range evs {
		if err := in.processPDU(ctx, origin, ev, true); err != nil {
			in.log.Info("inbound PDU not accepted", "event_id", ev.EventID(), "room_id", ev.RoomID().String(), "origin", origin, "error", err)
			results[ev.EventID()] = fclient.PDUResult{Error: err.Error()}
			continue
		}
		results[ev.EventID()] = fclient.PDUResult{}
	}
	return results
}

// processPDU inputs ev, fetching from origin the auth events it lacks and, for a pushed
// event, the missing prev_events through /get_missing_events; for a pulled event (pushed is
// false), the state after missing prev_events through /state_ids.
func (in *Inbound) processPDU(ctx context.Context, origin spec.ServerName, ev gomatrixserverlib.PDU, pushed bool) error {
	ver, err := gomatrixserverlib.GetRoomVersion(ev.Version())
	if err != nil {
		return err
	}
	opts := roomserver.InputOptions{}
	var authTried, prevTried, oobTried bool
	for {
		res, err := in.rooms.InputEvent(ctx, ev, opts)
		var me *roomserver.MissingEventsError
		if !errors.As(err, &me) || in.remote == nil {
			if err == nil && res.SoftFailed {
				return nil // accepted, but not applied: the sender is not told
			}
			return err
		}
		if pushed && !oobTried {
			oobTried = true
			if handled, oerr := in.outOfBandMembership(ctx, ev); handled || oerr != nil {
				return oerr
			}
		}
		switch {
		case me.Auth && !authTried:
			authTried = true
			in.fetchAuthEvents(ctx, origin, ver, ev, me.IDs)
		case !me.Auth && !prevTried && pushed:
			prevTried = true
			in.fetchMissingEvents(ctx, origin, ver, ev)
		case !me.Auth && !prevTried:
			prevTried = true
			states, ferr := in.statesAfter(ctx, origin, ver, ev.RoomID().String(), me.IDs)
			if ferr != nil {
				return fmt.Errorf("fetching the state at missing prev_events: %w", ferr)
			}
			opts.PrevStates = states
		case !me.Auth && pushed:
			// The gap could not be filled: the sender's history is unavailable or
			// unverifiable. The event is dropped without failing the transaction (as
			// Synapse, which then works from incomplete state); a later event that names
			// known prev_events is accepted.
			in.log.Info("dropping pushed event with unfetchable prev_events", "event_id", ev.EventID(),
				"room_id", ev.RoomID().String(), "origin", origin, "missing", me.IDs)
			return nil
		default:
			return err
		}
	}
}

// outOfBandMembership stores ev out of band when it rescinds the invite of one of our users
// to a room this server is not in: the room's history cannot be fetched, yet the invitee must
// see the invite go. As Synapse, only the inviter may rescind this way. It reports whether ev
// was handled that way.
func (in *Inbound) outOfBandMembership(ctx context.Context, ev gomatrixserverlib.PDU) (bool, error) {
	if ev.Type() != spec.MRoomMember || ev.StateKey() == nil {
		return false, nil
	}
	if m, _ := ev.Membership(); m != spec.Leave {
		return false, nil
	}
	_, domain, err := gomatrixserverlib.SplitID('@', *ev.StateKey())
	if err != nil || string(domain) != in.cfg.ServerName {
		return false, nil
	}
	roomID := ev.RoomID().String()
	joined, err := in.rooms.ServerInRoom(ctx, roomID, in.cfg.ServerName)
	if err != nil || joined {
		return false, err
	}
	m, invite, err := in.rooms.Membership(ctx, roomID, *ev.StateKey())
	if err != nil || m != spec.Invite || invite == nil || invite.PDU.SenderID() != ev.SenderID() {
		return false, err
	}
	if _, err := in.rooms.StoreOutOfBandMembership(ctx, ev, nil); err != nil {
		return true, fmt.Errorf("storing out-of-band membership %s: %w", ev.EventID(), err)
	}
	return true, nil
}

// fetchAuthEvents fetches ev's auth chain from origin (/event_auth, else the missing events
// one by one via /event) and stores what it can as outliers.
func (in *Inbound) fetchAuthEvents(ctx context.Context, origin spec.ServerName, ver gomatrixserverlib.IRoomVersion, ev gomatrixserverlib.PDU, missing []string) {
	us := spec.ServerName(in.cfg.ServerName)
	var evs []gomatrixserverlib.PDU
	resp, err := in.remote.GetEventAuth(ctx, us, origin, ver.Version(), ev.RoomID().String(), ev.EventID())
	if err == nil {
		evs = resp.AuthEvents.UntrustedEvents(ver.Version())
	} else {
		in.log.Debug("fetching auth chain failed; fetching events", "event_id", ev.EventID(), "origin", origin, "error", err)
		evs = in.fetchEvents(ctx, origin, ver, missing)
	}
	in.storeOutliers(ctx, ev.RoomID().String(), evs)
}

// fetchEvents fetches ids from origin with /event, skipping failures.
func (in *Inbound) fetchEvents(ctx context.Context, origin spec.ServerName, ver gomatrixserverlib.IRoomVersion, ids []string) []gomatrixserverlib.PDU {
	us := spec.ServerName(in.cfg.ServerName)
	var (
		mu  sync.Mutex
		out []gomatrixserverlib.PDU
		wg  sync.WaitGroup
		sem = make(chan struct{}, 8)
	)
	for _, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			txn, err := in.remote.GetEvent(ctx, us, origin, id)
			if err != nil || len(txn.PDUs) == 0 {
				in.log.Debug("fetching event failed", "event_id", id, "origin", origin, "error", err)
				return
			}
			ev, err := parsePDU(ver, txn.PDUs[0])
			if err != nil || ev.EventID() != id {
				in.log.Debug("fetched event is invalid", "event_id", id, "origin", origin, "error", err)
				return
			}
			mu.Lock()
			out = append(out, ev)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// storeOutliers verifies evs (of roomID) and stores them as outliers, auth events first.
// Events that fail are skipped.
func (in *Inbound) storeOutliers(ctx context.Context, roomID string, evs []gomatrixserverlib.PDU) {
	pending := make([]gomatrixserverlib.PDU, 0, len(evs))
	for _, e := range evs {
		if e.RoomID().String() != roomID {
			continue
		}
		if err := gomatrixserverlib.VerifyEventSignatures(ctx, e, in.keys, userIDForSender); err != nil {
			in.log.Debug("fetched event has bad signatures", "event_id", e.EventID(), "error", err)
			continue
		}
		pending = append(pending, e)
	}
	sort.SliceStable(pending, func(i, j int) bool { return pending[i].Depth() < pending[j].Depth() })
	for len(pending) > 0 {
		var retry []gomatrixserverlib.PDU
		for _, e := range pending {
			err := in.rooms.InputOutlier(ctx, e)
			var me *roomserver.MissingEventsError
			if errors.As(err, &me) {
				retry = append(retry, e)
				continue
			}
			if err != nil {
				in.log.Debug("fetched event not stored", "event_id", e.EventID(), "error", err)
			}
		}
		if len(retry) == len(pending) {
			for _, e := range retry {
				in.log.Debug("fetched event lacks auth events", "event_id", e.EventID())
			}
			return
		}
		pending = retry
	}
}

// fetchMissingEvents asks origin for the events between the room's forward extremities and
// ev, and inputs them oldest first as pulled events.
func (in *Inbound) fetchMissingEvents(ctx context.Context, origin spec.ServerName, ver gomatrixserverlib.IRoomVersion, ev gomatrixserverlib.PDU) {
	roomID := ev.RoomID().String()
	ext, _, err := in.rooms.Extremities(ctx, roomID)
	if err != nil {
		in.log.Warn("loading forward extremities", "room_id", roomID, "error", err)
		return
	}
	resp, err := in.remote.LookupMissingEvents(ctx, spec.ServerName(in.cfg.ServerName), origin, roomID, fclient.MissingEvents{
		Limit: missingEventsMax, EarliestEvents: ext, LatestEvents: []string{ev.EventID()},
	}, ver.Version())
	if err != nil {
		in.log.Info("get_missing_events failed", "room_id", roomID, "origin", origin, "error", err)
		return
	}
	evs := resp.Events.UntrustedEvents(ver.Version())
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].Depth() < evs[j].Depth() })
	for _, e := range evs {
		if e.RoomID().String() != roomID || e.EventID() == ev.EventID() {
			continue
		}
		if err := gomatrixserverlib.VerifyEventSignatures(ctx, e, in.keys, userIDForSender); err != nil {
			in.log.Debug("missing event has bad signatures", "event_id", e.EventID(), "error", err)
			continue
		}
		if err := in.processPDU(ctx, origin, e, false); err != nil {
			in.log.Info("missing event not accepted", "event_id", e.EventID(), "error", err)
		}
	}
}

// statesAfter fetches from origin the state after each of the events prevIDs (/state_ids
// before it, plus the event itself when it is state), storing the events as outliers. It
// fails when a state event cannot be fetched or stored.
func (in *Inbound) statesAfter(ctx context.Context, origin spec.ServerName, ver gomatrixserverlib.IRoomVersion, roomID string, prevIDs []string) (map[string][]string, error) {
	us := spec.ServerName(in.cfg.ServerName)
	out := map[string][]string{}
	for _, prev := range prevIDs {
		ids, err := in.remote.LookupStateIDs(ctx, us, origin, roomID, prev)
		if err != nil {
			return nil, fmt.Errorf("/state_ids at %s: %w", prev, err)
		}
		want := append(append(append([]string{}, ids.StateEventIDs...), ids.AuthEventIDs...), prev)
		known, err := in.rooms.KnownEvents(ctx, want)
		if err != nil {
			return nil, err
		}
		var fetch []string
		for _, id := range want {
			if !known[id] {
				fetch = append(fetch, id)
			}
		}
		if len(fetch) > maxStateFetch {
			return nil, fmt.Errorf("/state_ids at %s names %d unknown events", prev, len(fetch))
		}
		in.storeOutliers(ctx, roomID, in.fetchEvents(ctx, origin, ver, fetch))
		state := append([]string{}, ids.StateEventIDs...)
		known, err = in.rooms.KnownEvents(ctx, append(state, prev))
		if err != nil {
			return nil, err
		}
		for _, id := range state {
			if !known[id] {
				return nil, fmt.Errorf("state event %s at %s could not be fetched", id, prev)
			}
		}
		if known[prev] {
			state = append(state, prev) // ignored by the room server unless it is a state event
		}
		out[prev] = state
	}
	return out, nil
}

// processEDUs hands typing notifications, receipts and presence to the EDU sink; other EDUs
// are accepted and dropped until end-to-end encryption lands. Failures are logged.
func (in *Inbound) processEDUs(ctx context.Context, origin spec.ServerName, edus []gomatrixserverlib.EDU) {
	for _, e := range edus {
		if err := in.processEDU(ctx, origin, e); err != nil {
			in.log.Info("inbound EDU not processed", "edu_type", e.Type, "origin", origin, "error", err)
		}
	}
}

func (in *Inbound) processEDU(ctx context.Context, origin spec.ServerName, e gomatrixserverlib.EDU) error {
	switch e.Type {
	case spec.MTyping:
		var c struct {
			RoomID string `json:"room_id"`
			UserID string `json:"user_id"`
			Typing bool   `json:"typing"`
		}
		if err := json.Unmarshal(e.Content, &c); err != nil {
			return fmt.Errorf("decoding typing: %w", err)
		}
		if err := in.checkEDUSender(ctx, origin, c.RoomID, c.UserID); err != nil {
			return err
		}
		if in.edus == nil {
			return nil
		}
		return in.edus.RemoteTyping(ctx, c.RoomID, c.UserID, c.Typing, 30*time.Second)
	case spec.MReceipt:
		var c map[string]map[string]map[string]struct {
			EventIDs []string `json:"event_ids"`
			Data     struct {
				TS       int64  `json:"ts"`
				ThreadID string `json:"thread_id"`
			} `json:"data"`
		}
		if err := json.Unmarshal(e.Content, &c); err != nil {
			return fmt.Errorf("decoding receipts: %w", err)
		}
		for roomID, types := range c {
			for rtype, users := range types {
				for userID, rec := range users {
					if err := in.checkEDUSender(ctx, origin, roomID, userID); err != nil {
						in.log.Debug("dropping receipt", "room_id", roomID, "user_id", userID, "error", err)
						continue
					}
					if in.edus == nil {
						continue
					}
					for _, id := range rec.EventIDs {
						if err := in.edus.RemoteReceipt(ctx, roomID, rtype, userID, id, rec.Data.ThreadID, rec.Data.TS); err != nil {
							return err
						}
					}
				}
			}
		}
		return nil
	case spec.MPresence:
		var c struct {
			Push []struct {
				UserID          string  `json:"user_id"`
				Presence        string  `json:"presence"`
				StatusMsg       *string `json:"status_msg"`
				LastActiveAgo   int64   `json:"last_active_ago"`
				CurrentlyActive bool    `json:"currently_active"`
			} `json:"push"`
		}
		if err := json.Unmarshal(e.Content, &c); err != nil {
			return fmt.Errorf("decoding presence: %w", err)
		}
		for _, p := range c.Push {
			u, err := spec.NewUserID(p.UserID, true)
			if err != nil || u.Domain() != origin || in.edus == nil {
				continue
			}
			if err := in.edus.RemotePresence(ctx, p.UserID, p.Presence, p.StatusMsg, p.LastActiveAgo, p.CurrentlyActive); err != nil {
				return err
			}
		}
		return nil
	default:
		// m.direct_to_device, m.device_list_update, m.signing_key_update: not until E2EE.
		in.log.Debug("dropping EDU", "edu_type", e.Type, "origin", origin)
		return nil
	}
}

// checkEDUSender checks that userID belongs to origin, that the room's ACL admits origin and
// that the user is joined to the room.
func (in *Inbound) checkEDUSender(ctx context.Context, origin spec.ServerName, roomID, userID string) error {
	u, err := spec.NewUserID(userID, true)
	if err != nil || u.Domain() != origin {
		return fmt.Errorf("user %q does not belong to %s", userID, origin)
	}
	if err := in.checkACL(ctx, roomID, origin); err != nil {
		return err
	}
	m, _, err := in.rooms.Membership(ctx, roomID, userID)
	if err != nil {
		return err
	}
	if m != spec.Join {
		return fmt.Errorf("%s is not joined to %s", userID, roomID)
	}
	return nil
}
