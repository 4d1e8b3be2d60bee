package mediaapi

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"image/color"
	"image/png"
	"io"
	"io/fs"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/config"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
	"github.com/myelin-chat/myelin/mediaapi/blob"
)

const testServer = "media.test"

// fakeFed is a federation client whose media downloads answer from a map, counting calls.
// Every other method panics (the embedded nil interface).
type fakeFed struct {
	fclient.FederationClient
	mu sync.Mutex
	// multipart answers DownloadMedia; legacy answers CreateMediaDownloadRequest.
	multipart map[string][]byte
	legacy    map[string][]byte
	calls     atomic.Int32
}

func (f *fakeFed) DownloadMedia(ctx context.Context, origin, dest spec.ServerName, mediaID string) (*http.Response, error) {
	f.calls.Add(1)
	f.mu.Lock()
	data, ok := f.multipart[mediaID]
	f.mu.Unlock()
	if !ok {
		return &http.Response{StatusCode: 404, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(`{"errcode":"M_UNRECOGNIZED"}`))}, nil
	}
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	p, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/json"}})
	_, _ = p.Write([]byte("{}"))
	p, _ = mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"image/png"}, "Content-Disposition": {`inline; filename*=utf-8''%F0%9F%90%94.png`}})
	_, _ = p.Write(data)
	_ = mw.Close()
	return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"multipart/mixed; boundary=" + mw.Boundary()}},
		Body: io.NopCloser(&buf)}, nil
}

func (f *fakeFed) CreateMediaDownloadRequest(ctx context.Context, server spec.ServerName, mediaID string) (*http.Response, error) {
	f.calls.Add(1)
	data, ok := f.legacy[mediaID]
	if !ok {
		return &http.Response{StatusCode: 404, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(`{"errcode":"M_NOT_FOUND"}`))}, nil
	}
	return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"text/plain"}}, Body: io.NopCloser(bytes.NewReader(data))}, nil
}

type env struct {
	t    *testing.T
	svc  *Service
	srv  *httptest.Server
	base string // media base path
	fed  *fakeFed
	now  atomic.Int64 // ms; 0 = real time
}

// newEnv starts the service over db with the disk blob store. Users authenticate with
// "Authorization: Bearer @user:server"; federation requests with "X-Test-Origin: server".
func newEnv(t *testing.T, db *sqldb.DB, tweak func(*config.Config)) *env {
	t.Helper()
	cfg := config.Default()
	cfg.Global.ServerName = testServer
	cfg.MediaAPI.BasePath = t.TempDir()
	cfg.MediaAPI.MaxFileSizeBytes = 1 << 20
	cfg.Myelin.Media.MaxPendingUploads = 2
	cfg.Myelin.Media.URLPreviews.Enabled = false
	if tweak != nil {
		tweak(cfg)
	}
	blobs, err := blob.NewDisk(cfg.MediaAPI.BasePath)
	testkit.Must(t, err, "opening blob store")
	e := &env{t: t, base: cfg.MediaAPI.BasePath, fed: &fakeFed{multipart: map[string][]byte{}, legacy: map[string][]byte{}}}
	svc, err := New(cfg, Deps{
		DB: db, Blobs: blobs,
		Authenticate: func(r *http.Request) (string, error) {
			u := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
			if u == "" {
				return "", matrix.Errorf(401, matrix.CodeMissingToken, "missing token")
			}
			return u, nil
		},
		VerifyFederation: func(w http.ResponseWriter, r *http.Request) (string, error) {
			if o := r.Header.Get("X-Test-Origin"); o != "" {
				return o, nil
			}
			return "", matrix.Errorf(401, matrix.CodeUnauthorized, "unsigned")
		},
		Federation: e.fed,
	})
	testkit.Must(t, err, "creating media service")
	svc.now = func() time.Time {
		if ms := e.now.Load(); ms != 0 {
			return time.UnixMilli(ms)
		}
		return time.Now()
	}
	r := httpx.NewRouter()
	svc.Register(r)
	e.svc, e.srv = svc, httptest.NewServer(r)
	t.Cleanup(func() { e.srv.Close(); svc.Close() })
	return e
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r resp) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body is not JSON: %s", r.body)
	}
	return m
}

func (r resp) wantErr(t *testing.T, status int, code string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("got %d %s; want %d %s", r.status, r.body, status, code)
	}
	if got := r.json(t)["errcode"]; got != code {
		t.Fatalf("errcode: got %v; want %s", got, code)
	}
}

// do sends a request as user ("" for none); hdr are header name/value pairs.
func (e *env) do(method, path, user string, body []byte, hdr ...string) resp {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, bytes.NewReader(body))
	testkit.Must(e.t, err, "building request")
	if user != "" {
		req.Header.Set("Authorization", "Bearer "+user)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	testkit.Must(e.t, err, "%s %s", method, path)
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{res.StatusCode, res.Header, b}
}

// upload uploads data and returns its media ID.
func (e *env) upload(user string, data []byte, contentType, name string) string {
	e.t.Helper()
	path := "/_matrix/media/v3/upload"
	if name != "" {
		path += "?filename=" + url.QueryEscape(name)
	}
	r := e.do("POST", path, user, data, "Content-Type", contentType)
	if r.status != 200 {
		e.t.Fatalf("upload: got %d %s", r.status, r.body)
	}
	uri, _ := r.json(e.t)["content_uri"].(string)
	prefix := "mxc://" + testServer + "/"
	if !strings.HasPrefix(uri, prefix) || len(uri)-len(prefix) < 24 {
		e.t.Fatalf("content_uri %q: want mxc://%s/<24+ chars>", uri, testServer)
	}
	return strings.TrimPrefix(uri, prefix)
}

// blobCount counts the blobs on disk.
func (e *env) blobCount() int {
	n := 0
	_ = filepath.WalkDir(e.base, func(p string, d fs.DirEntry, err error) error {
		rel, _ := filepath.Rel(e.base, p)
		if err == nil && !d.IsDir() && len(d.Name()) == 64 && !strings.HasPrefix(rel, "tmp") {
			n++
		}
		return nil
	})
	return n
}

const alice, bob = "@alice:" + testServer, "@bob:" + testServer

func TestUploadDownload(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		e := newEnv(t, db, nil)
		data := []byte("hello media")
		id := e.upload(alice, data, "text/plain", "hello.txt")
		for _, path := range []string{
			"/_matrix/client/v1/media/download/" + testServer + "/" + id,
			"/_matrix/media/v3/download/" + testServer + "/" + id,
			"/_matrix/media/r0/download/" + testServer + "/" + id,
		} {
			user := alice
			if strings.HasPrefix(path, "/_matrix/media/") {
				user = "" // the legacy endpoints are unauthenticated
			}
			r := e.do("GET", path, user, nil)
			if r.status != 200 || !bytes.Equal(r.body, data) {
				t.Fatalf("GET %s: got %d %q; want 200 %q", path, r.status, r.body, data)
			}
			for k, want := range map[string]string{
				"Content-Type":                 "text/plain",
				"Content-Disposition":          "inline; filename=hello.txt",
				"Content-Security-Policy":      csp,
				"X-Content-Type-Options":       "nosniff",
				"Cross-Origin-Resource-Policy": "cross-origin",
			} {
				if got := r.header.Get(k); got != want {
					t.Errorf("GET %s: %s: got %q; want %q", path, k, got, want)
				}
			}
		}
		// The authenticated endpoint needs a token.
		e.do("GET", "/_matrix/client/v1/media/download/"+testServer+"/"+id, "", nil).wantErr(t, 401, matrix.CodeMissingToken)
		e.do("POST", "/_matrix/media/v3/upload", "", data).wantErr(t, 401, matrix.CodeMissingToken)
		// Unknown media, and a media ID outside the spec's alphabet.
		e.do("GET", "/_matrix/client/v1/media/download/"+testServer+"/nope", alice, nil).wantErr(t, 404, matrix.CodeNotFound)
		e.do("GET", "/_matrix/client/v1/media/download/"+testServer+"/..%2Fetc", alice, nil).wantErr(t, 404, matrix.CodeNotFound)
		// Config on both paths.
		for _, p := range []string{"/_matrix/media/v3/config", "/_matrix/client/v1/media/config"} {
			if got := e.do("GET", p, alice, nil).json(t)["m.upload.size"]; got != float64(1<<20) {
				t.Errorf("%s: m.upload.size = %v; want %d", p, got, 1<<20)
			}
		}
		// No Content-Type, or one that is not a media type: application/octet-stream, served
		// as an attachment.
		for _, ct := range []string{"", "not a type", "text/html; charset"} {
			id = e.upload(alice, data, ct, "")
			r := e.do("GET", "/_matrix/client/v1/media/download/"+testServer+"/"+id, alice, nil)
			if got, cd := r.header.Get("Content-Type"), r.header.Get("Content-Disposition"); got != "application/octet-stream" || cd != "attachment" {
				t.Errorf("type %q: got %q, %q; want application/octet-stream, attachment", ct, got, cd)
			}
		}
	})
}

func TestLegacyEndpointsOff(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		e := newEnv(t, db, func(c *config.Config) { c.Myelin.Media.LegacyEndpoints = false })
		id := e.upload(alice, []byte("x"), "text/plain", "")
		e.do("GET", "/_matrix/media/v3/download/"+testServer+"/"+id, "", nil).wantErr(t, 404, matrix.CodeUnrecognized)
		if r := e.do("GET", "/_matrix/client/v1/media/download/"+testServer+"/"+id, alice, nil); r.status != 200 {
			t.Fatalf("authenticated download: got %d", r.status)
		}
	})
}

func TestDedupAndLimit(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		e := newEnv(t, db, nil)
		data := bytes.Repeat([]byte("same bytes "), 1000)
		a := e.upload(alice, data, "application/pdf", "a.pdf")
		b := e.upload(bob, data, "text/plain", "b.txt")
		if a == b {
			t.Fatalf("two uploads got one media ID %s", a)
		}
		if n := e.blobCount(); n != 1 {
			t.Fatalf("blobs after two identical uploads: got %d; want 1", n)
		}
		// Each keeps its own type and name.
		r := e.do("GET", "/_matrix/client/v1/media/download/"+testServer+"/"+a, alice, nil)
		if cd := r.header.Get("Content-Disposition"); cd != "attachment; filename=a.pdf" {
			t.Errorf("a: Content-Disposition %q; want attachment; filename=a.pdf", cd)
		}
		big := make([]byte, 1<<20+1)
		e.do("POST", "/_matrix/media/v3/upload", alice, big, "Content-Type", "application/octet-stream").wantErr(t, 413, matrix.CodeTooLarge)
		if n := e.blobCount(); n != 1 {
			t.Fatalf("blobs after a refused upload: got %d; want 1", n)
		}
	})
}

func TestFilenames(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		e := newEnv(t, db, nil)
		png := testPNG(t, 4, 4)
		for _, c := range []struct {
			name, upload, override, contentType string
			wantKind, wantName                  string
		}{
			{"ascii", "ascii", "", "image/png", "inline", "ascii"},
			{"spaces", "name with spaces", "", "image/png", "inline", "name with spaces"},
			{"semicolons", "name;with;semicolons", "", "image/png", "inline", "name;with;semicolons"},
			{"quotes", `say "hi".txt`, "", "image/png", "inline", `say "hi".txt`},
			{"unicode", "\xf0\x9f\x90\x94", "", "image/png", "inline", "\xf0\x9f\x90\x94"},
			{"override", "ascii", "file.png", "image/png", "inline", "file.png"},
			{"unicode override", "\xf0\x9f\x90\x94", "\u2615", "image/png", "inline", "\u2615"},
			{"svg is an attachment", "x.svg", "", "image/svg+xml", "attachment", "x.svg"},
			{"html is an attachment", "x.html", "", "text/html", "attachment", "x.html"},
			{"parameters and case", "", "", "Text/Plain; charset=utf-8", "inline", ""},
		} {
			t.Run(c.name, func(t *testing.T) {
				id := e.upload(alice, png, c.contentType, c.upload)
				path := "/_matrix/client/v1/media/download/" + testServer + "/" + id
				if c.override != "" {
					path += "/" + url.PathEscape(c.override)
				}
				r := e.do("GET", path, alice, nil)
				kind, params, err := mime.ParseMediaType(r.header.Get("Content-Disposition"))
				if err != nil {
					t.Fatalf("Content-Disposition %q: %v", r.header.Get("Content-Disposition"), err)
				}
				if kind != c.wantKind || params["filename"] != c.wantName {
					t.Fatalf("got %s %q (%s); want %s %q", kind, params["filename"], r.header.Get("Content-Disposition"), c.wantKind, c.wantName)
				}
				if ct := r.header.Get("Content-Type"); ct != c.contentType {
					t.Fatalf("Content-Type: got %q; want %q", ct, c.contentType)
				}
			})
		}
	})
}

func TestAsyncUpload(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		e := newEnv(t, db, nil)
		create := func(user string) (string, resp) {
			r := e.do("POST", "/_matrix/media/v1/create", user, nil)
			if r.status != 200 {
				return "", r
			}
			m := r.json(t)
			if _, ok := m["unused_expires_at"].(float64); !ok {
				t.Fatalf("create: no unused_expires_at in %s", r.body)
			}
			return strings.TrimPrefix(m["content_uri"].(string), "mxc://"+testServer+"/"), r
		}
		id, _ := create(alice)
		dl := "/_matrix/client/v1/media/download/" + testServer + "/" + id
		e.do("GET", dl+"?timeout_ms=10", alice, nil).wantErr(t, 504, "M_NOT_YET_UPLOADED")
		put := "/_matrix/media/v3/upload/" + testServer + "/" + id + "?filename=a.png"
		e.do("PUT", put, bob, []byte("x")).wantErr(t, 403, matrix.CodeForbidden)
		e.do("PUT", "/_matrix/media/v3/upload/"+testServer+"/unknown", alice, []byte("x")).wantErr(t, 404, matrix.CodeNotFound)

		// A download waiting on the pending ID is woken by the upload.
		got := make(chan resp, 1)
		go func() { got <- e.do("GET", dl+"?timeout_ms=30000", alice, nil) }()
		if r := e.do("PUT", put, alice, []byte("async content"), "Content-Type", "text/plain"); r.status != 200 {
			t.Fatalf("PUT: got %d %s", r.status, r.body)
		}
		select {
		case r := <-got:
			if r.status != 200 || string(r.body) != "async content" {
				t.Fatalf("waiting download: got %d %q", r.status, r.body)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("waiting download was not woken by the upload")
		}
		e.do("PUT", put, alice, nil).wantErr(t, 409, "M_CANNOT_OVERWRITE_MEDIA")

		// At most two pending IDs per user.
		create(alice)
		create(alice)
		if _, r := create(alice); r.status != 429 {
			t.Fatalf("third pending ID: got %d %s; want 429", r.status, r.body)
		}
		// Bob is not limited by Alice's IDs; his expire.
		id, _ = create(bob)
		e.now.Store(time.Now().Add(25 * time.Hour).UnixMilli())
		e.do("PUT", "/_matrix/media/v3/upload/"+testServer+"/"+id, bob, []byte("late")).wantErr(t, 404, matrix.CodeNotFound)
		e.do("GET", "/_matrix/client/v1/media/download/"+testServer+"/"+id, bob, nil).wantErr(t, 404, matrix.CodeNotFound)
		// Expired IDs no longer count against the limit.
		if _, r := create(alice); r.status != 200 {
			t.Fatalf("create after expiry: got %d %s", r.status, r.body)
		}
		// The sweep forgets Bob's expired ID, and nothing else.
		n, err := e.svc.db.deleteExpiredPending(context.Background(), e.now.Load())
		testkit.Must(t, err, "sweeping expired IDs")
		if n != 1 {
			t.Errorf("sweep forgot %d IDs; want Bob's one", n)
		}
	})
}

// testPNG returns a w×h opaque PNG.
func testPNG(t *testing.T, w, h int) []byte {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, color.RGBA{uint8(x), uint8(y), 100, 255})
		}
	}
	var buf bytes.Buffer
	testkit.Must(t, png.Encode(&buf, img), "encoding PNG")
	return buf.Bytes()
}

func TestThumbnails(t *testing.T) {
	for _, dynamic := range []bool{true, false} {
		name := "pregenerated"
		if dynamic {
			name = "dynamic"
		}
		t.Run(name, func(t *testing.T) {
			testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
				e := newEnv(t, db, func(c *config.Config) { c.MediaAPI.DynamicThumbnails = dynamic })
				id := e.upload(alice, testPNG(t, 400, 300), "image/png", "big.png")
				for _, c := range []struct {
					query        string
					maxW, maxH   int
					minW, minH   int
					legacyAnonOK bool
				}{
					{"width=32&height=32&method=scale", 640, 480, 32, 24, true},
					{"width=32&height=32&method=crop", 96, 96, 32, 32, true},
					{"width=100&height=100", 640, 480, 100, 75, true},
				} {
					for _, path := range []string{"/_matrix/client/v1/media/thumbnail/", "/_matrix/media/v3/thumbnail/"} {
						user := alice
						if strings.HasPrefix(path, "/_matrix/media") {
							user = ""
						}
						r := e.do("GET", path+testServer+"/"+id+"?"+c.query, user, nil)
						if r.status != 200 {
							t.Fatalf("%s?%s: got %d %s", path, c.query, r.status, r.body)
						}
						img, err := png.Decode(bytes.NewReader(r.body))
						if err != nil {
							t.Fatalf("%s?%s: not a PNG (%s): %v", path, c.query, r.header.Get("Content-Type"), err)
						}
						b := img.Bounds()
						if b.Dx() < c.minW || b.Dy() < c.minH || b.Dx() > c.maxW || b.Dy() > c.maxH {
							t.Fatalf("%s?%s: got %dx%d; want between %dx%d and %dx%d", path, c.query, b.Dx(), b.Dy(), c.minW, c.minH, c.maxW, c.maxH)
						}
						if cd := r.header.Get("Content-Disposition"); cd != "inline; filename=thumbnail.png" {
							t.Errorf("Content-Disposition: got %q", cd)
						}
					}
				}
				// Identical requests get identical bytes (the cached thumbnail).
				q := "/_matrix/client/v1/media/thumbnail/" + testServer + "/" + id + "?width=50&height=50&method=scale"
				if a, b := e.do("GET", q, alice, nil), e.do("GET", q, alice, nil); !bytes.Equal(a.body, b.body) {
					t.Fatal("two requests for one thumbnail got different bytes")
				}
				txt := e.upload(alice, []byte("not an image"), "text/plain", "")
				e.do("GET", "/_matrix/client/v1/media/thumbnail/"+testServer+"/"+txt+"?width=32&height=32", alice, nil).
					wantErr(t, 400, matrix.CodeUnknown)
				e.do("GET", "/_matrix/client/v1/media/thumbnail/"+testServer+"/"+id+"?width=32", alice, nil).
					wantErr(t, 400, matrix.CodeMissingParam)
				e.do("GET", "/_matrix/client/v1/media/thumbnail/"+testServer+"/"+id+"?width=32&height=-1", alice, nil).
					wantErr(t, 400, matrix.CodeInvalidParam)
				e.do("GET", "/_matrix/client/v1/media/thumbnail/"+testServer+"/"+id+"?width=32&height=32&method=zoom", alice, nil).
					wantErr(t, 400, matrix.CodeInvalidParam)
			})
		})
	}
}

func TestFederationServe(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		e := newEnv(t, db, nil)
		data := testPNG(t, 200, 100)
		id := e.upload(alice, data, "image/png", "\xf0\x9f\x90\x94.png")
		e.do("GET", "/_matrix/federation/v1/media/download/"+id, "", nil).wantErr(t, 401, matrix.CodeUnauthorized)
		e.do("GET", "/_matrix/federation/v1/media/thumbnail/"+id+"?width=32&height=32", "", nil).wantErr(t, 401, matrix.CodeUnauthorized)

		parts := func(r resp) []*multipart.Part {
			t.Helper()
			mt, params, err := mime.ParseMediaType(r.header.Get("Content-Type"))
			if r.status != 200 || err != nil || mt != "multipart/mixed" {
				t.Fatalf("got %d %q: want 200 multipart/mixed", r.status, r.header.Get("Content-Type"))
			}
			mr := multipart.NewReader(bytes.NewReader(r.body), params["boundary"])
			var ps []*multipart.Part
			for {
				p, err := mr.NextPart()
				if err == io.EOF {
					return ps
				}
				testkit.Must(t, err, "reading part")
				b, _ := io.ReadAll(p)
				p.Header.Set("X-Body", string(b))
				ps = append(ps, p)
			}
		}
		ps := parts(e.do("GET", "/_matrix/federation/v1/media/download/"+id, "", nil, "X-Test-Origin", "other.test"))
		if len(ps) != 2 || ps[0].Header.Get("Content-Type") != "application/json" || ps[0].Header.Get("X-Body") != "{}" {
			t.Fatalf("want two parts, the first {} as application/json; got %d", len(ps))
		}
		if ps[1].Header.Get("Content-Type") != "image/png" || ps[1].Header.Get("X-Body") != string(data) {
			t.Fatalf("second part: got %q and %d bytes; want image/png and the file", ps[1].Header.Get("Content-Type"), len(ps[1].Header.Get("X-Body")))
		}
		if name := dispositionFileName(ps[1].Header.Get("Content-Disposition")); name != "\xf0\x9f\x90\x94.png" {
			t.Fatalf("second part file name: got %q", name)
		}
		thumbPath := "/_matrix/client/v1/media/thumbnail/" + testServer + "/" + id + "?width=32&height=32&method=scale"
		clientThumb := e.do("GET", thumbPath, alice, nil)
		ps = parts(e.do("GET", "/_matrix/federation/v1/media/thumbnail/"+id+"?width=32&height=32&method=scale", "", nil, "X-Test-Origin", "other.test"))
		if len(ps) != 2 || ps[1].Header.Get("Content-Type") != "image/png" || ps[1].Header.Get("X-Body") != string(clientThumb.body) {
			t.Fatal("federation thumbnail differs from the client's")
		}
		// Only our own media is served.
		e.do("GET", "/_matrix/federation/v1/media/download/nope", "", nil, "X-Test-Origin", "other.test").wantErr(t, 404, matrix.CodeNotFound)
	})
}

func TestRemoteMedia(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		e := newEnv(t, db, nil)
		img := testPNG(t, 300, 200)
		e.fed.multipart["remoteimg"] = img
		e.fed.legacy["oldserver"] = []byte("from the legacy endpoint")

		dl := "/_matrix/client/v1/media/download/remote.test/"
		e.do("GET", dl+"remoteimg?allow_remote=false", alice, nil).wantErr(t, 404, matrix.CodeNotFound)
		for i := 0; i < 2; i++ { // the second comes from the cache
			r := e.do("GET", dl+"remoteimg", alice, nil)
			if r.status != 200 || !bytes.Equal(r.body, img) {
				t.Fatalf("remote download: got %d, %d bytes", r.status, len(r.body))
			}
			if cd := r.header.Get("Content-Disposition"); cd != "inline; filename*=utf-8''%F0%9F%90%94.png" {
				t.Fatalf("remote Content-Disposition: got %q", cd)
			}
		}
		if n := e.fed.calls.Load(); n != 1 {
			t.Fatalf("federation calls: got %d; want 1 (then cached)", n)
		}
		// Now cached, allow_remote=false serves it.
		if r := e.do("GET", dl+"remoteimg?allow_remote=false", alice, nil); r.status != 200 {
			t.Fatalf("cached with allow_remote=false: got %d", r.status)
		}
		// Thumbnails of remote media.
		r := e.do("GET", "/_matrix/client/v1/media/thumbnail/remote.test/remoteimg?width=32&height=32&method=scale", alice, nil)
		if _, err := png.Decode(bytes.NewReader(r.body)); r.status != 200 || err != nil {
			t.Fatalf("remote thumbnail: got %d %v", r.status, err)
		}
		// A server without the federation endpoint: the legacy one.
		r = e.do("GET", dl+"oldserver", alice, nil)
		if r.status != 200 || string(r.body) != "from the legacy endpoint" || r.header.Get("Content-Type") != "text/plain" {
			t.Fatalf("legacy fallback: got %d %q %q", r.status, r.body, r.header.Get("Content-Type"))
		}
		e.do("GET", dl+"missing", alice, nil).wantErr(t, 404, matrix.CodeNotFound)
		// Concurrent downloads of one uncached media share one fetch.
		e.fed.mu.Lock()
		e.fed.multipart["shared"] = img
		e.fed.mu.Unlock()
		before := e.fed.calls.Load()
		var wg sync.WaitGroup
		for i := 0; i < 5; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if r := e.do("GET", dl+"shared", alice, nil); r.status != 200 {
					t.Errorf("concurrent download: got %d", r.status)
				}
			}()
		}
		wg.Wait()
		if n := e.fed.calls.Load() - before; n < 1 || n > 5 {
			t.Fatalf("concurrent fetches made %d federation calls", n)
		}
	})
}

func TestPreviewRoutes(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		off := newEnv(t, db, nil)
		off.do("GET", "/_matrix/client/v1/media/preview_url?url=http://example.org/", alice, nil).wantErr(t, 404, matrix.CodeUnrecognized)

		img := testPNG(t, 279, 129)
		site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/test.png" {
				w.Header().Set("Content-Type", "image/png")
				_, _ = w.Write(img)
				return
			}
			w.Header().Set("Content-Type", "text/html")
			_, _ = io.WriteString(w, `<html><head><meta property="og:title" content="The Rock" /><meta property="og:image" content="test.png" /></head></html>`)
		}))
		defer site.Close()
		on := newEnv(t, db, func(c *config.Config) {
			c.Myelin.Media.URLPreviews.Enabled = true
			c.Myelin.Media.URLPreviews.DenyNetworks = nil
		})
		for _, p := range []string{"/_matrix/media/v3/preview_url", "/_matrix/client/v1/media/preview_url"} {
			on.do("GET", p, alice, nil).wantErr(t, 400, matrix.CodeMissingParam)
			on.do("GET", p+"?url=x", "", nil).wantErr(t, 401, matrix.CodeMissingToken)
		}
		r := on.do("GET", "/_matrix/client/v1/media/preview_url?url="+url.QueryEscape(site.URL+"/page.html"), alice, nil)
		if r.status != 200 {
			t.Fatalf("preview: got %d %s", r.status, r.body)
		}
		og := r.json(t)
		if og["og:title"] != "The Rock" || og["og:image:width"] != float64(279) || og["og:image:height"] != float64(129) ||
			og["matrix:image:size"] != float64(len(img)) {
			t.Fatalf("preview: got %s", r.body)
		}
		uri, _ := og["og:image"].(string)
		id := strings.TrimPrefix(uri, "mxc://"+testServer+"/")
		if got := on.do("GET", "/_matrix/client/v1/media/download/"+testServer+"/"+id, alice, nil); !bytes.Equal(got.body, img) {
			t.Fatalf("og:image %q does not download the image", uri)
		}
	})
}
