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
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"sort"
	"time"

	"github.com/myelin-chat/myelin/bench/internal/benchserver"
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

func run(n int, base, database string, parallel int) error {
	if base == "" {
		dir, err := os.MkdirTemp("", "myelin-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		bin, err := benchserver.Build(dir)
		if err != nil {
			return err
		}
		srv, err := benchserver.Start(bin, benchserver.Options{Dir: dir, Database: database})
		if err != nil {
			return err
		}
		defer srv.Stop()
		base = srv.URL
	}
	hc := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	run := fmt.Sprint(time.Now().UnixNano())
	owner, err := benchserver.Register(hc, base, "owner-"+run)
	if err != nil {
		return fmt.Errorf("registering the room owner: %w", err)
	}
	roomID, err := benchserver.CreateRoom(owner)
	if err != nil {
		return err
	}
	fmt.Printf("registering %d users…\n", n)
	clients, err := benchserver.RegisterMany(hc, base, "joiner-"+run, n, parallel)
	if err != nil {
		return err
	}
	fmt.Printf("joining %d users to %s one after another…\n", n, roomID)
	lat := make([]time.Duration, n)
	path := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/join"
	for i, c := range clients {
		start := time.Now()
		if err := c.Do("POST", path, map[string]any{}, nil); err != nil {
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
	if err := owner.Do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/members", nil, &members); err != nil {
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
