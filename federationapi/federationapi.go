// Package federationapi serves the Server-Server API: the server's signing keys and version
// today; transactions, joins, backfill and the rest as federation lands. It may import
// roomserver, userapi and internal packages.
package federationapi

import (
	"net/http"

	"github.com/gorilla/mux"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/serverkey"
)

// Config is what federationapi needs from main.
type Config struct {
	ServerName string
	Key        serverkey.Key
	Version    string
}

// Service is the Server-Server API.
type Service struct {
	cfg  Config
	keys Keys
}

// New returns the federation API. keys serves our key document and the notary endpoints.
func New(cfg Config, keys Keys) *Service { return &Service{cfg: cfg, keys: keys} }

// Register adds the federation and key routes to r.
func (s *Service) Register(r *mux.Router) {
	h := httpx.Handler
	r.Handle("/_matrix/federation/v1/version", h(s.version)).Methods(http.MethodGet)
	r.Handle("/_matrix/key/v2/server", h(s.serverKeys)).Methods(http.MethodGet)
	r.Handle("/_matrix/key/v2/server/{keyID}", h(s.serverKeys)).Methods(http.MethodGet)
	r.Handle("/_matrix/key/v2/query", h(s.notaryQuery)).Methods(http.MethodPost)
	r.Handle("/_matrix/key/v2/query/{serverName}", h(s.notaryQueryOne)).Methods(http.MethodGet)
}

func (s *Service) version(w http.ResponseWriter, r *http.Request) error {
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{
		"server": map[string]string{"name": "Myelin", "version": s.cfg.Version},
	})
}
