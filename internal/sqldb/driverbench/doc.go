// Package driverbench compares the two pure-Go (CGO_ENABLED=0) SQLite drivers
// we considered for Myelin's SQLite backend, on a workload shaped like a
// Matrix homeserver's hot paths. It contains no production code: everything
// lives in bench_test.go, and both drivers are linked into the same test
// binary so they run under identical conditions.
//
// Drivers compared (sub-benchmark names in parentheses):
//
//   - modernc.org/sqlite, database/sql driver name "sqlite" ("modernc");
//     SQLite's C source machine-translated to Go (ccgo).
//   - github.com/ncruces/go-sqlite3/driver, driver name "sqlite3" ("ncruces");
//     SQLite compiled to Wasm and translated to Go (wasm2go). Since v0.36.0
//     the SQLite build comes from github.com/ncruces/go-sqlite3-wasm/v6 and
//     the old github.com/ncruces/go-sqlite3/embed import is unnecessary (it
//     is a deprecated no-op that prints a warning), so it is not imported.
//
// # Setup
//
// Every database is a real file in a temporary directory, opened through
// database/sql exactly the way a server would open it:
//
//   - a writer *sql.DB limited to one connection (SetMaxOpenConns(1)), DSN
//     pragmas busy_timeout=5000, journal_mode=WAL, synchronous=NORMAL,
//     foreign_keys=ON, and BEGIN IMMEDIATE transactions (_txlock=immediate);
//   - a separate reader *sql.DB with four connections, same pragmas plus
//     query_only=ON.
//
// Both drivers get the same DSN ("file:PATH?_pragma=...&_txlock=immediate");
// both understand it. All statements are prepared once and use ?NNN
// placeholders. Other settings (page cache size, mmap) are left at SQLite's
// defaults (2 MB page cache per connection, no mmap), so with a 50k-event
// table (55 MB file) most point reads go through the driver's VFS to the OS
// page cache.
//
// Schema:
//
//	rooms(room_nid INTEGER PRIMARY KEY, latest_pos INTEGER NOT NULL)
//	events(stream_pos INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE,
//	       room_nid INTEGER NOT NULL REFERENCES rooms, type TEXT NOT NULL,
//	       state_key TEXT, sender TEXT NOT NULL, depth INTEGER NOT NULL,
//	       json BLOB NOT NULL)
//	INDEX events_room_pos ON events(room_nid, stream_pos)
//
// Events are deterministic, realistic room-v10-style PDUs of about 700 bytes
// of JSON (hash-like event IDs, auth/prev events, hashes, signatures); every
// tenth is an m.room.member state event, the rest m.room.message. They are
// spread over 50 rooms.
//
// # Benchmarks
//
// Each benchmark has the sub-benchmarks "modernc" and "ncruces" and reports,
// besides ns/op, events/s (wall clock) and cpu-ns/op: user+system CPU time of
// the whole test process per op, from getrusage (cputime_unix_test.go; not
// reported elsewhere). cpu-ns/op excludes time spent waiting for the disk and
// is far less disturbed by other load on the machine than ns/op, so it is
// the better number for comparing the drivers' own cost on a shared host.
//
//   - BenchmarkInsertEvent: the persist path for one message: one write
//     transaction that inserts the event row and updates the room's
//     latest_pos, on top of a table that already holds 50k events.
//   - BenchmarkInsertBatch100: the same with 100 events per transaction
//     (one op = 100 events).
//   - BenchmarkGetEventByID: point lookup by event_id in 50k events,
//     scanning every column including the JSON blob, random keys.
//   - BenchmarkRoomRange: newest 20 events of a random room
//     (ORDER BY stream_pos DESC LIMIT 20; one op = 20 events).
//   - BenchmarkParallelReads: GetEventByID through the reader pool from
//     b.RunParallel goroutines (GOMAXPROCS of them; vary with -cpu) while
//     nothing writes.
//
// The 50k-event fixture is built once per driver per test process (with
// that driver) and copied into each benchmark's b.TempDir(), so every
// benchmark starts from an identical, freshly checkpointed file.
// Event generation (about 1 µs per event) is inside the timed insert loops
// and costs both drivers the same.
//
// TestDriversRoundTrip and TestPragmasApplied check, for each driver, that an
// event reads back byte for byte and that the DSN pragmas took effect, so
// plain `go test ./...` exercises the package.
//
// # Running
//
// Compiling modernc.org/sqlite is slow and memory-hungry the first time.
// Benchmarks are skipped by default test runs; run them explicitly, one
// package at a time, e.g.
//
//	go test -run XXX -bench . -benchtime 2000x -count 3 ./internal/sqldb/driverbench/
//
// and compare with golang.org/x/perf/cmd/benchstat if desired. Select one
// driver with e.g. -bench '/ncruces$'.
package driverbench
