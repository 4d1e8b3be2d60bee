package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"sync"
)

const (
	// maxCachedStmts bounds the statements cached per SQLite pool; later query texts run
	// unprepared. The code base has a few hundred distinct queries.
	maxCachedStmts = 2048
	// maxCachedParams leaves out queries with long generated parameter lists (IN lists of
	// many items), whose texts vary with their length and would crowd the cache.
	maxCachedParams = 64
)

// stmts caches the prepared statements of one SQLite pool by query text. Preparing is a
// third of the CPU of a busy server otherwise (modernc's sqlite3Prepare); a *sql.Stmt is
// prepared once per connection and reused. PostgreSQL needs none of this: pgx caches
// prepared statements per connection itself.
type stmts struct {
	db *sql.DB
	mu sync.RWMutex
	m  map[string]*sql.Stmt
}

func newStmts(db *sql.DB) *stmts { return &stmts{db: db, m: map[string]*sql.Stmt{}} }

// get returns the prepared statement for q, preparing it on first use, or nil when q is
// not cached (a script, too many parameters, a full cache, or a prepare error, which the
// unprepared path then reports). Preparing takes a connection of the pool: never call get
// for the writer while holding its only connection (inside a transaction); use cached.
func (c *stmts) get(ctx context.Context, q string) *sql.Stmt {
	if c == nil {
		return nil
	}
	if st := c.cached(q); st != nil {
		return st
	}
	// Scripts of several statements (migrations) run unprepared, once.
	if strings.Count(q, "?") > maxCachedParams || strings.Contains(q, ";") {
		return nil
	}
	c.mu.RLock()
	full := len(c.m) >= maxCachedStmts
	c.mu.RUnlock()
	if full {
		return nil
	}
	// No lock is held while preparing, which may wait for a connection. The statement
	// outlives this request, so it is prepared without the caller's cancellation.
	st, err := c.db.PrepareContext(context.WithoutCancel(ctx), q)
	if err != nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if have, ok := c.m[q]; ok {
		st.Close()
		return have
	}
	if len(c.m) >= maxCachedStmts {
		st.Close()
		return nil
	}
	c.m[q] = st
	return st
}

// cached returns the prepared statement for q if there is one, or nil.
func (c *stmts) cached(q string) *sql.Stmt {
	if c == nil {
		return nil
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.m[q]
}

// prepareLater prepares qs in the background, for the next transactions that run them.
func (c *stmts) prepareLater(qs []string) {
	seen := make(map[string]bool, len(qs))
	var todo []string
	for _, q := range qs {
		if !seen[q] {
			seen[q] = true
			todo = append(todo, q)
		}
	}
	go func() {
		for _, q := range todo {
			c.get(context.Background(), q)
		}
	}()
}

// close closes every cached statement.
func (c *stmts) close() error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for q, st := range c.m {
		errs = append(errs, st.Close())
		delete(c.m, q)
	}
	return errors.Join(errs...)
}
