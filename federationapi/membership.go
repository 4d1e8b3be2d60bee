package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/roomserver"
)

// This file serves the membership handshakes: make_join/send_join, make_leave/send_leave and
// make_knock/send_knock.

// templateResponse is the answer of make_join, make_leave and make_knock.
type templateResponse struct {
	Event       gomatrixserverlib.ProtoEvent  `json:"event"`
	RoomVersion gomatrixserverlib.RoomVersion `json:"room_version"`
}

// remoteVersions returns the room versions named by the ver query parameters ("1" when none).
func remoteVersions(r *http.Request) []gomatrixserverlib.RoomVersion {
	vs := r.URL.Query()["ver"]
	if len(vs) == 0 {
		return []gomatrixserverlib.RoomVersion{gomatrixserverlib.RoomVersionV1}
	}
	out := make([]gomatrixserverlib.RoomVersion, 0, len(vs))
	for _, v := range vs {
		out = append(out, gomatrixserverlib.RoomVersion(v))
	}
	return out
}

// templateTarget parses the room and user of a make_* request and checks that origin may
// speak for the user, that the room is known here and that its ACL admits origin.
func (in *Inbound) templateTarget(r *http.Request, req *fedRequest) (*spec.RoomID, *spec.UserID, gomatrixserverlib.IRoomVersion, error) {
	roomID, err := spec.NewRoomID(httpx.Var(r, "roomID"))
	if err != nil {
		return nil, nil, nil, matrix.InvalidParam("invalid room ID")
	}
	userID, err := spec.NewUserID(httpx.Var(r, "userID"), true)
	if err != nil {
		return nil, nil, nil, matrix.InvalidParam("invalid user ID")
	}
	if userID.Domain() != req.origin {
		return nil, nil, nil, matrix.Forbidden("the user %s does not belong to %s", userID.String(), req.origin)
	}
	ver, err := in.roomVersion(r.Context(), roomID.String())
	if err != nil {
		return nil, nil, nil, err
	}
	if err := in.checkACL(r.Context(), roomID.String(), req.origin); err != nil {
		return nil, nil, nil, err
	}
	return roomID, userID, ver, nil
}

func (in *Inbound) makeJoin(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	roomID, userID, ver, err := in.templateTarget(r, req)
	if err != nil {
		return err
	}
	ctx := r.Context()
	inRoom, err := in.rooms.ServerInRoom(ctx, roomID.String(), in.cfg.ServerName)
	if err != nil {
		return err
	}
	res, err := gomatrixserverlib.HandleMakeJoin(gomatrixserverlib.HandleMakeJoinInput{
		Context: ctx, UserID: *userID, SenderID: spec.SenderIDFromUserID(*userID), RoomID: *roomID,
		RoomVersion: ver.Version(), RemoteVersions: remoteVersions(r), RequestOrigin: req.origin,
		LocalServerName: spec.ServerName(in.cfg.ServerName), LocalServerInRoom: inRoom,
		RoomQuerier: restrictedQuerier{in}, UserIDQuerier: userIDForSender,
		BuildEventTemplate: func(p *gomatrixserverlib.ProtoEvent) (gomatrixserverlib.PDU, []gomatrixserverlib.PDU, error) {
			return in.rooms.BuildTemplate(ctx, p)
		},
	})
	if err != nil {
		return gmslError(err)
	}
	return httpx.WriteJSON(w, http.StatusOK, templateResponse{Event: res.JoinTemplateEvent, RoomVersion: res.RoomVersion})
}

func (in *Inbound) makeLeave(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	roomID, userID, ver, err := in.templateTarget(r, req)
	if err != nil {
		return err
	}
	sk := userID.String()
	p := gomatrixserverlib.ProtoEvent{SenderID: sk, RoomID: roomID.String(), Type: spec.MRoomMember, StateKey: &sk,
		Content: spec.RawJSON(`{"membership":"leave"}`)}
	if _, _, err := in.rooms.BuildTemplate(r.Context(), &p); err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, templateResponse{Event: p, RoomVersion: ver.Version()})
}

func (in *Inbound) makeKnock(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	roomID, userID, ver, err := in.templateTarget(r, req)
	if err != nil {
		return err
	}
	if !slices.Contains(remoteVersions(r), ver.Version()) {
		return matrix.Errorf(http.StatusBadRequest, matrix.CodeIncompatibleRoomVer, "room version %s is not supported by the knocking server", ver.Version()).
			With("room_version", string(ver.Version()))
	}
	if !knockingVersion(ver) {
		return matrix.Errorf(http.StatusBadRequest, matrix.CodeIncompatibleRoomVer, "room version %s does not support knocking", ver.Version()).
			With("room_version", string(ver.Version()))
	}
	sk := userID.String()
	p := gomatrixserverlib.ProtoEvent{SenderID: sk, RoomID: roomID.String(), Type: spec.MRoomMember, StateKey: &sk,
		Content: spec.RawJSON(`{"membership":"knock"}`)}
	if _, _, err := in.rooms.BuildTemplate(r.Context(), &p); err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, templateResponse{Event: p, RoomVersion: ver.Version()})
}

// knockingVersion reports whether room version v has knocking (v7 and later).
func knockingVersion(v gomatrixserverlib.IRoomVersion) bool {
	switch v.Version() {
	case gomatrixserverlib.RoomVersionV1, gomatrixserverlib.RoomVersionV2, gomatrixserverlib.RoomVersionV3,
		gomatrixserverlib.RoomVersionV4, gomatrixserverlib.RoomVersionV5, gomatrixserverlib.RoomVersionV6:
		return false
	}
	return true
}

func (in *Inbound) sendJoinV1(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	return in.sendJoin(w, r, req, false)
}

func (in *Inbound) sendJoinV2(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	return in.sendJoin(w, r, req, true)
}

// sendJoinResponse is the answer of send_join.
type sendJoinResponse struct {
	Origin         string            `json:"origin"`
	AuthChain      []json.RawMessage `json:"auth_chain"`
	State          []json.RawMessage `json:"state"`
	Event          json.RawMessage   `json:"event"`
	MembersOmitted bool              `json:"members_omitted"`
	ServersInRoom  []string          `json:"servers_in_room"`
}

// sendJoin checks the join (gmsl's HandleSendJoin: shape, sender, signature, bans), co-signs
// it, authorises and persists it, and answers with the state before it and its auth chain.
func (in *Inbound) sendJoin(w http.ResponseWriter, r *http.Request, req *fedRequest, v2 bool) error {
	ctx := r.Context()
	roomID, err := spec.NewRoomID(httpx.Var(r, "roomID"))
	if err != nil {
		return matrix.InvalidParam("invalid room ID")
	}
	ver, err := in.roomVersion(ctx, roomID.String())
	if err != nil {
		return err
	}
	if err := in.checkACL(ctx, roomID.String(), req.origin); err != nil {
		return err
	}
	res, err := gomatrixserverlib.HandleSendJoin(gomatrixserverlib.HandleSendJoinInput{
		Context: ctx, RoomID: *roomID, EventID: httpx.Var(r, "eventID"), JoinEvent: req.content,
		RoomVersion: ver.Version(), RequestOrigin: req.origin, LocalServerName: spec.ServerName(in.cfg.ServerName),
		KeyID: gomatrixserverlib.KeyID(in.cfg.Key.ID), PrivateKey: in.cfg.Key.Private, Verifier: in.keys,
		MembershipQuerier: membershipQuerier{in}, UserIDQuerier: userIDForSender,
		StoreSenderIDFromPublicID: func(context.Context, spec.SenderID, string, spec.RoomID) error { return nil },
	})
	if err != nil {
		return gmslError(err)
	}
	join := res.JoinEvent
	if err := in.inputMembership(ctx, join); err != nil {
		return err
	}
	state, chain, err := in.rooms.StateAtEvent(ctx, roomID.String(), join.EventID())
	if err != nil {
		return fmt.Errorf("loading the state before %s: %w", join.EventID(), err)
	}
	servers, err := in.rooms.ServersInRoom(ctx, roomID.String())
	if err != nil {
		return err
	}
	resp := sendJoinResponse{
		Origin: in.cfg.ServerName, AuthChain: fedJSONs(chain), State: fedJSONs(state),
		Event: fedJSON(join), ServersInRoom: servers,
	}
	if !v2 {
		return httpx.WriteJSON(w, http.StatusOK, []any{200, resp})
	}
	return httpx.WriteJSON(w, http.StatusOK, resp)
}

// inputMembership persists a membership event a remote server sent through send_join,
// send_leave or send_knock: 403 M_FORBIDDEN when the auth rules reject it (now or against
// the current state), 400 M_BAD_JSON when it refers to events this server lacks.
func (in *Inbound) inputMembership(ctx context.Context, ev gomatrixserverlib.PDU) error {
	res, err := in.rooms.InputEvent(ctx, ev, roomserver.InputOptions{})
	var me *roomserver.MissingEventsError
	switch {
	case errors.As(err, &me):
		return matrix.BadJSON("the event refers to unknown events: %s", me.Error())
	case err != nil:
		return err
	case res.SoftFailed:
		return matrix.Forbidden("the event is not allowed by the room's current state")
	}
	return nil
}

// parseMembership parses and checks a send_leave or send_knock body: an m.room.member event
// of roomID with the path's event ID, about its sender, with membership want, sent by a user
// of origin and signed by origin.
func (in *Inbound) parseMembership(r *http.Request, req *fedRequest, want string) (gomatrixserverlib.PDU, error) {
	ctx := r.Context()
	roomID := httpx.Var(r, "roomID")
	ver, err := in.roomVersion(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if err := in.checkACL(ctx, roomID, req.origin); err != nil {
		return nil, err
	}
	ev, err := parsePDU(ver, req.content)
	if err != nil {
		return nil, err
	}
	if ev.RoomID().String() != roomID {
		return nil, matrix.BadJSON("the event's room ID does not match the path")
	}
	if ev.EventID() != httpx.Var(r, "eventID") {
		return nil, matrix.BadJSON("the event ID does not match the path")
	}
	if ev.Type() != spec.MRoomMember || ev.StateKey() == nil {
		return nil, matrix.BadJSON("the event is not a membership event")
	}
	if !ev.StateKeyEquals(string(ev.SenderID())) {
		return nil, matrix.BadJSON("the event's state_key must be its sender")
	}
	m, err := ev.Membership()
	if err != nil || m != want {
		return nil, matrix.BadJSON("the event's membership must be %q", want)
	}
	sender, err := userIDForSender(ev.RoomID(), ev.SenderID())
	if err != nil {
		return nil, matrix.BadJSON("invalid sender")
	}
	if sender.Domain() != req.origin {
		return nil, matrix.Forbidden("the sender does not belong to %s", req.origin)
	}
	if err := gomatrixserverlib.VerifyEventSignatures(ctx, ev, in.keys, userIDForSender); err != nil {
		return nil, matrix.Forbidden("signature check failed: %v", err)
	}
	return ev, nil
}

// parsePDU parses an untrusted PDU of room version ver: 400 M_BAD_JSON (413 M_TOO_LARGE for
// an oversized event) when it is malformed, and for one whose content hash fails (gmsl
// redacts those) when it is a membership handshake.
func parsePDU(ver gomatrixserverlib.IRoomVersion, js []byte) (ev gomatrixserverlib.PDU, err error) {
	defer func() {
		if rec := recover(); rec != nil {
			ev, err = nil, matrix.BadJSON("invalid event")
		}
	}()
	if len(js) > 65536 {
		return nil, matrix.Errorf(http.StatusRequestEntityTooLarge, matrix.CodeTooLarge, "the event is larger than 65536 bytes")
	}
	ev, err = ver.NewEventFromUntrustedJSON(js)
	if err != nil {
		var ve gomatrixserverlib.EventValidationError
		if errors.As(err, &ve) && ve.Code == gomatrixserverlib.EventValidationTooLarge {
			return nil, matrix.Errorf(http.StatusRequestEntityTooLarge, matrix.CodeTooLarge, "%s", ve.Message)
		}
		return nil, matrix.BadJSON("invalid event: %v", err)
	}
	_ = ev.EventID()
	return ev, nil
}

func (in *Inbound) sendLeaveV1(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	if err := in.sendLeave(r, req); err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, []any{200, struct{}{}})
}

func (in *Inbound) sendLeaveV2(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	if err := in.sendLeave(r, req); err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

func (in *Inbound) sendLeave(r *http.Request, req *fedRequest) error {
	ev, err := in.parseMembership(r, req, spec.Leave)
	if err != nil {
		return err
	}
	return in.inputMembership(r.Context(), ev)
}

func (in *Inbound) sendKnock(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	ev, err := in.parseMembership(r, req, spec.Knock)
	if err != nil {
		return err
	}
	ver, err := in.roomVersion(r.Context(), ev.RoomID().String())
	if err != nil {
		return err
	}
	if !knockingVersion(ver) {
		return matrix.Errorf(http.StatusBadRequest, matrix.CodeIncompatibleRoomVer, "room version %s does not support knocking", ver.Version())
	}
	if err := in.inputMembership(r.Context(), ev); err != nil {
		return err
	}
	stored, err := in.rooms.Event(r.Context(), ev.EventID())
	if err != nil {
		return err
	}
	stripped := gjson.GetBytes(stored.PDU.JSON(), "unsigned.knock_room_state").Raw
	if stripped == "" {
		stripped = "[]"
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]json.RawMessage{"knock_room_state": json.RawMessage(stripped)})
}

// membershipQuerier answers gmsl's MembershipQuerier from the room server.
type membershipQuerier struct{ in *Inbound }

func (q membershipQuerier) CurrentMembership(ctx context.Context, roomID spec.RoomID, senderID spec.SenderID) (string, error) {
	m, _, err := q.in.rooms.Membership(ctx, roomID.String(), string(senderID))
	if err != nil {
		return "", err
	}
	if m == "" {
		return spec.Leave, nil
	}
	return m, nil
}

// restrictedQuerier answers gmsl's RestrictedRoomJoinQuerier from the room server.
type restrictedQuerier struct{ in *Inbound }

func (q restrictedQuerier) CurrentStateEvent(ctx context.Context, roomID spec.RoomID, evType, stateKey string) (gomatrixserverlib.PDU, error) {
	ev, err := q.in.rooms.CurrentStateEvent(ctx, roomID.String(), evType, stateKey)
	if errors.Is(err, sqldb.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return ev.PDU, nil
}

func (q restrictedQuerier) InvitePending(ctx context.Context, roomID spec.RoomID, senderID spec.SenderID) (bool, error) {
	m, _, err := q.in.rooms.Membership(ctx, roomID.String(), string(senderID))
	return m == spec.Invite, err
}

func (q restrictedQuerier) RestrictedRoomJoinInfo(ctx context.Context, roomID spec.RoomID, senderID spec.SenderID, local spec.ServerName) (*gomatrixserverlib.RestrictedRoomJoinInfo, error) {
	info := &gomatrixserverlib.RestrictedRoomJoinInfo{}
	inRoom, err := q.in.rooms.ServerInRoom(ctx, roomID.String(), string(local))
	if err != nil || !inRoom {
		return info, err
	}
	info.LocalServerInRoom = true
	m, _, err := q.in.rooms.Membership(ctx, roomID.String(), string(senderID))
	if err != nil {
		return nil, err
	}
	info.UserJoinedToRoom = m == spec.Join
	members, err := q.in.rooms.JoinedMembers(ctx, roomID.String())
	if err != nil {
		return nil, err
	}
	for _, u := range members {
		uid, err := spec.NewUserID(u, true)
		if err != nil || uid.Domain() != local {
			continue
		}
		_, ev, err := q.in.rooms.Membership(ctx, roomID.String(), u)
		if err != nil {
			return nil, err
		}
		if ev != nil {
			info.JoinedUsers = append(info.JoinedUsers, ev.PDU)
		}
	}
	return info, nil
}
