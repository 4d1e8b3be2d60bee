package mediaapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
)

// Pending downloads wait this long by default, and at most maxWait (Synapse's values).
const (
	defaultWait = 20 * time.Second
	maxWait     = 60 * time.Second
)

// parseTimeout reads timeout_ms: the default when absent, capped at maxWait.
func parseTimeout(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("timeout_ms")
	if v == "" {
		return defaultWait, nil
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ms < 0 {
		return 0, matrix.InvalidParam("timeout_ms must be a non-negative integer")
	}
	return min(time.Duration(ms)*time.Millisecond, maxWait), nil
}

// parseAllowRemote reads allow_remote (default true).
func parseAllowRemote(r *http.Request) (bool, error) {
	switch r.URL.Query().Get("allow_remote") {
	case "", "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, matrix.InvalidParam("allow_remote must be true or false")
}

// checkIDs answers 400 M_INVALID_PARAM for a bad server name and 404 M_NOT_FOUND for a media
// ID that cannot exist (the spec's character allow-list guards against path traversal).
func checkIDs(serverName, mediaID string) error {
	if !matrix.ValidServerName(serverName) {
		return matrix.InvalidParam("invalid server name")
	}
	if !validMediaID(mediaID) {
		return matrix.NotFound("unknown media ID")
	}
	return nil
}

// Media returns the media named by (serverName, mediaID) with its content in the blob
// store: local media, waiting up to wait for a pending asynchronous upload (504
// M_NOT_YET_UPLOADED after that), or remote media from the cache, else fetched over
// federation unless allowRemote is false. It returns 404 M_NOT_FOUND for unknown media.
func (s *Service) Media(ctx context.Context, serverName, mediaID string, allowRemote bool, wait time.Duration) (*media, error) {
	if err := checkIDs(serverName, mediaID); err != nil {
		return nil, err
	}
	if serverName == s.serverName {
		return s.local(ctx, mediaID, wait)
	}
	m, err := s.db.media(ctx, serverName, mediaID)
	if err == nil && !m.pending() {
		return m, nil
	}
	if err != nil && !errors.Is(err, sqldb.ErrNotFound) {
		return nil, fmt.Errorf("loading media %s/%s: %w", serverName, mediaID, err)
	}
	if !allowRemote {
		return nil, matrix.NotFound("remote media is not cached and allow_remote is false")
	}
	return s.remote(ctx, serverName, mediaID)
}

// local returns local media, waiting up to wait for a pending upload.
func (s *Service) local(ctx context.Context, mediaID string, wait time.Duration) (*media, error) {
	key := s.serverName + "/" + mediaID
	var deadline <-chan time.Time
	for {
		// Register before reading, so an upload committing in between still wakes us.
		ch, release := s.waiters.wait(key)
		m, err := s.db.media(ctx, s.serverName, mediaID)
		if errors.Is(err, sqldb.ErrNotFound) {
			release()
			return nil, matrix.NotFound("media not found")
		}
		if err != nil {
			release()
			return nil, fmt.Errorf("loading media %s: %w", mediaID, err)
		}
		if !m.pending() {
			release()
			return m, nil
		}
		now := s.now().UnixMilli()
		if m.ExpiresTS <= now {
			release()
			return nil, matrix.NotFound("media not found")
		}
		if deadline == nil {
			t := time.NewTimer(min(wait, time.Duration(m.ExpiresTS-now)*time.Millisecond))
			defer t.Stop()
			deadline = t.C
		}
		select {
		case <-ch:
			release()
		case <-deadline:
			release()
			return nil, notYetUploaded()
		case <-ctx.Done():
			release()
			return nil, ctx.Err()
		}
	}
}

func notYetUploaded() error {
	return matrix.Errorf(http.StatusGatewayTimeout, "M_NOT_YET_UPLOADED", "content has not yet been uploaded")
}

// safeInline are the content types served with Content-Disposition: inline (the spec's
// "Serving inline content" list); everything else is an attachment.
var safeInline = map[string]bool{
	"text/css": true, "text/plain": true, "text/csv": true,
	"application/json": true, "application/ld+json": true,
	"image/jpeg": true, "image/gif": true, "image/png": true, "image/apng": true, "image/webp": true, "image/avif": true,
	"video/mp4": true, "video/webm": true, "video/ogg": true, "video/quicktime": true,
	"audio/mp4": true, "audio/webm": true, "audio/aac": true, "audio/mpeg": true, "audio/ogg": true,
	"audio/wave": true, "audio/wav": true, "audio/x-wav": true, "audio/x-pn-wav": true,
	"audio/flac": true, "audio/x-flac": true,
}

// dispositionType is "inline" for a safe content type, else "attachment".
func dispositionType(contentType string) string {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		mt = strings.ToLower(strings.TrimSpace(strings.SplitN(contentType, ";", 2)[0]))
	}
	if safeInline[mt] {
		return "inline"
	}
	return "attachment"
}

// contentDisposition builds a Content-Disposition header (RFC 6266): a file name made only
// of token characters is sent as filename=name; any other as filename*=utf-8”percent-
// encoded (RFC 5987), as Synapse does.
func contentDisposition(kind, fileName string) string {
	if fileName == "" {
		return kind
	}
	if isToken(fileName) {
		return kind + "; filename=" + fileName
	}
	var b strings.Builder
	b.WriteString(kind)
	b.WriteString("; filename*=utf-8''")
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(fileName); i++ {
		c := fileName[i]
		if isAttrChar(c) {
			b.WriteByte(c)
		} else {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
	}
	return b.String()
}

// isToken reports whether s is an RFC 2616 token.
func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`()<>@,;:\"/[]?={}`, c) >= 0 {
			return false
		}
	}
	return s != ""
}

// isAttrChar reports whether c is an RFC 5987 attr-char.
func isAttrChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		strings.IndexByte("!#$&+-.^_`|~", c) >= 0
}

// csp is the spec's recommended Content-Security-Policy for served media.
const csp = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';"

// setMediaHeaders sets the headers every served file carries.
func setMediaHeaders(h http.Header, contentType, disposition string, authenticated bool) {
	h.Set("Content-Type", contentType)
	h.Set("Content-Disposition", disposition)
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cross-Origin-Resource-Policy", "cross-origin")
	if authenticated {
		h.Set("Cache-Control", "private, max-age=86400")
	} else {
		h.Set("Cache-Control", "public, max-age=86400, s-maxage=86400")
	}
}

// serveBlob writes the blob named hash as the response body, with Range support when the
// store gives a seekable reader.
func (s *Service) serveBlob(w http.ResponseWriter, r *http.Request, hash string) error {
	rc, size, err := s.blobs.Open(r.Context(), hash)
	if err != nil {
		return fmt.Errorf("opening blob %s: %w", hash, err)
	}
	defer rc.Close()
	w.Header().Set("ETag", `"`+hash+`"`)
	if rs, ok := rc.(io.ReadSeeker); ok {
		http.ServeContent(w, r, "", time.Time{}, rs)
		return nil
	}
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = io.Copy(w, rc)
	}
	return nil
}
