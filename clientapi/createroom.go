package clientapi

import (
	"encoding/json"
	"net/http"
	"slices"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/userapi"
)

type createRoomRequest struct {
	Visibility                string         `json:"visibility"`
	RoomAliasName             string         `json:"room_alias_name"`
	Name                      *string        `json:"name"`
	Topic                     *string        `json:"topic"`
	Invite                    []string       `json:"invite"`
	InitialState              []initialState `json:"initial_state"`
	RoomVersion               string         `json:"room_version"`
	CreationContent           map[string]any `json:"creation_content"`
	Preset                    string         `json:"preset"`
	IsDirect                  bool           `json:"is_direct"`
	PowerLevelContentOverride map[string]any `json:"power_level_content_override"`
}

type initialState struct {
	Type     string          `json:"type"`
	StateKey string          `json:"state_key"`
	Content  json.RawMessage `json:"content"`
}

func fledgling(evType, stateKey string, content any) roomserver.Fledgling {
	b, _ := json.Marshal(content)
	sk := stateKey
	return roomserver.Fledgling{Type: evType, StateKey: &sk, Content: b}
}

func (s *Service) createRoom(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	var req createRoomRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	switch req.Visibility {
	case "", "private", "public":
	default:
		return matrix.BadJSON("visibility must be public or private")
	}
	if req.Preset == "" {
		req.Preset = "private_chat"
		if req.Visibility == "public" {
			req.Preset = "public_chat"
		}
	}
	if req.Preset != "private_chat" && req.Preset != "public_chat" && req.Preset != "trusted_private_chat" {
		return matrix.BadJSON("unknown preset %q", req.Preset)
	}
	for _, inv := range req.Invite {
		if _, _, err := matrix.SplitID('@', inv); err != nil {
			return matrix.BadJSON("invite: %q is not a user ID", inv)
		}
	}
	alias, err := s.newRoomAlias(r.Context(), req.RoomAliasName)
	if err != nil {
		return err
	}
	version := req.RoomVersion
	if version == "" {
		version = s.room.DefaultRoomVersion
	}
	if !slices.Contains(roomserver.SupportedRoomVersions(), version) {
		return matrix.Errorf(http.StatusBadRequest, matrix.CodeUnsupportedRoomVer, "room version %q is not supported", version)
	}
	v12 := version == "12"
	creator := dev.UserID

	createContent := map[string]any{}
	for k, v := range req.CreationContent {
		createContent[k] = v
	}
	if v12 && req.Preset == "trusted_private_chat" && len(req.Invite) > 0 {
		// MSC4289: in v12 the invitees of a trusted private chat become creators.
		extra, _ := createContent["additional_creators"].([]any)
		for _, inv := range req.Invite {
			extra = append(extra, inv)
		}
		createContent["additional_creators"] = extra
	}
	createRaw, _ := json.Marshal(createContent)

	// Power levels: the spec's defaults, the preset's, then the override.
	pl := map[string]any{
		"users_default": 0, "events_default": 0, "state_default": 50,
		"ban": 50, "kick": 50, "redact": 50, "invite": 50,
		"events": map[string]any{
			"m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
			"m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
			"m.room.server_acl": 100, "m.room.encryption": 100,
		},
		"notifications": map[string]any{"room": 50},
	}
	if v12 {
		// MSC4289: upgrading (tombstoning) a v12 room takes more than an ordinary admin.
		pl["events"].(map[string]any)["m.room.tombstone"] = 150
	}
	users := map[string]any{}
	if !v12 {
		users[creator] = 100
	}
	if req.Preset == "trusted_private_chat" && !v12 {
		for _, inv := range req.Invite {
			users[inv] = 100
		}
	}
	if req.Preset != "public_chat" {
		pl["invite"] = 0
	}
	pl["users"] = users
	for k, v := range req.PowerLevelContentOverride {
		pl[k] = v
	}

	joinRule, guest := "invite", "can_join"
	if req.Preset == "public_chat" {
		joinRule, guest = "public", "forbidden"
	}
	initial := []roomserver.Fledgling{
		fledgling("m.room.member", creator, json.RawMessage(s.memberContent(r.Context(), creator, "join", nil))),
		fledgling("m.room.power_levels", "", pl),
	}
	if alias != "" {
		initial = append(initial, fledgling("m.room.canonical_alias", "", map[string]string{"alias": alias}))
	}
	// initial_state may override the preset's events, so they go after them (spec order).
	presetEvents := []roomserver.Fledgling{
		fledgling("m.room.join_rules", "", map[string]string{"join_rule": joinRule}),
		fledgling("m.room.history_visibility", "", map[string]string{"history_visibility": "shared"}),
	}
	if guest == "can_join" {
		presetEvents = append(presetEvents, fledgling("m.room.guest_access", "", map[string]string{"guest_access": guest}))
	}
	overridden := map[[2]string]bool{}
	for _, st := range req.InitialState {
		overridden[[2]string{st.Type, st.StateKey}] = true
	}
	for _, e := range presetEvents {
		if !overridden[[2]string{e.Type, *e.StateKey}] {
			initial = append(initial, e)
		}
	}
	for _, st := range req.InitialState {
		if st.Type == "m.room.create" {
			continue
		}
		if len(st.Content) == 0 {
			st.Content = json.RawMessage("{}")
		}
		if err := checkContent(st.Content); err != nil {
			return err
		}
		initial = append(initial, fledgling(st.Type, st.StateKey, st.Content))
	}
	if req.Name != nil {
		initial = append(initial, fledgling("m.room.name", "", map[string]string{"name": *req.Name}))
	}
	if req.Topic != nil {
		initial = append(initial, fledgling("m.room.topic", "", map[string]any{
			"topic":   *req.Topic,
			"m.topic": map[string]any{"m.text": []map[string]string{{"mimetype": "text/plain", "body": *req.Topic}}},
		}))
	}
	var remoteInvites []roomserver.SendRequest // their servers must sign them: sent after creation
	for _, inv := range req.Invite {
		extra := map[string]any{}
		if req.IsDirect {
			extra["is_direct"] = true
		}
		content := json.RawMessage(s.memberContent(r.Context(), inv, "invite", extra))
		if _, server, err := matrix.SplitID('@', inv); err == nil && server != s.global.ServerName {
			remoteInvites = append(remoteInvites, roomserver.SendRequest{Sender: creator, Type: "m.room.member", StateKey: &inv, Content: content})
			continue
		}
		initial = append(initial, fledgling("m.room.member", inv, content))
	}
	roomID, err := s.rooms.CreateRoom(r.Context(), roomserver.CreateRoomRequest{
		Creator: creator, RoomVersion: version, CreateContent: createRaw, Initial: initial,
	})
	if err != nil {
		return err
	}
	for _, inv := range remoteInvites {
		inv.RoomID = roomID
		if _, err := s.rooms.Send(r.Context(), inv); err != nil {
			s.log.Warn("inviting a remote user to a new room", "room_id", roomID, "user_id", *inv.StateKey, "error", err)
		}
	}
	if err := s.finishNewRoom(r.Context(), roomID, creator, alias, req.Visibility == "public"); err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
}
