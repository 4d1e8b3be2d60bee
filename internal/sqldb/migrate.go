package sqldb

import (
	"context"
	"fmt"
	"hash/fnv"
	"io/fs"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// sqliteTypes translates the PostgreSQL type names migrations use into SQLite's.
var sqliteTypes = strings.NewReplacer(
	"BIGSERIAL PRIMARY KEY", "INTEGER PRIMARY KEY AUTOINCREMENT",
	"BYTEA", "BLOB",
)

var migrationName = regexp.MustCompile(`^(\d+)_[a-z0-9_]+\.sql$`)

// Migrate applies the migrations in files (named NNN_description.sql, applied in order of NNN)
// that component has not applied yet, each in its own transaction. Migrations are written for
// PostgreSQL; for SQLite, BIGSERIAL PRIMARY KEY and BYTEA are translated. On PostgreSQL an
// advisory lock keeps several Myelin processes from migrating at once.
func (db *DB) Migrate(ctx context.Context, component string, files fs.FS) error {
	if _, err := db.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		component TEXT NOT NULL,
		version BIGINT NOT NULL,
		PRIMARY KEY (component, version)
	)`); err != nil {
		return fmt.Errorf("creating schema_migrations: %w", err)
	}
	if _, err := db.Exec(ctx, `CREATE TABLE IF NOT EXISTS sequences (
		name TEXT NOT NULL PRIMARY KEY,
		value BIGINT NOT NULL
	)`); err != nil {
		return fmt.Errorf("creating sequences: %w", err)
	}
	entries, err := fs.ReadDir(files, ".")
	if err != nil {
		return fmt.Errorf("listing %s migrations: %w", component, err)
	}
	type migration struct {
		version int64
		name    string
	}
	var ms []migration
	for _, e := range entries {
		m := migrationName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		v, _ := strconv.ParseInt(m[1], 10, 64)
		ms = append(ms, migration{v, e.Name()})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for _, m := range ms {
		body, err := fs.ReadFile(files, m.name)
		if err != nil {
			return fmt.Errorf("reading migration %s/%s: %w", component, m.name, err)
		}
		text := string(body)
		if db.dialect == SQLite {
			text = sqliteTypes.Replace(text)
		}
		err = db.WithTx(ctx, func(tx *Tx) error {
			if db.dialect == Postgres {
				h := fnv.New64a()
				h.Write([]byte("myelin-migrate"))
				if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(h.Sum64())); err != nil {
					return err
				}
			}
			var n int
			if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE component = $1 AND version = $2`,
				component, m.version).Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				return nil
			}
			for _, stmt := range splitStatements(text) {
				if _, err := tx.Exec(ctx, stmt); err != nil {
					return fmt.Errorf("%s: %w", firstLine(stmt), err)
				}
			}
			_, err := tx.Exec(ctx, `INSERT INTO schema_migrations (component, version) VALUES ($1, $2)`, component, m.version)
			return err
		})
		if err != nil {
			return fmt.Errorf("applying migration %s/%s: %w", component, m.name, err)
		}
	}
	return nil
}

// splitStatements splits a migration on semicolons that end a line. Migrations hold no
// procedural code, so this is enough.
func splitStatements(text string) []string {
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "--") {
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
		if strings.HasSuffix(trimmed, ";") {
			if s := strings.TrimSpace(cur.String()); s != ";" {
				out = append(out, s)
			}
			cur.Reset()
		}
	}
	if s := strings.TrimSpace(cur.String()); s != "" {
		out = append(out, s)
	}
	return out
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// NextSeq allocates the next value of the named sequence (1, 2, 3, …) inside tx. On
// PostgreSQL the sequence's row stays locked until tx ends, so positions become visible in the
// order they were handed out — what stream readers need.
func (t *Tx) NextSeq(ctx context.Context, name string) (int64, error) {
	var v int64
	err := t.QueryRow(ctx, `INSERT INTO sequences (name, value) VALUES ($1, 1)
		ON CONFLICT (name) DO UPDATE SET value = sequences.value + 1
		RETURNING value`, name).Scan(&v)
	if err != nil {
		return 0, fmt.Errorf("allocating from sequence %s: %w", name, err)
	}
	return v, nil
}

// CurrentSeq returns the last value handed out by the named sequence, or 0.
func (db *DB) CurrentSeq(ctx context.Context, name string) (int64, error) {
	var v int64
	err := db.QueryRow(ctx, `SELECT value FROM sequences WHERE name = $1`, name).Scan(&v)
	if err = NotFound(err); err == ErrNotFound {
		return 0, nil
	}
	return v, err
}
