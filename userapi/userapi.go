// Package userapi owns accounts, devices, access and refresh tokens, profiles, account data,
// filters and user-interactive-auth sessions. Tokens are random and stored only as SHA-256
// hashes; passwords are bcrypt hashes. It imports only internal packages, so clientapi,
// syncapi and federationapi may all use it.
package userapi

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strings"
	"time"

	"github.com/myelin-chat/myelin/internal/bus"
	"github.com/myelin-chat/myelin/internal/sqldb"
)

//go:embed storage/migrations/*.sql
var migrations embed.FS

// Config is what userapi needs from main.
type Config struct {
	ServerName string
	BCryptCost int
	// AccessTokenLifetime is the lifetime of access tokens issued together with a refresh
	// token; zero means they do not expire.
	AccessTokenLifetime time.Duration
	// RegistrationTokens are always-valid tokens from the config file.
	RegistrationTokens []string
}

// Service is the user API. It is safe for concurrent use.
type Service struct {
	cfg         Config
	db          *sqldb.DB
	log         *slog.Logger
	accountData *bus.Stream
	now         func() time.Time
}

// New runs userapi's migrations on db and returns the service. accountData is advanced when
// account data changes.
func New(cfg Config, db *sqldb.DB, accountData *bus.Stream, log *slog.Logger) (*Service, error) {
	if cfg.BCryptCost == 0 {
		cfg.BCryptCost = 10
	}
	sub, err := fs.Sub(migrations, "storage/migrations")
	if err != nil {
		return nil, err
	}
	if err := db.Migrate(context.Background(), "userapi", sub); err != nil {
		return nil, fmt.Errorf("migrating userapi: %w", err)
	}
	s := &Service{cfg: cfg, db: db, log: log, accountData: accountData, now: time.Now}
	if pos, err := db.CurrentSeq(context.Background(), "account_data"); err == nil && accountData != nil {
		accountData.Advance(pos)
	}
	return s, nil
}

// ServerName is the server's name.
func (s *Service) ServerName() string { return s.cfg.ServerName }

// Device is an authenticated device: who is calling.
type Device struct {
	UserID      string
	DeviceID    string
	DisplayName string
	IsGuest     bool
	IsAdmin     bool
	LastSeenTS  int64
	LastSeenIP  string
}

// Errors returned by the service.
var (
	ErrUnknownToken = errors.New("unknown token")
	ErrExpiredToken = errors.New("expired token")
	ErrNoSuchUser   = errors.New("no such user")
	ErrBadPassword  = errors.New("wrong password")
	ErrDeactivated  = errors.New("account deactivated")
	ErrUserInUse    = errors.New("user ID already taken")
	ErrPasswordLong = errors.New("password longer than 72 bytes")
	ErrNotFound     = sqldb.ErrNotFound
	ErrInvalidToken = errors.New("invalid registration token")
)

func (s *Service) nowMS() int64 { return s.now().UnixMilli() }

// newToken returns a random token with the given prefix and its storage hash.
func newToken(prefix string) (token, hash string) {
	var b [32]byte
	_, _ = rand.Read(b[:])
	token = prefix + base64.RawURLEncoding.EncodeToString(b[:])
	return token, hashToken(token)
}

func hashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// newDeviceID returns a random device ID of ten upper-case letters, as Synapse does.
func newDeviceID() string {
	const letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	var b [10]byte
	_, _ = rand.Read(b[:])
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	return string(b[:])
}

// RandomString returns n random URL-safe characters, for session IDs and nonces.
func RandomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)[:n]
}

// LocalUser returns the localpart of userID if it belongs to this server.
func (s *Service) LocalUser(userID string) (string, bool) {
	if !strings.HasPrefix(userID, "@") {
		return "", false
	}
	i := strings.IndexByte(userID, ':')
	if i < 0 || userID[i+1:] != s.cfg.ServerName {
		return "", false
	}
	return userID[1:i], true
}
