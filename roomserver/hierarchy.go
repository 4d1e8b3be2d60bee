package roomserver

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
)

// This file is the space hierarchy (spec "Spaces"): a depth-first walk of m.space.child
// links from a room, listing the rooms the requester may see. Rooms this server is in are
// summarised from their current state (a keyed read of the summary entries plus the room's
// m.space.child entries); other rooms are asked of a server in the child link's via list
// through HierarchyRemote. The walk's remaining queue travels in the pagination token, so
// the server keeps no pagination state.

const (
	// hierarchyDefaultLimit and hierarchyMaxLimit bound the rooms of one page.
	hierarchyDefaultLimit = 50
	hierarchyMaxLimit     = 100
	// maxChildrenPerSpace bounds the children a federation answer summarises (as Synapse).
	maxChildrenPerSpace = 50
)

// HierarchyRoom is one room of a space hierarchy: its summary and, for a space, its
// m.space.child events in stripped form (type, state_key, content, sender,
// origin_server_ts). It is the JSON of the spec's hierarchy chunks.
type HierarchyRoom struct {
	RoomID           string            `json:"room_id"`
	Name             string            `json:"name,omitempty"`
	Topic            string            `json:"topic,omitempty"`
	CanonicalAlias   string            `json:"canonical_alias,omitempty"`
	AvatarURL        string            `json:"avatar_url,omitempty"`
	NumJoinedMembers int64             `json:"num_joined_members"`
	WorldReadable    bool              `json:"world_readable"`
	GuestCanJoin     bool              `json:"guest_can_join"`
	JoinRule         string            `json:"join_rule,omitempty"`
	RoomType         string            `json:"room_type,omitempty"`
	Encryption       string            `json:"encryption,omitempty"`
	RoomVersion      string            `json:"room_version,omitempty"`
	AllowedRoomIDs   []string          `json:"allowed_room_ids,omitempty"`
	ChildrenState    []json.RawMessage `json:"children_state,omitempty"`
}

// HierarchyRequest asks for one page of a space hierarchy.
type HierarchyRequest struct {
	RoomID        string
	UserID        string // the requester
	SuggestedOnly bool   // follow only m.space.child links with suggested: true
	MaxDepth      int    // how deep to descend below RoomID; negative: no limit
	Limit         int    // rooms per page; 0: the default
	From          string // the previous page's NextBatch
}

// HierarchyPage is one page of a space hierarchy.
type HierarchyPage struct {
	Rooms     []HierarchyRoom
	NextBatch string // "" on the last page
}

// hierarchyToken is the state of a walk between pages.
type hierarchyToken struct {
	RoomID        string           `json:"r"`
	SuggestedOnly bool             `json:"s,omitempty"`
	MaxDepth      int              `json:"m"`
	Queue         []hierarchyEntry `json:"q"`
	Processed     []string         `json:"p"`
}

// hierarchyEntry is a room waiting to be visited.
type hierarchyEntry struct {
	RoomID string         `json:"r"`
	Via    []string       `json:"v,omitempty"`
	Depth  int            `json:"d"`
	remote *HierarchyRoom // its summary from a parent's federation answer, if any
}

// spaceChild is a valid m.space.child link.
type spaceChild struct {
	roomID    string
	via       []string
	order     string // "" when absent or invalid
	ts        int64
	suggested bool
	stripped  json.RawMessage
}

// Hierarchy returns a page of the space hierarchy below req.RoomID as req.UserID may see it:
// rooms the user is joined or invited to, world-readable or public/knockable rooms, and
// restricted rooms whose allowed rooms the user is joined to. Errors: 403 M_FORBIDDEN when
// the user may not see req.RoomID, 400 M_INVALID_PARAM for a bad From token or one from a
// request with other parameters.
func (s *Service) Hierarchy(ctx context.Context, req HierarchyRequest) (*HierarchyPage, error) {
	limit := req.Limit
	if limit <= 0 {
		limit = hierarchyDefaultLimit
	}
	limit = min(limit, hierarchyMaxLimit)
	maxDepth := req.MaxDepth
	if maxDepth < 0 {
		maxDepth = -1
	}
	tok := hierarchyToken{RoomID: req.RoomID, SuggestedOnly: req.SuggestedOnly, MaxDepth: maxDepth}
	if req.From != "" {
		t, err := parseHierarchyToken(req.From)
		if err != nil || t.RoomID != tok.RoomID || t.SuggestedOnly != tok.SuggestedOnly || t.MaxDepth != tok.MaxDepth {
			return nil, matrix.InvalidParam("invalid or mismatched from token")
		}
		tok = t
	} else {
		ok, err := s.hierarchyAccessible(ctx, req.RoomID, req.UserID, "")
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, matrix.Forbidden("user %s may not see room %s", req.UserID, req.RoomID)
		}
		tok.Queue = []hierarchyEntry{{RoomID: req.RoomID}}
	}
	processed := make(map[string]bool, len(tok.Processed))
	for _, id := range tok.Processed {
		processed[id] = true
	}
	page := &HierarchyPage{Rooms: []HierarchyRoom{}}
	queue := tok.Queue
	for len(queue) > 0 && len(page.Rooms) < limit {
		e := queue[0]
		queue = queue[1:]
		if processed[e.RoomID] {
			continue
		}
		room, children, inaccessible, err := s.hierarchyVisit(ctx, req, e, maxDepth)
		if err != nil {
			return nil, err
		}
		processed[e.RoomID] = true
		tok.Processed = append(tok.Processed, e.RoomID)
		if room == nil {
			continue
		}
		page.Rooms = append(page.Rooms, *room)
		if maxDepth >= 0 && e.Depth >= maxDepth {
			continue
		}
		var next []hierarchyEntry
		for _, raw := range room.ChildrenState {
			c, ok := parseSpaceChild(raw)
			if !ok || inaccessible[c.roomID] {
				continue
			}
			next = append(next, hierarchyEntry{RoomID: c.roomID, Via: c.via, Depth: e.Depth + 1, remote: children[c.roomID]})
		}
		queue = append(next, queue...)
	}
	if len(queue) > 0 {
		tok.Queue = queue
		b, err := json.Marshal(tok)
		if err != nil {
			return nil, fmt.Errorf("encoding hierarchy token: %w", err)
		}
		page.NextBatch = base64.RawURLEncoding.EncodeToString(b)
	}
	return page, nil
}

// hierarchyVisit summarises the room of e for req.UserID: from local state when this server
// is in the room, else from a remote server. It returns nil when the user may not see it,
// and, for remote rooms, the children summaries and inaccessible children of the answer.
func (s *Service) hierarchyVisit(ctx context.Context, req HierarchyRequest, e hierarchyEntry, maxDepth int) (*HierarchyRoom, map[string]*HierarchyRoom, map[string]bool, error) {
	in, err := s.ServerInRoom(ctx, e.RoomID, s.cfg.ServerName)
	if err != nil {
		return nil, nil, nil, err
	}
	if in {
		room, err := s.localHierarchyRoom(ctx, e.RoomID, req.UserID, "", req.SuggestedOnly, true)
		return room, nil, nil, err
	}
	var (
		room         *HierarchyRoom
		children     map[string]*HierarchyRoom
		inaccessible map[string]bool
	)
	if e.remote != nil && (e.remote.RoomType != "m.space" || (maxDepth >= 0 && e.Depth >= maxDepth)) {
		room = e.remote
	} else {
		room, children, inaccessible = s.remoteHierarchyRoom(ctx, e, req.SuggestedOnly)
	}
	if room == nil {
		return nil, nil, nil, nil
	}
	ok, err := s.remoteRoomAccessible(ctx, room, req.UserID)
	if err != nil || !ok {
		return nil, nil, nil, err
	}
	return room, children, inaccessible, nil
}

// remoteHierarchyRoom asks the servers of e.Via in turn for the room's hierarchy and returns
// the first valid answer, or nils when none gave one.
func (s *Service) remoteHierarchyRoom(ctx context.Context, e hierarchyEntry, suggestedOnly bool) (*HierarchyRoom, map[string]*HierarchyRoom, map[string]bool) {
	remote, ok := s.cfg.Remote.(HierarchyRemote)
	if !ok {
		return nil, nil, nil
	}
	for _, server := range e.Via {
		if server == s.cfg.ServerName || server == "" {
			continue
		}
		res, err := remote.Hierarchy(ctx, server, e.RoomID, suggestedOnly)
		if err != nil || res == nil || res.Room.RoomID != e.RoomID {
			continue
		}
		room := res.Room
		// Keep only well-formed m.space.child events.
		room.ChildrenState = slices.DeleteFunc(room.ChildrenState, func(raw json.RawMessage) bool {
			_, ok := parseSpaceChild(raw)
			return !ok
		})
		children := make(map[string]*HierarchyRoom, len(res.Children))
		for i := range res.Children {
			c := res.Children[i]
			if c.RoomID != "" {
				c.ChildrenState = nil
				children[c.RoomID] = &c
			}
		}
		inaccessible := make(map[string]bool, len(res.InaccessibleChildren))
		for _, id := range res.InaccessibleChildren {
			inaccessible[id] = true
		}
		return &room, children, inaccessible
	}
	return nil, nil, nil
}

// remoteRoomAccessible reports whether userID may see room, a summary from another server:
// it is joinable or world-readable, userID is joined to one of its allowed rooms, or the
// local rules allow it (an invite, say).
func (s *Service) remoteRoomAccessible(ctx context.Context, room *HierarchyRoom, userID string) (bool, error) {
	switch room.JoinRule {
	case "", spec.Public, spec.Knock, spec.KnockRestricted:
		return true, nil
	}
	if room.WorldReadable {
		return true, nil
	}
	for _, id := range room.AllowedRoomIDs {
		m, _, err := s.Membership(ctx, id, userID)
		if err != nil {
			return false, err
		}
		if m == spec.Join {
			return true, nil
		}
	}
	return s.hierarchyAccessible(ctx, room.RoomID, userID, "")
}

// hierarchyAccessible reports whether the room may be shown to userID (when not "") or to
// the server origin (when not ""): it is public, knockable or world-readable; the user is
// joined, invited or knocking; the server has a user joined; or it is restricted and the
// user (or server) is joined to one of the allowed rooms. An unknown room is not accessible.
func (s *Service) hierarchyAccessible(ctx context.Context, roomID, userID, origin string) (bool, error) {
	sum, err := s.RoomSummary(ctx, roomID)
	if errors.Is(err, sqldb.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return s.summaryAccessible(ctx, sum, userID, origin)
}

func (s *Service) summaryAccessible(ctx context.Context, sum *RoomSummary, userID, origin string) (bool, error) {
	switch {
	case sum.JoinRule == spec.Public, sum.JoinRule == spec.Knock, sum.JoinRule == spec.KnockRestricted, sum.WorldReadable():
		return true, nil
	}
	in := func(roomID string) (bool, error) {
		if origin != "" {
			return s.ServerInRoom(ctx, roomID, origin)
		}
		m, _, err := s.Membership(ctx, roomID, userID)
		return m == spec.Join, err
	}
	if userID == "" && origin == "" {
		return false, nil
	}
	if origin == "" {
		m, _, err := s.Membership(ctx, sum.RoomID, userID)
		if err != nil {
			return false, err
		}
		if m == spec.Join || m == spec.Invite || m == spec.Knock {
			return true, nil
		}
	} else if ok, err := in(sum.RoomID); err != nil || ok {
		return ok, err
	}
	if sum.JoinRule != spec.Restricted && sum.JoinRule != spec.KnockRestricted {
		return false, nil
	}
	for _, id := range sum.AllowedRoomIDs {
		ok, err := in(id)
		if err != nil || ok {
			return ok, err
		}
	}
	return false, nil
}

// localHierarchyRoom summarises roomID, a room this server is in, for userID or the server
// origin, with its valid m.space.child links when it is a space and withChildren is set.
// It returns nil when the room is unknown or they may not see it.
func (s *Service) localHierarchyRoom(ctx context.Context, roomID, userID, origin string, suggestedOnly, withChildren bool) (*HierarchyRoom, error) {
	sum, err := s.RoomSummary(ctx, roomID)
	if errors.Is(err, sqldb.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	ok, err := s.summaryAccessible(ctx, sum, userID, origin)
	if err != nil || !ok {
		return nil, err
	}
	room := &HierarchyRoom{
		RoomID: roomID, Name: sum.Name, Topic: sum.Topic, CanonicalAlias: sum.CanonicalAlias,
		AvatarURL: sum.AvatarURL, NumJoinedMembers: sum.JoinedMembers, WorldReadable: sum.WorldReadable(),
		GuestCanJoin: sum.GuestCanJoin(), JoinRule: sum.JoinRule, RoomType: sum.RoomType,
		Encryption: sum.Encryption, RoomVersion: sum.RoomVersion, AllowedRoomIDs: sum.AllowedRoomIDs,
	}
	if sum.RoomType != "m.space" || !withChildren {
		return room, nil
	}
	children, err := s.spaceChildren(ctx, roomID)
	if err != nil {
		return nil, err
	}
	for _, c := range children {
		if !suggestedOnly || c.suggested {
			room.ChildrenState = append(room.ChildrenState, c.stripped)
		}
	}
	return room, nil
}

// spaceChildren returns roomID's valid m.space.child links in the spec's order: those with
// an order first, by order; then by the event's origin_server_ts; then by room ID.
func (s *Service) spaceChildren(ctx context.Context, roomID string) ([]spaceChild, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return nil, err
	}
	evs, err := queryEvents(ctx, s.db, `SELECT `+eventCols+` FROM current_state c
		JOIN events e ON e.event_nid = c.event_nid JOIN rooms r ON r.room_nid = e.room_nid
		WHERE c.room_nid = $1 AND c.type = $2`, ri.nid, "m.space.child")
	if err != nil {
		return nil, fmt.Errorf("loading space children of %s: %w", roomID, err)
	}
	var out []spaceChild
	for _, ev := range evs {
		if ev.RedactedBecause != nil || ev.PDU.StateKey() == nil {
			continue
		}
		stripped, err := json.Marshal(map[string]any{
			"type": ev.PDU.Type(), "state_key": *ev.PDU.StateKey(), "content": json.RawMessage(ev.PDU.Content()),
			"sender": ev.PDU.SenderID(), "origin_server_ts": ev.PDU.OriginServerTS(),
		})
		if err != nil {
			return nil, fmt.Errorf("encoding space child of %s: %w", roomID, err)
		}
		if c, ok := parseSpaceChild(stripped); ok {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b spaceChild) int {
		switch {
		case a.order != "" && b.order == "":
			return -1
		case a.order == "" && b.order != "":
			return 1
		case a.order != b.order:
			return strings.Compare(a.order, b.order)
		case a.ts != b.ts:
			if a.ts < b.ts {
				return -1
			}
			return 1
		}
		return strings.Compare(a.roomID, b.roomID)
	})
	return out, nil
}

// parseSpaceChild parses a stripped m.space.child event; ok is false unless it is one with
// a room ID state key and a non-empty via list of strings.
func parseSpaceChild(raw json.RawMessage) (spaceChild, bool) {
	var ev struct {
		Type     string `json:"type"`
		StateKey string `json:"state_key"`
		TS       int64  `json:"origin_server_ts"`
		Content  struct {
			Via       []any `json:"via"`
			Order     any   `json:"order"`
			Suggested any   `json:"suggested"`
		} `json:"content"`
	}
	if json.Unmarshal(raw, &ev) != nil || ev.Type != "m.space.child" || !strings.HasPrefix(ev.StateKey, "!") {
		return spaceChild{}, false
	}
	c := spaceChild{roomID: ev.StateKey, ts: ev.TS, stripped: raw}
	for _, v := range ev.Content.Via {
		str, ok := v.(string)
		if !ok || str == "" {
			return spaceChild{}, false
		}
		c.via = append(c.via, str)
	}
	if len(c.via) == 0 {
		return spaceChild{}, false
	}
	if o, ok := ev.Content.Order.(string); ok && validOrder(o) {
		c.order = o
	}
	c.suggested = ev.Content.Suggested == true
	return c, true
}

// validOrder reports whether o is a valid m.space.child order: at most 50 characters, each
// in U+0020–U+007E.
func validOrder(o string) bool {
	if len(o) > 50 {
		return false
	}
	for i := 0; i < len(o); i++ {
		if o[i] < 0x20 || o[i] > 0x7e {
			return false
		}
	}
	return true
}

func parseHierarchyToken(s string) (hierarchyToken, error) {
	var t hierarchyToken
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return t, fmt.Errorf("decoding hierarchy token: %w", err)
	}
	if err := json.Unmarshal(b, &t); err != nil {
		return t, fmt.Errorf("decoding hierarchy token: %w", err)
	}
	return t, nil
}

// FederationHierarchy answers GET /_matrix/federation/v1/hierarchy/{roomID} for origin: the
// room with its children links, the summaries of the children this server is in that origin
// may see (at most 50), and the IDs of those it may not. Errors: 404 M_NOT_FOUND when the
// room is unknown or origin may not see it.
func (s *Service) FederationHierarchy(ctx context.Context, origin, roomID string, suggestedOnly bool) (*FederationHierarchy, error) {
	room, err := s.localHierarchyRoom(ctx, roomID, "", origin, suggestedOnly, true)
	if err != nil {
		return nil, err
	}
	if room == nil {
		return nil, matrix.NotFound("room %s not found or not accessible", roomID)
	}
	res := &FederationHierarchy{Room: *room, Children: []HierarchyRoom{}, InaccessibleChildren: []string{}}
	for i, raw := range room.ChildrenState {
		if i >= maxChildrenPerSpace {
			break
		}
		c, ok := parseSpaceChild(raw)
		if !ok {
			continue
		}
		in, err := s.ServerInRoom(ctx, c.roomID, s.cfg.ServerName)
		if err != nil {
			return nil, err
		}
		if !in {
			continue
		}
		child, err := s.localHierarchyRoom(ctx, c.roomID, "", origin, suggestedOnly, false)
		if err != nil {
			return nil, err
		}
		if child == nil {
			res.InaccessibleChildren = append(res.InaccessibleChildren, c.roomID)
			continue
		}
		res.Children = append(res.Children, *child)
	}
	return res, nil
}
