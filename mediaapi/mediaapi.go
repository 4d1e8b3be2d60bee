// Package mediaapi will serve the content repository: uploads, downloads, thumbnails, URL
// previews and remote media, on local disk or S3. Until it is built its routes are declared so
// that a wrong method is told apart from a missing endpoint, and every one answers
// 404 M_UNRECOGNIZED. It may import federationapi/fedclient and internal packages.
package mediaapi

import (
	"net/http"

	"github.com/gorilla/mux"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
)

// Register declares the media routes on r.
func Register(r *mux.Router) {
	notBuilt := httpx.Handler(func(w http.ResponseWriter, r *http.Request) error {
		return matrix.Unrecognized(http.StatusNotFound)
	})
	r.Handle("/_matrix/media/{v:(?:r0|v3)}/upload", notBuilt).Methods(http.MethodPost)
	r.Handle("/_matrix/media/{v:(?:r0|v3)}/config", notBuilt).Methods(http.MethodGet)
}
