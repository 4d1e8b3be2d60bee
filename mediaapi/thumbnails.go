package mediaapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/mediaapi/thumbnail"
)

// ThumbnailRequest is a parsed thumbnail request.
type ThumbnailRequest struct {
	Width, Height int
	Method        thumbnail.Method
	// Animated is the client's preference; Myelin makes static thumbnails only, which the
	// spec allows for every value.
	Animated bool
}

// parseThumbnailRequest reads width, height, method and animated: 400 M_MISSING_PARAM
// without width or height, 400 M_INVALID_PARAM for bad values.
func parseThumbnailRequest(r *http.Request) (ThumbnailRequest, error) {
	q := r.URL.Query()
	var tr ThumbnailRequest
	for _, p := range []struct {
		name string
		v    *int
	}{{"width", &tr.Width}, {"height", &tr.Height}} {
		s := q.Get(p.name)
		if s == "" {
			return tr, matrix.MissingParam("missing %s", p.name)
		}
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return tr, matrix.InvalidParam("%s must be a positive integer", p.name)
		}
		*p.v = n
	}
	switch m := q.Get("method"); m {
	case "", "scale":
		tr.Method = thumbnail.Scale
	case "crop":
		tr.Method = thumbnail.Crop
	default:
		return tr, matrix.InvalidParam("method must be crop or scale")
	}
	switch q.Get("animated") {
	case "", "false":
	case "true":
		tr.Animated = true
	default:
		return tr, matrix.InvalidParam("animated must be true or false")
	}
	return tr, nil
}

// size is the thumbnail size that answers tr: the exact size with dynamic thumbnails, else
// the chosen pre-generated size.
func (s *Service) size(tr ThumbnailRequest) thumbnail.Size {
	want := thumbnail.Size{Width: tr.Width, Height: tr.Height, Method: tr.Method}
	if s.cfg.MediaAPI.DynamicThumbnails || len(s.sizes) == 0 {
		return want
	}
	if c, ok := thumbnail.Choose(s.sizes, tr.Width, tr.Height, tr.Method); ok {
		return c
	}
	return want
}

// Thumbnail returns a thumbnail of (serverName, mediaID) for tr, made and cached on first
// request. Remote thumbnails come from the origin over federation when possible, else are
// made here from the fetched original. It returns 400 M_UNKNOWN for content that cannot be
// thumbnailed and M_TOO_LARGE (413 local, 502 remote) for images with too many pixels, plus
// the errors of Media.
func (s *Service) Thumbnail(ctx context.Context, serverName, mediaID string, tr ThumbnailRequest, allowRemote bool, wait time.Duration) (*thumb, error) {
	if err := checkIDs(serverName, mediaID); err != nil {
		return nil, err
	}
	size := s.size(tr)
	if serverName == s.serverName {
		m, err := s.local(ctx, mediaID, wait)
		if err != nil {
			return nil, err
		}
		return s.makeThumbnail(ctx, m, size)
	}
	t, err := s.db.thumbnail(ctx, serverName, mediaID, size.Width, size.Height, string(size.Method))
	if err == nil {
		return t, nil
	}
	if !errors.Is(err, sqldb.ErrNotFound) {
		return nil, fmt.Errorf("loading thumbnail: %w", err)
	}
	if m, err := s.db.media(ctx, serverName, mediaID); err == nil && !m.pending() {
		return s.makeThumbnail(ctx, m, size)
	}
	if !allowRemote {
		return nil, matrix.NotFound("remote media is not cached and allow_remote is false")
	}
	if t, err := s.remoteThumbnail(ctx, serverName, mediaID, size); err == nil {
		return t, nil
	} else if me := matrix.AsError(err); me != nil && me.Status == http.StatusNotFound {
		return nil, err
	} else if err != nil {
		s.log.Debug("remote thumbnail failed; making it from the original", "server_name", serverName, "media_id", mediaID, "error", err)
	}
	m, err := s.remote(ctx, serverName, mediaID)
	if err != nil {
		return nil, err
	}
	return s.makeThumbnail(ctx, m, size)
}

// makeThumbnail returns m's stored thumbnail of size, making and storing it first if
// needed. Concurrent requests for one thumbnail share one generation, and at most
// media_api.max_thumbnail_generators run at once.
func (s *Service) makeThumbnail(ctx context.Context, m *media, size thumbnail.Size) (*thumb, error) {
	t, err := s.db.thumbnail(ctx, m.Origin, m.ID, size.Width, size.Height, string(size.Method))
	if err == nil {
		return t, nil
	}
	if !errors.Is(err, sqldb.ErrNotFound) {
		return nil, fmt.Errorf("loading thumbnail: %w", err)
	}
	key := fmt.Sprintf("thumb %s/%s %dx%d %s", m.Origin, m.ID, size.Width, size.Height, size.Method)
	v, err := s.flights.do(ctx, key, func(ctx context.Context) (any, error) {
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		if t, err := s.db.thumbnail(ctx, m.Origin, m.ID, size.Width, size.Height, string(size.Method)); err == nil {
			return t, nil
		}
		select {
		case s.generators <- struct{}{}:
			defer func() { <-s.generators }()
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return s.generate(ctx, m, size)
	})
	if err != nil {
		return nil, s.thumbnailError(m, err)
	}
	return v.(*thumb), nil
}

// thumbnailError maps thumbnail's errors to what the client sees.
func (s *Service) thumbnailError(m *media, err error) error {
	switch {
	case errors.Is(err, thumbnail.ErrUnsupported):
		return matrix.Errorf(http.StatusBadRequest, matrix.CodeUnknown, "this media cannot be thumbnailed")
	case errors.Is(err, thumbnail.ErrTooLarge) && m.Origin == s.serverName:
		return matrix.Errorf(http.StatusRequestEntityTooLarge, matrix.CodeTooLarge, "the image is too large to thumbnail")
	case errors.Is(err, thumbnail.ErrTooLarge):
		return matrix.Errorf(http.StatusBadGateway, matrix.CodeTooLarge, "the remote image is too large to thumbnail")
	}
	return err
}

// generate makes m's thumbnail of size from its blob and stores it.
func (s *Service) generate(ctx context.Context, m *media, size thumbnail.Size) (*thumb, error) {
	rc, _, err := s.blobs.Open(ctx, m.Hash)
	if err != nil {
		return nil, fmt.Errorf("opening blob %s: %w", m.Hash, err)
	}
	defer rc.Close()
	made, err := thumbnail.Make(rc, size, s.maxPixels())
	if err != nil {
		return nil, fmt.Errorf("thumbnailing %s/%s: %w", m.Origin, m.ID, err)
	}
	return s.storeThumbnail(ctx, m.Origin, m.ID, size, made.ContentType, made.Data)
}

// storeThumbnail stores data as the thumbnail of (origin, id) for size.
func (s *Service) storeThumbnail(ctx context.Context, origin, id string, size thumbnail.Size, contentType string, data []byte) (*thumb, error) {
	sum := sha256.Sum256(data)
	t := &thumb{Width: size.Width, Height: size.Height, Method: string(size.Method),
		Hash: hex.EncodeToString(sum[:]), ContentType: contentType, Size: int64(len(data))}
	if err := s.blobs.Put(ctx, t.Hash, bytes.NewReader(data), t.Size); err != nil {
		return nil, fmt.Errorf("storing thumbnail blob: %w", err)
	}
	if err := s.db.putThumbnail(ctx, origin, id, t); err != nil {
		return nil, fmt.Errorf("recording thumbnail: %w", err)
	}
	// Another generation may have won the row; serve what is recorded.
	if got, err := s.db.thumbnail(ctx, origin, id, size.Width, size.Height, string(size.Method)); err == nil {
		return got, nil
	}
	return t, nil
}

func (s *Service) maxPixels() int64 {
	if p := s.cfg.Myelin.Media.MaxImagePixels; p > 0 {
		return p
	}
	return 32_000_000
}

// pregenerate makes the configured thumbnail sizes of m in the background when it is an
// image small enough to decode. The upload's answer does not wait for it.
func (s *Service) pregenerate(m *media) {
	if len(s.sizes) == 0 {
		return
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		ctx := s.bgCtx
		rc, _, err := s.blobs.Open(ctx, m.Hash)
		if err != nil {
			s.log.Warn("opening blob for thumbnails", "media_id", m.ID, "error", err)
			return
		}
		_, w, h, err := thumbnail.Probe(rc)
		rc.Close()
		if err != nil || int64(w)*int64(h) > s.maxPixels() {
			return // not an image we thumbnail
		}
		for _, size := range s.sizes {
			if ctx.Err() != nil {
				return
			}
			if _, err := s.makeThumbnail(ctx, m, size); err != nil {
				if ctx.Err() != nil {
					return // shutting down
				}
				s.log.Warn("making thumbnail", "media_id", m.ID, "width", size.Width, "height", size.Height,
					"method", string(size.Method), "error", err)
				return
			}
		}
	}()
}
