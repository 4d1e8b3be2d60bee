package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/userapi"
)

// This file serves GET /_matrix/client/v1/rooms/{roomID}/hierarchy, the space hierarchy.
// The walk itself is roomserver's Hierarchy.

// hierarchyRooms is what the hierarchy endpoint needs of the room server.
type hierarchyRooms interface {
	Hierarchy(ctx context.Context, req roomserver.HierarchyRequest) (*roomserver.HierarchyPage, error)
}

// registerHierarchy adds the space hierarchy route.
func (s *Service) registerHierarchy(c httpx.Prefix) {
	c.Router.Handle("/_matrix/client/v1/rooms/{roomID}/hierarchy", s.authed(s.hierarchy)).Methods(http.MethodGet)
}

// hierarchyRoom is one room of the response: children_state is always present.
type hierarchyRoom struct {
	roomserver.HierarchyRoom
	ChildrenState []json.RawMessage `json:"children_state"`
}

type hierarchyResponse struct {
	Rooms     []hierarchyRoom `json:"rooms"`
	NextBatch string          `json:"next_batch,omitempty"`
}

func (s *Service) hierarchy(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	rooms := s.rooms
	q := r.URL.Query()
	req := roomserver.HierarchyRequest{RoomID: httpx.Var(r, "roomID"), UserID: dev.UserID, MaxDepth: -1, From: q.Get("from")}
	if v := q.Get("suggested_only"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return matrix.InvalidParam("suggested_only must be true or false")
		}
		req.SuggestedOnly = b
	}
	if v := q.Get("max_depth"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return matrix.InvalidParam("max_depth must be a non-negative integer")
		}
		req.MaxDepth = n
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return matrix.InvalidParam("limit must be a positive integer")
		}
		req.Limit = n
	}
	page, err := rooms.Hierarchy(r.Context(), req)
	if err != nil {
		return err
	}
	resp := hierarchyResponse{Rooms: make([]hierarchyRoom, 0, len(page.Rooms)), NextBatch: page.NextBatch}
	for _, room := range page.Rooms {
		cs := room.ChildrenState
		if cs == nil {
			cs = []json.RawMessage{}
		}
		resp.Rooms = append(resp.Rooms, hierarchyRoom{HierarchyRoom: room, ChildrenState: cs})
	}
	return httpx.WriteJSON(w, http.StatusOK, resp)
}
