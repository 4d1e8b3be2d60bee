package clientapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/userapi"
)

// Rooms is what clientapi needs of the roomserver.
type Rooms interface {
	CreateRoom(ctx context.Context, r roomserver.CreateRoomRequest) (string, error)
	Send(ctx context.Context, r roomserver.SendRequest) (string, error)
	Event(ctx context.Context, eventID string) (*roomserver.Event, error)
	CurrentState(ctx context.Context, roomID string) ([]*roomserver.Event, error)
	CurrentStateEvent(ctx context.Context, roomID, evType, stateKey string) (*roomserver.Event, error)
	Membership(ctx context.Context, roomID, userID string) (string, *roomserver.Event, error)
	RoomsForUser(ctx context.Context, userID string, memberships ...string) ([]string, error)
	RoomVersion(ctx context.Context, roomID string) (gomatrixserverlib.RoomVersion, error)
	UpgradeRoom(ctx context.Context, r roomserver.UpgradeRequest) (string, error)
	VisibleInDirectory(ctx context.Context, searcher string, candidates []string) (map[string]bool, error)
	JoinRoom(ctx context.Context, r roomserver.MembershipRequest) (string, error)
	KnockRoom(ctx context.Context, r roomserver.MembershipRequest) (string, error)
	RemoteAlias(ctx context.Context, alias string) (roomID string, servers []string, err error)
	Directory
	roomReader
	hierarchyRooms
}

func (s *Service) registerRooms(c httpx.Prefix) {
	post, put := http.MethodPost, http.MethodPut
	c.Handle("/createRoom", s.authed(s.createRoom)).Methods(post)
	c.Handle("/rooms/{roomID}/join", s.authed(s.joinRoom)).Methods(post)
	c.Handle("/join/{roomIDOrAlias}", s.authed(s.joinRoom)).Methods(post)
	c.Handle("/rooms/{roomID}/leave", s.authed(s.leaveRoom)).Methods(post)
	c.Handle("/rooms/{roomID}/{action:(?:invite|kick|ban|unban)}", s.authed(s.membershipAction)).Methods(post)
	c.Handle("/rooms/{roomID}/send/{type}/{txnID}", s.authed(s.sendEvent)).Methods(put)
	c.Handle("/rooms/{roomID}/state/{type}", s.authed(s.putState)).Methods(put)
	c.Handle("/rooms/{roomID}/state/{type}/", s.authed(s.putState)).Methods(put)
	c.Handle("/rooms/{roomID}/state/{type}/{stateKey}", s.authed(s.putState)).Methods(put)
	c.Handle("/rooms/{roomID}/redact/{eventID}/{txnID}", s.authed(s.redact)).Methods(put)
	c.Handle("/rooms/{roomID}/upgrade", s.authed(s.upgradeRoom)).Methods(post)
	c.Handle("/knock/{roomIDOrAlias}", s.authed(s.knockRoom)).Methods(post)
	c.Handle("/user_directory/search", s.authed(s.searchUserDirectory)).Methods(post)
}

// roomErr turns roomserver's not-found into the client error.
func roomErr(err error) error {
	if errors.Is(err, sqldb.ErrNotFound) {
		return matrix.NotFound("room or event not found")
	}
	return err
}

// checkContent applies the spec's canonical-JSON number rules to event content: integers
// only, within ±(2^53−1). It returns 400 M_BAD_JSON.
func checkContent(raw []byte) error {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return matrix.BadJSON("content is not valid JSON")
	}
	return checkNumbers(v)
}

func checkNumbers(v any) error {
	switch t := v.(type) {
	case json.Number:
		n, err := t.Int64()
		if err != nil || strings.ContainsAny(t.String(), ".eE") {
			return matrix.BadJSON("numbers in events must be integers")
		}
		if n > 1<<53-1 || n < -(1<<53-1) {
			return matrix.BadJSON("integer %s is out of the canonical JSON range", t)
		}
	case map[string]any:
		for _, e := range t {
			if err := checkNumbers(e); err != nil {
				return err
			}
		}
	case []any:
		for _, e := range t {
			if err := checkNumbers(e); err != nil {
				return err
			}
		}
	case float64:
		if t != math.Trunc(t) {
			return matrix.BadJSON("numbers in events must be integers")
		}
	}
	return nil
}

// decodeContent reads an event content object from the body.
func decodeContent(r *http.Request) (json.RawMessage, error) {
	var obj map[string]json.RawMessage
	b, err := httpx.ReadBody(r)
	if err != nil {
		return nil, err
	}
	if err := httpx.UnmarshalObject(b, &obj); err != nil {
		return nil, err
	}
	if err := checkContent(b); err != nil {
		return nil, err
	}
	return json.RawMessage(b), nil
}

// massagedTS returns the ts query parameter of an application service's request, the
// origin_server_ts it asks for its event (the spec's timestamp massaging), or 0 for now.
// Other callers' ts is ignored, as in Synapse. It returns 400 M_INVALID_PARAM for a ts that
// is not a valid origin_server_ts.
func massagedTS(r *http.Request) (int64, error) {
	q := r.URL.Query()
	if appServiceOf(r) == nil || !q.Has("ts") {
		return 0, nil
	}
	ts, err := strconv.ParseInt(q.Get("ts"), 10, 64)
	if err != nil || ts < 0 || ts > 1<<53-1 {
		return 0, matrix.InvalidParam("ts must be a timestamp in milliseconds since the Unix epoch")
	}
	return ts, nil
}

func (s *Service) sendEvent(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	content, err := decodeContent(r)
	if err != nil {
		return err
	}
	ts, err := massagedTS(r)
	if err != nil {
		return err
	}
	id, err := s.rooms.Send(r.Context(), roomserver.SendRequest{
		RoomID: httpx.Var(r, "roomID"), Sender: dev.UserID, Type: httpx.Var(r, "type"), Content: content,
		Txn: &roomserver.Txn{DeviceID: dev.DeviceID, TxnID: httpx.Var(r, "txnID")}, OriginServerTS: ts,
	})
	if err != nil {
		return roomErr(err)
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]string{"event_id": id})
}

func (s *Service) putState(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	content, err := decodeContent(r)
	if err != nil {
		return err
	}
	sk := httpx.Var(r, "stateKey")
	if err := s.checkCanonicalAlias(r.Context(), httpx.Var(r, "roomID"), httpx.Var(r, "type"), sk, content); err != nil {
		return err
	}
	ts, err := massagedTS(r)
	if err != nil {
		return err
	}
	id, err := s.rooms.Send(r.Context(), roomserver.SendRequest{
		RoomID: httpx.Var(r, "roomID"), Sender: dev.UserID, Type: httpx.Var(r, "type"), StateKey: &sk, Content: content,
		OriginServerTS: ts,
	})
	if err != nil {
		return roomErr(err)
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]string{"event_id": id})
}

func (s *Service) redact(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	var body struct {
		Reason string `json:"reason,omitempty"`
	}
	if err := httpx.DecodeJSONOptional(r, &body); err != nil {
		return err
	}
	roomID, target := httpx.Var(r, "roomID"), httpx.Var(r, "eventID")
	content := map[string]any{}
	if body.Reason != "" {
		content["reason"] = body.Reason
	}
	ver, err := s.rooms.RoomVersion(r.Context(), roomID)
	if err != nil {
		return roomErr(err)
	}
	if ver == gomatrixserverlib.RoomVersionV11 || ver == gomatrixserverlib.RoomVersionV12 {
		content["redacts"] = target // v11 moved redacts into content
	}
	raw, _ := json.Marshal(content)
	id, err := s.rooms.Send(r.Context(), roomserver.SendRequest{
		RoomID: roomID, Sender: dev.UserID, Type: "m.room.redaction", Content: raw, Redacts: target,
		Txn: &roomserver.Txn{DeviceID: dev.DeviceID, TxnID: "redact/" + httpx.Var(r, "txnID")},
	})
	if err != nil {
		return roomErr(err)
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]string{"event_id": id})
}

// memberContent builds m.room.member content for userID with its profile.
func (s *Service) memberContent(ctx context.Context, userID, membership string, extra map[string]any) json.RawMessage {
	c := map[string]any{"membership": membership}
	if membership == "join" || membership == "invite" || membership == "knock" {
		if p, err := s.users.Profile(ctx, userID); err == nil {
			if p.DisplayName != "" {
				c["displayname"] = p.DisplayName
			}
			if p.AvatarURL != "" {
				c["avatar_url"] = p.AvatarURL
			}
		}
	}
	for k, v := range extra {
		c[k] = v
	}
	b, _ := json.Marshal(c)
	return b
}

func (s *Service) joinRoom(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	extra, err := decodeMemberBody(r)
	if err != nil {
		return err
	}
	roomID := httpx.Var(r, "roomID")
	if roomID == "" {
		roomID = httpx.Var(r, "roomIDOrAlias")
	}
	via, err := s.viaServers(r.Context(), r, &roomID)
	if err != nil {
		return err
	}
	uid := dev.UserID
	_, err = s.rooms.JoinRoom(r.Context(), roomserver.MembershipRequest{
		RoomID: roomID, UserID: uid, Via: via, Content: s.memberContent(r.Context(), uid, "join", extra),
	})
	if err != nil {
		return roomErr(err)
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
}

// viaServers resolves *roomIDOrAlias to a room ID (asking the alias's server for a remote
// alias) and returns the servers to join or knock through: the via and server_name query
// parameters, then the servers a remote alias named.
func (s *Service) viaServers(ctx context.Context, r *http.Request, roomIDOrAlias *string) ([]string, error) {
	q := r.URL.Query()
	via := append(q["via"], q["server_name"]...)
	if strings.HasPrefix(*roomIDOrAlias, "#") {
		if _, server, err := matrix.SplitID('#', *roomIDOrAlias); err == nil && server != s.global.ServerName {
			roomID, servers, err := s.rooms.RemoteAlias(ctx, *roomIDOrAlias)
			if err != nil {
				return nil, err
			}
			*roomIDOrAlias = roomID
			return append(via, servers...), nil
		}
	}
	if err := s.resolveRoomAlias(ctx, roomIDOrAlias); err != nil {
		return nil, err
	}
	return via, nil
}

// decodeMemberBody reads the optional body of /join or /knock: as in Synapse, its keys
// (reason and any custom content) become the member event's content, except those the
// server sets itself.
func decodeMemberBody(r *http.Request) (map[string]any, error) {
	var body map[string]json.RawMessage
	if err := httpx.DecodeJSONOptional(r, &body); err != nil {
		return nil, err
	}
	extra := map[string]any{}
	for k, v := range body {
		switch k {
		case "membership", "third_party_signed", "join_authorised_via_users_server":
			continue
		case "reason":
			var reason string
			if json.Unmarshal(v, &reason) != nil {
				return nil, matrix.BadJSON("reason must be a string")
			}
		}
		extra[k] = v
	}
	return extra, nil
}

// knockRoom asks to join a room whose join rule is knock (or knock_restricted).
func (s *Service) knockRoom(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	extra, err := decodeMemberBody(r)
	if err != nil {
		return err
	}
	roomID := httpx.Var(r, "roomIDOrAlias")
	via, err := s.viaServers(r.Context(), r, &roomID)
	if err != nil {
		return err
	}
	uid := dev.UserID
	_, err = s.rooms.KnockRoom(r.Context(), roomserver.MembershipRequest{
		RoomID: roomID, UserID: uid, Via: via, Content: s.memberContent(r.Context(), uid, "knock", extra),
	})
	if err != nil {
		return roomErr(err)
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
}

// upgradeRoom replaces a room by a new room of another version.
func (s *Service) upgradeRoom(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	var body struct {
		NewVersion         string          `json:"new_version"`
		AdditionalCreators json.RawMessage `json:"additional_creators"`
	}
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.NewVersion == "" {
		return matrix.MissingParam("new_version is required")
	}
	var creators []string
	if len(body.AdditionalCreators) > 0 && string(body.AdditionalCreators) != "null" {
		if err := json.Unmarshal(body.AdditionalCreators, &creators); err != nil {
			return matrix.BadJSON("additional_creators must be an array of user IDs")
		}
	}
	id, err := s.rooms.UpgradeRoom(r.Context(), roomserver.UpgradeRequest{
		RoomID: httpx.Var(r, "roomID"), Sender: dev.UserID, NewVersion: body.NewVersion,
		AdditionalCreators: creators, MemberContent: s.memberContent(r.Context(), dev.UserID, "join", nil),
	})
	if err != nil {
		return roomErr(err)
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]string{"replacement_room": id})
}

func (s *Service) leaveRoom(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	var body struct {
		Reason string `json:"reason,omitempty"`
	}
	if err := httpx.DecodeJSONOptional(r, &body); err != nil {
		return err
	}
	uid := dev.UserID
	extra := map[string]any{}
	if body.Reason != "" {
		extra["reason"] = body.Reason
	}
	_, err := s.rooms.Send(r.Context(), roomserver.SendRequest{
		RoomID: httpx.Var(r, "roomID"), Sender: uid, Type: "m.room.member", StateKey: &uid,
		Content: s.memberContent(r.Context(), uid, "leave", extra),
	})
	if err != nil {
		return roomErr(err)
	}
	return httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

func (s *Service) membershipAction(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	var body struct {
		UserID string `json:"user_id"`
		Reason string `json:"reason,omitempty"`
	}
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	if _, _, err := matrix.SplitID('@', body.UserID); err != nil {
		return matrix.BadJSON("user_id must be a user ID")
	}
	membership := map[string]string{"invite": "invite", "kick": "leave", "ban": "ban", "unban": "leave"}[httpx.Var(r, "action")]
	extra := map[string]any{}
	if body.Reason != "" {
		extra["reason"] = body.Reason
	}
	target := body.UserID
	_, err := s.rooms.Send(r.Context(), roomserver.SendRequest{
		RoomID: httpx.Var(r, "roomID"), Sender: dev.UserID, Type: "m.room.member", StateKey: &target,
		Content: s.memberContent(r.Context(), target, membership, extra),
	})
	if err != nil {
		return roomErr(err)
	}
	return httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

// updateMemberships re-sends userID's join event in every joined room after a profile change,
// so the rooms show the new name and avatar.
func (s *Service) updateMemberships(ctx context.Context, userID string) error {
	if s.rooms == nil {
		return nil
	}
	rooms, err := s.rooms.RoomsForUser(ctx, userID, "join")
	if err != nil {
		return err
	}
	for _, roomID := range rooms {
		_, cur, err := s.rooms.Membership(ctx, roomID, userID)
		if err != nil || cur == nil {
			continue
		}
		var extra map[string]any
		_ = json.Unmarshal(cur.PDU.Content(), &extra)
		delete(extra, "displayname")
		delete(extra, "avatar_url")
		uid := userID
		if _, err := s.rooms.Send(ctx, roomserver.SendRequest{
			RoomID: roomID, Sender: userID, Type: "m.room.member", StateKey: &uid,
			Content: s.memberContent(ctx, userID, "join", extra),
		}); err != nil {
			s.log.Warn("updating membership after profile change", "room_id", roomID, "user_id", userID, "error", err)
		}
	}
	return nil
}
