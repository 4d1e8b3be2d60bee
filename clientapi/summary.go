package clientapi

import (
	"context"
	"errors"
	"net/http"
	"slices"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
)

// This file serves GET /_matrix/client/v1/room_summary/{roomIdOrAlias} (spec v1.15,
// MSC3266) for rooms this server is in. The room's summary of /sync is syncapi's.

// roomSummaryResponse is a room summary: a published rooms chunk plus the fields below.
type roomSummaryResponse struct {
	publicRoom
	AllowedRoomIDs []string `json:"allowed_room_ids,omitempty"`
	Encryption     string   `json:"encryption,omitempty"`
	RoomVersion    string   `json:"room_version,omitempty"`
	Membership     string   `json:"membership,omitempty"`
}

func (s *Service) roomSummary(w http.ResponseWriter, r *http.Request) error {
	dev, err := s.optionalAuth(r)
	if err != nil {
		return err
	}
	userID := ""
	if dev != nil {
		userID = dev.UserID
	}
	resp, err := s.summarise(r.Context(), userID, httpx.Var(r, "roomIDOrAlias"))
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, resp)
}

// summarise returns the summary of the room roomIDOrAlias names, as userID ("" when
// unauthenticated) may see it: a member, invitee or knocker may see any room, anyone a room
// that is joinable (public, knock, knock_restricted), world-readable, or restricted to a room
// userID is joined to. Otherwise, as for an unknown room, it returns 404 M_NOT_FOUND.
func (s *Service) summarise(ctx context.Context, userID, roomIDOrAlias string) (*roomSummaryResponse, error) {
	roomID := roomIDOrAlias
	if err := s.resolveRoomAlias(ctx, &roomID); err != nil {
		return nil, err
	}
	notFound := matrix.NotFound("room %s not found or not accessible", roomIDOrAlias)
	sum, err := s.rooms.RoomSummary(ctx, roomID)
	if err != nil {
		if errors.Is(err, sqldb.ErrNotFound) {
			return nil, notFound
		}
		return nil, err
	}
	membership := ""
	if userID != "" {
		if membership, _, err = s.rooms.Membership(ctx, roomID, userID); err != nil {
			return nil, err
		}
	}
	if !s.summaryVisible(ctx, userID, membership, sum.JoinRule, sum.WorldReadable(), sum.AllowedRoomIDs) {
		return nil, notFound
	}
	resp := &roomSummaryResponse{
		publicRoom: toPublicRoom(sum), AllowedRoomIDs: sum.AllowedRoomIDs, Encryption: sum.Encryption,
		RoomVersion: sum.RoomVersion,
	}
	if userID != "" {
		resp.Membership = membership
		if resp.Membership == "" {
			resp.Membership = "leave"
		}
	}
	return resp, nil
}

// summaryVisible applies summarise's access rules.
func (s *Service) summaryVisible(ctx context.Context, userID, membership, joinRule string, worldReadable bool, allowed []string) bool {
	switch {
	case membership == "join", membership == "invite", membership == "knock":
		return true
	case worldReadable, joinRule == "public", joinRule == "knock", joinRule == "knock_restricted":
		return true
	case userID == "" || (joinRule != "restricted" && joinRule != "knock_restricted"):
		return false
	}
	return slices.ContainsFunc(allowed, func(id string) bool {
		m, _, err := s.rooms.Membership(ctx, id, userID)
		return err == nil && m == "join"
	})
}
