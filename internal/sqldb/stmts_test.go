package sqldb

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
)

// TestStatementCache checks that SQLite statements are prepared once and reused, inside
// transactions too, and that transactions and reads running together never wait on each
// other for the writer's only connection (a deadlock would hang the test).
func TestStatementCache(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, "file:"+filepath.Join(t.TempDir(), "t.db"), Options{})
	if err != nil {
		t.Fatalf("opening: %v", err)
	}
	defer db.Close()
	if _, err := db.Exec(ctx, `CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL)`); err != nil {
		t.Fatalf("creating table: %v", err)
	}
	const upsert = `INSERT INTO kv (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = kv.v + $2`
	const read = `SELECT v FROM kv WHERE k = $1`

	// Inside a transaction an uncached statement runs unprepared and is noted for later.
	err = db.WithTx(ctx, func(tx *Tx) error {
		_, err := tx.Exec(ctx, upsert, "a", 1)
		if len(tx.uncached) != 1 {
			t.Errorf("uncached = %v; want the upsert", tx.uncached)
		}
		return err
	})
	if err != nil {
		t.Fatalf("first transaction: %v", err)
	}
	// Once prepared (here directly, rather than waiting for the background preparation),
	// the next transaction uses it.
	if db.ws.get(ctx, db.rebind(upsert)) == nil {
		t.Fatal("upsert was not cached")
	}
	err = db.WithTx(ctx, func(tx *Tx) error {
		_, err := tx.Exec(ctx, upsert, "a", 1)
		if len(tx.uncached) != 0 {
			t.Errorf("uncached = %v after preparing; want none", tx.uncached)
		}
		return err
	})
	if err != nil {
		t.Fatalf("second transaction: %v", err)
	}

	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				if err := db.WithTx(ctx, func(tx *Tx) error {
					if _, err := tx.Exec(ctx, upsert, "a", 1); err != nil {
						return err
					}
					var v int64
					return tx.QueryRow(ctx, read, "a").Scan(&v)
				}); err != nil {
					t.Errorf("goroutine %d: transaction: %v", g, err)
					return
				}
				var v int64
				if err := db.QueryRow(ctx, read, "a").Scan(&v); err != nil {
					t.Errorf("goroutine %d: read: %v", g, err)
					return
				}
				if _, err := db.Exec(ctx, upsert, "b", 1); err != nil {
					t.Errorf("goroutine %d: exec: %v", g, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	var a, b int64
	if err := db.QueryRow(ctx, read, "a").Scan(&a); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(ctx, read, "b").Scan(&b); err != nil {
		t.Fatal(err)
	}
	if a != 2+8*50 || b != 8*50 {
		t.Errorf("a = %d, b = %d; want %d and %d", a, b, 2+8*50, 8*50)
	}
	// A script of several statements is never cached.
	if db.ws.get(ctx, `SELECT 1; SELECT 2`) != nil {
		t.Error("a script was cached")
	}
}
