package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/appservice"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/userapi"
)

// This file serves room aliases: PUT/GET/DELETE /directory/room/{roomAlias} and GET
// /rooms/{roomId}/aliases, and the alias checks other room endpoints make (the
// m.room.canonical_alias content, createRoom's room_alias_name, joining by alias).
// Only aliases of this server are known; resolving another server's needs federation.

// maxAliasLength is the spec's limit on a room alias, in bytes.
const maxAliasLength = 255

// codeBadAlias is the error code for an m.room.canonical_alias naming an alias that does not
// point to the room.
const codeBadAlias = "M_BAD_ALIAS"

// parseAlias checks alias against the spec's grammar (#localpart:server, the localpart any
// Unicode but ':' and NUL, at most 255 bytes) and returns its server name. It returns 400
// M_INVALID_PARAM.
func parseAlias(alias string) (server string, err error) {
	if len(alias) > maxAliasLength {
		return "", matrix.InvalidParam("room alias is longer than %d bytes", maxAliasLength)
	}
	local, server, splitErr := matrix.SplitID('#', alias)
	if splitErr != nil || local == "" || !utf8.ValidString(alias) || strings.ContainsRune(local, 0) {
		return "", matrix.InvalidParam("%q is not a valid room alias", alias)
	}
	return server, nil
}

// localAlias is parseAlias for an alias that must belong to this server; another server's
// alias is 400 M_INVALID_PARAM too.
func (s *Service) localAlias(alias string) error {
	server, err := parseAlias(alias)
	if err != nil {
		return err
	}
	if server != s.global.ServerName {
		return matrix.InvalidParam("room alias %s is not on this server", alias)
	}
	return nil
}

type aliasRequest struct {
	RoomID string `json:"room_id"`
}

func (s *Service) putAlias(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	var req aliasRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if err := s.createAlias(r.Context(), dev.UserID, httpx.Var(r, "roomAlias"), req.RoomID); err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

// createAlias maps the local alias to roomID for userID, who must be joined to the room.
// Errors: 400 M_INVALID_PARAM for a malformed or remote alias or room ID, 404 for an unknown
// room, 403 when not joined, 409 when the alias exists.
func (s *Service) createAlias(ctx context.Context, userID, alias, roomID string) error {
	if err := s.localAlias(alias); err != nil {
		return err
	}
	if err := s.aliasNotExclusive(ctx, alias); err != nil {
		return err
	}
	if roomID == "" {
		return matrix.MissingParam("room_id is required")
	}
	if !strings.HasPrefix(roomID, "!") {
		return matrix.InvalidParam("%q is not a room ID", roomID)
	}
	if _, err := s.rooms.RoomVersion(ctx, roomID); err != nil {
		return roomErr(err)
	}
	if err := s.requireJoined(ctx, roomID, userID); err != nil {
		return err
	}
	err := s.rooms.CreateAlias(ctx, alias, roomID, userID)
	if errors.Is(err, sqldb.ErrExists) {
		return matrix.Errorf(http.StatusConflict, matrix.CodeUnknown, "room alias %s already exists", alias)
	}
	return roomErr(err)
}

type aliasResponse struct {
	RoomID  string   `json:"room_id"`
	Servers []string `json:"servers"`
}

func (s *Service) getAlias(w http.ResponseWriter, r *http.Request) error {
	resp, err := s.lookupAlias(r.Context(), httpx.Var(r, "roomAlias"))
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, resp)
}

// lookupAlias resolves alias to its room and the servers of the room's joined members, this
// server first; another server's alias is asked of that server. It returns 400
// M_INVALID_PARAM for a malformed alias and 404 M_NOT_FOUND for an unknown one.
func (s *Service) lookupAlias(ctx context.Context, alias string) (*aliasResponse, error) {
	if server, err := parseAlias(alias); err == nil && server != s.global.ServerName {
		roomID, servers, err := s.rooms.RemoteAlias(ctx, alias)
		if err != nil {
			return nil, err
		}
		if servers == nil {
			servers = []string{}
		}
		return &aliasResponse{RoomID: roomID, Servers: servers}, nil
	}
	roomID, err := s.resolveAlias(ctx, alias)
	if err != nil {
		return nil, err
	}
	servers := []string{s.global.ServerName}
	members, err := s.rooms.JoinedMembers(ctx, roomID)
	if err != nil {
		return nil, roomErr(err)
	}
	for _, m := range members {
		if _, server, err := matrix.SplitID('@', m); err == nil && !slices.Contains(servers, server) {
			servers = append(servers, server)
		}
	}
	return &aliasResponse{RoomID: roomID, Servers: servers}, nil
}

// resolveAlias returns the room alias points to. It returns 400 M_INVALID_PARAM for a
// malformed alias and 404 M_NOT_FOUND for an unknown or remote one.
func (s *Service) resolveAlias(ctx context.Context, alias string) (string, error) {
	server, err := parseAlias(alias)
	if err != nil {
		return "", err
	}
	if server != s.global.ServerName {
		return "", matrix.NotFound("room alias %s is on another server, and resolving remote aliases is not supported yet", alias)
	}
	roomID, _, err := s.rooms.Alias(ctx, alias)
	if errors.Is(err, sqldb.ErrNotFound) {
		return "", matrix.NotFound("room alias %s not found", alias)
	}
	if err != nil {
		return "", err
	}
	return roomID, nil
}

// resolveRoomAlias replaces *roomIDOrAlias by the room its alias points to, leaving a room
// ID alone. It returns 400 M_INVALID_PARAM when it is neither, and resolveAlias's errors.
func (s *Service) resolveRoomAlias(ctx context.Context, roomIDOrAlias *string) error {
	switch {
	case strings.HasPrefix(*roomIDOrAlias, "!"):
		return nil
	case strings.HasPrefix(*roomIDOrAlias, "#"):
		roomID, err := s.resolveAlias(ctx, *roomIDOrAlias)
		if err != nil {
			return err
		}
		*roomIDOrAlias = roomID
		return nil
	default:
		return matrix.InvalidParam("%q is neither a room ID nor a room alias", *roomIDOrAlias)
	}
}

func (s *Service) deleteAlias(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	if err := s.removeAlias(r.Context(), dev.UserID, httpx.Var(r, "roomAlias")); err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

// removeAlias deletes the local alias on behalf of userID, who must have created it or be
// joined with the power to change the room's m.room.canonical_alias, and then takes the
// alias out of the room's m.room.canonical_alias as userID (as Synapse does; when userID may
// not send that event, the alias is deleted all the same). Errors: 400 M_INVALID_PARAM, 404
// M_NOT_FOUND, 403 M_FORBIDDEN.
func (s *Service) removeAlias(ctx context.Context, userID, alias string) error {
	if err := s.localAlias(alias); err != nil {
		return err
	}
	roomID, creator, err := s.rooms.Alias(ctx, alias)
	if errors.Is(err, sqldb.ErrNotFound) {
		return matrix.NotFound("room alias %s not found", alias)
	}
	if err != nil {
		return err
	}
	if creator != userID {
		if err := s.requireModerator(ctx, roomID, userID); err != nil {
			return matrix.Forbidden("you may not delete the alias %s", alias)
		}
	}
	if _, err := s.rooms.DeleteAlias(ctx, alias); errors.Is(err, sqldb.ErrNotFound) {
		return matrix.NotFound("room alias %s not found", alias)
	} else if err != nil {
		return err
	}
	if err := s.dropCanonicalAlias(ctx, roomID, userID, alias); err != nil {
		var me *matrix.Error
		if errors.As(err, &me) && me.Status == http.StatusForbidden {
			s.log.Info("alias deleted but not removed from the canonical alias", "room_id", roomID, "user_id", userID, "error", err)
		} else {
			s.log.Warn("alias deleted but not removed from the canonical alias", "room_id", roomID, "user_id", userID, "error", err)
		}
	}
	return nil
}

// requireModerator returns 403 unless userID is joined to roomID with the power to send
// m.room.canonical_alias, Synapse's test for managing a room's aliases and directory entry.
func (s *Service) requireModerator(ctx context.Context, roomID, userID string) error {
	if err := s.requireJoined(ctx, roomID, userID); err != nil {
		return err
	}
	ok, err := s.rooms.MaySendState(ctx, roomID, userID, spec.MRoomCanonicalAlias)
	if err != nil {
		return roomErr(err)
	}
	if !ok {
		return matrix.Forbidden("your power level in %s is too low", roomID)
	}
	return nil
}

// dropCanonicalAlias sends a new m.room.canonical_alias without alias, if the current one
// names it.
func (s *Service) dropCanonicalAlias(ctx context.Context, roomID, userID, alias string) error {
	ev, err := s.rooms.CurrentStateEvent(ctx, roomID, spec.MRoomCanonicalAlias, "")
	if errors.Is(err, sqldb.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	var content map[string]any
	if json.Unmarshal(ev.PDU.Content(), &content) != nil {
		return nil
	}
	changed := false
	if a, _ := content["alias"].(string); a == alias {
		delete(content, "alias")
		changed = true
	}
	if alt, ok := content["alt_aliases"].([]any); ok && slices.Contains(alt, any(alias)) {
		alt = slices.DeleteFunc(alt, func(a any) bool { return a == any(alias) })
		if len(alt) > 0 {
			content["alt_aliases"] = alt
		} else {
			delete(content, "alt_aliases")
		}
		changed = true
	}
	if !changed {
		return nil
	}
	raw, err := json.Marshal(content)
	if err != nil {
		return err
	}
	empty := ""
	_, err = s.rooms.Send(ctx, roomserver.SendRequest{
		RoomID: roomID, Sender: userID, Type: spec.MRoomCanonicalAlias, StateKey: &empty, Content: raw,
	})
	return err
}

func (s *Service) roomAliases(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	aliases, err := s.listRoomAliases(r.Context(), dev.UserID, httpx.Var(r, "roomID"))
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string][]string{"aliases": aliases})
}

// listRoomAliases returns the local aliases of roomID to userID, who must be joined unless
// the room is world-readable. Errors: 404 for an unknown room, 403 M_FORBIDDEN.
func (s *Service) listRoomAliases(ctx context.Context, userID, roomID string) ([]string, error) {
	if _, err := s.rooms.RoomVersion(ctx, roomID); err != nil {
		return nil, roomErr(err)
	}
	if err := s.requireJoined(ctx, roomID, userID); err != nil {
		if !s.worldReadable(ctx, roomID) {
			return nil, err
		}
	}
	aliases, err := s.rooms.RoomAliases(ctx, roomID)
	if err != nil {
		return nil, roomErr(err)
	}
	if aliases == nil {
		aliases = []string{}
	}
	return aliases, nil
}

// worldReadable reports whether roomID's current history visibility is world_readable.
func (s *Service) worldReadable(ctx context.Context, roomID string) bool {
	ev, err := s.rooms.CurrentStateEvent(ctx, roomID, spec.MRoomHistoryVisibility, "")
	if err != nil {
		return false
	}
	v, err := ev.PDU.HistoryVisibility()
	return err == nil && v == "world_readable"
}

// checkCanonicalAlias validates the content of an m.room.canonical_alias state event a
// client sends to roomID: alias must be a string and alt_aliases a list of strings, each a
// valid alias, and each local alias newly named (not in the current event) must exist and
// point to roomID. Another server's aliases are not checked. Other events pass. Errors: 400
// M_INVALID_PARAM for malformed content or aliases, 400 M_BAD_ALIAS, 404 for an unknown room.
func (s *Service) checkCanonicalAlias(ctx context.Context, roomID, evType, stateKey string, content json.RawMessage) error {
	if evType != spec.MRoomCanonicalAlias || stateKey != "" {
		return nil
	}
	var c map[string]json.RawMessage
	if err := json.Unmarshal(content, &c); err != nil {
		return matrix.BadJSON("content must be a JSON object")
	}
	var (
		alias string
		alt   []string
	)
	if raw, ok := c["alias"]; ok && string(raw) != "null" {
		if json.Unmarshal(raw, &alias) != nil {
			return matrix.InvalidParam("alias must be a string")
		}
	}
	if raw, ok := c["alt_aliases"]; ok {
		var list []json.RawMessage
		if json.Unmarshal(raw, &list) != nil {
			return matrix.InvalidParam("alt_aliases must be a list")
		}
		for _, e := range list {
			var a string
			if json.Unmarshal(e, &a) != nil {
				return matrix.InvalidParam("alt_aliases must be a list of strings")
			}
			alt = append(alt, a)
		}
	}
	if _, err := s.rooms.RoomVersion(ctx, roomID); err != nil {
		return roomErr(err)
	}
	// Only aliases the current event does not already name are checked, so that an alias
	// deleted since does not block other changes to the event.
	var prev struct {
		Alias any   `json:"alias"`
		Alt   []any `json:"alt_aliases"`
	}
	if ev, err := s.rooms.CurrentStateEvent(ctx, roomID, spec.MRoomCanonicalAlias, ""); err == nil {
		_ = json.Unmarshal(ev.PDU.Content(), &prev)
	} else if !errors.Is(err, sqldb.ErrNotFound) {
		return err
	}
	if alias != "" && alias != prev.Alias {
		if err := s.checkAliasPointsTo(ctx, alias, roomID); err != nil {
			return err
		}
	}
	for _, a := range alt {
		if slices.Contains(prev.Alt, any(a)) {
			continue
		}
		if err := s.checkAliasPointsTo(ctx, a, roomID); err != nil {
			return err
		}
	}
	return nil
}

// checkAliasPointsTo returns 400 M_INVALID_PARAM for a malformed alias and 400 M_BAD_ALIAS
// for a local alias that does not point to roomID.
func (s *Service) checkAliasPointsTo(ctx context.Context, alias, roomID string) error {
	server, err := parseAlias(alias)
	if err != nil {
		return err
	}
	if server != s.global.ServerName {
		return nil
	}
	got, _, err := s.rooms.Alias(ctx, alias)
	if errors.Is(err, sqldb.ErrNotFound) || (err == nil && got != roomID) {
		return matrix.Errorf(http.StatusBadRequest, codeBadAlias, "room alias %s does not point to the room", alias)
	}
	return err
}

// newRoomAlias checks createRoom's room_alias_name and returns the alias it names on this
// server, "" for none. Errors: 400 M_INVALID_PARAM for a bad name, 400 M_ROOM_IN_USE when the
// alias exists.
func (s *Service) newRoomAlias(ctx context.Context, name string) (string, error) {
	if name == "" {
		return "", nil
	}
	if strings.ContainsFunc(name, unicode.IsSpace) || strings.ContainsRune(name, ':') {
		return "", matrix.InvalidParam("room_alias_name may not contain whitespace or ':'")
	}
	alias := "#" + name + ":" + s.global.ServerName
	if err := s.localAlias(alias); err != nil {
		return "", err
	}
	if err := s.aliasNotExclusive(ctx, alias); err != nil {
		return "", err
	}
	_, _, err := s.rooms.Alias(ctx, alias)
	if err == nil {
		return "", matrix.Errorf(http.StatusBadRequest, matrix.CodeRoomInUse, "room alias %s is already taken", alias)
	}
	if !errors.Is(err, sqldb.ErrNotFound) {
		return "", err
	}
	return alias, nil
}

// aliasNotExclusive returns 400 M_EXCLUSIVE when alias lies in an application service's
// exclusive alias namespace and the request (its context) was not made by that service.
func (s *Service) aliasNotExclusive(ctx context.Context, alias string) error {
	owner := s.apps.ExclusiveAliasOwner(alias)
	if owner == nil {
		return nil
	}
	if as, _ := ctx.Value(appServiceKey).(*appservice.Service); as == owner {
		return nil
	}
	return matrix.Errorf(http.StatusBadRequest, matrix.CodeExclusive, "room alias %s is reserved by an application service", alias)
}

// finishNewRoom creates the alias createRoom asked for (alias "" for none) and publishes
// the room in the directory when public is set. Errors: 400 M_ROOM_IN_USE if the alias was
// taken since newRoomAlias checked it.
func (s *Service) finishNewRoom(ctx context.Context, roomID, creator, alias string, public bool) error {
	if alias != "" {
		err := s.rooms.CreateAlias(ctx, alias, roomID, creator)
		if errors.Is(err, sqldb.ErrExists) {
			return matrix.Errorf(http.StatusBadRequest, matrix.CodeRoomInUse, "room alias %s is already taken", alias)
		}
		if err != nil {
			return err
		}
	}
	if public {
		return s.rooms.SetPublished(ctx, roomID, true)
	}
	return nil
}
