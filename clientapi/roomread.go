package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/userapi"
)

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

func (s *Service) roomState(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	roomID := httpx.Var(r, "roomID")
	if err := s.requireJoined(r.Context(), roomID, dev.UserID); err != nil {
		return err
	}
	evs, err := s.rooms.CurrentState(r.Context(), roomID)
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
	if err := s.requireJoined(r.Context(), roomID, dev.UserID); err != nil {
		return err
	}
	ev, err := s.rooms.CurrentStateEvent(r.Context(), roomID, httpx.Var(r, "type"), httpx.Var(r, "stateKey"))
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

func (s *Service) getEvent(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	roomID := httpx.Var(r, "roomID")
	ev, err := s.rooms.Event(r.Context(), httpx.Var(r, "eventID"))
	if err != nil || ev.PDU.RoomID().String() != roomID {
		return matrix.NotFound("event not found")
	}
	if err := s.requireJoined(r.Context(), roomID, dev.UserID); err != nil {
		return matrix.NotFound("event not found")
	}
	return httpx.WriteJSON(w, http.StatusOK, matrix.ToClientEvent(ev.PDU, matrix.ClientEventOptions{}))
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
	evs, err := s.rooms.CurrentState(r.Context(), roomID)
	if err != nil {
		return roomErr(err)
	}
	type member struct {
		DisplayName string `json:"display_name,omitempty"`
		AvatarURL   string `json:"avatar_url,omitempty"`
	}
	joined := map[string]member{}
	for _, e := range evs {
		if e.PDU.Type() != "m.room.member" || e.PDU.StateKey() == nil {
			continue
		}
		var c struct {
			Membership  string `json:"membership"`
			DisplayName string `json:"displayname"`
			AvatarURL   string `json:"avatar_url"`
		}
		_ = json.Unmarshal(e.PDU.Content(), &c)
		if c.Membership == "join" {
			joined[*e.PDU.StateKey()] = member{c.DisplayName, c.AvatarURL}
		}
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{"joined": joined})
}
