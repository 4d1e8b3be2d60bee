package clientapi

import (
	"net/http"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/userapi"
)

// specVersions are the Client-Server API versions Myelin advertises.
var specVersions = []string{
	"r0.0.1", "r0.1.0", "r0.2.0", "r0.3.0", "r0.4.0", "r0.5.0", "r0.6.0", "r0.6.1",
	"v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12",
}

func (s *Service) versions(w http.ResponseWriter, r *http.Request) error {
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{
		"versions": specVersions,
		// Only features that work are listed here; none of the unstable ones yet.
		"unstable_features": map[string]bool{},
	})
}

func (s *Service) capabilities(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	versions := roomserver.SupportedRoomVersions()
	avail := make(map[string]string, len(versions))
	for _, v := range versions {
		avail[v] = "stable"
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{
		"capabilities": map[string]any{
			"m.change_password": map[string]bool{"enabled": true},
			"m.set_displayname": map[string]bool{"enabled": true},
			"m.set_avatar_url":  map[string]bool{"enabled": true},
			"m.3pid_changes":    map[string]bool{"enabled": false},
			"m.get_login_token": map[string]bool{"enabled": false},
			"m.room_versions":   map[string]any{"default": s.room.DefaultRoomVersion, "available": avail},
		},
	})
}

func (s *Service) wellKnownClient(w http.ResponseWriter, r *http.Request) error {
	if s.global.WellKnownClientName == "" {
		return httpx.WriteJSON(w, http.StatusNotFound, map[string]string{"errcode": "M_NOT_FOUND", "error": "no client discovery information"})
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{
		"m.homeserver": map[string]string{"base_url": s.global.WellKnownClientName},
	})
}

func (s *Service) wellKnownServer(w http.ResponseWriter, r *http.Request) error {
	if s.global.WellKnownServerName == "" {
		return httpx.WriteJSON(w, http.StatusNotFound, map[string]string{"errcode": "M_NOT_FOUND", "error": "no server delegation"})
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]string{"m.server": s.global.WellKnownServerName})
}
