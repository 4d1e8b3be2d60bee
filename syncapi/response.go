package syncapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/userapi"
)

type response struct {
	NextBatch   string         `json:"next_batch"`
	AccountData eventList      `json:"account_data"`
	Presence    eventList      `json:"presence"`
	ToDevice    eventList      `json:"to_device"`
	Rooms       roomsResponse  `json:"rooms"`
	DeviceLists deviceLists    `json:"device_lists"`
	OTKCounts   map[string]int `json:"device_one_time_keys_count"`
	FallbackKey []string       `json:"device_unused_fallback_key_types"`
}

type deviceLists struct {
	Changed []string `json:"changed"`
	Left    []string `json:"left"`
}

type eventList struct {
	Events []any `json:"events"`
}

type roomsResponse struct {
	Join   map[string]*joinedRoom  `json:"join"`
	Invite map[string]*invitedRoom `json:"invite"`
	Leave  map[string]*leftRoom    `json:"leave"`
	Knock  map[string]*knockedRoom `json:"knock"`
}

type timeline struct {
	Events    []matrix.ClientEvent `json:"events"`
	Limited   bool                 `json:"limited"`
	PrevBatch string               `json:"prev_batch,omitempty"`
}

type stateList struct {
	Events []matrix.ClientEvent `json:"events"`
}

// roomState is the state part of a room's section: "state" normally, or MSC4222's
// "state_after" (under its stable or unstable name) when the client asked for it.
type roomState struct {
	State              *stateList `json:"state,omitempty"`
	StateAfter         *stateList `json:"state_after,omitempty"`
	StateAfterUnstable *stateList `json:"org.matrix.msc4222.state_after,omitempty"`
}

func (rs *roomState) set(key string, evs []matrix.ClientEvent) {
	l := &stateList{Events: evs}
	switch key {
	case "state_after":
		rs.StateAfter = l
	case "org.matrix.msc4222.state_after":
		rs.StateAfterUnstable = l
	default:
		rs.State = l
	}
}

func (rs *roomState) len() int {
	n := 0
	for _, l := range []*stateList{rs.State, rs.StateAfter, rs.StateAfterUnstable} {
		if l != nil {
			n += len(l.Events)
		}
	}
	return n
}

type unreadCounts struct {
	Highlight    int `json:"highlight_count"`
	Notification int `json:"notification_count"`
}

type joinedRoom struct {
	roomState
	Timeline    timeline       `json:"timeline"`
	Ephemeral   eventList      `json:"ephemeral"`
	AccountData eventList      `json:"account_data"`
	Unread      unreadCounts   `json:"unread_notifications"`
	Summary     map[string]any `json:"summary"`
}

type invitedRoom struct {
	InviteState eventList `json:"invite_state"`
}

type knockedRoom struct {
	KnockState eventList `json:"knock_state"`
}

type leftRoom struct {
	roomState
	Timeline    timeline  `json:"timeline"`
	AccountData eventList `json:"account_data"`
}

func (r *response) empty() bool {
	return len(r.AccountData.Events) == 0 && len(r.Presence.Events) == 0 && len(r.ToDevice.Events) == 0 &&
		len(r.Rooms.Join) == 0 && len(r.Rooms.Invite) == 0 && len(r.Rooms.Leave) == 0 && len(r.Rooms.Knock) == 0 &&
		len(r.DeviceLists.Changed) == 0 && len(r.DeviceLists.Left) == 0
}

func newResponse(to Token) *response {
	return &response{
		NextBatch:   to.String(),
		AccountData: eventList{Events: []any{}},
		Presence:    eventList{Events: []any{}},
		ToDevice:    eventList{Events: []any{}},
		Rooms: roomsResponse{
			Join: map[string]*joinedRoom{}, Invite: map[string]*invitedRoom{},
			Leave: map[string]*leftRoom{}, Knock: map[string]*knockedRoom{},
		},
		DeviceLists: deviceLists{Changed: []string{}, Left: []string{}},
		OTKCounts:   map[string]int{},
		FallbackKey: []string{},
	}
}

// defaultTimelineLimit applies when the filter sets no timeline limit.
const defaultTimelineLimit = 10

// maxTimelineScan bounds how many events one room's timeline may read looking for events its
// filter and history visibility let through; past it the timeline is marked limited.
const maxTimelineScan = 1000

// builder assembles one response for the range (since, to].
type builder struct {
	s       *Service
	req     *syncRequest
	userID  string
	since   Token // zero for an initial or full-state sync
	to      Token
	initial bool
	now     time.Time
	ignored map[string]bool

	receipts map[string][]Receipt // room → receipts to send
	// membership is the user's membership at each timeline event (MSC4115 unsigned.membership).
	membership map[string]string
	// asked is the since token the client sent, also on a full_state sync, which is otherwise
	// built like an initial one: membership changes after it still go in the right sections.
	asked *Token
}

// build assembles the response for the range (since, to].
func (s *Service) build(ctx context.Context, req *syncRequest, to Token) (*response, error) {
	b := &builder{s: s, req: req, userID: req.dev.UserID, to: to, now: time.Now(),
		initial: req.since == nil || req.fullState, membership: map[string]string{}, asked: req.since}
	if !b.initial {
		b.since = *req.since
	}
	resp := newResponse(to)
	var err error
	if b.ignored, err = s.ignoredUsers(ctx, b.userID); err != nil {
		return nil, err
	}

	// Account data, global and per room.
	ad, err := s.users.AccountDataSince(ctx, b.userID, b.since.AccountData, to.AccountData)
	if err != nil {
		return nil, err
	}
	roomData := map[string][]any{}
	for _, e := range ad {
		ev := map[string]any{"type": e.Type, "content": e.Content}
		if e.RoomID == "" {
			if req.filter.AccountData.Matches(e.Type, "") {
				resp.AccountData.Events = append(resp.AccountData.Events, ev)
			}
		} else if rf := req.filter.Room; rf == nil || roomEventFilterAllows(rf.AccountData, e.RoomID, e.Type, "") {
			roomData[e.RoomID] = append(roomData[e.RoomID], ev)
		}
	}
	resp.AccountData.Events = limitEvents(resp.AccountData.Events, req.filter.AccountData)

	// The user's rooms and their membership as of `to`.
	urs, err := s.rooms.UserRooms(ctx, b.userID)
	if err != nil {
		return nil, err
	}
	mevs := map[string][]*roomserver.Event{} // room → the user's membership events in range
	var forgotten map[string]int64
	includeLeave := req.filter.Room != nil && req.filter.Room.IncludeLeave
	if b.initial {
		if includeLeave {
			if forgotten, err = s.store.forgotten(ctx, b.userID); err != nil {
				return nil, err
			}
		}
	} else if to.Rooms > b.since.Rooms {
		evs, err := s.rooms.MembershipEvents(ctx, b.userID, b.since.Rooms, to.Rooms)
		if err != nil {
			return nil, err
		}
		for _, e := range evs {
			rid := e.PDU.RoomID().String()
			mevs[rid] = append(mevs[rid], e)
		}
	}

	// What else moved in range, for an incremental sync.
	active := map[string]bool{}
	if !b.initial {
		if active, err = b.activeRooms(ctx); err != nil {
			return nil, err
		}
		if to.Receipts > b.since.Receipts {
			rs, err := s.store.receiptsSince(ctx, b.since.Receipts, to.Receipts)
			if err != nil {
				return nil, err
			}
			b.receipts = map[string][]Receipt{}
			for _, r := range rs {
				b.receipts[r.RoomID] = append(b.receipts[r.RoomID], r)
			}
		}
	}

	type joinedEntry struct {
		roomID      string
		full, newly bool
	}
	var (
		joined      []joinedEntry
		joinedAtTo  []string
		newlyJoined []string
		newlyLeft   []string
	)
	for _, ur := range urs {
		roomID := ur.RoomID
		m, pos := ur.Membership, ur.StreamPos
		var ev *roomserver.Event
		if pos > to.Rooms {
			// The membership changed after `to`: what counts is the one before.
			if m, ev, err = s.rooms.MembershipAt(ctx, roomID, b.userID, to.Rooms); err != nil {
				return nil, err
			}
			if ev == nil {
				continue
			}
			pos = ev.StreamPos
		}
		if m == "join" {
			joinedAtTo = append(joinedAtTo, roomID)
		}
		if !roomAllowed(req.filter.Room, roomID) {
			continue
		}
		changed := b.asked != nil && pos > b.asked.Rooms
		switch m {
		case "join":
			e := joinedEntry{roomID: roomID, full: b.initial}
			if changed && !b.initial {
				newly, err := b.newlyJoined(ctx, roomID, mevs[roomID])
				if err != nil {
					return nil, err
				}
				e.full, e.newly = newly, newly
				if newly {
					newlyJoined = append(newlyJoined, roomID)
				}
			}
			if !e.full && !active[roomID] && len(roomData[roomID]) == 0 && len(b.receipts[roomID]) == 0 {
				if _, tpos := s.typing.users(roomID); tpos <= b.since.Typing {
					continue
				}
			}
			joined = append(joined, e)
		case "invite", "knock":
			if !b.initial && !changed {
				continue
			}
			if ev == nil {
				if _, ev, err = s.rooms.Membership(ctx, roomID, b.userID); err != nil {
					return nil, err
				}
				if ev == nil {
					continue
				}
			}
			if b.ignored[string(ev.PDU.SenderID())] {
				continue // spec: invites from ignored users are not sent
			}
			if m == "invite" {
				resp.Rooms.Invite[roomID] = &invitedRoom{InviteState: eventList{Events: strippedState(ev, "invite_room_state", b.now)}}
			} else {
				resp.Rooms.Knock[roomID] = &knockedRoom{KnockState: eventList{Events: strippedState(ev, "knock_room_state", b.now)}}
			}
		case "leave", "ban":
			switch {
			case changed:
				// Left after the client's since token (a full_state sync included).
				newlyLeft = append(newlyLeft, roomID)
			case b.initial && includeLeave:
				if at, ok := forgotten[roomID]; ok && at >= pos {
					continue
				}
			default:
				continue
			}
			lr, err := b.left(ctx, roomID, pos)
			if err != nil {
				return nil, fmt.Errorf("syncing left room %s: %w", roomID, err)
			}
			lr.AccountData.Events = append(lr.AccountData.Events, roomData[roomID]...)
			resp.Rooms.Leave[roomID] = lr
		}
	}

	if b.initial && len(joined) > 0 {
		ids := make([]string, 0, len(joined))
		for _, e := range joined {
			ids = append(ids, e.roomID)
		}
		if err := b.loadRoomReceipts(ctx, ids); err != nil {
			return nil, err
		}
	} else if len(newlyJoined) > 0 {
		if err := b.loadRoomReceipts(ctx, newlyJoined); err != nil {
			return nil, err
		}
	}
	for _, e := range joined {
		jr, err := b.joined(ctx, e.roomID, e.full, e.newly)
		if err != nil {
			return nil, fmt.Errorf("syncing room %s: %w", e.roomID, err)
		}
		jr.AccountData.Events = append(jr.AccountData.Events, roomData[e.roomID]...)
		if !e.full && len(jr.Timeline.Events) == 0 && jr.len() == 0 && len(jr.AccountData.Events) == 0 && len(jr.Ephemeral.Events) == 0 {
			continue
		}
		resp.Rooms.Join[e.roomID] = jr
	}

	var memberChanges []roomserver.MemberChange
	if !b.initial && to.Rooms > b.since.Rooms {
		var rooms []string
		for _, id := range joinedAtTo {
			if active[id] {
				rooms = append(rooms, id)
			}
		}
		if len(rooms) > 0 {
			if memberChanges, err = s.rooms.MemberChanges(ctx, rooms, b.since.Rooms, to.Rooms); err != nil {
				return nil, err
			}
		}
	}
	if err := b.presence(ctx, resp, newlyJoined, memberChanges); err != nil {
		return nil, err
	}
	if !b.initial {
		if err := b.deviceLists(ctx, resp, newlyJoined, newlyLeft, memberChanges); err != nil {
			return nil, err
		}
	}
	return resp, nil
}

// activeRooms returns the rooms with events in (since, to], from the in-memory room log when
// it covers the range.
func (b *builder) activeRooms(ctx context.Context) (map[string]bool, error) {
	out := map[string]bool{}
	if b.to.Rooms <= b.since.Rooms {
		return out, nil
	}
	if cs, ok := b.s.roomLog.since(b.since.Rooms, b.to.Rooms); ok {
		for _, c := range cs {
			out[c.room] = true
		}
		return out, nil
	}
	ids, err := b.s.rooms.RoomsWithEvents(ctx, b.since.Rooms, b.to.Rooms)
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		out[id] = true
	}
	return out, nil
}

// newlyJoined reports whether the user's join to roomID, changed in range, is a new join
// rather than a profile change re-sending a join: it is new if the range holds a membership
// other than join, or the user was not joined at `since`.
func (b *builder) newlyJoined(ctx context.Context, roomID string, inRange []*roomserver.Event) (bool, error) {
	for _, e := range inRange {
		if m, _ := e.PDU.Membership(); m != "join" {
			return true, nil
		}
	}
	m, _, err := b.s.rooms.MembershipAt(ctx, roomID, b.userID, b.since.Rooms)
	if err != nil {
		return false, err
	}
	return m != "join", nil
}

func (b *builder) loadRoomReceipts(ctx context.Context, roomIDs []string) error {
	rs, err := b.s.store.roomReceipts(ctx, roomIDs, b.to.Receipts)
	if err != nil {
		return err
	}
	if b.receipts == nil {
		b.receipts = map[string][]Receipt{}
	}
	for _, id := range roomIDs {
		delete(b.receipts, id) // the full set replaces what moved in range
	}
	for _, r := range rs {
		b.receipts[r.RoomID] = append(b.receipts[r.RoomID], r)
	}
	return nil
}

// ignoredUsers returns the users in userID's m.ignored_user_list.
func (s *Service) ignoredUsers(ctx context.Context, userID string) (map[string]bool, error) {
	raw, err := s.users.AccountData(ctx, userID, "", "m.ignored_user_list")
	if errors.Is(err, userapi.ErrNotFound) {
		return map[string]bool{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("loading ignored users: %w", err)
	}
	var c struct {
		IgnoredUsers map[string]json.RawMessage `json:"ignored_users"`
	}
	_ = json.Unmarshal(raw, &c)
	out := make(map[string]bool, len(c.IgnoredUsers))
	for u := range c.IgnoredUsers {
		out[u] = true
	}
	return out, nil
}

func (b *builder) timelineFilter() *matrix.RoomEventFilter {
	if rf := b.req.filter.Room; rf != nil {
		return rf.Timeline
	}
	return nil
}

func (b *builder) stateFilter() *matrix.RoomEventFilter {
	if rf := b.req.filter.Room; rf != nil {
		return rf.State
	}
	return nil
}

func (b *builder) timelineLimit() int {
	if tf := b.timelineFilter(); tf != nil && tf.Limit != nil {
		return max(*tf.Limit, 0)
	}
	return defaultTimelineLimit
}

// timelineResult is a room's timeline before conversion.
type timelineResult struct {
	events  []*roomserver.Event // oldest first
	limited bool                // events the filter allows were left out before the first
	gap     bool                // some event of the range is not in the timeline
}

// timeline reads the newest events of roomID in (after, upTo] that the timeline filter, the
// ignore list and (when checkVisibility is set) history visibility let through, up to the
// limit, paging back through the range as needed.
func (b *builder) timeline(ctx context.Context, roomID string, after, upTo int64, checkVisibility bool) (timelineResult, error) {
	var res timelineResult
	tf := b.timelineFilter()
	limit := b.timelineLimit()
	if !roomEventFilterAllowsRoom(tf, roomID) {
		limit = 0
	}
	batch := limit + 1
	if tf != nil || checkVisibility || len(b.ignored) > 0 {
		batch = max(batch, 50)
	}
	// An incremental timeline is the range in stream order. An initial one is the room's
	// newest events in topological order (depth, then stream position), as Synapse picks
	// them: an old fork that arrived late (a lower depth, a later position) does not push the
	// newest events out of a short timeline; it shows up in the state section instead.
	hi, scanned := upTo, 0
	var cursor *roomserver.DepthCursor
	nextPage := func() ([]*roomserver.Event, bool, error) {
		if after > 0 {
			page, more, err := b.s.rooms.RoomEvents(ctx, roomID, after, hi, batch)
			if len(page) > 0 {
				hi = page[0].StreamPos - 1
			}
			return page, more && hi > after, err
		}
		page, more, err := b.s.rooms.RoomEventsByDepth(ctx, roomID, upTo, cursor, batch)
		if len(page) > 0 {
			last := page[len(page)-1]
			cursor = &roomserver.DepthCursor{Depth: last.PDU.Depth(), StreamPos: last.StreamPos}
			slices.Reverse(page)
		}
		return page, more, err
	}
	var newestFirst []*roomserver.Event
	for more := upTo > after; more; {
		var page []*roomserver.Event
		var err error
		page, more, err = nextPage()
		if err != nil {
			return res, err
		}
		if len(page) == 0 {
			break
		}
		scanned += len(page)
		kept := make([]*roomserver.Event, 0, len(page))
		for _, e := range page {
			if b.keepInTimeline(e, tf) {
				kept = append(kept, e)
			} else {
				res.gap = true
			}
		}
		if len(kept) > 0 {
			// Visibility also yields the user's membership at each event, which clients show.
			vis, ms, err := b.s.rooms.VisibleEvents(ctx, b.userID, kept)
			if err != nil {
				return res, err
			}
			for i, e := range vis {
				b.membership[e.PDU.EventID()] = ms[i]
			}
			if checkVisibility {
				if len(vis) < len(kept) {
					res.gap = true
				}
				kept = vis
			}
		}
		// A timeline does not span a gap in the room's history (events this server has not
		// fetched): it starts after the gap, limited, and /messages backfills it.
		var gaps map[string]bool
		if len(kept) > 0 {
			if gaps, err = b.s.rooms.GapsBefore(ctx, kept); err != nil {
				return res, err
			}
		}
		done := false
		for i := len(kept) - 1; i >= 0; i-- {
			if len(newestFirst) == limit {
				res.limited, done = true, true
				break
			}
			newestFirst = append(newestFirst, kept[i])
			if gaps[kept[i].PDU.EventID()] {
				res.limited, done = true, true
				break
			}
		}
		if done {
			break
		}
		if more && scanned >= maxTimelineScan {
			res.limited = true
			break
		}
	}
	if res.limited {
		res.gap = true
	}
	slices.Reverse(newestFirst)
	res.events = newestFirst
	return res, nil
}

// gapFinder is the roomserver's detection of gaps in a room's history.
type gapFinder interface {
	GapsBefore(ctx context.Context, evs []*roomserver.Event) (map[string]bool, error)
}

// keepInTimeline applies the timeline filter and the ignore list to e.
func (b *builder) keepInTimeline(e *roomserver.Event, tf *matrix.RoomEventFilter) bool {
	sender := string(e.PDU.SenderID())
	if b.ignored[sender] && e.PDU.StateKey() == nil {
		return false
	}
	if tf == nil {
		return true
	}
	if !tf.EventFilter.Matches(e.PDU.Type(), sender) {
		return false
	}
	if tf.ContainsURL != nil {
		var c struct {
			URL any `json:"url"`
		}
		_ = json.Unmarshal(e.PDU.Content(), &c)
		if (c.URL != nil) != *tf.ContainsURL {
			return false
		}
	}
	return true
}

func (b *builder) clientEvent(e *roomserver.Event) matrix.ClientEvent {
	o := matrix.ClientEventOptions{OmitRoomID: true, Now: b.now, Membership: b.membership[e.PDU.EventID()]}
	if e.TxnID != "" && e.DeviceID == b.req.dev.DeviceID && string(e.PDU.SenderID()) == b.userID {
		o.TxnID = e.TxnID
	}
	if e.RedactedBecause != nil {
		rb := matrix.ToClientEvent(e.RedactedBecause, matrix.ClientEventOptions{OmitRoomID: true, Now: b.now})
		o.RedactedBecause = &rb
	}
	return matrix.ToClientEvent(e.PDU, o)
}

func (b *builder) clientEvents(evs []*roomserver.Event) []matrix.ClientEvent {
	out := make([]matrix.ClientEvent, 0, len(evs))
	for _, e := range evs {
		out = append(out, b.clientEvent(e))
	}
	return out
}

// lazyMembers reports whether the state filter asks for lazy-loaded members.
func (b *builder) lazyMembers() bool {
	sf := b.stateFilter()
	return sf != nil && sf.LazyLoadMembers
}

// stateAt returns the state of roomID as of pos: all of it, or with lazy loading everything
// but the members other than those named.
func (b *builder) stateAt(ctx context.Context, roomID string, pos int64, members []string) ([]*roomserver.Event, error) {
	if b.lazyMembers() {
		return b.s.rooms.StateAtPosFiltered(ctx, roomID, pos, members)
	}
	return b.s.rooms.StateAtPos(ctx, roomID, pos)
}

// stateDelta returns the entries of the state as of pos that differ from the state as of from.
func (b *builder) stateDelta(ctx context.Context, roomID string, from, pos int64, members []string) ([]*roomserver.Event, error) {
	old, err := b.stateAt(ctx, roomID, from, nil)
	if err != nil {
		return nil, err
	}
	cur, err := b.stateAt(ctx, roomID, pos, members)
	if err != nil {
		return nil, err
	}
	had := make(map[string]bool, len(old))
	for _, e := range old {
		had[e.PDU.EventID()] = true
	}
	out := cur[:0:0]
	for _, e := range cur {
		if !had[e.PDU.EventID()] {
			out = append(out, e)
		}
	}
	if b.lazyMembers() && len(members) > 0 {
		// A lazy-loading client may never have seen the members of this timeline's
		// senders; sending them again is allowed (redundant members).
		seen := map[string]bool{}
		for _, e := range out {
			seen[e.PDU.EventID()] = true
		}
		for _, e := range cur {
			if e.PDU.Type() == "m.room.member" && !seen[e.PDU.EventID()] {
				out = append(out, e)
			}
		}
	}
	return out, nil
}

// sectionState computes a room section's state: with full set, the whole state at the
// start of the timeline (or, for state_after, at its end, upTo); otherwise what changed since
// `since` when the timeline does not show every change.
func (b *builder) sectionState(ctx context.Context, roomID string, tl timelineResult, upTo int64, full bool) ([]matrix.ClientEvent, error) {
	members := []string{b.userID}
	inTimeline := map[string]bool{}
	hasState := false
	for _, e := range tl.events {
		inTimeline[e.PDU.EventID()] = true
		if !slices.Contains(members, string(e.PDU.SenderID())) {
			members = append(members, string(e.PDU.SenderID()))
		}
		if e.PDU.StateKey() != nil {
			hasState = true
		}
	}
	var (
		evs []*roomserver.Event
		err error
	)
	switch {
	case b.req.stateAfter != "" && full:
		evs, err = b.stateAt(ctx, roomID, upTo, members)
	case b.req.stateAfter != "":
		if tl.gap || hasState {
			evs, err = b.stateDelta(ctx, roomID, b.since.Rooms, upTo, members)
		}
	default:
		start := upTo
		if len(tl.events) > 0 {
			start = tl.firstPos() - 1
		}
		if full {
			evs, err = b.stateAt(ctx, roomID, start, members)
			if err == nil && len(tl.events) > 0 {
				evs, err = b.offTimelineState(ctx, roomID, evs, start, upTo, inTimeline, members)
			}
		} else if tl.gap {
			evs, err = b.stateDelta(ctx, roomID, b.since.Rooms, start, members)
		}
	}
	if err != nil {
		return nil, err
	}
	sf := b.stateFilter()
	out := []matrix.ClientEvent{}
	for _, e := range evs {
		if b.req.stateAfter == "" && inTimeline[e.PDU.EventID()] {
			continue
		}
		if sf != nil && (!sf.EventFilter.Matches(e.PDU.Type(), string(e.PDU.SenderID())) || !roomEventFilterAllowsRoom(sf, roomID)) {
			continue
		}
		out = append(out, b.clientEvent(e))
	}
	return out, nil
}

// offTimelineState adds to evs, the state at the start of a full timeline, the state as of
// upTo when a state event after the start is in neither (a fork that arrived late, or a
// state event the timeline filter left out), so the client still learns the room's current
// state, as Synapse does. Usually no such event exists and evs is returned as it is.
func (b *builder) offTimelineState(ctx context.Context, roomID string, evs []*roomserver.Event, start, upTo int64, inTimeline map[string]bool, members []string) ([]*roomserver.Event, error) {
	ids, err := b.s.rooms.StateEventIDsBetween(ctx, roomID, start, upTo)
	if err != nil {
		return nil, err
	}
	missed := false
	for _, id := range ids {
		if !inTimeline[id] {
			missed = true
			break
		}
	}
	if !missed {
		return evs, nil
	}
	end, err := b.stateAt(ctx, roomID, upTo, members)
	if err != nil {
		return nil, err
	}
	have := make(map[string]bool, len(evs))
	for _, e := range evs {
		have[e.PDU.EventID()] = true
	}
	for _, e := range end {
		if !have[e.PDU.EventID()] {
			evs = append(evs, e)
		}
	}
	return evs, nil
}

// firstPos is the lowest stream position in the timeline: a timeline in topological order
// need not start with it.
func (tl timelineResult) firstPos() int64 {
	first := tl.events[0].StreamPos
	for _, e := range tl.events[1:] {
		first = min(first, e.StreamPos)
	}
	return first
}

// prevBatch is the token /messages pages back from: just before the timeline's first event.
func (b *builder) prevBatch(tl timelineResult) string {
	t := b.to
	if len(tl.events) > 0 {
		t.Rooms = tl.firstPos() - 1
	}
	return t.String()
}

// joined builds a joined room's section. full means the whole state is sent (an initial
// sync, full_state, or a new join); newly marks a join in range.
func (b *builder) joined(ctx context.Context, roomID string, full, newly bool) (*joinedRoom, error) {
	jr := &joinedRoom{
		Ephemeral: eventList{Events: []any{}}, AccountData: eventList{Events: []any{}},
		Summary: map[string]any{},
	}
	after := b.since.Rooms
	if full {
		after = 0
	}
	// A user joined throughout the range may see all of it; history before a join is
	// judged by history visibility.
	tl, err := b.timeline(ctx, roomID, after, b.to.Rooms, full)
	if err != nil {
		return nil, err
	}
	if newly {
		tl.limited, tl.gap = true, true
	}
	jr.Timeline = timeline{Events: b.clientEvents(tl.events), Limited: tl.limited, PrevBatch: b.prevBatch(tl)}
	st, err := b.sectionState(ctx, roomID, tl, b.to.Rooms, full)
	if err != nil {
		return nil, err
	}
	jr.set(b.req.stateAfter, st)

	// Ephemeral events: typing and receipts.
	var ephemeral []any
	if users, tpos := b.s.typing.users(roomID); (full && len(users) > 0) || (!b.initial && tpos > b.since.Typing) {
		if users == nil {
			users = []string{}
		}
		ephemeral = append(ephemeral, map[string]any{"type": "m.typing", "content": map[string]any{"user_ids": users}})
	}
	if rc := b.receiptContent(b.receipts[roomID]); rc != nil {
		ephemeral = append(ephemeral, map[string]any{"type": "m.receipt", "content": rc})
	}
	var ef *matrix.RoomEventFilter
	if rf := b.req.filter.Room; rf != nil {
		ef = rf.Ephemeral
	}
	for _, e := range ephemeral {
		typ := e.(map[string]any)["type"].(string)
		if roomEventFilterAllows(ef, roomID, typ, "") {
			jr.Ephemeral.Events = append(jr.Ephemeral.Events, e)
		}
	}
	if ef != nil {
		jr.Ephemeral.Events = limitEvents(jr.Ephemeral.Events, &ef.EventFilter)
	}

	// The summary, when members may have changed.
	needSummary := full
	for _, e := range tl.events {
		if e.PDU.Type() == "m.room.member" {
			needSummary = true
			break
		}
	}
	if needSummary {
		sum, err := b.s.rooms.Summary(ctx, roomID, b.userID)
		if err != nil {
			return nil, err
		}
		heroes := sum.Heroes
		if heroes == nil {
			heroes = []string{}
		}
		jr.Summary = map[string]any{
			"m.joined_member_count": sum.Joined, "m.invited_member_count": sum.Invited, "m.heroes": heroes,
		}
	}
	return jr, nil
}

// receiptContent builds an m.receipt content from rs, leaving out other users' private
// receipts; nil when nothing remains.
func (b *builder) receiptContent(rs []Receipt) map[string]map[string]map[string]any {
	var out map[string]map[string]map[string]any
	for _, r := range rs {
		if r.Type == receiptReadPrivate && r.UserID != b.userID {
			continue
		}
		if b.ignored[r.UserID] {
			continue
		}
		if out == nil {
			out = map[string]map[string]map[string]any{}
		}
		byType := out[r.EventID]
		if byType == nil {
			byType = map[string]map[string]any{}
			out[r.EventID] = byType
		}
		byUser := byType[r.Type]
		if byUser == nil {
			byUser = map[string]any{}
			byType[r.Type] = byUser
		}
		info := map[string]any{"ts": r.TS}
		if r.ThreadID != "" {
			info["thread_id"] = r.ThreadID
		}
		byUser[r.UserID] = info
	}
	return out
}

// left builds a left room's section: its timeline ends at the user's leave (or ban) at
// position leavePos, so nothing after it is served.
func (b *builder) left(ctx context.Context, roomID string, leavePos int64) (*leftRoom, error) {
	lr := &leftRoom{AccountData: eventList{Events: []any{}}}
	after := b.since.Rooms
	full := b.initial
	if full {
		after = 0
	}
	tl, err := b.timeline(ctx, roomID, after, leavePos, true)
	if err != nil {
		return nil, err
	}
	lr.Timeline = timeline{Events: b.clientEvents(tl.events), Limited: tl.limited}
	if len(tl.events) > 0 {
		t := b.to
		t.Rooms = tl.events[0].StreamPos - 1
		lr.Timeline.PrevBatch = t.String()
	}
	st, err := b.sectionState(ctx, roomID, tl, leavePos, full)
	if err != nil {
		return nil, err
	}
	lr.set(b.req.stateAfter, st)
	return lr, nil
}

// strippedState returns an invite's or knock's stripped state: the room state the inviting
// server attached under unsigned[key], then the membership event itself.
func strippedState(ev *roomserver.Event, key string, now time.Time) []any {
	out := []any{}
	var unsigned map[string]json.RawMessage
	_ = json.Unmarshal(ev.PDU.Unsigned(), &unsigned)
	var state []json.RawMessage
	_ = json.Unmarshal(unsigned[key], &state)
	for _, st := range state {
		out = append(out, st)
	}
	ce := matrix.ToClientEvent(ev.PDU, matrix.ClientEventOptions{OmitRoomID: true, Now: now})
	return append(out, map[string]any{
		"type": ce.Type, "state_key": ce.StateKey, "sender": ce.Sender, "content": ce.Content,
		"event_id": ce.EventID, "origin_server_ts": ce.OriginServerTS,
	})
}

// presence fills the presence section: on an initial sync everyone sharing a room with the
// user; on an incremental one those whose presence changed, the members of rooms the user
// newly joined, and the users who newly joined the user's rooms.
func (b *builder) presence(ctx context.Context, resp *response, newlyJoined []string, changes []roomserver.MemberChange) error {
	pf := b.req.filter.Presence
	if pf != nil && pf.Limit != nil && *pf.Limit == 0 {
		return nil
	}
	var ps []Presence
	extra := map[string]bool{}
	if b.initial {
		users, err := b.s.rooms.SharedRoomMembers(ctx, b.userID)
		if err != nil {
			return err
		}
		if ps, err = b.s.store.presenceOf(ctx, users); err != nil {
			return err
		}
	} else {
		if b.to.Presence > b.since.Presence {
			changed, err := b.s.store.presenceSince(ctx, b.since.Presence, b.to.Presence)
			if err != nil {
				return err
			}
			if len(changed) > 0 {
				ids := make([]string, 0, len(changed))
				for _, p := range changed {
					ids = append(ids, p.UserID)
				}
				shared, err := b.s.rooms.SharingUsers(ctx, b.userID, ids)
				if err != nil {
					return err
				}
				for _, p := range changed {
					if slices.Contains(shared, p.UserID) {
						ps = append(ps, p)
					}
				}
			}
		}
		for _, roomID := range newlyJoined {
			members, err := b.s.rooms.JoinedMembers(ctx, roomID)
			if err != nil {
				return err
			}
			for _, m := range members {
				extra[m] = true
			}
		}
		for _, c := range changes {
			if c.Membership == "join" && c.UserID != b.userID {
				extra[c.UserID] = true
			}
		}
		for _, p := range ps {
			delete(extra, p.UserID)
		}
		if len(extra) > 0 {
			ids := make([]string, 0, len(extra))
			for id := range extra {
				ids = append(ids, id)
			}
			slices.Sort(ids)
			more, err := b.s.store.presenceOf(ctx, ids)
			if err != nil {
				return err
			}
			for _, p := range more {
				delete(extra, p.UserID)
			}
			ps = append(ps, more...)
		}
	}
	seen := map[string]bool{}
	emit := func(userID string, p *Presence) {
		if seen[userID] || b.ignored[userID] || !pf.Matches("m.presence", userID) {
			return
		}
		seen[userID] = true
		resp.Presence.Events = append(resp.Presence.Events, map[string]any{
			"type": "m.presence", "sender": userID, "content": toPresenceContent(p, b.now),
		})
	}
	for i := range ps {
		emit(ps[i].UserID, &ps[i])
	}
	// Newly met users with no presence stored show as offline.
	for _, id := range sortedKeys(extra) {
		emit(id, nil)
	}
	resp.Presence.Events = limitEvents(resp.Presence.Events, pf)
	return nil
}

// deviceLists fills device_lists for an incremental sync: users who newly share a room with
// the user are "changed", users who no longer share any are "left".
func (b *builder) deviceLists(ctx context.Context, resp *response, newlyJoined, newlyLeft []string, changes []roomserver.MemberChange) error {
	changed := map[string]bool{}
	candidates := map[string]bool{}
	for _, c := range changes {
		if c.UserID == b.userID {
			continue
		}
		switch c.Membership {
		case "join":
			changed[c.UserID] = true
			delete(candidates, c.UserID)
		case "leave", "ban":
			candidates[c.UserID] = true
			delete(changed, c.UserID)
		}
	}
	for _, roomID := range newlyJoined {
		members, err := b.s.rooms.JoinedMembers(ctx, roomID)
		if err != nil {
			return err
		}
		for _, m := range members {
			if m != b.userID {
				changed[m] = true
			}
		}
	}
	for _, roomID := range newlyLeft {
		members, err := b.s.rooms.JoinedMembers(ctx, roomID)
		if err != nil {
			return err
		}
		for _, m := range members {
			if m != b.userID && !changed[m] {
				candidates[m] = true
			}
		}
	}
	if len(candidates) > 0 {
		ids := sortedKeys(candidates)
		shared, err := b.s.rooms.SharingUsers(ctx, b.userID, ids)
		if err != nil {
			return err
		}
		for _, id := range ids {
			if !slices.Contains(shared, id) {
				resp.DeviceLists.Left = append(resp.DeviceLists.Left, id)
			}
		}
	}
	resp.DeviceLists.Changed = append(resp.DeviceLists.Changed, sortedKeys(changed)...)
	return nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// roomAllowed applies the room filter's rooms and not_rooms.
func roomAllowed(f *matrix.RoomFilter, roomID string) bool {
	if f == nil {
		return true
	}
	if f.Rooms != nil && !slices.Contains(f.Rooms, roomID) {
		return false
	}
	return !slices.Contains(f.NotRooms, roomID)
}

// roomEventFilterAllowsRoom applies a room event filter's rooms and not_rooms.
func roomEventFilterAllowsRoom(f *matrix.RoomEventFilter, roomID string) bool {
	if f == nil {
		return true
	}
	if f.Rooms != nil && !slices.Contains(f.Rooms, roomID) {
		return false
	}
	return !slices.Contains(f.NotRooms, roomID)
}

// roomEventFilterAllows applies a room event filter to an event of evType from sender in
// roomID.
func roomEventFilterAllows(f *matrix.RoomEventFilter, roomID, evType, sender string) bool {
	if f == nil {
		return true
	}
	return roomEventFilterAllowsRoom(f, roomID) && f.EventFilter.Matches(evType, sender)
}

// limitEvents cuts evs to the filter's limit.
func limitEvents(evs []any, f *matrix.EventFilter) []any {
	if f != nil && f.Limit != nil && len(evs) > *f.Limit {
		return evs[:max(*f.Limit, 0)]
	}
	return evs
}
