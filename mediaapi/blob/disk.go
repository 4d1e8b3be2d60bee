package blob

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Disk is a Store in a local directory. A blob lives at dir/ab/cd/abcd… (its key's first
// two and next two hex characters name the directories), so no directory grows past
// 65,536 entries of blobs. Writes go to dir/tmp first and are renamed into place, so a
// reader never sees a partial blob; after a crash, dir/tmp may hold stale files, which
// are safe to delete. Disk is safe for concurrent use, also by several processes
// sharing dir.
type Disk struct {
	dir string
}

// NewDisk returns a Disk keeping blobs under dir, creating dir (and dir/tmp) if needed.
// It returns an error if dir is empty or cannot be created.
func NewDisk(dir string) (*Disk, error) {
	if dir == "" {
		return nil, errors.New("media directory not set")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("resolving media directory: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o750); err != nil {
		return nil, fmt.Errorf("creating media directory: %w", err)
	}
	return &Disk{dir: dir}, nil
}

// path returns where the blob key lives; key must be valid.
func (d *Disk) path(key string) string {
	return filepath.Join(d.dir, key[0:2], key[2:4], key)
}

// Put implements Store.Put: it writes to a temporary file, checks the size and SHA-256,
// fsyncs the file, renames it into place and fsyncs the directory. It returns ErrBadKey
// or ErrMismatch (wrapped), or the I/O error that stopped it.
func (d *Disk) Put(ctx context.Context, key string, r io.Reader, size int64) (err error) {
	if err := checkKey(key); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("storing blob %s: negative size %d", key, size)
	}
	final := d.path(key)
	if _, err := os.Stat(final); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("checking blob %s: %w", key, err)
	}

	f, err := os.CreateTemp(filepath.Join(d.dir, "tmp"), key+"-*")
	if err != nil {
		return fmt.Errorf("creating temporary file for blob %s: %w", key, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()

	h := sha256.New()
	// Read one byte more than promised so that a long read is noticed.
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(ctxReader{ctx, r}, size+1))
	if err != nil {
		return fmt.Errorf("writing blob %s: %w", key, err)
	}
	if err := checkSize(n, size); err != nil {
		return fmt.Errorf("writing blob %s: %w", key, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != key {
		return fmt.Errorf("writing blob %s: %w: content has SHA-256 %s", key, ErrMismatch, got)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing blob %s: %w", key, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing blob %s: %w", key, err)
	}
	if err := mkdirSync(d.dir, key[0:2], key[2:4]); err != nil {
		return fmt.Errorf("creating directory for blob %s: %w", key, err)
	}
	// Another Put of the same key may have won the race; the rename then replaces
	// identical content, atomically.
	if err := os.Rename(f.Name(), final); err != nil {
		return fmt.Errorf("renaming blob %s into place: %w", key, err)
	}
	if err := syncDir(filepath.Dir(final)); err != nil {
		return fmt.Errorf("syncing directory of blob %s: %w", key, err)
	}
	return nil
}

// Open implements Store.Open; the content is an *os.File. It returns ErrBadKey or
// ErrNotFound (wrapped), or the I/O error that stopped it.
func (d *Disk) Open(ctx context.Context, key string) (io.ReadCloser, int64, error) {
	if err := checkKey(key); err != nil {
		return nil, 0, err
	}
	f, err := os.Open(d.path(key))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("opening blob %s: %w", key, ErrNotFound)
	} else if err != nil {
		return nil, 0, fmt.Errorf("opening blob %s: %w", key, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("opening blob %s: %w", key, err)
	}
	return f, fi.Size(), nil
}

// Delete implements Store.Delete. It returns ErrBadKey (wrapped), or the I/O error that
// stopped it. Emptied directories stay, as a concurrent Put may be about to use them.
func (d *Disk) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if err := os.Remove(d.path(key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("deleting blob %s: %w", key, err)
	}
	return nil
}

// mkdirSync creates base/elems[0]/elems[1]/… as needed, fsyncing the parent of each
// directory it creates so that the new entry survives a crash.
func mkdirSync(base string, elems ...string) error {
	dir := base
	for _, e := range elems {
		parent := dir
		dir = filepath.Join(dir, e)
		err := os.Mkdir(dir, 0o750)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return err
		}
		if err := syncDir(parent); err != nil {
			return err
		}
	}
	return nil
}

// syncDir fsyncs a directory, making renames and creations in it durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
