// Package bus carries in-process notifications that a stream has advanced ("room events are
// committed up to position N"). It carries positions, never data: readers fetch what changed
// from the database, so a notification lost in a crash loses nothing. It imports nothing of
// Myelin's.
package bus

import (
	"context"
	"sync"
)

// Stream is a monotonically advancing position that goroutines can wait on. The zero value is
// not usable; call NewStream. It is safe for concurrent use.
type Stream struct {
	mu   sync.Mutex
	pos  int64
	wake chan struct{} // closed and replaced whenever pos advances
}

// NewStream returns a stream starting at pos.
func NewStream(pos int64) *Stream {
	return &Stream{pos: pos, wake: make(chan struct{})}
}

// Advance moves the stream to pos if pos is ahead, waking every waiter.
func (s *Stream) Advance(pos int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if pos <= s.pos {
		return
	}
	s.pos = pos
	close(s.wake)
	s.wake = make(chan struct{})
}

// Pos returns the current position.
func (s *Stream) Pos() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pos
}

// Changed returns the current position and a channel that is closed when the position next
// advances. Waiters select on it together with their own deadline.
func (s *Stream) Changed() (int64, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pos, s.wake
}

// Wait blocks until the position is beyond after or ctx ends, and returns the position.
func (s *Stream) Wait(ctx context.Context, after int64) int64 {
	for {
		pos, ch := s.Changed()
		if pos > after {
			return pos
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return s.Pos()
		}
	}
}
