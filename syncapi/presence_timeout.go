package syncapi

import (
	"context"
	"sync"
	"time"
)

// syncOnlineTimeout is how long after a user's last /sync ends, with none running, this
// server takes them to have gone: their presence becomes offline, as Synapse does.
const syncOnlineTimeout = 30 * time.Second

// presenceSweepInterval is how often users who stopped syncing are looked for.
const presenceSweepInterval = 5 * time.Second

// syncActivity tracks who is syncing on this process, for the presence timeout.
type syncActivity struct {
	mu    sync.Mutex
	users map[string]*syncing
}

// syncing is one user's /sync requests in flight, and when the last one ended.
type syncing struct {
	active int
	last   time.Time
}

// started records that userID began a /sync that sets their presence; the returned func
// records its end.
func (a *syncActivity) started(userID string) (ended func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.users == nil {
		a.users = map[string]*syncing{}
	}
	u := a.users[userID]
	if u == nil {
		u = &syncing{}
		a.users[userID] = u
	}
	u.active++
	return func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		u.active--
		u.last = time.Now()
	}
}

// gone removes and returns the users with no /sync running whose last one ended more
// than syncOnlineTimeout before now.
func (a *syncActivity) gone(now time.Time) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for user, u := range a.users {
		if u.active == 0 && now.Sub(u.last) > syncOnlineTimeout {
			out = append(out, user)
			delete(a.users, user)
		}
	}
	return out
}

// expirePresence takes users who stopped syncing offline, every presenceSweepInterval,
// until Close.
func (s *Service) expirePresence() {
	defer close(s.presenceDone)
	t := time.NewTicker(presenceSweepInterval)
	defer t.Stop()
	for {
		select {
		case <-s.closing:
			return
		case now := <-t.C:
			s.sweepPresence(context.Background(), now)
		}
	}
}

// sweepPresence sets the presence of the users gone by now to offline.
func (s *Service) sweepPresence(ctx context.Context, now time.Time) {
	for _, user := range s.activity.gone(now) {
		if err := s.setPresence(ctx, user, "offline", nil, false); err != nil {
			s.log.Warn("taking a user who stopped syncing offline failed", "user", user, "error", err)
		}
	}
}
