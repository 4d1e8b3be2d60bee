// Package clientapi serves the Client-Server API except /sync and media: registration and
// login, devices, profiles, account data, filters, capabilities, rooms and the admin API.
// Handlers decode, call one service method and encode; the routes are listed in routes.go.
// It may import roomserver, userapi, appservice and internal packages.
//
// Application services authenticate with their as_token (see authenticate): they act as
// their sender user, or as a user of their namespace named by ?user_id=, with the device
// named by ?device_id= or with no device at all (Matrix 1.17), and may set event timestamps
// with ?ts=.
package clientapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/myelin-chat/myelin/appservice"
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
	profiles RemoteProfiles       // nil: remote profiles are not fetched
	apps     *appservice.Registry // nil: no application services
}

// New returns the client API over users and rooms. profiles asks other servers for their
// users' profiles; with nil, remote profiles are not found. apps are the registered
// application services (nil for none).
func New(cfg *config.Config, users *userapi.Service, rooms Rooms, profiles RemoteProfiles, apps *appservice.Registry, log *slog.Logger) *Service {
	s := &Service{
		apps:     apps,
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

// ctxKey is the type of clientapi's request context keys.
type ctxKey int

// appServiceKey holds the *appservice.Service that authenticated a request.
const appServiceKey ctxKey = 0

// appServiceOf returns the application service that authenticated r, or nil when a user's
// access token did.
func appServiceOf(r *http.Request) *appservice.Service {
	as, _ := r.Context().Value(appServiceKey).(*appservice.Service)
	return as
}

// authed wraps f so that it runs only for a valid access token. For an application
// service's token, the service is recorded in the request's context (see appServiceOf).
func (s *Service) authed(f authedFunc) http.Handler {
	return httpx.Handler(func(w http.ResponseWriter, r *http.Request) error {
		dev, as, err := s.authenticate(r)
		if err != nil {
			return err
		}
		if as != nil {
			r = r.WithContext(context.WithValue(r.Context(), appServiceKey, as))
		}
		return f(w, r, dev)
	})
}

// accessToken returns the request's access token (Authorization: Bearer, or the deprecated
// access_token query parameter). It returns 401 M_MISSING_TOKEN when there is none.
func accessToken(r *http.Request) (string, error) {
	token := ""
	if h := r.Header.Get("Authorization"); h != "" {
		if !strings.HasPrefix(h, "Bearer ") {
			return "", matrix.Errorf(http.StatusUnauthorized, matrix.CodeMissingToken, "Authorization header must be a Bearer token")
		}
		token = strings.TrimSpace(strings.TrimPrefix(h, "Bearer "))
	} else {
		token = r.URL.Query().Get("access_token")
	}
	if token == "" {
		return "", matrix.Errorf(http.StatusUnauthorized, matrix.CodeMissingToken, "missing access token")
	}
	return token, nil
}

// Authenticate returns the device behind the request's access token (Authorization: Bearer,
// or the deprecated access_token query parameter), which may be an application service's
// as_token (see authenticate). It returns 401 M_MISSING_TOKEN or 401 M_UNKNOWN_TOKEN, and
// for an application service 403 M_FORBIDDEN or 400 M_UNKNOWN_DEVICE. syncapi and mediaapi
// authenticate through it too.
func (s *Service) Authenticate(r *http.Request) (*userapi.Device, error) {
	dev, _, err := s.authenticate(r)
	return dev, err
}

// authenticate returns the device behind the request's access token and, when the token
// is an application service's as_token, that service. An as_token is looked up first, in
// memory: user access tokens are random and stored hashed, so neither kind can stand for
// the other. The service acts as the user named by the user_id query parameter, which must
// be its sender or a registered local user in its user namespaces (403 M_FORBIDDEN
// otherwise, as in Synapse), or as its sender without one. The device is the one named by
// device_id (or MSC3202's org.matrix.msc3202.device_id), which must be that user's (400
// M_UNKNOWN_DEVICE); without one the request has no device (DeviceID ""), as the spec says.
func (s *Service) authenticate(r *http.Request) (*userapi.Device, *appservice.Service, error) {
	token, err := accessToken(r)
	if err != nil {
		return nil, nil, err
	}
	if as := s.apps.ByToken(token); as != nil {
		dev, err := s.appServiceDevice(r, as)
		if err != nil {
			return nil, nil, err
		}
		return dev, as, nil
	}
	dev, err := s.users.Authenticate(r.Context(), token)
	switch {
	case errors.Is(err, userapi.ErrUnknownToken):
		return nil, nil, matrix.Errorf(http.StatusUnauthorized, matrix.CodeUnknownToken, "unknown access token")
	case errors.Is(err, userapi.ErrExpiredToken):
		return nil, nil, matrix.Errorf(http.StatusUnauthorized, matrix.CodeUnknownToken, "access token has expired").With("soft_logout", true)
	case err != nil:
		return nil, nil, err
	}
	s.users.TouchDevice(context.WithoutCancel(r.Context()), dev, s.clientIP(r), r.UserAgent())
	return dev, nil, nil
}

// appServiceDevice is the identity application service as asserts on r (see authenticate).
func (s *Service) appServiceDevice(r *http.Request, as *appservice.Service) (*userapi.Device, error) {
	q := r.URL.Query()
	dev := &userapi.Device{UserID: as.Sender}
	if userID := q.Get("user_id"); q.Has("user_id") && userID != as.Sender {
		if !as.IsInterestedInUser(userID) {
			return nil, matrix.Forbidden("application service cannot masquerade as %s", userID)
		}
		acct, err := s.users.Account(r.Context(), userID)
		if errors.Is(err, userapi.ErrNoSuchUser) {
			return nil, matrix.Forbidden("application service has not registered %s", userID)
		}
		if err != nil {
			return nil, fmt.Errorf("looking up %s for an application service: %w", userID, err)
		}
		if acct.Deactivated {
			return nil, matrix.Errorf(http.StatusForbidden, matrix.CodeUserDeactivated, "%s has been deactivated", userID)
		}
		dev = &userapi.Device{UserID: userID, IsAdmin: acct.Admin, IsGuest: acct.Guest}
	}
	deviceID := q.Get("device_id")
	if deviceID == "" {
		deviceID = q.Get("org.matrix.msc3202.device_id")
	}
	if deviceID == "" {
		return dev, nil
	}
	d, err := s.users.Device(r.Context(), dev.UserID, deviceID)
	if errors.Is(err, userapi.ErrNotFound) {
		return nil, matrix.Errorf(http.StatusBadRequest, matrix.CodeUnknownDevice, "%s has no device %s", dev.UserID, deviceID)
	}
	if err != nil {
		return nil, fmt.Errorf("looking up device %s of %s for an application service: %w", deviceID, dev.UserID, err)
	}
	d.IsAdmin, d.IsGuest = dev.IsAdmin, dev.IsGuest
	s.users.TouchDevice(context.WithoutCancel(r.Context()), d, s.clientIP(r), r.UserAgent())
	return d, nil
}

// CreateAppServiceSenders creates the sender user of each application service that lacks
// an account, without a password, so that services can join rooms and set profiles as
// their sender. main calls it once at startup.
func (s *Service) CreateAppServiceSenders(ctx context.Context) error {
	for _, as := range s.apps.Services() {
		_, err := s.users.CreateAccount(ctx, userapi.NewAccount{Localpart: as.SenderLocalpart})
		switch {
		case errors.Is(err, userapi.ErrUserInUse):
		case err != nil:
			return fmt.Errorf("creating the sender of application service %s: %w", as.ID, err)
		default:
			s.log.Info("created application service sender", "appservice", as)
		}
	}
	return nil
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
