// Package preview builds URL previews (OpenGraph) for /preview_url, refusing private
// addresses unless configured. Only mediaapi imports it.
package preview

import (
	"context"
	"io"
	"log/slog"
	"net/http"

	"github.com/myelin-chat/myelin/internal/config"
	"github.com/myelin-chat/myelin/internal/matrix"
)

// Stored is an image a preview stored as local media.
type Stored struct {
	MXC           string
	Size          int64
	Width, Height int
	ContentType   string
}

// ImageStore stores a fetched og:image as local media owned by userID. mediaapi
// implements it.
type ImageStore interface {
	StoreImage(ctx context.Context, userID, contentType string, r io.Reader) (Stored, error)
}

// Previewer fetches pages and builds their previews.
type Previewer struct{}

// New returns a Previewer.
func New(cfg config.URLPreviews, images ImageStore, userAgent string, log *slog.Logger) (*Previewer, error) {
	return &Previewer{}, nil // being built
}

// Preview returns the OpenGraph object for rawURL.
func (p *Previewer) Preview(ctx context.Context, userID, rawURL string, ts int64) (map[string]any, error) {
	return nil, matrix.Unrecognized(http.StatusNotFound) // being built
}
