// Command send measures the message send path: it fills one room with N members, then has S of
// them send M messages in all, concurrently, with PUT /rooms/{roomId}/send/m.room.message/{txnId},
// and reports the throughput (200 answers per second, each one a persisted event), the latency
// percentiles of the PUTs, the server's CPU time per event (user plus system, from
// /proc/<pid>/stat before and after the send phase) and its resident memory.
//
// It builds ./cmd/myelin (or runs -bin) on a fresh SQLite data folder, or on a fresh database
// created on the PostgreSQL server that -database names (and dropped afterwards). -cpuprofile
// writes a CPU profile of the server during the send phase (go tool pprof -top BINARY FILE).
//
//	go run ./bench/send
//	go run ./bench/send -database 'postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable'
//
// Last measured (defaults: 100 members, 10 senders, 5,000 messages; 2026-11-22). "Dev box" is a
// shared 2-core machine; "device" a 16-core x86-64 machine, otherwise idle ("2 cores": the server
// pinned there with taskset to two cores, the client on the rest).
//
// With prepared statements cached and the fan-out fast paths (dev box, otherwise idle):
//
//	SQLite, dev box:        527 events/s, PUT p50 18.5 ms, p99 29 ms, 2.0 ms CPU/event, RSS 39 MiB
//	PostgreSQL, dev box:    278 events/s, PUT p50 35 ms, p99 66 ms, 2.9 ms CPU/event (PostgreSQL's own CPU not counted)
//
// Before them (every statement prepared per query):
//
//	SQLite, device:         517–570 events/s, PUT p50 17–19 ms, p99 26–53 ms, 2.9–3.3 ms CPU/event, RSS 39–42 MiB
//	SQLite, device 2 cores: 498–538 events/s, PUT p50 19 ms, p99 22–29 ms, 2.4–2.6 ms CPU/event, RSS 35–38 MiB
//	SQLite, dev box:        152 events/s, PUT p50 56 ms, p99 174 ms, 3.8 ms CPU/event (under load ~6–8)
//	PostgreSQL, dev box:    181 events/s, PUT p50 47 ms, p99 157 ms, 3.3 ms CPU/event (under load ~6–8)
package main

import (
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/myelin-chat/myelin/bench/internal/benchserver"
)

func main() {
	var o options
	flag.IntVar(&o.members, "members", 100, "members of the room, senders included")
	flag.IntVar(&o.senders, "senders", 10, "members that send concurrently, each one message at a time")
	flag.IntVar(&o.messages, "messages", 5000, "messages sent in all during the measured phase")
	flag.IntVar(&o.warmup, "warmup", 100, "messages sent before the measured phase (not measured)")
	flag.StringVar(&o.database, "database", "", "PostgreSQL connection string; a fresh database is created there for the run (default: SQLite in a temp folder)")
	flag.StringVar(&o.bin, "bin", "", "server binary to run (default: build ./cmd/myelin; run from the repository root)")
	flag.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of the server during the send phase to this file")
	flag.IntVar(&o.parallel, "parallel", 8, "concurrent registrations and joins while setting up (not measured)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "Usage: go run ./bench/send [flags]\n\nMeasures send throughput, PUT latency and server CPU per event.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if o.senders < 1 || o.senders > o.members || o.messages < 1 {
		fmt.Fprintln(os.Stderr, "send: need 1 ≤ senders ≤ members and messages ≥ 1")
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "send:", err)
		os.Exit(1)
	}
}

type options struct {
	members, senders, messages, warmup, parallel int
	database, bin, cpuprofile                    string
}

func run(o options) error {
	srv, cleanup, err := benchserver.Launch(o.bin, o.database, o.cpuprofile)
	if err != nil {
		return err
	}
	defer cleanup()
	hc := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{
		MaxIdleConns: 4 * (o.senders + o.parallel), MaxIdleConnsPerHost: 2 * (o.senders + o.parallel)}}

	fmt.Printf("setting up a room with %d members…\n", o.members)
	owner, err := benchserver.Register(hc, srv.URL, "owner")
	if err != nil {
		return fmt.Errorf("registering the room owner: %w", err)
	}
	roomID, err := benchserver.CreateRoom(owner)
	if err != nil {
		return err
	}
	others, err := benchserver.RegisterMany(hc, srv.URL, "member", o.members-1, o.parallel)
	if err != nil {
		return err
	}
	if err := benchserver.JoinAll(others, roomID, o.parallel); err != nil {
		return err
	}
	senders := append([]*benchserver.Client{owner}, others...)[:o.senders]
	path := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/send/m.room.message/"

	// sendAll sends n messages from all senders at once and returns each PUT's latency.
	sendAll := func(phase string, n int) ([]time.Duration, error) {
		lat := make([]time.Duration, n)
		var next atomic.Int64
		errc := make(chan error, len(senders))
		var wg sync.WaitGroup
		for si, c := range senders {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1) - 1)
					if i >= n {
						return
					}
					body := map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("%s message %d", phase, i)}
					start := time.Now()
					if err := c.Do("PUT", path+fmt.Sprintf("%s-%d-%d", phase, si, i), body, nil); err != nil {
						errc <- err
						next.Store(int64(n))
						return
					}
					lat[i] = time.Since(start)
				}
			}()
		}
		wg.Wait()
		close(errc)
		return lat, <-errc
	}

	if o.warmup > 0 {
		if _, err := sendAll("warmup", o.warmup); err != nil {
			return fmt.Errorf("warming up: %w", err)
		}
	}
	fmt.Printf("sending %d messages from %d senders into %s…\n", o.messages, o.senders, roomID)
	if o.cpuprofile != "" {
		if err := srv.StartProfile(); err != nil {
			return err
		}
	}
	cpu0, err := srv.CPU()
	if err != nil {
		return err
	}
	self0, _ := benchserver.ProcessCPU(os.Getpid())
	start := time.Now()
	lat, err := sendAll("bench", o.messages)
	wall := time.Since(start)
	if err != nil {
		return err
	}
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
	p := benchserver.Percentiles(lat, 50, 90, 99, 100)
	cpu := cpu1 - cpu0
	fmt.Printf("events persisted: %d in %v\n", o.messages, wall.Round(time.Millisecond))
	fmt.Printf("throughput:       %.0f events/s\n", float64(o.messages)/wall.Seconds())
	fmt.Printf("PUT latency:      p50 %v  p90 %v  p99 %v  max %v\n", ms(p[0]), ms(p[1]), ms(p[2]), ms(p[3]))
	fmt.Printf("server CPU:       %v in all, %.2f ms/event (%.0f%% of one core)\n",
		cpu, float64(cpu)/float64(time.Millisecond)/float64(o.messages), 100*cpu.Seconds()/wall.Seconds())
	fmt.Printf("client CPU:       %.2f ms/event\n", float64(self1-self0)/float64(time.Millisecond)/float64(o.messages))
	fmt.Printf("server RSS:       %.1f MiB now, peak %.1f MiB\n", benchserver.MiB(rss), benchserver.MiB(peak))
	if o.cpuprofile != "" {
		fmt.Printf("CPU profile:      %s\n", o.cpuprofile)
	}
	return nil
}

// ms rounds d for printing.
func ms(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
