package syncapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/userapi"
)

// This file holds the ephemeral endpoints: typing, receipts, read markers, presence, and
// forgetting rooms.

// requireJoined returns 403 M_FORBIDDEN unless userID is joined to roomID.
func (s *Service) requireJoined(ctx context.Context, roomID, userID string) error {
	m, _, err := s.rooms.Membership(ctx, roomID, userID)
	if err != nil {
		return err
	}
	if m != "join" {
		return matrix.Forbidden("%s is not joined to %s", userID, roomID)
	}
	return nil
}

type typingRequest struct {
	Typing  *bool `json:"typing"`
	Timeout int64 `json:"timeout"`
}

func (s *Service) putTyping(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	var req typingRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if req.Typing == nil {
		return matrix.MissingParam("typing is required")
	}
	if err := s.SetTyping(r.Context(), dev.UserID, httpx.Var(r, "userID"), httpx.Var(r, "roomID"), *req.Typing,
		time.Duration(req.Timeout)*time.Millisecond); err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

// SetTyping starts or stops target's typing in roomID on behalf of caller. It returns 403
// M_FORBIDDEN if caller is not target or not joined to the room.
func (s *Service) SetTyping(ctx context.Context, caller, target, roomID string, on bool, timeout time.Duration) error {
	if caller != target {
		return matrix.Forbidden("cannot set the typing state of another user")
	}
	if err := s.requireJoined(ctx, roomID, caller); err != nil {
		return err
	}
	s.typing.set(roomID, caller, on, timeout)
	return nil
}

// Receipt types clients may send.
const (
	receiptRead        = "m.read"
	receiptReadPrivate = "m.read.private"
	receiptFullyRead   = "m.fully_read"
)

func (s *Service) postReceipt(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	var body map[string]json.RawMessage
	if err := httpx.DecodeJSONOptional(r, &body); err != nil {
		return err
	}
	threadID := ""
	if raw, ok := body["thread_id"]; ok {
		if err := json.Unmarshal(raw, &threadID); err != nil || threadID == "" {
			return matrix.InvalidParam("thread_id field must be a non-empty string")
		}
	}
	if err := s.SendReceipt(r.Context(), dev.UserID, httpx.Var(r, "roomID"), httpx.Var(r, "receiptType"),
		httpx.Var(r, "eventID"), threadID); err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

// SendReceipt records userID's receipt of receiptType (m.read, m.read.private, or
// m.fully_read, which becomes the room's m.fully_read account data) up to eventID in roomID,
// in thread threadID ("" for unthreaded). It returns 400 M_INVALID_PARAM for an unknown
// receipt type or a thread on m.fully_read, and 403 M_FORBIDDEN if the user is not joined.
func (s *Service) SendReceipt(ctx context.Context, userID, roomID, receiptType, eventID, threadID string) error {
	switch receiptType {
	case receiptRead, receiptReadPrivate:
	case receiptFullyRead:
		if threadID != "" {
			return matrix.InvalidParam("m.fully_read cannot be threaded")
		}
	default:
		return matrix.InvalidParam("receipt type must be m.read, m.read.private or m.fully_read")
	}
	if !strings.HasPrefix(eventID, "$") {
		return matrix.InvalidParam("%q is not an event ID", eventID)
	}
	if err := s.requireJoined(ctx, roomID, userID); err != nil {
		return err
	}
	if receiptType == receiptFullyRead {
		return s.setFullyRead(ctx, userID, roomID, eventID)
	}
	return s.putReceipt(ctx, Receipt{RoomID: roomID, Type: receiptType, UserID: userID, ThreadID: threadID,
		EventID: eventID, TS: time.Now().UnixMilli()})
}

func (s *Service) setFullyRead(ctx context.Context, userID, roomID, eventID string) error {
	content, err := json.Marshal(map[string]string{"event_id": eventID})
	if err != nil {
		return err
	}
	return s.users.SetAccountData(ctx, userID, roomID, receiptFullyRead, content)
}

// putReceipt stores r, records it in the receipt log and moves the stream, in that order and
// one at a time, so that the log sees positions in order.
func (s *Service) putReceipt(ctx context.Context, r Receipt) error {
	if err := s.receiptMu.lock(ctx); err != nil {
		return err
	}
	defer s.receiptMu.unlock()
	pos, err := s.store.putReceipt(ctx, r)
	if err != nil {
		return err
	}
	s.receiptLog.add(change{pos: pos, room: r.RoomID, user: r.UserID})
	s.streams.Receipts.Advance(pos)
	return nil
}

type readMarkersRequest struct {
	FullyRead   string `json:"m.fully_read"`
	Read        string `json:"m.read"`
	ReadPrivate string `json:"m.read.private"`
}

func (s *Service) postReadMarkers(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	var req readMarkersRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if err := s.SetReadMarkers(r.Context(), dev.UserID, httpx.Var(r, "roomID"), req.FullyRead, req.Read, req.ReadPrivate); err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

// SetReadMarkers moves userID's read markers in roomID: fullyRead becomes m.fully_read room
// account data, read and readPrivate become receipts; empty ones are left alone. It returns
// 403 M_FORBIDDEN if the user is not joined.
func (s *Service) SetReadMarkers(ctx context.Context, userID, roomID, fullyRead, read, readPrivate string) error {
	if err := s.requireJoined(ctx, roomID, userID); err != nil {
		return err
	}
	if fullyRead != "" {
		if err := s.setFullyRead(ctx, userID, roomID, fullyRead); err != nil {
			return err
		}
	}
	now := time.Now().UnixMilli()
	for typ, id := range map[string]string{receiptRead: read, receiptReadPrivate: readPrivate} {
		if id == "" {
			continue
		}
		if err := s.putReceipt(ctx, Receipt{RoomID: roomID, Type: typ, UserID: userID, EventID: id, TS: now}); err != nil {
			return err
		}
	}
	return nil
}

type presenceRequest struct {
	Presence  string  `json:"presence"`
	StatusMsg *string `json:"status_msg"`
}

func (s *Service) putPresence(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	var req presenceRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if httpx.Var(r, "userID") != dev.UserID {
		return matrix.Forbidden("cannot set the presence of another user")
	}
	switch req.Presence {
	case "online", "offline", "unavailable":
	case "":
		return matrix.MissingParam("presence is required")
	default:
		return matrix.InvalidParam("presence must be online, offline or unavailable")
	}
	if err := s.setPresence(r.Context(), dev.UserID, req.Presence, req.StatusMsg, true); err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

// setPresence stores userID's presence and, if what others see changed, records it in the
// presence log and moves the stream. setMsg false keeps the stored status message.
func (s *Service) setPresence(ctx context.Context, userID, presence string, msg *string, setMsg bool) error {
	if err := s.presenceMu.lock(ctx); err != nil {
		return err
	}
	defer s.presenceMu.unlock()
	now := time.Now()
	pos, changed, err := s.store.setPresence(ctx, userID, presence, msg, setMsg, now.UnixMilli())
	if err != nil {
		s.seen.Delete(userID)
		return err
	}
	s.seen.Store(userID, presenceSeen{presence: presence, at: now})
	if changed {
		s.presenceLog.add(change{pos: pos, user: userID})
		s.streams.Presence.Advance(pos)
	}
	return nil
}

// lastActiveGranularity is how stale a syncing user's stored last-active time may get:
// /sync refreshes it at most this often, as Synapse does, rather than writing on every
// request (a write transaction per long-poll was a tenth of a busy server's CPU).
const lastActiveGranularity = time.Minute

// presenceSeen is the presence this process last stored for a user, and when.
type presenceSeen struct {
	presence string
	at       time.Time
}

// touchPresence records that userID is syncing with set_presence presence: it stores the
// presence when it changes, and otherwise refreshes the last-active time at most once per
// lastActiveGranularity.
func (s *Service) touchPresence(ctx context.Context, userID, presence string) error {
	if v, ok := s.seen.Load(userID); ok {
		if p := v.(presenceSeen); p.presence == presence && time.Since(p.at) < lastActiveGranularity {
			return nil
		}
	}
	return s.setPresence(ctx, userID, presence, nil, false)
}

func (s *Service) getPresence(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	content, err := s.Presence(r.Context(), dev.UserID, httpx.Var(r, "userID"))
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, content)
}

// presenceContent is the content of an m.presence event and the body of GET presence.
type presenceContent struct {
	Presence        string  `json:"presence"`
	LastActiveAgo   *int64  `json:"last_active_ago,omitempty"`
	StatusMsg       *string `json:"status_msg,omitempty"`
	CurrentlyActive *bool   `json:"currently_active,omitempty"`
}

// currentlyActiveWindow is how recently an online user must have been active to count as
// currently active.
const currentlyActiveWindow = 5 * time.Minute

func toPresenceContent(p *Presence, now time.Time) presenceContent {
	if p == nil {
		return presenceContent{Presence: "offline"}
	}
	ago := max(now.UnixMilli()-p.LastActiveTS, 0)
	active := p.Presence == "online" && time.Duration(ago)*time.Millisecond < currentlyActiveWindow
	return presenceContent{Presence: p.Presence, LastActiveAgo: &ago, StatusMsg: p.StatusMsg, CurrentlyActive: &active}
}

// Presence returns target's presence as caller may see it: their own, or that of a user
// sharing a room with them. It returns 403 M_FORBIDDEN for anyone else.
func (s *Service) Presence(ctx context.Context, caller, target string) (presenceContent, error) {
	if caller != target {
		shared, err := s.rooms.SharingUsers(ctx, caller, []string{target})
		if err != nil {
			return presenceContent{}, err
		}
		if len(shared) == 0 {
			return presenceContent{}, matrix.Forbidden("you do not share a room with %s", target)
		}
	}
	p, err := s.store.presence(ctx, target)
	if err != nil {
		return presenceContent{}, err
	}
	return toPresenceContent(p, time.Now()), nil
}

func (s *Service) postForget(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	if err := s.Forget(r.Context(), dev.UserID, httpx.Var(r, "roomID")); err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

// Forget makes roomID disappear from userID's initial syncs until their membership changes
// again. It returns 400 M_UNKNOWN if the user is still joined, invited or knocking.
func (s *Service) Forget(ctx context.Context, userID, roomID string) error {
	m, ev, err := s.rooms.Membership(ctx, roomID, userID)
	if err != nil {
		return err
	}
	switch m {
	case "join", "invite", "knock":
		return matrix.Errorf(http.StatusBadRequest, matrix.CodeUnknown, "%s has not left %s", userID, roomID)
	}
	var pos int64
	if ev != nil {
		pos = ev.StreamPos
	}
	return s.store.forget(ctx, userID, roomID, pos)
}

// Forgotten reports whether userID has forgotten roomID since their last membership change;
// /messages refuses a forgotten room.
func (s *Service) Forgotten(ctx context.Context, userID, roomID string) (bool, error) {
	at, err := s.store.forgottenAt(ctx, userID, roomID)
	if err != nil || at < 0 {
		return false, err
	}
	m, ev, err := s.rooms.Membership(ctx, roomID, userID)
	if err != nil {
		return false, err
	}
	if m == "join" || m == "invite" || m == "knock" {
		return false, nil
	}
	return ev == nil || ev.StreamPos <= at, nil
}
