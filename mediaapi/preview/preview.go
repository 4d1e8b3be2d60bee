// Package preview builds URL previews (OpenGraph) for /preview_url, refusing private
// addresses unless configured. Only mediaapi imports it.
package preview

import (
	"bytes"
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"mime"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/myelin-chat/myelin/internal/config"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/netguard"
)

const (
	// maxRedirects is how many redirects one fetch follows.
	maxRedirects = 5
	// cacheEntries bounds the in-memory preview cache; the least recently used goes first.
	cacheEntries = 1000
	// defaultMaxBytes and defaultTimeout stand in for a zero MaxBytes or Timeout.
	defaultMaxBytes = 10 << 20
	defaultTimeout  = 10 * time.Second
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

// Previewer fetches pages and builds their previews. It keeps fresh previews in memory
// and fetches a URL wanted by several requests at once only once. It is safe for
// concurrent use.
type Previewer struct {
	cfg    config.URLPreviews
	images ImageStore
	ua     string
	log    *slog.Logger
	client *http.Client
	now    func() time.Time

	mu      sync.Mutex
	cache   map[string]*list.Element // of *entry
	lru     *list.List               // most recently used at the front
	flights map[string]*flight
}

// entry is one cached preview.
type entry struct {
	key     string
	og      map[string]any
	expires time.Time
}

// flight is a fetch in progress that later requests for the same URL wait on.
type flight struct {
	done    chan struct{}
	waiters int // requests waiting on it, guarded by Previewer.mu
	og      map[string]any
	err     error
}

// New returns a Previewer that fetches with userAgent, connecting only to addresses
// cfg.AllowNetworks and cfg.DenyNetworks permit (checked after DNS on every connection,
// redirects included; no proxy is used). A zero cfg.MaxBytes or cfg.Timeout takes the
// default (10 MiB, 10 s); a zero cfg.CacheTTL turns the cache off. It returns an error if a
// network does not parse.
func New(cfg config.URLPreviews, images ImageStore, userAgent string, log *slog.Logger) (*Previewer, error) {
	guard, err := netguard.New(cfg.AllowNetworks, cfg.DenyNetworks)
	if err != nil {
		return nil, fmt.Errorf("url_previews: %w", err)
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = defaultMaxBytes
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = defaultTimeout
	}
	if log == nil {
		log = slog.Default()
	}
	dialer := &net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second, ControlContext: guard.Control}
	tr := &http.Transport{
		// No Proxy: a proxy would be the address checked instead of the destination.
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   cfg.Timeout,
		MaxIdleConns:          64,
		MaxIdleConnsPerHost:   2,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
		ResponseHeaderTimeout: cfg.Timeout,
	}
	client := &http.Client{
		Transport: tr,
		Timeout:   cfg.Timeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) > maxRedirects {
				return fmt.Errorf("stopped after %d redirects", maxRedirects)
			}
			if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
				return fmt.Errorf("redirect to unsupported scheme %q", req.URL.Scheme)
			}
			return nil
		},
	}
	return &Previewer{
		cfg:     cfg,
		images:  images,
		ua:      userAgent,
		log:     log,
		client:  client,
		now:     time.Now,
		cache:   map[string]*list.Element{},
		lru:     list.New(),
		flights: map[string]*flight{},
	}, nil
}

// Preview returns the OpenGraph object for rawURL (og:title, og:description, og:image as an
// mxc:// URI with og:image:width/height/type and matrix:image:size, og:type, og:url …), from
// the cache when fresh; an image URL is stored as media owned by userID, and a page that is
// neither HTML nor an image previews as an empty object. ts (ms, 0 = now) is the preferred
// point in time, which the newest preview serves. Errors are *matrix.Error: 400
// M_MISSING_PARAM / M_INVALID_PARAM for a missing or unsupported URL, 403 M_FORBIDDEN when
// an address on the way (after DNS, every redirect too) is denied, 502 M_UNKNOWN when the
// fetch fails, times out or the content is larger than MaxBytes.
func (p *Previewer) Preview(ctx context.Context, userID, rawURL string, ts int64) (map[string]any, error) {
	if rawURL == "" {
		return nil, matrix.MissingParam("missing url")
	}
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return nil, matrix.InvalidParam("url must be an absolute http or https URL")
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("previewing %s: %w", rawURL, err)
	}
	u.Fragment, u.RawFragment = "", ""
	key := u.String()

	p.mu.Lock()
	if el, ok := p.cache[key]; ok {
		e := el.Value.(*entry)
		if p.now().Before(e.expires) {
			p.lru.MoveToFront(el)
			p.mu.Unlock()
			return maps.Clone(e.og), nil
		}
		p.lru.Remove(el)
		delete(p.cache, key)
	}
	f, ok := p.flights[key]
	if !ok {
		f = &flight{done: make(chan struct{})}
		p.flights[key] = f
		// The fetch outlives a caller who gives up, so that the others waiting on it
		// (and the cache) still get its result; cfg.Timeout bounds it.
		go p.run(context.WithoutCancel(ctx), userID, u, key, f)
	}
	f.waiters++
	p.mu.Unlock()

	select {
	case <-f.done:
	case <-ctx.Done():
		return nil, fmt.Errorf("previewing %s: %w", key, ctx.Err())
	}
	if f.err != nil {
		return nil, f.err
	}
	return maps.Clone(f.og), nil
}

// run builds the preview of u for flight f, caches it if it succeeded, and wakes f's waiters.
func (p *Previewer) run(ctx context.Context, userID string, u *url.URL, key string, f *flight) {
	og, err := p.build(ctx, userID, u)
	if err != nil {
		p.log.Info("url preview failed", "url", key, "error", err)
	}
	p.mu.Lock()
	f.og, f.err = og, err
	delete(p.flights, key)
	if err == nil && p.cfg.CacheTTL > 0 {
		p.cache[key] = p.lru.PushFront(&entry{key: key, og: og, expires: p.now().Add(p.cfg.CacheTTL)})
		for p.lru.Len() > cacheEntries {
			old := p.lru.Back()
			p.lru.Remove(old)
			delete(p.cache, old.Value.(*entry).key)
		}
	}
	p.mu.Unlock()
	close(f.done)
}

// build fetches u and makes its preview.
func (p *Previewer) build(ctx context.Context, userID string, u *url.URL) (map[string]any, error) {
	page, err := p.fetch(ctx, u.String())
	if err != nil {
		return nil, err
	}
	switch {
	case isImage(page.mediaType):
		og, err := p.storeImage(ctx, userID, page)
		if err != nil {
			return nil, err
		}
		// As Synapse: an image's description is the file name it was served under.
		if page.filename != "" {
			og["og:description"] = page.filename
		}
		return og, nil
	case isHTML(page.mediaType):
		og := parseHTML(page.body, page.contentType)
		if src, ok := og["og:image"].(string); ok {
			delete(og, "og:image")
			if err := p.addImage(ctx, userID, page.url, src, og); err != nil {
				p.log.Info("url preview: no image", "url", u.String(), "image", src, "error", err)
			}
		}
		return og, nil
	default:
		return map[string]any{}, nil
	}
}

// addImage fetches the page's image src (relative to base), stores it and adds its og:image
// fields to og.
func (p *Previewer) addImage(ctx context.Context, userID string, base *url.URL, src string, og map[string]any) error {
	ref, err := url.Parse(strings.TrimSpace(src))
	if err != nil {
		return fmt.Errorf("parsing image URL: %w", err)
	}
	abs := base.ResolveReference(ref)
	if (abs.Scheme != "http" && abs.Scheme != "https") || abs.Hostname() == "" {
		return fmt.Errorf("unsupported image URL %q", abs.Redacted())
	}
	img, err := p.fetch(ctx, abs.String())
	if err != nil {
		return err
	}
	if !isImage(img.mediaType) {
		return fmt.Errorf("image URL served %q", img.mediaType)
	}
	fields, err := p.storeImage(ctx, userID, img)
	if err != nil {
		return err
	}
	maps.Copy(og, fields)
	return nil
}

// storeImage stores a fetched image and returns its og:image fields.
func (p *Previewer) storeImage(ctx context.Context, userID string, img *fetched) (map[string]any, error) {
	st, err := p.images.StoreImage(ctx, userID, img.mediaType, bytes.NewReader(img.body))
	if err != nil {
		return nil, fmt.Errorf("storing image: %w", err)
	}
	ct := st.ContentType
	if ct == "" {
		ct = img.mediaType
	}
	size := st.Size
	if size == 0 {
		size = int64(len(img.body))
	}
	og := map[string]any{
		"og:image":          st.MXC,
		"og:image:type":     ct,
		"matrix:image:size": size,
	}
	if st.Width > 0 && st.Height > 0 {
		og["og:image:width"] = st.Width
		og["og:image:height"] = st.Height
	}
	return og, nil
}

// fetched is a downloaded response.
type fetched struct {
	url         *url.URL // after redirects
	body        []byte
	contentType string // the header as sent (or sniffed), for the charset
	mediaType   string // lowercased, without parameters
	filename    string // from Content-Disposition
}

// fetch GETs rawURL through the guarded client, reading at most cfg.MaxBytes.
func (p *Previewer) fetch(ctx context.Context, rawURL string) (*fetched, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, matrix.InvalidParam("invalid url")
	}
	req.Header.Set("User-Agent", p.ua)
	req.Header.Set("Accept", "text/html,application/xhtml+xml,image/*;q=0.9,*/*;q=0.8")
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, fetchError(err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode/100 != 2 {
		return nil, matrix.Errorf(http.StatusBadGateway, matrix.CodeUnknown, "Failed to download content: got status %d", resp.StatusCode)
	}
	if resp.ContentLength > p.cfg.MaxBytes {
		return nil, tooLarge(p.cfg.MaxBytes)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, p.cfg.MaxBytes+1))
	if err != nil {
		return nil, fetchError(err)
	}
	if int64(len(body)) > p.cfg.MaxBytes {
		return nil, tooLarge(p.cfg.MaxBytes)
	}
	f := &fetched{url: resp.Request.URL, body: body, contentType: resp.Header.Get("Content-Type")}
	if f.contentType == "" {
		f.contentType = http.DetectContentType(body)
	}
	if mt, _, err := mime.ParseMediaType(f.contentType); err == nil {
		f.mediaType = strings.ToLower(mt)
	}
	if _, params, err := mime.ParseMediaType(resp.Header.Get("Content-Disposition")); err == nil {
		f.filename = path.Base(params["filename"])
		if f.filename == "." || f.filename == "/" {
			f.filename = ""
		}
	}
	return f, nil
}

// fetchError maps a failed request to what the client sees: 403 for a denied address,
// 502 otherwise (as Synapse).
func fetchError(err error) error {
	if errors.Is(err, netguard.ErrDenied) {
		return fmt.Errorf("%w: %w", matrix.Forbidden("IP address blocked"), err)
	}
	me := matrix.Errorf(http.StatusBadGateway, matrix.CodeUnknown, "Failed to download content")
	return fmt.Errorf("%w: %w", me, err)
}

func tooLarge(limit int64) error {
	return matrix.Errorf(http.StatusBadGateway, matrix.CodeUnknown, "Requested content is too large > %d bytes", limit)
}

func isImage(mediaType string) bool { return strings.HasPrefix(mediaType, "image/") }

func isHTML(mediaType string) bool {
	return mediaType == "text/html" || mediaType == "application/xhtml+xml"
}
