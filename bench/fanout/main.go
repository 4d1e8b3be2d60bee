// Command fanout measures how fast a message reaches the members of a room who are waiting in
// /sync: it fills a room with N members (1 sender and N-1 receivers), has every receiver
// long-poll /sync (since its last token, timeout 30 s, one connection each), and has the sender
// send K messages one at a time, each only once every receiver has seen the one before. For
// every (message, receiver) it records the delay until the /sync response holding the message
// arrived, counted both from just before the sender's PUT (send-based) and from the PUT's 200
// (ack-based), and reports their median, p90, p99 and maximum and the server's CPU time per
// delivered message (user plus system, from /proc/<pid>/stat, over the measured phase).
//
// It builds ./cmd/myelin (or runs -bin) on a fresh SQLite data folder, or on a fresh database
// created on the PostgreSQL server that -database names (and dropped afterwards). -cpuprofile
// writes a CPU profile of the server during the measured phase.
//
//	go run ./bench/fanout
//	go run ./bench/fanout -database 'postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable'
//
// Last measured (defaults: 100 members, 200 messages; 2026-11-22). "Dev box" is a shared 2-core
// machine; "device" a 16-core x86-64 machine, otherwise idle ("2 cores": the server pinned there
// with taskset to two cores, the client on the rest). Latency from the send / from the 200, and
// server CPU per delivery (one message to one receiver).
//
// With prepared statements cached and the fan-out fast paths (dev box, otherwise idle):
//
//	SQLite, dev box:        median 27.5 / 23 ms, p90 43 ms, p99 56 ms, max 69 ms; 0.60 ms CPU/delivery
//	PostgreSQL, dev box:    median 82 / 74 ms, p90 113 ms, p99 139 ms, max 174 ms; 0.94 ms CPU/delivery (PostgreSQL's own CPU not counted)
//
// Before them (every statement prepared per query, a state walk per receiver, a presence
// write per /sync):
//
//	SQLite, device:         median 38–42 / 36–39 ms, p90 49–54 ms, p99 89–99 ms, max 126 ms; 3.0–3.4 ms CPU/delivery
//	SQLite, device 2 cores: median 69–72 / 66–69 ms, p90 96–97 ms, p99 113–124 ms, max 132–154 ms; 1.9 ms CPU/delivery
//	SQLite, dev box:        median 229 / 220 ms, p90 484 ms, p99 711 ms, max 1.46 s; 3.3 ms CPU/delivery (under load ~6–8)
//	PostgreSQL, dev box:    median 165 / 154 ms, p90 321 ms, p99 456 ms, max 669 ms; 2.1 ms CPU/delivery (under load ~6–8)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/myelin-chat/myelin/bench/internal/benchserver"
)

func main() {
	var o options
	flag.IntVar(&o.members, "members", 100, "members of the room: one sender, the rest receivers")
	flag.IntVar(&o.messages, "messages", 200, "messages sent one at a time in the measured phase")
	flag.IntVar(&o.warmup, "warmup", 5, "messages sent and awaited before the measured phase (not measured)")
	flag.StringVar(&o.filter, "filter", "", "inline JSON filter the receivers pass to /sync (default: none)")
	flag.StringVar(&o.database, "database", "", "PostgreSQL connection string; a fresh database is created there for the run (default: SQLite in a temp folder)")
	flag.StringVar(&o.bin, "bin", "", "server binary to run (default: build ./cmd/myelin; run from the repository root)")
	flag.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of the server during the measured phase to this file")
	flag.IntVar(&o.parallel, "parallel", 8, "concurrent registrations and joins while setting up (not measured)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "Usage: go run ./bench/fanout [flags]\n\nMeasures message delivery latency to members long-polling /sync.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if o.members < 2 || o.messages < 1 {
		fmt.Fprintln(os.Stderr, "fanout: need members ≥ 2 and messages ≥ 1")
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "fanout:", err)
		os.Exit(1)
	}
}

type options struct {
	members, messages, warmup, parallel int
	filter, database, bin, cpuprofile   string
}

// syncResponse holds the parts of a /sync response the receivers read.
type syncResponse struct {
	NextBatch string `json:"next_batch"`
	Rooms     struct {
		Join map[string]struct {
			Timeline struct {
				Events []struct {
					Type    string `json:"type"`
					Content struct {
						Body string `json:"body"`
					} `json:"content"`
				} `json:"events"`
			} `json:"timeline"`
		} `json:"join"`
	} `json:"rooms"`
}

// tracker records when each receiver saw each message.
type tracker struct {
	receivers int
	arrival   [][]time.Time   // [message][receiver]
	seen      []atomic.Int32  // receivers that saw the message
	done      []chan struct{} // closed when every receiver saw the message
}

func newTracker(messages, receivers int) *tracker {
	t := &tracker{receivers: receivers, arrival: make([][]time.Time, messages),
		seen: make([]atomic.Int32, messages), done: make([]chan struct{}, messages)}
	for i := range t.arrival {
		t.arrival[i] = make([]time.Time, receivers)
		t.done[i] = make(chan struct{})
	}
	return t
}

// saw records that receiver r got message i at time at.
func (t *tracker) saw(i, r int, at time.Time) {
	if i < 0 || i >= len(t.arrival) || !t.arrival[i][r].IsZero() {
		return
	}
	t.arrival[i][r] = at
	if int(t.seen[i].Add(1)) == t.receivers {
		close(t.done[i])
	}
}

func run(o options) error {
	srv, cleanup, err := benchserver.Launch(o.bin, o.database, o.cpuprofile)
	if err != nil {
		return err
	}
	defer cleanup()
	hc := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{
		MaxIdleConns: 2 * (o.members + o.parallel), MaxIdleConnsPerHost: 2 * (o.members + o.parallel)}}

	fmt.Printf("setting up a room with %d members…\n", o.members)
	sender, err := benchserver.Register(hc, srv.URL, "sender")
	if err != nil {
		return fmt.Errorf("registering the sender: %w", err)
	}
	roomID, err := benchserver.CreateRoom(sender)
	if err != nil {
		return err
	}
	receivers, err := benchserver.RegisterMany(hc, srv.URL, "receiver", o.members-1, o.parallel)
	if err != nil {
		return err
	}
	if err := benchserver.JoinAll(receivers, roomID, o.parallel); err != nil {
		return err
	}

	total := o.warmup + o.messages
	tr := newTracker(total, len(receivers))
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, len(receivers))
	var wg sync.WaitGroup
	for r, c := range receivers {
		// The first sync (timeout 0) gives each receiver its token before anything is sent.
		since, err := syncOnce(ctx, c, "", 0, o.filter, roomID, nil)
		if err != nil {
			cancel()
			return fmt.Errorf("initial sync: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				next, err := syncOnce(ctx, c, since, 30*time.Second, o.filter, roomID, func(i int, at time.Time) { tr.saw(i, r, at) })
				if err != nil {
					if ctx.Err() == nil {
						errc <- err
					}
					return
				}
				since = next
			}
		}()
	}
	defer func() { cancel(); wg.Wait() }()

	path := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/send/m.room.message/"
	sent, acked := make([]time.Time, total), make([]time.Time, total)
	var cpu0, self0 time.Duration
	for i := range total {
		if i == o.warmup {
			fmt.Printf("sending %d messages to %d receivers in %s…\n", o.messages, len(receivers), roomID)
			if o.cpuprofile != "" {
				if err := srv.StartProfile(); err != nil {
					return err
				}
			}
			if cpu0, err = srv.CPU(); err != nil {
				return err
			}
			self0, _ = benchserver.ProcessCPU(os.Getpid())
		}
		sent[i] = time.Now()
		if err := sender.Do("PUT", path+"fanout-"+strconv.Itoa(i), map[string]any{"msgtype": "m.text", "body": "fanout " + strconv.Itoa(i)}, nil); err != nil {
			return err
		}
		acked[i] = time.Now()
		select {
		case <-tr.done[i]:
		case err := <-errc:
			return fmt.Errorf("receiver: %w", err)
		case <-time.After(time.Minute):
			return fmt.Errorf("message %d reached only %d of %d receivers within a minute", i, tr.seen[i].Load(), len(receivers))
		}
	}
	wall := time.Since(sent[o.warmup])
	cpu1, err := srv.CPU()
	if err != nil {
		return err
	}
	self1, _ := benchserver.ProcessCPU(os.Getpid())
	if o.cpuprofile != "" {
		if err := srv.StopProfile(); err != nil {
			return err
		}
	}
	rss, peak, err := srv.Memory()
	if err != nil {
		return err
	}

	var fromSend, fromAck []time.Duration
	for i := o.warmup; i < total; i++ {
		for _, at := range tr.arrival[i] {
			fromSend = append(fromSend, at.Sub(sent[i]))
			fromAck = append(fromAck, at.Sub(acked[i]))
		}
	}
	deliveries := len(fromSend)
	cpu := cpu1 - cpu0
	fmt.Printf("deliveries:        %d (%d messages × %d receivers) in %v\n", deliveries, o.messages, len(receivers), wall.Round(time.Millisecond))
	for _, row := range []struct {
		name string
		ds   []time.Duration
	}{{"latency from send:", fromSend}, {"latency from 200: ", fromAck}} {
		p := benchserver.Percentiles(row.ds, 50, 90, 99, 100)
		fmt.Printf("%s median %v  p90 %v  p99 %v  max %v\n", row.name, ms(p[0]), ms(p[1]), ms(p[2]), ms(p[3]))
	}
	fmt.Printf("server CPU:        %v in all, %.3f ms/delivery, %.2f ms/message sent\n", cpu,
		float64(cpu)/float64(time.Millisecond)/float64(deliveries), float64(cpu)/float64(time.Millisecond)/float64(o.messages))
	fmt.Printf("client CPU:        %.3f ms/delivery\n", float64(self1-self0)/float64(time.Millisecond)/float64(deliveries))
	fmt.Printf("server RSS:        %.1f MiB now, peak %.1f MiB\n", benchserver.MiB(rss), benchserver.MiB(peak))
	if o.cpuprofile != "" {
		fmt.Printf("CPU profile:       %s\n", o.cpuprofile)
	}
	return nil
}

// syncOnce runs one /sync for c and returns the next token; for each "fanout N" message in
// roomID's timeline it calls saw(N, arrival time of the response).
func syncOnce(ctx context.Context, c *benchserver.Client, since string, timeout time.Duration, filter, roomID string, saw func(int, time.Time)) (string, error) {
	q := url.Values{"timeout": {strconv.FormatInt(timeout.Milliseconds(), 10)}}
	if since != "" {
		q.Set("since", since)
	}
	if filter != "" {
		q.Set("filter", filter)
	}
	req, err := http.NewRequestWithContext(ctx, "GET", c.Base+"/_matrix/client/v3/sync?"+q.Encode(), nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	// The response is read in full before the arrival time is taken: a client sees the
	// message only once it has the whole response.
	b, err := io.ReadAll(resp.Body)
	at := time.Now()
	if err != nil {
		return "", err
	}
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("/sync: %d %s", resp.StatusCode, b)
	}
	var out syncResponse
	if err := json.Unmarshal(b, &out); err != nil {
		return "", err
	}
	if out.NextBatch == "" {
		return "", errors.New("/sync: no next_batch")
	}
	if saw != nil {
		for _, ev := range out.Rooms.Join[roomID].Timeline.Events {
			if n, ok := strings.CutPrefix(ev.Content.Body, "fanout "); ok && ev.Type == "m.room.message" {
				if i, err := strconv.Atoi(n); err == nil {
					saw(i, at)
				}
			}
		}
	}
	return out.NextBatch, nil
}

// ms rounds d for printing.
func ms(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
