package syncapi

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/bus"
)

// This file offers the federation sender the typing, receipt and presence changes it sends to
// other servers, read by stream position like everything else. The sender keeps only those of
// local users and works out the destinations.

// EDUStreams returns the typing, receipts and presence streams the federation sender follows.
func (s *Service) EDUStreams() (typing, receipts, presence *bus.Stream) {
	return s.streams.Typing, s.streams.Receipts, s.streams.Presence
}

// TypingChanges returns, for each room whose typing changed with after < position <= upTo,
// who is typing there now. complete is false when after is older than the in-memory log
// (typing is not stored): the caller then goes on from upTo.
func (s *Service) TypingChanges(after, upTo int64) (rooms map[string][]string, complete bool) {
	cs, complete := s.typingLog.since(after, upTo)
	if !complete {
		return nil, false
	}
	rooms = map[string][]string{}
	for _, c := range cs {
		if _, ok := rooms[c.room]; !ok {
			users, _ := s.typing.users(c.room)
			rooms[c.room] = users
		}
	}
	return rooms, true
}

// ReceiptEDUs returns the public (m.read) receipts changed with after < position <= upTo as
// m.receipt EDUs, one per receipt, in stream order.
func (s *Service) ReceiptEDUs(ctx context.Context, after, upTo int64) ([]gomatrixserverlib.EDU, error) {
	rs, err := s.store.receiptsSince(ctx, after, upTo)
	if err != nil {
		return nil, err
	}
	out := make([]gomatrixserverlib.EDU, 0, len(rs))
	for _, r := range rs {
		if r.Type != "m.read" {
			continue // private receipts stay on this server
		}
		data := map[string]any{"ts": r.TS}
		if r.ThreadID != "" {
			data["thread_id"] = r.ThreadID
		}
		content, err := json.Marshal(map[string]any{r.RoomID: map[string]any{r.Type: map[string]any{
			r.UserID: map[string]any{"event_ids": []string{r.EventID}, "data": data},
		}}})
		if err != nil {
			return nil, fmt.Errorf("encoding receipt: %w", err)
		}
		out = append(out, gomatrixserverlib.EDU{Type: spec.MReceipt, Content: content})
	}
	return out, nil
}

// PresenceEDUs returns the presence changed with after < position <= upTo as m.presence EDUs,
// one per user.
func (s *Service) PresenceEDUs(ctx context.Context, after, upTo int64) ([]gomatrixserverlib.EDU, error) {
	ps, err := s.store.presenceSince(ctx, after, upTo)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	out := make([]gomatrixserverlib.EDU, 0, len(ps))
	for i := range ps {
		c := toPresenceContent(&ps[i], now)
		content, err := json.Marshal(map[string]any{"push": []any{map[string]any{
			"user_id": ps[i].UserID, "presence": c.Presence, "last_active_ago": c.LastActiveAgo,
			"status_msg": c.StatusMsg, "currently_active": c.CurrentlyActive,
		}}})
		if err != nil {
			return nil, fmt.Errorf("encoding presence: %w", err)
		}
		out = append(out, gomatrixserverlib.EDU{Type: spec.MPresence, Content: content})
	}
	return out, nil
}
