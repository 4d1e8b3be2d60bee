package userapi

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/myelin-chat/myelin/internal/sqldb"
)

// Session is what a client gets from registration, login or refresh.
type Session struct {
	UserID       string
	DeviceID     string
	AccessToken  string
	RefreshToken string        // "" unless asked for
	ExpiresIn    time.Duration // 0: the access token does not expire
}

// LoginRequest describes a new session for an already-authenticated user.
type LoginRequest struct {
	UserID      string
	DeviceID    string // "" for a new random device
	DisplayName string // initial device display name
	Refresh     bool   // issue a refresh token and an expiring access token
	IP          string
	UserAgent   string
}

// StartSession creates (or takes over) a device for r.UserID and issues its tokens. Reusing a
// device ID revokes the tokens that device held before, as the spec asks.
func (s *Service) StartSession(ctx context.Context, r LoginRequest) (*Session, error) {
	if r.DeviceID == "" {
		r.DeviceID = newDeviceID()
	}
	sess := &Session{UserID: r.UserID, DeviceID: r.DeviceID}
	now := s.nowMS()
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		var name sql.NullString
		if r.DisplayName != "" {
			name = sql.NullString{String: r.DisplayName, Valid: true}
		}
		// The upsert locks the device row until commit, so concurrent logins to one device
		// take turns and each revokes the tokens of the one before.
		if _, err := tx.Exec(ctx, `INSERT INTO devices (user_id, device_id, display_name, created_ts, last_seen_ts, last_seen_ip, last_seen_user_agent)
			VALUES ($1, $2, $3, $4, $4, $5, $6)
			ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = COALESCE(excluded.display_name, devices.display_name)`,
			r.UserID, r.DeviceID, name, now, r.IP, r.UserAgent); err != nil {
			return fmt.Errorf("storing device: %w", err)
		}
		if err := revokeDeviceTokensTx(ctx, tx, r.UserID, r.DeviceID); err != nil {
			return err
		}
		return s.issueTokensTx(ctx, tx, sess, r.Refresh, "")
	})
	if err != nil {
		return nil, fmt.Errorf("starting session for %s: %w", r.UserID, err)
	}
	return sess, nil
}

// issueTokensTx mints an access token (and a refresh token if refresh) for sess's device.
// parent is the refresh token hash the new access token was minted from, if any.
func (s *Service) issueTokensTx(ctx context.Context, tx *sqldb.Tx, sess *Session, refresh bool, parent string) error {
	now := s.nowMS()
	access, accessHash := newToken("myt_")
	var expires int64
	if refresh && s.cfg.AccessTokenLifetime > 0 {
		expires = now + s.cfg.AccessTokenLifetime.Milliseconds()
		sess.ExpiresIn = s.cfg.AccessTokenLifetime
	}
	if _, err := tx.Exec(ctx, `INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts, expires_ts, refresh_parent)
		VALUES ($1, $2, $3, $4, $5, $6)`, accessHash, sess.UserID, sess.DeviceID, now, expires, parent); err != nil {
		return fmt.Errorf("storing access token: %w", err)
	}
	sess.AccessToken = access
	if refresh {
		rt, rtHash := newToken("myr_")
		if _, err := tx.Exec(ctx, `INSERT INTO refresh_tokens (token_hash, user_id, device_id, created_ts) VALUES ($1, $2, $3, $4)`,
			rtHash, sess.UserID, sess.DeviceID, now); err != nil {
			return fmt.Errorf("storing refresh token: %w", err)
		}
		sess.RefreshToken = rt
	}
	return nil
}

// Authenticate returns the device an access token belongs to. It returns ErrUnknownToken for
// an unknown or revoked token and ErrExpiredToken for an expired one.
func (s *Service) Authenticate(ctx context.Context, token string) (*Device, error) {
	if !strings.HasPrefix(token, "myt_") {
		return nil, ErrUnknownToken
	}
	h := hashToken(token)
	var d Device
	var expires int64
	var parent string
	var name sql.NullString
	err := s.db.QueryRow(ctx, `SELECT t.user_id, t.device_id, t.expires_ts, t.refresh_parent, a.is_guest, a.is_admin,
			d.display_name, d.last_seen_ts, d.last_seen_ip
		FROM access_tokens t
		JOIN accounts a ON a.user_id = t.user_id
		JOIN devices d ON d.user_id = t.user_id AND d.device_id = t.device_id
		WHERE t.token_hash = $1 AND NOT a.deactivated`, h).Scan(
		&d.UserID, &d.DeviceID, &expires, &parent, &d.IsGuest, &d.IsAdmin, &name, &d.LastSeenTS, &d.LastSeenIP)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrUnknownToken
	}
	if err != nil {
		return nil, fmt.Errorf("looking up access token: %w", err)
	}
	d.DisplayName = name.String
	if expires != 0 && s.nowMS() >= expires {
		return nil, ErrExpiredToken
	}
	if parent != "" {
		// The first use of a refreshed access token revokes the refresh token it came from.
		err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
			if _, err := tx.Exec(ctx, `DELETE FROM refresh_tokens WHERE token_hash = $1`, parent); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `UPDATE access_tokens SET refresh_parent = '' WHERE token_hash = $1`, h)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("revoking used refresh token: %w", err)
		}
	}
	return &d, nil
}

// Refresh exchanges a refresh token for a new access token and refresh token. The old refresh
// token stays valid until the new access token is first used, so a lost response can be
// retried; the access token it replaced is revoked at once. It returns ErrUnknownToken.
func (s *Service) Refresh(ctx context.Context, refreshToken string) (*Session, error) {
	h := hashToken(refreshToken)
	var sess Session
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		err := tx.QueryRow(ctx, `SELECT r.user_id, r.device_id FROM refresh_tokens r JOIN accounts a ON a.user_id = r.user_id
			WHERE r.token_hash = $1 AND NOT a.deactivated`, h).Scan(&sess.UserID, &sess.DeviceID)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrUnknownToken
		}
		if err != nil {
			return err
		}
		// Revoke the access tokens minted from this refresh token earlier and the one in use.
		if _, err := tx.Exec(ctx, `DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2`, sess.UserID, sess.DeviceID); err != nil {
			return err
		}
		// Newer refresh tokens of this device other than this one were never used: drop them.
		if _, err := tx.Exec(ctx, `DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id = $2 AND token_hash <> $3`,
			sess.UserID, sess.DeviceID, h); err != nil {
			return err
		}
		return s.issueTokensTx(ctx, tx, &sess, true, h)
	})
	if err != nil {
		if errors.Is(err, ErrUnknownToken) {
			return nil, err
		}
		return nil, fmt.Errorf("refreshing token: %w", err)
	}
	return &sess, nil
}

// Devices lists userID's devices.
func (s *Service) Devices(ctx context.Context, userID string) ([]Device, error) {
	rows, err := s.db.Query(ctx, `SELECT device_id, display_name, last_seen_ts, last_seen_ip FROM devices WHERE user_id = $1 ORDER BY device_id`, userID)
	if err != nil {
		return nil, fmt.Errorf("listing devices: %w", err)
	}
	defer rows.Close()
	var out []Device
	for rows.Next() {
		d := Device{UserID: userID}
		var name sql.NullString
		if err := rows.Scan(&d.DeviceID, &name, &d.LastSeenTS, &d.LastSeenIP); err != nil {
			return nil, err
		}
		d.DisplayName = name.String
		out = append(out, d)
	}
	return out, rows.Err()
}

// Device returns one of userID's devices, or ErrNotFound.
func (s *Service) Device(ctx context.Context, userID, deviceID string) (*Device, error) {
	d := Device{UserID: userID, DeviceID: deviceID}
	var name sql.NullString
	err := s.db.QueryRow(ctx, `SELECT display_name, last_seen_ts, last_seen_ip FROM devices WHERE user_id = $1 AND device_id = $2`,
		userID, deviceID).Scan(&name, &d.LastSeenTS, &d.LastSeenIP)
	if err = sqldb.NotFound(err); err != nil {
		return nil, err
	}
	d.DisplayName = name.String
	return &d, nil
}

// RenameDevice sets a device's display name. It returns ErrNotFound for an unknown device.
func (s *Service) RenameDevice(ctx context.Context, userID, deviceID, name string) error {
	res, err := s.db.Exec(ctx, `UPDATE devices SET display_name = $1 WHERE user_id = $2 AND device_id = $3`, name, userID, deviceID)
	if err != nil {
		return fmt.Errorf("renaming device: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

// DeleteDevices deletes the listed devices of userID with their tokens. Unknown IDs are
// ignored.
func (s *Service) DeleteDevices(ctx context.Context, userID string, deviceIDs []string) error {
	if len(deviceIDs) == 0 {
		return nil
	}
	return s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		return deleteDevicesTx(ctx, tx, userID, "", deviceIDs)
	})
}

// LogoutAll deletes every device of userID.
func (s *Service) LogoutAll(ctx context.Context, userID string) error {
	return s.db.WithTx(ctx, func(tx *sqldb.Tx) error { return deleteDevicesTx(ctx, tx, userID, "", nil) })
}

// deleteDevicesTx deletes userID's devices listed in only (all if only is nil), except keep.
func deleteDevicesTx(ctx context.Context, tx *sqldb.Tx, userID, keep string, only []string) error {
	var ids []string
	if only == nil {
		rows, err := tx.Query(ctx, `SELECT device_id FROM devices WHERE user_id = $1`, userID)
		if err != nil {
			return err
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			ids = append(ids, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
	} else {
		ids = only
	}
	for _, id := range ids {
		if id == keep {
			continue
		}
		if _, err := tx.Exec(ctx, `DELETE FROM devices WHERE user_id = $1 AND device_id = $2`, userID, id); err != nil {
			return fmt.Errorf("deleting device %s: %w", id, err)
		}
		if err := revokeDeviceTokensTx(ctx, tx, userID, id); err != nil {
			return err
		}
	}
	return nil
}

func revokeDeviceTokensTx(ctx context.Context, tx *sqldb.Tx, userID, deviceID string) error {
	if _, err := tx.Exec(ctx, `DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2`, userID, deviceID); err != nil {
		return fmt.Errorf("revoking access tokens: %w", err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id = $2`, userID, deviceID); err != nil {
		return fmt.Errorf("revoking refresh tokens: %w", err)
	}
	return nil
}

// TouchDevice records that a device was seen, at most once a minute per device.
func (s *Service) TouchDevice(ctx context.Context, d *Device, ip, userAgent string) {
	now := s.nowMS()
	if now-d.LastSeenTS < 60_000 && d.LastSeenIP == ip {
		return
	}
	if _, err := s.db.Exec(ctx, `UPDATE devices SET last_seen_ts = $1, last_seen_ip = $2, last_seen_user_agent = $3
		WHERE user_id = $4 AND device_id = $5`, now, ip, userAgent, d.UserID, d.DeviceID); err != nil {
		s.log.Warn("recording device last seen", "user_id", d.UserID, "error", err)
	}
}
