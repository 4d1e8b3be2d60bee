package federationapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/roomserver"
)

// This file serves the reads of room history: /state, /state_ids, /event, /event_auth,
// /backfill, /get_missing_events and /timestamp_to_event.

// maxBackfill bounds the events one /backfill or /get_missing_events answer holds.
const maxBackfill = 100

// checkRoomReader checks that the room is known, that its ACL admits origin and that origin
// has a user joined to it (403 M_FORBIDDEN otherwise).
func (in *Inbound) checkRoomReader(ctx context.Context, roomID string, origin spec.ServerName) error {
	if _, err := in.rooms.RoomVersion(ctx, roomID); err != nil {
		return err
	}
	if err := in.checkACL(ctx, roomID, origin); err != nil {
		return err
	}
	ok, err := in.rooms.ServerInRoom(ctx, roomID, string(origin))
	if err != nil {
		return err
	}
	if !ok {
		return matrix.Forbidden("%s is not in room %s", origin, roomID)
	}
	return nil
}

func (in *Inbound) state(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	roomID, eventID := httpx.Var(r, "roomID"), r.URL.Query().Get("event_id")
	if eventID == "" {
		return matrix.MissingParam("event_id is required")
	}
	if err := in.checkRoomReader(r.Context(), roomID, req.origin); err != nil {
		return err
	}
	state, chain, err := in.rooms.StateAtEvent(r.Context(), roomID, eventID)
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{"pdus": fedJSONs(state), "auth_chain": fedJSONs(chain)})
}

func (in *Inbound) stateIDs(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	roomID, eventID := httpx.Var(r, "roomID"), r.URL.Query().Get("event_id")
	if eventID == "" {
		return matrix.MissingParam("event_id is required")
	}
	if err := in.checkRoomReader(r.Context(), roomID, req.origin); err != nil {
		return err
	}
	state, chain, err := in.rooms.StateAtEvent(r.Context(), roomID, eventID)
	if err != nil {
		return err
	}
	ids := func(n int) []string { return make([]string, 0, n) }
	pdus, auth := ids(len(state)), ids(len(chain))
	for _, e := range state {
		pdus = append(pdus, e.EventID())
	}
	for _, e := range chain {
		auth = append(auth, e.EventID())
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{"pdu_ids": pdus, "auth_chain_ids": auth})
}

// event serves one event, redacted when the history visibility hides it from origin.
func (in *Inbound) event(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	ctx := r.Context()
	eventID := httpx.Var(r, "eventID")
	ev, err := in.rooms.Event(ctx, eventID)
	if err != nil {
		return err
	}
	roomID := ev.PDU.RoomID().String()
	if err := in.checkACL(ctx, roomID, req.origin); err != nil {
		return err
	}
	evs, err := in.rooms.Backfill(ctx, roomID, []string{eventID}, 1, string(req.origin))
	if err != nil {
		return err
	}
	pdu := ev.PDU
	if len(evs) == 1 {
		pdu = evs[0]
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{
		"origin": in.cfg.ServerName, "origin_server_ts": spec.AsTimestamp(time.Now()), "pdus": []json.RawMessage{fedJSON(pdu)},
	})
}

func (in *Inbound) eventAuth(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	roomID, eventID := httpx.Var(r, "roomID"), httpx.Var(r, "eventID")
	if err := in.checkRoomReader(r.Context(), roomID, req.origin); err != nil {
		return err
	}
	chain, err := in.rooms.EventAuth(r.Context(), roomID, eventID)
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{"auth_chain": fedJSONs(chain)})
}

func (in *Inbound) backfill(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	roomID := httpx.Var(r, "roomID")
	q := r.URL.Query()
	from := q["v"]
	if len(from) == 0 {
		return matrix.MissingParam("v is required")
	}
	limit, err := strconv.Atoi(q.Get("limit"))
	if err != nil || limit < 1 {
		return matrix.InvalidParam("limit must be a positive integer")
	}
	if err := in.checkRoomReader(r.Context(), roomID, req.origin); err != nil {
		return err
	}
	evs, err := in.rooms.Backfill(r.Context(), roomID, from, min(limit, maxBackfill), string(req.origin))
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{
		"origin": in.cfg.ServerName, "origin_server_ts": spec.AsTimestamp(time.Now()), "pdus": fedJSONs(evs),
	})
}

type missingEventsRequest struct {
	Limit          int      `json:"limit"`
	MinDepth       int64    `json:"min_depth"`
	EarliestEvents []string `json:"earliest_events"`
	LatestEvents   []string `json:"latest_events"`
}

func (in *Inbound) getMissingEvents(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	roomID := httpx.Var(r, "roomID")
	var body missingEventsRequest
	if err := httpx.UnmarshalObject(req.content, &body); err != nil {
		return err
	}
	if body.Limit <= 0 {
		body.Limit = 10
	}
	if err := in.checkRoomReader(r.Context(), roomID, req.origin); err != nil {
		return err
	}
	evs, err := in.rooms.MissingEvents(r.Context(), roomID, body.EarliestEvents, body.LatestEvents,
		min(body.Limit, maxBackfill), body.MinDepth, string(req.origin))
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{"events": fedJSONs(evs)})
}

// timestampRooms is the roomserver's lookup of an event by timestamp.
type timestampRooms interface {
	EventNearTimestamp(ctx context.Context, roomID string, ts int64, backward bool) (*roomserver.Event, error)
}

// timestampToEvent serves GET /v1/timestamp_to_event/{roomId}: the event of the room nearest ts
// in the direction dir (b or f), for a server in the room.
func (in *Inbound) timestampToEvent(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	roomID := httpx.Var(r, "roomID")
	q := r.URL.Query()
	ts, err := strconv.ParseInt(q.Get("ts"), 10, 64)
	if err != nil {
		return matrix.InvalidParam("ts must be an integer")
	}
	dir := q.Get("dir")
	if dir != "b" && dir != "f" {
		return matrix.InvalidParam("dir must be b or f")
	}
	if err := in.checkRoomReader(r.Context(), roomID, req.origin); err != nil {
		return err
	}
	ev, err := in.rooms.EventNearTimestamp(r.Context(), roomID, ts, dir == "b")
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{
		"event_id": ev.PDU.EventID(), "origin_server_ts": ev.PDU.OriginServerTS(),
	})
}
