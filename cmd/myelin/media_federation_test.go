package main

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"mime"
	"net/http"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/internal/testkit"
)

// TestMediaFederation runs two real Myelin servers: a file uploaded on A downloads through
// B's authenticated endpoint (fetched over /_matrix/federation/v1/media, then cached), with
// its name, type and bytes intact, and B serves a thumbnail of it.
func TestMediaFederation(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b testkit.Backend) {
		caCert, caKey := writeTestCA(t, t.TempDir())
		a := startFedServer(t, b, caCert, caKey)
		bs := startFedServer(t, b, caCert, caKey)
		alice, bob := a.fedRegister(t, "alice"), bs.fedRegister(t, "bob")

		data := pngOf(t, 320, 200)

		const name = "caf\u00e9 photo.png"
		up := alice.do(t, "POST", "/_matrix/media/v3/upload?filename="+strings.ReplaceAll(name, " ", "%20"), rawBody(data),
			"Content-Type", "image/png").wantOK(t)
		uri := str(t, up, "content_uri")
		origin, id, ok := strings.Cut(strings.TrimPrefix(uri, "mxc://"), "/")
		if !ok || origin != a.name {
			t.Fatalf("content_uri %q: want mxc://%s/…", uri, a.name)
		}

		for i := 0; i < 2; i++ { // the second answer comes from B's cache
			r := bob.do(t, "GET", "/_matrix/client/v1/media/download/"+origin+"/"+id, nil)
			if r.status != http.StatusOK || !bytes.Equal(r.body, data) {
				t.Fatalf("download via B: got %d and %d bytes; want 200 and %d bytes\n%s", r.status, len(r.body), len(data), bs.log())
			}
			if ct := r.header.Get("Content-Type"); ct != "image/png" {
				t.Fatalf("Content-Type via B: got %q", ct)
			}
			_, params, err := mime.ParseMediaType(r.header.Get("Content-Disposition"))
			if err != nil || params["filename"] != name {
				t.Fatalf("Content-Disposition via B: %q (%v); want file name %q", r.header.Get("Content-Disposition"), err, name)
			}
		}

		r := bob.do(t, "GET", "/_matrix/client/v1/media/thumbnail/"+origin+"/"+id+"?width=32&height=32&method=scale", nil)
		if r.status != http.StatusOK {
			t.Fatalf("thumbnail via B: got %s", r)
		}
		th, err := png.Decode(bytes.NewReader(r.body))
		if err != nil {
			t.Fatalf("thumbnail via B is not a PNG (%s): %v", r.header.Get("Content-Type"), err)
		}
		// Without dynamic_thumbnails the nearest configured size (640×480 scale) answers,
		// which for this source is its own size: never upscaled, never below the request.
		if b := th.Bounds(); b.Dx() < 32 || b.Dy() < 20 || b.Dx() > 320 || b.Dy() > 200 {
			t.Fatalf("thumbnail via B is %dx%d", b.Dx(), b.Dy())
		}

		// A thumbnail of media B has not fetched comes over the federation thumbnail endpoint.
		up = alice.do(t, "POST", "/_matrix/media/v3/upload", rawBody(pngOf(t, 640, 400)), "Content-Type", "image/png").wantOK(t)
		_, id2, _ := strings.Cut(strings.TrimPrefix(str(t, up, "content_uri"), "mxc://"), "/")
		r = bob.do(t, "GET", "/_matrix/client/v1/media/thumbnail/"+origin+"/"+id2+"?width=96&height=96&method=crop", nil)
		if r.status != http.StatusOK {
			t.Fatalf("remote thumbnail via B: got %s", r)
		}
		if th, err := png.Decode(bytes.NewReader(r.body)); err != nil || th.Bounds().Dx() != 96 || th.Bounds().Dy() != 96 {
			t.Fatalf("remote thumbnail via B: want a 96x96 PNG (err %v)", err)
		}
		if !strings.Contains(a.log(), "route=/_matrix/federation/v1/media/thumbnail/{mediaId} status=200") {
			t.Fatalf("B did not fetch the thumbnail over federation:\n%s", a.log())
		}

		// Unknown remote media is 404; a request without a token is 401.
		bob.do(t, "GET", "/_matrix/client/v1/media/download/"+origin+"/doesNotExist", nil).wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
		bs.anon().do(t, "GET", "/_matrix/client/v1/media/download/"+origin+"/"+id, nil).wantErr(t, http.StatusUnauthorized, "M_MISSING_TOKEN")
	})
}

// pngOf returns an opaque w×h PNG.
func pngOf(t *testing.T, w, h int) []byte {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, color.RGBA{uint8(x), uint8(y), 200, 255})
		}
	}
	var buf bytes.Buffer
	testkit.Must(t, png.Encode(&buf, img), "encoding PNG")
	return buf.Bytes()
}
