// Package syncapi serves /sync (initial and incremental, long-polling until something arrives
// for the caller) and the ephemeral parts of rooms: typing, receipts, read markers, presence,
// and forgetting rooms. It reads rooms from the roomserver and account data from userapi by
// stream position, keeps receipts, presence and forgotten rooms in its own tables, and typing
// in memory. It wakes on the bus streams, and a woken sync checks in memory whether the new
// positions concern its user before building anything, so a sync costs nothing while nothing
// happens to its user. It may import roomserver, userapi and internal packages.
package syncapi

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/mux"

	"github.com/myelin-chat/myelin/internal/bus"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/userapi"
)

//go:embed storage/migrations/*.sql
var migrations embed.FS

// Rooms is what syncapi needs of the roomserver.
type Rooms interface {
	Membership(ctx context.Context, roomID, userID string) (string, *roomserver.Event, error)
	MembershipAt(ctx context.Context, roomID, userID string, pos int64) (string, *roomserver.Event, error)
	UserRooms(ctx context.Context, userID string) ([]roomserver.UserRoom, error)
	RoomEvents(ctx context.Context, roomID string, after, upTo int64, limit int) ([]*roomserver.Event, bool, error)
	RoomEventsByDepth(ctx context.Context, roomID string, upTo int64, before *roomserver.DepthCursor, limit int) ([]*roomserver.Event, bool, error)
	StateEventIDsBetween(ctx context.Context, roomID string, after, upTo int64) ([]string, error)
	MembershipEvents(ctx context.Context, userID string, after, upTo int64) ([]*roomserver.Event, error)
	StateAtPos(ctx context.Context, roomID string, pos int64) ([]*roomserver.Event, error)
	StateAtPosFiltered(ctx context.Context, roomID string, pos int64, members []string) ([]*roomserver.Event, error)
	RoomsWithEvents(ctx context.Context, after, upTo int64) ([]string, error)
	StreamEntries(ctx context.Context, after, upTo int64, limit int) ([]roomserver.StreamEntry, error)
	Summary(ctx context.Context, roomID, userID string) (roomserver.MemberSummary, error)
	SharingUsers(ctx context.Context, userID string, candidates []string) ([]string, error)
	SharedRoomMembers(ctx context.Context, userID string) ([]string, error)
	MemberChanges(ctx context.Context, roomIDs []string, after, upTo int64) ([]roomserver.MemberChange, error)
	JoinedMembers(ctx context.Context, roomID string) ([]string, error)
	Event(ctx context.Context, eventID string) (*roomserver.Event, error)
	historyRooms
	gapFinder
	gapFiller
	remoteTimestamps
}

// Users is what syncapi needs of userapi.
type Users interface {
	AccountDataSince(ctx context.Context, userID string, after, upTo int64) ([]userapi.AccountDataEvent, error)
	AccountData(ctx context.Context, userID, roomID, evType string) (json.RawMessage, error)
	SetAccountData(ctx context.Context, userID, roomID, evType string, content json.RawMessage) error
	Filter(ctx context.Context, userID, filterID string) (json.RawMessage, error)
}

// Authenticator identifies the caller of a request.
type Authenticator func(r *http.Request) (*userapi.Device, error)

// Streams are the positions syncapi waits on. Rooms and AccountData are advanced by the
// roomserver and userapi; syncapi advances the others. A nil stream of syncapi's own is
// created by New.
type Streams struct {
	Rooms       *bus.Stream
	AccountData *bus.Stream
	Receipts    *bus.Stream
	Typing      *bus.Stream // start it at time.Now().UnixMilli(): typing lives in memory
	Presence    *bus.Stream
}

// Service serves /sync and the ephemeral endpoints. It is safe for concurrent use.
type Service struct {
	rooms   Rooms
	users   Users
	auth    Authenticator
	streams Streams
	store   *store
	log     *slog.Logger
	closing chan struct{}

	// roomsSeen is the room-event position up to which roomLog is filled; syncs wait on it
	// rather than on streams.Rooms.
	roomsSeen   *bus.Stream
	followDone  chan struct{}
	roomLog     *changeLog
	typingLog   *changeLog
	receiptLog  *changeLog
	presenceLog *changeLog
	typing      *typing

	// receiptMu and presenceMu order writes of their stream, so that positions enter the
	// change logs in increasing order.
	receiptMu  chanMutex
	presenceMu chanMutex
	// seen throttles the presence writes of /sync (see touchPresence).
	seen sync.Map // user ID → presenceSeen
	// activity tracks who is syncing, so that those who stop go offline.
	activity     syncActivity
	presenceDone chan struct{}
}

// chanMutex is a mutex whose Lock gives up when ctx ends.
type chanMutex chan struct{}

func (m chanMutex) lock(ctx context.Context) error {
	select {
	case m <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m chanMutex) unlock() { <-m }

// New runs syncapi's migrations on db, moves the receipts and presence streams to their
// stored positions and starts following the room-event stream. Close stops it. It returns an
// error if the database cannot be migrated or read.
func New(db *sqldb.DB, rooms Rooms, users Users, auth Authenticator, streams Streams, log *slog.Logger) (*Service, error) {
	if log == nil {
		log = slog.Default()
	}
	sub, err := fs.Sub(migrations, "storage/migrations")
	if err != nil {
		return nil, fmt.Errorf("syncapi: opening migrations: %w", err)
	}
	ctx := context.Background()
	if err := db.Migrate(ctx, "syncapi", sub); err != nil {
		return nil, fmt.Errorf("syncapi: %w", err)
	}
	if streams.Receipts == nil {
		streams.Receipts = bus.NewStream(0)
	}
	if streams.Presence == nil {
		streams.Presence = bus.NewStream(0)
	}
	if streams.Typing == nil {
		streams.Typing = bus.NewStream(time.Now().UnixMilli())
	}
	for _, sq := range []struct {
		name   string
		stream *bus.Stream
	}{{seqReceipts, streams.Receipts}, {seqPresence, streams.Presence}} {
		pos, err := db.CurrentSeq(ctx, sq.name)
		if err != nil {
			return nil, fmt.Errorf("syncapi: reading %s: %w", sq.name, err)
		}
		sq.stream.Advance(pos)
	}
	s := &Service{
		rooms: rooms, users: users, auth: auth, streams: streams, store: &store{db: db}, log: log,
		closing:      make(chan struct{}),
		roomsSeen:    bus.NewStream(streams.Rooms.Pos()),
		followDone:   make(chan struct{}),
		presenceDone: make(chan struct{}),
		roomLog:      newChangeLog(streams.Rooms.Pos()),
		typingLog:    newChangeLog(streams.Typing.Pos()),
		receiptLog:   newChangeLog(streams.Receipts.Pos()),
		presenceLog:  newChangeLog(streams.Presence.Pos()),
		receiptMu:    make(chanMutex, 1),
		presenceMu:   make(chanMutex, 1),
	}
	s.typing = newTyping(streams.Typing, s.typingLog)
	go s.followRooms()
	go s.expirePresence()
	return s, nil
}

// Close ends every long-poll at once, so a shutting-down server need not wait for their
// timeouts, and stops following the room-event stream and sweeping presence. Requests still being built finish
// normally.
func (s *Service) Close() {
	close(s.closing)
	<-s.followDone
	<-s.presenceDone
}

// Register adds /sync and the ephemeral endpoints to r.
func (s *Service) Register(r *mux.Router) {
	h := httpx.Handler
	get, post, put := http.MethodGet, http.MethodPost, http.MethodPut
	c := httpx.Prefix{Router: r, Path: "/_matrix/client/{apiVersion:(?:r0|v3)}"}
	c.Handle("/sync", h(s.sync)).Methods(get)
	c.Handle("/rooms/{roomID}/typing/{userID}", s.authed(s.putTyping)).Methods(put)
	c.Handle("/rooms/{roomID}/receipt/{receiptType}/{eventID}", s.authed(s.postReceipt)).Methods(post)
	c.Handle("/rooms/{roomID}/read_markers", s.authed(s.postReadMarkers)).Methods(post)
	c.Handle("/rooms/{roomID}/forget", s.authed(s.postForget)).Methods(post)
	c.Handle("/presence/{userID}/status", s.authed(s.getPresence)).Methods(get)
	c.Handle("/presence/{userID}/status", s.authed(s.putPresence)).Methods(put)
	s.registerHistory(r)
}

// authed wraps f so that it runs only for a valid access token.
func (s *Service) authed(f func(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error) http.Handler {
	return httpx.Handler(func(w http.ResponseWriter, r *http.Request) error {
		dev, err := s.auth(r)
		if err != nil {
			return err
		}
		return f(w, r, dev)
	})
}

// maxTimeout caps long-polls so proxies do not cut them.
const maxTimeout = 5 * time.Minute

type syncRequest struct {
	dev         *userapi.Device
	since       *Token
	timeout     time.Duration
	fullState   bool
	filter      matrix.Filter
	stateAfter  string // "" or the response key for MSC4222 state_after
	setPresence string
}

func (s *Service) parse(r *http.Request, dev *userapi.Device) (*syncRequest, error) {
	q := r.URL.Query()
	req := &syncRequest{dev: dev, fullState: q.Get("full_state") == "true", setPresence: "online"}
	switch {
	case q.Get("use_state_after") == "true":
		req.stateAfter = "state_after"
	case q.Get("org.matrix.msc4222.use_state_after") == "true":
		req.stateAfter = "org.matrix.msc4222.state_after"
	}
	if v := q.Get("set_presence"); v != "" {
		switch v {
		case "online", "offline", "unavailable":
			req.setPresence = v
		default:
			return nil, matrix.InvalidParam("set_presence must be online, offline or unavailable")
		}
	}
	if v := q.Get("since"); v != "" {
		t, err := ParseToken(v)
		if err != nil {
			return nil, matrix.InvalidParam("invalid since token")
		}
		req.since = &t
	}
	if v := q.Get("timeout"); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms < 0 {
			return nil, matrix.InvalidParam("timeout must be a non-negative integer")
		}
		req.timeout = min(time.Duration(ms)*time.Millisecond, maxTimeout)
	}
	if f := q.Get("filter"); f != "" {
		raw := json.RawMessage(f)
		if f[0] != '{' {
			stored, err := s.users.Filter(r.Context(), dev.UserID, f)
			if errors.Is(err, userapi.ErrNotFound) {
				return nil, matrix.NotFound("no such filter")
			}
			if err != nil {
				return nil, err
			}
			raw = stored
		}
		if err := httpx.UnmarshalObject(raw, &req.filter); err != nil {
			return nil, err
		}
	}
	return req, nil
}

func (s *Service) sync(w http.ResponseWriter, r *http.Request) error {
	start := time.Now()
	dev, err := s.auth(r)
	if err != nil {
		return err
	}
	req, err := s.parse(r, dev)
	if err != nil {
		return err
	}
	ctx := r.Context()
	if req.setPresence != "offline" {
		if err := s.touchPresence(ctx, dev.UserID, req.setPresence); err != nil {
			return err
		}
		defer s.activity.started(dev.UserID)()
	}
	resp, err := s.Sync(ctx, req, start.Add(req.timeout))
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, resp)
}

// Sync answers one /sync request: at once for an initial or full-state sync, otherwise as
// soon as something concerns the user, or empty at the deadline.
func (s *Service) Sync(ctx context.Context, req *syncRequest, deadline time.Time) (*response, error) {
	// Read your writes: everything committed before this request is in the room log before
	// the response is built (the log trails the roomserver's stream by one database read).
	if committed := s.streams.Rooms.Pos(); committed > 0 {
		s.roomsSeen.Wait(ctx, committed-1)
	}
	to := s.now()
	if req.since == nil || req.fullState {
		return s.build(ctx, req, to)
	}
	v, err := s.view(ctx, req.dev.UserID)
	if err != nil {
		return nil, err
	}
	checked := *req.since
	for {
		if to.after(checked) && s.relevant(ctx, v, checked, to) {
			resp, err := s.build(ctx, req, to)
			if err != nil {
				return nil, err
			}
			// A build that found nothing for this user (the relevance check errs on the
			// side of yes) waits on, until the deadline.
			if !resp.empty() || time.Until(deadline) <= 0 || ctx.Err() != nil {
				return resp, nil
			}
			if v, err = s.view(ctx, req.dev.UserID); err != nil {
				return nil, err
			}
		}
		checked = maxToken(checked, to)
		if time.Until(deadline) <= 0 || ctx.Err() != nil || s.isClosing() {
			return newResponse(checked), nil
		}
		to = s.wait(ctx, v, checked, deadline)
	}
}

func (s *Service) isClosing() bool {
	select {
	case <-s.closing:
		return true
	default:
		return false
	}
}

// maxToken is the later of a and b in each stream.
func maxToken(a, b Token) Token {
	return Token{
		Rooms: max(a.Rooms, b.Rooms), AccountData: max(a.AccountData, b.AccountData),
		Receipts: max(a.Receipts, b.Receipts), Typing: max(a.Typing, b.Typing), Presence: max(a.Presence, b.Presence),
	}
}
