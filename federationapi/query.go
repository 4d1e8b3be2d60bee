package federationapi

import (
	"errors"
	"net/http"
	"slices"
	"strconv"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/userapi"
)

// This file serves the queries: profiles, room aliases, the public room directory, and the
// device and key queries (empty until end-to-end encryption lands).

// localUser parses userID and checks that it is a user of this server: 400 M_INVALID_PARAM
// otherwise.
func (in *Inbound) localUser(userID string) (*spec.UserID, error) {
	u, err := spec.NewUserID(userID, true)
	if err != nil {
		return nil, matrix.InvalidParam("invalid user ID %q", userID)
	}
	if string(u.Domain()) != in.cfg.ServerName {
		return nil, matrix.InvalidParam("user %s is not hosted on this server", userID)
	}
	return u, nil
}

func (in *Inbound) queryProfile(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	q := r.URL.Query()
	u, err := in.localUser(q.Get("user_id"))
	if err != nil {
		return err
	}
	p, err := in.users.Profile(r.Context(), u.String())
	if errors.Is(err, userapi.ErrNoSuchUser) {
		return matrix.NotFound("no such user")
	}
	if err != nil {
		return err
	}
	out := map[string]string{}
	field := q.Get("field")
	if (field == "" || field == "displayname") && p.DisplayName != "" {
		out["displayname"] = p.DisplayName
	}
	if (field == "" || field == "avatar_url") && p.AvatarURL != "" {
		out["avatar_url"] = p.AvatarURL
	}
	return httpx.WriteJSON(w, http.StatusOK, out)
}

func (in *Inbound) queryDirectory(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	alias := r.URL.Query().Get("room_alias")
	if alias == "" {
		return matrix.MissingParam("room_alias is required")
	}
	roomID, _, err := in.rooms.Alias(r.Context(), alias)
	if errors.Is(err, sqldb.ErrNotFound) {
		return matrix.NotFound("room alias %s not found", alias)
	}
	if err != nil {
		return err
	}
	servers, err := in.rooms.ServersInRoom(r.Context(), roomID)
	if err != nil {
		return err
	}
	// This server first: it holds the alias.
	servers = slices.DeleteFunc(servers, func(s string) bool { return s == in.cfg.ServerName })
	servers = append([]string{in.cfg.ServerName}, servers...)
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{"room_id": roomID, "servers": servers})
}

// publicRoomsBody is the body of POST /publicRooms.
type publicRoomsBody struct {
	Limit  int    `json:"limit"`
	Since  string `json:"since"`
	Filter struct {
		GenericSearchTerm string    `json:"generic_search_term"`
		RoomTypes         []*string `json:"room_types"`
	} `json:"filter"`
}

// publicRoom is one entry of a published rooms chunk.
type publicRoom = matrix.PublicRoom

func (in *Inbound) publicRooms(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	var pr roomserver.PublicRoomsRequest
	if r.Method == http.MethodPost {
		var body publicRoomsBody
		if len(req.content) > 0 {
			if err := httpx.UnmarshalObject(req.content, &body); err != nil {
				return err
			}
		}
		pr = roomserver.PublicRoomsRequest{Limit: body.Limit, Since: body.Since, Search: body.Filter.GenericSearchTerm, RoomTypes: body.Filter.RoomTypes}
	} else {
		q := r.URL.Query()
		pr.Since = q.Get("since")
		if l := q.Get("limit"); l != "" {
			n, err := strconv.Atoi(l)
			if err != nil {
				return matrix.InvalidParam("limit must be an integer")
			}
			pr.Limit = n
		}
	}
	page, err := in.rooms.PublicRooms(r.Context(), pr)
	if err != nil {
		return err
	}
	chunk := make([]publicRoom, 0, len(page.Rooms))
	for _, s := range page.Rooms {
		chunk = append(chunk, publicRoom{
			RoomID: s.RoomID, Name: s.Name, Topic: s.Topic, CanonicalAlias: s.CanonicalAlias, AvatarURL: s.AvatarURL,
			NumJoinedMembers: s.JoinedMembers, WorldReadable: s.WorldReadable(), GuestCanJoin: s.GuestCanJoin(),
			JoinRule: s.JoinRule, RoomType: s.RoomType,
		})
	}
	resp := map[string]any{"chunk": chunk, "total_room_count_estimate": page.Total}
	if page.NextBatch != "" {
		resp["next_batch"] = page.NextBatch
	}
	if page.PrevBatch != "" {
		resp["prev_batch"] = page.PrevBatch
	}
	return httpx.WriteJSON(w, http.StatusOK, resp)
}

// userDevices answers for a local user with no devices' keys: device keys arrive with
// end-to-end encryption.
func (in *Inbound) userDevices(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	u, err := in.localUser(httpx.Var(r, "userID"))
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{"user_id": u.String(), "stream_id": 0, "devices": []any{}})
}

func (in *Inbound) keysQuery(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	var body struct {
		DeviceKeys map[string][]string `json:"device_keys"`
	}
	if err := httpx.UnmarshalObject(req.content, &body); err != nil {
		return err
	}
	keys := map[string]any{}
	for u := range body.DeviceKeys {
		if uid, err := spec.NewUserID(u, true); err == nil && string(uid.Domain()) == in.cfg.ServerName {
			keys[u] = map[string]any{}
		}
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{"device_keys": keys})
}

func (in *Inbound) keysClaim(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	var body struct {
		OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
	}
	if err := httpx.UnmarshalObject(req.content, &body); err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{"one_time_keys": map[string]any{}})
}
