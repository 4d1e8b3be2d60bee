// Package benchserver builds and starts real myelin processes for the benchmark commands under
// bench/, and reads their memory use. It is not imported by the server.
package benchserver

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/myelin-chat/myelin/internal/tlsutil"
)

// profileHook is added to package main of ./cmd/myelin at build time (through go build -overlay,
// so the tree is not touched): when MYELIN_BENCH_CPUPROFILE names a file, SIGUSR1 starts a CPU
// profile and SIGUSR2 writes it there. Without that variable it does nothing.
const profileHook = `package main

import (
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
)

func init() {
	path := os.Getenv("MYELIN_BENCH_CPUPROFILE")
	if path == "" {
		return
	}
	c := make(chan os.Signal, 2)
	signal.Notify(c, syscall.SIGUSR1, syscall.SIGUSR2)
	go func() {
		var f *os.File
		for sig := range c {
			switch {
			case sig == syscall.SIGUSR1 && f == nil:
				f, _ = os.Create(path + ".tmp")
				_ = pprof.StartCPUProfile(f)
			case sig == syscall.SIGUSR2 && f != nil:
				pprof.StopCPUProfile()
				_ = f.Close()
				_ = os.Rename(path+".tmp", path)
				f = nil
			}
		}
	}()
}
`

// Build compiles ./cmd/myelin (run from the repository root) into dir, with a dormant CPU
// profiling hook (see Options.CPUProfile).
func Build(dir string) (string, error) {
	bin := filepath.Join(dir, "myelin")
	root, err := os.Getwd()
	if err != nil {
		return "", err
	}
	hook := filepath.Join(dir, "benchprofile.go")
	if err := os.WriteFile(hook, []byte(profileHook), 0o600); err != nil {
		return "", err
	}
	overlay, err := json.Marshal(map[string]any{"Replace": map[string]string{
		filepath.Join(root, "cmd", "myelin", "zz_benchprofile.go"): hook}})
	if err != nil {
		return "", err
	}
	ovPath := filepath.Join(dir, "overlay.json")
	if err := os.WriteFile(ovPath, overlay, 0o600); err != nil {
		return "", err
	}
	cmd := exec.Command("go", "build", "-overlay", ovPath, "-o", bin, "./cmd/myelin")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building myelin (run from the repository root): %w", err)
	}
	return bin, nil
}

// FreeAddr returns a loopback address that was free a moment ago.
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// CA is a throwaway certificate authority for federating servers on loopback.
type CA struct{ Cert, Key string }

// NewCA writes a CA certificate and key into dir.
func NewCA(dir string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "myelin bench CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(48 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	ca := &CA{Cert: filepath.Join(dir, "ca.crt"), Key: filepath.Join(dir, "ca.key")}
	if err := os.WriteFile(ca.Cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	return ca, os.WriteFile(ca.Key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
}

// Options describe one server.
type Options struct {
	Dir        string // data folder, config and log
	Database   string // connection string; "" for SQLite in Dir
	Federation *CA    // when set: HTTPS federation on a fixed port, named after it
	CPUProfile string // when set: StartProfile and StopProfile write a CPU profile here (binary from Build)
}

// Server is a running myelin process.
type Server struct {
	Name string // server name
	URL  string // client API base URL
	cmd  *exec.Cmd
	log  string
	prof string
}

// Start writes a config for o and runs bin until its client API answers.
func Start(bin string, o Options) (*Server, error) {
	httpAddr, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	s := &Server{Name: "bench.local", URL: "http://" + httpAddr, log: filepath.Join(o.Dir, "server.log"), prof: o.CPUProfile}
	var y strings.Builder
	var env []string
	if o.CPUProfile != "" {
		env = append(env, "MYELIN_BENCH_CPUPROFILE="+o.CPUProfile)
	}
	if o.Federation != nil {
		fedAddr, err := FreeAddr()
		if err != nil {
			return nil, err
		}
		s.Name = fedAddr
		cert, err := tlsutil.IssueFromCA(o.Federation.Cert, o.Federation.Key, []string{"127.0.0.1"})
		if err != nil {
			return nil, err
		}
		kder, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
		if err != nil {
			return nil, err
		}
		crt, key := filepath.Join(o.Dir, "tls.crt"), filepath.Join(o.Dir, "tls.key")
		if err := os.WriteFile(crt, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600); err != nil {
			return nil, err
		}
		if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
			return nil, err
		}
		fmt.Fprintf(&y, "federation_api:\n  deny_networks: []\n  allow_networks: [\"0.0.0.0/0\", \"::/0\"]\n")
		fmt.Fprintf(&y, "myelin:\n  listen_tls: %q\n  tls_cert: %q\n  tls_key: %q\n", fedAddr, crt, key)
		env = append(env, "SSL_CERT_FILE="+o.Federation.Cert)
	} else {
		fmt.Fprintf(&y, "myelin:\n")
	}
	fmt.Fprintf(&y, "  data_dir: %q\n  listen: %q\n", filepath.Join(o.Dir, "data"), httpAddr)
	db := ""
	if o.Database != "" {
		db = fmt.Sprintf("  database:\n    connection_string: %q\n    max_open_conns: 20\n", o.Database)
	}
	cfg := fmt.Sprintf("version: 2\nglobal:\n  server_name: %q\n%sclient_api:\n  registration_disabled: false\n  rate_limiting:\n    enabled: false\nuser_api:\n  bcrypt_cost: 4\nlogging:\n  - type: std\n    level: warn\n%s",
		s.Name, db, y.String())
	cfgPath := filepath.Join(o.Dir, "dendrite.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	logf, err := os.Create(s.log)
	if err != nil {
		return nil, err
	}
	s.cmd = exec.Command(bin, "--config", cfgPath)
	s.cmd.Env = append(os.Environ(), env...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		resp, err := http.Get(s.URL + "/_matrix/client/versions")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return s, nil
			}
		}
		if ctx.Err() != nil {
			_ = s.cmd.Process.Kill()
			return nil, errors.New("server did not start; see " + s.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop ends the server with SIGTERM and waits for it.
func (s *Server) Stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	_ = s.cmd.Wait()
}

// PID returns the server's process id.
func (s *Server) PID() int { return s.cmd.Process.Pid }

// CPU returns the user plus system CPU time the server process has used so far (Linux only).
func (s *Server) CPU() (time.Duration, error) { return ProcessCPU(s.cmd.Process.Pid) }

// ProcessCPU returns the user plus system CPU time process pid has used so far, from
// /proc/<pid>/stat (Linux only; clock ticks taken as the usual 100 per second).
func ProcessCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; the fields after its closing parenthesis
	// start with field 3, so utime and stime (fields 14 and 15) are at 11 and 12 there.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("malformed /proc stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(ut+st) * (time.Second / 100), nil
}

// StartProfile starts a CPU profile of the server (Options.CPUProfile must be set).
func (s *Server) StartProfile() error {
	if s.prof == "" {
		return errors.New("no CPUProfile in the server's options")
	}
	return s.cmd.Process.Signal(syscall.SIGUSR1)
}

// StopProfile ends the CPU profile and waits until the server has written it.
func (s *Server) StopProfile() error {
	if s.prof == "" {
		return errors.New("no CPUProfile in the server's options")
	}
	if err := s.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(s.prof); err == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return errors.New("the server wrote no CPU profile (built without the hook?)")
}

// Memory returns the process's resident set now and its peak so far, in bytes (Linux only).
func (s *Server) Memory() (rss, peak int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = v * 1024
		case "VmHWM:":
			peak = v * 1024
		}
	}
	return rss, peak, nil
}

// Client is a minimal Matrix client for the benchmarks.
type Client struct {
	Base   string
	Token  string
	UserID string
	HTTP   *http.Client
}

// Do sends a JSON request and decodes a 200 answer into out (if not nil); any other status
// is an error carrying the body.
func (c *Client) Do(method, path string, body, out any) error {
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.Base+path, r)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// Register signs up name on the server at base with open registration.
func Register(hc *http.Client, base, name string) (*Client, error) {
	c := &Client{Base: base, HTTP: hc}
	var out struct {
		UserID      string `json:"user_id"`
		AccessToken string `json:"access_token"`
	}
	err := c.Do("POST", "/_matrix/client/v3/register", map[string]any{
		"username": name, "password": "bench-password-" + name, "auth": map[string]string{"type": "m.login.dummy"},
	}, &out)
	c.Token, c.UserID = out.AccessToken, out.UserID
	return c, err
}

// RegisterMany registers n users named prefix-0 … prefix-(n-1), parallel at a time.
func RegisterMany(hc *http.Client, base, prefix string, n, parallel int) ([]*Client, error) {
	clients := make([]*Client, n)
	errc := make(chan error, n)
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			c, err := Register(hc, base, fmt.Sprintf("%s-%d", prefix, i))
			clients[i] = c
			if err != nil {
				errc <- err
			}
		}(i)
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return nil, fmt.Errorf("registering: %w", err)
	}
	return clients, nil
}
