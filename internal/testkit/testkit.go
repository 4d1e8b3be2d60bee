// Package testkit gives tests real databases: a temporary SQLite file always, and a fresh
// PostgreSQL database whenever MYELIN_TEST_POSTGRES names a server (a connection URL whose
// user may create databases). It is imported only by tests.
package testkit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/myelin-chat/myelin/internal/sqldb"
)

// PostgresEnv names the environment variable holding the test PostgreSQL server's URL.
const PostgresEnv = "MYELIN_TEST_POSTGRES"

// Backend is one database a test runs against.
type Backend struct {
	Name string // "sqlite" or "postgres"
	// Conn returns a connection string to a new, empty database, dropped when t ends.
	Conn func(t testing.TB) string
}

// Backends lists SQLite and, when MYELIN_TEST_POSTGRES is set, PostgreSQL. When CI sets
// MYELIN_REQUIRE_POSTGRES=1, a missing PostgreSQL fails the test instead of skipping it.
func Backends(t testing.TB) []Backend {
	bs := []Backend{{Name: "sqlite", Conn: SQLiteConn}}
	if os.Getenv(PostgresEnv) != "" {
		bs = append(bs, Backend{Name: "postgres", Conn: PostgresConn})
	} else if os.Getenv("MYELIN_REQUIRE_POSTGRES") == "1" {
		t.Fatalf("MYELIN_REQUIRE_POSTGRES=1 but %s is not set", PostgresEnv)
	}
	return bs
}

// EachDB runs f as a subtest once per backend with a freshly opened, empty database.
func EachDB(t *testing.T, f func(t *testing.T, db *sqldb.DB)) {
	for _, b := range Backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			db, err := sqldb.Open(context.Background(), b.Conn(t), sqldb.Options{})
			if err != nil {
				t.Fatalf("opening %s: %v", b.Name, err)
			}
			t.Cleanup(func() { db.Close() })
			f(t, db)
		})
	}
}

// SQLiteConn returns a connection string to a new SQLite file in t's temporary folder.
func SQLiteConn(t testing.TB) string {
	return "file:" + filepath.Join(t.TempDir(), "test.db")
}

// PostgresConn creates a fresh database on the MYELIN_TEST_POSTGRES server and returns its URL.
// The database is dropped when t ends.
func PostgresConn(t testing.TB) string {
	base := os.Getenv(PostgresEnv)
	if base == "" {
		t.Skipf("%s not set", PostgresEnv)
	}
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("connecting to test postgres: %v", err)
	}
	defer admin.Close(ctx)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "myelin_test_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("creating test database: %v", err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), base)
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("parsing %s: %v", PostgresEnv, err)
	}
	u.Path = "/" + name
	return u.String()
}

// Must fails t if err is not nil.
func Must(t testing.TB, err error, what string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(what, args...), err)
	}
}
