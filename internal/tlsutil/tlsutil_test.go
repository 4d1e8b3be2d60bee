package tlsutil

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeCA creates a CA certificate signed by key and writes it and key (in the PEM form that
// keyType names) to dir, returning the certificate and both paths.
func writeCA(t *testing.T, dir string, key crypto.Signer, keyType string) (*x509.Certificate, string, string) {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatalf("creating CA certificate: %v", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("parsing CA certificate: %v", err)
	}
	var keyDER []byte
	switch keyType {
	case "RSA PRIVATE KEY":
		keyDER = x509.MarshalPKCS1PrivateKey(key.(*rsa.PrivateKey))
	case "EC PRIVATE KEY":
		keyDER, err = x509.MarshalECPrivateKey(key.(*ecdsa.PrivateKey))
	case "PRIVATE KEY":
		keyDER, err = x509.MarshalPKCS8PrivateKey(key)
	default:
		t.Fatalf("unknown key type %q", keyType)
	}
	if err != nil {
		t.Fatalf("marshalling CA key: %v", err)
	}
	certPath := filepath.Join(dir, "ca.crt")
	keyPath := filepath.Join(dir, "ca.key")
	writePEM(t, certPath, "CERTIFICATE", der)
	writePEM(t, keyPath, keyType, keyDER)
	return ca, certPath, keyPath
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatalf("writing %s: %v", path, err)
	}
}

func mustRSA(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustECDSA(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustEd25519(t *testing.T) crypto.Signer {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestIssueFromCA(t *testing.T) {
	tests := []struct {
		name    string
		key     func(*testing.T) crypto.Signer
		keyType string
		hosts   []string
		verify  string // the name to verify the leaf for
	}{
		{"rsa pkcs1 dns", mustRSA, "RSA PRIVATE KEY", []string{"hs1", "localhost"}, "hs1"},
		{"rsa pkcs1 second dns", mustRSA, "RSA PRIVATE KEY", []string{"hs1", "localhost"}, "localhost"},
		{"rsa pkcs8 ip", mustRSA, "PRIVATE KEY", []string{"hs1", "127.0.0.1"}, "127.0.0.1"},
		{"ecdsa sec1 dns", mustECDSA, "EC PRIVATE KEY", []string{"example.org"}, "example.org"},
		{"ecdsa pkcs8 ipv6", mustECDSA, "PRIVATE KEY", []string{"::1"}, "::1"},
		{"ed25519 pkcs8 dns", mustEd25519, "PRIVATE KEY", []string{"hs2"}, "hs2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca, certPath, keyPath := writeCA(t, t.TempDir(), tt.key(t), tt.keyType)
			cert, err := IssueFromCA(certPath, keyPath, tt.hosts)
			if err != nil {
				t.Fatalf("IssueFromCA: %v", err)
			}
			if got, want := len(cert.Certificate), 2; got != want {
				t.Fatalf("got chain length %d; want %d", got, want)
			}
			leaf := cert.Leaf
			if _, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok {
				t.Errorf("got leaf key %T; want *ecdsa.PublicKey", leaf.PublicKey)
			}
			if got, want := leaf.NotAfter.Sub(time.Now()).Round(time.Hour), Validity; got != want {
				t.Errorf("got validity %v; want %v", got, want)
			}
			roots := x509.NewCertPool()
			roots.AddCert(ca)
			if _, err := leaf.Verify(x509.VerifyOptions{DNSName: tt.verify, Roots: roots}); err != nil {
				t.Errorf("verifying leaf for %s: %v", tt.verify, err)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "other.example", Roots: roots}); err == nil {
				t.Errorf("leaf verified for other.example; want an error")
			}
		})
	}
}

func TestIssueFromCAErrors(t *testing.T) {
	dir := t.TempDir()
	_, certPath, keyPath := writeCA(t, dir, mustECDSA(t), "EC PRIVATE KEY")
	otherDir := t.TempDir()
	_, _, otherKeyPath := writeCA(t, otherDir, mustECDSA(t), "EC PRIVATE KEY")
	garbage := filepath.Join(dir, "garbage")
	if err := os.WriteFile(garbage, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		certPath string
		keyPath  string
		hosts    []string
		want     string
	}{
		{"no hosts", certPath, keyPath, nil, "no hosts"},
		{"missing cert", filepath.Join(dir, "absent"), keyPath, []string{"hs1"}, "reading CA certificate"},
		{"missing key", certPath, filepath.Join(dir, "absent"), []string{"hs1"}, "reading CA key"},
		{"cert not PEM", garbage, keyPath, []string{"hs1"}, "no CERTIFICATE"},
		{"key not PEM", certPath, garbage, []string{"hs1"}, "no private key"},
		{"key from another CA", certPath, otherKeyPath, []string{"hs1"}, "does not match"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := IssueFromCA(tt.certPath, tt.keyPath, tt.hosts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got error %v; want one containing %q", err, tt.want)
			}
		})
	}
}

// TestHandshake serves HTTPS on loopback with each kind of certificate and fetches from it with a
// client that trusts only the expected root, checking the full TLS handshake and name checks.
func TestHandshake(t *testing.T) {
	dir := t.TempDir()
	ca, certPath, keyPath := writeCA(t, dir, mustRSA(t), "RSA PRIVATE KEY")
	fromCA, err := IssueFromCA(certPath, keyPath, []string{"hs1", "127.0.0.1"})
	if err != nil {
		t.Fatalf("IssueFromCA: %v", err)
	}
	self, err := SelfSigned([]string{"localhost", "127.0.0.1"})
	if err != nil {
		t.Fatalf("SelfSigned: %v", err)
	}
	tests := []struct {
		name       string
		cert       tls.Certificate
		root       *x509.Certificate
		serverName string // "" verifies against the dialled IP
	}{
		{"from CA by ip", fromCA, ca, ""},
		{"from CA by name", fromCA, ca, "hs1"},
		{"self-signed by ip", self, self.Leaf, ""},
		{"self-signed by name", self, self.Leaf, "localhost"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, "ok")
			}))
			srv.TLS = &tls.Config{Certificates: []tls.Certificate{tt.cert}}
			srv.StartTLS()
			defer srv.Close()

			roots := x509.NewCertPool()
			roots.AddCert(tt.root)
			client := &http.Client{Transport: &http.Transport{
				TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: tt.serverName},
			}}
			res, err := client.Get(srv.URL)
			if err != nil {
				t.Fatalf("GET %s: %v", srv.URL, err)
			}
			defer res.Body.Close()
			body, err := io.ReadAll(res.Body)
			if err != nil {
				t.Fatalf("reading body: %v", err)
			}
			if got, want := string(body), "ok"; got != want {
				t.Errorf("got body %q; want %q", got, want)
			}

			// A name the certificate does not cover must fail the handshake.
			conn, err := tls.Dial("tcp", srv.Listener.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "wrong.example"})
			if err == nil {
				conn.Close()
				t.Errorf("handshake for wrong.example succeeded; want an error")
			}
		})
	}
}

func TestSelfSigned(t *testing.T) {
	tests := []struct {
		name  string
		hosts []string
		ips   []net.IP
		dns   []string
	}{
		{"dns only", []string{"localhost"}, nil, []string{"localhost"}},
		{"mixed", []string{"example.org", "10.0.0.1", "::1"}, []net.IP{net.ParseIP("10.0.0.1"), net.ParseIP("::1")}, []string{"example.org"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cert, err := SelfSigned(tt.hosts)
			if err != nil {
				t.Fatalf("SelfSigned: %v", err)
			}
			if got, want := len(cert.Certificate), 1; got != want {
				t.Errorf("got chain length %d; want %d", got, want)
			}
			if got, want := strings.Join(cert.Leaf.DNSNames, ","), strings.Join(tt.dns, ","); got != want {
				t.Errorf("got DNS names %q; want %q", got, want)
			}
			if got, want := len(cert.Leaf.IPAddresses), len(tt.ips); got != want {
				t.Fatalf("got %d IP addresses; want %d", got, want)
			}
			for i, ip := range tt.ips {
				if got := cert.Leaf.IPAddresses[i]; !got.Equal(ip) {
					t.Errorf("got IP %v; want %v", got, ip)
				}
			}
		})
	}
	if _, err := SelfSigned(nil); err == nil {
		t.Errorf("SelfSigned(nil) succeeded; want an error")
	}
}
