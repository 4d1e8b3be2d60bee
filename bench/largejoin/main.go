// Command largejoin measures a join to a large remote room: it starts two Myelin servers that
// federate over TLS on loopback, fills a room on the second with N members, has a user of the
// first join it, and reports the join's time and the first server's resident memory before and
// at its peak.
//
//	go run ./bench/largejoin -members 10000
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/myelin-chat/myelin/bench/internal/benchserver"
)

func main() {
	members := flag.Int("members", 10000, "members of the remote room before the join")
	parallel := flag.Int("parallel", 4, "concurrent registrations and joins while filling the room (not measured)")
	flag.Parse()
	if err := run(*members, *parallel); err != nil {
		fmt.Fprintln(os.Stderr, "largejoin:", err)
		os.Exit(1)
	}
}

func run(n, parallel int) error {
	dir, err := os.MkdirTemp("", "myelin-largejoin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := benchserver.Build(dir)
	if err != nil {
		return err
	}
	ca, err := benchserver.NewCA(dir)
	if err != nil {
		return err
	}
	var srv [2]*benchserver.Server
	for i := range srv {
		d := filepath.Join(dir, fmt.Sprint("hs", i+1))
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
		if srv[i], err = benchserver.Start(bin, benchserver.Options{Dir: d, Federation: ca}); err != nil {
			return err
		}
		defer srv[i].Stop()
	}
	local, remote := srv[0], srv[1]
	hc := &http.Client{Timeout: 10 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

	owner, err := benchserver.Register(hc, remote.URL, "owner")
	if err != nil {
		return err
	}
	roomID, err := benchserver.CreateRoom(owner)
	if err != nil {
		return err
	}
	fmt.Printf("filling %s on %s with %d members…\n", roomID, remote.Name, n)
	users, err := benchserver.RegisterMany(hc, remote.URL, "member", n, parallel)
	if err != nil {
		return err
	}
	start := time.Now()
	if err := benchserver.JoinAll(users, roomID, parallel); err != nil {
		return fmt.Errorf("filling the room: %w", err)
	}
	fmt.Printf("filled in %v\n", time.Since(start).Round(time.Millisecond))

	joiner, err := benchserver.Register(hc, local.URL, "joiner")
	if err != nil {
		return err
	}
	rssBefore, _, err := local.Memory()
	if err != nil {
		return err
	}
	start = time.Now()
	if err := joiner.Do("POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID)+"?server_name="+url.QueryEscape(remote.Name), map[string]any{}, nil); err != nil {
		return fmt.Errorf("remote join: %w", err)
	}
	took := time.Since(start)
	rssAfter, peak, err := local.Memory()
	if err != nil {
		return err
	}
	var members struct {
		Chunk []json.RawMessage `json:"chunk"`
	}
	if err := joiner.Do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/members", nil, &members); err != nil {
		return err
	}
	fmt.Printf("remote join of a %d-member room: %v\njoining server RSS: %.1f MiB before, %.1f MiB after, peak %.1f MiB\nmembers seen by the joiner's server: %d\n",
		n+1, took.Round(time.Millisecond), benchserver.MiB(rssBefore), benchserver.MiB(rssAfter), benchserver.MiB(peak), len(members.Chunk))
	if len(members.Chunk) != n+2 {
		return fmt.Errorf("the joining server lists %d members; want %d", len(members.Chunk), n+2)
	}
	return nil
}
