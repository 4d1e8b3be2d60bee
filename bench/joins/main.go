// Command joins measures how join latency grows with room size: N users join one public room
// one after another over the Client-Server API, and it reports the mean latency of the first
// and the last 100 joins and the time of GET /members at the end.
//
// By default it builds ./cmd/myelin, starts it on a fresh SQLite data folder (or PostgreSQL
// with -database) on a free loopback port, and stops it afterwards; -url points it at a server
// that is already running instead (open registration needed).
//
//	go run ./bench/joins -users 2000
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	users := flag.Int("users", 2000, "users that join the room, one after another")
	base := flag.String("url", "", "base URL of a running server (default: start one)")
	database := flag.String("database", "", "connection string for the started server (default: SQLite in a temp folder)")
	parallel := flag.Int("register-parallel", 4, "concurrent registrations while setting up (not measured)")
	flag.Parse()
	if err := run(*users, *base, *database, *parallel); err != nil {
		fmt.Fprintln(os.Stderr, "joins:", err)
		os.Exit(1)
	}
}

type client struct {
	base  string
	token string
	http  *http.Client
}

func (c *client) do(method, path string, body any, out any) error {
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, r)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
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

func register(hc *http.Client, base, name string) (*client, error) {
	c := &client{base: base, http: hc}
	var out struct {
		AccessToken string `json:"access_token"`
	}
	err := c.do("POST", "/_matrix/client/v3/register", map[string]any{
		"username": name, "password": "bench-password-" + name, "auth": map[string]string{"type": "m.login.dummy"},
	}, &out)
	c.token = out.AccessToken
	return c, err
}

func run(n int, base, database string, parallel int) error {
	if base == "" {
		stop, u, err := startServer(database)
		if err != nil {
			return err
		}
		defer stop()
		base = u
	}
	hc := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	run := fmt.Sprint(time.Now().UnixNano())
	owner, err := register(hc, base, "owner-"+run)
	if err != nil {
		return fmt.Errorf("registering the room owner: %w", err)
	}
	var room struct {
		RoomID string `json:"room_id"`
	}
	if err := owner.do("POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}, &room); err != nil {
		return err
	}
	fmt.Printf("registering %d users…\n", n)
	clients := make([]*client, n)
	errc := make(chan error, n)
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			c, err := register(hc, base, fmt.Sprintf("joiner-%s-%d", run, i))
			clients[i] = c
			if err != nil {
				errc <- err
			}
		}(i)
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return fmt.Errorf("registering: %w", err)
	}
	fmt.Printf("joining %d users to %s one after another…\n", n, room.RoomID)
	lat := make([]time.Duration, n)
	path := "/_matrix/client/v3/rooms/" + url.PathEscape(room.RoomID) + "/join"
	for i, c := range clients {
		start := time.Now()
		if err := c.do("POST", path, map[string]any{}, nil); err != nil {
			return fmt.Errorf("join %d: %w", i, err)
		}
		lat[i] = time.Since(start)
	}
	k := min(100, n)
	first, last := mean(lat[:k]), mean(lat[n-k:])
	fmt.Printf("joins: %d\nfirst %d joins: mean %v (median %v)\nlast %d joins:  mean %v (median %v)\nratio last/first: %.2f\n",
		n, k, first, median(lat[:k]), k, last, median(lat[n-k:]), float64(last)/float64(first))
	start := time.Now()
	var members struct {
		Chunk []json.RawMessage `json:"chunk"`
	}
	if err := owner.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room.RoomID)+"/members", nil, &members); err != nil {
		return err
	}
	fmt.Printf("/members with %d members: %v\n", len(members.Chunk), time.Since(start))
	if len(members.Chunk) != n+1 {
		return fmt.Errorf("/members returned %d members; want %d", len(members.Chunk), n+1)
	}
	return nil
}

func mean(ds []time.Duration) time.Duration {
	var t time.Duration
	for _, d := range ds {
		t += d
	}
	return t / time.Duration(len(ds))
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// startServer builds cmd/myelin and runs it on a fresh data folder and a free port.
func startServer(database string) (stop func(), base string, err error) {
	dir, err := os.MkdirTemp("", "myelin-bench-")
	if err != nil {
		return nil, "", err
	}
	bin := filepath.Join(dir, "myelin")
	build := exec.Command("go", "build", "-o", bin, "./cmd/myelin")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return nil, "", fmt.Errorf("building myelin (run from the repository root): %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := fmt.Sprintf(`version: 2
global:
  server_name: bench.local
client_api:
  registration_disabled: false
  rate_limiting:
    enabled: false
user_api:
  bcrypt_cost: 4
myelin:
  data_dir: %s
  listen: %s
`, filepath.Join(dir, "data"), addr)
	if database != "" {
		cfg = strings.Replace(cfg, "  server_name: bench.local\n",
			fmt.Sprintf("  server_name: bench.local\n  database:\n    connection_string: %q\n", database), 1)
	}
	cfgPath := filepath.Join(dir, "dendrite.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, "", err
	}
	cmd := exec.Command(bin, "--config", cfgPath)
	logf, _ := os.Create(filepath.Join(dir, "server.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	base = "http://" + addr
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		resp, err := http.Get(base + "/_matrix/client/versions")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if ctx.Err() != nil {
			_ = cmd.Process.Kill()
			return nil, "", errors.New("server did not start; see " + logf.Name())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		os.RemoveAll(dir)
	}, base, nil
}
