package roomserver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
)

// This file keeps the local room aliases (table room_aliases). Aliases are not room state:
// m.room.canonical_alias only advertises some of them, and clientapi validates it against
// these mappings.

// CreateAlias maps alias, which must be an alias of this server, to roomID on behalf of
// creator. It returns an error wrapping sqldb.ErrExists if the alias is taken, and one
// wrapping sqldb.ErrNotFound (and a 404 M_NOT_FOUND) if the room is unknown.
func (s *Service) CreateAlias(ctx context.Context, alias, roomID, creator string) error {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return err
	}
	_, err = s.db.Exec(ctx, `INSERT INTO room_aliases (alias, room_nid, creator) VALUES ($1, $2, $3)`,
		alias, ri.nid, creator)
	if sqldb.IsUniqueViolation(err) {
		return fmt.Errorf("creating alias %s: %w", alias, sqldb.ErrExists)
	}
	if err != nil {
		return fmt.Errorf("creating alias %s: %w", alias, err)
	}
	return nil
}

// Alias returns the room alias points to and the user who created the mapping. It returns
// an error wrapping sqldb.ErrNotFound if the alias is unknown.
func (s *Service) Alias(ctx context.Context, alias string) (roomID, creator string, err error) {
	err = s.db.QueryRow(ctx, `SELECT r.room_id, a.creator FROM room_aliases a JOIN rooms r ON r.room_nid = a.room_nid
		WHERE a.alias = $1`, alias).Scan(&roomID, &creator)
	if errors.Is(err, sql.ErrNoRows) {
		return "", "", errUnknownAlias(alias)
	}
	if err != nil {
		return "", "", fmt.Errorf("looking up alias %s: %w", alias, err)
	}
	return roomID, creator, nil
}

// DeleteAlias removes alias and returns the room it pointed to. It returns an error wrapping
// sqldb.ErrNotFound if the alias is unknown.
func (s *Service) DeleteAlias(ctx context.Context, alias string) (roomID string, err error) {
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		err := tx.QueryRow(ctx, `SELECT r.room_id FROM room_aliases a JOIN rooms r ON r.room_nid = a.room_nid
			WHERE a.alias = $1`, alias).Scan(&roomID)
		if errors.Is(err, sql.ErrNoRows) {
			return errUnknownAlias(alias)
		}
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `DELETE FROM room_aliases WHERE alias = $1`, alias)
		return err
	})
	if errors.Is(err, sqldb.ErrNotFound) {
		return "", err
	}
	if err != nil {
		return "", fmt.Errorf("deleting alias %s: %w", alias, err)
	}
	return roomID, nil
}

// RoomAliases returns the local aliases of roomID, sorted. It returns an error wrapping
// sqldb.ErrNotFound if the room is unknown.
func (s *Service) RoomAliases(ctx context.Context, roomID string) ([]string, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return nil, err
	}
	aliases, err := queryStrings(ctx, s.db, `SELECT alias FROM room_aliases WHERE room_nid = $1 ORDER BY alias`, ri.nid)
	if err != nil {
		return nil, fmt.Errorf("listing aliases of %s: %w", roomID, err)
	}
	return aliases, nil
}

// MaySendState reports whether userID's power level in the current state of roomID reaches
// the level needed to send a state event of type evType (membership is not checked). It
// returns an error wrapping sqldb.ErrNotFound if the room is unknown.
func (s *Service) MaySendState(ctx context.Context, roomID, userID, evType string) (bool, error) {
	ri, err := s.roomInfo(ctx, roomID)
	if err != nil {
		return false, err
	}
	evs, err := currentStateEvents(ctx, s.db, ri.nid, []gomatrixserverlib.StateKeyTuple{
		{EventType: spec.MRoomCreate}, {EventType: spec.MRoomPowerLevels},
	})
	if err != nil {
		return false, fmt.Errorf("loading power levels of %s: %w", roomID, err)
	}
	var create, pl gomatrixserverlib.PDU
	for _, e := range evs {
		switch e.PDU.Type() {
		case spec.MRoomCreate:
			create = e.PDU
		case spec.MRoomPowerLevels:
			pl = e.PDU
		}
	}
	if create == nil {
		return false, fmt.Errorf("room %s has no create event", roomID)
	}
	if ri.version.PrivilegedCreators() && slices.Contains(gomatrixserverlib.CreatorsFromCreateEvent(create), userID) {
		return true, nil
	}
	if pl == nil {
		// Without power levels the creator has 100 and everyone else 0; state needs 0.
		return true, nil
	}
	c, err := pl.PowerLevels()
	if err != nil {
		return false, fmt.Errorf("parsing power levels of %s: %w", roomID, err)
	}
	return c.UserLevel(spec.SenderID(userID)) >= c.EventLevel(evType, true), nil
}

// errUnknownAlias is both a client-facing 404 and sqldb.ErrNotFound.
func errUnknownAlias(alias string) error {
	return fmt.Errorf("%w: %w", matrix.NotFound("room alias %s not found", alias), sqldb.ErrNotFound)
}
