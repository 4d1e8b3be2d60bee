package federationapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
)

// Keys is what the key endpoints need: this server's signed key document and, as a notary,
// other servers' signed key responses. *fedclient.Client implements it.
type Keys interface {
	// OwnKeys returns this server's signed /_matrix/key/v2/server document.
	OwnKeys() ([]byte, error)
	// NotaryKeys returns server's own signed key responses (cached or fetched), valid until
	// minValidUntil where possible; none when server is unknown and unreachable.
	NotaryKeys(ctx context.Context, server spec.ServerName, keyIDs []gomatrixserverlib.KeyID, minValidUntil spec.Timestamp) ([]json.RawMessage, error)
}

// notaryWorkers bounds how many servers one batch query fetches at once.
const notaryWorkers = 8

// serverKeys publishes this server's signing key and old keys, self-signed.
func (s *Service) serverKeys(w http.ResponseWriter, r *http.Request) error {
	signed, err := s.keys.OwnKeys()
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	_, err = w.Write(signed)
	return err
}

// keyQueryCriteria is one key's criteria in a batch key query.
type keyQueryCriteria struct {
	MinimumValidUntilTS spec.Timestamp `json:"minimum_valid_until_ts"`
}

type keyQueryRequest struct {
	ServerKeys *map[string]map[string]keyQueryCriteria `json:"server_keys"`
}

type keyQueryResponse struct {
	ServerKeys []json.RawMessage `json:"server_keys"`
}

// notaryQuery answers POST /_matrix/key/v2/query: keys of many servers.
func (s *Service) notaryQuery(w http.ResponseWriter, r *http.Request) error {
	var req keyQueryRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if req.ServerKeys == nil {
		return matrix.BadJSON("server_keys is required")
	}
	queries := make([]notaryQuery, 0, len(*req.ServerKeys))
	for server, keys := range *req.ServerKeys {
		q := notaryQuery{server: spec.ServerName(server)}
		for id, c := range keys {
			q.keyIDs = append(q.keyIDs, gomatrixserverlib.KeyID(id))
			q.minValidUntil = max(q.minValidUntil, c.MinimumValidUntilTS)
		}
		queries = append(queries, q)
	}
	resp, err := s.notarise(r.Context(), queries)
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, resp)
}

// notaryQueryOne answers GET /_matrix/key/v2/query/{serverName}.
func (s *Service) notaryQueryOne(w http.ResponseWriter, r *http.Request) error {
	q := notaryQuery{server: spec.ServerName(httpx.Var(r, "serverName"))}
	if v := r.URL.Query().Get("minimum_valid_until_ts"); v != "" {
		ts, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return matrix.InvalidParam("minimum_valid_until_ts must be an integer")
		}
		q.minValidUntil = spec.Timestamp(ts)
	}
	resp, err := s.notarise(r.Context(), []notaryQuery{q})
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, resp)
}

type notaryQuery struct {
	server        spec.ServerName
	keyIDs        []gomatrixserverlib.KeyID
	minValidUntil spec.Timestamp
}

// notarise collects each queried server's signed key responses and adds this server's
// signature to each, as the spec asks of a notary. Servers that are unreachable and not
// cached, or whose names are invalid, are left out.
func (s *Service) notarise(ctx context.Context, queries []notaryQuery) (keyQueryResponse, error) {
	resp := keyQueryResponse{ServerKeys: []json.RawMessage{}}
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	jobs := make(chan notaryQuery)
	for range min(notaryWorkers, len(queries)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for q := range jobs {
				signed, err := s.notariseOne(ctx, q)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				resp.ServerKeys = append(resp.ServerKeys, signed...)
				mu.Unlock()
			}
		}()
	}
	for _, q := range queries {
		if _, _, ok := spec.ParseAndValidateServerName(q.server); ok {
			jobs <- q
		}
	}
	close(jobs)
	wg.Wait()
	return resp, firstErr
}

func (s *Service) notariseOne(ctx context.Context, q notaryQuery) ([]json.RawMessage, error) {
	raws, err := s.keys.NotaryKeys(ctx, q.server, q.keyIDs, q.minValidUntil)
	if err != nil {
		return nil, fmt.Errorf("looking up keys of %s: %w", q.server, err)
	}
	if string(q.server) == s.cfg.ServerName {
		return raws, nil // already signed by us
	}
	out := make([]json.RawMessage, 0, len(raws))
	for _, raw := range raws {
		signed, err := gomatrixserverlib.SignJSON(s.cfg.ServerName, gomatrixserverlib.KeyID(s.cfg.Key.ID), s.cfg.Key.Private, raw)
		if err != nil {
			return nil, fmt.Errorf("signing keys of %s: %w", q.server, err)
		}
		out = append(out, signed)
	}
	return out, nil
}
