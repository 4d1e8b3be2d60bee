package syncapi

import (
	"context"
	"fmt"
	"io/fs"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/bus"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
)

func newStore(t *testing.T, db *sqldb.DB) *store {
	t.Helper()
	sub, err := fs.Sub(migrations, "storage/migrations")
	testkit.Must(t, err, "opening migrations")
	testkit.Must(t, db.Migrate(context.Background(), "syncapi", sub), "migrating")
	return &store{db: db}
}

func TestReceiptStore(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		ctx := context.Background()
		st := newStore(t, db)
		put := func(r Receipt) int64 {
			t.Helper()
			pos, err := st.putReceipt(ctx, r)
			testkit.Must(t, err, "putting receipt")
			return pos
		}
		p1 := put(Receipt{RoomID: "!a", Type: "m.read", UserID: "@u:x", EventID: "$1", TS: 10})
		p2 := put(Receipt{RoomID: "!a", Type: "m.read", UserID: "@u:x", EventID: "$2", TS: 20})         // replaces $1
		p3 := put(Receipt{RoomID: "!a", Type: "m.read", UserID: "@u:x", ThreadID: "$t", EventID: "$3"}) // another thread
		p4 := put(Receipt{RoomID: "!b", Type: "m.read.private", UserID: "@v:x", EventID: "$4"})
		if !(p1 < p2 && p2 < p3 && p3 < p4) {
			t.Fatalf("positions %d %d %d %d do not increase", p1, p2, p3, p4)
		}
		for _, c := range []struct {
			after, upTo int64
			want        []string // event IDs in stream order
		}{
			{0, p4, []string{"$2", "$3", "$4"}},
			{p1, p2, []string{"$2"}},
			{p2, p4, []string{"$3", "$4"}},
			{p4, p4 + 5, nil},
		} {
			rs, err := st.receiptsSince(ctx, c.after, c.upTo)
			testkit.Must(t, err, "receiptsSince")
			if got := receiptEvents(rs); fmt.Sprint(got) != fmt.Sprint(c.want) {
				t.Errorf("receiptsSince(%d, %d): got %v; want %v", c.after, c.upTo, got, c.want)
			}
		}
		rs, err := st.roomReceipts(ctx, []string{"!a"}, p4)
		testkit.Must(t, err, "roomReceipts")
		if len(rs) != 2 {
			t.Errorf("roomReceipts(!a): got %d receipts; want 2 (unthreaded and threaded)", len(rs))
		}
		rs, err = st.roomReceipts(ctx, []string{"!a", "!b"}, p2)
		testkit.Must(t, err, "roomReceipts")
		if got := receiptEvents(rs); fmt.Sprint(got) != "[$2]" {
			t.Errorf("roomReceipts up to %d: got %v; want [$2]", p2, got)
		}
	})
}

func receiptEvents(rs []Receipt) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.EventID)
	}
	return out
}

func TestPresenceStore(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		ctx := context.Background()
		st := newStore(t, db)
		msg := "busy"
		steps := []struct {
			presence    string
			msg         *string
			setMsg      bool
			wantChanged bool
			wantMsg     string
		}{
			{"online", nil, false, true, ""},
			{"online", nil, false, false, ""}, // a sync that changes nothing moves nothing
			{"online", &msg, true, true, "busy"},
			{"unavailable", nil, false, true, "busy"}, // the message is kept
			{"unavailable", nil, true, true, ""},      // and cleared when asked
		}
		var last int64
		for i, s := range steps {
			pos, changed, err := st.setPresence(ctx, "@u:x", s.presence, s.msg, s.setMsg, int64(1000+i))
			testkit.Must(t, err, "step %d", i)
			if changed != s.wantChanged {
				t.Errorf("step %d: changed = %v; want %v", i, changed, s.wantChanged)
			}
			if changed {
				if pos <= last {
					t.Errorf("step %d: position %d not after %d", i, pos, last)
				}
				last = pos
			}
			p, err := st.presence(ctx, "@u:x")
			testkit.Must(t, err, "reading presence")
			got := ""
			if p.StatusMsg != nil {
				got = *p.StatusMsg
			}
			if p.Presence != s.presence || got != s.wantMsg {
				t.Errorf("step %d: got %s %q; want %s %q", i, p.Presence, got, s.presence, s.wantMsg)
			}
		}
		ps, err := st.presenceSince(ctx, 0, last)
		testkit.Must(t, err, "presenceSince")
		if len(ps) != 1 || ps[0].StreamPos != last {
			t.Errorf("presenceSince: got %+v; want the one row at %d", ps, last)
		}
		if p, err := st.presence(ctx, "@nobody:x"); err != nil || p != nil {
			t.Errorf("presence of an unknown user: got %+v, %v; want nil, nil", p, err)
		}
	})
}

func TestForgottenStore(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		ctx := context.Background()
		st := newStore(t, db)
		if at, err := st.forgottenAt(ctx, "@u:x", "!r"); err != nil || at != -1 {
			t.Fatalf("forgottenAt before forgetting: got %d, %v; want -1", at, err)
		}
		testkit.Must(t, st.forget(ctx, "@u:x", "!r", 5), "forget")
		testkit.Must(t, st.forget(ctx, "@u:x", "!r", 9), "forget again")
		if at, err := st.forgottenAt(ctx, "@u:x", "!r"); err != nil || at != 9 {
			t.Errorf("forgottenAt: got %d, %v; want 9", at, err)
		}
		m, err := st.forgotten(ctx, "@u:x")
		testkit.Must(t, err, "forgotten")
		if len(m) != 1 || m["!r"] != 9 {
			t.Errorf("forgotten: got %v; want map[!r:9]", m)
		}
	})
}

func TestTyping(t *testing.T) {
	stream := bus.NewStream(1000)
	log := newChangeLog(1000)
	ty := newTyping(stream, log)
	ty.set("!r", "@a:x", true, time.Hour)
	ty.set("!r", "@b:x", true, time.Hour)
	ty.set("!r", "@a:x", true, time.Hour) // a repeat only extends the timeout
	if users, pos := ty.users("!r"); fmt.Sprint(users) != "[@a:x @b:x]" || pos != 1002 {
		t.Fatalf("users: got %v at %d; want [@a:x @b:x] at 1002", users, pos)
	}
	ty.set("!r", "@a:x", false, 0)
	if users, pos := ty.users("!r"); fmt.Sprint(users) != "[@b:x]" || pos != 1003 {
		t.Fatalf("after stop: got %v at %d; want [@b:x] at 1003", users, pos)
	}
	if cs, ok := log.since(1000, 1003); !ok || len(cs) != 3 {
		t.Errorf("log: got %v (complete %v); want three changes", cs, ok)
	}
	// Expiry moves the stream by itself.
	ty.set("!s", "@c:x", true, 10*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if pos := stream.Wait(ctx, 1004); pos != 1005 {
		t.Fatalf("waiting for expiry: stream at %d; want 1005", pos)
	}
	if users, _ := ty.users("!s"); len(users) != 0 {
		t.Errorf("after expiry: got %v typing; want none", users)
	}
}

func TestChangeLog(t *testing.T) {
	l := newChangeLog(10)
	for i := int64(11); i <= 10+maxLogEntries+1; i++ {
		l.add(change{pos: i, room: "!r"})
	}
	if _, ok := l.since(10, 20); ok {
		t.Errorf("since(10): the oldest entries were dropped, yet the log claims to cover them")
	}
	top := int64(10 + maxLogEntries + 1)
	cs, ok := l.since(top-3, top)
	if !ok || len(cs) != 3 {
		t.Errorf("since(%d): got %d changes (complete %v); want 3", top-3, len(cs), ok)
	}
}
