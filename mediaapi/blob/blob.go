// Package blob stores media bytes: immutable blobs named by the lowercase hex SHA-256 of
// their content, on local disk (Disk) or in an S3 bucket (S3). Only mediaapi imports it.
package blob

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/myelin-chat/myelin/internal/config"
)

// ErrNotFound is returned (wrapped) by Open for a key the store does not hold.
var ErrNotFound = errors.New("blob: not found")

// ErrMismatch is returned (wrapped) by Put when the content read does not have the
// promised size or its SHA-256 is not the key; nothing is stored then.
var ErrMismatch = errors.New("blob: content does not match its key or size")

// ErrBadKey is returned (wrapped) for a key that is not 64 lowercase hex characters.
var ErrBadKey = errors.New("blob: key is not a lowercase hex SHA-256")

// Store keeps immutable blobs. Keys are 64 lowercase hex characters (the SHA-256 of the
// content); a store may rely on that and rejects other keys with ErrBadKey.
type Store interface {
	// Put stores exactly size bytes read from r under key, durably, before it returns.
	// Putting a key that already exists succeeds without rewriting it (and without
	// reading r). A short or long read, or content whose SHA-256 is not key, is an
	// error (ErrMismatch) and leaves nothing behind.
	Put(ctx context.Context, key string, r io.Reader, size int64) error
	// Open returns the blob's content and size; ErrNotFound (wrapped) if absent.
	// The caller closes the content.
	Open(ctx context.Context, key string) (io.ReadCloser, int64, error)
	// Delete removes the blob; deleting an absent key is not an error.
	Delete(ctx context.Context, key string) error
}

var (
	_ Store = (*Disk)(nil)
	_ Store = (*S3)(nil)
)

// New returns the store cfg.Myelin.Media.Storage names: "disk" keeps blobs under
// cfg.MediaAPI.BasePath, "s3" in the bucket cfg.Myelin.Media.S3 describes. It returns
// an error for another name, or when the store cannot be opened.
func New(ctx context.Context, cfg *config.Config) (Store, error) {
	switch s := cfg.Myelin.Media.Storage; s {
	case "disk":
		return NewDisk(cfg.MediaAPI.BasePath)
	case "s3":
		return NewS3(ctx, cfg.Myelin.Media.S3)
	default:
		return nil, fmt.Errorf("unknown media storage %q (want \"disk\" or \"s3\")", s)
	}
}

// checkKey returns ErrBadKey (wrapped) unless key is 64 lowercase hex characters.
func checkKey(key string) error {
	if len(key) != 64 {
		return fmt.Errorf("%w: %q", ErrBadKey, key)
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("%w: %q", ErrBadKey, key)
		}
	}
	return nil
}

// ctxReader stops reading once its context is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// checkSize returns ErrMismatch (wrapped) unless n, the bytes read with a limit of
// want+1, is want.
func checkSize(n, want int64) error {
	switch {
	case n > want:
		return fmt.Errorf("%w: content is longer than %d bytes", ErrMismatch, want)
	case n < want:
		return fmt.Errorf("%w: content is %d bytes, want %d", ErrMismatch, n, want)
	}
	return nil
}
