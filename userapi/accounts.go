package userapi

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/bcrypt"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
)

// NewAccount describes an account to create.
type NewAccount struct {
	Localpart   string
	Password    string // "" for an account that cannot log in with a password
	Admin       bool
	Guest       bool
	DisplayName string // defaults to the localpart
}

// HashPassword returns the bcrypt hash of password. It returns ErrPasswordLong for passwords
// bcrypt would silently truncate.
func (s *Service) HashPassword(password string) (string, error) {
	if len(password) > 72 {
		return "", ErrPasswordLong
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), s.cfg.BCryptCost)
	if err != nil {
		return "", fmt.Errorf("hashing password: %w", err)
	}
	return string(h), nil
}

// CreateAccount creates an account and its profile. It returns ErrUserInUse if the user ID
// is taken, and ErrPasswordLong for an over-long password.
func (s *Service) CreateAccount(ctx context.Context, a NewAccount) (userID string, err error) {
	userID = matrix.UserID(a.Localpart, s.cfg.ServerName)
	var hash sql.NullString
	if a.Password != "" {
		h, err := s.HashPassword(a.Password)
		if err != nil {
			return "", err
		}
		hash = sql.NullString{String: h, Valid: true}
	}
	display := a.DisplayName
	if display == "" {
		display = a.Localpart
	}
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO accounts (user_id, password_hash, is_admin, is_guest, created_ts)
			VALUES ($1, $2, $3, $4, $5)`, userID, hash, a.Admin, a.Guest, s.nowMS()); err != nil {
			if sqldb.IsUniqueViolation(err) {
				return ErrUserInUse
			}
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO profiles (user_id, displayname) VALUES ($1, $2)`, userID, display)
		return err
	})
	if err != nil {
		if errors.Is(err, ErrUserInUse) {
			return "", err
		}
		return "", fmt.Errorf("creating account %s: %w", userID, err)
	}
	return userID, nil
}

// Account is what is stored about an account.
type Account struct {
	UserID      string
	Admin       bool
	Guest       bool
	Deactivated bool
	hash        sql.NullString
}

// Account returns the account of userID, or ErrNoSuchUser.
func (s *Service) Account(ctx context.Context, userID string) (*Account, error) {
	var a Account
	err := s.db.QueryRow(ctx, `SELECT user_id, password_hash, is_admin, is_guest, deactivated FROM accounts WHERE user_id = $1`,
		userID).Scan(&a.UserID, &a.hash, &a.Admin, &a.Guest, &a.Deactivated)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNoSuchUser
	}
	if err != nil {
		return nil, fmt.Errorf("loading account %s: %w", userID, err)
	}
	return &a, nil
}

// Exists reports whether localpart is taken on this server, deactivated accounts included.
func (s *Service) Exists(ctx context.Context, localpart string) (bool, error) {
	_, err := s.Account(ctx, matrix.UserID(localpart, s.cfg.ServerName))
	if errors.Is(err, ErrNoSuchUser) {
		return false, nil
	}
	return err == nil, err
}

// CheckPassword verifies password for userID. It returns ErrNoSuchUser, ErrDeactivated or
// ErrBadPassword. A missing user costs as much time as a wrong password.
func (s *Service) CheckPassword(ctx context.Context, userID, password string) error {
	a, err := s.Account(ctx, userID)
	if errors.Is(err, ErrNoSuchUser) {
		_ = bcrypt.CompareHashAndPassword(dummyHash, []byte(password))
		return ErrNoSuchUser
	}
	if err != nil {
		return err
	}
	if a.Deactivated {
		return ErrDeactivated
	}
	if !a.hash.Valid || len(password) > 72 || bcrypt.CompareHashAndPassword([]byte(a.hash.String), []byte(password)) != nil {
		return ErrBadPassword
	}
	return nil
}

// dummyHash is compared against for unknown users so that timing does not reveal which
// user IDs exist.
var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("myelin-dummy-password"), 10)

// SetPassword changes userID's password. If logoutOthers, every device but keepDevice is
// deleted with its tokens.
func (s *Service) SetPassword(ctx context.Context, userID, password string, logoutOthers bool, keepDevice string) error {
	h, err := s.HashPassword(password)
	if err != nil {
		return err
	}
	return s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		res, err := tx.Exec(ctx, `UPDATE accounts SET password_hash = $1 WHERE user_id = $2 AND NOT deactivated`, h, userID)
		if err != nil {
			return fmt.Errorf("setting password: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNoSuchUser
		}
		if logoutOthers {
			return deleteDevicesTx(ctx, tx, userID, keepDevice, nil)
		}
		return nil
	})
}

// Deactivate deactivates userID: the password is removed, every device and token deleted,
// and the profile cleared. The user ID stays taken.
func (s *Service) Deactivate(ctx context.Context, userID string) error {
	return s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE accounts SET deactivated = TRUE, password_hash = NULL WHERE user_id = $1`, userID); err != nil {
			return fmt.Errorf("deactivating %s: %w", userID, err)
		}
		if _, err := tx.Exec(ctx, `UPDATE profiles SET displayname = NULL, avatar_url = NULL WHERE user_id = $1`, userID); err != nil {
			return fmt.Errorf("clearing profile of %s: %w", userID, err)
		}
		return deleteDevicesTx(ctx, tx, userID, "", nil)
	})
}

// NormaliseLogin turns what a client typed as its user (a full user ID or a localpart, any
// case) into this server's user ID. It returns false for a user of another server or an
// invalid name.
func (s *Service) NormaliseLogin(user string) (string, bool) {
	if strings.HasPrefix(user, "@") {
		local, server, err := matrix.SplitID('@', user)
		if err != nil || server != s.cfg.ServerName {
			return "", false
		}
		user = local
	}
	user = strings.ToLower(user)
	if user == "" {
		return "", false
	}
	return matrix.UserID(user, s.cfg.ServerName), true
}
