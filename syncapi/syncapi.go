// Package syncapi serves /sync: initial and incremental, long-polling until something arrives.
// It reads rooms from the roomserver and account data from userapi by stream position, and
// wakes on the bus streams they advance, so a sync costs nothing while nothing happens.
// It may import roomserver, userapi and internal packages.
package syncapi

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/mux"

	"github.com/myelin-chat/myelin/internal/bus"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/userapi"
)

// Rooms is what syncapi needs of the roomserver.
type Rooms interface {
	RoomsForUser(ctx context.Context, userID string, memberships ...string) ([]string, error)
	Membership(ctx context.Context, roomID, userID string) (string, *roomserver.Event, error)
	RoomEvents(ctx context.Context, roomID string, after, upTo int64, limit int) ([]*roomserver.Event, bool, error)
	MembershipEvents(ctx context.Context, userID string, after, upTo int64) ([]*roomserver.Event, error)
	StateAtPos(ctx context.Context, roomID string, pos int64) ([]*roomserver.Event, error)
	RoomsWithEvents(ctx context.Context, after, upTo int64) ([]string, error)
	Event(ctx context.Context, eventID string) (*roomserver.Event, error)
}

// Users is what syncapi needs of userapi.
type Users interface {
	AccountDataSince(ctx context.Context, userID string, after, upTo int64) ([]userapi.AccountDataEvent, error)
	Filter(ctx context.Context, userID, filterID string) (json.RawMessage, error)
}

// Authenticator identifies the caller of a request.
type Authenticator func(r *http.Request) (*userapi.Device, error)

// Streams are the positions syncapi waits on.
type Streams struct {
	Rooms       *bus.Stream
	AccountData *bus.Stream
}

// Service serves /sync.
type Service struct {
	rooms   Rooms
	users   Users
	auth    Authenticator
	streams Streams
	log     *slog.Logger
	closing chan struct{}
}

// New returns the sync API.
func New(rooms Rooms, users Users, auth Authenticator, streams Streams, log *slog.Logger) *Service {
	return &Service{rooms: rooms, users: users, auth: auth, streams: streams, log: log, closing: make(chan struct{})}
}

// Close ends every long-poll at once, so a shutting-down server need not wait for their
// timeouts. Requests still being built finish normally.
func (s *Service) Close() { close(s.closing) }

// Register adds /sync to r.
func (s *Service) Register(r *mux.Router) {
	r.Handle("/_matrix/client/{apiVersion:(?:r0|v3)}/sync", httpx.Handler(s.sync)).Methods(http.MethodGet)
}

// maxTimeout caps long-polls so proxies do not cut them.
const maxTimeout = 5 * time.Minute

type syncRequest struct {
	dev       *userapi.Device
	since     *Token
	timeout   time.Duration
	fullState bool
	filter    matrix.Filter
}

func (s *Service) parse(r *http.Request, dev *userapi.Device) (*syncRequest, error) {
	q := r.URL.Query()
	req := &syncRequest{dev: dev, fullState: q.Get("full_state") == "true"}
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

func (s *Service) now() Token {
	return Token{Rooms: s.streams.Rooms.Pos(), AccountData: s.streams.AccountData.Pos()}
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
	deadline := start.Add(req.timeout)
	to := s.now()
	for {
		if req.since != nil && !req.fullState && !to.after(*req.since) {
			if remaining := time.Until(deadline); remaining > 0 {
				to = s.wait(ctx, *req.since, remaining)
			}
		}
		resp, err := s.build(ctx, req, to)
		if err != nil {
			return err
		}
		// An incremental sync that found nothing for this user waits on, until the timeout.
		if req.since == nil || req.fullState || !resp.empty() || time.Until(deadline) <= 0 || ctx.Err() != nil {
			return httpx.WriteJSON(w, http.StatusOK, resp)
		}
		req.since = &to
		to = s.now()
	}
}

// wait blocks until any stream moves past since, the timeout passes or ctx ends.
func (s *Service) wait(ctx context.Context, since Token, timeout time.Duration) Token {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		rp, rc := s.streams.Rooms.Changed()
		ap, ac := s.streams.AccountData.Changed()
		cur := Token{Rooms: rp, AccountData: ap}
		if cur.after(since) {
			return cur
		}
		select {
		case <-rc:
		case <-ac:
		case <-timer.C:
			return s.now()
		case <-ctx.Done():
			return s.now()
		case <-s.closing:
			return s.now()
		}
	}
}
