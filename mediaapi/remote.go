package mediaapi

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/netguard"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/mediaapi/thumbnail"
)

// remoteTimeout bounds one remote fetch, body included.
const remoteTimeout = 2 * time.Minute

// httpDoer is the part of gmsl's federation client (its embedded fclient.Client) that sends
// prepared requests; FederationClient does not declare it.
type httpDoer interface {
	DoHTTPRequest(ctx context.Context, req *http.Request) (*http.Response, error)
}

// newRedirectClient returns the client that follows a remote media response's Location
// part, dialling only addresses the federation network policy allows.
func newRedirectClient(g *netguard.Guard, skipVerify bool) *http.Client {
	d := &net.Dialer{Timeout: 10 * time.Second, ControlContext: g.Control}
	return &http.Client{
		Timeout: remoteTimeout,
		Transport: &http.Transport{
			DialContext:     d.DialContext,
			TLSClientConfig: &tls.Config{InsecureSkipVerify: skipVerify}, //nolint:gosec // the operator's federation setting
			MaxIdleConns:    10, IdleConnTimeout: 90 * time.Second,
		},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 5 {
				return errors.New("too many redirects")
			}
			return nil
		},
	}
}

// remote fetches (origin, mediaID) over federation and caches it. Concurrent fetches of one
// media share one download.
func (s *Service) remote(ctx context.Context, origin, mediaID string) (*media, error) {
	v, err := s.flights.do(ctx, "media "+origin+"/"+mediaID, func(ctx context.Context) (any, error) {
		ctx, cancel := context.WithTimeout(ctx, remoteTimeout)
		defer cancel()
		if m, err := s.db.media(ctx, origin, mediaID); err == nil && !m.pending() {
			return m, nil
		}
		return s.fetchRemote(ctx, origin, mediaID)
	})
	if err != nil {
		return nil, err
	}
	return v.(*media), nil
}

// remoteContent is a remote response's file: its headers and body.
type remoteContent struct {
	contentType, fileName string
	body                  io.Reader
}

// fetchRemote downloads (origin, mediaID) through the federation media endpoint, falling
// back to the origin's legacy /_matrix/media/v3/download when it lacks that endpoint, and
// stores it.
func (s *Service) fetchRemote(ctx context.Context, origin, mediaID string) (*media, error) {
	if s.fed == nil {
		return nil, matrix.NotFound("remote media is not available")
	}
	resp, err := s.fed.DownloadMedia(ctx, spec.ServerName(s.serverName), spec.ServerName(origin), mediaID)
	if err != nil {
		return nil, s.remoteFailed(origin, err)
	}
	defer resp.Body.Close()
	var rc remoteContent
	if resp.StatusCode == http.StatusOK {
		var closeFn func()
		rc, closeFn, err = s.readMultipart(ctx, resp)
		if err != nil {
			return nil, s.remoteFailed(origin, err)
		}
		defer closeFn()
	} else if fallbackStatus(resp.StatusCode) {
		legacy, err := s.legacyDownload(ctx, origin, mediaID)
		if err != nil {
			return nil, err
		}
		defer legacy.Body.Close()
		if err := remoteStatus(origin, legacy); err != nil {
			return nil, err
		}
		rc = remoteContent{contentType: legacy.Header.Get("Content-Type"),
			fileName: dispositionFileName(legacy.Header.Get("Content-Disposition")), body: legacy.Body}
	} else {
		return nil, remoteStatus(origin, resp)
	}
	return s.storeRemote(ctx, origin, mediaID, rc)
}

// fallbackStatus reports whether a federation media answer means the origin lacks the
// endpoint (older servers answer 404 M_UNRECOGNIZED, 400 or 405), so the legacy one is tried.
func fallbackStatus(code int) bool {
	return code == http.StatusNotFound || code == http.StatusBadRequest || code == http.StatusMethodNotAllowed ||
		code == http.StatusUnauthorized || code == http.StatusForbidden || code == http.StatusNotImplemented
}

// legacyDownload asks the origin's legacy unauthenticated download endpoint.
func (s *Service) legacyDownload(ctx context.Context, origin, mediaID string) (*http.Response, error) {
	type legacy interface {
		CreateMediaDownloadRequest(ctx context.Context, matrixServer spec.ServerName, mediaID string) (*http.Response, error)
	}
	l, ok := s.fed.(legacy)
	if !ok {
		return nil, matrix.NotFound("remote media not found")
	}
	resp, err := l.CreateMediaDownloadRequest(ctx, spec.ServerName(origin), mediaID)
	if err != nil {
		return nil, s.remoteFailed(origin, err)
	}
	return resp, nil
}

// remoteStatus turns a non-200 remote answer into the client's error: 404 stays 404, 504
// M_NOT_YET_UPLOADED passes through, anything else is 502.
func remoteStatus(origin string, resp *http.Response) error {
	switch resp.StatusCode {
	case http.StatusOK:
		return nil
	case http.StatusNotFound:
		return matrix.NotFound("remote media not found")
	case http.StatusGatewayTimeout:
		return notYetUploaded()
	}
	return matrix.Errorf(http.StatusBadGateway, matrix.CodeUnknown, "%s answered %d for the media", origin, resp.StatusCode)
}

// remoteFailed logs why fetching from origin failed and returns the client's 502 M_UNKNOWN
// (a *matrix.Error in err passes through).
func (s *Service) remoteFailed(origin string, err error) error {
	if me := matrix.AsError(err); me != nil {
		return me
	}
	s.log.Warn("fetching remote media failed", "server_name", origin, "error", err)
	return matrix.Errorf(http.StatusBadGateway, matrix.CodeUnknown, "fetching media from %s failed", origin)
}

// readMultipart reads a federation media response (multipart/mixed: a JSON metadata part,
// then the file or a Location to fetch it from). close releases a followed redirect.
func (s *Service) readMultipart(ctx context.Context, resp *http.Response) (remoteContent, func(), error) {
	nothing := func() {}
	mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/mixed" || params["boundary"] == "" {
		return remoteContent{}, nothing, fmt.Errorf("response is %q, not multipart/mixed", resp.Header.Get("Content-Type"))
	}
	mr := multipart.NewReader(resp.Body, params["boundary"])
	meta, err := mr.NextPart()
	if err != nil {
		return remoteContent{}, nothing, fmt.Errorf("reading metadata part: %w", err)
	}
	if _, err := io.Copy(io.Discard, io.LimitReader(meta, 64<<10)); err != nil {
		return remoteContent{}, nothing, fmt.Errorf("reading metadata part: %w", err)
	}
	part, err := mr.NextRawPart()
	if err != nil {
		return remoteContent{}, nothing, fmt.Errorf("reading content part: %w", err)
	}
	if loc := part.Header.Get("Location"); loc != "" {
		u, err := url.Parse(loc)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") {
			return remoteContent{}, nothing, fmt.Errorf("bad Location %q", loc)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return remoteContent{}, nothing, err
		}
		r2, err := s.redirects.Do(req)
		if err != nil {
			return remoteContent{}, nothing, fmt.Errorf("following Location: %w", err)
		}
		if r2.StatusCode != http.StatusOK {
			r2.Body.Close()
			return remoteContent{}, nothing, fmt.Errorf("following Location: status %d", r2.StatusCode)
		}
		return remoteContent{contentType: r2.Header.Get("Content-Type"),
			fileName: dispositionFileName(r2.Header.Get("Content-Disposition")), body: r2.Body}, func() { r2.Body.Close() }, nil
	}
	return remoteContent{contentType: part.Header.Get("Content-Type"),
		fileName: dispositionFileName(part.Header.Get("Content-Disposition")), body: part}, nothing, nil
}

// dispositionFileName returns the file name of a Content-Disposition header, or "".
func dispositionFileName(h string) string {
	if h == "" {
		return ""
	}
	_, params, err := mime.ParseMediaType(h)
	if err != nil {
		return ""
	}
	return params["filename"]
}

// tooLargeRemote is the answer for remote content over the limit.
func (s *Service) tooLargeRemote() error {
	return matrix.Errorf(http.StatusBadGateway, matrix.CodeTooLarge, "remote media is larger than %d bytes", s.maxSize())
}

// storeRemote spools rc (capped at the upload limit: 502 M_TOO_LARGE), stores its blob and
// caches the row for (origin, mediaID).
func (s *Service) storeRemote(ctx context.Context, origin, mediaID string, rc remoteContent) (*media, error) {
	sp, err := s.spool(rc.body, s.maxSize())
	if errors.Is(err, errSpoolTooLarge) {
		return nil, s.tooLargeRemote()
	}
	if err != nil {
		return nil, s.remoteFailed(origin, err)
	}
	defer sp.close()
	if err := s.storeBlob(ctx, sp); err != nil {
		return nil, err
	}
	m := &media{Origin: origin, ID: mediaID, Hash: sp.hash, Size: sp.size,
		ContentType: contentTypeOr(rc.contentType), UploadName: rc.fileName, CreatedTS: s.now().UnixMilli()}
	if err := s.db.putMedia(ctx, m); err != nil && !errors.Is(err, sqldb.ErrExists) {
		return nil, fmt.Errorf("caching media %s/%s: %w", origin, mediaID, err)
	}
	return m, nil
}

// remoteThumbnail asks origin for a thumbnail over federation and caches it. It needs the
// signing key and gmsl's request sender; without them it fails and the caller makes the
// thumbnail from the original.
func (s *Service) remoteThumbnail(ctx context.Context, origin, mediaID string, size thumbnail.Size) (*thumb, error) {
	doer, ok := s.fed.(httpDoer)
	if !ok || s.key.Private == nil {
		return nil, errors.New("no signed federation requests available")
	}
	key := fmt.Sprintf("remote thumb %s/%s %dx%d %s", origin, mediaID, size.Width, size.Height, size.Method)
	v, err := s.flights.do(ctx, key, func(ctx context.Context) (any, error) {
		ctx, cancel := context.WithTimeout(ctx, remoteTimeout)
		defer cancel()
		if t, err := s.db.thumbnail(ctx, origin, mediaID, size.Width, size.Height, string(size.Method)); err == nil {
			return t, nil
		}
		q := url.Values{"width": {strconv.Itoa(size.Width)}, "height": {strconv.Itoa(size.Height)}, "method": {string(size.Method)}}
		fr := fclient.NewFederationRequest(http.MethodGet, spec.ServerName(s.serverName), spec.ServerName(origin),
			"/_matrix/federation/v1/media/thumbnail/"+url.PathEscape(mediaID)+"?"+q.Encode())
		if err := fr.Sign(spec.ServerName(s.serverName), gomatrixserverlib.KeyID(s.key.ID), s.key.Private); err != nil {
			return nil, fmt.Errorf("signing thumbnail request: %w", err)
		}
		req, err := fr.HTTPRequest()
		if err != nil {
			return nil, err
		}
		resp, err := doer.DoHTTPRequest(ctx, req)
		if err != nil {
			return nil, s.remoteFailed(origin, err)
		}
		defer resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
		case http.StatusNotFound:
			// M_NOT_FOUND: the media is unknown. Anything else (M_UNRECOGNIZED, a non-JSON
			// page) means the endpoint is missing, and the caller falls back.
			var e struct {
				Errcode string `json:"errcode"`
			}
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			if json.Unmarshal(b, &e) == nil && e.Errcode == matrix.CodeNotFound {
				return nil, matrix.NotFound("remote media not found")
			}
			return nil, fmt.Errorf("federation thumbnail endpoint of %s answered 404", origin)
		case http.StatusGatewayTimeout:
			return nil, notYetUploaded()
		default:
			return nil, fmt.Errorf("federation thumbnail endpoint of %s answered %d", origin, resp.StatusCode)
		}
		rc, closeFn, err := s.readMultipart(ctx, resp)
		if err != nil {
			return nil, s.remoteFailed(origin, err)
		}
		defer closeFn()
		// Thumbnails are small; anything over the upload limit is refused.
		max := s.maxSize()
		if max <= 0 {
			max = 32 << 20
		}
		data, err := io.ReadAll(io.LimitReader(rc.body, max+1))
		if err != nil {
			return nil, s.remoteFailed(origin, err)
		}
		if int64(len(data)) > max {
			return nil, s.tooLargeRemote()
		}
		return s.storeThumbnail(ctx, origin, mediaID, size, contentTypeOr(rc.contentType), data)
	})
	if err != nil {
		return nil, err
	}
	return v.(*thumb), nil
}
