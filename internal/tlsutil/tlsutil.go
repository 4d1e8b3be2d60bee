// Package tlsutil issues TLS certificates for Myelin's HTTPS listener: leaf certificates
// signed by a CA on disk (Complement mounts one at /complement/ca) and self-signed ones for
// development. It imports only the standard library, so any package may use it; in practice
// only cmd/myelin does.
package tlsutil

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"time"
)

// Validity is how long an issued certificate is valid for.
const Validity = 365 * 24 * time.Hour

// backdate is how far before now an issued certificate becomes valid, to absorb clock skew.
const backdate = time.Hour

// IssueFromCA issues a leaf certificate for hosts (DNS names or IP addresses) signed by the CA
// whose PEM certificate and PEM private key are at caCertPath and caKeyPath. The leaf has a fresh
// ECDSA P-256 key and is valid for Validity. The CA key may be RSA, ECDSA or Ed25519, in PKCS #1,
// SEC 1 ("EC PRIVATE KEY") or PKCS #8 form. The returned certificate's chain is the leaf followed
// by the CA certificate. It returns an error if hosts is empty, a file cannot be read or parsed,
// the CA key does not match the CA certificate, or signing fails.
func IssueFromCA(caCertPath, caKeyPath string, hosts []string) (tls.Certificate, error) {
	certPEM, err := os.ReadFile(caCertPath)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("reading CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(caKeyPath)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("reading CA key: %w", err)
	}
	ca, err := parseCertificatePEM(certPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("parsing CA certificate %s: %w", caCertPath, err)
	}
	caKey, err := parsePrivateKeyPEM(keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("parsing CA key %s: %w", caKeyPath, err)
	}
	if !publicKeysEqual(ca.PublicKey, caKey.Public()) {
		return tls.Certificate{}, errors.New("CA key does not match CA certificate")
	}
	return issue(hosts, ca, caKey)
}

// SelfSigned issues a self-signed certificate for hosts (DNS names or IP addresses) with a fresh
// ECDSA P-256 key, valid for Validity. It is for development: no client trusts it unless told to.
// It returns an error if hosts is empty or key generation or signing fails.
func SelfSigned(hosts []string) (tls.Certificate, error) {
	return issue(hosts, nil, nil)
}

// issue creates a leaf certificate for hosts. With a nil parent the certificate signs itself.
func issue(hosts []string, parent *x509.Certificate, parentKey crypto.Signer) (tls.Certificate, error) {
	if len(hosts) == 0 {
		return tls.Certificate{}, errors.New("issuing certificate: no hosts")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generating key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generating serial number: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: hosts[0]},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(Validity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	var signer crypto.Signer = key
	if parent == nil {
		parent = tmpl
	} else {
		signer = parentKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("signing certificate for %s: %w", hosts[0], err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("parsing issued certificate: %w", err)
	}
	chain := [][]byte{der}
	if parent != tmpl {
		chain = append(chain, parent.Raw)
	}
	return tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, nil
}

// parseCertificatePEM returns the first CERTIFICATE block in data.
func parseCertificatePEM(data []byte) (*x509.Certificate, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no CERTIFICATE PEM block")
		}
		if block.Type == "CERTIFICATE" {
			return x509.ParseCertificate(block.Bytes)
		}
	}
}

// parsePrivateKeyPEM returns the first private key in data, in PKCS #1, SEC 1 or PKCS #8 form.
func parsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no private key PEM block")
		}
		switch block.Type {
		case "RSA PRIVATE KEY":
			return x509.ParsePKCS1PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			return x509.ParseECPrivateKey(block.Bytes)
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				return nil, err
			}
			s, ok := k.(crypto.Signer)
			if !ok {
				return nil, fmt.Errorf("unsupported PKCS #8 key type %T", k)
			}
			return s, nil
		}
	}
}

// publicKeysEqual reports whether a and b are the same public key.
func publicKeysEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}
