package syncapi

import (
	"slices"
	"sync"
	"time"

	"github.com/myelin-chat/myelin/internal/bus"
)

// Typing notifications live in memory only: they expire within seconds, so losing them in a
// restart loses nothing worth keeping. Their stream starts at the process's start time in
// milliseconds, so positions handed out by an earlier process are never ahead of this one's.

// defaultTypingTimeout applies when a client sends none; maxTypingTimeout caps what it sends.
const (
	defaultTypingTimeout = 30 * time.Second
	maxTypingTimeout     = 5 * time.Minute
)

// typing is the typing state of every room. It is safe for concurrent use.
type typing struct {
	mu     sync.Mutex
	pos    int64
	rooms  map[string]*roomTyping
	stream *bus.Stream
	log    *changeLog
}

// roomTyping is who is typing in one room and the position of its last change.
type roomTyping struct {
	users map[string]*time.Timer // user → the timer that ends their typing
	pos   int64
}

func newTyping(stream *bus.Stream, log *changeLog) *typing {
	return &typing{pos: stream.Pos(), rooms: map[string]*roomTyping{}, stream: stream, log: log}
}

// set starts (for timeout) or stops userID's typing in roomID. Only a change moves the stream;
// a repeated start just extends the timeout.
func (t *typing) set(roomID, userID string, on bool, timeout time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	rt := t.rooms[roomID]
	if rt == nil {
		if !on {
			return
		}
		rt = &roomTyping{users: map[string]*time.Timer{}}
		t.rooms[roomID] = rt
	}
	timer, was := rt.users[userID]
	if was {
		timer.Stop()
	}
	if !on {
		if !was {
			return
		}
		delete(rt.users, userID)
		t.changed(roomID, rt)
		return
	}
	if timeout <= 0 {
		timeout = defaultTypingTimeout
	}
	timeout = min(timeout, maxTypingTimeout)
	var self *time.Timer
	self = time.AfterFunc(timeout, func() { t.expire(roomID, userID, self) })
	rt.users[userID] = self
	if !was {
		t.changed(roomID, rt)
	}
}

// expire ends userID's typing if timer is still the one that ends it.
func (t *typing) expire(roomID, userID string, timer *time.Timer) {
	t.mu.Lock()
	defer t.mu.Unlock()
	rt := t.rooms[roomID]
	if rt == nil || rt.users[userID] != timer {
		return
	}
	delete(rt.users, userID)
	t.changed(roomID, rt)
}

// changed moves the stream for a change in roomID. The caller holds t.mu, so changes enter
// the log in position order.
func (t *typing) changed(roomID string, rt *roomTyping) {
	t.pos++
	rt.pos = t.pos
	t.log.add(change{pos: t.pos, room: roomID})
	t.stream.Advance(t.pos)
	// A room whose typists all stopped keeps its entry, so that syncs behind its position
	// still learn that typing stopped.
}

// users returns who is typing in roomID, sorted, and the position of the room's last change.
func (t *typing) users(roomID string) ([]string, int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	rt := t.rooms[roomID]
	if rt == nil {
		return nil, 0
	}
	out := make([]string, 0, len(rt.users))
	for u := range rt.users {
		out = append(out, u)
	}
	slices.Sort(out)
	return out, rt.pos
}
