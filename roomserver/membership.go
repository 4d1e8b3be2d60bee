package roomserver

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/sjson"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
)

// This file holds the server's rules for local membership changes beyond the auth rules
// (restricted joins, kicks), the deduplication of repeated state, and the unsigned section
// stored with state events (prev_content, replaces_state, stripped state on invites and knocks).

// authorisingUserKey is the m.room.member content key naming the user who authorised a
// restricted join.
const authorisingUserKey = "join_authorised_via_users_server"

// strippedStateTypes are the state events, besides the create event, that invites and knocks
// carry as stripped state (the spec's recommendation, as Synapse's room_prejoin_state).
var strippedStateTypes = []string{
	spec.MRoomJoinRules, spec.MRoomName, spec.MRoomAvatar, spec.MRoomCanonicalAlias,
	"m.room.encryption", spec.MRoomTopic,
}

// prepareMember applies the server's rules to a local m.room.member event from sender about
// target with content, read under the room's lock, and returns the content to build:
//   - a join by the user drops any client-supplied join_authorised_via_users_server, and in a
//     restricted (or knock_restricted) room that the user may join through membership of an
//     allowed room, names a local joined user who may invite, so the auth rules accept it;
//   - a kick (leave sent about someone else) needs a target that is joined, invited or
//     knocking (or banned: that is an unban), else 403 M_FORBIDDEN as in Synapse.
func (s *Service) prepareMember(ctx context.Context, tx *sqldb.Tx, room *roomRow, sender, target string, content spec.RawJSON) (spec.RawJSON, error) {
	var c map[string]json.RawMessage
	if err := json.Unmarshal(content, &c); err != nil {
		return nil, matrix.BadJSON("m.room.member content must be a JSON object")
	}
	var membership string
	if err := json.Unmarshal(c["membership"], &membership); err != nil {
		return nil, matrix.BadJSON("m.room.member content needs a membership string")
	}
	switch {
	case membership == spec.Join && sender == target:
		evs, err := currentStateEvents(ctx, tx, room.nid, []gomatrixserverlib.StateKeyTuple{
			{EventType: spec.MRoomMember, StateKey: target}, {EventType: spec.MRoomJoinRules},
		})
		if err != nil {
			return nil, fmt.Errorf("loading join state: %w", err)
		}
		var current string
		var joinRules gomatrixserverlib.PDU
		for _, e := range evs {
			if e.PDU.Type() == spec.MRoomMember {
				current, _ = e.PDU.Membership()
			} else {
				joinRules = e.PDU
			}
		}
		_, supplied := c[authorisingUserKey]
		delete(c, authorisingUserKey)
		if joinRules != nil && current != spec.Join && current != spec.Invite &&
			room.version.CheckRestrictedJoinsAllowed() == nil {
			jr, _ := joinRules.JoinRule()
			if jr == spec.Restricted || jr == spec.KnockRestricted {
				ok, err := memberOfAllowedRoom(ctx, tx, joinRules.Content(), sender)
				if err != nil {
					return nil, err
				}
				if ok {
					via, err := s.joinAuthoriser(ctx, tx, room)
					if err != nil {
						return nil, err
					}
					if via == "" {
						return nil, fmt.Errorf("%w: %w", errNoLocalAuthoriser,
							matrix.Forbidden("no user of this server may authorise the join of %s", sender))
					}
					c[authorisingUserKey], _ = json.Marshal(via)
					supplied = true
				}
			}
		}
		if !supplied {
			return content, nil
		}
		out, err := json.Marshal(c)
		if err != nil {
			return nil, fmt.Errorf("encoding member content: %w", err)
		}
		return out, nil
	case membership == spec.Leave && sender != target:
		current, err := currentMembership(ctx, tx, room.nid, target)
		if err != nil {
			return nil, err
		}
		switch current {
		case spec.Join, spec.Invite, spec.Knock, spec.Ban:
		default:
			return nil, matrix.Forbidden("%s is not in the room", target)
		}
	}
	return content, nil
}

// errNoLocalAuthoriser marks a restricted join the user may make (they are in an allowed
// room) that no local member can authorise: JoinRoom then joins through another server.
var errNoLocalAuthoriser = errors.New("no local user can authorise the join")

// currentMembership returns userID's current membership of the room, or "".
func currentMembership(ctx context.Context, q querier, roomNID int64, userID string) (string, error) {
	var m string
	err := q.QueryRow(ctx, `SELECT membership FROM memberships WHERE room_nid = $1 AND user_id = $2`, roomNID, userID).Scan(&m)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("looking up membership of %s: %w", userID, err)
	}
	return m, nil
}

// memberOfAllowedRoom reports whether userID is joined to one of the rooms that the allow
// list of joinRules (m.room.join_rules content) names. Malformed entries are ignored.
func memberOfAllowedRoom(ctx context.Context, q querier, joinRules []byte, userID string) (bool, error) {
	var c struct {
		Allow json.RawMessage `json:"allow"`
	}
	_ = json.Unmarshal(joinRules, &c)
	var allow []json.RawMessage
	if json.Unmarshal(c.Allow, &allow) != nil {
		return false, nil
	}
	for _, a := range allow {
		var rule struct {
			Type   string `json:"type"`
			RoomID string `json:"room_id"`
		}
		if json.Unmarshal(a, &rule) != nil || rule.Type != "m.room_membership" || rule.RoomID == "" {
			continue
		}
		var m string
		err := q.QueryRow(ctx, `SELECT m.membership FROM memberships m JOIN rooms r ON r.room_nid = m.room_nid
			WHERE r.room_id = $1 AND m.user_id = $2`, rule.RoomID, userID).Scan(&m)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("checking membership of allowed room %s: %w", rule.RoomID, err)
		}
		if m == spec.Join {
			return true, nil
		}
	}
	return false, nil
}

// joinAuthoriser returns a user of this server who is joined to the room and may invite, to
// name in a restricted join, or "" if there is none. Creators (v12) come first, then the
// users with the most power.
func (s *Service) joinAuthoriser(ctx context.Context, tx *sqldb.Tx, room *roomRow) (string, error) {
	evs, err := currentStateEvents(ctx, tx, room.nid, []gomatrixserverlib.StateKeyTuple{
		{EventType: spec.MRoomCreate}, {EventType: spec.MRoomPowerLevels},
	})
	if err != nil {
		return "", fmt.Errorf("loading power levels: %w", err)
	}
	var create, pl gomatrixserverlib.PDU
	for _, e := range evs {
		if e.PDU.Type() == spec.MRoomCreate {
			create = e.PDU
		} else {
			pl = e.PDU
		}
	}
	if create == nil {
		return "", nil
	}
	var candidates []string
	if room.version.PrivilegedCreators() {
		candidates = append(candidates, gomatrixserverlib.CreatorsFromCreateEvent(create)...)
	}
	var levels *gomatrixserverlib.PowerLevelContent
	if pl != nil {
		if levels, err = pl.PowerLevels(); err != nil {
			return "", fmt.Errorf("parsing power levels: %w", err)
		}
		users := make([]string, 0, len(levels.Users))
		for u, l := range levels.Users {
			if l >= levels.Invite {
				users = append(users, u)
			}
		}
		sort.Slice(users, func(i, j int) bool {
			if levels.Users[users[i]] != levels.Users[users[j]] {
				return levels.Users[users[i]] > levels.Users[users[j]]
			}
			return users[i] < users[j]
		})
		candidates = append(candidates, users...)
	} else if !room.version.PrivilegedCreators() {
		candidates = append(candidates, string(create.SenderID()))
	}
	for _, u := range candidates {
		if domainOf(u) != s.cfg.ServerName {
			continue
		}
		m, err := currentMembership(ctx, tx, room.nid, u)
		if err != nil {
			return "", err
		}
		if m == spec.Join {
			return u, nil
		}
	}
	if levels != nil && levels.UsersDefault >= levels.Invite {
		// Anyone may invite: any local joined member will do.
		rows, err := tx.Query(ctx, `SELECT user_id FROM memberships WHERE room_nid = $1 AND membership = $2 ORDER BY user_id`,
			room.nid, spec.Join)
		if err != nil {
			return "", fmt.Errorf("listing members: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var u string
			if err := rows.Scan(&u); err != nil {
				return "", fmt.Errorf("listing members: %w", err)
			}
			if _, listed := levels.Users[u]; !listed && domainOf(u) == s.cfg.ServerName {
				return u, nil
			}
		}
		if err := rows.Err(); err != nil {
			return "", fmt.Errorf("listing members: %w", err)
		}
	}
	return "", nil
}

// sameState returns the ID of the current (evType, stateKey) state event if sender sent it
// and its content equals content (as canonical JSON), else "".
func sameState(ctx context.Context, q querier, roomNID int64, sender, evType, stateKey string, content []byte) (string, error) {
	evs, err := currentStateEvents(ctx, q, roomNID, []gomatrixserverlib.StateKeyTuple{{EventType: evType, StateKey: stateKey}})
	if err != nil {
		return "", fmt.Errorf("loading current %s state: %w", evType, err)
	}
	if len(evs) == 0 || string(evs[0].PDU.SenderID()) != sender {
		return "", nil
	}
	a, err := gomatrixserverlib.CanonicalJSON(content)
	if err != nil {
		return "", nil // invalid content: let build report it
	}
	b, err := gomatrixserverlib.CanonicalJSON(evs[0].PDU.Content())
	if err != nil || !bytes.Equal(a, b) {
		return "", nil
	}
	return evs[0].PDU.EventID(), nil
}

// servedJSON returns the JSON to store for the state event ev, about to be persisted in room
// inside tx: ev with the unsigned section clients are served — prev_content, prev_sender and
// replaces_state when it replaces state, and for an invite or a knock the stripped state of
// the room (invite_room_state / knock_room_state: the full create event, as MSC4311 asks,
// the join rules, name, avatar, canonical alias, encryption, topic and the sender's
// membership). The state replaced is before, the state before ev, when given (an event
// input over federation, whose prev_events may not be the room's current state), else the
// room's current state. It returns nil when there is nothing to add.
func (s *Service) servedJSON(ctx context.Context, tx *sqldb.Tx, room *roomRow, ev gomatrixserverlib.PDU, before stateSet) ([]byte, error) {
	self := gomatrixserverlib.StateKeyTuple{EventType: ev.Type(), StateKey: *ev.StateKey()}
	tuples := []gomatrixserverlib.StateKeyTuple{self}
	strippedKey := ""
	if ev.Type() == spec.MRoomMember {
		switch m, _ := ev.Membership(); m {
		case spec.Invite:
			strippedKey = "invite_room_state"
		case spec.Knock:
			strippedKey = "knock_room_state"
		}
	}
	if strippedKey != "" {
		tuples = append(tuples, gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomCreate})
		for _, t := range strippedStateTypes {
			tuples = append(tuples, gomatrixserverlib.StateKeyTuple{EventType: t})
		}
		sender := gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomMember, StateKey: string(ev.SenderID())}
		if sender != self {
			tuples = append(tuples, sender)
		}
	}
	var evs []gomatrixserverlib.PDU
	if before != nil {
		evs = before.pick(tuples)
	} else {
		cur, err := currentStateEvents(ctx, tx, room.nid, tuples)
		if err != nil {
			return nil, fmt.Errorf("loading state replaced by %s: %w", ev.EventID(), err)
		}
		evs = make([]gomatrixserverlib.PDU, len(cur))
		for i, e := range cur {
			evs[i] = e.PDU
		}
	}
	unsigned := map[string]any{}
	if u := ev.Unsigned(); len(u) > 2 {
		_ = json.Unmarshal(u, &unsigned)
		delete(unsigned, "age")
	}
	var stripped []json.RawMessage // the create event first
	for _, p := range evs {
		t := gomatrixserverlib.StateKeyTuple{EventType: p.Type(), StateKey: *p.StateKey()}
		switch {
		case t == self:
			unsigned["replaces_state"] = p.EventID()
			unsigned["prev_content"] = json.RawMessage(p.Content())
			unsigned["prev_sender"] = string(p.SenderID())
		case strippedKey == "":
		case p.Type() == spec.MRoomCreate:
			full, err := matrix.WithoutUnsigned(p.JSON())
			if err != nil {
				return nil, fmt.Errorf("stripping create event: %w", err)
			}
			stripped = append([]json.RawMessage{full}, stripped...)
		default:
			b, err := json.Marshal(map[string]any{
				"type": p.Type(), "state_key": *p.StateKey(), "sender": string(p.SenderID()),
				"content": json.RawMessage(p.Content()),
			})
			if err != nil {
				return nil, fmt.Errorf("encoding stripped state: %w", err)
			}
			stripped = append(stripped, b)
		}
	}
	if _, ok := unsigned[strippedKey]; strippedKey != "" && !ok {
		unsigned[strippedKey] = stripped
	}
	if len(unsigned) == 0 {
		return nil, nil
	}
	u, err := json.Marshal(unsigned)
	if err != nil {
		return nil, fmt.Errorf("encoding unsigned: %w", err)
	}
	out, err := sjson.SetRawBytes(ev.JSON(), "unsigned", u)
	if err != nil {
		return nil, fmt.Errorf("adding unsigned to %s: %w", ev.EventID(), err)
	}
	return out, nil
}

// checkCreatorsNotInUsers returns 400 M_BAD_JSON if content, the content of an
// m.room.power_levels event in a room whose creators are privileged (v12), gives one of the
// creators of create a level: creators' power is implicit there.
func checkCreatorsNotInUsers(create gomatrixserverlib.PDU, content []byte) error {
	var pl struct {
		Users map[string]json.RawMessage `json:"users"`
	}
	if json.Unmarshal(content, &pl) != nil {
		return nil // the auth rules report it
	}
	for _, c := range gomatrixserverlib.CreatorsFromCreateEvent(create) {
		if _, ok := pl.Users[c]; ok {
			return matrix.BadJSON("room creator %s may not be given a power level: creators have unlimited power", c)
		}
	}
	return nil
}
