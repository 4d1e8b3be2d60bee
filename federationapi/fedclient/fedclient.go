// Package fedclient makes signed Server-Server requests, finds remote servers (well-known,
// SRV, port 8448, with a cache that expires), refuses to connect to denied networks, and
// keeps the key ring: other servers' signing keys, cached in the database and fetched
// directly or through trusted notaries. It imports no component, so federationapi, its
// sender, roomserver's remote side and mediaapi may all use it.
package fedclient

import (
	"context"
	"crypto/ed25519"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/config"
	"github.com/myelin-chat/myelin/internal/netguard"
	"github.com/myelin-chat/myelin/internal/serverkey"
	"github.com/myelin-chat/myelin/internal/sqldb"
)

//go:embed storage/migrations/*.sql
var migrations embed.FS

// notaryRefetch is how soon the notary endpoint may ask a server for its keys again.
const notaryRefetch = time.Minute

// DefaultTimeout is the whole-request timeout when Config.Timeout is zero.
const DefaultTimeout = 60 * time.Second

// Config is what fedclient needs from main.
type Config struct {
	ServerName string
	Key        serverkey.Key
	// OldKeys are keys this server signed with before (global.old_private_keys), published
	// as old_verify_keys and accepted for our own old events.
	OldKeys []config.OldKey
	// KeyValidityPeriod is the valid_until_ts of our published key document, from now.
	KeyValidityPeriod time.Duration
	// DisableTLSValidation skips certificate checks (federation_api.disable_tls_validation).
	DisableTLSValidation bool
	// DisableKeepAlives closes each connection after one request.
	DisableKeepAlives bool
	// AllowNetworks and DenyNetworks are CIDRs: a connection to an address in DenyNetworks,
	// or (when AllowNetworks is not empty) outside AllowNetworks, is refused with ErrDenied.
	// The check runs on the resolved address, just before connecting.
	AllowNetworks, DenyNetworks []string
	// KeyPerspectives are notaries trusted for other servers' keys; PreferDirectFetch asks
	// the server itself first.
	KeyPerspectives   []config.KeyPerspective
	PreferDirectFetch bool
	// Timeout bounds each whole request, body included (DefaultTimeout when zero).
	Timeout time.Duration
	// UserAgent is sent with every request.
	UserAgent string
	// Hosts maps an address that discovery decides to dial ("host:port") to the address
	// actually dialled. It is for tests, which run remote servers on loopback ports under
	// made-up names; the network policy still applies to the dialled address.
	Hosts map[string]string
}

// Client is the outbound federation client and key ring. It is safe for concurrent use.
type Client struct {
	cfg   Config
	log   *slog.Logger
	fed   fclient.FederationClient
	res   *resolver
	keys  *keyStore
	kc    *keyClient
	ring  *gomatrixserverlib.KeyRing
	old   map[gomatrixserverlib.KeyID]gomatrixserverlib.OldVerifyKey
	fetch flightGroup[gomatrixserverlib.ServerKeys]
}

// New runs fedclient's migrations on db and returns the client. It returns an error for an
// unparsable network, notary key or old key.
func New(cfg Config, db *sqldb.DB, log *slog.Logger) (*Client, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.KeyValidityPeriod <= 0 {
		cfg.KeyValidityPeriod = 7 * 24 * time.Hour
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "Myelin"
	}
	sub, err := fs.Sub(migrations, "storage/migrations")
	if err != nil {
		return nil, err
	}
	if err := db.Migrate(context.Background(), "fedclient", sub); err != nil {
		return nil, fmt.Errorf("migrating fedclient: %w", err)
	}
	guard, err := netguard.New(cfg.AllowNetworks, cfg.DenyNetworks)
	if err != nil {
		return nil, err
	}
	old, err := loadOldKeys(cfg.OldKeys)
	if err != nil {
		return nil, err
	}
	delete(old, gomatrixserverlib.KeyID(cfg.Key.ID)) // the current key is never an old one
	d := newDialer(guard, cfg.Hosts)
	res := newResolver(d, cfg.DisableTLSValidation)
	tr := &transport{res: res, dial: d, skipVerify: cfg.DisableTLSValidation, keepAlives: !cfg.DisableKeepAlives, bySNI: map[string]*sniTransport{}}
	// WithTransport replaces gmsl's own transport, so its discovery cache (which never
	// expires), its well-known client (which ignores the network policy) and its
	// allow/deny and skip-verify options are all unused: transport does that work.
	fed := fclient.NewFederationClient([]*fclient.SigningIdentity{{
		ServerName: spec.ServerName(cfg.ServerName),
		KeyID:      gomatrixserverlib.KeyID(cfg.Key.ID),
		PrivateKey: cfg.Key.Private,
	}}, fclient.WithTransport(tr), fclient.WithTimeout(cfg.Timeout), fclient.WithUserAgent(cfg.UserAgent))

	local := map[gomatrixserverlib.KeyID]localKey{gomatrixserverlib.KeyID(cfg.Key.ID): {public: cfg.Key.Public()}}
	for id, k := range old {
		local[id] = localKey{public: ed25519.PublicKey(k.Key), expired: k.ExpiredTS}
	}
	store := &keyStore{db: db, serverName: spec.ServerName(cfg.ServerName), local: local, now: time.Now,
		mem: map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult{}}
	kc := &keyClient{FederationClient: fed, store: store}

	direct := &gomatrixserverlib.DirectKeyFetcher{
		Client:            kc,
		IsLocalServerName: func(s spec.ServerName) bool { return string(s) == cfg.ServerName },
		LocalPublicKey:    spec.Base64Bytes(cfg.Key.Public()),
	}
	var notaries []gomatrixserverlib.KeyFetcher
	for i, p := range cfg.KeyPerspectives {
		keys := map[gomatrixserverlib.KeyID]ed25519.PublicKey{}
		for j, k := range p.Keys {
			pub, err := decodeKey(k.PublicKey)
			if err != nil {
				return nil, fmt.Errorf("federation_api.key_perspectives[%d].keys[%d]: %w", i, j, err)
			}
			keys[gomatrixserverlib.KeyID(k.KeyID)] = pub
		}
		notaries = append(notaries, &gomatrixserverlib.PerspectiveKeyFetcher{
			PerspectiveServerName: spec.ServerName(p.ServerName),
			PerspectiveServerKeys: keys,
			Client:                fed,
		})
	}
	fetchers := append(notaries, direct)
	if cfg.PreferDirectFetch {
		fetchers = append([]gomatrixserverlib.KeyFetcher{direct}, notaries...)
	}
	return &Client{
		cfg: cfg, log: log, fed: fed, res: res, keys: store, kc: kc, old: old,
		ring: &gomatrixserverlib.KeyRing{KeyDatabase: store, KeyFetchers: fetchers},
	}, nil
}

// Federation returns the signed federation client: requests whose origin is this server are
// signed with its key, sent to the destination found by server discovery, and refused for
// denied networks.
func (c *Client) Federation() fclient.FederationClient { return c.fed }

// KeyRing returns the key ring (a *gomatrixserverlib.KeyRing) that verifies other servers'
// signatures: keys come from the database cache, else the notaries and the server itself in
// the configured order; this server's own keys are answered from its configuration.
func (c *Client) KeyRing() gomatrixserverlib.JSONVerifier { return c.ring }

// OwnKeys returns this server's /_matrix/key/v2/server document, signed with its current
// key, listing the old keys as old_verify_keys and valid for the configured period.
func (c *Client) OwnKeys() ([]byte, error) {
	var keys gomatrixserverlib.ServerKeyFields
	keys.ServerName = spec.ServerName(c.cfg.ServerName)
	keys.ValidUntilTS = spec.AsTimestamp(time.Now().Add(c.cfg.KeyValidityPeriod))
	keys.VerifyKeys = map[gomatrixserverlib.KeyID]gomatrixserverlib.VerifyKey{
		gomatrixserverlib.KeyID(c.cfg.Key.ID): {Key: spec.Base64Bytes(c.cfg.Key.Public())},
	}
	keys.OldVerifyKeys = c.old
	raw, err := json.Marshal(keys)
	if err != nil {
		return nil, fmt.Errorf("encoding our keys: %w", err)
	}
	signed, err := gomatrixserverlib.SignJSON(c.cfg.ServerName, gomatrixserverlib.KeyID(c.cfg.Key.ID), c.cfg.Key.Private, raw)
	if err != nil {
		return nil, fmt.Errorf("signing our keys: %w", err)
	}
	return signed, nil
}

// NotaryKeys returns server's keys as a notary passes them on: server's own signed
// /_matrix/key/v2/server responses, without the notary's signature (the caller adds it).
// It answers from the cache when the stored response is valid until minValidUntil (now when
// zero) and holds every key in keyIDs; otherwise it asks server, falling back to the stale
// stored response if server cannot be reached. It returns no responses, and no error, when
// nothing is known; an error only for a database failure.
func (c *Client) NotaryKeys(ctx context.Context, server spec.ServerName, keyIDs []gomatrixserverlib.KeyID, minValidUntil spec.Timestamp) ([]json.RawMessage, error) {
	if string(server) == c.cfg.ServerName {
		own, err := c.OwnKeys()
		if err != nil {
			return nil, err
		}
		return []json.RawMessage{own}, nil
	}
	if minValidUntil == 0 {
		minValidUntil = spec.AsTimestamp(time.Now())
	}
	stored, fetched, err := c.keys.response(ctx, server)
	if err != nil && !isNoRows(err) {
		return nil, err
	}
	have := err == nil
	// A response that is good enough, or that was fetched moments ago (so that queries
	// asking for more than the server offers do not make us ask it again and again).
	if have && (stored.ValidUntilTS >= minValidUntil && holdsAll(stored, keyIDs) || c.keys.now().Sub(fetched) < notaryRefetch) {
		return []json.RawMessage{json.RawMessage(stored.Raw)}, nil
	}
	fresh, err := c.fetch.do(string(server), func() (gomatrixserverlib.ServerKeys, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		defer cancel()
		return c.kc.fetchResponse(ctx, server)
	})
	if err == nil {
		return []json.RawMessage{json.RawMessage(fresh.Raw)}, nil
	}
	c.log.Debug("notary fetch failed", "server_name", string(server), "error", err)
	if have {
		return []json.RawMessage{json.RawMessage(stored.Raw)}, nil
	}
	return nil, nil
}

func holdsAll(keys gomatrixserverlib.ServerKeys, ids []gomatrixserverlib.KeyID) bool {
	for _, id := range ids {
		_, current := keys.VerifyKeys[id]
		_, old := keys.OldVerifyKeys[id]
		if !current && !old {
			return false
		}
	}
	return true
}

// loadOldKeys reads global.old_private_keys: a PEM file, or a public key with its ID. A key
// without expired_at is taken to have expired at start-up.
func loadOldKeys(in []config.OldKey) (map[gomatrixserverlib.KeyID]gomatrixserverlib.OldVerifyKey, error) {
	out := map[gomatrixserverlib.KeyID]gomatrixserverlib.OldVerifyKey{}
	for i, k := range in {
		id, pub := k.KeyID, ed25519.PublicKey(nil)
		if k.PrivateKeyPath != "" {
			key, err := serverkey.Load(k.PrivateKeyPath)
			if err != nil {
				return nil, fmt.Errorf("global.old_private_keys[%d]: %w", i, err)
			}
			id, pub = key.ID, key.Public()
		} else {
			var err error
			if pub, err = decodeKey(k.PublicKey); err != nil {
				return nil, fmt.Errorf("global.old_private_keys[%d].public_key: %w", i, err)
			}
		}
		if !strings.HasPrefix(id, "ed25519:") {
			return nil, fmt.Errorf("global.old_private_keys[%d]: key ID %q is not an ed25519 key ID", i, id)
		}
		expired := spec.Timestamp(k.ExpiredAt)
		if expired == 0 {
			// expired_at unset: the key counts as retired now, at start-up.
			expired = spec.AsTimestamp(time.Now())
		}
		out[gomatrixserverlib.KeyID(id)] = gomatrixserverlib.OldVerifyKey{
			VerifyKey: gomatrixserverlib.VerifyKey{Key: spec.Base64Bytes(pub)},
			ExpiredTS: expired,
		}
	}
	return out, nil
}

// decodeKey decodes an ed25519 public key in base64, padded or not.
func decodeKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil {
		return nil, fmt.Errorf("decoding public key: %w", err)
	}
	if len(b) != ed25519.PublicKeySize {
		return nil, errors.New("public key is not 32 bytes")
	}
	return b, nil
}
