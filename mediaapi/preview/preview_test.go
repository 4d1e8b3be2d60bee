package preview

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/config"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/testkit"
)

// fakeImages is the ImageStore mediaapi provides: it records what it stored and reads the
// dimensions from the image header.
type fakeImages struct {
	mu     sync.Mutex
	stored []string // "userID contentType size"
}

func (f *fakeImages) StoreImage(_ context.Context, userID, contentType string, r io.Reader) (Stored, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return Stored{}, err
	}
	cfg, _, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return Stored{}, fmt.Errorf("decoding image: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stored = append(f.stored, fmt.Sprintf("%s %s %d", userID, contentType, len(data)))
	return Stored{MXC: fmt.Sprintf("mxc://test/img%d", len(f.stored)), Size: int64(len(data)), Width: cfg.Width, Height: cfg.Height, ContentType: contentType}, nil
}

func testPNG(t *testing.T, w, h int) []byte {
	t.Helper()
	var b bytes.Buffer
	testkit.Must(t, png.Encode(&b, image.NewRGBA(image.Rect(0, 0, w, h))), "encoding png")
	return b.Bytes()
}

// openConfig is the default configuration with loopback allowed, as the test servers need.
func openConfig() config.URLPreviews {
	cfg := config.Default().Myelin.Media.URLPreviews
	cfg.DenyNetworks = nil
	return cfg
}

func newPreviewer(t *testing.T, cfg config.URLPreviews) (*Previewer, *fakeImages) {
	t.Helper()
	imgs := &fakeImages{}
	p, err := New(cfg, imgs, "Myelin-test/1", slog.New(slog.DiscardHandler))
	testkit.Must(t, err, "New")
	return p, imgs
}

// resource is what a test server serves at one path.
type resource struct {
	contentType string
	body        []byte
	header      map[string]string
}

// site serves resources on 127.0.0.1 and counts the requests for each path.
type site struct {
	*httptest.Server
	mu   sync.Mutex
	hits map[string]int
}

func newSite(t *testing.T, res map[string]resource) *site {
	t.Helper()
	s := &site{hits: map[string]int{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.hits[r.URL.Path]++
		s.mu.Unlock()
		if got := r.Header.Get("User-Agent"); got != "Myelin-test/1" {
			http.Error(w, "bad user agent "+got, http.StatusBadRequest)
			return
		}
		rs, ok := res[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		for k, v := range rs.header {
			w.Header().Set(k, v)
		}
		if rs.contentType != "" {
			w.Header().Set("Content-Type", rs.contentType)
		}
		_, _ = w.Write(rs.body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *site) count(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[path]
}

// wantStatus checks that err is a *matrix.Error with the given status and code.
func wantStatus(t *testing.T, what string, err error, status int, code string) {
	t.Helper()
	me := matrix.AsError(err)
	if me == nil {
		t.Fatalf("%s: got error %v, want %d %s", what, err, status, code)
	}
	if me.Status != status || me.Code != code {
		t.Fatalf("%s: got %d %s (%v), want %d %s", what, me.Status, me.Code, err, status, code)
	}
}

// normalise round-trips og through JSON, as the client sees it.
func normalise(t *testing.T, og map[string]any) map[string]any {
	t.Helper()
	b, err := json.Marshal(og)
	testkit.Must(t, err, "marshalling preview")
	var out map[string]any
	testkit.Must(t, json.Unmarshal(b, &out), "unmarshalling preview")
	return out
}

func TestPreview(t *testing.T) {
	pngData := testPNG(t, 279, 129)
	bigPNG := testPNG(t, 64, 32)
	latin1 := []byte("<html><head><title>Caf\xe9</title></head><body></body></html>")
	longText := strings.Repeat("word ", 200)
	res := map[string]resource{
		"/og.html": {contentType: "text/html", body: []byte(`<html prefix="og: http://ogp.me/ns#"><head>
<title>The Rock (1996)</title>
<meta property="og:title" content="The Rock" />
<meta property="og:type" content="video.movie" />
<meta property="og:url" content="http://www.imdb.com/title/tt0117500/" />
<meta property="og:image" content="test.png" />
<meta property="og:site_name" content="IMDb" />
<meta property="og:description" content="A   mild-mannered chemist." />
</head><body><p>ignored</p></body></html>`)},
		"/test.png": {contentType: "image/png", body: pngData},
		"/big.png":  {contentType: "image/png", body: bigPNG},
		"/sub/fallback.html": {contentType: "text/html; charset=utf-8", body: []byte(`<html><head>
<title>  Fallback
  title </title>
<meta name="description" content="Meta description">
<meta name="twitter:image" content="/test.png">
<meta name="twitter:title" content="Twitter title">
</head><body><h1>Heading</h1></body></html>`)},
		"/heading.html": {contentType: "text/html", body: []byte(`<html><body><nav>Menu</nav>
<h2>Only a heading</h2><img src="small.png" width="5" height="5"><img src="/big.png" width="64" height="32">
<p>First paragraph.</p><script>var x = 1;</script><p>Second paragraph.</p></body></html>`)},
		"/favicon.html": {contentType: "application/xhtml+xml", body: []byte(`<html><head><title>Icon</title>
<link rel="shortcut icon" href="/test.png"></head><body><p>` + longText + `</p></body></html>`)},
		"/latin1.html":   {contentType: "text/html; charset=iso-8859-1", body: latin1},
		"/badimage.html": {contentType: "text/html", body: []byte(`<meta property="og:image" content="/missing.png"><meta property="og:title" content="T">`)},
		"/notimage.html": {contentType: "text/html", body: []byte(`<meta property="og:image" content="/og.html"><meta property="og:title" content="T">`)},
		"/picture": {contentType: "image/png", body: pngData, header: map[string]string{
			"Content-Disposition": `inline; filename="rock.png"`,
		}},
		"/doc.pdf":    {contentType: "application/pdf", body: []byte("%PDF-1.4")},
		"/empty.html": {contentType: "text/html", body: nil},
	}
	srv := newSite(t, res)
	p, imgs := newPreviewer(t, openConfig())

	tests := []struct {
		name   string
		path   string
		want   map[string]any
		absent []string
	}{
		{"OpenGraph (Complement's page)", "/og.html", map[string]any{
			"og:title": "The Rock", "og:type": "video.movie", "og:url": "http://www.imdb.com/title/tt0117500/",
			"og:site_name": "IMDb", "og:description": "A mild-mannered chemist.",
			"og:image:width": 279.0, "og:image:height": 129.0, "og:image:type": "image/png",
			"matrix:image:size": float64(len(pngData)),
		}, nil},
		{"title, meta description and twitter fallbacks", "/sub/fallback.html", map[string]any{
			"og:title": "Twitter title", "og:description": "Meta description", "og:image:width": 279.0,
		}, nil},
		{"heading, largest image and body text", "/heading.html", map[string]any{
			"og:title": "Only a heading", "og:image:width": 64.0, "og:image:height": 32.0,
			"og:description": "Only a heading\n\nFirst paragraph.\n\nSecond paragraph.",
		}, nil},
		{"favicon and summarised body", "/favicon.html", map[string]any{
			"og:title": "Icon", "og:image:height": 129.0,
		}, nil},
		{"charset from the header", "/latin1.html", map[string]any{"og:title": "Café"}, []string{"og:image"}},
		{"unreachable image is left out", "/badimage.html", map[string]any{"og:title": "T"}, []string{"og:image", "matrix:image:size"}},
		{"image URL that is not an image is left out", "/notimage.html", map[string]any{"og:title": "T"}, []string{"og:image"}},
		{"the URL is an image", "/picture", map[string]any{
			"og:description": "rock.png", "og:image:width": 279.0, "og:image:height": 129.0,
			"og:image:type": "image/png", "matrix:image:size": float64(len(pngData)),
		}, []string{"og:title"}},
		{"other content types preview as {}", "/doc.pdf", map[string]any{}, []string{"og:image", "og:title"}},
		{"empty page", "/empty.html", map[string]any{}, []string{"og:title"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			og, err := p.Preview(context.Background(), "@alice:test", srv.URL+tt.path, 0)
			testkit.Must(t, err, "Preview")
			got := normalise(t, og)
			for k, want := range tt.want {
				if got[k] != want {
					t.Errorf("%s: got %#v, want %#v (preview %v)", k, got[k], want, got)
				}
			}
			for _, k := range tt.absent {
				if v, ok := got[k]; ok {
					t.Errorf("%s: got %#v, want absent", k, v)
				}
			}
			if len(tt.want) == 0 && len(got) != 0 {
				t.Errorf("got %v, want {}", got)
			}
			if _, ok := tt.want["og:image:width"]; ok {
				if mxc, _ := got["og:image"].(string); !strings.HasPrefix(mxc, "mxc://") {
					t.Errorf("og:image: got %q, want an mxc:// URI", mxc)
				}
			}
		})
	}
	if got := imgs.stored[0]; got != fmt.Sprintf("@alice:test image/png %d", len(pngData)) {
		t.Errorf("first stored image: got %q", got)
	}
	// The favicon description was summarised at a word boundary.
	og, err := p.Preview(context.Background(), "@alice:test", srv.URL+"/favicon.html", 0)
	testkit.Must(t, err, "Preview favicon")
	desc, _ := og["og:description"].(string)
	if n := len([]rune(desc)); n > maxSummary+1 || n < minSummary || !strings.HasSuffix(desc, "word…") {
		t.Errorf("summary: got %d characters %q, want %d..%d ending in \"word…\"", n, desc, minSummary, maxSummary+1)
	}
}

func TestPreviewBadURL(t *testing.T) {
	p, _ := newPreviewer(t, openConfig())
	tests := []struct {
		url  string
		code string
	}{
		{"", matrix.CodeMissingParam},
		{"ftp://example.org/x", matrix.CodeInvalidParam},
		{"http://", matrix.CodeInvalidParam},
		{"/relative/path", matrix.CodeInvalidParam},
		{"javascript:alert(1)", matrix.CodeInvalidParam},
		{"http://[::1", matrix.CodeInvalidParam},
	}
	for _, tt := range tests {
		_, err := p.Preview(context.Background(), "@alice:test", tt.url, 0)
		wantStatus(t, fmt.Sprintf("url %q", tt.url), err, http.StatusBadRequest, tt.code)
	}
}

// TestPreviewDeniedNetworks is issue 5's acceptance test: with the default configuration,
// addresses on private networks are refused after DNS, redirects included.
func TestPreviewDeniedNetworks(t *testing.T) {
	srv := newSite(t, map[string]resource{"/page.html": {contentType: "text/html", body: []byte("<title>x</title>")}})
	_, port, err := net.SplitHostPort(srv.Listener.Addr().String())
	testkit.Must(t, err, "port")
	def, _ := newPreviewer(t, config.Default().Myelin.Media.URLPreviews)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, u := range []string{
		srv.URL + "/page.html",                     // 127.0.0.1
		"http://localhost:" + port + "/page.html",  // a name resolving to loopback
		"http://10.1.2.3:9/",                       // 10.0.0.0/8: refused before connecting
		"http://[::1]:" + port + "/page.html",      // IPv6 loopback
		"http://[::ffff:127.0.0.1]:" + port + "/x", // IPv4-mapped
		"http://169.254.169.254/latest/meta-data/", // link-local (cloud metadata)
	} {
		_, err := def.Preview(ctx, "@alice:test", u, 0)
		wantStatus(t, u, err, http.StatusForbidden, matrix.CodeForbidden)
	}
	if n := srv.count("/page.html"); n != 0 {
		t.Errorf("the denied server saw %d requests, want 0", n)
	}

	// A redirect from an allowed address to a denied one is refused: here only 127.0.0.1
	// is allowed, and the redirect goes to 127.0.0.2.
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("cannot listen on 127.0.0.2: %v", err)
	}
	var deniedHits atomic.Int32
	denied := &httptest.Server{Listener: ln, Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		deniedHits.Add(1)
		w.Header().Set("Content-Type", "text/html")
		_, _ = io.WriteString(w, "<title>internal</title>")
	})}}
	denied.Start()
	t.Cleanup(denied.Close)
	redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, denied.URL+"/secret", http.StatusFound)
	}))
	t.Cleanup(redirect.Close)
	cfg := openConfig()
	cfg.AllowNetworks = []string{"127.0.0.1/32"}
	only, _ := newPreviewer(t, cfg)
	_, err = only.Preview(ctx, "@alice:test", redirect.URL+"/go", 0)
	wantStatus(t, "redirect to 127.0.0.2", err, http.StatusForbidden, matrix.CodeForbidden)
	if n := deniedHits.Load(); n != 0 {
		t.Errorf("the redirect target saw %d requests, want 0", n)
	}
	// The same target is reachable when allowed, so the refusal above was the policy.
	open, _ := newPreviewer(t, openConfig())
	og, err := open.Preview(ctx, "@alice:test", redirect.URL+"/go", 0)
	testkit.Must(t, err, "Preview through the redirect, allowed")
	if og["og:title"] != "internal" {
		t.Errorf("og:title: got %v, want internal", og["og:title"])
	}
}

func TestPreviewFetchFailures(t *testing.T) {
	release := make(chan struct{})
	big := bytes.Repeat([]byte("<p>x</p>"), 1000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		switch r.URL.Path {
		case "/big":
			_, _ = w.Write(big) // with Content-Length
		case "/big-chunked":
			for range 100 {
				_, _ = w.Write(big[:100])
				w.(http.Flusher).Flush()
			}
		case "/slow":
			select {
			case <-release:
			case <-r.Context().Done():
			}
		case "/slow-body":
			_, _ = io.WriteString(w, "<title>")
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
		case "/loop":
			http.Redirect(w, r, "/loop", http.StatusFound)
		case "/ftp":
			http.Redirect(w, r, "ftp://example.org/", http.StatusFound)
		case "/gone":
			http.Error(w, "gone", http.StatusGone)
		case "/error":
			http.Error(w, "oops", http.StatusInternalServerError)
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs before srv.Close
	cfg := openConfig()
	cfg.MaxBytes = 4000
	cfg.Timeout = 300 * time.Millisecond
	p, _ := newPreviewer(t, cfg)
	for _, path := range []string{"/big", "/big-chunked", "/slow", "/slow-body", "/loop", "/ftp", "/gone", "/error"} {
		_, err := p.Preview(context.Background(), "@alice:test", srv.URL+path, 0)
		wantStatus(t, path, err, http.StatusBadGateway, matrix.CodeUnknown)
	}
	// A closed port: the connection is refused.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	testkit.Must(t, err, "listen")
	addr := ln.Addr().String()
	_ = ln.Close()
	_, err = p.Preview(context.Background(), "@alice:test", "http://"+addr+"/", 0)
	wantStatus(t, "closed port", err, http.StatusBadGateway, matrix.CodeUnknown)
}

func TestPreviewCache(t *testing.T) {
	pngData := testPNG(t, 20, 10)
	srv := newSite(t, map[string]resource{
		"/page.html": {contentType: "text/html", body: []byte(`<meta property="og:title" content="Cached"><meta property="og:image" content="/i.png">`)},
		"/i.png":     {contentType: "image/png", body: pngData},
	})
	cfg := openConfig()
	cfg.CacheTTL = time.Minute
	p, imgs := newPreviewer(t, cfg)
	clock := time.Unix(1_700_000_000, 0)
	p.now = func() time.Time { return clock }

	ctx := context.Background()
	first, err := p.Preview(ctx, "@alice:test", srv.URL+"/page.html", 0)
	testkit.Must(t, err, "first Preview")
	first["og:title"] = "changed by the caller" // must not reach the cache
	second, err := p.Preview(ctx, "@bob:test", srv.URL+"/page.html#fragment", 0)
	testkit.Must(t, err, "second Preview")
	if second["og:title"] != "Cached" || second["og:image"] != "mxc://test/img1" {
		t.Errorf("cached preview: got %v", second)
	}
	if got := srv.count("/page.html") + srv.count("/i.png"); got != 2 {
		t.Errorf("after two previews the server saw %d requests, want 2", got)
	}
	if len(imgs.stored) != 1 {
		t.Errorf("stored %d images, want 1", len(imgs.stored))
	}
	// After the TTL the page is fetched again.
	clock = clock.Add(time.Minute + time.Second)
	_, err = p.Preview(ctx, "@alice:test", srv.URL+"/page.html", 0)
	testkit.Must(t, err, "Preview after expiry")
	if got := srv.count("/page.html"); got != 2 {
		t.Errorf("after expiry the page was fetched %d times, want 2", got)
	}
}

func TestPreviewCacheBounded(t *testing.T) {
	srv := newSite(t, map[string]resource{"/p": {contentType: "text/plain", body: []byte("x")}})
	p, _ := newPreviewer(t, openConfig())
	for i := range cacheEntries + 5 {
		_, err := p.Preview(context.Background(), "@alice:test", fmt.Sprintf("%s/p?i=%d", srv.URL, i), 0)
		testkit.Must(t, err, "Preview %d", i)
	}
	if n := p.lru.Len(); n != cacheEntries || len(p.cache) != cacheEntries {
		t.Errorf("cache holds %d/%d entries, want %d", n, len(p.cache), cacheEntries)
	}
	// The oldest was evicted; the newest is still there.
	if _, ok := p.cache[srv.URL+"/p?i=0"]; ok {
		t.Error("oldest entry still cached")
	}
	if _, ok := p.cache[fmt.Sprintf("%s/p?i=%d", srv.URL, cacheEntries+4)]; !ok {
		t.Error("newest entry not cached")
	}
}

// TestPreviewCoalesces checks that concurrent requests for one URL share one fetch, even
// with the cache off.
func TestPreviewCoalesces(t *testing.T) {
	release := make(chan struct{})
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		<-release
		w.Header().Set("Content-Type", "text/html")
		_, _ = io.WriteString(w, "<title>Shared</title>")
	}))
	t.Cleanup(srv.Close)
	cfg := openConfig()
	cfg.CacheTTL = 0
	p, _ := newPreviewer(t, cfg)
	const n = 8
	u := srv.URL + "/page"
	errs := make(chan error, n)
	for range n {
		go func() {
			og, err := p.Preview(context.Background(), "@alice:test", u, 0)
			if err == nil && og["og:title"] != "Shared" {
				err = fmt.Errorf("og:title: got %v", og["og:title"])
			}
			errs <- err
		}()
	}
	// Wait (with a deadline) until all n requests wait on the one fetch.
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.mu.Lock()
		f := p.flights[u]
		joined := f != nil && f.waiters == n
		p.mu.Unlock()
		if joined {
			break
		}
		if time.Now().After(deadline) {
			close(release)
			t.Fatal("requests did not all join one fetch")
		}
		runtime.Gosched()
	}
	close(release)
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if got := hits.Load(); got != 1 {
		t.Errorf("the server saw %d requests, want 1", got)
	}
	// A waiter that gives up gets its context's error, not a hang.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.Preview(ctx, "@alice:test", srv.URL+"/other", 0); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled request: got %v, want context.Canceled", err)
	}
}
