package sender

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/roomserver"
)

// roomMembers is the sender's view of who is joined to one room, kept current from the
// m.room.member events it reads, so that finding an event's destinations needs no query.
type roomMembers struct {
	asOf   int64             // the stream position the load reflects: events up to it are already counted
	joined map[string]string // joined user → server
	count  map[string]int    // server → joined users
}

func (m *roomMembers) set(userID string, joined bool) {
	server := serverOf(userID)
	if _, was := m.joined[userID]; was == joined || server == "" {
		return
	} else if joined {
		m.joined[userID] = server
		m.count[server]++
	} else {
		delete(m.joined, userID)
		if m.count[server]--; m.count[server] <= 0 {
			delete(m.count, server)
		}
	}
}

// roomMembers returns the cached members of roomID, loading them when absent or when reload.
// The caller holds no lock; the cache is used only by the following goroutine and
// JoinedServers, both under s.mu.
func (s *Sender) loadMembers(ctx context.Context, roomID string) (*roomMembers, error) {
	asOf, err := s.rooms.MaxStreamPos(ctx)
	if err != nil {
		return nil, fmt.Errorf("loading members of %s: %w", roomID, err)
	}
	users, err := s.rooms.JoinedMembers(ctx, roomID)
	if err != nil {
		return nil, fmt.Errorf("loading members of %s: %w", roomID, err)
	}
	m := &roomMembers{asOf: asOf, joined: make(map[string]string, len(users)), count: map[string]int{}}
	for _, u := range users {
		m.set(u, true)
	}
	s.mu.Lock()
	s.members[roomID] = m
	s.mu.Unlock()
	return m, nil
}

func (s *Sender) cachedMembers(ctx context.Context, roomID string) (*roomMembers, error) {
	s.mu.Lock()
	m := s.members[roomID]
	s.mu.Unlock()
	if m != nil {
		return m, nil
	}
	return s.loadMembers(ctx, roomID)
}

// JoinedServers returns the remote servers with users joined to roomID, for EDUs.
func (s *Sender) JoinedServers(ctx context.Context, roomID string) ([]string, error) {
	m, err := s.cachedMembers(ctx, roomID)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	out := make([]string, 0, len(m.count))
	for server := range m.count {
		out = append(out, server)
	}
	s.mu.Unlock()
	return s.remoteOnly(out), nil
}

// destinations returns the remote servers ev must be sent to, sorted, updating the member
// cache with ev. An event of a local user goes to every remote server joined to the room
// before or after it, except a local user's own membership event when this server was not in
// the room before it: that went through a resident server's send_join (send_leave,
// send_knock), which sends it on. Conversely, a remote user's own membership event goes to
// the room when the user's server was not in the room before it: it reached us through our
// send_join (send_leave, send_knock), and its server cannot know whom to send it to. Other
// remote events reached us from their origin, which sends them itself, so they go nowhere.
func (s *Sender) destinations(ctx context.Context, ev *roomserver.Event) ([]string, error) {
	pdu := ev.PDU
	roomID := pdu.RoomID().String()
	m, err := s.cachedMembers(ctx, roomID)
	if err != nil {
		return nil, err
	}
	origin := serverOf(string(pdu.SenderID()))
	local := origin == s.cfg.ServerName
	isMember := pdu.Type() == spec.MRoomMember && pdu.StateKey() != nil

	s.mu.Lock()
	defer s.mu.Unlock()
	servers := map[string]bool{}
	for server := range m.count {
		servers[server] = true
	}
	if !isMember {
		if !local {
			return nil, nil
		}
		return s.collect(servers, origin), nil
	}

	target := *pdu.StateKey()
	targetServer := serverOf(target)
	membership, _ := pdu.Membership()
	nowJoined := membership == spec.Join
	prevJoined := prevMembership(pdu.Unsigned()) == spec.Join
	if local && targetServer == s.cfg.ServerName && nowJoined && m.count[s.cfg.ServerName] == 0 && ev.StreamPos > m.asOf {
		// This server (re)joins a room it was not in: what it knew of the room is stale.
		s.mu.Unlock()
		fresh, err := s.loadMembers(ctx, roomID)
		s.mu.Lock()
		if err != nil {
			return nil, err
		}
		m = fresh
		for server := range m.count {
			servers[server] = true
		}
	}
	// How many users of the target's server were joined before the event.
	targetBefore := m.count[targetServer]
	if ev.StreamPos > m.asOf {
		m.set(target, nowJoined)
		m.asOf = ev.StreamPos
	} else {
		// Already counted: undo the event's own effect to see the room before it.
		if _, ok := m.joined[target]; ok {
			targetBefore--
		}
		if prevJoined {
			targetBefore++
		}
	}
	for server := range m.count {
		servers[server] = true
	}
	if prev := prevMembership(pdu.Unsigned()); local && targetServer != s.cfg.ServerName &&
		(membership == spec.Leave || membership == spec.Ban) && (prev == spec.Invite || prev == spec.Knock) {
		// A rescinded invite or a refused knock: the target's server is not in the room but
		// must learn of it.
		servers[targetServer] = true
	}
	if target != string(pdu.SenderID()) {
		if !local {
			return nil, nil
		}
	} else if targetBefore == 0 {
		// The user's server was not in the room: the event went through a resident server's
		// send_join, send_leave or send_knock. If it is ours, that server sends it on; if it
		// is a remote one, it went through us and we send it on.
		if local {
			return nil, nil
		}
	} else if !local {
		return nil, nil
	}
	return s.collect(servers, origin), nil
}

// collect returns the servers of set without this server and origin, sorted. The caller
// holds s.mu.
func (s *Sender) collect(set map[string]bool, origin string) []string {
	out := make([]string, 0, len(set))
	for server := range set {
		if server != origin && server != s.cfg.ServerName {
			out = append(out, server)
		}
	}
	return s.remoteOnly(out)
}

// prevMembership reads unsigned.prev_content.membership, which roomserver stores with
// membership events that replace one.
func prevMembership(unsigned []byte) string {
	var u struct {
		PrevContent struct {
			Membership string `json:"membership"`
		} `json:"prev_content"`
	}
	if len(unsigned) == 0 || json.Unmarshal(unsigned, &u) != nil {
		return ""
	}
	return u.PrevContent.Membership
}

// serverOf returns the server name of a user ID, or "".
func serverOf(userID string) string {
	_, server, err := matrix.SplitID('@', userID)
	if err != nil {
		return ""
	}
	return server
}
