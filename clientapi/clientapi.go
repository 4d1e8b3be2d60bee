// Package clientapi serves the Client-Server API except /sync and media: registration and
// login, devices, profiles, account data, filters, capabilities, rooms and the admin API.
// Handlers decode, call one service method and encode; the routes are listed in routes.go.
// It may import roomserver, userapi and internal packages.
package clientapi

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/myelin-chat/myelin/internal/config"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/ratelimit"
	"github.com/myelin-chat/myelin/userapi"
)

// Version is reported by the federation version endpoint and logs.
const Version = "0.1.0"

// Service is the Client-Server API.
type Service struct {
	cfg      config.ClientAPI
	global   config.Global
	room     config.RoomServer
	realIP   string
	users    *userapi.Service
	rooms    Rooms
	log      *slog.Logger
	regLimit *ratelimit.Limiter
	logLimit *ratelimit.Limiter
	exempt   map[string]bool
	profiles RemoteProfiles // nil: remote profiles are not fetched
}

// New returns the client API over users and rooms. profiles asks other servers for their
// users' profiles; with nil, remote profiles are not found.
func New(cfg *config.Config, users *userapi.Service, rooms Rooms, profiles RemoteProfiles, log *slog.Logger) *Service {
	s := &Service{
		cfg:      cfg.ClientAPI,
		global:   cfg.Global,
		room:     cfg.RoomServer,
		realIP:   cfg.SyncAPI.RealIPHeader,
		users:    users,
		rooms:    rooms,
		profiles: profiles,
		log:      log,
		exempt:   map[string]bool{},
	}
	if rl := cfg.ClientAPI.RateLimiting; rl.Enabled {
		every := time.Duration(rl.CooloffMS) * time.Millisecond
		s.regLimit = ratelimit.New(int(rl.Threshold), every)
		s.logLimit = ratelimit.New(int(rl.Threshold), every)
		for _, u := range rl.ExemptUserIDs {
			s.exempt[u] = true
		}
	}
	return s
}

// authedFunc is a handler for an endpoint that needs an access token.
type authedFunc func(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error

// authed wraps f so that it runs only for a valid access token.
func (s *Service) authed(f authedFunc) http.Handler {
	return httpx.Handler(func(w http.ResponseWriter, r *http.Request) error {
		dev, err := s.Authenticate(r)
		if err != nil {
			return err
		}
		return f(w, r, dev)
	})
}

// Authenticate returns the device behind the request's access token (Authorization: Bearer,
// or the deprecated access_token query parameter). It returns 401 M_MISSING_TOKEN or 401
// M_UNKNOWN_TOKEN. syncapi and mediaapi authenticate through it too.
func (s *Service) Authenticate(r *http.Request) (*userapi.Device, error) {
	token := ""
	if h := r.Header.Get("Authorization"); h != "" {
		if !strings.HasPrefix(h, "Bearer ") {
			return nil, matrix.Errorf(http.StatusUnauthorized, matrix.CodeMissingToken, "Authorization header must be a Bearer token")
		}
		token = strings.TrimSpace(strings.TrimPrefix(h, "Bearer "))
	} else {
		token = r.URL.Query().Get("access_token")
	}
	if token == "" {
		return nil, matrix.Errorf(http.StatusUnauthorized, matrix.CodeMissingToken, "missing access token")
	}
	dev, err := s.users.Authenticate(r.Context(), token)
	switch {
	case errors.Is(err, userapi.ErrUnknownToken):
		return nil, matrix.Errorf(http.StatusUnauthorized, matrix.CodeUnknownToken, "unknown access token")
	case errors.Is(err, userapi.ErrExpiredToken):
		return nil, matrix.Errorf(http.StatusUnauthorized, matrix.CodeUnknownToken, "access token has expired").With("soft_logout", true)
	case err != nil:
		return nil, err
	}
	s.users.TouchDevice(context.WithoutCancel(r.Context()), dev, s.clientIP(r), r.UserAgent())
	return dev, nil
}

// clientIP is the caller's address, from the configured real-IP header when behind a proxy.
func (s *Service) clientIP(r *http.Request) string {
	if s.realIP != "" {
		if v := r.Header.Get(s.realIP); v != "" {
			if i := strings.IndexByte(v, ','); i >= 0 {
				v = v[:i]
			}
			return strings.TrimSpace(v)
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// limit applies l to the caller's IP address, returning 429 M_LIMIT_EXCEEDED.
func (s *Service) limit(l *ratelimit.Limiter, r *http.Request) error {
	ok, wait := l.Allow(s.clientIP(r))
	if ok {
		return nil
	}
	return matrix.Errorf(http.StatusTooManyRequests, matrix.CodeLimitExceeded, "too many requests").
		With("retry_after_ms", wait.Milliseconds()+1)
}
