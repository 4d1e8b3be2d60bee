package blob

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/myelin-chat/myelin/internal/config"
)

// S3 is a Store in an S3-compatible bucket. A blob is the object named prefix+key. S3 is
// safe for concurrent use, also by several processes sharing the bucket.
type S3 struct {
	client *minio.Client
	bucket string
	prefix string
}

// NewS3 returns an S3 store for the bucket cfg describes, after checking that the bucket
// exists. It returns an error if cfg is incomplete, the server cannot be reached or
// refuses the credentials, or the bucket does not exist. Errors never contain the
// secret key.
func NewS3(ctx context.Context, cfg config.S3) (*S3, error) {
	if cfg.Endpoint == "" || cfg.Bucket == "" {
		return nil, errors.New("s3 media storage needs an endpoint and a bucket")
	}
	opts := &minio.Options{
		Creds:  credentials.NewStaticV4(cfg.AccessKeyID, cfg.SecretAccessKey, ""),
		Secure: cfg.Secure,
		Region: cfg.Region,
	}
	if cfg.PathStyle {
		opts.BucketLookup = minio.BucketLookupPath
	}
	client, err := minio.New(cfg.Endpoint, opts)
	if err != nil {
		return nil, fmt.Errorf("creating s3 client for %s: %w", cfg.Endpoint, err)
	}
	ok, err := client.BucketExists(ctx, cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("checking s3 bucket %s at %s: %w", cfg.Bucket, cfg.Endpoint, err)
	}
	if !ok {
		return nil, fmt.Errorf("s3 bucket %s at %s does not exist", cfg.Bucket, cfg.Endpoint)
	}
	return &S3{client: client, bucket: cfg.Bucket, prefix: cfg.Prefix}, nil
}

// name returns the object name of the blob key.
func (s *S3) name(key string) string { return s.prefix + key }

// Put implements Store.Put. It stats the object first and does nothing if it exists;
// otherwise it uploads exactly size bytes, hashing them on the way, and removes the
// object again if the content turns out not to match (ErrMismatch, wrapped). It returns
// ErrBadKey (wrapped), or the error that stopped the upload.
//
// A seekable r (an *os.File, a *bytes.Reader) is better: its length is checked before
// anything is sent, and minio-go can retry a failed request by rewinding it; a plain
// stream gets one attempt. The hash is checked after the upload, so for a moment a bad
// object is visible under key; callers hash the content to choose the key, so that is
// a bug's path only.
func (s *S3) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("storing blob %s: negative size %d", key, size)
	}
	name := s.name(key)
	if _, err := s.client.StatObject(ctx, s.bucket, name, minio.StatObjectOptions{}); err == nil {
		return nil
	} else if !notFound(err) {
		return fmt.Errorf("checking blob %s: %w", key, err)
	}

	body, up, err := newUpload(ctx, r, size)
	if err != nil {
		return fmt.Errorf("uploading blob %s: %w", key, err)
	}
	_, err = s.client.PutObject(ctx, s.bucket, name, body, size,
		minio.PutObjectOptions{ContentType: "application/octet-stream"})
	if err != nil {
		if up.n != size {
			err = fmt.Errorf("%w (%w)", checkSize(up.n, size), err)
		}
		return fmt.Errorf("uploading blob %s: %w", key, err)
	}
	mismatch := checkSize(up.n, size)
	if mismatch == nil {
		// minio-go was given exactly size bytes; one more means a long read.
		if n, _ := io.ReadFull(r, make([]byte, 1)); n > 0 {
			mismatch = checkSize(size+1, size)
		}
	}
	if got := hex.EncodeToString(up.h.Sum(nil)); mismatch == nil && got != key {
		mismatch = fmt.Errorf("%w: content has SHA-256 %s", ErrMismatch, got)
	}
	if mismatch != nil {
		// The caller's context may be done; the bad object must still go.
		rctx := context.WithoutCancel(ctx)
		if err := s.client.RemoveObject(rctx, s.bucket, name, minio.RemoveObjectOptions{}); err != nil {
			return fmt.Errorf("uploading blob %s: %w; removing it again: %w", key, mismatch, err)
		}
		return fmt.Errorf("uploading blob %s: %w", key, mismatch)
	}
	return nil
}

// Open implements Store.Open; the content streams from the server as it is read. It
// returns ErrBadKey or ErrNotFound (wrapped), or the error the server answered.
func (s *S3) Open(ctx context.Context, key string) (io.ReadCloser, int64, error) {
	if err := checkKey(key); err != nil {
		return nil, 0, err
	}
	obj, err := s.client.GetObject(ctx, s.bucket, s.name(key), minio.GetObjectOptions{})
	if err != nil {
		return nil, 0, fmt.Errorf("opening blob %s: %w", key, err)
	}
	info, err := obj.Stat()
	if err != nil {
		obj.Close()
		if notFound(err) {
			return nil, 0, fmt.Errorf("opening blob %s: %w", key, ErrNotFound)
		}
		return nil, 0, fmt.Errorf("opening blob %s: %w", key, err)
	}
	return obj, info.Size, nil
}

// Delete implements Store.Delete. It returns ErrBadKey (wrapped), or the error the
// server answered.
func (s *S3) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	err := s.client.RemoveObject(ctx, s.bucket, s.name(key), minio.RemoveObjectOptions{})
	if err != nil && !notFound(err) {
		return fmt.Errorf("deleting blob %s: %w", key, err)
	}
	return nil
}

// notFound reports whether err is the server saying the object does not exist.
func notFound(err error) bool {
	resp := minio.ToErrorResponse(err)
	return resp.Code == minio.NoSuchKey || (resp.StatusCode == http.StatusNotFound && resp.Code != minio.NoSuchBucket)
}

// upload is what minio-go reads a blob's content through: at most size bytes of r,
// hashed and counted as they go.
type upload struct {
	ctx  context.Context
	r    io.Reader
	size int64
	n    int64
	h    hash.Hash
}

// seekableUpload is an upload of a seekable reader. minio-go retries a failed request
// only when it can rewind the body, so a caller's *os.File or *bytes.Reader keeps that
// ability; rewinding starts the hash and count afresh.
type seekableUpload struct {
	*upload
	seeker io.Seeker
	start  int64
}

// newUpload returns the reader to give minio-go for r, and the upload whose count and
// hash follow what was read through it. A seekable r whose length from its position is
// not size is an ErrMismatch (wrapped) at once, before anything is uploaded; one that
// fails to seek (a pipe) is read as a stream.
func newUpload(ctx context.Context, r io.Reader, size int64) (io.Reader, *upload, error) {
	up := &upload{ctx: ctx, r: r, size: size, h: sha256.New()}
	s, ok := r.(io.Seeker)
	if !ok {
		return up, up, nil
	}
	start, err := s.Seek(0, io.SeekCurrent)
	if err != nil {
		return up, up, nil
	}
	end, err := s.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, nil, fmt.Errorf("finding length of content: %w", err)
	}
	if _, err := s.Seek(start, io.SeekStart); err != nil {
		return nil, nil, fmt.Errorf("finding length of content: %w", err)
	}
	if err := checkSize(min(end-start, size+1), size); err != nil {
		return nil, nil, err
	}
	return &seekableUpload{upload: up, seeker: s, start: start}, up, nil
}

func (u *upload) Read(p []byte) (int, error) {
	if err := u.ctx.Err(); err != nil {
		return 0, err
	}
	if u.n >= u.size {
		return 0, io.EOF
	}
	if rest := u.size - u.n; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := u.r.Read(p)
	u.h.Write(p[:n])
	u.n += int64(n)
	return n, err
}

// Seek supports only what retries need: rewinding to the start, and asking for the
// position.
func (u *seekableUpload) Seek(offset int64, whence int) (int64, error) {
	switch {
	case offset == 0 && whence == io.SeekCurrent:
		return u.n, nil
	case offset == 0 && whence == io.SeekStart:
		if _, err := u.seeker.Seek(u.start, io.SeekStart); err != nil {
			return 0, err
		}
		u.n = 0
		u.h.Reset()
		return 0, nil
	}
	return 0, fmt.Errorf("unsupported seek to %d from %d", offset, whence)
}
