package syncapi

import (
	"context"
	"time"

	"github.com/myelin-chat/myelin/internal/matrix"
)

// This file takes the ephemeral events remote servers send (federationapi checks the sender
// belongs to the sending server and is joined to the room).

// RemoteTyping records that userID, a remote user, is (or stops) typing in roomID for up to
// timeout.
func (s *Service) RemoteTyping(ctx context.Context, roomID, userID string, typing bool, timeout time.Duration) error {
	s.typing.set(roomID, userID, typing, timeout)
	return nil
}

// RemoteReceipt records userID's receipt of receiptType for eventID in roomID, sent by the
// user's server at ts. Only m.read receipts travel over federation; others are ignored.
func (s *Service) RemoteReceipt(ctx context.Context, roomID, receiptType, userID, eventID, threadID string, ts int64) error {
	if receiptType != receiptRead {
		return nil
	}
	if ts <= 0 {
		ts = time.Now().UnixMilli()
	}
	return s.putReceipt(ctx, Receipt{RoomID: roomID, Type: receiptType, UserID: userID, ThreadID: threadID, EventID: eventID, TS: ts})
}

// RemotePresence records userID's presence as the user's server reports it. It returns 400
// M_INVALID_PARAM for an unknown presence state.
func (s *Service) RemotePresence(ctx context.Context, userID, presence string, statusMsg *string, lastActiveAgo int64, currentlyActive bool) error {
	switch presence {
	case "online", "offline", "unavailable":
	default:
		return matrix.InvalidParam("unknown presence %q", presence)
	}
	return s.setPresence(ctx, userID, presence, statusMsg, true)
}
