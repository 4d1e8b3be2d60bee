package sender

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/bus"
)

// EDUSource is what the sender reads of syncapi: the typing, receipt and presence changes it
// sends for local users. syncapi implements it.
type EDUSource interface {
	EDUStreams() (typing, receipts, presence *bus.Stream)
	TypingChanges(after, upTo int64) (rooms map[string][]string, complete bool)
	ReceiptEDUs(ctx context.Context, after, upTo int64) ([]gomatrixserverlib.EDU, error)
	PresenceEDUs(ctx context.Context, after, upTo int64) ([]gomatrixserverlib.EDU, error)
}

// followEDUs starts following src's streams. Receipts and presence resume from their saved
// positions; typing, which lives in memory, starts from now.
func (s *Sender) followEDUs(ctx context.Context, src EDUSource) error {
	typing, receipts, presence := src.EDUStreams()
	typed := map[string][]string{} // room → local users whose typing we last announced
	feeds := []struct {
		name   string
		stream *bus.Stream
		read   func(ctx context.Context, after, upTo int64) error
	}{
		{"", typing, func(ctx context.Context, after, upTo int64) error {
			rooms, complete := src.TypingChanges(after, upTo)
			if !complete {
				return nil
			}
			return s.sendTyping(ctx, rooms, typed)
		}},
		{"receipts", receipts, func(ctx context.Context, after, upTo int64) error {
			edus, err := src.ReceiptEDUs(ctx, after, upTo)
			if err != nil {
				return err
			}
			return s.sendReceipts(ctx, edus)
		}},
		{"presence", presence, func(ctx context.Context, after, upTo int64) error {
			edus, err := src.PresenceEDUs(ctx, after, upTo)
			if err != nil {
				return err
			}
			return s.sendPresence(ctx, edus)
		}},
	}
	for _, f := range feeds {
		if f.stream == nil {
			continue
		}
		pos := f.stream.Pos()
		if f.name != "" {
			saved, ok, err := s.st.position(ctx, f.name)
			if err != nil {
				return err
			}
			if ok && saved <= pos {
				pos = saved
			} else if err := s.st.savePosition(ctx, f.name, pos); err != nil {
				return err
			}
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.followFeed(f.name, f.stream, pos, f.read)
		}()
	}
	return nil
}

// followFeed calls read for each advance of stream after pos and saves the position reached
// under name (unless name is empty), until Close.
func (s *Sender) followFeed(name string, stream *bus.Stream, pos int64, read func(ctx context.Context, after, upTo int64) error) {
	failures := 0
	for {
		head, changed := stream.Changed()
		if head > pos {
			err := read(s.ctx, pos, head)
			if err == nil && name != "" {
				err = s.st.savePosition(s.ctx, name, head)
			}
			if err == nil {
				pos, failures = head, 0
				continue
			}
			if s.ctx.Err() != nil {
				return
			}
			failures++
			s.log.Error("federation sender: reading EDUs", "stream", name, "error", err)
			select {
			case <-time.After(retryDelay(failures, time.Second, time.Minute, rand.Float64())):
			case <-s.ctx.Done():
				return
			}
			continue
		}
		select {
		case <-changed:
		case <-s.ctx.Done():
			return
		}
	}
}

// sendTyping announces, for each room, the local users who started or stopped typing since
// the last announcement (typed).
func (s *Sender) sendTyping(ctx context.Context, rooms map[string][]string, typed map[string][]string) error {
	for roomID, users := range rooms {
		var now []string
		for _, u := range users {
			if serverOf(u) == s.cfg.ServerName {
				now = append(now, u)
			}
		}
		before := typed[roomID]
		var edus []gomatrixserverlib.EDU
		for _, u := range now {
			if !slices.Contains(before, u) {
				edus = append(edus, typingEDU(roomID, u, true))
			}
		}
		for _, u := range before {
			if !slices.Contains(now, u) {
				edus = append(edus, typingEDU(roomID, u, false))
			}
		}
		if len(now) == 0 {
			delete(typed, roomID)
		} else {
			typed[roomID] = now
		}
		if len(edus) == 0 {
			continue
		}
		dests, err := s.JoinedServers(ctx, roomID)
		if err != nil {
			return err
		}
		for _, e := range edus {
			if err := s.SendEDU(ctx, e, dests); err != nil {
				return err
			}
		}
	}
	return nil
}

func typingEDU(roomID, userID string, typing bool) gomatrixserverlib.EDU {
	c, _ := json.Marshal(map[string]any{"room_id": roomID, "user_id": userID, "typing": typing})
	return gomatrixserverlib.EDU{Type: spec.MTyping, Content: c}
}

// sendReceipts sends the receipts of local users to the servers in their rooms.
func (s *Sender) sendReceipts(ctx context.Context, edus []gomatrixserverlib.EDU) error {
	for _, e := range edus {
		var c map[string]map[string]map[string]json.RawMessage // room → type → user → receipt
		if err := json.Unmarshal(e.Content, &c); err != nil {
			return fmt.Errorf("decoding receipt EDU: %w", err)
		}
		for roomID, types := range c {
			local := false
			for _, users := range types {
				for u := range users {
					local = local || serverOf(u) == s.cfg.ServerName
				}
			}
			if !local {
				continue
			}
			dests, err := s.JoinedServers(ctx, roomID)
			if err != nil {
				return err
			}
			if err := s.SendEDU(ctx, e, dests); err != nil {
				return err
			}
		}
	}
	return nil
}

// sendPresence sends the presence of local users to the servers sharing a room with them.
func (s *Sender) sendPresence(ctx context.Context, edus []gomatrixserverlib.EDU) error {
	for _, e := range edus {
		var c struct {
			Push []struct {
				UserID string `json:"user_id"`
			} `json:"push"`
		}
		if err := json.Unmarshal(e.Content, &c); err != nil {
			return fmt.Errorf("decoding presence EDU: %w", err)
		}
		if len(c.Push) == 0 || serverOf(c.Push[0].UserID) != s.cfg.ServerName {
			continue
		}
		rooms, err := s.rooms.RoomsForUser(ctx, c.Push[0].UserID, spec.Join)
		if err != nil {
			return err
		}
		var dests []string
		for _, roomID := range rooms {
			servers, err := s.JoinedServers(ctx, roomID)
			if err != nil {
				return err
			}
			dests = append(dests, servers...)
		}
		if err := s.SendEDU(ctx, e, dests); err != nil {
			return err
		}
	}
	return nil
}
