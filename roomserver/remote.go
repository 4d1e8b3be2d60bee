package roomserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/sjson"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
)

// This file is the roomserver side of memberships that need another server: joining a room
// this server is not in (make_join/send_join), inviting a user of another server (the
// invitee's server signs the invite), rejecting an invite or rescinding a knock in a room this
// server is not in (make_leave/send_leave), and knocking on a remote room. The federation
// calls go through Remote, which main implements over the federation client.

// Remote is what roomserver asks of other servers. Errors that carry a remote server's
// Matrix error are *matrix.Error.
type Remote interface {
	// Join joins userID to roomID through server (make_join, then send_join) with content
	// as the member event's content, and returns the join event and the room's state before
	// it, all signatures and auth checked.
	Join(ctx context.Context, server, roomID, userID string, content map[string]any) (*RemoteJoin, error)
	// Invite sends the invite ev to the invitee's server with the room's stripped state and
	// returns the event as that server signed it.
	// The stripped state holds the full create event (MSC4311) and stripped events.
	Invite(ctx context.Context, ev gomatrixserverlib.PDU, strippedState []json.RawMessage) (gomatrixserverlib.PDU, error)
	// Leave makes userID leave roomID through server (make_leave, then send_leave) and
	// returns the leave event it sent.
	Leave(ctx context.Context, server, roomID, userID string, content map[string]any) (gomatrixserverlib.PDU, error)
	// Knock knocks on roomID for userID through server (make_knock, then send_knock) and
	// returns the knock event and the room's stripped state.
	Knock(ctx context.Context, server, roomID, userID string, content map[string]any) (gomatrixserverlib.PDU, []json.RawMessage, error)
	// Alias asks server, the alias's server, which room alias names and which servers are in it.
	Alias(ctx context.Context, server, alias string) (roomID string, servers []string, err error)
}

// RemoteJoin is the result of a join through another server.
type RemoteJoin struct {
	Event  gomatrixserverlib.PDU   // the join event, as the resident server accepted it
	Events []gomatrixserverlib.PDU // the auth chain and the state, each event after its auth events
	State  []string                // IDs of the state before the join
}

// MembershipRequest asks for a user's own membership change (join or knock) in a room that
// may be on another server.
type MembershipRequest struct {
	RoomID  string
	UserID  string
	Via     []string        // servers to go through when this server is not in the room
	Content json.RawMessage // the m.room.member content (its membership is set by the method)
}

// JoinRoom joins r.UserID to r.RoomID and returns the room ID. When this server is in the room
// (or no Remote is configured) the join is a local event; otherwise it goes through r.Via, the
// server of the user's inviter and the room ID's server, in turn, until one succeeds; the
// returned state is stored and the join persisted. Errors: 404 M_NOT_FOUND when no server is
// known to join through, the last remote server's Matrix error, 502 M_UNKNOWN when none
// answered, and Send's errors for a local join.
func (s *Service) JoinRoom(ctx context.Context, r MembershipRequest) (string, error) {
	if err := checkUserID(r.UserID); err != nil {
		return "", err
	}
	content, err := memberContent(r.Content, spec.Join)
	if err != nil {
		return "", err
	}
	local := func() (string, error) {
		_, err := s.Send(ctx, SendRequest{RoomID: r.RoomID, Sender: r.UserID, Type: spec.MRoomMember,
			StateKey: &r.UserID, Content: mustJSON(content)})
		return r.RoomID, err
	}
	in, err := s.ServerInRoom(ctx, r.RoomID, s.cfg.ServerName)
	if err != nil {
		return "", err
	}
	if in || s.cfg.Remote == nil {
		id, err := local()
		if !in || s.cfg.Remote == nil || !errors.Is(err, errNoLocalAuthoriser) {
			return id, err
		}
		// A restricted join no local member can authorise: through the other servers in
		// the room, as Synapse.
		others, serr := s.ServersInRoom(ctx, r.RoomID)
		if serr != nil {
			return "", serr
		}
		r.Via = append(slices.Clone(r.Via), others...)
	}
	servers, err := s.remoteServers(ctx, r.RoomID, r.UserID, r.Via)
	if err != nil {
		return "", err
	}
	if len(servers) == 0 {
		if _, err := s.roomInfo(ctx, r.RoomID); err == nil {
			return local() // a room of ours that everyone left
		}
		return "", matrix.NotFound("no known servers to join room %s through", r.RoomID)
	}
	var lastErr error
	for _, server := range servers {
		j, err := s.cfg.Remote.Join(ctx, server, r.RoomID, r.UserID, content)
		if err != nil {
			s.log.Info("remote join failed", "room_id", r.RoomID, "user_id", r.UserID, "server_name", server, "error", err)
			lastErr = err
			continue
		}
		if err := s.storeRemoteJoin(ctx, j); err != nil {
			return "", fmt.Errorf("storing the join of %s to %s: %w", r.UserID, r.RoomID, err)
		}
		return r.RoomID, nil
	}
	return "", remoteFailure(lastErr, "join")
}

// RemoteAlias resolves alias, a room alias of another server, by asking that server. It
// returns the room ID and the servers in the room. Errors: 404 M_NOT_FOUND when no Remote is
// configured or the alias is unknown, and the remote server's Matrix errors.
func (s *Service) RemoteAlias(ctx context.Context, alias string) (string, []string, error) {
	_, server, err := matrix.SplitID('#', alias)
	if err != nil {
		return "", nil, matrix.InvalidParam("invalid room alias %q", alias)
	}
	if s.cfg.Remote == nil || server == s.cfg.ServerName {
		return "", nil, matrix.NotFound("room alias %s not found", alias)
	}
	roomID, servers, err := s.cfg.Remote.Alias(ctx, server, alias)
	if err != nil {
		if matrix.AsError(err) != nil {
			return "", nil, err
		}
		return "", nil, fmt.Errorf("%w: %w", matrix.Errorf(http.StatusBadGateway, matrix.CodeUnknown, "could not ask %s about %s", server, alias), err)
	}
	return roomID, servers, nil
}

// KnockRoom knocks on r.RoomID for r.UserID: a local event when this server is in the room,
// otherwise through r.Via and the room ID's server in turn; the knock is then stored for
// the user with the room's stripped state. Errors are those of JoinRoom.
func (s *Service) KnockRoom(ctx context.Context, r MembershipRequest) (string, error) {
	if err := checkUserID(r.UserID); err != nil {
		return "", err
	}
	content, err := memberContent(r.Content, spec.Knock)
	if err != nil {
		return "", err
	}
	in, err := s.ServerInRoom(ctx, r.RoomID, s.cfg.ServerName)
	if err != nil {
		return "", err
	}
	if in || s.cfg.Remote == nil {
		_, err := s.Send(ctx, SendRequest{RoomID: r.RoomID, Sender: r.UserID, Type: spec.MRoomMember,
			StateKey: &r.UserID, Content: mustJSON(content)})
		return r.RoomID, err
	}
	servers, err := s.remoteServers(ctx, r.RoomID, r.UserID, r.Via)
	if err != nil {
		return "", err
	}
	if len(servers) == 0 {
		return "", matrix.NotFound("no known servers to knock on room %s through", r.RoomID)
	}
	var lastErr error
	for _, server := range servers {
		ev, stripped, err := s.cfg.Remote.Knock(ctx, server, r.RoomID, r.UserID, content)
		if err != nil {
			s.log.Info("remote knock failed", "room_id", r.RoomID, "user_id", r.UserID, "server_name", server, "error", err)
			lastErr = err
			continue
		}
		if _, err := s.StoreOutOfBandMembership(ctx, ev, stripped); err != nil {
			return "", err
		}
		return r.RoomID, nil
	}
	return "", remoteFailure(lastErr, "knock")
}

// remoteServers lists the servers to reach roomID through for userID, without this server and
// duplicates: via first, then the sender of the user's invite (or the server of the user's
// knock), then, when none of these names a server, the server of the room ID (not for v12
// room IDs, which name none).
func (s *Service) remoteServers(ctx context.Context, roomID, userID string, via []string) ([]string, error) {
	out := slices.Clone(via)
	m, ev, err := s.Membership(ctx, roomID, userID)
	if err != nil {
		return nil, err
	}
	if ev != nil && (m == spec.Invite || m == spec.Knock) {
		out = append(out, domainOf(string(ev.PDU.SenderID())))
		var u struct {
			InviteState []struct {
				Sender string `json:"sender"`
			} `json:"invite_room_state"`
		}
		_ = json.Unmarshal(ev.PDU.Unsigned(), &u)
		for _, st := range u.InviteState {
			out = append(out, domainOf(st.Sender))
		}
	}
	// The room ID's server only as a last resort, when nothing else names a server (as
	// Synapse: a client that gives servers to go through gets only those).
	if len(out) == 0 {
		if _, server, err := matrix.SplitID('!', roomID); err == nil {
			out = append(out, server)
		}
	}
	seen := map[string]bool{s.cfg.ServerName: true, "": true}
	return slices.DeleteFunc(out, func(server string) bool {
		if seen[server] {
			return true
		}
		seen[server] = true
		return false
	}), nil
}

// storeRemoteJoin stores the auth chain and state of a remote join as outliers and persists
// the join event on that state. It consumes j.Events: once they are stored it drops them, so
// that the state is not held in memory a second time while the join's snapshot is built
// from the database.
func (s *Service) storeRemoteJoin(ctx context.Context, j *RemoteJoin) error {
	stored := map[string]bool{}
	errs, err := s.InputOutliers(ctx, j.Events)
	if err != nil {
		return fmt.Errorf("storing the state of a remote join: %w", err)
	}
	for i, ev := range j.Events {
		err := errs[i]
		var me *MissingEventsError
		switch {
		case err == nil:
			stored[ev.EventID()] = true
		case errors.Is(err, ErrRejected), errors.As(err, &me):
			// The resident server checked the join against this state; an event we cannot
			// accept is left out of it.
			s.log.Warn("remote join: leaving out a state event", "event_id", ev.EventID(), "error", err)
		default:
			return fmt.Errorf("storing state event %s: %w", ev.EventID(), err)
		}
	}
	j.Events, errs = nil, nil
	state := make([]string, 0, len(j.State))
	for _, id := range j.State {
		if stored[id] {
			state = append(state, id)
		}
	}
	res, err := s.InputEvent(ctx, j.Event, InputOptions{StateBefore: state})
	if err != nil {
		return err
	}
	if res.SoftFailed {
		return fmt.Errorf("join event %s soft-failed", j.Event.EventID())
	}
	return nil
}

// remoteMembership handles, for Send, the membership changes that need another server: an
// invite of a remote user, and a user's own leave (rejecting an invite or rescinding a knock)
// in a room this server is not in. handled is false for every other request.
func (s *Service) remoteMembership(ctx context.Context, r SendRequest) (id string, handled bool, err error) {
	if s.cfg.Remote == nil || r.Type != spec.MRoomMember || r.StateKey == nil {
		return "", false, nil
	}
	var c struct {
		Membership string `json:"membership"`
	}
	if json.Unmarshal(r.Content, &c) != nil {
		return "", false, nil
	}
	target := *r.StateKey
	switch {
	case c.Membership == spec.Invite && domainOf(target) != "" && domainOf(target) != s.cfg.ServerName:
		id, err := s.inviteRemote(ctx, r)
		return id, true, err
	case c.Membership == spec.Leave && target == r.Sender:
		in, err := s.ServerInRoom(ctx, r.RoomID, s.cfg.ServerName)
		if err != nil || in {
			return "", err != nil, err
		}
		id, err := s.leaveRemote(ctx, r)
		return id, true, err
	}
	return "", false, nil
}

// errBuilt ends the transaction that builds an event without persisting it.
var errBuilt = errors.New("built")

// inviteRemote builds r's invite of a remote user on the room's current state, has the
// invitee's server sign it, and persists it. The room stays locked (in this process) while
// the invitee's server answers, so the event still extends the forward extremities.
func (s *Service) inviteRemote(ctx context.Context, r SendRequest) (string, error) {
	ri, err := s.roomInfo(ctx, r.RoomID)
	if err != nil {
		return "", err
	}
	unlock := s.locks.lock(r.RoomID)
	defer unlock()
	var (
		ev       gomatrixserverlib.PDU
		existing string
		stripped []json.RawMessage
	)
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		room, err := s.lockRoomRow(ctx, tx, r.RoomID, ri)
		if err != nil {
			return err
		}
		if existing, err = sameState(ctx, tx, room.nid, r.Sender, r.Type, *r.StateKey, r.Content); err != nil || existing != "" {
			return err
		}
		if ev, err = s.build(ctx, tx, room, &gomatrixserverlib.ProtoEvent{
			SenderID: r.Sender, Type: r.Type, StateKey: r.StateKey, Content: spec.RawJSON(r.Content),
		}); err != nil {
			return err
		}
		tuples := []gomatrixserverlib.StateKeyTuple{{EventType: spec.MRoomCreate}, {EventType: spec.MRoomMember, StateKey: r.Sender}}
		for _, t := range strippedStateTypes {
			tuples = append(tuples, gomatrixserverlib.StateKeyTuple{EventType: t})
		}
		evs, err := currentStateEvents(ctx, tx, room.nid, tuples)
		if err != nil {
			return fmt.Errorf("loading stripped state: %w", err)
		}
		for _, e := range evs {
			if e.PDU.Type() == spec.MRoomCreate {
				// MSC4311: the full create event, first, so the invitee can check the room ID.
				full, err := matrix.WithoutUnsigned(e.PDU.JSON())
				if err != nil {
					return fmt.Errorf("stripping create event: %w", err)
				}
				stripped = append([]json.RawMessage{full}, stripped...)
				continue
			}
			b, err := json.Marshal(gomatrixserverlib.NewInviteStrippedState(e.PDU))
			if err != nil {
				return fmt.Errorf("encoding stripped state: %w", err)
			}
			stripped = append(stripped, b)
		}
		return errBuilt // nothing to write yet
	})
	if existing != "" {
		return existing, nil
	}
	if !errors.Is(err, errBuilt) {
		if err == nil || matrix.AsError(err) != nil {
			return "", err
		}
		return "", fmt.Errorf("building invite of %s: %w", *r.StateKey, err)
	}
	signed, err := s.cfg.Remote.Invite(ctx, ev, stripped)
	if err != nil {
		return "", remoteFailure(err, "invite")
	}
	if signed.EventID() != ev.EventID() {
		return "", matrix.Errorf(http.StatusBadGateway, matrix.CodeUnknown, "the invitee's server changed the invite event")
	}
	var pos int64
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		room, err := s.lockRoomRow(ctx, tx, r.RoomID, ri)
		if err != nil {
			return err
		}
		if !sameSet(room.extremities, signed.PrevEventIDs()) {
			return matrix.Errorf(http.StatusConflict, matrix.CodeUnknown, "the room changed during the invite; try again")
		}
		pos, err = s.persist(ctx, tx, room, signed, nil)
		return err
	})
	if err != nil {
		if matrix.AsError(err) != nil {
			return "", err
		}
		return "", fmt.Errorf("persisting invite %s: %w", signed.EventID(), err)
	}
	s.advance(pos)
	return signed.EventID(), nil
}

// leaveRemote makes r.Sender leave a room this server is not in: rejecting an invite or
// rescinding a knock through the inviter's (or the room's) server. When no server accepts the
// leave, an invite is still rejected locally, as Synapse does, so that the user is rid of it.
func (s *Service) leaveRemote(ctx context.Context, r SendRequest) (string, error) {
	m, cur, err := s.Membership(ctx, r.RoomID, r.Sender)
	if err != nil {
		return "", err
	}
	if cur == nil {
		if _, err := s.roomInfo(ctx, r.RoomID); err != nil {
			return "", err
		}
		return "", matrix.Forbidden("%s is not in room %s", r.Sender, r.RoomID)
	}
	if m != spec.Invite && m != spec.Knock {
		if m == spec.Leave || m == spec.Ban {
			return cur.PDU.EventID(), nil // nothing to do: already out
		}
		return "", matrix.Forbidden("%s is not in room %s", r.Sender, r.RoomID)
	}
	content, err := memberContent(r.Content, spec.Leave)
	if err != nil {
		return "", err
	}
	servers, err := s.remoteServers(ctx, r.RoomID, r.Sender, nil)
	if err != nil {
		return "", err
	}
	for _, server := range servers {
		ev, err := s.cfg.Remote.Leave(ctx, server, r.RoomID, r.Sender, content)
		if err != nil {
			s.log.Info("remote leave failed", "room_id", r.RoomID, "user_id", r.Sender, "server_name", server, "error", err)
			continue
		}
		if _, err := s.StoreOutOfBandMembership(ctx, ev, nil); err != nil {
			return "", err
		}
		return ev.EventID(), nil
	}
	// No server took the leave: reject locally with an event on top of the invite.
	ev, err := s.localOutOfBandLeave(cur.PDU, content)
	if err != nil {
		return "", err
	}
	if _, err := s.StoreOutOfBandMembership(ctx, ev, nil); err != nil {
		return "", err
	}
	return ev.EventID(), nil
}

// localOutOfBandLeave builds and signs a leave of invite's target that follows the invite (its
// only prev and auth event), for a rejection no resident server accepted.
func (s *Service) localOutOfBandLeave(invite gomatrixserverlib.PDU, content map[string]any) (gomatrixserverlib.PDU, error) {
	ver, err := gomatrixserverlib.GetRoomVersion(invite.Version())
	if err != nil {
		return nil, err
	}
	p := &gomatrixserverlib.ProtoEvent{
		SenderID: *invite.StateKey(), RoomID: invite.RoomID().String(), Type: spec.MRoomMember,
		StateKey: invite.StateKey(), PrevEvents: []string{invite.EventID()}, AuthEvents: []string{invite.EventID()},
		Depth: invite.Depth() + 1, Content: spec.RawJSON(mustJSON(content)),
	}
	ev, err := ver.NewEventBuilderFromProtoEvent(p).Build(time.Now(), spec.ServerName(s.cfg.ServerName), s.cfg.KeyID, s.cfg.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("building local leave: %w", err)
	}
	return ev, nil
}

// StoreOutOfBandMembership stores ev, an m.room.member event of a room this server is not in
// (an invite received from another server, a rejection or a knock sent through one), in the
// event stream, with the room's stripped state (invite_room_state or knock_room_state) for
// clients. It sets the user's membership but not the room's state or DAG: this server has
// neither. The room's row is created if needed. An event already stored returns its
// position. Errors: 400 M_BAD_JSON for a non-membership event, 400 M_UNSUPPORTED_ROOM_VERSION.
func (s *Service) StoreOutOfBandMembership(ctx context.Context, ev gomatrixserverlib.PDU, stripped []json.RawMessage) (int64, error) {
	if ev.Type() != spec.MRoomMember || ev.StateKey() == nil {
		return 0, matrix.BadJSON("event %s is not a membership event", ev.EventID())
	}
	membership, err := ev.Membership()
	if err != nil {
		return 0, matrix.BadJSON("event %s has no membership", ev.EventID())
	}
	roomID := ev.RoomID().String()
	ri, err := s.roomInfo(ctx, roomID)
	if errors.Is(err, sqldb.ErrNotFound) {
		ri, err = s.createRemoteRoom(ctx, roomID, ev.Version())
	}
	if err != nil {
		return 0, err
	}
	js := ev.JSON()
	key := ""
	switch membership {
	case spec.Invite:
		key = "invite_room_state"
	case spec.Knock:
		key = "knock_room_state"
	}
	if key != "" {
		if stripped == nil {
			stripped = []json.RawMessage{}
		}
		b, err := json.Marshal(stripped)
		if err != nil {
			return 0, fmt.Errorf("encoding stripped state: %w", err)
		}
		if js, err = sjson.SetRawBytes(js, "unsigned."+key, b); err != nil {
			return 0, fmt.Errorf("adding stripped state to %s: %w", ev.EventID(), err)
		}
	}
	unlock := s.locks.lock(roomID)
	defer unlock()
	var (
		pos      int64
		existing bool
	)
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		var nid int64
		err := tx.QueryRow(ctx, `SELECT event_nid, stream_pos FROM events WHERE event_id = $1`, ev.EventID()).Scan(&nid, &pos)
		if err == nil && pos > 0 {
			existing = true
			return nil
		}
		if err == nil {
			// Stored as an outlier: put it in the stream.
			if pos, err = tx.NextSeq(ctx, "room_events"); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE events SET stream_pos = $1, event_json = $2 WHERE event_nid = $3`, pos, js, nid); err != nil {
				return fmt.Errorf("moving %s into the stream: %w", ev.EventID(), err)
			}
		} else {
			if pos, err = tx.NextSeq(ctx, "room_events"); err != nil {
				return err
			}
			if nid, err = insertEvent(ctx, tx, storedEvent{pdu: ev, roomNID: ri.nid, streamPos: pos, js: js}); err != nil {
				return err
			}
		}
		return upsertMembership(ctx, tx, ri.nid, *ev.StateKey(), membership, nid)
	})
	if err != nil {
		if matrix.AsError(err) != nil {
			return 0, err
		}
		return 0, fmt.Errorf("storing membership %s: %w", ev.EventID(), err)
	}
	if !existing {
		s.advance(pos)
	}
	return pos, nil
}

// memberContent decodes content (may be empty) and sets its membership.
func memberContent(content json.RawMessage, membership string) (map[string]any, error) {
	c := map[string]any{}
	if len(content) > 0 && string(content) != "null" {
		if err := json.Unmarshal(content, &c); err != nil {
			return nil, matrix.BadJSON("m.room.member content must be a JSON object")
		}
	}
	c["membership"] = membership
	return c, nil
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only maps of JSON values reach here
	}
	return b
}

// remoteFailure is the client error for a membership change no remote server accepted: the
// last server's own Matrix error, or 502.
func remoteFailure(err error, what string) error {
	if err == nil {
		return matrix.Errorf(http.StatusBadGateway, matrix.CodeUnknown, "no server accepted the %s", what)
	}
	if e := matrix.AsError(err); e != nil {
		return e
	}
	return fmt.Errorf("%w: %w", matrix.Errorf(http.StatusBadGateway, matrix.CodeUnknown, "no server accepted the %s", what), err)
}
