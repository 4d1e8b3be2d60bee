package sender

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/bus"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
	"github.com/myelin-chat/myelin/roomserver"
)

const (
	origin = "origin.test"
	alice  = "@alice:origin.test"
)

// withRemoteMembers is the real roomserver with extra remote users joined to every room:
// enough for the sender to find destinations without inbound federation.
type withRemoteMembers struct {
	*roomserver.Service
	remote []string
}

func (w withRemoteMembers) JoinedMembers(ctx context.Context, roomID string) ([]string, error) {
	users, err := w.Service.JoinedMembers(ctx, roomID)
	return append(users, w.remote...), err
}

// receiver is a federation server that verifies our X-Matrix signatures and records the
// transactions it accepts.
type receiver struct {
	t    *testing.T
	name string
	pub  ed25519.PublicKey
	srv  *httptest.Server

	mu     sync.Mutex
	down   bool
	txns   []gomatrixserverlib.Transaction
	txnIDs []string
	calls  int
}

// verifier checks signatures against the one key of origin.test.
type verifier struct {
	keyID gomatrixserverlib.KeyID
	pub   ed25519.PublicKey
}

func (v verifier) VerifyJSONs(_ context.Context, reqs []gomatrixserverlib.VerifyJSONRequest) ([]gomatrixserverlib.VerifyJSONResult, error) {
	out := make([]gomatrixserverlib.VerifyJSONResult, len(reqs))
	for i, r := range reqs {
		if r.ServerName != origin {
			out[i].Error = fmt.Errorf("unknown server %s", r.ServerName)
			continue
		}
		out[i].Error = gomatrixserverlib.VerifyJSON(string(r.ServerName), v.keyID, v.pub, r.Message)
	}
	return out, nil
}

func newReceiver(t *testing.T, name string, v verifier) *receiver {
	rc := &receiver{t: t, name: name, pub: v.pub}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc.mu.Lock()
		rc.calls++
		down := rc.down
		rc.mu.Unlock()
		if down {
			http.Error(w, `{"errcode":"M_UNKNOWN"}`, http.StatusBadGateway)
			return
		}
		fedReq, errResp := fclient.VerifyHTTPRequest(r, time.Now(), spec.ServerName(name),
			func(s spec.ServerName) bool { return s == spec.ServerName(name) }, v)
		if fedReq == nil {
			t.Errorf("%s: request failed verification: %d %v", name, errResp.Code, errResp.JSON)
			w.WriteHeader(errResp.Code)
			return
		}
		if fedReq.Origin() != origin {
			t.Errorf("%s: origin = %s", name, fedReq.Origin())
		}
		var txn gomatrixserverlib.Transaction
		if err := json.Unmarshal(fedReq.Content(), &txn); err != nil {
			t.Errorf("%s: decoding transaction: %v", name, err)
		}
		id := strings.TrimPrefix(r.URL.Path, "/_matrix/federation/v1/send/")
		rc.mu.Lock()
		if !slices.Contains(rc.txnIDs, id) { // a retried transaction is processed once
			rc.txnIDs = append(rc.txnIDs, id)
			rc.txns = append(rc.txns, txn)
		}
		rc.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"pdus":{}}`))
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) setDown(down bool) {
	rc.mu.Lock()
	rc.down = down
	rc.mu.Unlock()
}

// pdus returns the received PDUs' event IDs in order of arrival; it fails the test on a PDU
// that still carries an unsigned section.
func (rc *receiver) pdus() []string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var out []string
	for _, txn := range rc.txns {
		for _, p := range txn.PDUs {
			var ev struct {
				Type     string          `json:"type"`
				Content  json.RawMessage `json:"content"`
				Unsigned json.RawMessage `json:"unsigned"`
			}
			_ = json.Unmarshal(p, &ev)
			if ev.Unsigned != nil {
				rc.t.Errorf("%s received a PDU with unsigned: %s", rc.name, p)
			}
			var c struct {
				Body string `json:"body"`
			}
			_ = json.Unmarshal(ev.Content, &c)
			out = append(out, c.Body)
		}
	}
	return out
}

func (rc *receiver) transactions() []gomatrixserverlib.Transaction {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.txns)
}

// transport sends matrix://name/… to the receiver named name.
type transport map[string]*receiver

func (tr transport) RoundTrip(r *http.Request) (*http.Response, error) {
	rc := tr[r.URL.Host]
	if rc == nil {
		return nil, fmt.Errorf("no such server %s", r.URL.Host)
	}
	u, _ := url.Parse(rc.srv.URL)
	r = r.Clone(r.Context())
	r.URL.Scheme, r.URL.Host = u.Scheme, u.Host
	return http.DefaultTransport.RoundTrip(r)
}

type fixture struct {
	db     *sqldb.DB
	rooms  *roomserver.Service
	rs     withRemoteMembers
	stream *bus.Stream
	client fclient.FederationClient
	recv   map[string]*receiver
}

func newFixture(t *testing.T, db *sqldb.DB, servers ...string) *fixture {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(nil)
	testkit.Must(t, err, "generating key")
	stream := bus.NewStream(0)
	rooms, err := roomserver.New(roomserver.Config{ServerName: origin, KeyID: "ed25519:a", PrivateKey: priv},
		db, stream, slog.New(slog.DiscardHandler))
	testkit.Must(t, err, "starting roomserver")
	v := verifier{keyID: "ed25519:a", pub: pub}
	f := &fixture{db: db, rooms: rooms, stream: stream, recv: map[string]*receiver{}}
	var remote []string
	for _, s := range servers {
		f.recv[s] = newReceiver(t, s, v)
		remote = append(remote, "@user:"+s)
	}
	f.rs = withRemoteMembers{Service: rooms, remote: remote}
	f.client = fclient.NewFederationClient([]*fclient.SigningIdentity{{ServerName: origin, KeyID: "ed25519:a", PrivateKey: priv}},
		fclient.WithTransport(transport(f.recv)))
	return f
}

func (f *fixture) start(t *testing.T) *Sender {
	t.Helper()
	s, err := New(Config{ServerName: origin, MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond},
		f.db, f.rs, f.client, f.stream, nil, slog.New(slog.DiscardHandler))
	testkit.Must(t, err, "creating sender")
	testkit.Must(t, s.Start(context.Background()), "starting sender")
	t.Cleanup(s.Close)
	return s
}

func (f *fixture) createRoom(t *testing.T) string {
	t.Helper()
	sk := alice
	id, err := f.rooms.CreateRoom(context.Background(), roomserver.CreateRoomRequest{Creator: alice, Initial: []roomserver.Fledgling{
		{Type: "m.room.member", StateKey: &sk, Content: json.RawMessage(`{"membership":"join"}`)},
	}})
	testkit.Must(t, err, "creating room")
	return id
}

func (f *fixture) say(t *testing.T, roomID string, from, to int) []string {
	t.Helper()
	var bodies []string
	for i := from; i < to; i++ {
		body := fmt.Sprintf("m%d", i)
		_, err := f.rooms.Send(context.Background(), roomserver.SendRequest{RoomID: roomID, Sender: alice,
			Type: "m.room.message", Content: json.RawMessage(fmt.Sprintf(`{"msgtype":"m.text","body":%q}`, body))})
		testkit.Must(t, err, "sending %s", body)
		bodies = append(bodies, body)
	}
	return bodies
}

// waitFor polls until cond holds or fails the test after a deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func messages(bodies []string) []string {
	return slices.DeleteFunc(slices.Clone(bodies), func(b string) bool { return b == "" })
}

func TestDeliversInOrderInBatches(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		f := newFixture(t, db, "a.test", "b.test")
		roomID := f.createRoom(t)
		f.start(t)
		want := f.say(t, roomID, 0, 120)
		for _, name := range []string{"a.test", "b.test"} {
			rc := f.recv[name]
			waitFor(t, name+" to receive every event", func() bool { return len(messages(rc.pdus())) >= len(want) })
			if got := messages(rc.pdus()); !slices.Equal(got, want) {
				t.Errorf("%s got %v; want %v", name, got, want)
			}
			for _, txn := range rc.transactions() {
				if len(txn.PDUs) > maxPDUsPerTxn {
					t.Errorf("%s got a transaction of %d PDUs; want at most %d", name, len(txn.PDUs), maxPDUsPerTxn)
				}
			}
		}
	})
}

func TestResumesAfterRestart(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		f := newFixture(t, db, "up.test", "down.test")
		roomID := f.createRoom(t)
		down := f.recv["down.test"]
		down.setDown(true)
		s := f.start(t)
		first := f.say(t, roomID, 0, 5)
		waitFor(t, "up.test to receive the first events", func() bool { return len(messages(f.recv["up.test"].pdus())) == 5 })
		waitFor(t, "down.test to be tried", func() bool { down.mu.Lock(); defer down.mu.Unlock(); return down.calls > 1 })
		s.Close()

		// Sent while the sender is stopped: found again from the saved position.
		second := f.say(t, roomID, 5, 8)
		down.setDown(false)
		f.start(t)
		third := f.say(t, roomID, 8, 10)
		all := slices.Concat(first, second, third)
		for _, name := range []string{"up.test", "down.test"} {
			rc := f.recv[name]
			waitFor(t, name+" to catch up", func() bool { return len(messages(rc.pdus())) >= len(all) })
			if got := messages(rc.pdus()); !slices.Equal(got, all) {
				t.Errorf("%s got %v; want exactly %v", name, got, all)
			}
		}
		// The receiver records a transaction just before the sender removes it from the queue.
		waitFor(t, "the queue to empty", func() bool {
			var queued, pdus int
			testkit.Must(t, db.QueryRow(context.Background(), `SELECT COUNT(*) FROM sender_queue`).Scan(&queued), "counting queue")
			testkit.Must(t, db.QueryRow(context.Background(), `SELECT COUNT(*) FROM sender_pdus`).Scan(&pdus), "counting pdus")
			return queued == 0 && pdus == 0
		})
	})
}

func TestEDUBatches(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		f := newFixture(t, db, "a.test")
		rc := f.recv["a.test"]
		rc.setDown(true) // let them pile up
		s := f.start(t)
		for i := range 250 {
			err := s.SendEDU(context.Background(), gomatrixserverlib.EDU{Type: "m.typing",
				Content: spec.RawJSON(fmt.Sprintf(`{"room_id":"!r:origin.test","user_id":%q,"typing":true}`, fmt.Sprintf("@u%d:origin.test", i)))},
				[]string{"a.test", origin, "a.test"})
			testkit.Must(t, err, "queueing EDU %d", i)
		}
		rc.setDown(false)
		s.ServerUp("a.test")
		var got []string
		waitFor(t, "every EDU", func() bool {
			got = got[:0]
			for _, txn := range rc.transactions() {
				for _, e := range txn.EDUs {
					var c struct {
						UserID string `json:"user_id"`
					}
					_ = json.Unmarshal(e.Content, &c)
					got = append(got, c.UserID)
				}
			}
			return len(got) >= 250
		})
		for i, u := range got {
			if want := fmt.Sprintf("@u%d:origin.test", i); u != want {
				t.Fatalf("EDU %d is from %s; want %s (each once, in order)", i, u, want)
			}
		}
		for _, txn := range rc.transactions() {
			if len(txn.EDUs) > maxEDUsPerTxn {
				t.Errorf("transaction of %d EDUs; want at most %d", len(txn.EDUs), maxEDUsPerTxn)
			}
		}
	})
}

func TestRetryDelay(t *testing.T) {
	const min, max = 2 * time.Second, time.Hour
	for _, tc := range []struct {
		failures int
		rnd      float64
		want     time.Duration
	}{
		{1, 0, 2 * time.Second},
		{2, 0, 4 * time.Second},
		{3, 0, 8 * time.Second},
		{3, 0.5, 7 * time.Second},
		{3, 0.999999, 6*time.Second + 2*time.Microsecond},
		{11, 0, 2048 * time.Second},
		{12, 0, time.Hour},
		{100, 0, time.Hour},
		{100, 0.5, time.Hour * 7 / 8},
	} {
		got := retryDelay(tc.failures, min, max, tc.rnd)
		if got.Round(time.Millisecond) != tc.want.Round(time.Millisecond) {
			t.Errorf("retryDelay(%d, rnd %v) = %v; want %v", tc.failures, tc.rnd, got, tc.want)
		}
	}
}

func TestNextKeepsOrderAtLimits(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		f := newFixture(t, db)
		s, err := New(Config{ServerName: origin}, f.db, f.rs, f.client, f.stream, nil, nil)
		testkit.Must(t, err, "creating sender")
		ctx := context.Background()
		// 3 PDUs, 1 EDU, 2 PDUs: with a limit of 3 PDUs the batch stops before the 4th PDU.
		testkit.Must(t, s.st.enqueuePDUs(ctx, roomsPos, 1, []outPDU{
			{eventID: "$1", json: []byte(`{"n":1}`), dests: []string{"x"}},
			{eventID: "$2", json: []byte(`{"n":2}`), dests: []string{"x"}},
			{eventID: "$3", json: []byte(`{"n":3}`), dests: []string{"x"}},
		}), "enqueueing")
		testkit.Must(t, s.st.enqueueEDU(ctx, []byte(`{"edu_type":"e"}`), []string{"x"}), "enqueueing EDU")
		testkit.Must(t, s.st.enqueuePDUs(ctx, roomsPos, 2, []outPDU{
			{eventID: "$4", json: []byte(`{"n":4}`), dests: []string{"x"}},
		}), "enqueueing")
		batch, err := s.st.next(ctx, "x", 3, 100)
		testkit.Must(t, err, "reading batch")
		var got []string
		for _, q := range batch {
			got = append(got, string(q.json))
		}
		want := []string{`{"n":1}`, `{"n":2}`, `{"n":3}`, `{"edu_type":"e"}`}
		if !slices.Equal(got, want) {
			t.Errorf("batch = %v; want %v", got, want)
		}
	})
}
