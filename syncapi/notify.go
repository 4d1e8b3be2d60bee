package syncapi

import (
	"context"
	"sync"
	"time"
)

// A waiting /sync must wake only when something concerns its user. The streams carry
// positions only, so each stream keeps a short in-memory log of what its recent positions
// concern (a room, a user). A woken sync reads the log entries past what it last checked and
// builds a response only if one concerns it: a message in a room the user is not in costs a
// waiting sync a few map lookups, not a database round trip.

// change is what one stream position concerns.
type change struct {
	pos  int64
	room string // the room, for room events, typing and receipts
	user string // the user, for presence and for membership events (their state key)
}

// maxLogEntries bounds each change log; a sync whose position has fallen out of the log is
// treated as concerned and builds a response.
const maxLogEntries = 8192

// changeLog is a bounded record of recent changes of one stream. It is safe for concurrent
// use.
type changeLog struct {
	mu      sync.Mutex
	entries []change // ordered by pos
	floor   int64    // the log covers every position > floor
}

func newChangeLog(floor int64) *changeLog { return &changeLog{floor: floor} }

// add records c. Positions must be added in increasing order.
func (l *changeLog) add(cs ...change) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.entries = append(l.entries, cs...)
	if n := len(l.entries); n > maxLogEntries {
		drop := n - maxLogEntries/2
		l.floor = l.entries[drop-1].pos
		l.entries = append([]change(nil), l.entries[drop:]...)
	}
}

// since returns the changes with after < pos <= upTo; complete is false when the log no
// longer covers all of that range.
func (l *changeLog) since(after, upTo int64) (cs []change, complete bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if after < l.floor {
		return nil, false
	}
	for i := len(l.entries) - 1; i >= 0; i-- {
		e := l.entries[i]
		if e.pos <= after {
			break
		}
		if e.pos <= upTo {
			cs = append(cs, e)
		}
	}
	return cs, true
}

// followRooms keeps the room-event log: whenever the roomserver's stream advances it reads
// the new positions' rooms and state keys once, records them, and only then advances
// roomsSeen, the position syncs wait on.
func (s *Service) followRooms() {
	defer close(s.followDone)
	ctx := context.Background()
	seen := s.roomsSeen.Pos()
	for {
		pos, ch := s.streams.Rooms.Changed()
		for seen < pos {
			entries, err := s.rooms.StreamEntries(ctx, seen, pos, 1000)
			if err != nil {
				s.log.Error("reading the room-event stream", "error", err)
				select {
				case <-time.After(time.Second):
					continue
				case <-s.closing:
					return
				}
			}
			next := pos
			if len(entries) == 1000 {
				next = entries[len(entries)-1].StreamPos
			}
			cs := make([]change, 0, len(entries))
			for _, e := range entries {
				c := change{pos: e.StreamPos, room: e.RoomID}
				if e.Type == "m.room.member" && e.StateKey != nil {
					c.user = *e.StateKey
				}
				cs = append(cs, c)
			}
			s.roomLog.add(cs...)
			seen = next
			s.roomsSeen.Advance(seen)
		}
		select {
		case <-ch:
		case <-s.closing:
			return
		}
	}
}

// relevant reports whether anything in (checked, cur] may concern the user of v. It errs on
// the side of yes: a yes costs a response build that may turn out empty.
func (s *Service) relevant(ctx context.Context, v *userView, checked, cur Token) bool {
	if cur.Rooms > checked.Rooms {
		cs, ok := s.roomLog.since(checked.Rooms, cur.Rooms)
		if !ok {
			return true
		}
		for _, c := range cs {
			if c.user == v.userID || v.joined[c.room] {
				return true
			}
		}
	}
	for _, l := range []struct {
		log       *changeLog
		from, to  int64
		needsJoin bool
	}{
		{s.typingLog, checked.Typing, cur.Typing, true},
		{s.receiptLog, checked.Receipts, cur.Receipts, true},
	} {
		if l.to <= l.from {
			continue
		}
		cs, ok := l.log.since(l.from, l.to)
		if !ok {
			return true
		}
		for _, c := range cs {
			if v.joined[c.room] {
				return true
			}
		}
	}
	if cur.Presence > checked.Presence {
		cs, ok := s.presenceLog.since(checked.Presence, cur.Presence)
		if !ok {
			return true
		}
		var others []string
		for _, c := range cs {
			if c.user == v.userID {
				return true
			}
			others = append(others, c.user)
		}
		if len(others) > 0 {
			shared, err := s.rooms.SharingUsers(ctx, v.userID, others)
			if err != nil || len(shared) > 0 {
				return true
			}
		}
	}
	if cur.AccountData > checked.AccountData {
		// userapi's stream says nothing of whose data changed; one keyed query tells.
		ad, err := s.users.AccountDataSince(ctx, v.userID, checked.AccountData, cur.AccountData)
		if err != nil || len(ad) > 0 {
			return true
		}
	}
	return false
}

// userView is what relevance checks need to know of the syncing user: the rooms they are
// joined to. A change of their own membership reaches them through the membership event's
// state key.
type userView struct {
	userID string
	joined map[string]bool
}

func (s *Service) view(ctx context.Context, userID string) (*userView, error) {
	urs, err := s.rooms.UserRooms(ctx, userID)
	if err != nil {
		return nil, err
	}
	v := &userView{userID: userID, joined: map[string]bool{}}
	for _, ur := range urs {
		if ur.Membership == "join" {
			v.joined[ur.RoomID] = true
		}
	}
	return v, nil
}

// wait blocks until something past checked concerns v's user, the deadline passes, ctx ends
// or the service closes, and returns the positions it reached.
func (s *Service) wait(ctx context.Context, v *userView, checked Token, deadline time.Time) Token {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		cur, chans := s.positions()
		if cur.after(checked) {
			if s.relevant(ctx, v, checked, cur) {
				return cur
			}
			checked = cur
		}
		select {
		case <-chans[0]:
		case <-chans[1]:
		case <-chans[2]:
		case <-chans[3]:
		case <-chans[4]:
		case <-timer.C:
			return checked
		case <-ctx.Done():
			return checked
		case <-s.closing:
			return checked
		}
	}
}

// positions returns the current position of every stream and the channels that close when
// each next moves.
func (s *Service) positions() (Token, [5]<-chan struct{}) {
	var (
		t  Token
		ch [5]<-chan struct{}
	)
	t.Rooms, ch[0] = s.roomsSeen.Changed()
	t.AccountData, ch[1] = s.streams.AccountData.Changed()
	t.Receipts, ch[2] = s.streams.Receipts.Changed()
	t.Typing, ch[3] = s.streams.Typing.Changed()
	t.Presence, ch[4] = s.streams.Presence.Changed()
	return t, ch
}

// now returns the current position of every stream.
func (s *Service) now() Token {
	t, _ := s.positions()
	return t
}
