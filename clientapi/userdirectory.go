package clientapi

import (
	"net/http"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/userapi"
)

// directoryCandidates bounds the profiles matched before the visibility filter.
const directoryCandidates = 500

type userDirectoryResult struct {
	UserID      string `json:"user_id"`
	DisplayName string `json:"display_name,omitempty"`
	AvatarURL   string `json:"avatar_url,omitempty"`
}

// searchUserDirectory finds local users by display name or user ID among those the caller
// may see: users in public rooms and users sharing a room with the caller.
func (s *Service) searchUserDirectory(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	var body struct {
		SearchTerm *string `json:"search_term"`
		Limit      *int    `json:"limit"`
	}
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.SearchTerm == nil {
		return matrix.MissingParam("search_term is required")
	}
	limit := 10
	if body.Limit != nil && *body.Limit >= 0 {
		limit = min(*body.Limit, 50)
	}
	found, err := s.users.SearchProfiles(r.Context(), *body.SearchTerm, directoryCandidates)
	if err != nil {
		return err
	}
	ids := make([]string, 0, len(found))
	for _, f := range found {
		ids = append(ids, f.UserID)
	}
	visible, err := s.rooms.VisibleInDirectory(r.Context(), dev.UserID, ids)
	if err != nil {
		return err
	}
	results := []userDirectoryResult{}
	limited := false
	for _, f := range found {
		if !visible[f.UserID] {
			continue
		}
		if len(results) == limit {
			limited = true
			break
		}
		results = append(results, userDirectoryResult{UserID: f.UserID, DisplayName: f.DisplayName, AvatarURL: f.AvatarURL})
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{"results": results, "limited": limited})
}
