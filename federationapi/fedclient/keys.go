package fedclient

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/sqldb"
)

// maxKeyCache is how many cached keys keyStore keeps in memory in front of the database.
const maxKeyCache = 4096

// maxKeyValidity caps how long a fetched key is trusted without asking again: the spec's
// "lesser of valid_until_ts and 7 days" for room versions 5 and later.
const maxKeyValidity = 7 * 24 * time.Hour

// farFuture is the validity given to this server's own current key.
var farFuture = spec.AsTimestamp(time.Unix(1<<37, 0))

// localKey is one of this server's own keys: the current one (expired 0) or an old one.
type localKey struct {
	public  ed25519.PublicKey
	expired spec.Timestamp
}

// keyStore is the key ring's KeyDatabase: other servers' keys in the database with a small
// in-memory cache in front, and this server's own keys answered from the configuration. It
// also keeps each server's newest signed key response for the notary endpoint.
type keyStore struct {
	db         *sqldb.DB
	serverName spec.ServerName
	local      map[gomatrixserverlib.KeyID]localKey
	now        func() time.Time

	mu  sync.RWMutex
	mem map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult
}

var _ gomatrixserverlib.KeyDatabase = (*keyStore)(nil)

// FetcherName implements gomatrixserverlib.KeyFetcher.
func (s *keyStore) FetcherName() string { return "fedclient key cache" }

// FetchKeys returns the cached keys among requests, whether or not they are still valid;
// the key ring decides what to fetch again.
func (s *keyStore) FetchKeys(ctx context.Context, requests map[gomatrixserverlib.PublicKeyLookupRequest]spec.Timestamp) (map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult, error) {
	results := make(map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult, len(requests))
	var missing map[spec.ServerName][]gomatrixserverlib.PublicKeyLookupRequest
	s.mu.RLock()
	for req := range requests {
		if req.ServerName == s.serverName {
			if k, ok := s.local[req.KeyID]; ok {
				results[req] = localResult(k)
			}
			continue
		}
		if res, ok := s.mem[req]; ok {
			results[req] = res
			continue
		}
		if missing == nil {
			missing = map[spec.ServerName][]gomatrixserverlib.PublicKeyLookupRequest{}
		}
		missing[req.ServerName] = append(missing[req.ServerName], req)
	}
	s.mu.RUnlock()
	for server, reqs := range missing {
		// One query per server: servers publish one or two keys.
		rows, err := s.db.Query(ctx, `SELECT key_id, public_key, valid_until_ts, expired_ts FROM server_signing_keys WHERE server_name = $1`, string(server))
		if err != nil {
			return nil, fmt.Errorf("reading keys of %s: %w", server, err)
		}
		found := map[gomatrixserverlib.KeyID]gomatrixserverlib.PublicKeyLookupResult{}
		for rows.Next() {
			var keyID, pub string
			var validUntil, expired int64
			if err := rows.Scan(&keyID, &pub, &validUntil, &expired); err != nil {
				rows.Close()
				return nil, fmt.Errorf("reading keys of %s: %w", server, err)
			}
			var key spec.Base64Bytes
			if err := key.Decode(pub); err != nil {
				continue
			}
			found[gomatrixserverlib.KeyID(keyID)] = gomatrixserverlib.PublicKeyLookupResult{
				VerifyKey:    gomatrixserverlib.VerifyKey{Key: key},
				ValidUntilTS: spec.Timestamp(validUntil),
				ExpiredTS:    spec.Timestamp(expired),
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("reading keys of %s: %w", server, err)
		}
		for _, req := range reqs {
			if res, ok := found[req.KeyID]; ok {
				results[req] = res
				s.remember(req, res)
			}
		}
	}
	return results, nil
}

func localResult(k localKey) gomatrixserverlib.PublicKeyLookupResult {
	res := gomatrixserverlib.PublicKeyLookupResult{VerifyKey: gomatrixserverlib.VerifyKey{Key: spec.Base64Bytes(k.public)}}
	if k.expired != 0 {
		res.ExpiredTS = k.expired
	} else {
		res.ValidUntilTS = farFuture
	}
	return res
}

func (s *keyStore) remember(req gomatrixserverlib.PublicKeyLookupRequest, res gomatrixserverlib.PublicKeyLookupResult) {
	s.mu.Lock()
	if len(s.mem) >= maxKeyCache {
		clear(s.mem)
	}
	s.mem[req] = res
	s.mu.Unlock()
}

// StoreKeys records fetched keys. A key's validity is capped at seven days from now, so the
// key ring asks the server again at least weekly. Keys already cached unchanged, and this
// server's own keys, are not written.
func (s *keyStore) StoreKeys(ctx context.Context, results map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult) error {
	now := s.now()
	capTS := spec.AsTimestamp(now.Add(maxKeyValidity))
	for req, res := range results {
		if req.ServerName == s.serverName || len(res.Key) != ed25519.PublicKeySize {
			continue
		}
		if res.ValidUntilTS > capTS {
			res.ValidUntilTS = capTS
		}
		s.mu.RLock()
		old, ok := s.mem[req]
		s.mu.RUnlock()
		if ok && old.ExpiredTS == res.ExpiredTS && old.ValidUntilTS == res.ValidUntilTS && string(old.Key) == string(res.Key) {
			continue
		}
		if _, err := s.db.Exec(ctx, `INSERT INTO server_signing_keys (server_name, key_id, public_key, valid_until_ts, expired_ts, fetched_ts)
			VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (server_name, key_id) DO UPDATE SET public_key = excluded.public_key,
				valid_until_ts = excluded.valid_until_ts, expired_ts = excluded.expired_ts, fetched_ts = excluded.fetched_ts`,
			string(req.ServerName), string(req.KeyID), res.Key.Encode(), int64(res.ValidUntilTS), int64(res.ExpiredTS), now.UnixMilli()); err != nil {
			return fmt.Errorf("storing key %s of %s: %w", req.KeyID, req.ServerName, err)
		}
		s.remember(req, res)
	}
	return nil
}

// storeResponse records keys, a server's own signed /_matrix/key/v2/server response that
// passed gomatrixserverlib.CheckKeys, and its keys.
func (s *keyStore) storeResponse(ctx context.Context, keys gomatrixserverlib.ServerKeys) error {
	if _, err := s.db.Exec(ctx, `INSERT INTO server_key_responses (server_name, valid_until_ts, fetched_ts, response)
		VALUES ($1, $2, $3, $4)
		ON CONFLICT (server_name) DO UPDATE SET valid_until_ts = excluded.valid_until_ts,
			fetched_ts = excluded.fetched_ts, response = excluded.response`,
		string(keys.ServerName), int64(keys.ValidUntilTS), s.now().UnixMilli(), string(keys.Raw)); err != nil {
		return fmt.Errorf("storing key response of %s: %w", keys.ServerName, err)
	}
	return s.StoreKeys(ctx, lookupResults(keys))
}

// response returns the newest signed key response stored for server and when it was
// fetched, or sql.ErrNoRows.
func (s *keyStore) response(ctx context.Context, server spec.ServerName) (gomatrixserverlib.ServerKeys, time.Time, error) {
	var raw string
	var fetched int64
	var keys gomatrixserverlib.ServerKeys
	if err := s.db.QueryRow(ctx, `SELECT response, fetched_ts FROM server_key_responses WHERE server_name = $1`, string(server)).Scan(&raw, &fetched); err != nil {
		return keys, time.Time{}, err
	}
	if err := json.Unmarshal([]byte(raw), &keys); err != nil {
		return keys, time.Time{}, fmt.Errorf("decoding stored key response of %s: %w", server, err)
	}
	return keys, time.UnixMilli(fetched), nil
}

// lookupResults turns a key response into key ring results, as gomatrixserverlib does for
// the responses its fetchers receive.
func lookupResults(keys gomatrixserverlib.ServerKeys) map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult {
	out := map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult{}
	for id, k := range keys.VerifyKeys {
		out[gomatrixserverlib.PublicKeyLookupRequest{ServerName: keys.ServerName, KeyID: id}] = gomatrixserverlib.PublicKeyLookupResult{
			VerifyKey: k, ValidUntilTS: keys.ValidUntilTS, ExpiredTS: gomatrixserverlib.PublicKeyNotExpired,
		}
	}
	for id, k := range keys.OldVerifyKeys {
		out[gomatrixserverlib.PublicKeyLookupRequest{ServerName: keys.ServerName, KeyID: id}] = gomatrixserverlib.PublicKeyLookupResult{
			VerifyKey: k.VerifyKey, ValidUntilTS: gomatrixserverlib.PublicKeyNotValid, ExpiredTS: k.ExpiredTS,
		}
	}
	return out
}

// keyClient is the KeyClient the direct fetcher uses: the federation client, recording each
// server's own valid key response for the notary endpoint.
type keyClient struct {
	fclient.FederationClient
	store *keyStore
}

// GetServerKeys fetches server's keys from server itself and records the response when it
// passes gomatrixserverlib.CheckKeys. It returns the response whether or not it passes; the
// caller checks.
func (k *keyClient) GetServerKeys(ctx context.Context, server spec.ServerName) (gomatrixserverlib.ServerKeys, error) {
	keys, err := k.FederationClient.GetServerKeys(ctx, server)
	if err != nil {
		return keys, err
	}
	if checks, _ := gomatrixserverlib.CheckKeys(server, time.Unix(0, 0), keys); checks.AllChecksOK {
		if err := k.store.storeResponse(ctx, keys); err != nil {
			return keys, err
		}
	}
	return keys, nil
}

// fetchResponse fetches server's keys directly and returns the response if it passes
// gomatrixserverlib.CheckKeys.
func (k *keyClient) fetchResponse(ctx context.Context, server spec.ServerName) (gomatrixserverlib.ServerKeys, error) {
	keys, err := k.GetServerKeys(ctx, server)
	if err != nil {
		return keys, fmt.Errorf("fetching keys of %s: %w", server, err)
	}
	if checks, _ := gomatrixserverlib.CheckKeys(server, time.Unix(0, 0), keys); !checks.AllChecksOK {
		return keys, fmt.Errorf("keys of %s failed their checks", server)
	}
	return keys, nil
}

// isNoRows reports whether err is sql.ErrNoRows.
func isNoRows(err error) bool { return errors.Is(err, sql.ErrNoRows) }
