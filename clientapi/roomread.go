package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/userapi"
)

// roomReader is what the room read endpoints need of the roomserver beyond the write side.
// History visibility is roomserver's VisibleEvents, shared with syncapi.
type roomReader interface {
	VisibleEvents(ctx context.Context, userID string, evs []*roomserver.Event) ([]*roomserver.Event, []string, error)
	HistoryVisibility(ctx context.Context, roomID string) (string, error)
	StateAfter(ctx context.Context, eventID string) ([]*roomserver.Event, error)
	StateEventAfter(ctx context.Context, eventID, evType, stateKey string) (*roomserver.Event, error)
	MemberEvents(ctx context.Context, roomID string, memberships, notMemberships []string) ([]*roomserver.Event, error)
	MemberEventsAfter(ctx context.Context, eventID string) ([]*roomserver.Event, error)
	EventAtOrBefore(ctx context.Context, roomID string, pos int64) (*roomserver.Event, error)
	RoomEventsAfter(ctx context.Context, roomID string, after int64, limit int) ([]*roomserver.Event, error)
}

// registerRoomReads adds the routes that read room state and events.
func (s *Service) registerRoomReads(c httpx.Prefix) {
	get := http.MethodGet
	c.Handle("/joined_rooms", s.authed(s.joinedRooms)).Methods(get)
	c.Handle("/rooms/{roomID}/state", s.authed(s.roomState)).Methods(get)
	c.Handle("/rooms/{roomID}/state/{type}", s.authed(s.stateEvent)).Methods(get)
	c.Handle("/rooms/{roomID}/state/{type}/", s.authed(s.stateEvent)).Methods(get)
	c.Handle("/rooms/{roomID}/state/{type}/{stateKey}", s.authed(s.stateEvent)).Methods(get)
	c.Handle("/rooms/{roomID}/event/{eventID}", s.authed(s.getEvent)).Methods(get)
	c.Handle("/rooms/{roomID}/joined_members", s.authed(s.joinedMembers)).Methods(get)
	c.Handle("/rooms/{roomID}/members", s.authed(s.members)).Methods(get)
}

// requireJoined returns 403 unless userID is joined to roomID.
func (s *Service) requireJoined(ctx context.Context, roomID, userID string) error {
	m, _, err := s.rooms.Membership(ctx, roomID, userID)
	if err != nil {
		return roomErr(err)
	}
	if m != "join" {
		return matrix.Forbidden("you are not joined to %s", roomID)
	}
	return nil
}

// roomView is which state of a room a user may read: the current state, or the state after
// their leave when they have departed.
type roomView struct {
	leave *roomserver.Event // nil: the current state
}

// viewOf returns what userID may read of roomID's state: the current state when joined or
// when the room is world-readable, the state as of their leave (or ban) when departed, as
// Synapse does. Anyone else, and any unknown room, gets 403 M_FORBIDDEN.
func (s *Service) viewOf(ctx context.Context, roomID, userID string) (roomView, error) {
	m, ev, err := s.rooms.Membership(ctx, roomID, userID)
	if err != nil {
		return roomView{}, roomErr(err)
	}
	switch {
	case m == spec.Join:
		return roomView{}, nil
	case (m == spec.Leave || m == spec.Ban) && ev != nil && ev.StreamPos > 0:
		return roomView{leave: ev}, nil
	}
	hv, err := s.rooms.HistoryVisibility(ctx, roomID)
	if errors.Is(err, sqldb.ErrNotFound) {
		return roomView{}, matrix.Forbidden("you are not a member of %s", roomID)
	}
	if err != nil {
		return roomView{}, err
	}
	if hv == roomserver.VisibilityWorldReadable {
		return roomView{}, nil
	}
	return roomView{}, matrix.Forbidden("you are not a member of %s", roomID)
}

func (s *Service) roomState(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	roomID := httpx.Var(r, "roomID")
	view, err := s.viewOf(r.Context(), roomID, dev.UserID)
	if err != nil {
		return err
	}
	var evs []*roomserver.Event
	if view.leave != nil {
		evs, err = s.rooms.StateAfter(r.Context(), view.leave.PDU.EventID())
	} else {
		evs, err = s.rooms.CurrentState(r.Context(), roomID)
	}
	if err != nil {
		return roomErr(err)
	}
	out := make([]matrix.ClientEvent, 0, len(evs))
	for _, e := range evs {
		out = append(out, matrix.ToClientEvent(e.PDU, matrix.ClientEventOptions{}))
	}
	return httpx.WriteJSON(w, http.StatusOK, out)
}

func (s *Service) stateEvent(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	roomID := httpx.Var(r, "roomID")
	view, err := s.viewOf(r.Context(), roomID, dev.UserID)
	if err != nil {
		return err
	}
	evType, stateKey := httpx.Var(r, "type"), httpx.Var(r, "stateKey")
	var ev *roomserver.Event
	if view.leave != nil {
		ev, err = s.rooms.StateEventAfter(r.Context(), view.leave.PDU.EventID(), evType, stateKey)
	} else {
		ev, err = s.rooms.CurrentStateEvent(r.Context(), roomID, evType, stateKey)
	}
	if errors.Is(err, sqldb.ErrNotFound) {
		return matrix.NotFound("state event not found")
	}
	if err != nil {
		return err
	}
	if r.URL.Query().Get("format") == "event" {
		return httpx.WriteJSON(w, http.StatusOK, matrix.ToClientEvent(ev.PDU, matrix.ClientEventOptions{}))
	}
	w.Header().Set("Content-Type", "application/json")
	_, err = w.Write(ev.PDU.Content())
	return err
}

// getEvent serves one event, if history visibility lets the user see it; otherwise, as for an
// unknown event, 404 M_NOT_FOUND.
func (s *Service) getEvent(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	roomID := httpx.Var(r, "roomID")
	ev, err := s.rooms.Event(r.Context(), httpx.Var(r, "eventID"))
	if err != nil || ev.PDU.RoomID().String() != roomID {
		return matrix.NotFound("event not found")
	}
	vis, ms, err := s.rooms.VisibleEvents(r.Context(), dev.UserID, []*roomserver.Event{ev})
	if err != nil {
		return err
	}
	if len(vis) == 0 {
		return matrix.NotFound("event not found")
	}
	o := matrix.ClientEventOptions{Membership: ms[0]}
	if ev.TxnID != "" && ev.DeviceID == dev.DeviceID && string(ev.PDU.SenderID()) == dev.UserID {
		o.TxnID = ev.TxnID // the sending device sees its transaction ID, as in /sync
	}
	if ev.RedactedBecause != nil {
		rb := matrix.ToClientEvent(ev.RedactedBecause, matrix.ClientEventOptions{})
		o.RedactedBecause = &rb
	}
	return httpx.WriteJSON(w, http.StatusOK, matrix.ToClientEvent(ev.PDU, o))
}

func (s *Service) joinedRooms(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	ids, err := s.rooms.RoomsForUser(r.Context(), dev.UserID, "join")
	if err != nil {
		return err
	}
	if ids == nil {
		ids = []string{}
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{"joined_rooms": ids})
}

func (s *Service) joinedMembers(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	roomID := httpx.Var(r, "roomID")
	if err := s.requireJoined(r.Context(), roomID, dev.UserID); err != nil {
		return err
	}
	evs, err := s.rooms.MemberEvents(r.Context(), roomID, []string{spec.Join}, nil)
	if err != nil {
		return roomErr(err)
	}
	type member struct {
		DisplayName *string `json:"display_name"` // null when unset, as Synapse
		AvatarURL   *string `json:"avatar_url"`
	}
	joined := make(map[string]member, len(evs))
	for _, e := range evs {
		if e.PDU.StateKey() == nil {
			continue
		}
		var c struct {
			DisplayName *string `json:"displayname"`
			AvatarURL   *string `json:"avatar_url"`
		}
		_ = json.Unmarshal(e.PDU.Content(), &c)
		joined[*e.PDU.StateKey()] = member{c.DisplayName, c.AvatarURL}
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{"joined": joined})
}
