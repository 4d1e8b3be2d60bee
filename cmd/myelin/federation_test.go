package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/testkit"
	"github.com/myelin-chat/myelin/internal/tlsutil"
)

// fedServer is one of the two servers of TestFederation: a myelin process whose server name
// is its HTTPS address, so other servers find it by the spec's IP-literal-with-port rule.
type fedServer struct {
	*server
	name string
}

// writeTestCA makes a CA in dir (ca.crt, ca.key) that both servers trust through SSL_CERT_FILE.
func writeTestCA(t *testing.T, dir string) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	testkit.Must(t, err, "CA key")
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Myelin federation test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	testkit.Must(t, err, "CA certificate")
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	testkit.Must(t, err, "CA key encoding")
	certPath, keyPath = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	testkit.Must(t, os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600), "writing CA")
	testkit.Must(t, os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600), "writing CA key")
	return certPath, keyPath
}

// startFedServer starts a server whose federation listener is HTTPS on a fixed loopback port
// with a certificate from the test CA, named after that address.
func startFedServer(t *testing.T, b testkit.Backend, caCert, caKey string) *fedServer {
	t.Helper()
	addr := freePort(t)
	cert, err := tlsutil.IssueFromCA(caCert, caKey, []string{"127.0.0.1"})
	testkit.Must(t, err, "issuing a server certificate")
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	kder, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	testkit.Must(t, err, "encoding the server key")
	testkit.Must(t, os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600), "writing cert")
	testkit.Must(t, os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600), "writing key")
	s := startServer(t, b, serverOpts{
		serverName: addr, listenTLS: addr, tlsCert: certPath, tlsKey: keyPath,
		federateOverLoopback: true, extraEnv: []string{"SSL_CERT_FILE=" + caCert},
	})
	return &fedServer{server: s, name: addr}
}

// fedRegister registers localpart on s and returns its client.
func (s *fedServer) fedRegister(t *testing.T, localpart string) *client {
	t.Helper()
	m := s.anon().do(t, "POST", v3+"/register", map[string]any{
		"username": localpart, "password": "pw-" + localpart, "auth": map[string]string{"type": "m.login.dummy"},
	}).wantOK(t)
	want := "@" + localpart + ":" + s.name
	if got := str(t, m, "user_id"); got != want {
		t.Fatalf("registered %q; want %q", got, want)
	}
	return &client{srv: s.server, token: str(t, m, "access_token"), userID: want, deviceID: str(t, m, "device_id")}
}

// roomBodies returns the bodies of the m.room.message events c can read in roomID, oldest
// first, by paging /messages backwards from the end.
func roomBodies(t *testing.T, c *client, roomID string) []string {
	t.Helper()
	var out []string
	from := ""
	for page := 0; page < 20; page++ {
		q := url.Values{"dir": {"b"}, "limit": {"50"}}
		if from != "" {
			q.Set("from", from)
		}
		r := c.do(t, "GET", v3+"/rooms/"+url.PathEscape(roomID)+"/messages?"+q.Encode(), nil)
		if r.status != 200 {
			return nil
		}
		var m struct {
			Chunk []struct {
				Type    string `json:"type"`
				Content struct {
					Body string `json:"body"`
				} `json:"content"`
			} `json:"chunk"`
			End string `json:"end"`
		}
		r.decode(t, &m)
		for _, e := range m.Chunk {
			if e.Type == "m.room.message" {
				out = append(out, e.Content.Body)
			}
		}
		if m.End == "" || len(m.Chunk) == 0 {
			break
		}
		from = m.End
	}
	slices.Reverse(out)
	return out
}

func (c *client) say(t *testing.T, roomID, body string) {
	t.Helper()
	c.do(t, "PUT", v3+"/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/"+url.PathEscape(body),
		map[string]string{"msgtype": "m.text", "body": body}).wantOK(t)
}

func (c *client) membership(t *testing.T, roomID, userID string) string {
	t.Helper()
	r := c.do(t, "GET", v3+"/rooms/"+url.PathEscape(roomID)+"/state/m.room.member/"+url.PathEscape(userID), nil)
	if r.status != 200 {
		return ""
	}
	m, _ := r.obj(t)["membership"].(string)
	return m
}

// TestFederation runs two real Myelin servers on loopback with TLS from a test CA: users on
// each create, invite, join, talk both ways, leave and rejoin; then one server is stopped
// while the other sends, restarted, and receives everything.
func TestFederation(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b testkit.Backend) {
		caCert, caKey := writeTestCA(t, t.TempDir())
		a := startFedServer(t, b, caCert, caKey)
		bs := startFedServer(t, b, caCert, caKey)
		alice, bob := a.fedRegister(t, "alice"), bs.fedRegister(t, "bob")
		const within = 30 * time.Second

		room := alice.do(t, "POST", v3+"/createRoom", map[string]any{"preset": "public_chat", "invite": []string{bob.userID}}).wantOK(t)
		roomID := str(t, room, "room_id")

		// The invite reaches bob's server; bob joins through alice's.
		eventually(t, within, "bob sees the invite", func() bool {
			r := bob.do(t, "GET", v3+"/sync?timeout=0", nil)
			inv, _ := r.obj(t)["rooms"].(map[string]any)["invite"].(map[string]any)
			_, ok := inv[roomID]
			return ok
		})
		bob.do(t, "POST", v3+"/join/"+url.PathEscape(roomID)+"?server_name="+url.QueryEscape(a.name), map[string]any{}).wantOK(t)
		eventually(t, within, "alice's server sees bob joined", func() bool { return alice.membership(t, roomID, bob.userID) == "join" })

		// Both ways.
		alice.say(t, roomID, "hello from A")
		bob.say(t, roomID, "hello from B")
		for _, c := range []*client{alice, bob} {
			eventually(t, within, c.userID+" sees both messages", func() bool {
				got := roomBodies(t, c, roomID)
				return slices.Contains(got, "hello from A") && slices.Contains(got, "hello from B")
			})
		}

		// Leave and rejoin.
		bob.do(t, "POST", v3+"/rooms/"+url.PathEscape(roomID)+"/leave", map[string]any{}).wantOK(t)
		eventually(t, within, "alice's server sees bob leave", func() bool { return alice.membership(t, roomID, bob.userID) == "leave" })
		bob.do(t, "POST", v3+"/join/"+url.PathEscape(roomID)+"?server_name="+url.QueryEscape(a.name), map[string]any{}).wantOK(t)
		eventually(t, within, "alice's server sees bob rejoin", func() bool { return alice.membership(t, roomID, bob.userID) == "join" })

		// Bob's server goes down; alice keeps talking; everything arrives after it returns.
		bs.stop(t)
		sent := []string{"while down 1", "while down 2", "while down 3"}
		for _, m := range sent {
			alice.say(t, roomID, m)
		}
		bs.start(t)
		eventually(t, 60*time.Second, "bob receives what was sent while his server was down", func() bool {
			got := roomBodies(t, bob, roomID)
			i := slices.Index(got, sent[0])
			return i >= 0 && len(got) >= i+3 && slices.Equal(got[i:i+3], sent)
		})
	})
}
