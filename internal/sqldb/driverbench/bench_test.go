package driverbench

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/ncruces/go-sqlite3/driver" // registers "sqlite3"
	_ "modernc.org/sqlite"                   // registers "sqlite"
)

// driverCase names one driver under test.
type driverCase struct {
	name   string // sub-benchmark name
	driver string // database/sql driver name
}

var drivers = []driverCase{
	{name: "modernc", driver: "sqlite"},
	{name: "ncruces", driver: "sqlite3"},
}

const (
	numRooms       = 50
	fixtureEvents  = 50_000
	fixtureBatch   = 1000
	readerConns    = 4
	roomRangeLimit = 20
	batchSize      = 100
)

const schema = `
CREATE TABLE IF NOT EXISTS rooms (
	room_nid   INTEGER PRIMARY KEY,
	latest_pos INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
	stream_pos INTEGER PRIMARY KEY,
	event_id   TEXT NOT NULL UNIQUE,
	room_nid   INTEGER NOT NULL REFERENCES rooms(room_nid),
	type       TEXT NOT NULL,
	state_key  TEXT,
	sender     TEXT NOT NULL,
	depth      INTEGER NOT NULL,
	json       BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_room_pos ON events(room_nid, stream_pos);
`

const (
	sqlInsertEvent = `INSERT INTO events (stream_pos, event_id, room_nid, type, state_key, sender, depth, json)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)`
	sqlUpdateRoom = `UPDATE rooms SET latest_pos = ?1 WHERE room_nid = ?2`
	sqlEventByID  = `SELECT stream_pos, room_nid, type, state_key, sender, depth, json FROM events WHERE event_id = ?1`
	sqlRoomRange  = `SELECT stream_pos, event_id, type, state_key, sender, depth, json FROM events
WHERE room_nid = ?1 ORDER BY stream_pos DESC LIMIT ?2`
	sqlInsertRooms = `INSERT INTO rooms (room_nid, latest_pos) VALUES (?1, 0)`
)

// dsn builds the data source name. Both drivers parse the "file:" URI form,
// the repeated _pragma parameters and _txlock.
func dsn(path string, reader bool) string {
	s := "file:" + path +
		"?_pragma=busy_timeout(5000)" +
		"&_pragma=journal_mode(WAL)" +
		"&_pragma=synchronous(NORMAL)" +
		"&_pragma=foreign_keys(1)"
	if reader {
		return s + "&_pragma=query_only(1)"
	}
	return s + "&_txlock=immediate"
}

// store is one database file opened the way a server would open it.
type store struct {
	w, r *sql.DB

	insertEvent, updateRoom *sql.Stmt // on w
	eventByID, roomRange    *sql.Stmt // on r
}

func openStore(tb testing.TB, drv, path string) *store {
	tb.Helper()
	w, err := sql.Open(drv, dsn(path, false))
	if err != nil {
		tb.Fatal(err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	// Create the file and switch it to WAL before any reader connects.
	if _, err := w.Exec(schema); err != nil {
		w.Close()
		tb.Fatalf("%s: schema: %v", drv, err)
	}
	var n int
	if err := w.QueryRow(`SELECT count(*) FROM rooms`).Scan(&n); err != nil {
		tb.Fatal(err)
	}
	if n == 0 {
		tx, err := w.Begin()
		if err != nil {
			tb.Fatal(err)
		}
		for room := 1; room <= numRooms; room++ {
			if _, err := tx.Exec(sqlInsertRooms, room); err != nil {
				tb.Fatal(err)
			}
		}
		if err := tx.Commit(); err != nil {
			tb.Fatal(err)
		}
	}

	r, err := sql.Open(drv, dsn(path, true))
	if err != nil {
		tb.Fatal(err)
	}
	r.SetMaxOpenConns(readerConns)
	r.SetMaxIdleConns(readerConns)
	r.SetConnMaxLifetime(0)
	r.SetConnMaxIdleTime(0)

	s := &store{w: w, r: r}
	prep := func(db *sql.DB, q string) *sql.Stmt {
		st, err := db.Prepare(q)
		if err != nil {
			tb.Fatalf("%s: prepare %q: %v", drv, q, err)
		}
		return st
	}
	s.insertEvent = prep(w, sqlInsertEvent)
	s.updateRoom = prep(w, sqlUpdateRoom)
	s.eventByID = prep(r, sqlEventByID)
	s.roomRange = prep(r, sqlRoomRange)
	tb.Cleanup(func() { s.close() })
	return s
}

func (s *store) close() error {
	for _, st := range []*sql.Stmt{s.insertEvent, s.updateRoom, s.eventByID, s.roomRange} {
		st.Close()
	}
	err1 := s.r.Close()
	err2 := s.w.Close()
	if err1 != nil {
		return err1
	}
	return err2
}

// persist writes events in one transaction: each row is inserted and its
// room's latest_pos bumped, as the homeserver does when it persists a PDU.
func (s *store) persist(ctx context.Context, evs []event) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	ins := tx.StmtContext(ctx, s.insertEvent)
	upd := tx.StmtContext(ctx, s.updateRoom)
	for i := range evs {
		ev := &evs[i]
		var stateKey any
		if ev.hasStateKey {
			stateKey = ev.stateKey
		}
		if _, err := ins.ExecContext(ctx, ev.pos, ev.id, ev.room, ev.typ, stateKey, ev.sender, ev.depth, ev.json); err != nil {
			tx.Rollback()
			return err
		}
		if _, err := upd.ExecContext(ctx, ev.pos, ev.room); err != nil {
			tx.Rollback()
			return err
		}
	}
	return tx.Commit()
}

// storedEvent is what the read paths scan into.
type storedEvent struct {
	pos      int64
	id       string
	room     int64
	typ      string
	stateKey sql.NullString
	sender   string
	depth    int64
	json     []byte
}

func (s *store) getEventByID(ctx context.Context, id string, out *storedEvent) error {
	out.id = id
	return s.eventByID.QueryRowContext(ctx, id).Scan(
		&out.pos, &out.room, &out.typ, &out.stateKey, &out.sender, &out.depth, &out.json)
}

// roomRange returns the newest limit events of a room, newest first; it
// reuses out's backing array.
func (s *store) roomRangeQuery(ctx context.Context, room int64, limit int, out []storedEvent) ([]storedEvent, error) {
	rows, err := s.roomRange.QueryContext(ctx, room, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out = out[:0]
	for rows.Next() {
		out = append(out, storedEvent{room: room})
		e := &out[len(out)-1]
		if err := rows.Scan(&e.pos, &e.id, &e.typ, &e.stateKey, &e.sender, &e.depth, &e.json); err != nil {
			return nil, err
		}
	}
	return out, rows.Err()
}

// ---------------------------------------------------------------------------
// Deterministic, realistic events.

type event struct {
	pos         int64
	id          string
	room        int64
	typ         string
	hasStateKey bool
	stateKey    string
	sender      string
	depth       int64
	json        []byte
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// appendB64 appends n pseudo-random bytes derived from seed, unpadded
// base64url-encoded, to dst.
func appendB64(dst []byte, seed uint64, n int) []byte {
	var raw [64]byte
	for k := 0; k*8 < n; k++ {
		binary.LittleEndian.PutUint64(raw[k*8:], splitmix(seed*16+uint64(k)))
	}
	return base64.RawURLEncoding.AppendEncode(dst, raw[:n])
}

// appendEventID appends the room-v4+ style event ID of event i ("$" + 43
// base64url characters, like a SHA-256 reference hash).
func appendEventID(dst []byte, i int64) []byte {
	dst = append(dst, '$')
	return appendB64(dst, uint64(i)<<1, 32)
}

func eventID(i int64) string { return string(appendEventID(nil, i)) }

func roomOf(i int64) int64 { return i%numRooms + 1 }

const loremBody = "Has anyone tried the new federation build on staging? " +
	"Big-room joins are faster now."

// makeEvent builds event number i (1-based, also its stream position). The
// JSON is appended to buf[:0]; the returned event's json aliases buf.
func makeEvent(i int64, buf []byte) event {
	room := roomOf(i)
	user := (i * 7) % 500
	sender := "@user" + strconv.FormatInt(1000+user, 10) + ":example.org"
	depth := i/numRooms + 1
	ev := event{
		pos:    i,
		room:   room,
		sender: sender,
		depth:  depth,
		typ:    "m.room.message",
	}
	if i%10 == 0 {
		ev.typ = "m.room.member"
		ev.hasStateKey = true
		ev.stateKey = sender
	}

	b := buf[:0]
	b = append(b, `{"auth_events":[`...)
	for k := int64(1); k <= 3; k++ {
		if k > 1 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = appendEventID(b, (i%numRooms)*1_000_000+k) // create, power levels, join rules
		b = append(b, '"')
	}
	b = append(b, `],"content":{`...)
	if ev.hasStateKey {
		b = append(b, `"avatar_url":"mxc://example.org/`...)
		b = appendB64(b, uint64(user)<<1|1, 18)
		b = append(b, `","displayname":"User `...)
		b = strconv.AppendInt(b, 1000+user, 10)
		b = append(b, ` (they/them) — on call this week","membership":"join"},"depth":`...)
	} else {
		b = append(b, `"body":"`...)
		b = append(b, loremBody...)
		b = append(b, ` #`...)
		b = strconv.AppendInt(b, i, 10)
		b = append(b, `","msgtype":"m.text"},"depth":`...)
	}
	b = strconv.AppendInt(b, depth, 10)
	b = append(b, `,"hashes":{"sha256":"`...)
	b = appendB64(b, uint64(i)<<1|1, 32)
	b = append(b, `"},"origin_server_ts":`...)
	b = strconv.AppendInt(b, 1_700_000_000_000+i*1371, 10)
	b = append(b, `,"prev_events":["`...)
	b = appendEventID(b, i-numRooms)
	b = append(b, `"],"room_id":"!`...)
	b = appendB64(b, uint64(room)<<40, 12)
	b = append(b, `:example.org","sender":"`...)
	b = append(b, sender...)
	b = append(b, `","signatures":{"example.org":{"ed25519:a_WQwR":"`...)
	b = appendB64(b, uint64(i)<<8|3, 64)
	b = append(b, `"}},`...)
	if ev.hasStateKey {
		b = append(b, `"state_key":"`...)
		b = append(b, sender...)
		b = append(b, `",`...)
	}
	b = append(b, `"type":"`...)
	b = append(b, ev.typ...)
	b = append(b, `","unsigned":{"age_ts":`...)
	b = strconv.AppendInt(b, 1_700_000_000_000+i*1371, 10)
	b = append(b, `}}`...)

	ev.id = string(appendEventID(nil, i))
	ev.json = b
	return ev
}

// ---------------------------------------------------------------------------
// Fixture: 50k events, built once per driver per process.

var (
	fixtureMu   sync.Mutex
	fixtures    = map[string]string{} // driver -> path of checkpointed db file
	fixtureDirs []string
)

func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range fixtureDirs {
		os.RemoveAll(d)
	}
	os.Exit(code)
}

func fixturePath(tb testing.TB, drv string) string {
	tb.Helper()
	fixtureMu.Lock()
	defer fixtureMu.Unlock()
	if p, ok := fixtures[drv]; ok {
		return p
	}
	dir, err := os.MkdirTemp("", "driverbench-fixture-")
	if err != nil {
		tb.Fatal(err)
	}
	fixtureDirs = append(fixtureDirs, dir)
	path := filepath.Join(dir, "fixture.db")

	w, err := sql.Open(drv, dsn(path, false))
	if err != nil {
		tb.Fatal(err)
	}
	w.SetMaxOpenConns(1)
	if _, err := w.Exec(schema); err != nil {
		tb.Fatal(err)
	}
	s := &store{w: w}
	if s.insertEvent, err = w.Prepare(sqlInsertEvent); err != nil {
		tb.Fatal(err)
	}
	if s.updateRoom, err = w.Prepare(sqlUpdateRoom); err != nil {
		tb.Fatal(err)
	}
	tx, err := w.Begin()
	if err != nil {
		tb.Fatal(err)
	}
	for room := 1; room <= numRooms; room++ {
		if _, err := tx.Exec(sqlInsertRooms, room); err != nil {
			tb.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		tb.Fatal(err)
	}

	ctx := context.Background()
	evs := make([]event, fixtureBatch)
	bufs := make([][]byte, fixtureBatch)
	for i := range bufs {
		bufs[i] = make([]byte, 0, 1024)
	}
	for start := int64(1); start <= fixtureEvents; start += fixtureBatch {
		for k := range evs {
			evs[k] = makeEvent(start+int64(k), bufs[k])
		}
		if err := s.persist(ctx, evs); err != nil {
			tb.Fatalf("%s: fixture: %v", drv, err)
		}
	}
	s.insertEvent.Close()
	s.updateRoom.Close()
	if _, err := w.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		tb.Fatal(err)
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	fixtures[drv] = path
	return path
}

// fixtureStore copies the driver's 50k-event fixture into a fresh temporary
// directory and opens it.
func fixtureStore(tb testing.TB, drv string) *store {
	tb.Helper()
	src := fixturePath(tb, drv)
	dst := filepath.Join(tb.TempDir(), "myelin.db")
	copyFile(tb, src, dst)
	if fi, err := os.Stat(src + "-wal"); err == nil && fi.Size() > 0 {
		copyFile(tb, src+"-wal", dst+"-wal")
	}
	return openStore(tb, drv, dst)
}

func copyFile(tb testing.TB, src, dst string) {
	tb.Helper()
	in, err := os.Open(src)
	if err != nil {
		tb.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		tb.Fatal(err)
	}
	if err := out.Close(); err != nil {
		tb.Fatal(err)
	}
}

// report adds events/s (wall clock) and, where available, cpu-ns/op (process
// CPU time since cpu0, divided by b.N) to the benchmark result.
func report(b *testing.B, eventsPerOp int, cpu0 time.Duration) {
	if sec := b.Elapsed().Seconds(); sec > 0 {
		b.ReportMetric(float64(b.N)*float64(eventsPerOp)/sec, "events/s")
	}
	if cpu1 := processCPU(); cpu0 >= 0 && cpu1 >= 0 && b.N > 0 {
		b.ReportMetric(float64(cpu1-cpu0)/float64(b.N), "cpu-ns/op")
	}
}

// ---------------------------------------------------------------------------
// Tests.

func TestDriversRoundTrip(t *testing.T) {
	ctx := context.Background()
	for _, dc := range drivers {
		t.Run(dc.name, func(t *testing.T) {
			s := openStore(t, dc.driver, filepath.Join(t.TempDir(), "rt.db"))

			var evs []event
			for i := int64(1); i <= 120; i++ { // > 2 per room, includes state events
				evs = append(evs, makeEvent(i, nil))
			}
			for _, k := range []int{0, 9} { // a message and a member event
				if n := len(evs[k].json); n < 600 || n > 800 {
					t.Errorf("event %d JSON is %d bytes, want about 700", k+1, n)
				}
			}
			if err := s.persist(ctx, evs[:1]); err != nil {
				t.Fatal(err)
			}
			if err := s.persist(ctx, evs[1:]); err != nil {
				t.Fatal(err)
			}

			for _, want := range []event{evs[0], evs[9], evs[119]} {
				var got storedEvent
				if err := s.getEventByID(ctx, want.id, &got); err != nil {
					t.Fatalf("get %s: %v", want.id, err)
				}
				if !bytes.Equal(got.json, want.json) {
					t.Errorf("json of %s differs:\n got %q\nwant %q", want.id, got.json, want.json)
				}
				if got.pos != want.pos || got.room != want.room || got.typ != want.typ ||
					got.sender != want.sender || got.depth != want.depth ||
					got.stateKey.Valid != want.hasStateKey || got.stateKey.String != want.stateKey {
					t.Errorf("row of %s = %+v, want %+v", want.id, got, want)
				}
			}
			var missing storedEvent
			if err := s.getEventByID(ctx, eventID(999_999), &missing); err != sql.ErrNoRows {
				t.Errorf("missing event: err = %v, want sql.ErrNoRows", err)
			}

			room := roomOf(120)
			got, err := s.roomRangeQuery(ctx, room, roomRangeLimit, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 3 || got[0].pos != 120 || got[1].pos != 70 || got[2].pos != 20 {
				var pos []int64
				for _, e := range got {
					pos = append(pos, e.pos)
				}
				t.Errorf("room %d range positions = %v, want [120 70 20]", room, pos)
			}
			if len(got) > 0 && !bytes.Equal(got[0].json, evs[119].json) {
				t.Errorf("room range json differs")
			}
			var latest int64
			if err := s.r.QueryRow(`SELECT latest_pos FROM rooms WHERE room_nid = ?1`, room).Scan(&latest); err != nil {
				t.Fatal(err)
			}
			if latest != 120 {
				t.Errorf("latest_pos = %d, want 120", latest)
			}

			// Duplicate event IDs are rejected and roll the whole transaction back.
			dup := makeEvent(121, nil)
			dup.id = evs[0].id
			if err := s.persist(ctx, []event{makeEvent(122, nil), dup}); err == nil {
				t.Error("duplicate event_id accepted")
			}
			var n int
			if err := s.r.QueryRow(`SELECT count(*) FROM events`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 120 {
				t.Errorf("after failed tx: %d events, want 120", n)
			}
		})
	}
}

func TestPragmasApplied(t *testing.T) {
	for _, dc := range drivers {
		t.Run(dc.name, func(t *testing.T) {
			s := openStore(t, dc.driver, filepath.Join(t.TempDir(), "p.db"))
			check := func(db *sql.DB, who, pragma, want string) {
				t.Helper()
				var got string
				if err := db.QueryRow("PRAGMA " + pragma).Scan(&got); err != nil {
					t.Fatalf("%s PRAGMA %s: %v", who, pragma, err)
				}
				if got != want {
					t.Errorf("%s PRAGMA %s = %q, want %q", who, pragma, got, want)
				}
			}
			for _, db := range []struct {
				who string
				db  *sql.DB
			}{{"writer", s.w}, {"reader", s.r}} {
				check(db.db, db.who, "journal_mode", "wal")
				check(db.db, db.who, "synchronous", "1")
				check(db.db, db.who, "busy_timeout", "5000")
				check(db.db, db.who, "foreign_keys", "1")
			}
			check(s.w, "writer", "query_only", "0")
			check(s.r, "reader", "query_only", "1")

			if _, err := s.r.Exec(`UPDATE rooms SET latest_pos = 1`); err == nil {
				t.Error("reader accepted a write")
			}
			ev := makeEvent(1, nil)
			ev.room = numRooms + 1 // no such room
			if err := s.persist(context.Background(), []event{ev}); err == nil {
				t.Error("foreign key not enforced")
			}
		})
	}
}

// ---------------------------------------------------------------------------
// Benchmarks.

func BenchmarkInsertEvent(b *testing.B) {
	for _, dc := range drivers {
		b.Run(dc.name, func(b *testing.B) {
			s := fixtureStore(b, dc.driver)
			ctx := context.Background()
			buf := make([]byte, 0, 1024)
			evs := make([]event, 1)
			next := int64(fixtureEvents + 1)
			b.ReportAllocs()
			cpu0 := processCPU()
			for b.Loop() {
				evs[0] = makeEvent(next, buf)
				next++
				if err := s.persist(ctx, evs); err != nil {
					b.Fatal(err)
				}
			}
			report(b, 1, cpu0)
		})
	}
}

func BenchmarkInsertBatch100(b *testing.B) {
	for _, dc := range drivers {
		b.Run(dc.name, func(b *testing.B) {
			s := fixtureStore(b, dc.driver)
			ctx := context.Background()
			evs := make([]event, batchSize)
			bufs := make([][]byte, batchSize)
			for i := range bufs {
				bufs[i] = make([]byte, 0, 1024)
			}
			next := int64(fixtureEvents + 1)
			b.ReportAllocs()
			cpu0 := processCPU()
			for b.Loop() {
				for k := range evs {
					evs[k] = makeEvent(next, bufs[k])
					next++
				}
				if err := s.persist(ctx, evs); err != nil {
					b.Fatal(err)
				}
			}
			report(b, batchSize, cpu0)
		})
	}
}

func BenchmarkGetEventByID(b *testing.B) {
	ids := fixtureIDs()
	for _, dc := range drivers {
		b.Run(dc.name, func(b *testing.B) {
			s := fixtureStore(b, dc.driver)
			ctx := context.Background()
			rng := rand.New(rand.NewPCG(1, 2)) // same key sequence for both drivers
			var ev storedEvent
			b.ReportAllocs()
			cpu0 := processCPU()
			for b.Loop() {
				id := ids[rng.IntN(len(ids))]
				if err := s.getEventByID(ctx, id, &ev); err != nil {
					b.Fatal(err)
				}
				if len(ev.json) == 0 {
					b.Fatal("empty json")
				}
			}
			report(b, 1, cpu0)
		})
	}
}

func BenchmarkRoomRange(b *testing.B) {
	for _, dc := range drivers {
		b.Run(dc.name, func(b *testing.B) {
			s := fixtureStore(b, dc.driver)
			ctx := context.Background()
			rng := rand.New(rand.NewPCG(3, 4))
			out := make([]storedEvent, 0, roomRangeLimit)
			var err error
			b.ReportAllocs()
			cpu0 := processCPU()
			for b.Loop() {
				room := int64(rng.IntN(numRooms) + 1)
				out, err = s.roomRangeQuery(ctx, room, roomRangeLimit, out)
				if err != nil {
					b.Fatal(err)
				}
				if len(out) != roomRangeLimit {
					b.Fatalf("room %d: %d events", room, len(out))
				}
			}
			report(b, roomRangeLimit, cpu0)
		})
	}
}

func BenchmarkParallelReads(b *testing.B) {
	ids := fixtureIDs()
	for _, dc := range drivers {
		b.Run(dc.name, func(b *testing.B) {
			s := fixtureStore(b, dc.driver)
			ctx := context.Background()
			var seed atomic.Uint64
			b.ReportAllocs()
			cpu0 := processCPU()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				rng := rand.New(rand.NewPCG(5, seed.Add(1)))
				var ev storedEvent
				for pb.Next() {
					id := ids[rng.IntN(len(ids))]
					if err := s.getEventByID(ctx, id, &ev); err != nil {
						b.Error(err)
						return
					}
				}
			})
			report(b, 1, cpu0)
		})
	}
}

var (
	idsOnce sync.Once
	idsAll  []string
)

func fixtureIDs() []string {
	idsOnce.Do(func() {
		idsAll = make([]string, fixtureEvents)
		for i := range idsAll {
			idsAll[i] = eventID(int64(i + 1))
		}
	})
	return idsAll
}
