package benchserver

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// FreshPostgres creates an empty database on the PostgreSQL server that conn points at and
// returns a connection string for it and a function that drops it again.
func FreshPostgres(conn string) (string, func(), error) {
	u, err := url.Parse(conn)
	if err != nil {
		return "", nil, fmt.Errorf("parsing the connection string: %w", err)
	}
	ctx := context.Background()
	c, err := pgx.Connect(ctx, conn)
	if err != nil {
		return "", nil, fmt.Errorf("connecting to PostgreSQL: %w", err)
	}
	name := fmt.Sprintf("myelin_bench_%d", time.Now().UnixNano())
	if _, err := c.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		c.Close(ctx)
		return "", nil, fmt.Errorf("creating database %s: %w", name, err)
	}
	u.Path = "/" + name
	drop := func() {
		_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		c.Close(ctx)
	}
	return u.String(), drop, nil
}

// CreateRoom has c create a public room and returns its ID.
func CreateRoom(c *Client) (string, error) {
	var room struct {
		RoomID string `json:"room_id"`
	}
	if err := c.Do("POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}, &room); err != nil {
		return "", fmt.Errorf("creating a room: %w", err)
	}
	return room.RoomID, nil
}

// JoinAll has every client join roomID, parallel at a time.
func JoinAll(clients []*Client, roomID string, parallel int) error {
	path := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/join"
	next := make(chan *Client)
	errc := make(chan error, parallel)
	var wg sync.WaitGroup
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range next {
				if err := c.Do("POST", path, map[string]any{}, nil); err != nil {
					errc <- err
					for range next {
					}
					return
				}
			}
		}()
	}
	for _, c := range clients {
		next <- c
	}
	close(next)
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return fmt.Errorf("joining %s: %w", roomID, err)
	}
	return nil
}

// Percentiles returns the given percentiles (0–100) of ds by the nearest-rank method; ds is
// sorted in place.
func Percentiles(ds []time.Duration, ps ...float64) []time.Duration {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	out := make([]time.Duration, len(ps))
	if len(ds) == 0 {
		return out
	}
	for i, p := range ps {
		k := int(p/100*float64(len(ds))+0.999999) - 1
		out[i] = ds[min(max(k, 0), len(ds)-1)]
	}
	return out
}

// MiB converts bytes to mebibytes.
func MiB(b int64) float64 { return float64(b) / (1 << 20) }

// Launch starts one server for a benchmark: bin if set, else one built from ./cmd/myelin;
// on SQLite in a temporary folder or, when database is set, in a fresh database on that
// PostgreSQL server; writing CPU profiles to cpuprofile if set (see Server.StartProfile). The
// returned function stops it and removes what Launch created.
func Launch(bin, database, cpuprofile string) (*Server, func(), error) {
	dir, err := os.MkdirTemp("", "myelin-bench-")
	if err != nil {
		return nil, nil, err
	}
	var undo []func()
	cleanup := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	undo = append(undo, func() { os.RemoveAll(dir) })
	fail := func(err error) (*Server, func(), error) { cleanup(); return nil, nil, err }
	if bin == "" {
		if bin, err = Build(dir); err != nil {
			return fail(err)
		}
	}
	if database != "" {
		db, drop, err := FreshPostgres(database)
		if err != nil {
			return fail(err)
		}
		undo = append(undo, drop)
		database = db
	}
	if cpuprofile != "" {
		if cpuprofile, err = filepath.Abs(cpuprofile); err != nil {
			return fail(err)
		}
		_ = os.Remove(cpuprofile)
	}
	srv, err := Start(bin, Options{Dir: dir, Database: database, CPUProfile: cpuprofile})
	if err != nil {
		return fail(err)
	}
	undo = append(undo, srv.Stop)
	return srv, cleanup, nil
}
