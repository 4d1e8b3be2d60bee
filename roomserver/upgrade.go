package roomserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
)

// UpgradeRequest asks for a room to be replaced by a new room of another version.
type UpgradeRequest struct {
	RoomID     string // the room to replace
	Sender     string // the user upgrading: the new room's creator
	NewVersion string
	// AdditionalCreators become the new room's additional creators (versions with privileged
	// creators only; they are not carried over from the old room).
	AdditionalCreators []string
	// MemberContent is the sender's m.room.member join content in the new room.
	MemberContent json.RawMessage
}

// upgradeCopiedState are the state events copied to the replacement room, as the spec
// recommends (m.room.power_levels is copied separately).
var upgradeCopiedState = []string{
	spec.MRoomJoinRules, spec.MRoomHistoryVisibility, spec.MRoomGuestAccess, spec.MRoomName,
	spec.MRoomTopic, spec.MRoomAvatar, "m.room.encryption", "m.room.server_acl", spec.MRoomCanonicalAlias,
}

// UpgradeRoom replaces r.RoomID by a new room of version r.NewVersion and returns the new
// room's ID, following the spec's server behaviour: the new room's create event names the old
// room as predecessor and keeps its type; the transferable state (join rules, history
// visibility, guest access, name, topic, avatar, encryption, server ACL, power levels) and the
// bans are copied; an m.room.tombstone pointing at the new room is sent to the old room, whose
// power levels are then raised so that ordinary users can no longer talk or invite there.
//
// In a new room with privileged creators (v12) the creators — the sender and
// r.AdditionalCreators — are removed from the copied power levels' users. Elsewhere the
// sender's power is raised while the state is copied, and the old levels restored after.
// Errors: 400 M_UNSUPPORTED_ROOM_VERSION, 400 M_BAD_JSON for invalid additional creators, 404
// M_NOT_FOUND for an unknown room, 403 M_FORBIDDEN unless the sender may send
// m.room.tombstone in the old room.
func (s *Service) UpgradeRoom(ctx context.Context, r UpgradeRequest) (string, error) {
	newVer, err := supportedVersion(r.NewVersion)
	if err != nil {
		return "", err
	}
	for _, c := range r.AdditionalCreators {
		if checkUserID(c) != nil {
			return "", matrix.BadJSON("additional_creators: %q is not a valid user ID", c)
		}
	}
	ri, err := s.roomInfo(ctx, r.RoomID)
	if err != nil {
		return "", err
	}
	old, lastEvent, err := s.checkUpgrade(ctx, r, ri)
	if err != nil {
		return "", err
	}

	byType := map[string]gomatrixserverlib.PDU{}
	var bans []string
	for _, e := range old {
		p := e.PDU
		if p.Type() == spec.MRoomMember {
			if m, _ := p.Membership(); m == spec.Ban {
				bans = append(bans, *p.StateKey())
			}
			continue
		}
		if p.StateKeyEquals("") {
			byType[p.Type()] = p
		}
	}
	create := byType[spec.MRoomCreate]
	if create == nil {
		return "", fmt.Errorf("upgrading %s: the room has no create event", r.RoomID)
	}

	// The new create event.
	var oldCreate map[string]json.RawMessage
	_ = json.Unmarshal(create.Content(), &oldCreate)
	pred := map[string]string{"room_id": r.RoomID}
	if !newVer.DomainlessRoomIDs() && lastEvent != "" {
		pred["event_id"] = lastEvent // deprecated, and left out from v12 (MSC4291)
	}
	createContent := map[string]any{"predecessor": pred}
	if t, ok := oldCreate["type"]; ok {
		createContent["type"] = t
	}
	if f, ok := oldCreate["m.federate"]; ok && bytes.Equal(bytes.TrimSpace(f), []byte("false")) {
		createContent["m.federate"] = false
	}
	creators := []string{r.Sender}
	if newVer.PrivilegedCreators() {
		var extra []string
		for _, c := range r.AdditionalCreators {
			if c != r.Sender && !slices.Contains(extra, c) {
				extra = append(extra, c)
			}
		}
		if len(extra) > 0 {
			createContent["additional_creators"] = extra
			creators = append(creators, extra...)
		}
	}
	createRaw, err := json.Marshal(createContent)
	if err != nil {
		return "", fmt.Errorf("encoding create content: %w", err)
	}

	// The initial state: the sender's join, the power levels, the copied state, the bans.
	empty := ""
	initial := []Fledgling{{Type: spec.MRoomMember, StateKey: &r.Sender, Content: r.MemberContent}}
	var restore json.RawMessage
	if pl := byType[spec.MRoomPowerLevels]; pl != nil {
		first, final, err := upgradedPowerLevels(pl.Content(), r.Sender, creators, newVer.PrivilegedCreators())
		if err != nil {
			return "", err
		}
		initial = append(initial, Fledgling{Type: spec.MRoomPowerLevels, StateKey: &empty, Content: first})
		restore = final
	}
	for _, t := range upgradeCopiedState {
		if p := byType[t]; p != nil {
			initial = append(initial, Fledgling{Type: t, StateKey: &empty, Content: json.RawMessage(p.Content())})
		}
	}
	for _, u := range bans {
		if newVer.PrivilegedCreators() && slices.Contains(creators, u) {
			continue
		}
		target := u
		initial = append(initial, Fledgling{Type: spec.MRoomMember, StateKey: &target, Content: json.RawMessage(`{"membership":"ban"}`)})
	}
	if restore != nil {
		initial = append(initial, Fledgling{Type: spec.MRoomPowerLevels, StateKey: &empty, Content: restore})
	}
	newID, err := s.CreateRoom(ctx, CreateRoomRequest{
		Creator: r.Sender, RoomVersion: r.NewVersion, CreateContent: createRaw, Initial: initial,
	})
	if err != nil {
		return "", fmt.Errorf("creating the replacement of %s: %w", r.RoomID, err)
	}

	tombstone, _ := json.Marshal(map[string]string{"body": "This room has been replaced", "replacement_room": newID})
	if _, err := s.Send(ctx, SendRequest{
		RoomID: r.RoomID, Sender: r.Sender, Type: "m.room.tombstone", StateKey: &empty, Content: tombstone,
	}); err != nil {
		return "", fmt.Errorf("sending tombstone to %s: %w", r.RoomID, err)
	}
	if err := s.moveAliases(ctx, ri, r.RoomID, newID, r.Sender, byType[spec.MRoomCanonicalAlias]); err != nil {
		s.log.Warn("moving the aliases of an upgraded room", "room_id", r.RoomID, "error", err)
	}
	if pl := byType[spec.MRoomPowerLevels]; pl != nil {
		if c, changed := restrictedPowerLevels(pl.Content()); changed {
			if _, err := s.Send(ctx, SendRequest{
				RoomID: r.RoomID, Sender: r.Sender, Type: spec.MRoomPowerLevels, StateKey: &empty, Content: c,
			}); err != nil {
				s.log.Warn("restricting the power levels of an upgraded room", "room_id", r.RoomID, "error", err)
			}
		}
	}
	return newID, nil
}

// moveAliases finishes an upgrade of the room oldID (ri) to newID as Synapse does: this server's
// aliases of the old room now point to the new one, the old room's canonical alias event
// (copied to the new room already) is emptied, and a room in the public directory is
// replaced there by the new one.
func (s *Service) moveAliases(ctx context.Context, ri roomInfo, oldID, newID, sender string, canonical gomatrixserverlib.PDU) error {
	nri, err := s.roomInfo(ctx, newID)
	if err != nil {
		return err
	}
	if _, err := s.db.Exec(ctx, `UPDATE room_aliases SET room_nid = $1 WHERE room_nid = $2`, nri.nid, ri.nid); err != nil {
		return fmt.Errorf("moving aliases: %w", err)
	}
	if canonical != nil && !bytes.Equal(bytes.TrimSpace(canonical.Content()), []byte("{}")) {
		empty := ""
		if _, err := s.Send(ctx, SendRequest{
			RoomID: oldID, Sender: sender, Type: spec.MRoomCanonicalAlias, StateKey: &empty, Content: json.RawMessage(`{}`),
		}); err != nil {
			return fmt.Errorf("emptying the old canonical alias: %w", err)
		}
	}
	published, err := s.Published(ctx, oldID)
	if err != nil || !published {
		return err
	}
	if err := s.SetPublished(ctx, newID, true); err != nil {
		return err
	}
	return s.SetPublished(ctx, oldID, false)
}

// checkUpgrade returns the old room's current state and its newest event, or 403 unless
// r.Sender is joined and may send m.room.tombstone in it (checked by building one).
func (s *Service) checkUpgrade(ctx context.Context, r UpgradeRequest, ri roomInfo) ([]*Event, string, error) {
	var (
		state []*Event
		last  string
	)
	unlock := s.locks.lock(r.RoomID)
	defer unlock()
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		room, err := s.lockRoomRow(ctx, tx, r.RoomID, ri)
		if err != nil {
			return err
		}
		m, err := currentMembership(ctx, tx, room.nid, r.Sender)
		if err != nil {
			return err
		}
		if m != spec.Join {
			return matrix.Forbidden("%s is not joined to %s", r.Sender, r.RoomID)
		}
		empty := ""
		if _, err := s.build(ctx, tx, room, &gomatrixserverlib.ProtoEvent{
			SenderID: r.Sender, Type: "m.room.tombstone", StateKey: &empty,
			Content: spec.RawJSON(`{"body":"","replacement_room":"!placeholder"}`),
		}); err != nil {
			return err
		}
		if len(room.extremities) > 0 {
			last = room.extremities[len(room.extremities)-1]
		}
		state, err = queryEvents(ctx, tx, `SELECT `+eventCols+` FROM current_state c
			JOIN events e ON e.event_nid = c.event_nid JOIN rooms r ON r.room_nid = e.room_nid
			WHERE c.room_nid = $1`, room.nid)
		if err != nil {
			return fmt.Errorf("loading state of %s: %w", r.RoomID, err)
		}
		return nil
	})
	if err != nil {
		if e := matrix.AsError(err); e != nil {
			if e.Status == 403 {
				return nil, "", matrix.Forbidden("you may not upgrade %s: %s", r.RoomID, e.Message)
			}
			return nil, "", err
		}
		if errors.Is(err, sqldb.ErrNotFound) {
			return nil, "", err
		}
		return nil, "", fmt.Errorf("checking upgrade of %s: %w", r.RoomID, err)
	}
	return state, last, nil
}

// decodeObject decodes a JSON object keeping numbers exact.
func decodeObject(b []byte) (map[string]any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		return nil, err
	}
	if m == nil {
		m = map[string]any{}
	}
	return m, nil
}

// level reads a power level from a decoded power levels value, or def.
func level(v any, def int64) int64 {
	switch n := v.(type) {
	case json.Number:
		if i, err := n.Int64(); err == nil {
			return i
		}
		if f, err := n.Float64(); err == nil {
			return int64(f)
		}
	case string: // v1–v9 allow strings
		var i int64
		if _, err := fmt.Sscan(n, &i); err == nil {
			return i
		}
	}
	return def
}

// upgradedPowerLevels returns the power levels content for a replacement room: the old
// content with the creators removed from users when creators are privileged (first is then
// final and final is nil), or else with sender raised to the highest level the old content
// requires while the state is copied (first), and the old content to restore after (final,
// nil if no raise was needed).
func upgradedPowerLevels(content []byte, sender string, creators []string, privileged bool) (first, final json.RawMessage, err error) {
	pl, err := decodeObject(content)
	if err != nil {
		return nil, nil, fmt.Errorf("decoding power levels: %w", err)
	}
	users, _ := pl["users"].(map[string]any)
	if users == nil {
		users = map[string]any{}
	}
	pl["users"] = users
	if privileged {
		for _, c := range creators {
			delete(users, c)
		}
		b, err := json.Marshal(pl)
		return b, nil, err
	}
	needed := max(level(pl["state_default"], 50), level(pl["ban"], 50), level(pl["kick"], 50),
		level(pl["redact"], 50), level(pl["invite"], 0), level(pl["events_default"], 0))
	if events, ok := pl["events"].(map[string]any); ok {
		for _, v := range events {
			needed = max(needed, level(v, 0))
		}
	}
	have := level(users[sender], level(pl["users_default"], 0))
	orig, err := json.Marshal(pl)
	if err != nil {
		return nil, nil, err
	}
	if have >= needed {
		return orig, nil, nil
	}
	users[sender] = needed
	raised, err := json.Marshal(pl)
	if err != nil {
		return nil, nil, err
	}
	return raised, orig, nil
}

// restrictedPowerLevels returns content with events_default and invite raised to at least
// max(50, users_default+1), so that ordinary users can no longer talk or invite in an
// upgraded room, and whether anything changed.
func restrictedPowerLevels(content []byte) (json.RawMessage, bool) {
	pl, err := decodeObject(content)
	if err != nil {
		return nil, false
	}
	restricted := max(50, level(pl["users_default"], 0)+1)
	changed := false
	for _, k := range []string{"events_default", "invite"} {
		if level(pl[k], 0) < restricted {
			pl[k] = restricted
			changed = true
		}
	}
	if !changed {
		return nil, false
	}
	b, err := json.Marshal(pl)
	if err != nil {
		return nil, false
	}
	return b, true
}
