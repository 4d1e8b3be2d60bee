package roomserver

import (
	"context"
	"fmt"
)

// This file holds the reads the federation sender needs: the room-event stream with event
// bodies, restricted to the events it may have to send.

// SenderEvents returns the events with after < position <= upTo, in stream order, that the
// federation sender must look at: those sent by users of this server and every m.room.member
// event (remote ones change who is in a room, and those that reached us through send_join,
// send_leave or send_knock are forwarded). At most limit are returned; scanned is the position
// up to which the stream was examined (upTo unless the limit cut it short), so the caller can
// save it even when no event qualified.
func (s *Service) SenderEvents(ctx context.Context, after, upTo int64, limit int) (evs []*Event, scanned int64, err error) {
	if limit <= 0 {
		limit = 100
	}
	evs, err = queryEvents(ctx, s.db, `SELECT `+eventCols+eventFrom+`
		WHERE e.stream_pos > $1 AND e.stream_pos <= $2 AND (e.type = 'm.room.member' OR e.sender LIKE $3 ESCAPE '\')
		ORDER BY e.stream_pos LIMIT $4`, max(after, 0), upTo, "%:"+escapeLike(s.cfg.ServerName), limit)
	if err != nil {
		return nil, 0, fmt.Errorf("reading the event stream for federation: %w", err)
	}
	scanned = upTo
	if len(evs) == limit {
		scanned = evs[len(evs)-1].StreamPos
	}
	return evs, scanned, nil
}
