// Package blob stores media bytes: immutable blobs named by the lowercase hex SHA-256 of
// their content, on local disk or in an S3 bucket. Only mediaapi imports it.
package blob

import (
	"context"
	"errors"
	"io"
)

// ErrNotFound is returned (wrapped) by Open for a key the store does not hold.
var ErrNotFound = errors.New("blob: not found")

// Store keeps immutable blobs. Keys are 64 lowercase hex characters (the SHA-256 of the
// content); a store may rely on that and rejects other keys.
type Store interface {
	// Put stores exactly size bytes read from r under key, durably, before it returns.
	// Putting a key that already exists succeeds without rewriting it. A short or long
	// read is an error and leaves nothing behind.
	Put(ctx context.Context, key string, r io.Reader, size int64) error
	// Open returns the blob's content and size; ErrNotFound (wrapped) if absent.
	Open(ctx context.Context, key string) (io.ReadCloser, int64, error)
	// Delete removes the blob; deleting an absent key is not an error.
	Delete(ctx context.Context, key string) error
}
