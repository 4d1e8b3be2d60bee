package sqldb_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
)

var testMigrations = fstest.MapFS{
	"001_things.sql": {Data: []byte(`-- a comment line
CREATE TABLE things (
	id BIGSERIAL PRIMARY KEY,
	name TEXT NOT NULL UNIQUE,
	blob BYTEA
);
CREATE INDEX things_name ON things (name);`)},
	"002_more.sql": {Data: []byte(`ALTER TABLE things ADD COLUMN n BIGINT NOT NULL DEFAULT 0;`)},
	"README":       {Data: []byte("not a migration")},
}

func TestMigrateAndQuery(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		ctx := context.Background()
		for i := 0; i < 2; i++ { // a second run applies nothing
			if err := db.Migrate(ctx, "test", testMigrations); err != nil {
				t.Fatalf("migrate run %d: %v", i, err)
			}
		}
		// $2 before $1 checks that SQLite binds by number, not by order of appearance.
		if _, err := db.Exec(ctx, `INSERT INTO things (n, name, blob) VALUES ($2, $1, $3)`, "a", 7, []byte{0, 1, 2}); err != nil {
			t.Fatalf("insert: %v", err)
		}
		var name string
		var n int64
		var blob []byte
		if err := db.QueryRow(ctx, `SELECT name, n, blob FROM things WHERE name = $1`, "a").Scan(&name, &n, &blob); err != nil {
			t.Fatalf("select: %v", err)
		}
		if name != "a" || n != 7 || string(blob) != "\x00\x01\x02" {
			t.Fatalf("got (%q, %d, %x); want (a, 7, 000102)", name, n, blob)
		}
		_, err := db.Exec(ctx, `INSERT INTO things (name) VALUES ($1)`, "a")
		if !sqldb.IsUniqueViolation(err) {
			t.Fatalf("duplicate insert: got %v; want a unique violation", err)
		}
		err = db.QueryRow(ctx, `SELECT name FROM things WHERE name = $1`, "missing").Scan(&name)
		if !errors.Is(sqldb.NotFound(err), sqldb.ErrNotFound) {
			t.Fatalf("missing row: got %v; want ErrNotFound", err)
		}
	})
}

func TestWithTxRollsBack(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		ctx := context.Background()
		if err := db.Migrate(ctx, "test", testMigrations); err != nil {
			t.Fatal(err)
		}
		boom := errors.New("boom")
		err := db.WithTx(ctx, func(tx *sqldb.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO things (name) VALUES ($1)`, "x"); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("got %v; want boom", err)
		}
		var c int
		if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM things`).Scan(&c); err != nil {
			t.Fatal(err)
		}
		if c != 0 {
			t.Fatalf("rows after rollback: got %d; want 0", c)
		}
	})
}

func TestNextSeqIsDenseUnderConcurrency(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		ctx := context.Background()
		if err := db.Migrate(ctx, "test", testMigrations); err != nil {
			t.Fatal(err)
		}
		const workers, each = 4, 25
		var mu sync.Mutex
		seen := map[int64]bool{}
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < each; i++ {
					err := db.WithTx(ctx, func(tx *sqldb.Tx) error {
						v, err := tx.NextSeq(ctx, "s")
						if err != nil {
							return err
						}
						mu.Lock()
						seen[v] = true
						mu.Unlock()
						return nil
					})
					if err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		for v := int64(1); v <= workers*each; v++ {
			if !seen[v] {
				t.Fatalf("sequence value %d never handed out; got %d values", v, len(seen))
			}
		}
		cur, err := db.CurrentSeq(ctx, "s")
		if err != nil || cur != workers*each {
			t.Fatalf("CurrentSeq: got %d, %v; want %d", cur, err, workers*each)
		}
	})
}

func TestOpenRejectsUnknownScheme(t *testing.T) {
	if _, err := sqldb.Open(context.Background(), "mysql://x", sqldb.Options{}); err == nil {
		t.Fatal("got nil error; want one for an unsupported database")
	}
}
