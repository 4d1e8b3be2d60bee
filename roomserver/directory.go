package roomserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
)

// This file is the public room directory (table published_rooms) and room summaries.
//
// Each published room's row carries a summary of its current state (name, topic, joined
// members…) tagged with the state snapshot it was computed at. A listing first recomputes
// the rows whose room has moved to a new snapshot since (every state event, membership
// included, makes one), reading only the few state entries a summary needs by key; then it
// filters, orders and pages in SQL. An idle directory therefore costs one scan of
// published_rooms per listing and no state reads. A redaction of a current state event does
// not make a new snapshot, so it shows in the directory only after the room's next state
// change.

// RoomSummary is the public face of a room: what the published room directory lists and
// the room summary API returns.
type RoomSummary struct {
	RoomID            string
	RoomVersion       string
	JoinedMembers     int64
	Name              string
	Topic             string // the plain-text topic
	CanonicalAlias    string
	AvatarURL         string
	JoinRule          string // "" when the room has no m.room.join_rules
	HistoryVisibility string
	GuestAccess       string
	RoomType          string   // the create event's type, "" for none
	Encryption        string   // the m.room.encryption algorithm, "" for none
	AllowedRoomIDs    []string // for restricted join rules: the rooms whose members may join
}

// WorldReadable reports whether the room's history is visible to anyone.
func (r *RoomSummary) WorldReadable() bool { return r.HistoryVisibility == "world_readable" }

// GuestCanJoin reports whether guests may join the room.
func (r *RoomSummary) GuestCanJoin() bool { return r.GuestAccess == "can_join" }

// summaryTypes are the state events (all with state key "") a summary reads.
var summaryTypes = []string{
	spec.MRoomCreate, spec.MRoomName, spec.MRoomTopic, spec.MRoomCanonicalAlias, "m.room.avatar",
	spec.MRoomJoinRules, spec.MRoomHistoryVisibility, spec.MRoomGuestAccess, "m.room.encryption",
}

// summarise computes the summaries of the rooms with the given room NIDs (mapped to their
// IDs) from their current state, reading only the summary's state entries and the joined
// member counts, in batches.
func (s *Service) summarise(ctx context.Context, rooms map[int64]string) (map[int64]*RoomSummary, error) {
	out := make(map[int64]*RoomSummary, len(rooms))
	nids := make([]int64, 0, len(rooms))
	for nid, id := range rooms {
		nids = append(nids, nid)
		out[nid] = &RoomSummary{RoomID: id}
	}
	slices.Sort(nids)
	for len(nids) > 0 {
		n := min(len(nids), 200)
		if err := s.summariseBatch(ctx, nids[:n], out); err != nil {
			return nil, err
		}
		nids = nids[n:]
	}
	return out, nil
}

func (s *Service) summariseBatch(ctx context.Context, nids []int64, out map[int64]*RoomSummary) error {
	args := make([]any, 0, len(nids)+len(summaryTypes))
	for _, nid := range nids {
		args = append(args, nid)
	}
	for _, t := range summaryTypes {
		args = append(args, t)
	}
	// The primary key (room_nid, type, state_key) serves the IN lists as point lookups.
	rows, err := s.db.Query(ctx, `SELECT c.room_nid, c.type, e.event_json FROM current_state c
		JOIN events e ON e.event_nid = c.event_nid
		WHERE c.room_nid IN (`+inList(1, len(nids))+`) AND c.type IN (`+inList(len(nids)+1, len(summaryTypes))+`)
		AND c.state_key = ''`, args...)
	if err != nil {
		return fmt.Errorf("reading room summaries: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			nid    int64
			evType string
			js     []byte
		)
		if err := rows.Scan(&nid, &evType, &js); err != nil {
			return fmt.Errorf("reading room summaries: %w", err)
		}
		var ev struct {
			Content json.RawMessage `json:"content"`
		}
		if err := json.Unmarshal(js, &ev); err != nil {
			return fmt.Errorf("decoding %s of room %d: %w", evType, nid, err)
		}
		out[nid].apply(evType, ev.Content)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading room summaries: %w", err)
	}
	rows.Close()

	rows, err = s.db.Query(ctx, `SELECT room_nid, COUNT(*) FROM memberships
		WHERE room_nid IN (`+inList(1, len(nids))+`) AND membership = 'join' GROUP BY room_nid`, args[:len(nids)]...)
	if err != nil {
		return fmt.Errorf("counting joined members: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var nid, n int64
		if err := rows.Scan(&nid, &n); err != nil {
			return fmt.Errorf("counting joined members: %w", err)
		}
		out[nid].JoinedMembers = n
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("counting joined members: %w", err)
	}
	return nil
}

// apply sets the summary's fields from one state event's content. Content of the wrong
// shape leaves the fields empty, as if the event were absent.
func (r *RoomSummary) apply(evType string, content json.RawMessage) {
	str := func(key string) string {
		var m map[string]json.RawMessage
		if json.Unmarshal(content, &m) != nil {
			return ""
		}
		var v string
		if json.Unmarshal(m[key], &v) != nil {
			return ""
		}
		return v
	}
	switch evType {
	case spec.MRoomCreate:
		r.RoomType = str("type")
		r.RoomVersion = str("room_version")
		if r.RoomVersion == "" {
			r.RoomVersion = "1"
		}
	case spec.MRoomName:
		r.Name = str("name")
	case spec.MRoomTopic:
		r.Topic = plainTopic(content)
	case spec.MRoomCanonicalAlias:
		r.CanonicalAlias = str("alias")
	case "m.room.avatar":
		r.AvatarURL = str("url")
	case spec.MRoomJoinRules:
		r.JoinRule = str("join_rule")
		if r.JoinRule == spec.Restricted || r.JoinRule == spec.KnockRestricted {
			r.AllowedRoomIDs = allowedRoomIDs(content)
		}
	case spec.MRoomHistoryVisibility:
		r.HistoryVisibility = str("history_visibility")
	case spec.MRoomGuestAccess:
		r.GuestAccess = str("guest_access")
	case "m.room.encryption":
		r.Encryption = str("algorithm")
	}
}

// plainTopic returns the text/plain representation of an m.room.topic content: from the
// m.topic content block when it has one, else the topic field.
func plainTopic(content json.RawMessage) string {
	var c struct {
		Topic  any `json:"topic"`
		MTopic struct {
			Text []struct {
				MimeType *string `json:"mimetype"`
				Body     string  `json:"body"`
			} `json:"m.text"`
		} `json:"m.topic"`
	}
	if json.Unmarshal(content, &c) != nil {
		// m.topic of an unexpected shape: fall back to the plain field alone.
		var plain struct {
			Topic any `json:"topic"`
		}
		_ = json.Unmarshal(content, &plain)
		s, _ := plain.Topic.(string)
		return s
	}
	for _, t := range c.MTopic.Text {
		if t.MimeType == nil || *t.MimeType == "text/plain" {
			return t.Body
		}
	}
	s, _ := c.Topic.(string)
	return s
}

// allowedRoomIDs returns the rooms named by the m.room_membership conditions of a
// restricted join rule.
func allowedRoomIDs(content json.RawMessage) []string {
	var c struct {
		Allow []struct {
			Type   string `json:"type"`
			RoomID string `json:"room_id"`
		} `json:"allow"`
	}
	if json.Unmarshal(content, &c) != nil {
		return nil
	}
	var ids []string
	for _, a := range c.Allow {
		if a.Type == "m.room_membership" && strings.HasPrefix(a.RoomID, "!") && !slices.Contains(ids, a.RoomID) {
			ids = append(ids, a.RoomID)
		}
	}
	return ids
}

// RoomSummary returns the summary of roomID's current state. It returns an error wrapping
// sqldb.ErrNotFound (and a 404 M_NOT_FOUND) if the room is unknown.
func (s *Service) RoomSummary(ctx context.Context, roomID string) (*RoomSummary, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return nil, err
	}
	sums, err := s.summarise(ctx, map[int64]string{ri.nid: roomID})
	if err != nil {
		return nil, err
	}
	sum := sums[ri.nid]
	sum.RoomVersion = string(ri.version.Version())
	return sum, nil
}

// SetPublished adds roomID to the public room directory or removes it; either is a no-op
// when already so. It returns an error wrapping sqldb.ErrNotFound (and a 404 M_NOT_FOUND)
// if the room is unknown.
func (s *Service) SetPublished(ctx context.Context, roomID string, published bool) error {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return err
	}
	if published {
		_, err = s.db.Exec(ctx, `INSERT INTO published_rooms (room_nid, room_id) VALUES ($1, $2)
			ON CONFLICT (room_nid) DO NOTHING`, ri.nid, roomID)
	} else {
		_, err = s.db.Exec(ctx, `DELETE FROM published_rooms WHERE room_nid = $1`, ri.nid)
	}
	if err != nil {
		return fmt.Errorf("setting directory visibility of %s: %w", roomID, err)
	}
	return nil
}

// Published reports whether roomID is in the public room directory. It returns an error
// wrapping sqldb.ErrNotFound (and a 404 M_NOT_FOUND) if the room is unknown.
func (s *Service) Published(ctx context.Context, roomID string) (bool, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return false, err
	}
	var n int
	if err := s.db.QueryRow(ctx, `SELECT COUNT(*) FROM published_rooms WHERE room_nid = $1`, ri.nid).Scan(&n); err != nil {
		return false, fmt.Errorf("reading directory visibility of %s: %w", roomID, err)
	}
	return n > 0, nil
}

// DefaultPublicRoomsLimit is the page size of PublicRooms when the request sets none, and
// MaxPublicRoomsLimit the largest it allows.
const (
	DefaultPublicRoomsLimit = 100
	MaxPublicRoomsLimit     = 500
)

// PublicRoomsRequest asks for one page of the public room directory.
type PublicRoomsRequest struct {
	Limit     int       // ≤ 0: DefaultPublicRoomsLimit; capped at MaxPublicRoomsLimit
	Since     string    // a NextBatch or PrevBatch token of an earlier page, "" for the first page
	Search    string    // generic_search_term: a case-insensitive substring of name, topic or canonical alias
	RoomTypes []*string // when non-empty, only rooms of these types; a nil element is rooms without a type
}

// PublicRoomsPage is one page of the public room directory.
type PublicRoomsPage struct {
	Rooms     []RoomSummary
	NextBatch string // "" on the last page
	PrevBatch string // "" on the first page
	Total     int64  // how many rooms match the request's filter on all pages
}

// PublicRooms returns a page of the published rooms that are joinable or world-readable and
// have a joined member, largest first (then by room ID, descending, as Synapse orders them).
// It returns 400 M_INVALID_PARAM for a malformed Since token.
func (s *Service) PublicRooms(ctx context.Context, req PublicRoomsRequest) (*PublicRoomsPage, error) {
	limit := req.Limit
	if limit <= 0 {
		limit = DefaultPublicRoomsLimit
	}
	limit = min(limit, MaxPublicRoomsLimit)
	var (
		cursor  *pageToken
		forward = true
	)
	if req.Since != "" {
		t, err := parsePageToken(req.Since)
		if err != nil {
			return nil, err
		}
		cursor, forward = &t, t.forward
	}
	if err := s.refreshPublished(ctx); err != nil {
		return nil, err
	}

	where := []string{
		`p.state_nid >= 0`, `p.joined > 0`,
		`(p.join_rule IN ('public', 'knock', 'knock_restricted') OR p.history_visibility = 'world_readable')`,
	}
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if term := strings.ToLower(strings.TrimSpace(req.Search)); term != "" {
		where = append(where, `p.search LIKE `+arg("%"+escapeLike(term)+"%")+` ESCAPE '\'`)
	}
	if len(req.RoomTypes) > 0 {
		var alts []string
		for _, t := range req.RoomTypes {
			if t == nil {
				alts = append(alts, `p.room_type = ''`)
			} else {
				alts = append(alts, `p.room_type = `+arg(*t))
			}
		}
		where = append(where, `(`+strings.Join(alts, ` OR `)+`)`)
	}
	page := &PublicRoomsPage{}
	if err := s.db.QueryRow(ctx, `SELECT COUNT(*) FROM published_rooms p WHERE `+strings.Join(where, ` AND `), args...).
		Scan(&page.Total); err != nil {
		return nil, fmt.Errorf("counting public rooms: %w", err)
	}

	order := `p.joined DESC, p.room_id DESC`
	if cursor != nil {
		j, id := arg(cursor.joined), arg(cursor.roomID)
		if forward {
			where = append(where, `(p.joined < `+j+` OR (p.joined = `+j+` AND p.room_id < `+id+`))`)
		} else {
			where = append(where, `(p.joined > `+j+` OR (p.joined = `+j+` AND p.room_id > `+id+`))`)
			order = `p.joined ASC, p.room_id ASC`
		}
	}
	rows, err := s.db.Query(ctx, `SELECT p.room_id, p.joined, p.name, p.topic, p.canonical_alias, p.avatar_url,
			p.join_rule, p.history_visibility, p.guest_access, p.room_type
		FROM published_rooms p WHERE `+strings.Join(where, ` AND `)+` ORDER BY `+order+` LIMIT `+arg(limit+1), args...)
	if err != nil {
		return nil, fmt.Errorf("listing public rooms: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r RoomSummary
		if err := rows.Scan(&r.RoomID, &r.JoinedMembers, &r.Name, &r.Topic, &r.CanonicalAlias, &r.AvatarURL,
			&r.JoinRule, &r.HistoryVisibility, &r.GuestAccess, &r.RoomType); err != nil {
			return nil, fmt.Errorf("listing public rooms: %w", err)
		}
		page.Rooms = append(page.Rooms, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing public rooms: %w", err)
	}
	more := len(page.Rooms) > limit
	if more {
		page.Rooms = page.Rooms[:limit]
	}
	if !forward {
		slices.Reverse(page.Rooms)
	}
	if len(page.Rooms) == 0 {
		return page, nil
	}
	first, last := page.Rooms[0], page.Rooms[len(page.Rooms)-1]
	// Going forward there is a previous page once we have a cursor, and a next page when
	// more rows came back; going backward, the other way round.
	if (forward && more) || !forward {
		page.NextBatch = pageToken{forward: true, joined: last.JoinedMembers, roomID: last.RoomID}.String()
	}
	if (forward && cursor != nil) || (!forward && more) {
		page.PrevBatch = pageToken{forward: false, joined: first.JoinedMembers, roomID: first.RoomID}.String()
	}
	return page, nil
}

// refreshPublished recomputes the stale rows of published_rooms: those whose room has a
// newer state snapshot than the row's summary.
func (s *Service) refreshPublished(ctx context.Context) error {
	rows, err := s.db.Query(ctx, `SELECT p.room_nid, p.room_id, r.state_nid FROM published_rooms p
		JOIN rooms r ON r.room_nid = p.room_nid WHERE p.state_nid <> r.state_nid`)
	if err != nil {
		return fmt.Errorf("finding stale directory entries: %w", err)
	}
	stale := map[int64]string{}
	snapshot := map[int64]int64{}
	for rows.Next() {
		var (
			nid, state int64
			id         string
		)
		if err := rows.Scan(&nid, &id, &state); err != nil {
			rows.Close()
			return fmt.Errorf("finding stale directory entries: %w", err)
		}
		stale[nid], snapshot[nid] = id, state
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return fmt.Errorf("finding stale directory entries: %w", err)
	}
	if len(stale) == 0 {
		return nil
	}
	// The snapshots were read before the state, so a summary is never tagged newer than the
	// state it was computed from; at worst it is recomputed once more.
	sums, err := s.summarise(ctx, stale)
	if err != nil {
		return err
	}
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		for nid, r := range sums {
			search := strings.ToLower(r.Name + "\n" + r.Topic + "\n" + r.CanonicalAlias)
			if _, err := tx.Exec(ctx, `UPDATE published_rooms SET state_nid = $1, joined = $2, name = $3, topic = $4,
					canonical_alias = $5, avatar_url = $6, join_rule = $7, history_visibility = $8, guest_access = $9,
					room_type = $10, search = $11
				WHERE room_nid = $12`, snapshot[nid], r.JoinedMembers, r.Name, r.Topic, r.CanonicalAlias, r.AvatarURL,
				r.JoinRule, r.HistoryVisibility, r.GuestAccess, r.RoomType, search, nid); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("updating directory entries: %w", err)
	}
	return nil
}

// escapeLike escapes the LIKE wildcards of s for ESCAPE '\'.
func escapeLike(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}

// pageToken is a position in the directory's order: the room (joined, roomID) and the
// direction to read from it. It is written "n<joined>_<roomID>" (forward) or "p…" (backward).
type pageToken struct {
	forward bool
	joined  int64
	roomID  string
}

func (t pageToken) String() string {
	d := "p"
	if t.forward {
		d = "n"
	}
	return d + strconv.FormatInt(t.joined, 10) + "_" + t.roomID
}

var errBadPageToken = errors.New("malformed token")

func parsePageToken(s string) (pageToken, error) {
	bad := func() (pageToken, error) {
		return pageToken{}, fmt.Errorf("%w: %w", matrix.InvalidParam("invalid since token %q", s), errBadPageToken)
	}
	if len(s) < 4 || (s[0] != 'n' && s[0] != 'p') {
		return bad()
	}
	num, id, ok := strings.Cut(s[1:], "_")
	if !ok || !strings.HasPrefix(id, "!") {
		return bad()
	}
	j, err := strconv.ParseInt(num, 10, 64)
	if err != nil || j < 0 {
		return bad()
	}
	return pageToken{forward: s[0] == 'n', joined: j, roomID: id}, nil
}
