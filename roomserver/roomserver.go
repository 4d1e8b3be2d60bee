// Package roomserver owns the room DAG: it builds, authorises and persists room events, keeps
// the current state, memberships and state snapshots, and hands out positions in the
// room-event stream. It is the only writer of room events; every other component reads rooms
// through its methods. It imports only internal packages, so clientapi, syncapi and
// federationapi may all import it.
//
// Writes to one room are serialised by an in-process mutex and, on PostgreSQL, by
// pg_advisory_xact_lock(room_nid) inside the writing transaction, so several Myelin processes
// may share one database; different rooms are written in parallel. An event, its stream
// position, the forward extremities, the state and the transaction-ID mapping commit in one
// transaction, and only then is the events stream advanced.
package roomserver

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sync"

	"embed"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/internal/bus"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
)

//go:embed storage/migrations/*.sql
var migrations embed.FS

// Config is what roomserver needs from main.
type Config struct {
	ServerName         string
	KeyID              gomatrixserverlib.KeyID
	PrivateKey         ed25519.PrivateKey
	DefaultRoomVersion string // "11" when empty
	Remote             Remote // federation for remote joins, invites and leaves; nil: local rooms only
	// Backfill fetches history from other servers for /messages, and BackfillKeys checks
	// its signatures; with BackfillKeys nil, gaps in history are left as they are.
	Backfill     Backfiller
	BackfillKeys gomatrixserverlib.JSONVerifier
}

// Service is the room server. It is safe for concurrent use.
type Service struct {
	cfg    Config
	db     *sqldb.DB
	events *bus.Stream
	log    *slog.Logger
	locks  roomLocks
	rooms  sync.Map // room ID → roomInfo, filled only from committed rows

	backfill *backfillDeps // nil without Config.BackfillKeys
}

// roomInfo is the immutable part of a room's row.
type roomInfo struct {
	nid     int64
	version gomatrixserverlib.IRoomVersion
}

// New runs roomserver's migrations on db and advances events to the newest committed stream
// position. It returns an error if cfg is incomplete or the database cannot be migrated.
func New(cfg Config, db *sqldb.DB, events *bus.Stream, log *slog.Logger) (*Service, error) {
	if cfg.ServerName == "" || cfg.KeyID == "" || len(cfg.PrivateKey) != ed25519.PrivateKeySize {
		return nil, errors.New("roomserver: server name, key ID and an ed25519 private key are required")
	}
	if cfg.DefaultRoomVersion == "" {
		cfg.DefaultRoomVersion = "11"
	}
	if _, err := supportedVersion(cfg.DefaultRoomVersion); err != nil {
		return nil, fmt.Errorf("roomserver: default room version: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	sub, err := fs.Sub(migrations, "storage/migrations")
	if err != nil {
		return nil, fmt.Errorf("roomserver: opening migrations: %w", err)
	}
	ctx := context.Background()
	if err := db.Migrate(ctx, "roomserver", sub); err != nil {
		return nil, fmt.Errorf("roomserver: %w", err)
	}
	s := &Service{cfg: cfg, db: db, events: events, log: log, locks: roomLocks{m: map[string]*roomLock{}}}
	if cfg.BackfillKeys != nil {
		s.backfill = &backfillDeps{fed: cfg.Backfill, keys: cfg.BackfillKeys}
	}
	pos, err := s.MaxStreamPos(ctx)
	if err != nil {
		return nil, fmt.Errorf("roomserver: %w", err)
	}
	if events != nil {
		events.Advance(pos)
	}
	return s, nil
}

// SupportedRoomVersions lists the room versions CreateRoom accepts, oldest first.
func SupportedRoomVersions() []string {
	return []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"}
}

// supportedVersion returns the implementation of a stable room version 1–12, or a 400
// M_UNSUPPORTED_ROOM_VERSION.
func supportedVersion(v string) (gomatrixserverlib.IRoomVersion, error) {
	for _, ok := range SupportedRoomVersions() {
		if v == ok {
			impl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(v))
			if err != nil {
				break
			}
			return impl, nil
		}
	}
	return nil, matrix.Errorf(400, matrix.CodeUnsupportedRoomVer, "room version %q is not supported", v)
}

// roomLocks serialises writers of one room inside this process.
type roomLocks struct {
	mu sync.Mutex
	m  map[string]*roomLock
}

type roomLock struct {
	mu   sync.Mutex
	refs int
}

// lock blocks until the caller is the only writer of roomID in this process and returns the
// function that releases it.
func (l *roomLocks) lock(roomID string) (unlock func()) {
	l.mu.Lock()
	rl := l.m[roomID]
	if rl == nil {
		rl = &roomLock{}
		l.m[roomID] = rl
	}
	rl.refs++
	l.mu.Unlock()
	rl.mu.Lock()
	return func() {
		rl.mu.Unlock()
		l.mu.Lock()
		rl.refs--
		if rl.refs == 0 {
			delete(l.m, roomID)
		}
		l.mu.Unlock()
	}
}

// errUnknownRoom is both a client-facing 404 and sqldb.ErrNotFound, so callers may test
// either way.
func errUnknownRoom(roomID string) error {
	return fmt.Errorf("%w: %w", matrix.NotFound("room %s not found", roomID), sqldb.ErrNotFound)
}

// errUnknownEvent is both a client-facing 404 and sqldb.ErrNotFound.
func errUnknownEvent(eventID string) error {
	return fmt.Errorf("%w: %w", matrix.NotFound("event %s not found", eventID), sqldb.ErrNotFound)
}
