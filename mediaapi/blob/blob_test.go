package blob

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/myelin-chat/myelin/internal/config"
)

// keyOf returns the key of content.
func keyOf(content []byte) string {
	sum := sha256.Sum256(content)
	return hex.EncodeToString(sum[:])
}

// backend is one Store under test, with a way to list what it holds.
type backend struct {
	name  string
	store Store
	// leftovers lists every file or object the store holds, temporary ones included.
	leftovers func(t *testing.T) []string
}

// backends returns the stores the suite runs against: a Disk in a temporary directory
// and an S3 over a real S3 server (versitygw) started by the test.
func backends(t *testing.T) []backend {
	dir := t.TempDir()
	d, err := NewDisk(dir)
	if err != nil {
		t.Fatalf("NewDisk: %v", err)
	}
	diskFiles := func(t *testing.T) []string {
		var files []string
		err := filepath.WalkDir(dir, func(path string, e os.DirEntry, err error) error {
			if err == nil && !e.IsDir() {
				files = append(files, strings.TrimPrefix(path, dir))
			}
			return err
		})
		if err != nil {
			t.Fatalf("listing %s: %v", dir, err)
		}
		return files
	}

	srv := startS3(t)
	cfg := srv.config("blobs", "media/")
	if err := srv.client.MakeBucket(context.Background(), cfg.Bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("MakeBucket: %v", err)
	}
	s, err := NewS3(context.Background(), cfg)
	if err != nil {
		t.Fatalf("NewS3: %v", err)
	}
	s3Objects := func(t *testing.T) []string {
		var names []string
		for o := range srv.client.ListObjects(context.Background(), cfg.Bucket, minio.ListObjectsOptions{Recursive: true}) {
			if o.Err != nil {
				t.Fatalf("listing bucket: %v", o.Err)
			}
			names = append(names, o.Key)
		}
		// Unfinished multipart uploads hold data too.
		for u := range srv.client.ListIncompleteUploads(context.Background(), cfg.Bucket, "", true) {
			if u.Err != nil {
				t.Fatalf("listing uploads: %v", u.Err)
			}
			names = append(names, "upload:"+u.Key)
		}
		return names
	}
	return []backend{
		{name: "disk", store: d, leftovers: diskFiles},
		{name: "s3", store: s, leftovers: s3Objects},
	}
}

// errReader fails after yielding its content.
type errReader struct{ r io.Reader }

func (e errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		return n, errors.New("connection reset")
	}
	return n, err
}

// stream hides its reader's other methods (Seek, ReadAt, WriteTo), as a network body
// would.
type stream struct{ r io.Reader }

func (s stream) Read(p []byte) (int, error) { return s.r.Read(p) }

func TestStore(t *testing.T) {
	ctx := context.Background()
	hello := []byte("hello, world\n")
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	huge := bytes.Repeat(big, 17)
	empty := []byte{}
	other := []byte("something else\n")

	tests := []struct {
		name string
		key  string
		// r returns the content to put.
		r    func() io.Reader
		size int64
		// wantErr is the error Put must return (nil for success).
		wantErr error
		// wantAnyErr accepts any error (the reader itself failed).
		wantAnyErr bool
		// want is the content Open must return afterwards; nil means ErrNotFound.
		want []byte
	}{
		{name: "round trip", key: keyOf(hello), r: func() io.Reader { return bytes.NewReader(hello) }, size: int64(len(hello)), want: hello},
		{name: "empty blob", key: keyOf(empty), r: func() io.Reader { return bytes.NewReader(empty) }, size: 0, want: empty},
		{name: "1 MiB", key: keyOf(big), r: func() io.Reader { return bytes.NewReader(big) }, size: int64(len(big)), want: big},
		{name: "short read", key: keyOf(hello), r: func() io.Reader { return bytes.NewReader(hello[:5]) }, size: int64(len(hello)), wantErr: ErrMismatch},
		{name: "long read", key: keyOf(hello[:len(hello)-1]), r: func() io.Reader { return bytes.NewReader(hello) }, size: int64(len(hello)) - 1, wantErr: ErrMismatch},
		{name: "hash mismatch", key: keyOf(hello), r: func() io.Reader { return bytes.NewReader(other) }, size: int64(len(other)), wantErr: ErrMismatch},
		{name: "stream round trip", key: keyOf(big), r: func() io.Reader { return stream{bytes.NewReader(big)} }, size: int64(len(big)), want: big},
		{name: "stream short read", key: keyOf(hello), r: func() io.Reader { return stream{bytes.NewReader(hello[:5])} }, size: int64(len(hello)), wantErr: ErrMismatch},
		// Over minio-go's 16 MiB part size, so a multipart upload.
		{name: "stream 17 MiB", key: keyOf(huge), r: func() io.Reader { return stream{bytes.NewReader(huge)} }, size: int64(len(huge)), want: huge},
		{name: "stream 17 MiB long read", key: keyOf(huge[:len(huge)-1]), r: func() io.Reader { return stream{bytes.NewReader(huge)} }, size: int64(len(huge)) - 1, wantErr: ErrMismatch},
		{name: "stream long read", key: keyOf(hello[:len(hello)-1]), r: func() io.Reader { return stream{bytes.NewReader(hello)} }, size: int64(len(hello)) - 1, wantErr: ErrMismatch},
		{name: "stream hash mismatch", key: keyOf(hello), r: func() io.Reader { return stream{bytes.NewReader(other)} }, size: int64(len(other)), wantErr: ErrMismatch},
		{name: "reader fails", key: keyOf(hello), r: func() io.Reader { return errReader{bytes.NewReader(hello[:3])} }, size: int64(len(hello)), wantAnyErr: true},
		{name: "upper-case key", key: strings.ToUpper(keyOf(hello)), r: func() io.Reader { return bytes.NewReader(hello) }, size: int64(len(hello)), wantErr: ErrBadKey},
		{name: "short key", key: keyOf(hello)[:63], r: func() io.Reader { return bytes.NewReader(hello) }, size: int64(len(hello)), wantErr: ErrBadKey},
		{name: "path in key", key: "../" + keyOf(hello)[3:], r: func() io.Reader { return bytes.NewReader(hello) }, size: int64(len(hello)), wantErr: ErrBadKey},
	}

	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					err := b.store.Put(ctx, tt.key, tt.r(), tt.size)
					switch {
					case tt.wantAnyErr:
						if err == nil {
							t.Fatalf("Put: got no error, want one")
						}
					case !errors.Is(err, tt.wantErr):
						t.Fatalf("Put: got error %v, want %v", err, tt.wantErr)
					}
					if errors.Is(tt.wantErr, ErrBadKey) {
						if _, _, err := b.store.Open(ctx, tt.key); !errors.Is(err, ErrBadKey) {
							t.Errorf("Open: got error %v, want %v", err, ErrBadKey)
						}
						if err := b.store.Delete(ctx, tt.key); !errors.Is(err, ErrBadKey) {
							t.Errorf("Delete: got error %v, want %v", err, ErrBadKey)
						}
						return
					}

					rc, size, err := b.store.Open(ctx, tt.key)
					if tt.want == nil {
						if !errors.Is(err, ErrNotFound) {
							t.Errorf("Open after failed Put: got error %v, want %v", err, ErrNotFound)
						}
						if got := b.leftovers(t); len(got) != 0 {
							t.Errorf("after failed Put the store holds %q, want nothing", got)
						}
						return
					}
					if err != nil {
						t.Fatalf("Open: %v", err)
					}
					got, err := io.ReadAll(rc)
					rc.Close()
					if err != nil {
						t.Fatalf("reading blob: %v", err)
					}
					if size != int64(len(tt.want)) || !bytes.Equal(got, tt.want) {
						t.Errorf("Open: got %d bytes (size %d), want %d bytes", len(got), size, len(tt.want))
					}

					// Putting it again succeeds without reading the (now wrong) content.
					if err := b.store.Put(ctx, tt.key, strings.NewReader("not read"), tt.size); err != nil {
						t.Errorf("Put of an existing key: %v", err)
					}
					if got := b.leftovers(t); len(got) != 1 {
						t.Errorf("after Put the store holds %q, want one blob", got)
					}

					for i := range 2 { // Delete is idempotent.
						if err := b.store.Delete(ctx, tt.key); err != nil {
							t.Fatalf("Delete #%d: %v", i+1, err)
						}
					}
					if _, _, err := b.store.Open(ctx, tt.key); !errors.Is(err, ErrNotFound) {
						t.Errorf("Open after Delete: got error %v, want %v", err, ErrNotFound)
					}
					if got := b.leftovers(t); len(got) != 0 {
						t.Errorf("after Delete the store holds %q, want nothing", got)
					}
				})
			}
		})
	}
}

func TestDiskLayout(t *testing.T) {
	dir := t.TempDir()
	d, err := NewDisk(dir)
	if err != nil {
		t.Fatalf("NewDisk: %v", err)
	}
	content := []byte("layout")
	key := keyOf(content)
	if err := d.Put(context.Background(), key, bytes.NewReader(content), int64(len(content))); err != nil {
		t.Fatalf("Put: %v", err)
	}
	path := filepath.Join(dir, key[:2], key[2:4], key)
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, content) {
		t.Errorf("reading %s: got %q, %v; want %q", path, got, err, content)
	}
}

func TestNewS3(t *testing.T) {
	srv := startS3(t)
	if err := srv.client.MakeBucket(context.Background(), "present", minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("MakeBucket: %v", err)
	}
	tests := []struct {
		name    string
		cfg     func(c *config.S3)
		wantErr bool
	}{
		{name: "bucket exists", cfg: func(c *config.S3) {}},
		{name: "bucket missing", cfg: func(c *config.S3) { c.Bucket = "absent" }, wantErr: true},
		{name: "wrong secret", cfg: func(c *config.S3) { c.SecretAccessKey = "wrong-secret-key" }, wantErr: true},
		{name: "no bucket", cfg: func(c *config.S3) { c.Bucket = "" }, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := srv.config("present", "")
			tt.cfg(&cfg)
			_, err := NewS3(context.Background(), cfg)
			if (err != nil) != tt.wantErr {
				t.Fatalf("NewS3: got error %v, want error: %v", err, tt.wantErr)
			}
			t.Logf("NewS3: %v", err)
			if err != nil && strings.Contains(err.Error(), testSecretKey) {
				t.Errorf("NewS3 error %q contains the secret key", err)
			}
		})
	}
}

func TestNew(t *testing.T) {
	dir := t.TempDir()
	var cfg config.Config
	cfg.MediaAPI.BasePath = dir
	cfg.Myelin.Media.Storage = "disk"
	s, err := New(context.Background(), &cfg)
	if err != nil {
		t.Fatalf("New(disk): %v", err)
	}
	if _, ok := s.(*Disk); !ok {
		t.Errorf("New(disk): got %T, want *Disk", s)
	}
	cfg.Myelin.Media.Storage = "tape"
	if _, err := New(context.Background(), &cfg); err == nil {
		t.Errorf("New(tape): got no error, want one")
	}
}
