package syncapi

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/roomserver"
)

type response struct {
	NextBatch   string         `json:"next_batch"`
	AccountData eventList      `json:"account_data"`
	Presence    eventList      `json:"presence"`
	ToDevice    eventList      `json:"to_device"`
	Rooms       roomsResponse  `json:"rooms"`
	DeviceLists deviceLists    `json:"device_lists"`
	OTKCounts   map[string]int `json:"device_one_time_keys_count"`
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
	Knock  map[string]any          `json:"knock"`
}

type timeline struct {
	Events    []matrix.ClientEvent `json:"events"`
	Limited   bool                 `json:"limited"`
	PrevBatch string               `json:"prev_batch,omitempty"`
}

type stateList struct {
	Events []matrix.ClientEvent `json:"events"`
}

type joinedRoom struct {
	State       stateList `json:"state"`
	Timeline    timeline  `json:"timeline"`
	Ephemeral   eventList `json:"ephemeral"`
	AccountData eventList `json:"account_data"`
	Unread      struct {
		Highlight    int `json:"highlight_count"`
		Notification int `json:"notification_count"`
	} `json:"unread_notifications"`
	Summary map[string]any `json:"summary"`
}

type invitedRoom struct {
	InviteState eventList `json:"invite_state"`
}

type leftRoom struct {
	State       stateList `json:"state"`
	Timeline    timeline  `json:"timeline"`
	AccountData eventList `json:"account_data"`
}

func (r *response) empty() bool {
	return len(r.AccountData.Events) == 0 && len(r.Rooms.Join) == 0 && len(r.Rooms.Invite) == 0 && len(r.Rooms.Leave) == 0
}

func newResponse(to Token) *response {
	return &response{
		NextBatch:   to.String(),
		AccountData: eventList{Events: []any{}},
		Presence:    eventList{Events: []any{}},
		ToDevice:    eventList{Events: []any{}},
		Rooms: roomsResponse{
			Join: map[string]*joinedRoom{}, Invite: map[string]*invitedRoom{},
			Leave: map[string]*leftRoom{}, Knock: map[string]any{},
		},
		DeviceLists: deviceLists{Changed: []string{}, Left: []string{}},
		OTKCounts:   map[string]int{},
	}
}

// timelineLimit is the filter's timeline limit, or the default of 10.
func (req *syncRequest) timelineLimit() int {
	if rf := req.filter.Room; rf != nil && rf.Timeline != nil && rf.Timeline.Limit != nil {
		return max(*rf.Timeline.Limit, 0)
	}
	return 10
}

// build assembles the response for the range (since, to].
func (s *Service) build(ctx context.Context, req *syncRequest, to Token) (*response, error) {
	resp := newResponse(to)
	var since Token
	if req.since != nil {
		since = *req.since
	}
	userID := req.dev.UserID
	now := time.Now()

	// Account data.
	ad, err := s.users.AccountDataSince(ctx, userID, sinceOrZero(req, since.AccountData), to.AccountData)
	if err != nil {
		return nil, err
	}
	roomData := map[string][]any{}
	for _, e := range ad {
		ev := map[string]any{"type": e.Type, "content": e.Content}
		if e.RoomID == "" {
			resp.AccountData.Events = append(resp.AccountData.Events, ev)
		} else {
			roomData[e.RoomID] = append(roomData[e.RoomID], ev)
		}
	}

	// Which rooms to look at: all current ones on an initial sync, otherwise those with a
	// membership change for this user or new events in the range.
	initial := req.since == nil || req.fullState
	memberships := map[string]string{}        // room → the user's membership as of `to`
	changed := map[string]*roomserver.Event{} // room → the user's last membership event in range
	if initial {
		for _, m := range []string{"join", "invite"} {
			ids, err := s.rooms.RoomsForUser(ctx, userID, m)
			if err != nil {
				return nil, err
			}
			for _, id := range ids {
				memberships[id] = m
			}
		}
		if req.filter.Room != nil && req.filter.Room.IncludeLeave {
			ids, err := s.rooms.RoomsForUser(ctx, userID, "leave", "ban")
			if err != nil {
				return nil, err
			}
			for _, id := range ids {
				memberships[id] = "leave"
			}
		}
	} else {
		mevs, err := s.rooms.MembershipEvents(ctx, userID, since.Rooms, to.Rooms)
		if err != nil {
			return nil, err
		}
		for _, e := range mevs {
			rid := e.PDU.RoomID().String()
			changed[rid] = e
			m, _ := e.PDU.Membership()
			memberships[rid] = m
		}
		if to.Rooms > since.Rooms {
			active, err := s.rooms.RoomsWithEvents(ctx, since.Rooms, to.Rooms)
			if err != nil {
				return nil, err
			}
			joined, err := s.rooms.RoomsForUser(ctx, userID, "join")
			if err != nil {
				return nil, err
			}
			for _, id := range active {
				if _, ok := memberships[id]; !ok && slices.Contains(joined, id) {
					memberships[id] = "join"
				}
			}
		}
		for rid := range roomData {
			if _, ok := memberships[rid]; !ok {
				if m, _, err := s.rooms.Membership(ctx, rid, userID); err == nil && m == "join" {
					memberships[rid] = "join"
				}
			}
		}
	}

	for roomID, m := range memberships {
		if !roomAllowed(req.filter.Room, roomID) {
			continue
		}
		switch m {
		case "join":
			jr, err := s.joined(ctx, req, roomID, since, to, changed[roomID] != nil, now)
			if err != nil {
				return nil, fmt.Errorf("syncing room %s: %w", roomID, err)
			}
			jr.AccountData.Events = append(jr.AccountData.Events, roomData[roomID]...)
			if !initial && !req.fullState && len(jr.Timeline.Events) == 0 && len(jr.State.Events) == 0 && len(jr.AccountData.Events) == 0 {
				continue
			}
			resp.Rooms.Join[roomID] = jr
		case "invite":
			_, ev, err := s.rooms.Membership(ctx, roomID, userID)
			if err != nil || ev == nil {
				continue
			}
			resp.Rooms.Invite[roomID] = s.invited(ev, now)
		case "leave", "ban":
			if initial && (req.filter.Room == nil || !req.filter.Room.IncludeLeave) {
				continue
			}
			lr, err := s.left(ctx, req, roomID, since, changed[roomID], now)
			if err != nil {
				return nil, err
			}
			resp.Rooms.Leave[roomID] = lr
		}
	}
	return resp, nil
}

func sinceOrZero(req *syncRequest, pos int64) int64 {
	if req.since == nil {
		return 0
	}
	return pos
}

func roomAllowed(f *matrix.RoomFilter, roomID string) bool {
	if f == nil {
		return true
	}
	if f.Rooms != nil && !slices.Contains(f.Rooms, roomID) {
		return false
	}
	return !slices.Contains(f.NotRooms, roomID)
}

func (s *Service) clientEvent(e *roomserver.Event, req *syncRequest, now time.Time) matrix.ClientEvent {
	o := matrix.ClientEventOptions{OmitRoomID: true, Now: now}
	if e.TxnID != "" && e.DeviceID == req.dev.DeviceID && string(e.PDU.SenderID()) == req.dev.UserID {
		o.TxnID = e.TxnID
	}
	return matrix.ToClientEvent(e.PDU, o)
}

// joined builds a joined room's section. newlyJoined means the user's membership changed in
// the range, so the whole state is sent rather than a delta.
func (s *Service) joined(ctx context.Context, req *syncRequest, roomID string, since, to Token, newlyJoined bool, now time.Time) (*joinedRoom, error) {
	jr := &joinedRoom{
		Ephemeral: eventList{Events: []any{}}, AccountData: eventList{Events: []any{}},
		Summary: map[string]any{},
	}
	initial := req.since == nil || req.fullState || newlyJoined
	after := since.Rooms
	if req.since == nil {
		after = 0
	}
	evs, limited, err := s.rooms.RoomEvents(ctx, roomID, after, to.Rooms, req.timelineLimit())
	if err != nil {
		return nil, err
	}
	jr.Timeline.Events = make([]matrix.ClientEvent, 0, len(evs))
	inTimeline := map[string]bool{}
	for _, e := range evs {
		jr.Timeline.Events = append(jr.Timeline.Events, s.clientEvent(e, req, now))
		inTimeline[e.PDU.EventID()] = true
	}
	jr.Timeline.Limited = limited
	// State is the state at the start of the timeline: everything on an initial sync,
	// what changed since `since` otherwise.
	startPos := to.Rooms
	if len(evs) > 0 {
		startPos = evs[0].StreamPos - 1
	}
	jr.State.Events = []matrix.ClientEvent{}
	if initial || limited {
		cur, err := s.rooms.StateAtPos(ctx, roomID, startPos)
		if err != nil {
			return nil, err
		}
		var prev map[string]string
		if !initial {
			old, err := s.rooms.StateAtPos(ctx, roomID, since.Rooms)
			if err != nil {
				return nil, err
			}
			prev = make(map[string]string, len(old))
			for _, e := range old {
				prev[e.PDU.EventID()] = ""
			}
		}
		for _, e := range cur {
			if inTimeline[e.PDU.EventID()] {
				continue
			}
			if prev != nil {
				if _, had := prev[e.PDU.EventID()]; had {
					continue
				}
			}
			jr.State.Events = append(jr.State.Events, s.clientEvent(e, req, now))
		}
	}
	if len(evs) > 0 {
		jr.Timeline.PrevBatch = Token{Rooms: evs[0].StreamPos - 1, AccountData: to.AccountData}.String()
	} else {
		jr.Timeline.PrevBatch = to.String()
	}
	return jr, nil
}

func (s *Service) invited(ev *roomserver.Event, now time.Time) *invitedRoom {
	ir := &invitedRoom{InviteState: eventList{Events: []any{}}}
	var unsigned struct {
		InviteRoomState []json.RawMessage `json:"invite_room_state"`
	}
	_ = json.Unmarshal(ev.PDU.Unsigned(), &unsigned)
	for _, st := range unsigned.InviteRoomState {
		ir.InviteState.Events = append(ir.InviteState.Events, st)
	}
	ce := matrix.ToClientEvent(ev.PDU, matrix.ClientEventOptions{OmitRoomID: true, Now: now})
	ir.InviteState.Events = append(ir.InviteState.Events, map[string]any{
		"type": ce.Type, "state_key": ce.StateKey, "sender": ce.Sender, "content": ce.Content,
	})
	return ir
}

// left builds a left room's section: the timeline up to and including the leave.
func (s *Service) left(ctx context.Context, req *syncRequest, roomID string, since Token, leave *roomserver.Event, now time.Time) (*leftRoom, error) {
	lr := &leftRoom{AccountData: eventList{Events: []any{}}}
	if leave == nil {
		_, ev, err := s.rooms.Membership(ctx, roomID, req.dev.UserID)
		if err != nil || ev == nil {
			return nil, err
		}
		leave = ev
	}
	after := since.Rooms
	if req.since == nil {
		after = 0
	}
	evs, limited, err := s.rooms.RoomEvents(ctx, roomID, after, leave.StreamPos, req.timelineLimit())
	if err != nil {
		return nil, err
	}
	lr.Timeline.Events = make([]matrix.ClientEvent, 0, len(evs))
	for _, e := range evs {
		lr.Timeline.Events = append(lr.Timeline.Events, s.clientEvent(e, req, now))
	}
	lr.Timeline.Limited = limited
	lr.State.Events = []matrix.ClientEvent{}
	if len(evs) > 0 {
		lr.Timeline.PrevBatch = Token{Rooms: evs[0].StreamPos - 1}.String()
	}
	return lr, nil
}
