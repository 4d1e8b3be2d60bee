// Package federationapi serves the Server-Server API: the server's signing keys and version
// today; transactions, joins, backfill and the rest as federation lands. It may import
// roomserver, userapi and internal packages.
package federationapi

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/serverkey"
)

// Config is what federationapi needs from main.
type Config struct {
	ServerName        string
	Key               serverkey.Key
	KeyValidityPeriod time.Duration
	Version           string
}

// Service is the Server-Server API.
type Service struct {
	cfg Config
}

// New returns the federation API.
func New(cfg Config) *Service { return &Service{cfg: cfg} }

// Register adds the federation and key routes to r.
func (s *Service) Register(r *mux.Router) {
	h := httpx.Handler
	r.Handle("/_matrix/federation/v1/version", h(s.version)).Methods(http.MethodGet)
	r.Handle("/_matrix/key/v2/server", h(s.serverKeys)).Methods(http.MethodGet)
	r.Handle("/_matrix/key/v2/server/{keyID}", h(s.serverKeys)).Methods(http.MethodGet)
	// The notary endpoint arrives with federation; until then it answers as not built.
	r.Handle("/_matrix/key/v2/query", h(notBuilt)).Methods(http.MethodPost)
	r.Handle("/_matrix/key/v2/query/{serverName}", h(notBuilt)).Methods(http.MethodGet)
}

func notBuilt(w http.ResponseWriter, r *http.Request) error {
	return matrix.Unrecognized(http.StatusNotFound)
}

func (s *Service) version(w http.ResponseWriter, r *http.Request) error {
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{
		"server": map[string]string{"name": "Myelin", "version": s.cfg.Version},
	})
}

// serverKeys publishes this server's signing key, self-signed, valid for the configured period.
func (s *Service) serverKeys(w http.ResponseWriter, r *http.Request) error {
	var keys gomatrixserverlib.ServerKeyFields
	keys.ServerName = spec.ServerName(s.cfg.ServerName)
	keys.ValidUntilTS = spec.AsTimestamp(time.Now().Add(s.cfg.KeyValidityPeriod))
	keys.VerifyKeys = map[gomatrixserverlib.KeyID]gomatrixserverlib.VerifyKey{
		gomatrixserverlib.KeyID(s.cfg.Key.ID): {Key: spec.Base64Bytes(s.cfg.Key.Public())},
	}
	keys.OldVerifyKeys = map[gomatrixserverlib.KeyID]gomatrixserverlib.OldVerifyKey{}
	raw, err := json.Marshal(keys)
	if err != nil {
		return err
	}
	signed, err := gomatrixserverlib.SignJSON(s.cfg.ServerName, gomatrixserverlib.KeyID(s.cfg.Key.ID), s.cfg.Key.Private, raw)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	_, err = w.Write(signed)
	return err
}
