package federationapi

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/federationapi/fedclient"
	"github.com/myelin-chat/myelin/internal/config"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/serverkey"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
)

func testKey(t *testing.T, id string) serverkey.Key {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	testkit.Must(t, err, "generating key")
	return serverkey.Key{ID: id, Private: priv}
}

func TestNotary(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		const remoteName, localName = "remote.test:8448", "local.test"
		remoteKey := testKey(t, "ed25519:remote")
		remote := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/_matrix/key/v2/server" {
				http.NotFound(w, r)
				return
			}
			var keys gomatrixserverlib.ServerKeyFields
			keys.ServerName = remoteName
			keys.ValidUntilTS = spec.AsTimestamp(time.Now().Add(time.Hour))
			keys.VerifyKeys = map[gomatrixserverlib.KeyID]gomatrixserverlib.VerifyKey{
				gomatrixserverlib.KeyID(remoteKey.ID): {Key: spec.Base64Bytes(remoteKey.Public())},
			}
			raw, _ := json.Marshal(keys)
			signed, _ := gomatrixserverlib.SignJSON(remoteName, gomatrixserverlib.KeyID(remoteKey.ID), remoteKey.Private, raw)
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(signed)
		}))
		t.Cleanup(remote.Close)

		localKey, oldKey := testKey(t, "ed25519:local"), testKey(t, "ed25519:old")
		fc, err := fedclient.New(fedclient.Config{
			ServerName: localName, Key: localKey,
			OldKeys:              []config.OldKey{{KeyID: oldKey.ID, PublicKey: spec.Base64Bytes(oldKey.Public()).Encode(), ExpiredAt: 1000}},
			DisableTLSValidation: true,
			AllowNetworks:        []string{"0.0.0.0/0", "::/0"},
			Hosts:                map[string]string{remoteName: remote.Listener.Addr().String(), "unknown.test:1": "127.0.0.1:1"},
		}, db, slog.New(slog.NewTextHandler(io.Discard, nil)))
		testkit.Must(t, err, "fedclient.New")
		r := httpx.NewRouter()
		New(Config{ServerName: localName, Key: localKey}, fc).Register(r)
		srv := httptest.NewServer(r)
		t.Cleanup(srv.Close)

		type signer struct {
			server string
			key    serverkey.Key
		}
		remoteSig, localSig := signer{remoteName, remoteKey}, signer{localName, localKey}
		tests := []struct {
			name, method, path, body string
			wantStatus               int
			wantServers              []string // server_name of each response, in order
			wantSigners              []signer
		}{
			{"batch query", http.MethodPost, "/_matrix/key/v2/query",
				`{"server_keys":{"remote.test:8448":{"ed25519:remote":{"minimum_valid_until_ts":0}}}}`,
				200, []string{remoteName}, []signer{remoteSig, localSig}},
			{"single query", http.MethodGet, "/_matrix/key/v2/query/remote.test:8448?minimum_valid_until_ts=1", "",
				200, []string{remoteName}, []signer{remoteSig, localSig}},
			{"query for ourselves", http.MethodGet, "/_matrix/key/v2/query/local.test", "",
				200, []string{localName}, []signer{localSig}},
			{"unreachable server is left out", http.MethodPost, "/_matrix/key/v2/query",
				`{"server_keys":{"unknown.test:1":{}}}`, 200, []string{}, nil},
			{"no servers", http.MethodPost, "/_matrix/key/v2/query", `{"server_keys":{}}`, 200, []string{}, nil},
			{"server_keys missing", http.MethodPost, "/_matrix/key/v2/query", `{}`, 400, nil, nil},
			{"bad minimum_valid_until_ts", http.MethodGet, "/_matrix/key/v2/query/remote.test:8448?minimum_valid_until_ts=x", "", 400, nil, nil},
		}
		for _, tt := range tests {
			req, _ := http.NewRequestWithContext(context.Background(), tt.method, srv.URL+tt.path, bytes.NewBufferString(tt.body))
			resp, err := http.DefaultClient.Do(req)
			testkit.Must(t, err, "%s", tt.name)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("%s: got status %d (%s), want %d", tt.name, resp.StatusCode, body, tt.wantStatus)
				continue
			}
			if tt.wantServers == nil {
				continue
			}
			var out struct {
				ServerKeys []json.RawMessage `json:"server_keys"`
			}
			testkit.Must(t, json.Unmarshal(body, &out), "%s: decoding", tt.name)
			if out.ServerKeys == nil || len(out.ServerKeys) != len(tt.wantServers) {
				t.Errorf("%s: got server_keys %s, want %d entries", tt.name, body, len(tt.wantServers))
				continue
			}
			for i, raw := range out.ServerKeys {
				var keys gomatrixserverlib.ServerKeys
				testkit.Must(t, json.Unmarshal(raw, &keys), "%s: decoding keys", tt.name)
				if string(keys.ServerName) != tt.wantServers[i] {
					t.Errorf("%s: got server_name %s, want %s", tt.name, keys.ServerName, tt.wantServers[i])
				}
				for _, s := range tt.wantSigners {
					if err := gomatrixserverlib.VerifyJSON(s.server, gomatrixserverlib.KeyID(s.key.ID), s.key.Public(), raw); err != nil {
						t.Errorf("%s: signature of %s does not verify: %v", tt.name, s.server, err)
					}
				}
			}
		}

		// Our own key document lists the old key and is self-signed.
		resp, err := http.Get(srv.URL + "/_matrix/key/v2/server")
		testkit.Must(t, err, "GET /_matrix/key/v2/server")
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var own gomatrixserverlib.ServerKeys
		testkit.Must(t, json.Unmarshal(body, &own), "decoding own keys")
		if checks, _ := gomatrixserverlib.CheckKeys(localName, time.Now(), own); !checks.AllChecksOK {
			t.Errorf("own keys %s fail their checks", body)
		}
		if old, ok := own.OldVerifyKeys[gomatrixserverlib.KeyID(oldKey.ID)]; !ok || old.ExpiredTS != 1000 {
			t.Errorf("own keys %s: want old key %s expired at 1000", body, oldKey.ID)
		}
	})
}
