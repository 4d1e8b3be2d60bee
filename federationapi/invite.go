package federationapi

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/roomserver"
)

// This file serves PUT /invite (v1 and v2): a remote server invites one of our users.

// inviteV2Body is the body of PUT /v2/invite.
type inviteV2Body struct {
	Event           json.RawMessage   `json:"event"`
	RoomVersion     string            `json:"room_version"`
	InviteRoomState []json.RawMessage `json:"invite_room_state"`
}

func (in *Inbound) inviteV1(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	ver := gjson.GetBytes(req.content, "room_version").Str // not in v1; v1 serves room versions 1 and 2
	if ver == "" {
		ver = string(gomatrixserverlib.RoomVersionV1)
	}
	var stripped []json.RawMessage
	if s := gjson.GetBytes(req.content, "unsigned.invite_room_state"); s.IsArray() {
		for _, e := range s.Array() {
			stripped = append(stripped, json.RawMessage(e.Raw))
		}
	}
	signed, err := in.invite(r.Context(), r, req, req.content, ver, stripped)
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, []any{200, map[string]json.RawMessage{"event": signed}})
}

func (in *Inbound) inviteV2(w http.ResponseWriter, r *http.Request, req *fedRequest) error {
	var body inviteV2Body
	if err := httpx.UnmarshalObject(req.content, &body); err != nil {
		return err
	}
	if len(body.Event) == 0 {
		return matrix.BadJSON("event is required")
	}
	signed, err := in.invite(r.Context(), r, req, body.Event, body.RoomVersion, body.InviteRoomState)
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]json.RawMessage{"event": signed})
}

// invite checks what gmsl's HandleInvite checks and what it leaves out (the invitee is ours,
// the membership is invite, the sender belongs to origin), co-signs the invite and stores it:
// in the DAG when this server is in the room, else as an out-of-band membership with the
// stripped state for the invitee's clients.
func (in *Inbound) invite(ctx context.Context, r *http.Request, req *fedRequest, js []byte, version string, stripped []json.RawMessage) (json.RawMessage, error) {
	ver, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	if err != nil || !supportedVersion(version) {
		return nil, matrix.Errorf(http.StatusBadRequest, matrix.CodeIncompatibleRoomVer, "room version %q is not supported", version).
			With("room_version", version)
	}
	ev, err := parsePDU(ver, js)
	if err != nil {
		return nil, err
	}
	roomID := httpx.Var(r, "roomID")
	if ev.RoomID().String() != roomID || ev.EventID() != httpx.Var(r, "eventID") {
		return nil, matrix.BadJSON("the event's room and event IDs must match the path")
	}
	if ev.Type() != spec.MRoomMember || ev.StateKey() == nil {
		return nil, matrix.BadJSON("the event is not a membership event")
	}
	if m, err := ev.Membership(); err != nil || m != spec.Invite {
		return nil, matrix.BadJSON("the event's membership must be invite")
	}
	invitee, err := spec.NewUserID(*ev.StateKey(), true)
	if err != nil || string(invitee.Domain()) != in.cfg.ServerName {
		return nil, matrix.BadJSON("the invited user does not belong to this server")
	}
	sender, err := userIDForSender(ev.RoomID(), ev.SenderID())
	if err != nil || sender.Domain() != req.origin {
		return nil, matrix.Forbidden("the inviter does not belong to %s", req.origin)
	}
	if err := in.checkACL(ctx, roomID, req.origin); err != nil {
		return nil, err
	}
	redacted, err := ver.RedactEventJSON(ev.JSON())
	if err != nil {
		return nil, matrix.BadJSON("the event cannot be redacted")
	}
	res, err := in.keys.VerifyJSONs(ctx, []gomatrixserverlib.VerifyJSONRequest{{
		ServerName: sender.Domain(), Message: redacted, AtTS: ev.OriginServerTS(),
		ValidityCheckingFunc: gomatrixserverlib.StrictValiditySignatureCheck,
	}})
	if err != nil {
		return nil, err
	}
	if res[0].Error != nil {
		return nil, matrix.Forbidden("signature check failed: %v", res[0].Error)
	}
	if m, _, err := in.rooms.Membership(ctx, roomID, invitee.String()); err != nil {
		return nil, err
	} else if m == spec.Join {
		return nil, matrix.Forbidden("the user is already joined to the room")
	}
	signed := ev.Sign(in.cfg.ServerName, gomatrixserverlib.KeyID(in.cfg.Key.ID), in.cfg.Key.Private)
	inRoom, err := in.rooms.ServerInRoom(ctx, roomID, in.cfg.ServerName)
	if err != nil {
		return nil, err
	}
	if inRoom {
		if err := in.inputMembership(ctx, signed); err != nil {
			return nil, err
		}
	} else if _, err := in.rooms.StoreOutOfBandMembership(ctx, signed, stripped); err != nil {
		return nil, err
	}
	return fedJSON(signed), nil
}

// supportedVersion reports whether this server serves rooms of version v.
func supportedVersion(v string) bool {
	for _, ok := range roomserver.SupportedRoomVersions() {
		if v == ok {
			return true
		}
	}
	return false
}
