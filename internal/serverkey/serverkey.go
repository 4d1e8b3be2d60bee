// Package serverkey reads and writes the server's ed25519 signing key in Dendrite's
// matrix_key.pem format, so a Dendrite operator's key keeps working. It imports nothing of
// Myelin's.
package serverkey

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

const pemType = "MATRIX PRIVATE KEY"

// Key is a signing key and its ID ("ed25519:…").
type Key struct {
	ID      string
	Private ed25519.PrivateKey
}

// LogValue keeps the private key out of logs.
func (k Key) String() string { return "serverkey(" + k.ID + ")" }

// Public returns the public half.
func (k Key) Public() ed25519.PublicKey { return k.Private.Public().(ed25519.PublicKey) }

// Load reads the key at path.
func Load(path string) (Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Key{}, err
	}
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return Key{}, fmt.Errorf("%s holds no %s block", path, pemType)
		}
		if blk.Type != pemType {
			continue
		}
		id := blk.Headers["Key-ID"]
		if !strings.HasPrefix(id, "ed25519:") {
			return Key{}, fmt.Errorf("%s: Key-ID %q is not an ed25519 key ID", path, id)
		}
		if len(blk.Bytes) != ed25519.SeedSize {
			return Key{}, fmt.Errorf("%s: key seed is %d bytes, want %d", path, len(blk.Bytes), ed25519.SeedSize)
		}
		return Key{ID: id, Private: ed25519.NewKeyFromSeed(blk.Bytes)}, nil
	}
}

// Generate writes a new random key to path (mode 0600), refusing to overwrite a file.
func Generate(path string) (Key, error) {
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return Key{}, err
	}
	idBytes := make([]byte, 4)
	_, _ = rand.Read(idBytes)
	id := "ed25519:" + strings.TrimRight(base64.RawURLEncoding.EncodeToString(idBytes), "=")
	id = strings.NewReplacer("-", "a", "_", "b").Replace(id)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return Key{}, fmt.Errorf("creating key folder: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return Key{}, fmt.Errorf("creating %s: %w", path, err)
	}
	defer f.Close()
	if err := pem.Encode(f, &pem.Block{Type: pemType, Headers: map[string]string{"Key-ID": id}, Bytes: seed}); err != nil {
		return Key{}, fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return Key{}, err
	}
	return Key{ID: id, Private: ed25519.NewKeyFromSeed(seed)}, nil
}

// LoadOrGenerate loads the key at path, creating it first if there is none.
func LoadOrGenerate(path string) (k Key, created bool, err error) {
	k, err = Load(path)
	if errors.Is(err, os.ErrNotExist) {
		k, err = Generate(path)
		return k, err == nil, err
	}
	return k, false, err
}
