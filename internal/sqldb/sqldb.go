// Package sqldb opens Myelin's database — SQLite (pure Go, so the binary stays static) or
// PostgreSQL through pgx — and hides the differences between the two, so that every component
// writes its SQL once. Queries use PostgreSQL's $1 placeholders; on SQLite they are rewritten
// to ?1. Migrations are embedded per component and written in PostgreSQL's dialect with a few
// type names that are translated for SQLite (see Migrate).
//
// On SQLite there is exactly one writer connection (WAL mode, synchronous=FULL so that a commit
// survives power loss, busy timeout) and a pool of
// read-only connections, so writes never contend for the database lock and reads never wait
// for writes. On PostgreSQL both go through one pgxpool.
//
// The SQLite driver is modernc.org/sqlite, chosen over github.com/ncruces/go-sqlite3 v0.36.0 with
// the benchmark in internal/sqldb/driverbench (Matrix-shaped events, WAL, one writer, 50k-event
// tables; medians of 3 runs on a shared 2-core VM, 2026-11-22):
//
//	                     modernc          ncruces
//	insert one event     247 µs (4,054/s) 271 µs (3,687/s)
//	insert 100 per tx    8.4 ms (11,837/s) 10.3 ms (9,695/s)
//	event by ID          32 µs            23 µs
//	20 newest of a room  130 µs           125 µs
//	parallel point reads 20 µs            16 µs
//	binary (stripped)    6.6 MB           7.6 MB
//	peak compile memory  0.8 GB           1.2–1.3 GB
//
// Both are limited by SQLite's own I/O and the differences changed direction between runs, so
// speed did not decide it: modernc is v1, makes the smaller binary and compiles in less memory.
//
// It imports no component.
package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
)

// Dialect says which database is behind a DB.
type Dialect int

// The dialects Myelin supports.
const (
	SQLite Dialect = iota + 1
	Postgres
)

func (d Dialect) String() string {
	if d == Postgres {
		return "postgres"
	}
	return "sqlite"
}

// ErrNotFound is returned by storage methods for a missing row.
var ErrNotFound = errors.New("not found")

// ErrExists is returned by storage methods when a unique key is taken.
var ErrExists = errors.New("already exists")

// Options tune the connection pool.
type Options struct {
	MaxOpenConns    int
	MaxIdleConns    int
	ConnMaxLifetime time.Duration
}

// DB is an open database. It is safe for concurrent use.
type DB struct {
	dialect Dialect
	w       *sql.DB // the single SQLite writer, or the PostgreSQL pool
	r       *sql.DB // SQLite readers, or the same PostgreSQL pool
	pool    *pgxpool.Pool
	queries sync.Map // query text → rewritten text (SQLite)
	// ws and rs cache prepared statements of w and r (SQLite only; nil for PostgreSQL).
	ws, rs *stmts
}

// Open connects to the database named by conn: "file:path" for SQLite (the file and its folder
// are created) or "postgres://…"/"postgresql://…" for PostgreSQL.
func Open(ctx context.Context, conn string, opts Options) (*DB, error) {
	switch {
	case strings.HasPrefix(conn, "file:"):
		return openSQLite(ctx, conn, opts)
	case strings.HasPrefix(conn, "postgres://"), strings.HasPrefix(conn, "postgresql://"):
		return openPostgres(ctx, conn, opts)
	default:
		return nil, fmt.Errorf("database connection string must start with file:, postgres:// or postgresql://")
	}
}

// SQLitePath returns the file path of a "file:" connection string.
func SQLitePath(conn string) string {
	p := strings.TrimPrefix(conn, "file:")
	p = strings.TrimPrefix(p, "//")
	if i := strings.IndexByte(p, '?'); i >= 0 {
		p = p[:i]
	}
	return p
}

func openSQLite(ctx context.Context, conn string, opts Options) (*DB, error) {
	path := SQLitePath(conn)
	if path == "" {
		return nil, fmt.Errorf("sqlite connection string %q has no path", conn)
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("creating database folder: %w", err)
		}
	}
	w, err := sql.Open(sqliteDriver, sqliteDSN(path, false))
	if err != nil {
		return nil, fmt.Errorf("opening sqlite writer: %w", err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	// The first connection creates the file and switches it to WAL before any reader opens.
	if err := w.PingContext(ctx); err != nil {
		w.Close()
		return nil, fmt.Errorf("opening sqlite database %s: %w", path, err)
	}
	r, err := sql.Open(sqliteDriver, sqliteDSN(path, true))
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("opening sqlite readers: %w", err)
	}
	n := opts.MaxOpenConns
	if n <= 0 || n > 16 {
		n = 8
	}
	r.SetMaxOpenConns(n)
	// Every reader stays open: an SQLite connection is cheap to keep and costly to reopen
	// (the schema is read again and cached statements are prepared again), so
	// database.max_idle_conns, a PostgreSQL setting, does not apply.
	r.SetMaxIdleConns(n)
	return &DB{dialect: SQLite, w: w, r: r, ws: newStmts(w), rs: newStmts(r)}, nil
}

func openPostgres(ctx context.Context, conn string, opts Options) (*DB, error) {
	cfg, err := pgxpool.ParseConfig(conn)
	if err != nil {
		return nil, fmt.Errorf("parsing postgres connection string: %w", err)
	}
	if opts.MaxOpenConns > 0 {
		cfg.MaxConns = int32(opts.MaxOpenConns)
	}
	if opts.ConnMaxLifetime > 0 {
		cfg.MaxConnLifetime = opts.ConnMaxLifetime
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to postgres: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connecting to postgres %s: %w", redactURL(conn), err)
	}
	db := stdlib.OpenDBFromPool(pool)
	return &DB{dialect: Postgres, w: db, r: db, pool: pool}, nil
}

// redactURL drops the password from a connection URL so it can be logged.
func redactURL(conn string) string {
	u, err := url.Parse(conn)
	if err != nil {
		return "(unparseable)"
	}
	return u.Redacted()
}

// Dialect says which database db is.
func (db *DB) Dialect() Dialect { return db.dialect }

// Close closes every connection.
func (db *DB) Close() error {
	if db.dialect == SQLite {
		return errors.Join(db.rs.close(), db.ws.close(), db.r.Close(), db.w.Close())
	}
	err := db.w.Close()
	db.pool.Close()
	return err
}

// Exec runs a statement that writes.
func (db *DB) Exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	q = db.rebind(q)
	if st := db.ws.get(ctx, q); st != nil {
		return st.ExecContext(ctx, args...)
	}
	return db.w.ExecContext(ctx, q, args...)
}

// Query runs a read-only query.
func (db *DB) Query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	q = db.rebind(q)
	if st := db.rs.get(ctx, q); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return db.r.QueryContext(ctx, q, args...)
}

// QueryRow runs a read-only query that returns at most one row.
func (db *DB) QueryRow(ctx context.Context, q string, args ...any) *sql.Row {
	q = db.rebind(q)
	if st := db.rs.get(ctx, q); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return db.r.QueryRowContext(ctx, q, args...)
}

// Tx is a write transaction.
type Tx struct {
	tx *sql.Tx
	db *DB
	// uncached are the queries run without a cached statement, prepared after the
	// transaction (the writer's only connection is the transaction's until then).
	uncached []string
}

// Exec runs a statement inside the transaction.
func (t *Tx) Exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	q = t.db.rebind(q)
	if st := t.stmt(ctx, q); st != nil {
		return st.ExecContext(ctx, args...)
	}
	return t.tx.ExecContext(ctx, q, args...)
}

// stmt returns the writer's cached statement for q bound to the transaction (prepared on
// its connection already, so nothing is prepared again), or nil when q is not cached yet.
func (t *Tx) stmt(ctx context.Context, q string) *sql.Stmt {
	if t.db.ws == nil {
		return nil
	}
	st := t.db.ws.cached(q)
	if st == nil {
		t.uncached = append(t.uncached, q)
		return nil
	}
	return t.tx.StmtContext(ctx, st)
}

// Query runs a query inside the transaction.
func (t *Tx) Query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	q = t.db.rebind(q)
	if st := t.stmt(ctx, q); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return t.tx.QueryContext(ctx, q, args...)
}

// QueryRow runs a one-row query inside the transaction.
func (t *Tx) QueryRow(ctx context.Context, q string, args ...any) *sql.Row {
	q = t.db.rebind(q)
	if st := t.stmt(ctx, q); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return t.tx.QueryRowContext(ctx, q, args...)
}

// WithTx runs fn in a write transaction, committing if it returns nil and rolling back
// otherwise. fn's error is returned unwrapped.
func (db *DB) WithTx(ctx context.Context, fn func(tx *Tx) error) error {
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("beginning transaction: %w", err)
	}
	t := &Tx{tx: tx, db: db}
	defer func() {
		if len(t.uncached) > 0 {
			db.ws.prepareLater(t.uncached)
		}
	}()
	if err := fn(t); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("committing transaction: %w", err)
	}
	return nil
}

// rebind rewrites $N placeholders to ?N for SQLite. SQLite would otherwise bind "$2" by order
// of first appearance rather than by number.
func (db *DB) rebind(q string) string {
	if db.dialect != SQLite || !strings.Contains(q, "$") {
		return q
	}
	if v, ok := db.queries.Load(q); ok {
		return v.(string)
	}
	var b strings.Builder
	b.Grow(len(q))
	inString := false
	for i := 0; i < len(q); i++ {
		c := q[i]
		if c == '\'' {
			inString = !inString
		}
		if c == '$' && !inString && i+1 < len(q) && q[i+1] >= '0' && q[i+1] <= '9' {
			b.WriteByte('?')
			continue
		}
		b.WriteByte(c)
	}
	s := b.String()
	db.queries.Store(q, s)
	return s
}

// IsUniqueViolation reports whether err is a unique-constraint violation.
func IsUniqueViolation(err error) bool {
	if err == nil {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "23505"
	}
	return sqliteIsUnique(err)
}

// NotFound maps sql.ErrNoRows to ErrNotFound and leaves other errors alone.
func NotFound(err error) error {
	if errors.Is(err, sql.ErrNoRows) {
		return ErrNotFound
	}
	return err
}
