// Package ratelimit keeps a token bucket per key (an IP address or a user ID) and forgets idle
// keys. It imports nothing of Myelin's.
package ratelimit

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limiter limits events per key. A nil *Limiter allows everything. It is safe for concurrent use.
type Limiter struct {
	mu      sync.Mutex
	burst   int
	every   time.Duration
	buckets map[string]*bucket
	sweep   time.Time
}

type bucket struct {
	lim  *rate.Limiter
	seen time.Time
}

// New returns a limiter that allows burst events at once per key and one more every interval.
func New(burst int, every time.Duration) *Limiter {
	if burst < 1 {
		burst = 1
	}
	return &Limiter{burst: burst, every: every, buckets: make(map[string]*bucket)}
}

// Allow reports whether an event for key may happen now; if not, it says how long to wait.
func (l *Limiter) Allow(key string) (ok bool, retryAfter time.Duration) {
	if l == nil {
		return true, 0
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.sweep) > time.Minute {
		for k, b := range l.buckets {
			if now.Sub(b.seen) > 10*time.Minute {
				delete(l.buckets, k)
			}
		}
		l.sweep = now
	}
	b := l.buckets[key]
	if b == nil {
		b = &bucket{lim: rate.NewLimiter(rate.Every(l.every), l.burst)}
		l.buckets[key] = b
	}
	b.seen = now
	r := b.lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}
