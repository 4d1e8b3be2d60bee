// Package mediaapi serves the content repository: uploads (direct and asynchronous),
// downloads and thumbnails on the authenticated /_matrix/client/v1/media endpoints and, when
// configured, the legacy /_matrix/media endpoints; remote media fetched over federation
// (/_matrix/federation/v1/media, multipart responses) and cached; the same federation
// endpoints served to other servers; and URL previews. Bytes live in a blob.Store under
// their SHA-256, so identical files are stored once; rows in the database name them.
// It may import federationapi/fedclient and internal packages; main constructs it.
package mediaapi

import (
	"context"
	"crypto/rand"
	"embed"
	"encoding/base64"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/fclient"

	"github.com/myelin-chat/myelin/internal/config"
	"github.com/myelin-chat/myelin/internal/netguard"
	"github.com/myelin-chat/myelin/internal/serverkey"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/mediaapi/blob"
	"github.com/myelin-chat/myelin/mediaapi/preview"
	"github.com/myelin-chat/myelin/mediaapi/thumbnail"
)

//go:embed storage/migrations/*.sql
var migrations embed.FS

// Deps is what main passes to New.
type Deps struct {
	DB    *sqldb.DB
	Blobs blob.Store
	// Authenticate returns the user ID behind a request's access token, or a *matrix.Error
	// (main adapts clientapi.Authenticate).
	Authenticate func(r *http.Request) (userID string, err error)
	// VerifyFederation checks an inbound federation request's X-Matrix signature and
	// returns the requesting server (federationapi.(*Inbound).Verify).
	VerifyFederation func(w http.ResponseWriter, r *http.Request) (origin string, err error)
	// Federation is fedclient's gmsl client, for remote downloads.
	Federation fclient.FederationClient
	// Key signs outbound federation thumbnail requests. Without it (zero), remote
	// thumbnails are made here from the fetched original.
	Key serverkey.Key
	Log *slog.Logger
}

// Service is the media repository. It is safe for concurrent use.
type Service struct {
	cfg        *config.Config
	serverName string
	db         store
	blobs      blob.Store
	auth       func(r *http.Request) (string, error)
	verify     func(w http.ResponseWriter, r *http.Request) (string, error)
	fed        fclient.FederationClient
	key        serverkey.Key
	log        *slog.Logger
	previewer  *preview.Previewer
	redirects  *http.Client // follows Location parts of remote media responses
	tmpDir     string
	sizes      []thumbnail.Size
	generators chan struct{} // one token per running thumbnail generation
	flights    flights
	waiters    waiters
	now        func() time.Time

	bgCtx  context.Context
	bgStop context.CancelFunc
	bg     sync.WaitGroup
}

// New runs mediaapi's migrations and returns the service. It returns an error for a bad
// network list or a temporary folder it cannot create.
func New(cfg *config.Config, d Deps) (*Service, error) {
	sub, err := fs.Sub(migrations, "storage/migrations")
	if err != nil {
		return nil, err
	}
	if err := d.DB.Migrate(context.Background(), "mediaapi", sub); err != nil {
		return nil, fmt.Errorf("migrating mediaapi: %w", err)
	}
	if d.Log == nil {
		d.Log = slog.Default()
	}
	s := &Service{
		cfg: cfg, serverName: cfg.Global.ServerName, db: store{d.DB}, blobs: d.Blobs,
		auth: d.Authenticate, verify: d.VerifyFederation, fed: d.Federation, key: d.Key, log: d.Log,
		now: time.Now,
	}
	s.bgCtx, s.bgStop = context.WithCancel(context.Background())
	s.flights.bg, s.flights.stop = &s.bg, s.bgCtx
	n := cfg.MediaAPI.MaxThumbnailGenerators
	if n <= 0 {
		n = 1
	}
	s.generators = make(chan struct{}, n)
	for _, ts := range cfg.MediaAPI.ThumbnailSizes {
		s.sizes = append(s.sizes, thumbnail.Size{Width: ts.Width, Height: ts.Height, Method: thumbnail.Method(ts.Method)})
	}
	s.tmpDir = os.TempDir()
	if cfg.MediaAPI.BasePath != "" {
		s.tmpDir = filepath.Join(cfg.MediaAPI.BasePath, "tmp")
		if err := os.MkdirAll(s.tmpDir, 0o700); err != nil {
			return nil, fmt.Errorf("creating media temporary folder: %w", err)
		}
	}
	guard, err := netguard.New(cfg.FederationAPI.AllowNetworks, cfg.FederationAPI.DenyNetworks)
	if err != nil {
		return nil, fmt.Errorf("media redirect network policy: %w", err)
	}
	s.redirects = newRedirectClient(guard, cfg.FederationAPI.DisableTLSValidation)
	if p := cfg.Myelin.Media.URLPreviews; p.Enabled {
		s.previewer, err = preview.New(p, s, "Myelin", d.Log.With("part", "preview"))
		if err != nil {
			return nil, fmt.Errorf("creating URL previewer: %w", err)
		}
	}
	s.bg.Add(1)
	go s.sweepExpired(time.Hour)
	return s, nil
}

// sweepExpired forgets expired media ID reservations every interval until Close, so IDs
// that were never uploaded to do not pile up.
func (s *Service) sweepExpired(interval time.Duration) {
	defer s.bg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-s.bgCtx.Done():
			return
		case <-t.C:
			n, err := s.db.deleteExpiredPending(s.bgCtx, s.now().UnixMilli())
			if err != nil && s.bgCtx.Err() == nil {
				s.log.Warn("forgetting expired media IDs failed", "err", err)
			} else if n > 0 {
				s.log.Debug("forgot expired media IDs", "count", n)
			}
		}
	}
}

// Close stops background work (thumbnail generation, coalesced fetches, the sweep of
// expired media IDs) and waits for it to end.
func (s *Service) Close() {
	s.bgStop()
	s.bg.Wait()
}

// maxSize is the upload and remote download limit in bytes (0: none).
func (s *Service) maxSize() int64 { return s.cfg.MediaAPI.MaxFileSizeBytes }

// newMediaID returns a random, URL-safe media ID of 24 characters.
func newMediaID() string {
	var b [18]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// validMediaID reports whether id holds only the characters the spec allows in media IDs.
func validMediaID(id string) bool {
	if id == "" || len(id) > 255 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// mxc returns the mxc:// URI of (origin, id).
func mxc(origin, id string) string { return "mxc://" + origin + "/" + id }

// flights coalesces concurrent identical work (a remote fetch, a thumbnail) into one call.
type flights struct {
	mu    sync.Mutex
	calls map[string]*flight
	// bg counts the calls running, so that Close waits for them; stop, when done, cancels
	// them. Both are the Service's.
	bg   *sync.WaitGroup
	stop context.Context
}

type flight struct {
	done chan struct{}
	val  any
	err  error
}

// do runs fn once for concurrent callers with the same key; all get its result. fn runs
// detached from any one caller's cancellation, so one caller leaving does not fail the rest;
// Close cancels it and waits for it.
func (f *flights) do(ctx context.Context, key string, fn func(ctx context.Context) (any, error)) (any, error) {
	f.mu.Lock()
	if f.calls == nil {
		f.calls = map[string]*flight{}
	}
	c, ok := f.calls[key]
	if !ok {
		c = &flight{done: make(chan struct{})}
		f.calls[key] = c
		f.bg.Add(1)
		go func() {
			defer f.bg.Done()
			defer func() {
				f.mu.Lock()
				delete(f.calls, key)
				f.mu.Unlock()
				close(c.done)
			}()
			fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
			defer cancel()
			defer context.AfterFunc(f.stop, cancel)()
			c.val, c.err = fn(fctx)
		}()
	}
	f.mu.Unlock()
	select {
	case <-c.done:
		return c.val, c.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// waiters lets downloads of a pending media ID wait for its upload without polling.
type waiters struct {
	mu sync.Mutex
	m  map[string]*waiter
}

type waiter struct {
	ch chan struct{}
	n  int
}

// wait returns a channel closed when key is uploaded, and a release func to call when done.
func (w *waiters) wait(key string) (<-chan struct{}, func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m == nil {
		w.m = map[string]*waiter{}
	}
	e, ok := w.m[key]
	if !ok {
		e = &waiter{ch: make(chan struct{})}
		w.m[key] = e
	}
	e.n++
	return e.ch, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		e.n--
		if e.n == 0 && w.m[key] == e {
			delete(w.m, key)
		}
	}
}

// wake wakes everyone waiting on key.
func (w *waiters) wake(key string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if e, ok := w.m[key]; ok {
		close(e.ch)
		delete(w.m, key)
	}
}
