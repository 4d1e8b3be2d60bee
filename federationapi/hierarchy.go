package federationapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/roomserver"
)

// This file serves GET /_matrix/federation/v1/hierarchy/{roomID}: one room of a space
// hierarchy and its children's summaries, as the requesting server may see them.

// hierarchyRooms is what the hierarchy endpoint needs of the room server.
type hierarchyRooms interface {
	FederationHierarchy(ctx context.Context, origin, roomID string, suggestedOnly bool) (*roomserver.FederationHierarchy, error)
}

// fedHierarchyRoom is the requested room of the response: children_state is always present.
type fedHierarchyRoom struct {
	roomserver.HierarchyRoom
	ChildrenState []json.RawMessage `json:"children_state"`
}

type fedHierarchyResponse struct {
	Room                 fedHierarchyRoom           `json:"room"`
	Children             []roomserver.HierarchyRoom `json:"children"`
	InaccessibleChildren []string                   `json:"inaccessible_children"`
}

func (in *Inbound) hierarchy(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	rooms := in.rooms
	roomID := httpx.Var(r, "roomID")
	suggested := false
	if v := r.URL.Query().Get("suggested_only"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return matrix.InvalidParam("suggested_only must be true or false")
		}
		suggested = b
	}
	if err := in.checkACL(r.Context(), roomID, req.origin); err != nil {
		return err
	}
	res, err := rooms.FederationHierarchy(r.Context(), string(req.origin), roomID, suggested)
	if err != nil {
		return err
	}
	cs := res.Room.ChildrenState
	if cs == nil {
		cs = []json.RawMessage{}
	}
	return httpx.WriteJSON(w, http.StatusOK, fedHierarchyResponse{
		Room:     fedHierarchyRoom{HierarchyRoom: res.Room, ChildrenState: cs},
		Children: res.Children, InaccessibleChildren: res.InaccessibleChildren,
	})
}
