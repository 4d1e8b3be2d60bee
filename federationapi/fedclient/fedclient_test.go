package fedclient

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/config"
	"github.com/myelin-chat/myelin/internal/serverkey"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
)

func newKey(t *testing.T, id string) serverkey.Key {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	testkit.Must(t, err, "generating key")
	return serverkey.Key{ID: id, Private: priv}
}

// testConfig is a client for "local.test" that may reach loopback, as tests must.
func testConfig(t *testing.T, hosts map[string]string) Config {
	return Config{
		ServerName:           "local.test",
		Key:                  newKey(t, "ed25519:local"),
		DisableTLSValidation: true,
		AllowNetworks:        []string{"0.0.0.0/0", "::/0"},
		Timeout:              10 * time.Second,
		Hosts:                hosts,
	}
}

func newClient(t *testing.T, cfg Config, db *sqldb.DB) *Client {
	t.Helper()
	c, err := New(cfg, db, slog.New(slog.NewTextHandler(io.Discard, nil)))
	testkit.Must(t, err, "fedclient.New")
	return c
}

// remoteServer is a fake homeserver on a loopback TLS port that publishes its key.
type remoteServer struct {
	name       string
	key        serverkey.Key
	srv        *httptest.Server
	validUntil atomic.Int64 // ms; 0 means an hour from now
	keyFetches atomic.Int32
}

func newRemote(t *testing.T, name string) *remoteServer {
	t.Helper()
	rs := &remoteServer{name: name, key: newKey(t, "ed25519:remote")}
	rs.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/_matrix/key/v2/server" {
			http.NotFound(w, r)
			return
		}
		rs.keyFetches.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(rs.keyDocument(t))
	}))
	t.Cleanup(rs.srv.Close)
	return rs
}

func (rs *remoteServer) keyDocument(t *testing.T) []byte {
	vu := rs.validUntil.Load()
	if vu == 0 {
		vu = time.Now().Add(time.Hour).UnixMilli()
	}
	var keys gomatrixserverlib.ServerKeyFields
	keys.ServerName = spec.ServerName(rs.name)
	keys.ValidUntilTS = spec.Timestamp(vu)
	keys.VerifyKeys = map[gomatrixserverlib.KeyID]gomatrixserverlib.VerifyKey{
		gomatrixserverlib.KeyID(rs.key.ID): {Key: spec.Base64Bytes(rs.key.Public())},
	}
	raw, _ := json.Marshal(keys)
	signed, err := gomatrixserverlib.SignJSON(rs.name, gomatrixserverlib.KeyID(rs.key.ID), rs.key.Private, raw)
	if err != nil {
		t.Errorf("signing key document: %v", err)
	}
	return signed
}

func (rs *remoteServer) addr() string { return rs.srv.Listener.Addr().String() }

func (rs *remoteServer) sign(t *testing.T, v any) []byte {
	raw, _ := json.Marshal(v)
	signed, err := gomatrixserverlib.SignJSON(rs.name, gomatrixserverlib.KeyID(rs.key.ID), rs.key.Private, raw)
	testkit.Must(t, err, "signing")
	return signed
}

func verify(t *testing.T, c *Client, server string, msg []byte, at time.Time) error {
	t.Helper()
	res, err := c.KeyRing().VerifyJSONs(context.Background(), []gomatrixserverlib.VerifyJSONRequest{{
		ServerName: spec.ServerName(server), AtTS: spec.AsTimestamp(at), Message: msg,
		ValidityCheckingFunc: gomatrixserverlib.StrictValiditySignatureCheck,
	}})
	if err != nil {
		t.Fatalf("VerifyJSONs: %v", err)
	}
	return res[0].Error
}

func TestKeyRingCachesAndRefetches(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		remote := newRemote(t, "remote.test:8448")
		hosts := map[string]string{"remote.test:8448": remote.addr()}
		msg := remote.sign(t, map[string]string{"hello": "world"})

		// A client whose clock is eight days behind stores the key as having expired a
		// day ago (validity is capped at seven days after the fetch), so every use fetches
		// it again.
		stale := newClient(t, testConfig(t, hosts), db)
		stale.keys.now = func() time.Time { return time.Now().Add(-8 * 24 * time.Hour) }
		steps := []struct {
			name        string
			c           *Client
			wantFetches int32
		}{
			{"first use fetches", stale, 1},
			{"expired key is fetched again", stale, 2},
		}
		fresh := newClient(t, testConfig(t, hosts), db)
		steps = append(steps, []struct {
			name        string
			c           *Client
			wantFetches int32
		}{
			{"expired key in the database is fetched again", fresh, 3},
			{"valid key is served from the cache", fresh, 3},
		}...)
		for _, s := range steps {
			if err := verify(t, s.c, remote.name, msg, time.Now()); err != nil {
				t.Fatalf("%s: verify: %v", s.name, err)
			}
			if got := remote.keyFetches.Load(); got != s.wantFetches {
				t.Fatalf("%s: got %d key fetches, want %d", s.name, got, s.wantFetches)
			}
		}
		// A restarted server finds the key in the database.
		restarted := newClient(t, testConfig(t, hosts), db)
		if err := verify(t, restarted, remote.name, msg, time.Now()); err != nil {
			t.Fatalf("after restart: %v", err)
		}
		if got := remote.keyFetches.Load(); got != 3 {
			t.Fatalf("after restart: got %d key fetches, want 3", got)
		}
		// A forged signature fails.
		other := &remoteServer{name: remote.name, key: newKey(t, remote.key.ID)}
		if err := verify(t, restarted, remote.name, other.sign(t, map[string]string{"a": "b"}), time.Now()); err == nil {
			t.Fatal("a signature by another key verified")
		}
	})
}

func TestKeyRingLocalKeys(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		cfg := testConfig(t, nil)
		old := newKey(t, "ed25519:old")
		expired := time.Now().Add(-time.Hour)
		cfg.OldKeys = []config.OldKey{{KeyID: old.ID, PublicKey: spec.Base64Bytes(old.Public()).Encode(), ExpiredAt: expired.UnixMilli()}}
		c := newClient(t, cfg, db)
		signWith := func(k serverkey.Key) []byte {
			signed, err := gomatrixserverlib.SignJSON(cfg.ServerName, gomatrixserverlib.KeyID(k.ID), k.Private, []byte(`{"a":1}`))
			testkit.Must(t, err, "signing")
			return signed
		}
		tests := []struct {
			name   string
			msg    []byte
			at     time.Time
			wantOK bool
		}{
			{"current key", signWith(cfg.Key), time.Now(), true},
			{"old key before it expired", signWith(old), expired.Add(-time.Minute), true},
			{"old key after it expired", signWith(old), time.Now(), false},
			{"unknown key", signWith(newKey(t, "ed25519:nope")), time.Now(), false},
		}
		for _, tt := range tests {
			err := verify(t, c, cfg.ServerName, tt.msg, tt.at)
			if (err == nil) != tt.wantOK {
				t.Errorf("%s: got error %v, want ok=%v", tt.name, err, tt.wantOK)
			}
		}
		// Our own document lists the old key.
		own, err := c.OwnKeys()
		testkit.Must(t, err, "OwnKeys")
		var doc gomatrixserverlib.ServerKeys
		testkit.Must(t, json.Unmarshal(own, &doc), "decoding own keys")
		if checks, _ := gomatrixserverlib.CheckKeys(spec.ServerName(cfg.ServerName), time.Now(), doc); !checks.AllChecksOK {
			t.Errorf("own key document fails its checks: %+v", checks)
		}
		if _, ok := doc.OldVerifyKeys[gomatrixserverlib.KeyID(old.ID)]; !ok {
			t.Errorf("own key document %s lacks old key %s", own, old.ID)
		}
	})
}

func TestNotaryKeys(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		remote := newRemote(t, "remote.test:8448")
		c := newClient(t, testConfig(t, map[string]string{"remote.test:8448": remote.addr(), "unknown.test:1": "127.0.0.1:1"}), db)
		ctx := context.Background()
		server := spec.ServerName(remote.name)
		inHour := spec.AsTimestamp(time.Now().Add(time.Hour))

		got, err := c.NotaryKeys(ctx, server, nil, 0)
		testkit.Must(t, err, "NotaryKeys")
		if len(got) != 1 || remote.keyFetches.Load() != 1 {
			t.Fatalf("first query: got %d responses after %d fetches, want 1 and 1", len(got), remote.keyFetches.Load())
		}
		var keys gomatrixserverlib.ServerKeys
		testkit.Must(t, json.Unmarshal(got[0], &keys), "decoding response")
		if err := gomatrixserverlib.VerifyJSON(remote.name, gomatrixserverlib.KeyID(remote.key.ID), remote.key.Public(), got[0]); err != nil {
			t.Fatalf("response is not the server's own signed document: %v", err)
		}
		// The response also filled the key ring's cache.
		if err := verify(t, c, remote.name, remote.sign(t, map[string]int{"x": 1}), time.Now()); err != nil {
			t.Fatalf("verify after notary fetch: %v", err)
		}

		steps := []struct {
			name        string
			keyIDs      []gomatrixserverlib.KeyID
			minValid    spec.Timestamp
			wantFetches int32
		}{
			{"cached response is valid long enough", nil, 0, 1},
			{"cached response holds the key", []gomatrixserverlib.KeyID{gomatrixserverlib.KeyID(remote.key.ID)}, 0, 1},
			{"unknown key ID asks again", []gomatrixserverlib.KeyID{"ed25519:new"}, 0, 2},
			{"validity beyond the cached one asks again", nil, inHour + 3600_000, 3},
		}
		clock := time.Now()
		c.keys.now = func() time.Time { return clock }
		for _, s := range steps {
			clock = clock.Add(2 * notaryRefetch)
			got, err := c.NotaryKeys(ctx, server, s.keyIDs, s.minValid)
			testkit.Must(t, err, "%s", s.name)
			if len(got) != 1 {
				t.Fatalf("%s: got %d responses, want 1", s.name, len(got))
			}
			if f := remote.keyFetches.Load(); f != s.wantFetches {
				t.Fatalf("%s: got %d fetches, want %d", s.name, f, s.wantFetches)
			}
		}
		// Asking for more than the server offers, again at once, does not ask it again.
		clock = clock.Add(time.Second)
		_, err = c.NotaryKeys(ctx, server, nil, inHour+3600_000)
		testkit.Must(t, err, "NotaryKeys again")
		if f := remote.keyFetches.Load(); f != 3 {
			t.Fatalf("repeated query: got %d fetches, want 3", f)
		}
		// An unreachable server: the stale cached response is returned.
		clock = clock.Add(2 * notaryRefetch)
		remote.srv.Close()
		got, err = c.NotaryKeys(ctx, server, nil, inHour+7200_000)
		testkit.Must(t, err, "NotaryKeys offline")
		if len(got) != 1 {
			t.Fatalf("offline: got %d responses, want the cached one", len(got))
		}
		// An unknown unreachable server: nothing.
		got, err = c.NotaryKeys(ctx, "unknown.test:1", nil, 0)
		testkit.Must(t, err, "NotaryKeys unknown")
		if len(got) != 0 {
			t.Fatalf("unknown server: got %d responses, want none", len(got))
		}
	})
}

func TestRequestsToDeniedNetworksAreRefused(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		var hits atomic.Int32
		srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			_, _ = io.WriteString(w, `{"server":{"name":"fake","version":"1"}}`)
		}))
		t.Cleanup(srv.Close)
		loopback := srv.Listener.Addr().String()
		def := config.Default().FederationAPI

		denied := testConfig(t, map[string]string{"private.test:8448": "10.0.0.1:8448", "loop.test:8448": loopback})
		denied.AllowNetworks, denied.DenyNetworks = def.AllowNetworks, def.DenyNetworks
		allowed := testConfig(t, map[string]string{"loop.test:8448": loopback})
		tests := []struct {
			name   string
			cfg    Config
			server string
			wantOK bool
		}{
			{"loopback IP, default policy", denied, loopback, false},
			{"name resolving to loopback, default policy", denied, "loop.test:8448", false},
			{"10.0.0.0/8, default policy", denied, "private.test:8448", false},
			{"loopback IP, allowed", allowed, loopback, true},
			{"name resolving to loopback, allowed", allowed, "loop.test:8448", true},
		}
		for _, tt := range tests {
			c := newClient(t, tt.cfg, db)
			_, err := getVersion(c, tt.server)
			if tt.wantOK && err != nil {
				t.Errorf("%s: %v", tt.name, err)
			}
			if !tt.wantOK && !errors.Is(err, ErrDenied) {
				t.Errorf("%s: got error %v, want ErrDenied", tt.name, err)
			}
		}
		if got := hits.Load(); got != 2 {
			t.Errorf("the server saw %d requests, want 2 (the allowed ones)", got)
		}
		// Plain https:// URLs (redirects, media locations) follow the same policy.
		for _, tt := range []struct {
			name   string
			cfg    Config
			wantOK bool
		}{{"https URL, default policy", denied, false}, {"https URL, allowed", allowed, true}} {
			c := newClient(t, tt.cfg, db)
			req, _ := http.NewRequest(http.MethodGet, "https://"+loopback+"/", nil)
			var out json.RawMessage
			err := c.Federation().DoRequestAndParseResponse(context.Background(), req, &out)
			if tt.wantOK != (err == nil) || (!tt.wantOK && !errors.Is(err, ErrDenied)) {
				t.Errorf("%s: got error %v, want ok=%v", tt.name, err, tt.wantOK)
			}
		}
	})
}

// discoveryWorld is a set of fake servers reached through Config.Hosts and a fake SRV
// table, recording the Host header each request carried.
type discoveryWorld struct {
	mu         sync.Mutex
	hosts      []string
	wellKnowns atomic.Int32
}

func TestDiscovery(t *testing.T) {
	w := &discoveryWorld{}
	target := httptest.NewTLSServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w.mu.Lock()
		w.hosts = append(w.hosts, r.Host+" "+r.TLS.ServerName)
		w.mu.Unlock()
		_, _ = io.WriteString(rw, `{"server":{"name":"fake","version":"1"}}`)
	}))
	t.Cleanup(target.Close)
	wellKnown := httptest.NewTLSServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/matrix/server" {
			http.NotFound(rw, r)
			return
		}
		w.wellKnowns.Add(1)
		switch r.TLS.ServerName {
		case "wk.test":
			rw.Header().Set("Cache-Control", "max-age=600")
			_, _ = io.WriteString(rw, `{"m.server":"delegated.test:1234"}`)
		case "wksrv.test":
			_, _ = io.WriteString(rw, `{"m.server":"delegatedsrv.test"}`)
		case "bad.test":
			_, _ = io.WriteString(rw, `{"m.server":"not a name!"}`)
		default:
			http.NotFound(rw, r)
		}
	}))
	t.Cleanup(wellKnown.Close)
	tgt, wk := target.Listener.Addr().String(), wellKnown.Listener.Addr().String()
	hosts := map[string]string{
		"wk.test:443": wk, "wksrv.test:443": wk, "bad.test:443": wk, "srv.test:443": wk, "plain.test:443": wk,
		"explicit.test:9000":   tgt,
		"delegated.test:1234":  tgt,
		"srvtarget.test:2345":  tgt,
		"delegatedsrv.test:99": tgt,
		"plain.test:8448":      tgt,
		"bad.test:8448":        tgt,
		"127.0.0.1:8448":       tgt,
	}
	srv := map[string]*net.SRV{
		"_matrix-fed._tcp.srv.test":          {Target: "srvtarget.test.", Port: 2345},
		"_matrix._tcp.delegatedsrv.test":     {Target: "delegatedsrv.test.", Port: 99},
		"_matrix-fed._tcp.delegatedsrv.test": nil,
	}
	db, err := sqldb.Open(context.Background(), testkit.SQLiteConn(t), sqldb.Options{})
	testkit.Must(t, err, "opening database")
	t.Cleanup(func() { db.Close() })
	c := newClient(t, testConfig(t, hosts), db)
	clock := time.Now()
	var clockMu sync.Mutex
	c.res.now = func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return clock }
	c.res.lookupSRV = func(_ context.Context, service, proto, name string) (string, []*net.SRV, error) {
		if rec := srv["_"+service+"._"+proto+"."+name]; rec != nil {
			return "", []*net.SRV{rec}, nil
		}
		return "", nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	}

	tests := []struct {
		name, server, wantHost, wantSNI string
	}{
		{"IP literal gets port 8448", "127.0.0.1", "127.0.0.1", "127.0.0.1"},
		{"explicit port skips discovery", "explicit.test:9000", "explicit.test:9000", "explicit.test"},
		{"well-known with a port", "wk.test", "delegated.test:1234", "delegated.test"},
		{"well-known, then deprecated SRV of the delegated name", "wksrv.test", "delegatedsrv.test", "delegatedsrv.test"},
		{"no well-known, SRV _matrix-fed", "srv.test", "srv.test", "srv.test"},
		{"no well-known, no SRV: port 8448", "plain.test", "plain.test", "plain.test"},
		{"invalid well-known: port 8448", "bad.test", "bad.test", "bad.test"},
	}
	for _, tt := range tests {
		w.mu.Lock()
		w.hosts = nil
		w.mu.Unlock()
		if _, err := getVersion(c, tt.server); err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		w.mu.Lock()
		got := strings.Join(w.hosts, ",")
		w.mu.Unlock()
		// An IP literal as TLS server name is not sent as SNI.
		if want := tt.wantHost + " " + strings.TrimPrefix(tt.wantSNI, "127.0.0.1"); got != want {
			t.Errorf("%s: got Host and SNI %q, want %q", tt.name, got, want)
		}
	}

	// The well-known answer for wk.test is cached for its max-age of 600 seconds.
	before := w.wellKnowns.Load()
	advance := func(d time.Duration) { clockMu.Lock(); clock = clock.Add(d); clockMu.Unlock() }
	steps := []struct {
		name  string
		after time.Duration
		want  int32
	}{
		{"within max-age: cached", 9 * time.Minute, before},
		{"past max-age: fetched again", 2 * time.Minute, before + 1},
		{"then cached again", time.Minute, before + 1},
	}
	for _, s := range steps {
		advance(s.after)
		if _, err := getVersion(c, "wk.test"); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := w.wellKnowns.Load(); got != s.want {
			t.Fatalf("%s: got %d well-known fetches, want %d", s.name, got, s.want)
		}
	}
}

func TestCachePeriod(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		header http.Header
		want   time.Duration
	}{
		{"no headers: 24 hours", http.Header{}, 24 * time.Hour},
		{"max-age", http.Header{"Cache-Control": {"public, max-age=3600"}}, time.Hour},
		{"short max-age raised to 5 minutes", http.Header{"Cache-Control": {"max-age=10"}}, 5 * time.Minute},
		{"long max-age capped at 48 hours", http.Header{"Cache-Control": {"max-age=9999999"}}, 48 * time.Hour},
		{"no-store: 5 minutes", http.Header{"Cache-Control": {"no-store"}}, 5 * time.Minute},
		{"Expires", http.Header{"Expires": {now.Add(2 * time.Hour).Format(http.TimeFormat)}}, 2 * time.Hour},
		{"max-age wins over Expires", http.Header{"Expires": {now.Add(2 * time.Hour).Format(http.TimeFormat)}, "Cache-Control": {"max-age=3600, must-revalidate"}}, time.Hour},
	}
	for _, tt := range tests {
		if got := cachePeriod(tt.header, now); got != tt.want {
			t.Errorf("%s: got %s, want %s", tt.name, got, tt.want)
		}
	}
}

// getVersion asks server for /_matrix/federation/v1/version through c.
func getVersion(c *Client, server string) (json.RawMessage, error) {
	req, err := http.NewRequest(http.MethodGet, "matrix://"+server+"/_matrix/federation/v1/version", nil)
	if err != nil {
		return nil, err
	}
	var out json.RawMessage
	err = c.Federation().DoRequestAndParseResponse(context.Background(), req, &out)
	return out, err
}
