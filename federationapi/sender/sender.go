// Package sender is the federation sender: a durable per-destination outbound queue in the
// database. It follows roomserver's event stream from a saved position, works out which
// remote servers each event must reach, and delivers PDUs and EDUs to each destination in
// order, in transactions of at most 50 PDUs and 100 EDUs, retrying failed destinations with
// exponential backoff and jitter. A restart resumes from the saved position and the stored
// queue, so a destination that was down receives what it missed, in order, when it returns.
// It may import roomserver and internal packages; main wires it.
package sender

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/bus"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/roomserver"
)

//go:embed storage/migrations/*.sql
var migrations embed.FS

// Limits of one transaction, from the spec.
const (
	maxPDUsPerTxn = 50
	maxEDUsPerTxn = 100
)

// roomsPos names the saved room-event stream position.
const roomsPos = "rooms"

// Rooms is what the sender reads from roomserver.
type Rooms interface {
	SenderEvents(ctx context.Context, after, upTo int64, limit int) ([]*roomserver.Event, int64, error)
	JoinedMembers(ctx context.Context, roomID string) ([]string, error)
	MaxStreamPos(ctx context.Context) (int64, error)
	RoomsForUser(ctx context.Context, userID string, memberships ...string) ([]string, error)
}

// Transport delivers one transaction; fclient.FederationClient satisfies it.
type Transport interface {
	SendTransaction(ctx context.Context, t gomatrixserverlib.Transaction) (fclient.RespSend, error)
}

// Config is what the sender needs from main.
type Config struct {
	ServerName string
	// MinBackoff is the delay after a destination's first failure (default 2s); each further
	// failure doubles it up to MaxBackoff (default 1h). Delays are jittered by up to -25%.
	MinBackoff, MaxBackoff time.Duration
	// Timeout bounds one transaction (default 60s).
	Timeout time.Duration
}

// Sender is the federation sender. It is safe for concurrent use.
type Sender struct {
	cfg    Config
	st     *store
	rooms  Rooms
	tr     Transport
	edus   EDUSource
	events *bus.Stream
	log    *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	workers map[string]*worker // destinations being delivered to
	members map[string]*roomMembers

	// savedPos and savedAt are the stream position last stored and when; only the follow
	// goroutine uses them.
	savedPos int64
	savedAt  time.Time
}

// positionSaveInterval is how long the stream position may go unsaved while the events read
// had nothing to send (rooms without other servers): saving it on every event would add a
// write transaction, and on SQLite an fsync, to every local send. After a crash the events
// since are read again, and again have nothing to send.
const positionSaveInterval = 2 * time.Second

// worker is the delivery state of one destination with queued items.
type worker struct {
	pending bool          // items were queued since the worker last looked
	wake    chan struct{} // signalled to cut a backoff short
}

// New runs the sender's migrations on db. Start begins its work. edus, which may be nil, offers
// the typing, receipts and presence of local users to send.
func New(cfg Config, db *sqldb.DB, rooms Rooms, tr Transport, events *bus.Stream, edus EDUSource, log *slog.Logger) (*Sender, error) {
	if cfg.ServerName == "" || rooms == nil || tr == nil || events == nil {
		return nil, errors.New("sender: server name, rooms, transport and the events stream are required")
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 2 * time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = time.Hour
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 60 * time.Second
	}
	if log == nil {
		log = slog.Default()
	}
	sub, err := fs.Sub(migrations, "storage/migrations")
	if err != nil {
		return nil, fmt.Errorf("sender: opening migrations: %w", err)
	}
	if err := db.Migrate(context.Background(), "sender", sub); err != nil {
		return nil, fmt.Errorf("sender: %w", err)
	}
	return &Sender{cfg: cfg, st: &store{db: db}, rooms: rooms, tr: tr, edus: edus, events: events, log: log,
		workers: map[string]*worker{}, members: map[string]*roomMembers{}}, nil
}

// Start resumes delivery to every destination with queued items and follows the event
// stream from the saved position (from the stream's current position on the first start).
func (s *Sender) Start(ctx context.Context) error {
	pos, ok, err := s.st.position(ctx, roomsPos)
	if err != nil {
		return err
	}
	if !ok {
		if pos, err = s.rooms.MaxStreamPos(ctx); err != nil {
			return fmt.Errorf("sender: %w", err)
		}
		if err := s.st.savePosition(ctx, roomsPos, pos); err != nil {
			return err
		}
	}
	dests, err := s.st.pendingDestinations(ctx)
	if err != nil {
		return err
	}
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	for _, d := range dests {
		s.kick(d)
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.follow(pos)
	}()
	if s.edus != nil {
		if err := s.followEDUs(ctx, s.edus); err != nil {
			s.Close()
			return err
		}
	}
	return nil
}

// Close stops the sender and waits for its goroutines. Queued items stay in the database.
func (s *Sender) Close() {
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
}

// ServerUp tells the sender that dest is reachable again (it sent us something): a
// destination waiting out a backoff is retried at once.
func (s *Sender) ServerUp(dest string) {
	s.mu.Lock()
	w := s.workers[dest]
	s.mu.Unlock()
	if w != nil {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// follow enqueues the events of the stream after pos as they are committed, until Close,
// when it stores the position reached.
func (s *Sender) follow(pos int64) {
	s.savedPos, s.savedAt = pos, time.Now()
	defer func() {
		if pos > s.savedPos {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), 5*time.Second)
			defer cancel()
			if err := s.st.enqueuePDUs(ctx, roomsPos, pos, nil); err != nil {
				s.log.Error("federation sender: saving the stream position", "error", err)
			}
		}
	}()
	failures := 0
	for {
		head, changed := s.events.Changed()
		if head > pos {
			next, err := s.enqueueEvents(s.ctx, pos, head)
			if err == nil {
				pos, failures = next, 0
				continue
			}
			if s.ctx.Err() != nil {
				return
			}
			failures++
			s.log.Error("federation sender: reading the event stream", "error", err)
			select {
			case <-time.After(retryDelay(failures, time.Second, time.Minute, rand.Float64())):
			case <-s.ctx.Done():
				return
			}
			continue
		}
		select {
		case <-changed:
		case <-s.ctx.Done():
			return
		}
	}
}

// enqueueEvents enqueues the events with after < position <= at most upTo for their
// destinations and saves the position reached, which it returns.
func (s *Sender) enqueueEvents(ctx context.Context, after, upTo int64) (int64, error) {
	evs, scanned, err := s.rooms.SenderEvents(ctx, after, upTo, 100)
	if err != nil {
		return after, err
	}
	var out []outPDU
	touched := map[string]bool{}
	for _, ev := range evs {
		dests, err := s.destinations(ctx, ev)
		if err != nil {
			return after, err
		}
		if len(dests) == 0 {
			continue
		}
		js, err := matrix.WithoutUnsigned(ev.PDU.JSON())
		if err != nil {
			return after, fmt.Errorf("preparing %s: %w", ev.PDU.EventID(), err)
		}
		out = append(out, outPDU{eventID: ev.PDU.EventID(), json: js, dests: dests})
		for _, d := range dests {
			touched[d] = true
		}
	}
	if len(out) == 0 && time.Since(s.savedAt) < positionSaveInterval {
		return scanned, nil
	}
	if err := s.st.enqueuePDUs(ctx, roomsPos, scanned, out); err != nil {
		return after, err
	}
	s.savedPos, s.savedAt = scanned, time.Now()
	for d := range touched {
		s.kick(d)
	}
	return scanned, nil
}

// SendEDU queues edu for each of dests (this server and duplicates are skipped).
func (s *Sender) SendEDU(ctx context.Context, edu gomatrixserverlib.EDU, dests []string) error {
	dests = s.remoteOnly(dests)
	if len(dests) == 0 {
		return nil
	}
	edu.Origin, edu.Destination = s.cfg.ServerName, ""
	js, err := json.Marshal(edu)
	if err != nil {
		return fmt.Errorf("encoding %s EDU: %w", edu.Type, err)
	}
	if err := s.st.enqueueEDU(ctx, js, dests); err != nil {
		return err
	}
	for _, d := range dests {
		s.kick(d)
	}
	return nil
}

// remoteOnly returns dests sorted, without duplicates and without this server.
func (s *Sender) remoteOnly(dests []string) []string {
	out := slices.DeleteFunc(slices.Clone(dests), func(d string) bool { return d == s.cfg.ServerName || d == "" })
	slices.Sort(out)
	return slices.Compact(out)
}

// kick makes sure a worker is delivering dest's queue.
func (s *Sender) kick(dest string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx == nil || s.ctx.Err() != nil {
		return
	}
	if w := s.workers[dest]; w != nil {
		w.pending = true
		return
	}
	w := &worker{pending: true, wake: make(chan struct{}, 1)}
	s.workers[dest] = w
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.deliver(dest, w)
	}()
}

// deliver sends dest's queue in order until it is empty, backing off after failures.
func (s *Sender) deliver(dest string, w *worker) {
	log := s.log.With("server_name", dest)
	ds, err := s.st.failure(s.ctx, dest)
	if err != nil {
		log.Error("federation sender: reading destination state", "error", err)
	}
	failures := ds.failures
	if !s.waitUntil(w, time.UnixMilli(ds.retryAtMS)) {
		s.stopWorker(dest)
		return
	}
	for {
		s.mu.Lock()
		w.pending = false
		s.mu.Unlock()
		batch, err := s.st.next(s.ctx, dest, maxPDUsPerTxn, maxEDUsPerTxn)
		if err == nil && len(batch) == 0 {
			s.mu.Lock()
			if !w.pending || s.ctx.Err() != nil {
				delete(s.workers, dest)
				s.mu.Unlock()
				return
			}
			s.mu.Unlock()
			continue
		}
		if err == nil {
			err = s.send(dest, batch)
		}
		if err == nil {
			failures = 0
			continue
		}
		if s.ctx.Err() != nil {
			s.stopWorker(dest)
			return
		}
		failures++
		delay := retryDelay(failures, s.cfg.MinBackoff, s.cfg.MaxBackoff, rand.Float64())
		retryAt := time.Now().Add(delay)
		log.Warn("federation sender: delivery failed", "failures", failures, "retry_in", delay.Round(time.Millisecond), "error", err)
		if err := s.st.failed(s.ctx, dest, failures, retryAt.UnixMilli()); err != nil {
			log.Error("federation sender: recording failure", "error", err)
		}
		if !s.waitUntil(w, retryAt) {
			s.stopWorker(dest)
			return
		}
	}
}

func (s *Sender) stopWorker(dest string) {
	s.mu.Lock()
	delete(s.workers, dest)
	s.mu.Unlock()
}

// waitUntil sleeps until t, a ServerUp for the worker, or Close (false).
func (s *Sender) waitUntil(w *worker, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return s.ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-w.wake:
		return true
	case <-s.ctx.Done():
		return false
	}
}

// send delivers batch to dest as one transaction and, on success, removes it from the queue.
// The transaction ID is derived from the batch's queue positions, so a batch retried after a
// failure or a restart keeps its ID and the receiver can deduplicate it.
func (s *Sender) send(dest string, batch []queued) error {
	txn := gomatrixserverlib.Transaction{
		TransactionID:  gomatrixserverlib.TransactionID(fmt.Sprintf("%d-%d", batch[0].nid, batch[len(batch)-1].nid)),
		Origin:         spec.ServerName(s.cfg.ServerName),
		Destination:    spec.ServerName(dest),
		OriginServerTS: spec.AsTimestamp(time.Now()),
		PDUs:           []json.RawMessage{},
	}
	var pduNIDs []int64
	for _, q := range batch {
		if q.pduNID != 0 {
			txn.PDUs = append(txn.PDUs, json.RawMessage(q.json))
			pduNIDs = append(pduNIDs, q.pduNID)
			continue
		}
		var edu gomatrixserverlib.EDU
		if err := json.Unmarshal(q.json, &edu); err != nil {
			s.log.Error("federation sender: dropping undecodable EDU", "server_name", dest, "error", err)
			continue
		}
		edu.Destination = dest
		txn.EDUs = append(txn.EDUs, edu)
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.Timeout)
	res, err := s.tr.SendTransaction(ctx, txn)
	cancel()
	if err != nil {
		return fmt.Errorf("sending transaction %s: %w", txn.TransactionID, err)
	}
	for id, r := range res.PDUs {
		if r.Error != "" {
			// The spec: per-PDU errors are the receiver's verdict, not a reason to resend.
			s.log.Info("federation sender: remote rejected PDU", "server_name", dest, "event_id", id, "error", r.Error)
		}
	}
	return s.st.delivered(context.WithoutCancel(s.ctx), dest, batch[len(batch)-1].nid, pduNIDs)
}

// retryDelay is the backoff after the given number of consecutive failures: min doubled per
// further failure, at most max, less a jitter of up to 25% (rnd in [0, 1)).
func retryDelay(failures int, min, max time.Duration, rnd float64) time.Duration {
	d := min
	for i := 1; i < failures && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d - time.Duration(float64(d)*0.25*rnd)
}
