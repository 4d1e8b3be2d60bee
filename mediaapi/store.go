package mediaapi

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/myelin-chat/myelin/internal/sqldb"
)

// media is one row of the media table: an mxc:// URI and what it names.
type media struct {
	Origin, ID string
	// Hash is the blob key; "" while an asynchronous upload awaits its content.
	Hash        string
	Size        int64
	ContentType string
	UploadName  string
	UserID      string
	CreatedTS   int64
	// ExpiresTS is when a pending media ID is forgotten (ms); 0 once uploaded.
	ExpiresTS int64
}

// pending reports whether m still awaits its content.
func (m *media) pending() bool { return m.Hash == "" }

// thumb is one stored thumbnail.
type thumb struct {
	Width, Height int
	Method        string
	Hash          string
	ContentType   string
	Size          int64
}

// store is mediaapi's SQL storage, one implementation for SQLite and PostgreSQL.
type store struct{ db *sqldb.DB }

// media returns the row for (origin, id), or sqldb.ErrNotFound.
func (s store) media(ctx context.Context, origin, id string) (*media, error) {
	var m media
	var hash sql.NullString
	err := s.db.QueryRow(ctx, `SELECT origin, media_id, content_hash, size, content_type, upload_name, user_id, created_ts, expires_ts
		FROM media WHERE origin = $1 AND media_id = $2`, origin, id).
		Scan(&m.Origin, &m.ID, &hash, &m.Size, &m.ContentType, &m.UploadName, &m.UserID, &m.CreatedTS, &m.ExpiresTS)
	if err != nil {
		return nil, sqldb.NotFound(err)
	}
	m.Hash = hash.String
	return &m, nil
}

// putMedia records m. It returns sqldb.ErrExists if (m.Origin, m.ID) is taken.
func (s store) putMedia(ctx context.Context, m *media) error {
	var hash any
	if m.Hash != "" {
		hash = m.Hash
	}
	_, err := s.db.Exec(ctx, `INSERT INTO media (origin, media_id, content_hash, size, content_type, upload_name, user_id, created_ts, expires_ts)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
		m.Origin, m.ID, hash, m.Size, m.ContentType, m.UploadName, m.UserID, m.CreatedTS, m.ExpiresTS)
	if sqldb.IsUniqueViolation(err) {
		return sqldb.ErrExists
	}
	return err
}

// deleteExpiredPending forgets every pending media ID that expired by now (ms) and returns
// how many there were.
func (s store) deleteExpiredPending(ctx context.Context, now int64) (int64, error) {
	res, err := s.db.Exec(ctx, `DELETE FROM media WHERE content_hash IS NULL AND expires_ts <= $1`, now)
	if err != nil {
		return 0, fmt.Errorf("forgetting expired media IDs: %w", err)
	}
	return res.RowsAffected()
}

// createPending records a pending media ID for userID unless the user already holds max
// unexpired ones (errTooManyPending, with the earliest expiry) — one transaction. Expired
// pending IDs are forgotten on the way.
func (s store) createPending(ctx context.Context, m *media, now int64, max int) (earliest int64, err error) {
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM media WHERE content_hash IS NULL AND user_id = $1 AND expires_ts <= $2`, m.UserID, now); err != nil {
			return fmt.Errorf("forgetting expired media IDs: %w", err)
		}
		if max > 0 {
			var n int
			var first sql.NullInt64
			if err := tx.QueryRow(ctx, `SELECT COUNT(*), MIN(expires_ts) FROM media WHERE content_hash IS NULL AND user_id = $1`,
				m.UserID).Scan(&n, &first); err != nil {
				return fmt.Errorf("counting pending media IDs: %w", err)
			}
			if n >= max {
				earliest = first.Int64
				return errTooManyPending
			}
		}
		_, err := tx.Exec(ctx, `INSERT INTO media (origin, media_id, content_hash, size, content_type, upload_name, user_id, created_ts, expires_ts)
			VALUES ($1, $2, NULL, 0, '', '', $3, $4, $5)`, m.Origin, m.ID, m.UserID, m.CreatedTS, m.ExpiresTS)
		return err
	})
	return earliest, err
}

var errTooManyPending = errors.New("too many pending media IDs")

// fill gives a pending media ID its content. It returns sqldb.ErrExists when the ID already
// has content, sqldb.ErrNotFound when it is unknown or expired.
func (s store) fill(ctx context.Context, m *media, now int64) error {
	res, err := s.db.Exec(ctx, `UPDATE media SET content_hash = $1, size = $2, content_type = $3, upload_name = $4, expires_ts = 0
		WHERE origin = $5 AND media_id = $6 AND content_hash IS NULL AND expires_ts > $7`,
		m.Hash, m.Size, m.ContentType, m.UploadName, m.Origin, m.ID, now)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 1 {
		return nil
	}
	cur, err := s.media(ctx, m.Origin, m.ID)
	if err != nil {
		return err
	}
	if !cur.pending() {
		return sqldb.ErrExists
	}
	return sqldb.ErrNotFound // expired
}

// thumbnail returns the stored thumbnail of (origin, id) for the given size, or
// sqldb.ErrNotFound.
func (s store) thumbnail(ctx context.Context, origin, id string, w, h int, method string) (*thumb, error) {
	t := thumb{Width: w, Height: h, Method: method}
	err := s.db.QueryRow(ctx, `SELECT content_hash, content_type, size FROM media_thumbnails
		WHERE origin = $1 AND media_id = $2 AND width = $3 AND height = $4 AND method = $5`,
		origin, id, w, h, method).Scan(&t.Hash, &t.ContentType, &t.Size)
	if err != nil {
		return nil, sqldb.NotFound(err)
	}
	return &t, nil
}

// putThumbnail records t for (origin, id); a thumbnail already stored for the size wins.
func (s store) putThumbnail(ctx context.Context, origin, id string, t *thumb) error {
	_, err := s.db.Exec(ctx, `INSERT INTO media_thumbnails (origin, media_id, width, height, method, content_hash, content_type, size)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING`,
		origin, id, t.Width, t.Height, t.Method, t.Hash, t.ContentType, t.Size)
	return err
}
