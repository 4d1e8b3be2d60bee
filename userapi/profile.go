package userapi

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/myelin-chat/myelin/internal/sqldb"
)

// Profile is a user's public profile.
type Profile struct {
	DisplayName string `json:"displayname,omitempty"`
	AvatarURL   string `json:"avatar_url,omitempty"`
}

// Profile returns userID's profile, or ErrNoSuchUser.
func (s *Service) Profile(ctx context.Context, userID string) (*Profile, error) {
	var name, avatar sql.NullString
	err := s.db.QueryRow(ctx, `SELECT p.displayname, p.avatar_url FROM profiles p JOIN accounts a ON a.user_id = p.user_id
		WHERE p.user_id = $1`, userID).Scan(&name, &avatar)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNoSuchUser
	}
	if err != nil {
		return nil, fmt.Errorf("loading profile of %s: %w", userID, err)
	}
	return &Profile{DisplayName: name.String, AvatarURL: avatar.String}, nil
}

// SetDisplayName sets userID's display name ("" removes it).
func (s *Service) SetDisplayName(ctx context.Context, userID, name string) error {
	return s.setProfileField(ctx, userID, "displayname", name)
}

// SetAvatarURL sets userID's avatar URL ("" removes it).
func (s *Service) SetAvatarURL(ctx context.Context, userID, url string) error {
	return s.setProfileField(ctx, userID, "avatar_url", url)
}

func (s *Service) setProfileField(ctx context.Context, userID, column, value string) error {
	var v sql.NullString
	if value != "" {
		v = sql.NullString{String: value, Valid: true}
	}
	// column is one of two constants above, never user input.
	res, err := s.db.Exec(ctx, `UPDATE profiles SET `+column+` = $1 WHERE user_id = $2`, v, userID)
	if err != nil {
		return fmt.Errorf("setting %s of %s: %w", column, userID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNoSuchUser
	}
	return nil
}

// AccountData returns the content of one account-data event ("" roomID for global), or
// ErrNotFound.
func (s *Service) AccountData(ctx context.Context, userID, roomID, evType string) (json.RawMessage, error) {
	var content string
	err := s.db.QueryRow(ctx, `SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND type = $3`,
		userID, roomID, evType).Scan(&content)
	if err = sqldb.NotFound(err); err != nil {
		return nil, err
	}
	return json.RawMessage(content), nil
}

// SetAccountData stores an account-data event ("" roomID for global) and advances the
// account-data stream.
func (s *Service) SetAccountData(ctx context.Context, userID, roomID, evType string, content json.RawMessage) error {
	var pos int64
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		var err error
		if pos, err = tx.NextSeq(ctx, "account_data"); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO account_data (user_id, room_id, type, content, stream_pos) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = excluded.content, stream_pos = excluded.stream_pos`,
			userID, roomID, evType, string(content), pos)
		return err
	})
	if err != nil {
		return fmt.Errorf("storing account data %s for %s: %w", evType, userID, err)
	}
	if s.accountData != nil {
		s.accountData.Advance(pos)
	}
	return nil
}

// AccountDataEvent is one account-data event as sync delivers it.
type AccountDataEvent struct {
	RoomID  string
	Type    string
	Content json.RawMessage
}

// AccountDataSince returns userID's account data changed after position after, up to upTo
// (all of it when after is 0).
func (s *Service) AccountDataSince(ctx context.Context, userID string, after, upTo int64) ([]AccountDataEvent, error) {
	rows, err := s.db.Query(ctx, `SELECT room_id, type, content FROM account_data
		WHERE user_id = $1 AND stream_pos > $2 AND stream_pos <= $3 ORDER BY stream_pos`, userID, after, upTo)
	if err != nil {
		return nil, fmt.Errorf("loading account data: %w", err)
	}
	defer rows.Close()
	var out []AccountDataEvent
	for rows.Next() {
		var e AccountDataEvent
		var c string
		if err := rows.Scan(&e.RoomID, &e.Type, &c); err != nil {
			return nil, err
		}
		e.Content = json.RawMessage(c)
		out = append(out, e)
	}
	return out, rows.Err()
}

// PutFilter stores a filter for userID and returns its ID.
func (s *Service) PutFilter(ctx context.Context, userID string, filter json.RawMessage) (string, error) {
	var id int64
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		var err error
		if id, err = tx.NextSeq(ctx, "filters"); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO filters (user_id, filter_id, filter) VALUES ($1, $2, $3)`, userID, id, string(filter))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("storing filter: %w", err)
	}
	return fmt.Sprint(id), nil
}

// Filter returns one of userID's filters, or ErrNotFound.
func (s *Service) Filter(ctx context.Context, userID, filterID string) (json.RawMessage, error) {
	if filterID == "" || strings.TrimLeft(filterID, "0123456789") != "" || len(filterID) > 18 {
		return nil, ErrNotFound
	}
	var f string
	err := s.db.QueryRow(ctx, `SELECT filter FROM filters WHERE user_id = $1 AND filter_id = $2`, userID, filterID).Scan(&f)
	if err = sqldb.NotFound(err); err != nil {
		return nil, err
	}
	return json.RawMessage(f), nil
}
