package main

// The durability test: nothing acknowledged is lost when the server process is killed.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/myelin-chat/myelin/internal/testkit"
)

// crash kills the server with SIGKILL, as a power cut or the OOM killer would, and checks
// that it died of the signal.
func (s *server) crash(t testing.TB) {
	t.Helper()
	if s.cmd == nil {
		t.Fatalf("crash: server not started")
	}
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("sending SIGKILL: %v", err)
	}
	err := <-s.done
	s.cmd = nil
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("myelin after SIGKILL: got %v; want death by signal", err)
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("myelin after SIGKILL: got %v; want killed by SIGKILL (it exited before the signal)", err)
	}
}

// sendOutcome is what one PUT /send returned.
type sendOutcome struct {
	status  int
	eventID string
	err     error // transport error: the server died with the request in flight, or was down
}

// sendMessage sends an m.text message with body under txnID as token's device, without failing
// the test on transport errors: the caller decides what they mean.
func (s *server) sendMessage(token, roomID, txnID, body string) sendOutcome {
	b, _ := json.Marshal(map[string]string{"msgtype": "m.text", "body": body})
	path := v3 + "/rooms/" + url.PathEscape(roomID) + "/send/m.room.message/" + url.PathEscape(txnID)
	req, err := http.NewRequest("PUT", s.url+path, bytes.NewReader(b))
	if err != nil {
		return sendOutcome{err: err}
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpClient.Do(req)
	if err != nil {
		return sendOutcome{err: err}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return sendOutcome{err: err}
	}
	out := sendOutcome{status: resp.StatusCode}
	var r struct {
		EventID string `json:"event_id"`
	}
	if json.Unmarshal(raw, &r) == nil {
		out.eventID = r.EventID
	}
	if resp.StatusCode != http.StatusOK {
		out.err = fmt.Errorf("status %d: %s", resp.StatusCode, raw)
	}
	return out
}

// burstSend is one send of the burst.
type burstSend struct {
	sender  int    // the goroutine that sent it
	token   string // the sending device's access token
	txnID   string
	body    string
	eventID string // set if the send was acknowledged with 200
}

// roomMessages pages /messages backwards from the newest event to the room's creation and
// returns the m.room.message events, oldest first, as (event ID, body) pairs.
func roomMessages(t *testing.T, c *client, roomID string) (ids, bodies []string) {
	t.Helper()
	from := ""
	for pages := 0; ; pages++ {
		if pages > 100 {
			t.Fatalf("/messages: still paginating after %d pages", pages)
		}
		q := url.Values{"dir": {"b"}, "limit": {"100"}}
		if from != "" {
			q.Set("from", from)
		}
		var pg struct {
			Chunk []struct {
				EventID string         `json:"event_id"`
				Type    string         `json:"type"`
				Content map[string]any `json:"content"`
			} `json:"chunk"`
			End string `json:"end"`
		}
		c.do(t, "GET", v3+"/rooms/"+url.PathEscape(roomID)+"/messages?"+q.Encode(), nil).wantOKInto(t, &pg)
		for _, e := range pg.Chunk {
			if e.Type == "m.room.message" {
				body, _ := e.Content["body"].(string)
				ids, bodies = append(ids, e.EventID), append(bodies, body)
			}
		}
		if pg.End == "" {
			break
		}
		if len(pg.Chunk) == 0 {
			t.Fatalf("/messages from %q: got an empty chunk with end %q", from, pg.End)
		}
		from = pg.End
	}
	slices.Reverse(ids)
	slices.Reverse(bodies)
	return ids, bodies
}

// TestDurability kills the server with SIGKILL in the middle of a burst of sends from several
// goroutines, restarts it on the same data, and checks that every acknowledged event is in
// the room exactly once and in each sender's order, and that retrying a transaction ID,
// acknowledged or interrupted, returns its one event rather than sending another.
func TestDurability(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b testkit.Backend) {
		const (
			senders   = 6  // goroutines, each sending one message at a time
			killAfter = 90 // acknowledged sends before the SIGKILL
		)
		s := startServer(t, b, serverOpts{})
		alice := s.register(t, "alice", "correct horse")
		second := s.login(t, "alice", "correct horse") // a second device: its own txn ID namespace
		room := str(t, alice.do(t, "POST", v3+"/createRoom", map[string]any{"preset": "private_chat"}).wantOK(t), "room_id")

		// Sender 0 is alice's first device, sending alone on it; senders 1.. share the second
		// device with distinct txn IDs. Sender 1 reuses sender 0's txn IDs, which must not
		// collide: transaction IDs are scoped to the device.
		txnOf := func(g, i int) string {
			if g <= 1 {
				return fmt.Sprintf("txn-%d", i)
			}
			return fmt.Sprintf("w%d-%d", g, i)
		}
		var (
			mu          sync.Mutex
			sends       = make([][]burstSend, senders) // per sender, in send order
			acked       atomic.Int64
			killing     atomic.Bool
			interrupted atomic.Int64 // requests in flight when the server died
			reached     = make(chan struct{})
			reachedOnce sync.Once
			wg          sync.WaitGroup
		)
		for g := range senders {
			token := second.token
			if g == 0 {
				token = alice.token
			}
			wg.Go(func() {
				for i := 0; ; i++ {
					bs := burstSend{sender: g, token: token, txnID: txnOf(g, i), body: fmt.Sprintf("sender %d message %d", g, i)}
					before := killing.Load()
					out := s.sendMessage(token, room, bs.txnID, bs.body)
					if out.err == nil && out.eventID == "" {
						out.err = errors.New("200 without an event_id")
					}
					if out.err == nil {
						bs.eventID = out.eventID
					}
					mu.Lock()
					sends[g] = append(sends[g], bs)
					mu.Unlock()
					if out.err != nil {
						if out.status != 0 {
							t.Errorf("sender %d: PUT %s: %v; want 200 or a dropped connection", g, bs.txnID, out.err)
						} else if !before {
							interrupted.Add(1)
						}
						return // the server is gone; what was sent stays to be checked
					}
					if acked.Add(1) == killAfter {
						reachedOnce.Do(func() { close(reached) })
					}
				}
			})
		}
		<-reached
		killing.Store(true)
		s.crash(t)
		wg.Wait()
		if t.Failed() {
			return
		}
		t.Logf("acknowledged %d sends; %d requests were in flight at the SIGKILL", acked.Load(), interrupted.Load())
		if interrupted.Load() == 0 {
			t.Errorf("no request was in flight when the server was killed; want the kill mid-burst")
		}

		s.start(t)

		// Interrupted sends may or may not have been committed; note those that were, so that
		// their retry can be held to the committed event.
		committed := map[string]string{} // body → event ID, before any retry
		beforeIDs, beforeBodies := roomMessages(t, alice, room)
		for i, body := range beforeBodies {
			committed[body] = beforeIDs[i]
		}
		unanswered := 0
		for g := range senders {
			for i := range sends[g] {
				if bs := &sends[g][i]; bs.eventID == "" {
					if id, ok := committed[bs.body]; ok {
						bs.eventID = id
						unanswered++
					}
				}
			}
		}
		t.Logf("%d interrupted sends had been committed before the SIGKILL", unanswered)

		// Retry every send: one already in the room (acknowledged, or committed without an
		// answer) must return its event ID again, and any other must now be sent, once.
		var all []burstSend
		for g := range senders {
			for i := range sends[g] {
				bs := &sends[g][i]
				out := s.sendMessage(bs.token, room, bs.txnID, bs.body)
				if out.err != nil {
					t.Fatalf("after restart, sender %d: retrying %s: %v", g, bs.txnID, out.err)
				}
				if bs.eventID != "" && out.eventID != bs.eventID {
					t.Errorf("after restart, sender %d: retrying %s, already in the room: got event %s; want the same event %s",
						g, bs.txnID, out.eventID, bs.eventID)
				}
				if bs.eventID == "" {
					bs.eventID = out.eventID
				}
				all = append(all, *bs)
			}
		}

		ids, bodies := roomMessages(t, alice, room)
		if dup := duplicateIDs(ids); len(dup) > 0 {
			t.Errorf("events in the room more than once: %v", dup)
		}
		if dup := duplicateIDs(bodies); len(dup) > 0 {
			t.Errorf("messages sent more than once (a transaction applied twice?): %q", dup)
		}
		if len(ids) != len(all) {
			t.Errorf("got %d messages in the room; want %d (%d acknowledged before the crash, the rest interrupted and retried)",
				len(ids), len(all), acked.Load())
		}
		at := map[string]int{} // event ID → index in the room
		for i, id := range ids {
			at[id] = i
		}
		for g := range senders {
			prev := -1
			for _, bs := range sends[g] {
				i, ok := at[bs.eventID]
				switch {
				case !ok:
					t.Errorf("sender %d: %s (%q) was acknowledged as %s but is not in the room", g, bs.txnID, bs.body, bs.eventID)
				case bodies[i] != bs.body:
					t.Errorf("sender %d: event %s has body %q; want %q", g, bs.eventID, bodies[i], bs.body)
				case i <= prev:
					t.Errorf("sender %d: %s is at %d in the room, not after the sender's previous message at %d", g, bs.txnID, i, prev)
				}
				prev = max(prev, i)
			}
		}
	})
}
