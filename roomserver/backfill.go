package roomserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"sync"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/sqldb"
)

// Backfilled history. When a room's timeline here has a gap (an event whose prev_events are
// not in the timeline: the history before this server joined, or sent while it was out of the
// room), FillGaps asks a server in the room for the missing events (federation /backfill) and
// stores them at negative stream positions, below every position the room already has, so
// that paginating backwards reaches them after the events already held, and no /sync, which
// reads only positive positions, ever sees them. Each backfilled batch goes below the
// previous one, oldest event lowest. Events that were outliers (state from a send_join) are
// moved into the timeline rather than stored again.

// backfillLimit is how many events one /backfill request asks for.
const backfillLimit = 100

// Backfiller is the federation request FillGaps makes; fclient.FederationClient has it.
// DoRequestAndParseResponse sends requests fclient has no method for, signed here.
type Backfiller interface {
	Backfill(ctx context.Context, origin, s spec.ServerName, roomID string, limit int, eventIDs []string) (gomatrixserverlib.Transaction, error)
	DoRequestAndParseResponse(ctx context.Context, req *http.Request, result any) error
}

// backfillDeps is what backfilling needs, set by SetBackfill.
type backfillDeps struct {
	fed   Backfiller
	keys  gomatrixserverlib.JSONVerifier
	mu    sync.Mutex // serialises backfills, which allocate negative positions per room
	tried sync.Map   // event ID → struct{}: gaps already asked for that brought nothing
}

// FillGaps looks for gaps before evs, events of roomID from its timeline, and fetches the
// missing history from another server in the room. It reports whether any event was added.
// Without Config.BackfillKeys, or when no other server is in the room, it does nothing.
func (s *Service) FillGaps(ctx context.Context, roomID string, evs []*Event) (bool, error) {
	bf := s.backfill
	if bf == nil || len(evs) == 0 {
		return false, nil
	}
	var prevs []string
	for _, e := range evs {
		if e.StreamPos != 0 {
			prevs = append(prevs, e.PDU.PrevEventIDs()...)
		}
	}
	if len(prevs) == 0 {
		return false, nil
	}
	slices.Sort(prevs)
	prevs = slices.Compact(prevs)
	have, err := timelineEvents(ctx, s.db, prevs)
	if err != nil {
		return false, err
	}
	var missing []string
	for _, id := range prevs {
		if _, ok := bf.tried.Load(id); !have[id] && !ok {
			missing = append(missing, id)
		}
	}
	if len(missing) == 0 {
		return false, nil
	}
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return false, err
	}
	servers, err := s.ServersInRoom(ctx, roomID)
	if err != nil {
		return false, err
	}
	// Ask the servers of the events with the gap first.
	var order []string
	for _, e := range evs {
		if d := domainOf(string(e.PDU.SenderID())); d != "" && d != string(s.cfg.ServerName) {
			order = append(order, d)
		}
	}
	order = append(order, servers...)
	asked := map[string]bool{string(s.cfg.ServerName): true}
	for _, server := range order {
		if asked[server] {
			continue
		}
		asked[server] = true
		txn, err := bf.fed.Backfill(ctx, spec.ServerName(s.cfg.ServerName), spec.ServerName(server), roomID, backfillLimit, missing)
		if err != nil {
			s.log.Debug("backfill failed", "room", roomID, "server", server, "err", err)
			continue
		}
		added, err := s.storeBackfilled(ctx, ri, roomID, server, txn.PDUs, stateBeforeEarliest(ctx, s, evs))
		if err != nil {
			return false, err
		}
		if added > 0 {
			return true, nil
		}
	}
	for _, id := range missing {
		bf.tried.Store(id, struct{}{})
	}
	return false, nil
}

// timelineEvents returns which of ids are in the timeline (stream_pos <> 0) or were rejected;
// both end a gap.
func timelineEvents(ctx context.Context, q querier, ids []string) (map[string]bool, error) {
	out := make(map[string]bool, len(ids))
	for len(ids) > 0 {
		n := min(len(ids), 500)
		args := make([]any, n)
		for i, id := range ids[:n] {
			args[i] = id
		}
		rows, err := q.Query(ctx, `SELECT event_id FROM events WHERE stream_pos <> 0 AND event_id IN (`+inList(1, n)+`)
			UNION SELECT event_id FROM rejected_events WHERE event_id IN (`+inList(1, n)+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("looking up events: %w", err)
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, err
			}
			out[id] = true
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

// stateBeforeEarliest returns the state snapshot before the lowest-positioned of evs (0 when
// unknown), the state backfilled events filling the gap before them are read with.
func stateBeforeEarliest(ctx context.Context, s *Service, evs []*Event) int64 {
	var earliest *Event
	for _, e := range evs {
		if e.StreamPos != 0 && (earliest == nil || e.StreamPos < earliest.StreamPos) {
			earliest = e
		}
	}
	if earliest == nil {
		return 0
	}
	snaps, err := eventSnapshots(ctx, s.db, []string{earliest.PDU.EventID()})
	if err != nil {
		return 0
	}
	return snaps[earliest.PDU.EventID()].before
}

// storeBackfilled checks the events of a /backfill response from server and stores those not
// yet in the timeline below the room's lowest position, oldest lowest, read with the state
// snapshot state (their own state is not fetched). Each event must pass the auth rules against
// its own auth_events, which are taken from the events held here, from the same response, or
// else fetched from server (/event_auth) and stored as outliers. An event the rules reject is
// remembered as rejected, never served; one whose auth events cannot be had is left out. It
// returns how many it added.
func (s *Service) storeBackfilled(ctx context.Context, ri roomInfo, roomID, server string, raws []json.RawMessage, state int64) (int, error) {
	bf := s.backfill
	pdus := s.parseBackfilled(ctx, ri, roomID, raws)
	if len(pdus) == 0 {
		return 0, nil
	}
	ids := make([]string, len(pdus))
	for i, p := range pdus {
		ids[i] = p.EventID()
	}
	have, err := timelineEvents(ctx, s.db, ids)
	if err != nil {
		return 0, err
	}
	pdus = slices.DeleteFunc(pdus, func(p gomatrixserverlib.PDU) bool { return have[p.EventID()] })
	if len(pdus) == 0 {
		return 0, nil
	}
	// Oldest first: by depth, then by the order the server gave (newest first), reversed.
	slices.Reverse(pdus)
	sort.SliceStable(pdus, func(i, j int) bool { return pdus[i].Depth() < pdus[j].Depth() })
	if err := s.fetchBackfillAuth(ctx, ri, roomID, server, pdus); err != nil {
		return 0, err
	}

	bf.mu.Lock()
	defer bf.mu.Unlock()
	added := 0
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		var low *int64
		if err := tx.QueryRow(ctx, `SELECT MIN(stream_pos) FROM events WHERE room_nid = $1 AND stream_pos <> 0`, ri.nid).Scan(&low); err != nil {
			return fmt.Errorf("reading lowest position of %s: %w", roomID, err)
		}
		pos := int64(0)
		if low != nil && *low < 0 {
			pos = *low
		}
		// Positions go by depth; events are checked and stored in auth order, so that an
		// event's auth events from the same batch are stored before it. A rejected or
		// unauthorisable event leaves its position unused.
		positions := make(map[string]int64, len(pdus))
		pos -= int64(len(pdus)) + 1
		for _, p := range pdus {
			pos++
			positions[p.EventID()] = pos
		}
		room := &roomRow{roomInfo: ri, id: roomID}
		for _, p := range authOrder(pdus) {
			pos := positions[p.EventID()]
			if err := s.checkOwnAuthEvents(ctx, tx, room, p); err != nil {
				var me *MissingEventsError
				switch {
				case errors.Is(err, ErrRejected):
					s.log.Debug("backfill: event rejected", "event", p.EventID(), "err", err)
					if err := insertRejected(ctx, tx, ri.nid, p, false, 0, err.Error()); err != nil {
						return err
					}
					continue
				case errors.As(err, &me):
					s.log.Debug("backfill: auth events missing", "event", p.EventID(), "err", err)
					continue
				default:
					return err
				}
			}
			res, err := tx.Exec(ctx, `UPDATE events SET stream_pos = $1, state_before = $2, state_after = $2
				WHERE event_id = $3 AND stream_pos = 0`, pos, state, p.EventID())
			if err != nil {
				return fmt.Errorf("moving outlier %s into the timeline: %w", p.EventID(), err)
			}
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n > 0 {
				added++
				continue
			}
			if _, err := insertEvent(ctx, tx, storedEvent{pdu: p, roomNID: ri.nid, streamPos: pos, stateBefore: state, stateAfter: state}); err != nil {
				if sqldb.IsUniqueViolation(err) {
					return errors.Join(errBackfillRace, err)
				}
				return err
			}
			added++
		}
		return nil
	})
	if errors.Is(err, errBackfillRace) {
		return 0, nil
	}
	return added, err
}

// parseBackfilled parses events fetched from another server for roomID, keeping those that are
// valid events of the room with good signatures, each once.
func (s *Service) parseBackfilled(ctx context.Context, ri roomInfo, roomID string, raws []json.RawMessage) []gomatrixserverlib.PDU {
	var pdus []gomatrixserverlib.PDU
	seen := map[string]bool{}
	for _, raw := range raws {
		ev, err := ri.version.NewEventFromUntrustedJSON(raw)
		if err != nil {
			s.log.Debug("backfill: bad event", "room", roomID, "err", err)
			continue
		}
		if ev.RoomID().String() != roomID || seen[ev.EventID()] {
			continue
		}
		if err := gomatrixserverlib.VerifyEventSignatures(ctx, ev, s.backfill.keys, userIDForSender); err != nil {
			s.log.Debug("backfill: bad signature", "event", ev.EventID(), "err", err)
			continue
		}
		seen[ev.EventID()] = true
		pdus = append(pdus, ev)
	}
	return pdus
}

// maxAuthFetches bounds the /event_auth requests one backfilled batch makes.
const maxAuthFetches = 5

// fetchBackfillAuth makes sure the auth events of pdus, a backfilled batch, are stored or in
// the batch: for an event with some missing, it fetches the event's auth chain from server
// (/event_auth; one chain usually serves many events of the batch) and stores it as outliers,
// each authorised against its own auth events. Events whose auth events stay missing are
// left out when the batch is stored. Only failures to read or write the database are errors.
func (s *Service) fetchBackfillAuth(ctx context.Context, ri roomInfo, roomID, server string, pdus []gomatrixserverlib.PDU) error {
	known := make(map[string]bool, len(pdus))
	var authIDs []string
	for _, p := range pdus {
		known[p.EventID()] = true
		authIDs = append(authIDs, p.AuthEventIDs()...)
	}
	slices.Sort(authIDs)
	authIDs = slices.Compact(authIDs)
	held, err := s.KnownEvents(ctx, authIDs)
	if err != nil {
		return err
	}
	for id := range held {
		known[id] = true
	}
	fetches := 0
	for _, p := range pdus {
		if !slices.ContainsFunc(p.AuthEventIDs(), func(id string) bool { return !known[id] }) {
			continue
		}
		if fetches == maxAuthFetches || server == "" || s.backfill.fed == nil {
			s.log.Debug("backfill: auth events missing, not fetched", "event", p.EventID())
			continue
		}
		fetches++
		chain, err := s.fetchAuthChain(ctx, ri, roomID, server, p.EventID())
		if err != nil {
			s.log.Debug("backfill: fetching auth chain failed", "event", p.EventID(), "server", server, "err", err)
			continue
		}
		chain = slices.DeleteFunc(chain, func(a gomatrixserverlib.PDU) bool { return known[a.EventID()] })
		if len(chain) == 0 {
			continue
		}
		chainIDs := make([]string, len(chain))
		for i, a := range chain {
			chainIDs[i] = a.EventID()
		}
		if stored, err := s.KnownEvents(ctx, chainIDs); err != nil {
			return err
		} else if len(stored) > 0 {
			chain = slices.DeleteFunc(chain, func(a gomatrixserverlib.PDU) bool { return stored[a.EventID()] })
		}
		chain = authOrder(chain)
		errs, err := s.InputOutliers(ctx, chain)
		if err != nil {
			return fmt.Errorf("storing the auth chain of %s: %w", p.EventID(), err)
		}
		for i, a := range chain {
			// Rejected ones are known too: the event they authorise is rejected for them.
			var me *MissingEventsError
			if errs[i] == nil || !errors.As(errs[i], &me) {
				known[a.EventID()] = true
			}
			if errs[i] != nil {
				s.log.Debug("backfill: auth event not stored", "event", a.EventID(), "err", errs[i])
			}
		}
	}
	return nil
}

// fetchAuthChain asks server for the auth chain of eventID (federation /event_auth) and returns
// its valid, signed events of roomID.
func (s *Service) fetchAuthChain(ctx context.Context, ri roomInfo, roomID, server, eventID string) ([]gomatrixserverlib.PDU, error) {
	path := "/_matrix/federation/v1/event_auth/" + url.PathEscape(roomID) + "/" + url.PathEscape(eventID)
	req := fclient.NewFederationRequest(http.MethodGet, spec.ServerName(s.cfg.ServerName), spec.ServerName(server), path)
	if err := req.Sign(spec.ServerName(s.cfg.ServerName), s.cfg.KeyID, s.cfg.PrivateKey); err != nil {
		return nil, fmt.Errorf("signing event_auth request: %w", err)
	}
	hreq, err := req.HTTPRequest()
	if err != nil {
		return nil, fmt.Errorf("building event_auth request: %w", err)
	}
	var res struct {
		AuthChain []json.RawMessage `json:"auth_chain"`
	}
	if err := s.backfill.fed.DoRequestAndParseResponse(ctx, hreq, &res); err != nil {
		return nil, err
	}
	return s.parseBackfilled(ctx, ri, roomID, res.AuthChain), nil
}

// authOrder returns evs ordered so that each event comes after those of its auth events that
// are among evs, keeping the given order otherwise. An auth cycle (only a broken server makes
// one) is cut where the walk meets it again.
func authOrder(evs []gomatrixserverlib.PDU) []gomatrixserverlib.PDU {
	idx := make(map[string]int, len(evs))
	for i, e := range evs {
		idx[e.EventID()] = i
	}
	const (
		unseen = iota
		visiting
		placed
	)
	mark := make([]int, len(evs))
	out := make([]gomatrixserverlib.PDU, 0, len(evs))
	var visit func(i int)
	visit = func(i int) {
		if mark[i] != unseen {
			return
		}
		mark[i] = visiting
		for _, a := range evs[i].AuthEventIDs() {
			if j, ok := idx[a]; ok {
				visit(j)
			}
		}
		mark[i] = placed
		out = append(out, evs[i])
	}
	for i := range evs {
		visit(i)
	}
	return out
}

// errBackfillRace marks an event stored meanwhile by another path; the batch is dropped and
// the next page asks again.
var errBackfillRace = errors.New("backfilled event stored meanwhile")

// GapBefore reports whether some prev_event of ev is missing from the timeline here, so that
// other servers may hold history just before it.
func (s *Service) GapBefore(ctx context.Context, ev *Event) (bool, error) {
	prevs := ev.PDU.PrevEventIDs()
	if len(prevs) == 0 {
		return false, nil
	}
	have, err := timelineEvents(ctx, s.db, prevs)
	if err != nil {
		return false, err
	}
	return len(have) < len(prevs), nil
}

// RemoteEventNearTimestamp asks the other servers in roomID for their event nearest ts in the
// direction asked (federation /timestamp_to_event), backfills it with the history before it
// and returns it. It returns an error wrapping sqldb.ErrNotFound when no server has one.
func (s *Service) RemoteEventNearTimestamp(ctx context.Context, roomID string, ts int64, backward bool) (*Event, error) {
	bf := s.backfill
	if bf == nil {
		return nil, errUnknownEvent(fmt.Sprintf("near timestamp %d", ts))
	}
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return nil, err
	}
	servers, err := s.ServersInRoom(ctx, roomID)
	if err != nil {
		return nil, err
	}
	dir := "f"
	if backward {
		dir = "b"
	}
	path := "/_matrix/federation/v1/timestamp_to_event/" + url.PathEscape(roomID) +
		"?ts=" + strconv.FormatInt(ts, 10) + "&dir=" + dir
	for _, server := range servers {
		if server == string(s.cfg.ServerName) {
			continue
		}
		req := fclient.NewFederationRequest(http.MethodGet, spec.ServerName(s.cfg.ServerName), spec.ServerName(server), path)
		if err := req.Sign(spec.ServerName(s.cfg.ServerName), s.cfg.KeyID, s.cfg.PrivateKey); err != nil {
			return nil, fmt.Errorf("signing timestamp_to_event request: %w", err)
		}
		hreq, err := req.HTTPRequest()
		if err != nil {
			return nil, fmt.Errorf("building timestamp_to_event request: %w", err)
		}
		var res struct {
			EventID string `json:"event_id"`
		}
		if err := bf.fed.DoRequestAndParseResponse(ctx, hreq, &res); err != nil || res.EventID == "" {
			s.log.Debug("timestamp_to_event failed", "room", roomID, "server", server, "err", err)
			continue
		}
		have, err := timelineEvents(ctx, s.db, []string{res.EventID})
		if err != nil {
			return nil, err
		}
		if !have[res.EventID] {
			txn, err := bf.fed.Backfill(ctx, spec.ServerName(s.cfg.ServerName), spec.ServerName(server), roomID, backfillLimit, []string{res.EventID})
			if err != nil {
				s.log.Debug("backfill failed", "room", roomID, "server", server, "err", err)
				continue
			}
			if _, err := s.storeBackfilled(ctx, ri, roomID, server, txn.PDUs, s.lowestState(ctx, ri)); err != nil {
				return nil, err
			}
		}
		ev, err := s.Event(ctx, res.EventID)
		if err != nil || ev.StreamPos == 0 {
			continue
		}
		return ev, nil
	}
	return nil, errUnknownEvent(fmt.Sprintf("near timestamp %d", ts))
}

// lowestState returns the state snapshot before the room's lowest-positioned timeline event
// (0 when it has none).
func (s *Service) lowestState(ctx context.Context, ri roomInfo) int64 {
	var state int64
	err := s.db.QueryRow(ctx, `SELECT state_before FROM events WHERE room_nid = $1 AND stream_pos <> 0
		ORDER BY stream_pos ASC LIMIT 1`, ri.nid).Scan(&state)
	if err != nil {
		return 0
	}
	return state
}

// GapsBefore returns which of evs, events of one room, follow a gap: some prev_event is
// neither among evs nor in the timeline here. Only events from other servers are checked:
// this server builds its own events on its forward extremities, which are in the timeline,
// so a room with only local traffic costs no query.
func (s *Service) GapsBefore(ctx context.Context, evs []*Event) (map[string]bool, error) {
	inBatch := make(map[string]bool, len(evs))
	for _, e := range evs {
		inBatch[e.PDU.EventID()] = true
	}
	var prevs []string
	for _, e := range evs {
		if domainOf(string(e.PDU.SenderID())) == string(s.cfg.ServerName) {
			continue
		}
		for _, p := range e.PDU.PrevEventIDs() {
			if !inBatch[p] {
				prevs = append(prevs, p)
			}
		}
	}
	if len(prevs) == 0 {
		return nil, nil
	}
	slices.Sort(prevs)
	have, err := timelineEvents(ctx, s.db, slices.Compact(prevs))
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, e := range evs {
		if domainOf(string(e.PDU.SenderID())) == string(s.cfg.ServerName) {
			continue
		}
		for _, p := range e.PDU.PrevEventIDs() {
			if !inBatch[p] && !have[p] {
				out[e.PDU.EventID()] = true
			}
		}
	}
	return out, nil
}
