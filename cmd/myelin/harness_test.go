package main

// The end-to-end harness: TestMain builds the real, static myelin and myelinctl binaries once,
// and startServer runs myelin as a subprocess on a loopback port against a fresh SQLite or
// PostgreSQL database, driving it over real HTTP.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/testkit"
)

// serverName is the server name every test server runs under.
const serverName = "hs1.test"

var (
	binDir    string // holds the built binaries; removed by TestMain
	buildOnce sync.Once
	buildErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "myelin-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "creating binary folder:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// binaries builds myelin and myelinctl (CGO_ENABLED=0, as released) the first time a test
// needs them, and returns their paths. Tests that need no binary do not pay for the build.
func binaries(t testing.TB) (myelin, myelinctl string) {
	t.Helper()
	myelin, myelinctl = filepath.Join(binDir, "myelin"), filepath.Join(binDir, "myelinctl")
	buildOnce.Do(func() {
		for _, b := range []struct{ out, pkg string }{{myelin, "."}, {myelinctl, "../myelinctl"}} {
			cmd := exec.Command("go", "build", "-o", b.out, b.pkg)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", b.pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return myelin, myelinctl
}

// forEachBackend runs f as a subtest on SQLite and, when MYELIN_TEST_POSTGRES is set, on
// PostgreSQL.
func forEachBackend(t *testing.T, f func(t *testing.T, b testkit.Backend)) {
	for _, b := range testkit.Backends(t) {
		t.Run(b.Name, func(t *testing.T) { f(t, b) })
	}
}

// rateLimit is client_api.rate_limiting when it is on.
type rateLimit struct {
	threshold int
	cooloffMS int
}

// serverOpts are the config settings a test changes; the zero value is an open server with
// rate limiting off.
type serverOpts struct {
	registrationDisabled bool
	requiresToken        bool
	tokens               []string
	sharedSecret         string
	rateLimit            *rateLimit
	maxRequestBytes      int64
	accessTokenLifetime  string // myelin.access_token_lifetime, such as "2s"
	metrics              bool
	privateKey           string // global.private_key; "" for <data_dir>/matrix_key.pem

	// For federation tests: a server name of our own, an HTTPS listener with a certificate,
	// outbound requests allowed to loopback, and extra environment (SSL_CERT_FILE).
	serverName           string
	listenTLS            string
	tlsCert, tlsKey      string
	federateOverLoopback bool
	extraEnv             []string
}

// server is a myelin subprocess and the data it keeps across restarts.
type server struct {
	backend string
	dir     string // data_dir and working directory
	conn    string // the database connection string
	config  string // path of the dendrite.yaml
	url     string // http://127.0.0.1:port

	extraEnv []string // added to env() for every run

	mu     sync.Mutex
	output bytes.Buffer // stdout and stderr of every run so far
	cmd    *exec.Cmd
	done   chan error // receives cmd.Wait's result
}

// startServer writes a dendrite.yaml for opts over a new database of backend b, starts myelin
// and waits until it answers. The server is stopped when t ends, and its exit status checked;
// its output is logged if t failed.
func startServer(t *testing.T, b testkit.Backend, opts serverOpts) *server {
	t.Helper()
	s := &server{backend: b.Name, dir: t.TempDir(), extraEnv: opts.extraEnv}
	if b.Name == "sqlite" {
		s.conn = "file:" + filepath.Join(s.dir, "myelin.db")
	} else {
		s.conn = b.Conn(t)
	}
	s.config = filepath.Join(s.dir, "dendrite.yaml")
	if err := os.WriteFile(s.config, []byte(s.yaml(opts)), 0o600); err != nil {
		t.Fatalf("writing config: %v", err)
	}
	// Registered after b.Conn's cleanup, so it runs before the database is dropped.
	t.Cleanup(func() {
		if s.running() {
			s.stop(t)
		} else if s.cmd != nil {
			err := <-s.done
			s.cmd = nil
			t.Errorf("myelin exited during the test: %v", err)
		}
		if t.Failed() {
			t.Logf("myelin output (%s):\n%s", s.backend, s.log())
		}
	})
	s.start(t)
	return s
}

func (s *server) yaml(o serverOpts) string {
	q := func(v string) string { b, _ := json.Marshal(v); return string(b) }
	var y strings.Builder
	name := serverName
	if o.serverName != "" {
		name = o.serverName
	}
	fmt.Fprintf(&y, "version: 2\nglobal:\n  server_name: %s\n", q(name))
	if o.privateKey != "" {
		fmt.Fprintf(&y, "  private_key: %s\n", q(o.privateKey))
	}
	fmt.Fprintf(&y, "  database:\n    connection_string: %s\n", q(s.conn))
	fmt.Fprintf(&y, "    max_open_conns: 20\n")
	fmt.Fprintf(&y, "  metrics:\n    enabled: %t\n", o.metrics)
	fmt.Fprintf(&y, "client_api:\n  registration_disabled: %t\n  registration_requires_token: %t\n",
		o.registrationDisabled, o.requiresToken)
	if len(o.tokens) > 0 {
		b, _ := json.Marshal(o.tokens)
		fmt.Fprintf(&y, "  registration_tokens: %s\n", b)
	}
	fmt.Fprintf(&y, "  registration_shared_secret: %s\n", q(o.sharedSecret))
	if rl := o.rateLimit; rl != nil {
		fmt.Fprintf(&y, "  rate_limiting:\n    enabled: true\n    threshold: %d\n    cooloff_ms: %d\n", rl.threshold, rl.cooloffMS)
	} else {
		fmt.Fprintf(&y, "  rate_limiting:\n    enabled: false\n")
	}
	fmt.Fprintf(&y, "user_api:\n  bcrypt_cost: 4\n")
	fmt.Fprintf(&y, "logging:\n  - type: std\n    level: debug\n")
	if o.federateOverLoopback {
		fmt.Fprintf(&y, "federation_api:\n  deny_networks: []\n  allow_networks: [\"0.0.0.0/0\", \"::/0\"]\n")
	}
	fmt.Fprintf(&y, "myelin:\n  data_dir: %s\n  listen: 127.0.0.1:0\n", q(s.dir))
	if o.listenTLS != "" {
		fmt.Fprintf(&y, "  listen_tls: %s\n  tls_cert: %s\n  tls_key: %s\n", q(o.listenTLS), q(o.tlsCert), q(o.tlsKey))
	}
	if o.maxRequestBytes > 0 {
		fmt.Fprintf(&y, "  max_request_bytes: %d\n", o.maxRequestBytes)
	}
	if o.accessTokenLifetime != "" {
		fmt.Fprintf(&y, "  access_token_lifetime: %s\n", o.accessTokenLifetime)
	}
	return y.String()
}

// env is the environment for myelin and myelinctl: ours without the MYELIN_* overrides,
// which would otherwise win over the test's config file.
func env() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MYELIN_") {
			out = append(out, kv)
		}
	}
	return out
}

// freePort returns a loopback address that was free a moment ago.
func freePort(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// start runs myelin on a free port and waits up to 20 s for GET /_matrix/client/versions to
// answer 200. A port taken between choosing and binding it is retried.
func (s *server) start(t testing.TB) {
	t.Helper()
	bin, _ := binaries(t)
	for attempt := 0; ; attempt++ {
		addr := freePort(t)
		s.mu.Lock()
		s.output.WriteString(fmt.Sprintf("--- starting on %s\n", addr))
		s.mu.Unlock()
		cmd := exec.Command(bin, "--config", s.config, "--http-bind-address", addr)
		cmd.Dir = s.dir
		cmd.Env = append(env(), s.extraEnv...)
		w := &lockedWriter{mu: &s.mu, w: &s.output}
		cmd.Stdout, cmd.Stderr = w, w
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting myelin: %v", err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		s.cmd, s.done, s.url = cmd, done, "http://"+addr
		err := s.waitReady()
		if err == nil {
			return
		}
		if s.running() {
			s.kill()
		} else {
			s.cmd = nil
		}
		if attempt < 3 && strings.Contains(s.log(), "address already in use") {
			continue
		}
		t.Fatalf("myelin did not start: %v\n%s", err, s.log())
	}
}

func (s *server) waitReady() error {
	deadline := time.Now().Add(20 * time.Second)
	hc := &http.Client{Timeout: 2 * time.Second}
	for {
		select {
		case err := <-s.done:
			s.done <- err // keep it for running() and stop()
			return fmt.Errorf("myelin exited before answering: %v", err)
		default:
		}
		resp, err := hc.Get(s.url + "/_matrix/client/versions")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("GET /_matrix/client/versions did not answer 200 within 20s (last error %v)", err)
		}
		select {
		case <-time.After(25 * time.Millisecond):
		case err := <-s.done:
			s.done <- err
		}
	}
}

// running reports whether the subprocess has been started and not yet exited.
func (s *server) running() bool {
	if s.cmd == nil {
		return false
	}
	select {
	case err := <-s.done:
		s.done <- err
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and checks that myelin exits with status 0 within 15 s.
func (s *server) stop(t testing.TB) {
	t.Helper()
	s.stopWithin(t, 15*time.Second)
}

// stopWithin sends SIGTERM and checks that myelin exits with status 0 within limit.
func (s *server) stopWithin(t testing.TB, limit time.Duration) {
	t.Helper()
	if s.cmd == nil {
		t.Fatalf("stop: server not started")
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("sending SIGTERM: %v", err)
	}
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("myelin exit after SIGTERM: got %v; want status 0\n%s", err, s.log())
		}
	case <-time.After(limit):
		s.kill()
		t.Errorf("myelin did not exit within %v of SIGTERM\n%s", limit, s.log())
	}
	s.cmd = nil
}

func (s *server) kill() {
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// restart stops the server cleanly and starts it again on the same config and data.
func (s *server) restart(t testing.TB) {
	t.Helper()
	s.stop(t)
	s.start(t)
}

func (s *server) log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.output.String()
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// myelinctl runs the myelinctl binary with args in the server's folder and returns its output.
func (s *server) myelinctl(t testing.TB, args ...string) (string, error) {
	_, ctl := binaries(t)
	cmd := exec.Command(ctl, args...)
	cmd.Dir = s.dir
	cmd.Env = env()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// httpClient is shared by every test client; it never follows redirects.
var httpClient = &http.Client{
	Timeout:       20 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// client is a Matrix client of one server, with or without an access token.
type client struct {
	srv      *server
	token    string
	userID   string
	deviceID string
}

// anon returns a client without an access token.
func (s *server) anon() *client { return &client{srv: s} }

// as returns a client using token.
func (s *server) as(token string) *client { return &client{srv: s, token: token} }

// response is a complete HTTP response.
type response struct {
	method, path string
	status       int
	header       http.Header
	body         []byte
}

func (r *response) String() string {
	return fmt.Sprintf("%s %s: %d %s", r.method, r.path, r.status, r.body)
}

// rawBody marks a request body sent exactly as given.
type rawBody []byte

// do sends a request. body is nil (no body), rawBody, an io.Reader (sent chunked), or any
// other value, sent as JSON. hdr holds extra header pairs.
func (c *client) do(t testing.TB, method, path string, body any, hdr ...string) *response {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case rawBody:
		rd = bytes.NewReader(b)
	case io.Reader:
		rd = b
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatalf("encoding request body: %v", err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, c.srv.url+path, rd)
	if err != nil {
		t.Fatalf("building request %s %s: %v", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return &response{method: method, path: path, status: resp.StatusCode, header: resp.Header, body: b}
}

// obj decodes the body as a JSON object, failing t if it is not one.
func (r *response) obj(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil || m == nil {
		t.Fatalf("%s: body is not a JSON object: %v", r, err)
	}
	return m
}

// decode decodes the body into v.
func (r *response) decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("%s: decoding body: %v", r, err)
	}
}

// wantOK fails t unless the status is 200 with a JSON body, and returns the body.
func (r *response) wantOK(t testing.TB) map[string]any {
	t.Helper()
	return r.want(t, http.StatusOK)
}

// wantOKInto fails t unless the status is 200 with a JSON object body, and decodes the body
// into v.
func (r *response) wantOKInto(t testing.TB, v any) {
	t.Helper()
	r.wantOK(t)
	r.decode(t, v)
}

// want fails t unless the status is status with a JSON object body, and returns the body.
func (r *response) want(t testing.TB, status int) map[string]any {
	t.Helper()
	if r.status != status {
		t.Fatalf("%s: got status %d; want %d", r, r.status, status)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s: got Content-Type %q; want application/json", r, ct)
	}
	return r.obj(t)
}

// wantErr fails t unless r is a Matrix error with the given status and errcode: a JSON object
// with string errcode and error fields, served as exactly application/json. It returns the body.
func (r *response) wantErr(t testing.TB, status int, errcode string) map[string]any {
	t.Helper()
	if r.status != status {
		t.Fatalf("%s: got status %d; want %d %s", r, r.status, status, errcode)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: got Content-Type %q; want application/json", r, ct)
	}
	m := r.obj(t)
	if got, _ := m["errcode"].(string); got != errcode {
		t.Fatalf("%s: got errcode %q; want %q", r, got, errcode)
	}
	if msg, ok := m["error"].(string); !ok || msg == "" {
		t.Errorf("%s: got error %#v; want a non-empty string", r, m["error"])
	}
	return m
}

// str returns m[key] as a string, failing t if it is not a non-empty string.
func str(t testing.TB, m map[string]any, key string) string {
	t.Helper()
	s, ok := m[key].(string)
	if !ok || s == "" {
		t.Fatalf("got %s = %#v in %v; want a non-empty string", key, m[key], m)
	}
	return s
}

// eventually calls f until it returns true, failing t if it has not by the deadline.
func eventually(t testing.TB, within time.Duration, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not so within %v", what, within)
		}
		<-time.After(50 * time.Millisecond)
	}
}

// userID returns the full user ID of localpart on the test server.
func userID(localpart string) string { return "@" + localpart + ":" + serverName }

// register creates an account through /register with dummy auth and returns its client.
func (s *server) register(t testing.TB, localpart, password string, extra ...any) *client {
	t.Helper()
	body := map[string]any{"username": localpart, "password": password, "auth": map[string]string{"type": "m.login.dummy"}}
	for i := 0; i+1 < len(extra); i += 2 {
		body[extra[i].(string)] = extra[i+1]
	}
	m := s.anon().do(t, "POST", "/_matrix/client/v3/register", body).wantOK(t)
	if got, want := str(t, m, "user_id"), userID(localpart); got != want {
		t.Fatalf("register %s: got user_id %q; want %q", localpart, got, want)
	}
	return &client{srv: s, token: str(t, m, "access_token"), userID: userID(localpart), deviceID: str(t, m, "device_id")}
}

// login logs localpart in with a password and returns its client. extra holds more fields.
func (s *server) login(t testing.TB, localpart, password string, extra ...any) *client {
	t.Helper()
	body := map[string]any{
		"type":       "m.login.password",
		"identifier": map[string]string{"type": "m.id.user", "user": localpart},
		"password":   password,
	}
	for i := 0; i+1 < len(extra); i += 2 {
		body[extra[i].(string)] = extra[i+1]
	}
	m := s.anon().do(t, "POST", "/_matrix/client/v3/login", body).wantOK(t)
	return &client{srv: s, token: str(t, m, "access_token"), userID: str(t, m, "user_id"), deviceID: str(t, m, "device_id")}
}

// passwordAuth is a UIA m.login.password auth dict for localpart.
func passwordAuth(localpart, password, session string) map[string]any {
	a := map[string]any{
		"type":       "m.login.password",
		"identifier": map[string]string{"type": "m.id.user", "user": localpart},
		"password":   password,
	}
	if session != "" {
		a["session"] = session
	}
	return a
}

// wantChallenge fails t unless r is a UIA 401 offering exactly flows, and returns its session.
func wantChallenge(t testing.TB, r *response, flows [][]string) string {
	t.Helper()
	if r.status != http.StatusUnauthorized {
		t.Fatalf("%s: got status %d; want 401 with a UIA challenge", r, r.status)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: got Content-Type %q; want application/json", r, ct)
	}
	var ch struct {
		Flows []struct {
			Stages []string `json:"stages"`
		} `json:"flows"`
		Params  map[string]any `json:"params"`
		Session string         `json:"session"`
	}
	r.decode(t, &ch)
	var got [][]string
	for _, f := range ch.Flows {
		got = append(got, f.Stages)
	}
	if fmt.Sprint(got) != fmt.Sprint(flows) {
		t.Errorf("%s: got flows %v; want %v", r, got, flows)
	}
	if ch.Params == nil {
		t.Errorf("%s: got no params object; want one", r)
	}
	if ch.Session == "" {
		t.Errorf("%s: got no session; want one", r)
	}
	return ch.Session
}

// whoami returns the status of GET /account/whoami with c's token, and the body.
func (c *client) whoami(t testing.TB) *response {
	t.Helper()
	return c.do(t, "GET", "/_matrix/client/v3/account/whoami", nil)
}

// runCmd runs a command with the test environment and returns its combined output.
func runCmd(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = env()
	out, err := cmd.CombinedOutput()
	return string(out), err
}
