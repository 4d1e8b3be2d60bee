package mediaapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/mediaapi/preview"
	"github.com/myelin-chat/myelin/mediaapi/thumbnail"
)

// errSpoolTooLarge is returned by spool for content over its limit.
var errSpoolTooLarge = errors.New("content too large")

// spooled is content written to a temporary file while its SHA-256 was computed.
type spooled struct {
	f    *os.File
	hash string
	size int64
}

// reader returns the spooled content from its start.
func (sp *spooled) reader() io.Reader { return io.NewSectionReader(sp.f, 0, sp.size) }

// close removes the temporary file.
func (sp *spooled) close() {
	sp.f.Close()
	os.Remove(sp.f.Name())
}

// spool copies r to a temporary file, hashing it, so that large content is never held in
// memory. More than max bytes (when max > 0) is errSpoolTooLarge.
func (s *Service) spool(r io.Reader, max int64) (*spooled, error) {
	f, err := os.CreateTemp(s.tmpDir, "upload-*")
	if err != nil {
		return nil, fmt.Errorf("creating temporary file: %w", err)
	}
	sp := &spooled{f: f}
	h := sha256.New()
	src := r
	if max > 0 {
		src = io.LimitReader(r, max+1)
	}
	n, err := io.Copy(io.MultiWriter(f, h), src)
	if err != nil {
		sp.close()
		return nil, fmt.Errorf("reading content: %w", err)
	}
	if max > 0 && n > max {
		sp.close()
		return nil, errSpoolTooLarge
	}
	sp.hash, sp.size = hex.EncodeToString(h.Sum(nil)), n
	return sp, nil
}

// tooLarge is the client's answer to an upload over the limit.
func (s *Service) tooLarge() error {
	return matrix.Errorf(http.StatusRequestEntityTooLarge, matrix.CodeTooLarge, "upload is larger than %d bytes", s.maxSize())
}

// storeBlob writes sp to the blob store under its hash.
func (s *Service) storeBlob(ctx context.Context, sp *spooled) error {
	if err := s.blobs.Put(ctx, sp.hash, sp.reader(), sp.size); err != nil {
		return fmt.Errorf("storing blob %s: %w", sp.hash, err)
	}
	return nil
}

// readUpload spools an upload's body, answering 413 M_TOO_LARGE beyond the limit.
func (s *Service) readUpload(body io.Reader, contentLength int64) (*spooled, error) {
	if max := s.maxSize(); max > 0 && contentLength > max {
		return nil, s.tooLarge()
	}
	sp, err := s.spool(body, s.maxSize())
	if errors.Is(err, errSpoolTooLarge) {
		return nil, s.tooLarge()
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, s.tooLarge()
		}
		return nil, matrix.Errorf(http.StatusBadRequest, matrix.CodeUnknown, "reading the upload failed")
	}
	return sp, nil
}

// contentTypeOr returns ct, or application/octet-stream when it is empty or not a media
// type (RFC 2045), so that nothing unparsable is ever served as a Content-Type.
func contentTypeOr(ct string) string {
	ct = strings.TrimSpace(ct)
	if _, _, err := mime.ParseMediaType(ct); err != nil {
		return "application/octet-stream"
	}
	return ct
}

// Upload stores body as new local media owned by userID and returns its mxc:// URI. The
// bytes are stored (durably) before the row that names them commits. It returns 413
// M_TOO_LARGE beyond media_api.max_file_size_bytes. Images are thumbnailed in the background.
func (s *Service) Upload(ctx context.Context, userID, contentType, fileName string, body io.Reader, contentLength int64) (string, error) {
	sp, err := s.readUpload(body, contentLength)
	if err != nil {
		return "", err
	}
	defer sp.close()
	m, err := s.storeLocal(ctx, userID, contentTypeOr(contentType), fileName, sp)
	if err != nil {
		return "", err
	}
	return mxc(m.Origin, m.ID), nil
}

// storeLocal stores sp's blob and a new local media row for it, then starts its thumbnails.
func (s *Service) storeLocal(ctx context.Context, userID, contentType, fileName string, sp *spooled) (*media, error) {
	if err := s.storeBlob(ctx, sp); err != nil {
		return nil, err
	}
	m := &media{
		Origin: s.serverName, ID: newMediaID(), Hash: sp.hash, Size: sp.size,
		ContentType: contentType, UploadName: fileName, UserID: userID, CreatedTS: s.now().UnixMilli(),
	}
	if err := s.db.putMedia(ctx, m); err != nil {
		return nil, fmt.Errorf("recording media %s: %w", m.ID, err)
	}
	s.pregenerate(m)
	return m, nil
}

// Create reserves a media ID for userID to upload to later (asynchronous upload). It returns
// the mxc:// URI and when the reservation expires (ms), or 429 M_LIMIT_EXCEEDED when the
// user already holds myelin.media.max_pending_uploads reservations.
func (s *Service) Create(ctx context.Context, userID string) (string, int64, error) {
	now := s.now()
	expiry := s.cfg.Myelin.Media.UnusedUploadExpiry
	if expiry <= 0 {
		expiry = 24 * time.Hour
	}
	m := &media{Origin: s.serverName, ID: newMediaID(), UserID: userID, CreatedTS: now.UnixMilli(),
		ExpiresTS: now.Add(expiry).UnixMilli()}
	earliest, err := s.db.createPending(ctx, m, now.UnixMilli(), s.cfg.Myelin.Media.MaxPendingUploads)
	if errors.Is(err, errTooManyPending) {
		retry := earliest - now.UnixMilli()
		if retry < 0 {
			retry = 0
		}
		return "", 0, matrix.Errorf(http.StatusTooManyRequests, matrix.CodeLimitExceeded,
			"too many media IDs await their content").With("retry_after_ms", retry)
	}
	if err != nil {
		return "", 0, fmt.Errorf("reserving a media ID: %w", err)
	}
	return mxc(m.Origin, m.ID), m.ExpiresTS, nil
}

// UploadTo gives the media ID reserved by Create its content. Only the user who reserved it
// may: 403 M_FORBIDDEN for another; 404 M_NOT_FOUND for an unknown or expired ID; 409
// M_CANNOT_OVERWRITE_MEDIA once it has content; 413 M_TOO_LARGE beyond the limit.
func (s *Service) UploadTo(ctx context.Context, userID, serverName, mediaID, contentType, fileName string, body io.Reader, contentLength int64) error {
	if serverName != s.serverName || !validMediaID(mediaID) {
		return matrix.NotFound("unknown media ID")
	}
	m, err := s.db.media(ctx, serverName, mediaID)
	if errors.Is(err, sqldb.ErrNotFound) {
		return matrix.NotFound("unknown media ID")
	}
	if err != nil {
		return fmt.Errorf("loading media %s: %w", mediaID, err)
	}
	if m.UserID != userID {
		return matrix.Forbidden("this media ID was reserved by another user")
	}
	if !m.pending() {
		return cannotOverwrite()
	}
	if m.ExpiresTS <= s.now().UnixMilli() {
		return matrix.NotFound("unknown media ID")
	}
	sp, err := s.readUpload(body, contentLength)
	if err != nil {
		return err
	}
	defer sp.close()
	if err := s.storeBlob(ctx, sp); err != nil {
		return err
	}
	m.Hash, m.Size, m.ContentType, m.UploadName = sp.hash, sp.size, contentTypeOr(contentType), fileName
	switch err := s.db.fill(ctx, m, s.now().UnixMilli()); {
	case errors.Is(err, sqldb.ErrExists):
		return cannotOverwrite()
	case errors.Is(err, sqldb.ErrNotFound):
		return matrix.NotFound("unknown media ID")
	case err != nil:
		return fmt.Errorf("recording media %s: %w", mediaID, err)
	}
	s.waiters.wake(m.Origin + "/" + m.ID)
	s.pregenerate(m)
	return nil
}

func cannotOverwrite() error {
	return matrix.Errorf(http.StatusConflict, "M_CANNOT_OVERWRITE_MEDIA", "media already uploaded")
}

// StoreImage implements preview.ImageStore: it stores an image a URL preview fetched as
// local media owned by userID and returns its URI, size and dimensions.
func (s *Service) StoreImage(ctx context.Context, userID, contentType string, r io.Reader) (preview.Stored, error) {
	sp, err := s.spool(r, s.maxSize())
	if err != nil {
		return preview.Stored{}, fmt.Errorf("spooling preview image: %w", err)
	}
	defer sp.close()
	st := preview.Stored{Size: sp.size, ContentType: contentTypeOr(contentType)}
	if ct, w, h, err := thumbnail.Probe(sp.reader()); err == nil {
		st.Width, st.Height = w, h
		if contentType == "" {
			st.ContentType = ct
		}
	}
	m, err := s.storeLocal(ctx, userID, st.ContentType, "", sp)
	if err != nil {
		return preview.Stored{}, err
	}
	st.MXC = mxc(m.Origin, m.ID)
	return st, nil
}
