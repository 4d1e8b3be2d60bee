package userapi

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/myelin-chat/myelin/internal/sqldb"
)

// uiaSessionLifetime bounds how long a user-interactive auth session can be resumed.
const uiaSessionLifetime = 30 * time.Minute

// UIASession is a user-interactive auth session bound to the request that started it.
type UIASession struct {
	ID        string
	UserID    string // "" for registration
	Method    string
	URI       string
	Completed []string
}

// NewUIASession starts a session for the given request.
func (s *Service) NewUIASession(ctx context.Context, userID, method, uri string) (*UIASession, error) {
	sess := &UIASession{ID: RandomString(24), UserID: userID, Method: method, URI: uri}
	if _, err := s.db.Exec(ctx, `INSERT INTO uia_sessions (session_id, user_id, method, uri, completed, created_ts) VALUES ($1, $2, $3, $4, '[]', $5)`,
		sess.ID, userID, method, uri, s.nowMS()); err != nil {
		return nil, fmt.Errorf("storing auth session: %w", err)
	}
	return sess, nil
}

// UIASession loads a live session, or returns ErrNotFound.
func (s *Service) UIASession(ctx context.Context, id string) (*UIASession, error) {
	sess := &UIASession{ID: id}
	var completed string
	var created int64
	err := s.db.QueryRow(ctx, `SELECT user_id, method, uri, completed, created_ts FROM uia_sessions WHERE session_id = $1`, id).
		Scan(&sess.UserID, &sess.Method, &sess.URI, &completed, &created)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && s.nowMS()-created > uiaSessionLifetime.Milliseconds()) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("loading auth session: %w", err)
	}
	if err := json.Unmarshal([]byte(completed), &sess.Completed); err != nil {
		return nil, fmt.Errorf("decoding auth session: %w", err)
	}
	return sess, nil
}

// CompleteUIAStage records that stage was completed in the session.
func (s *Service) CompleteUIAStage(ctx context.Context, sess *UIASession, stage string) error {
	for _, c := range sess.Completed {
		if c == stage {
			return nil
		}
	}
	sess.Completed = append(sess.Completed, stage)
	b, _ := json.Marshal(sess.Completed)
	if _, err := s.db.Exec(ctx, `UPDATE uia_sessions SET completed = $1 WHERE session_id = $2`, string(b), sess.ID); err != nil {
		return fmt.Errorf("updating auth session: %w", err)
	}
	return nil
}

// DeleteUIASession ends a session once the request it guarded has succeeded, and prunes
// expired ones.
func (s *Service) DeleteUIASession(ctx context.Context, id string) {
	if _, err := s.db.Exec(ctx, `DELETE FROM uia_sessions WHERE session_id = $1 OR created_ts < $2`,
		id, s.nowMS()-uiaSessionLifetime.Milliseconds()); err != nil {
		s.log.Warn("deleting auth session", "error", err)
	}
}

// NewAdminNonce returns a single-use nonce for shared-secret registration.
func (s *Service) NewAdminNonce(ctx context.Context) (string, error) {
	n := RandomString(32)
	if _, err := s.db.Exec(ctx, `INSERT INTO admin_nonces (nonce, created_ts) VALUES ($1, $2)`, n, s.nowMS()); err != nil {
		return "", fmt.Errorf("storing nonce: %w", err)
	}
	return n, nil
}

// UseAdminNonce consumes a nonce issued in the last minute. It returns ErrNotFound for an
// unknown, used or expired nonce.
func (s *Service) UseAdminNonce(ctx context.Context, nonce string) error {
	res, err := s.db.Exec(ctx, `DELETE FROM admin_nonces WHERE nonce = $1 AND created_ts > $2`, nonce, s.nowMS()-60_000)
	if err != nil {
		return fmt.Errorf("using nonce: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

// RegistrationToken is a token that allows registration while registration_requires_token.
type RegistrationToken struct {
	Token       string `json:"token"`
	UsesAllowed *int64 `json:"uses_allowed"`
	Pending     int64  `json:"pending"`
	Completed   int64  `json:"completed"`
	ExpiryTime  *int64 `json:"expiry_time"`
}

// ValidRegistrationToken reports whether token may be used to register now.
func (s *Service) ValidRegistrationToken(ctx context.Context, token string) (bool, error) {
	for _, t := range s.cfg.RegistrationTokens {
		if t == token {
			return true, nil
		}
	}
	var uses, expiry sql.NullInt64
	var completed int64
	err := s.db.QueryRow(ctx, `SELECT uses_allowed, completed, expiry_ts FROM registration_tokens WHERE token = $1`, token).
		Scan(&uses, &completed, &expiry)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("checking registration token: %w", err)
	}
	if uses.Valid && completed >= uses.Int64 {
		return false, nil
	}
	if expiry.Valid && s.nowMS() >= expiry.Int64 {
		return false, nil
	}
	return true, nil
}

// UseRegistrationToken counts a completed registration against token.
func (s *Service) UseRegistrationToken(ctx context.Context, token string) error {
	_, err := s.db.Exec(ctx, `UPDATE registration_tokens SET completed = completed + 1 WHERE token = $1`, token)
	if err != nil {
		return fmt.Errorf("using registration token: %w", err)
	}
	return nil
}

// CreateRegistrationToken stores a registration token (admin API). It returns ErrExists if
// the token is taken.
func (s *Service) CreateRegistrationToken(ctx context.Context, t RegistrationToken) error {
	var uses, expiry sql.NullInt64
	if t.UsesAllowed != nil {
		uses = sql.NullInt64{Int64: *t.UsesAllowed, Valid: true}
	}
	if t.ExpiryTime != nil {
		expiry = sql.NullInt64{Int64: *t.ExpiryTime, Valid: true}
	}
	_, err := s.db.Exec(ctx, `INSERT INTO registration_tokens (token, uses_allowed, expiry_ts) VALUES ($1, $2, $3)`, t.Token, uses, expiry)
	if sqldb.IsUniqueViolation(err) {
		return sqldb.ErrExists
	}
	if err != nil {
		return fmt.Errorf("creating registration token: %w", err)
	}
	return nil
}

// RegistrationTokens lists the tokens made through the admin API.
func (s *Service) RegistrationTokens(ctx context.Context) ([]RegistrationToken, error) {
	rows, err := s.db.Query(ctx, `SELECT token, uses_allowed, pending, completed, expiry_ts FROM registration_tokens ORDER BY token`)
	if err != nil {
		return nil, fmt.Errorf("listing registration tokens: %w", err)
	}
	defer rows.Close()
	var out []RegistrationToken
	for rows.Next() {
		var t RegistrationToken
		var uses, expiry sql.NullInt64
		if err := rows.Scan(&t.Token, &uses, &t.Pending, &t.Completed, &expiry); err != nil {
			return nil, err
		}
		if uses.Valid {
			t.UsesAllowed = &uses.Int64
		}
		if expiry.Valid {
			t.ExpiryTime = &expiry.Int64
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// DeleteRegistrationToken removes an admin-made token. It returns ErrNotFound.
func (s *Service) DeleteRegistrationToken(ctx context.Context, token string) error {
	res, err := s.db.Exec(ctx, `DELETE FROM registration_tokens WHERE token = $1`, token)
	if err != nil {
		return fmt.Errorf("deleting registration token: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

// RegistrationTokenByName returns one admin-made token, or ErrNotFound.
func (s *Service) RegistrationTokenByName(ctx context.Context, token string) (*RegistrationToken, error) {
	ts, err := s.RegistrationTokens(ctx)
	if err != nil {
		return nil, err
	}
	for i := range ts {
		if ts[i].Token == token {
			return &ts[i], nil
		}
	}
	return nil, ErrNotFound
}

// UpdateRegistrationToken changes a token's allowed uses and expiry (nil clears a limit). It
// returns ErrNotFound.
func (s *Service) UpdateRegistrationToken(ctx context.Context, token string, usesAllowed, expiry *int64) error {
	var uses, exp sql.NullInt64
	if usesAllowed != nil {
		uses = sql.NullInt64{Int64: *usesAllowed, Valid: true}
	}
	if expiry != nil {
		exp = sql.NullInt64{Int64: *expiry, Valid: true}
	}
	res, err := s.db.Exec(ctx, `UPDATE registration_tokens SET uses_allowed = $1, expiry_ts = $2 WHERE token = $3`, uses, exp, token)
	if err != nil {
		return fmt.Errorf("updating registration token: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}
