package mediaapi

import (
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"strconv"

	"github.com/gorilla/mux"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
)

// Register declares the media routes on r: upload and create (/_matrix/media), download,
// thumbnail, config and preview_url on /_matrix/client/v1/media and — download and thumbnail
// only when myelin.media.legacy_endpoints is set — /_matrix/media/{r0,v3}, and the federation
// media endpoints. preview_url is not registered (404 M_UNRECOGNIZED) when previews are off.
// Media routes are not subject to myelin.max_request_bytes: uploads stream to disk, capped
// by media_api.max_file_size_bytes.
func (s *Service) Register(r *mux.Router) {
	h := httpx.Handler
	legacy := httpx.Prefix{Router: r, Path: "/_matrix/media/{v:(?:r0|v3)}"}
	client := httpx.Prefix{Router: r, Path: "/_matrix/client/v1/media"}

	legacy.Handle("/upload", h(s.authed(s.upload))).Methods(http.MethodPost)
	legacy.Handle("/upload/{serverName}/{mediaId}", h(s.authed(s.uploadTo))).Methods(http.MethodPut)
	r.Handle("/_matrix/media/v1/create", h(s.authed(s.create))).Methods(http.MethodPost)

	legacy.Handle("/config", h(s.authed(s.config))).Methods(http.MethodGet)
	client.Handle("/config", h(s.authed(s.config))).Methods(http.MethodGet)

	client.Handle("/download/{serverName}/{mediaId}", h(s.authed(s.download(true)))).Methods(http.MethodGet, http.MethodHead)
	client.Handle("/download/{serverName}/{mediaId}/{fileName}", h(s.authed(s.download(true)))).Methods(http.MethodGet, http.MethodHead)
	client.Handle("/thumbnail/{serverName}/{mediaId}", h(s.authed(s.thumbnail(true)))).Methods(http.MethodGet, http.MethodHead)
	if s.cfg.Myelin.Media.LegacyEndpoints {
		anon := func(f func(w http.ResponseWriter, r *http.Request, userID string) error) httpx.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) error { return f(w, r, "") }
		}
		legacy.Handle("/download/{serverName}/{mediaId}", h(anon(s.download(false)))).Methods(http.MethodGet, http.MethodHead)
		legacy.Handle("/download/{serverName}/{mediaId}/{fileName}", h(anon(s.download(false)))).Methods(http.MethodGet, http.MethodHead)
		legacy.Handle("/thumbnail/{serverName}/{mediaId}", h(anon(s.thumbnail(false)))).Methods(http.MethodGet, http.MethodHead)
	}
	if s.previewer != nil {
		legacy.Handle("/preview_url", h(s.authed(s.previewURL))).Methods(http.MethodGet)
		client.Handle("/preview_url", h(s.authed(s.previewURL))).Methods(http.MethodGet)
	}

	r.Handle("/_matrix/federation/v1/media/download/{mediaId}", h(s.federationDownload)).Methods(http.MethodGet)
	r.Handle("/_matrix/federation/v1/media/thumbnail/{mediaId}", h(s.federationThumbnail)).Methods(http.MethodGet)
}

// authed authenticates the request's access token before f.
func (s *Service) authed(f func(w http.ResponseWriter, r *http.Request, userID string) error) httpx.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		userID, err := s.auth(r)
		if err != nil {
			return err
		}
		return f(w, r, userID)
	}
}

func (s *Service) upload(w http.ResponseWriter, r *http.Request, userID string) error {
	uri, err := s.Upload(r.Context(), userID, r.Header.Get("Content-Type"), r.URL.Query().Get("filename"), r.Body, r.ContentLength)
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]string{"content_uri": uri})
}

func (s *Service) create(w http.ResponseWriter, r *http.Request, userID string) error {
	uri, expires, err := s.Create(r.Context(), userID)
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{"content_uri": uri, "unused_expires_at": expires})
}

func (s *Service) uploadTo(w http.ResponseWriter, r *http.Request, userID string) error {
	err := s.UploadTo(r.Context(), userID, httpx.Var(r, "serverName"), httpx.Var(r, "mediaId"),
		r.Header.Get("Content-Type"), r.URL.Query().Get("filename"), r.Body, r.ContentLength)
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{})
}

func (s *Service) config(w http.ResponseWriter, r *http.Request, _ string) error {
	body := map[string]any{}
	if max := s.maxSize(); max > 0 {
		body["m.upload.size"] = max
	}
	return httpx.WriteJSON(w, http.StatusOK, body)
}

// download serves a file: Content-Type as uploaded, Content-Disposition inline only for
// safe types, with the path's file name overriding the uploaded one.
func (s *Service) download(authenticated bool) func(w http.ResponseWriter, r *http.Request, userID string) error {
	return func(w http.ResponseWriter, r *http.Request, _ string) error {
		wait, err := parseTimeout(r)
		if err != nil {
			return err
		}
		allowRemote, err := parseAllowRemote(r)
		if err != nil {
			return err
		}
		m, err := s.Media(r.Context(), httpx.Var(r, "serverName"), httpx.Var(r, "mediaId"), allowRemote, wait)
		if err != nil {
			return err
		}
		name := m.UploadName
		if fn := httpx.Var(r, "fileName"); fn != "" {
			name = fn
		}
		ct := contentTypeOr(m.ContentType)
		setMediaHeaders(w.Header(), ct, contentDisposition(dispositionType(ct), name), authenticated)
		return s.serveBlob(w, r, m.Hash)
	}
}

func (s *Service) thumbnail(authenticated bool) func(w http.ResponseWriter, r *http.Request, userID string) error {
	return func(w http.ResponseWriter, r *http.Request, _ string) error {
		tr, err := parseThumbnailRequest(r)
		if err != nil {
			return err
		}
		wait, err := parseTimeout(r)
		if err != nil {
			return err
		}
		allowRemote, err := parseAllowRemote(r)
		if err != nil {
			return err
		}
		t, err := s.Thumbnail(r.Context(), httpx.Var(r, "serverName"), httpx.Var(r, "mediaId"), tr, allowRemote, wait)
		if err != nil {
			return err
		}
		setMediaHeaders(w.Header(), t.ContentType, contentDisposition("inline", thumbnailName(t.ContentType)), authenticated)
		return s.serveBlob(w, r, t.Hash)
	}
}

// thumbnailName is the file name a thumbnail is served under.
func thumbnailName(contentType string) string {
	switch contentType {
	case "image/png":
		return "thumbnail.png"
	case "image/jpeg":
		return "thumbnail.jpg"
	case "image/gif":
		return "thumbnail.gif"
	case "image/webp":
		return "thumbnail.webp"
	}
	return "thumbnail"
}

func (s *Service) previewURL(w http.ResponseWriter, r *http.Request, userID string) error {
	q := r.URL.Query()
	u := q.Get("url")
	var ts int64
	if v := q.Get("ts"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return matrix.InvalidParam("ts must be a non-negative integer")
		}
		ts = n
	}
	og, err := s.previewer.Preview(r.Context(), userID, u, ts)
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, og)
}

// federationDownload serves local media to another server as multipart/mixed.
func (s *Service) federationDownload(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.verify(w, r); err != nil {
		return err
	}
	wait, err := parseTimeout(r)
	if err != nil {
		return err
	}
	m, err := s.Media(r.Context(), s.serverName, httpx.Var(r, "mediaId"), false, wait)
	if err != nil {
		return err
	}
	ct := contentTypeOr(m.ContentType)
	return s.writeMultipart(w, r, m.Hash, ct, contentDisposition(dispositionType(ct), m.UploadName))
}

// federationThumbnail serves a thumbnail of local media to another server as
// multipart/mixed.
func (s *Service) federationThumbnail(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.verify(w, r); err != nil {
		return err
	}
	tr, err := parseThumbnailRequest(r)
	if err != nil {
		return err
	}
	wait, err := parseTimeout(r)
	if err != nil {
		return err
	}
	t, err := s.Thumbnail(r.Context(), s.serverName, httpx.Var(r, "mediaId"), tr, false, wait)
	if err != nil {
		return err
	}
	return s.writeMultipart(w, r, t.Hash, t.ContentType, contentDisposition("inline", thumbnailName(t.ContentType)))
}

// writeMultipart writes the federation media answer: a JSON metadata part ("{}"), then the
// blob with its Content-Type and Content-Disposition.
func (s *Service) writeMultipart(w http.ResponseWriter, r *http.Request, hash, contentType, disposition string) error {
	rc, _, err := s.blobs.Open(r.Context(), hash)
	if err != nil {
		return err
	}
	defer rc.Close()
	mw := multipart.NewWriter(w)
	w.Header().Set("Content-Type", "multipart/mixed; boundary="+mw.Boundary())
	w.WriteHeader(http.StatusOK)
	meta, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/json"}})
	if err != nil {
		return nil // the client went away; the status is sent
	}
	_, _ = io.WriteString(meta, "{}")
	part, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {contentType}, "Content-Disposition": {disposition}})
	if err != nil {
		return nil
	}
	if _, err := io.Copy(part, rc); err != nil {
		return nil
	}
	_ = mw.Close()
	return nil
}
