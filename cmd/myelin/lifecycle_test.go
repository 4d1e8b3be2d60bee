package main

// Process-level behaviour of the binary: refusing bad configurations at start, shutting down
// cleanly with requests in flight, and staying correct under concurrent requests.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/testkit"
)

// TestStartupFailures checks that myelin refuses to start, promptly and with a non-zero
// status and a message naming the problem, on a bad configuration or a taken port.
func TestStartupFailures(t *testing.T) {
	t.Parallel()
	bin, _ := binaries(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()

	// A PostgreSQL server nobody runs: a loopback port nothing listens on.
	closed := freePort(t)
	base := func(dir, extra string) string {
		return fmt.Sprintf("version: 2\nglobal:\n  server_name: %s\n%sclient_api:\n  registration_disabled: false\n"+
			"myelin:\n  data_dir: %q\n", serverName, extra, dir)
	}
	tests := []struct {
		name   string
		config func(dir string) string // nil: no config file
		args   []string
		want   []string // substrings of the output
		hide   []string // what the output must not show
	}{
		{
			name:   "typo",
			config: func(dir string) string { return strings.Replace(base(dir, ""), "server_name", "sever_name", 1) },
			want:   []string{"global.sever_name", "server_name"},
		},
		{
			name:   "bad value",
			config: func(dir string) string { return base(dir, "") + "user_api:\n  bcrypt_cost: 3\n" },
			want:   []string{"user_api.bcrypt_cost"},
		},
		{
			name: "unreachable database",
			config: func(dir string) string {
				return base(dir, fmt.Sprintf("  database:\n    connection_string: %q\n",
					"postgres://nobody:hunter2@"+closed+"/none?sslmode=disable&connect_timeout=5"))
			},
			args: []string{"--http-bind-address", freePort(t)},
			want: []string{closed},
			hide: []string{"hunter2"},
		},
		{
			name: "missing config file",
			args: []string{"--config", "/nonexistent/dendrite.yaml"},
			want: []string{"/nonexistent/dendrite.yaml"},
		},
		{
			name:   "port taken",
			config: func(dir string) string { return base(dir, "") },
			args:   []string{"--http-bind-address", taken.Addr().String()},
			want:   []string{taken.Addr().String()},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			args := tc.args
			if tc.config != nil {
				path := filepath.Join(dir, "dendrite.yaml")
				if err := os.WriteFile(path, []byte(tc.config(dir)), 0o600); err != nil {
					t.Fatal(err)
				}
				args = append([]string{"--config", path}, args...)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, args...)
			cmd.Dir, cmd.Env = dir, env()
			out, err := cmd.CombinedOutput()
			if ctx.Err() != nil {
				t.Fatalf("myelin still running after 20s; want it to refuse to start\n%s", out)
			}
			if err == nil {
				t.Fatalf("myelin exited with status 0; want a failure\n%s", out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output does not mention %q:\n%s", w, out)
				}
			}
			for _, h := range tc.hide {
				if strings.Contains(string(out), h) {
					t.Errorf("output shows %q; want it hidden:\n%s", h, out)
				}
			}
		})
	}
}

// TestGracefulShutdown checks that SIGTERM with a /sync long-poll in flight answers the
// long-poll and exits with status 0 at once, rather than when the long-poll would have ended.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/proc/net/tcp"); err != nil {
		t.Skip("needs /proc/net/tcp to see that the server has read the request")
	}
	forEachBackend(t, func(t *testing.T, b testkit.Backend) {
		s := startServer(t, b, serverOpts{})
		u := s.register(t, "sleepy", "pw")
		since := str(t, u.do(t, "GET", v3+"/sync?timeout=0", nil).wantOK(t), "next_batch")

		const longPoll = 30 * time.Second
		type result struct {
			status int
			body   map[string]any
			err    error
		}
		done := make(chan result, 1)
		var clientPort int
		wrote := make(chan struct{})
		go func() {
			trace := &httptrace.ClientTrace{
				GotConn:      func(i httptrace.GotConnInfo) { clientPort = i.Conn.LocalAddr().(*net.TCPAddr).Port },
				WroteRequest: func(httptrace.WroteRequestInfo) { close(wrote) },
			}
			req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET",
				fmt.Sprintf("%s%s/sync?since=%s&timeout=%d", s.url, v3, since, longPoll.Milliseconds()), nil)
			req.Header.Set("Authorization", "Bearer "+u.token)
			// A client of its own, so that the long-poll has a connection of its own.
			resp, err := (&http.Client{Transport: &http.Transport{}, Timeout: 2 * longPoll}).Do(req)
			if err != nil {
				done <- result{err: err}
				return
			}
			defer resp.Body.Close()
			var m map[string]any
			err = json.NewDecoder(resp.Body).Decode(&m)
			done <- result{status: resp.StatusCode, body: m, err: err}
		}()
		select {
		case <-wrote:
		case r := <-done:
			t.Fatalf("long-poll ended before SIGTERM: %+v", r)
		case <-time.After(10 * time.Second):
			t.Fatal("long-poll request not written within 10s")
		}
		_, portStr, _ := net.SplitHostPort(strings.TrimPrefix(s.url, "http://"))
		serverPort, _ := strconv.Atoi(portStr)
		eventually(t, 10*time.Second, "server reads the long-poll request", func() bool {
			return requestConsumed(t, serverPort, clientPort)
		})

		start := time.Now()
		s.stopWithin(t, 5*time.Second)
		t.Logf("exit %v after SIGTERM", time.Since(start))
		select {
		case r := <-done:
			if r.err != nil || r.status != http.StatusOK {
				t.Errorf("long-poll during shutdown: got status %d, error %v; want 200", r.status, r.err)
			} else if _, ok := r.body["next_batch"].(string); !ok {
				t.Errorf("long-poll during shutdown: got %v; want a sync response with next_batch", r.body)
			}
		case <-time.After(longPoll):
			t.Errorf("long-poll not answered after the server stopped")
		}
	})
}

// requestConsumed reports whether the server's end of the loopback connection from
// clientPort to serverPort is established and has no unread bytes, that is, whether the
// server has read a request the client has finished writing.
func requestConsumed(t testing.TB, serverPort, clientPort int) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatalf("reading /proc/net/tcp: %v", err)
	}
	port := func(addr string) int {
		_, p, _ := strings.Cut(addr, ":")
		n, _ := strconv.ParseInt(p, 16, 32)
		return int(n)
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 5 || port(f[1]) != serverPort || port(f[2]) != clientPort {
			continue
		}
		_, rx, _ := strings.Cut(f[4], ":")
		n, _ := strconv.ParseUint(rx, 16, 64)
		return f[3] == "01" && n == 0 // 01: ESTABLISHED
	}
	return false
}

// TestConcurrentRequests sends racing requests that touch the same rows. None may fail with
// a server error, and the outcome must be as if they had run one after another.
func TestConcurrentRequests(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b testkit.Backend) {
		s := startServer(t, b, serverOpts{})
		s.register(t, "owner", "pw")
		const n = 8

		// race runs n copies of the request at once and returns their responses.
		race := func(t *testing.T, method, path string, body func(i int) any) []*response {
			t.Helper()
			var wg sync.WaitGroup
			out := make([]*response, n)
			errs := make([]error, n)
			startGun := make(chan struct{})
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					j, _ := json.Marshal(body(i))
					req, _ := http.NewRequest(method, s.url+path, strings.NewReader(string(j)))
					<-startGun
					resp, err := httpClient.Do(req)
					if err != nil {
						errs[i] = err
						return
					}
					defer resp.Body.Close()
					b, err := io.ReadAll(resp.Body)
					out[i] = &response{method: method, path: path, status: resp.StatusCode, header: resp.Header, body: b}
					errs[i] = err
				}()
			}
			close(startGun)
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
			}
			return out
		}

		t.Run("same username", func(t *testing.T) {
			rs := race(t, "POST", v3+"/register", func(int) any {
				return map[string]any{"username": "racer", "password": "pw", "auth": map[string]string{"type": "m.login.dummy"}}
			})
			ok := 0
			for _, r := range rs {
				switch r.status {
				case http.StatusOK:
					ok++
				default:
					r.wantErr(t, http.StatusBadRequest, "M_USER_IN_USE")
				}
			}
			if ok != 1 {
				t.Errorf("got %d successful registrations of one name; want exactly 1", ok)
			}
		})
		t.Run("same device_id", func(t *testing.T) {
			rs := race(t, "POST", v3+"/login", func(int) any {
				return map[string]any{"type": "m.login.password", "user": "owner", "password": "pw", "device_id": "SHARED"}
			})
			var tokens []string
			for _, r := range rs {
				m := r.wantOK(t)
				if m["device_id"] != "SHARED" {
					t.Errorf("%s: got device_id %v; want SHARED", r, m["device_id"])
				}
				tokens = append(tokens, str(t, m, "access_token"))
			}
			valid := 0
			for _, tok := range tokens {
				if s.as(tok).whoami(t).status == http.StatusOK {
					valid++
				}
			}
			if valid != 1 {
				t.Errorf("after %d logins to one device_id, %d of their tokens work; want 1 (each login replaces the last)", n, valid)
			}
		})
	})
}
