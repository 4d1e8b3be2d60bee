package federationapi

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/userapi"
)

//go:embed storage/migrations/*.sql
var migrations embed.FS

// maxRequestBody bounds the body of an inbound federation request: a transaction holds at
// most 50 PDUs of 64 KiB and 100 EDUs.
const maxRequestBody = 8 << 20

// Rooms is what the federation handlers need of the room server.
type Rooms interface {
	RoomVersion(ctx context.Context, roomID string) (gomatrixserverlib.RoomVersion, error)
	Event(ctx context.Context, eventID string) (*roomserver.Event, error)
	CurrentState(ctx context.Context, roomID string) ([]*roomserver.Event, error)
	CurrentStateEvent(ctx context.Context, roomID, evType, stateKey string) (*roomserver.Event, error)
	Membership(ctx context.Context, roomID, userID string) (string, *roomserver.Event, error)
	JoinedMembers(ctx context.Context, roomID string) ([]string, error)
	InputEvent(ctx context.Context, ev gomatrixserverlib.PDU, opts roomserver.InputOptions) (roomserver.InputResult, error)
	InputOutlier(ctx context.Context, ev gomatrixserverlib.PDU) error
	KnownEvents(ctx context.Context, ids []string) (map[string]bool, error)
	Extremities(ctx context.Context, roomID string) ([]string, int64, error)
	BuildTemplate(ctx context.Context, p *gomatrixserverlib.ProtoEvent) (gomatrixserverlib.PDU, []gomatrixserverlib.PDU, error)
	StateAtEvent(ctx context.Context, roomID, eventID string) (state, authChain []gomatrixserverlib.PDU, err error)
	AuthChain(ctx context.Context, ids []string) ([]gomatrixserverlib.PDU, error)
	EventAuth(ctx context.Context, roomID, eventID string) ([]gomatrixserverlib.PDU, error)
	MissingEvents(ctx context.Context, roomID string, earliest, latest []string, limit int, minDepth int64, server string) ([]gomatrixserverlib.PDU, error)
	Backfill(ctx context.Context, roomID string, from []string, limit int, server string) ([]gomatrixserverlib.PDU, error)
	ServersInRoom(ctx context.Context, roomID string) ([]string, error)
	ServerInRoom(ctx context.Context, roomID, server string) (bool, error)
	Alias(ctx context.Context, alias string) (roomID, creator string, err error)
	PublicRooms(ctx context.Context, req roomserver.PublicRoomsRequest) (*roomserver.PublicRoomsPage, error)
	StoreOutOfBandMembership(ctx context.Context, ev gomatrixserverlib.PDU, stripped []json.RawMessage) (int64, error)
	hierarchyRooms
	timestampRooms
}

// Users is what the federation handlers need of the user API.
type Users interface {
	Profile(ctx context.Context, userID string) (*userapi.Profile, error)
}

// EDUSink takes the ephemeral events remote servers send. main implements it with syncapi.
type EDUSink interface {
	// RemoteTyping records that userID is (or stops) typing in roomID.
	RemoteTyping(ctx context.Context, roomID, userID string, typing bool, timeout time.Duration) error
	// RemoteReceipt records userID's receipt of receiptType for eventID in roomID.
	RemoteReceipt(ctx context.Context, roomID, receiptType, userID, eventID, threadID string, ts int64) error
	// RemotePresence records userID's presence.
	RemotePresence(ctx context.Context, userID, presence string, statusMsg *string, lastActiveAgo int64, currentlyActive bool) error
}

// Remote is the part of the federation client the inbound handlers use to fetch events a
// remote server refers to. fclient.FederationClient implements it.
type Remote interface {
	GetEvent(ctx context.Context, origin, s spec.ServerName, eventID string) (gomatrixserverlib.Transaction, error)
	GetEventAuth(ctx context.Context, origin, s spec.ServerName, roomVersion gomatrixserverlib.RoomVersion, roomID, eventID string) (fclient.RespEventAuth, error)
	LookupStateIDs(ctx context.Context, origin, s spec.ServerName, roomID, eventID string) (fclient.RespStateIDs, error)
	LookupMissingEvents(ctx context.Context, origin, s spec.ServerName, roomID string, missing fclient.MissingEvents, roomVersion gomatrixserverlib.RoomVersion) (fclient.RespMissingEvents, error)
}

// Deps are the components the inbound federation handlers use.
type Deps struct {
	DB      *sqldb.DB
	KeyRing gomatrixserverlib.JSONVerifier // verifies request and event signatures
	Rooms   Rooms
	Users   Users
	EDUs    EDUSink // nil: EDUs are accepted and dropped
	Remote  Remote  // nil: missing events are never fetched
	Log     *slog.Logger
}

// Inbound serves the /_matrix/federation/* endpoints other servers call (all but /version,
// which Service serves): transactions, the membership handshakes, history and state reads,
// and queries. Every request must carry a valid X-Matrix signature. It is safe for
// concurrent use.
type Inbound struct {
	cfg    Config
	db     *sqldb.DB
	keys   gomatrixserverlib.JSONVerifier
	rooms  Rooms
	users  Users
	edus   EDUSink
	remote Remote
	log    *slog.Logger
	txns   txnGate
}

// NewInbound runs federationapi's migrations on d.DB and returns the inbound handlers. It
// returns an error if d lacks the database, key ring, rooms or users, or the database cannot
// be migrated.
func NewInbound(cfg Config, d Deps) (*Inbound, error) {
	if d.DB == nil || d.KeyRing == nil || d.Rooms == nil || d.Users == nil {
		return nil, errors.New("federationapi: database, key ring, rooms and users are required")
	}
	if d.Log == nil {
		d.Log = slog.Default()
	}
	sub, err := fs.Sub(migrations, "storage/migrations")
	if err != nil {
		return nil, fmt.Errorf("federationapi: opening migrations: %w", err)
	}
	if err := d.DB.Migrate(context.Background(), "federationapi", sub); err != nil {
		return nil, fmt.Errorf("federationapi: %w", err)
	}
	return &Inbound{cfg: cfg, db: d.DB, keys: d.KeyRing, rooms: d.Rooms, users: d.Users, edus: d.EDUs,
		remote: d.Remote, log: d.Log, txns: txnGate{m: map[string]chan struct{}{}}}, nil
}

// fedRequest is a verified inbound federation request.
type fedRequest struct {
	origin  spec.ServerName
	content []byte
}

type fedHandler func(w http.ResponseWriter, r *http.Request, req *fedRequest) error

// Register adds every inbound federation route to r.
func (in *Inbound) Register(r *mux.Router) {
	get, put, post := http.MethodGet, http.MethodPut, http.MethodPost
	f := "/_matrix/federation"
	a := in.authed
	r.Handle(f+"/v1/send/{txnID}", a(in.send)).Methods(put)

	r.Handle(f+"/v1/make_join/{roomID}/{userID}", a(in.makeJoin)).Methods(get)
	r.Handle(f+"/v1/send_join/{roomID}/{eventID}", a(in.sendJoinV1)).Methods(put)
	r.Handle(f+"/v2/send_join/{roomID}/{eventID}", a(in.sendJoinV2)).Methods(put)
	r.Handle(f+"/v1/make_leave/{roomID}/{userID}", a(in.makeLeave)).Methods(get)
	r.Handle(f+"/v1/send_leave/{roomID}/{eventID}", a(in.sendLeaveV1)).Methods(put)
	r.Handle(f+"/v2/send_leave/{roomID}/{eventID}", a(in.sendLeaveV2)).Methods(put)
	r.Handle(f+"/v1/make_knock/{roomID}/{userID}", a(in.makeKnock)).Methods(get)
	r.Handle(f+"/v1/send_knock/{roomID}/{eventID}", a(in.sendKnock)).Methods(put)
	r.Handle(f+"/v1/invite/{roomID}/{eventID}", a(in.inviteV1)).Methods(put)
	r.Handle(f+"/v2/invite/{roomID}/{eventID}", a(in.inviteV2)).Methods(put)

	r.Handle(f+"/v1/state/{roomID}", a(in.state)).Methods(get)
	r.Handle(f+"/v1/state_ids/{roomID}", a(in.stateIDs)).Methods(get)
	r.Handle(f+"/v1/event/{eventID}", a(in.event)).Methods(get)
	r.Handle(f+"/v1/event_auth/{roomID}/{eventID}", a(in.eventAuth)).Methods(get)
	r.Handle(f+"/v1/backfill/{roomID}", a(in.backfill)).Methods(get)
	r.Handle(f+"/v1/get_missing_events/{roomID}", a(in.getMissingEvents)).Methods(post)
	r.Handle(f+"/v1/timestamp_to_event/{roomID}", a(in.timestampToEvent)).Methods(get)

	r.Handle(f+"/v1/query/profile", a(in.queryProfile)).Methods(get)
	r.Handle(f+"/v1/query/directory", a(in.queryDirectory)).Methods(get)
	r.Handle(f+"/v1/publicRooms", a(in.publicRooms)).Methods(get, post)
	r.Handle(f+"/v1/hierarchy/{roomID}", a(in.hierarchy)).Methods(get)
	r.Handle(f+"/v1/user/devices/{userID}", a(in.userDevices)).Methods(get)
	r.Handle(f+"/v1/user/keys/query", a(in.keysQuery)).Methods(post)
	r.Handle(f+"/v1/user/keys/claim", a(in.keysClaim)).Methods(post)
}

// authed verifies the request with Verify before calling f.
func (in *Inbound) authed(f fedHandler) http.Handler {
	return httpx.Handler(func(w http.ResponseWriter, r *http.Request) error {
		origin, content, err := in.verify(w, r)
		if err != nil {
			return err
		}
		return f(w, r, &fedRequest{origin: origin, content: content})
	})
}

// Verify checks the X-Matrix signature of a request addressed to this server and returns
// the requesting server's name. It is for federation endpoints served outside this package
// (media), whose requests have no body. Failures are *matrix.Error: 401 M_UNAUTHORIZED (400
// for a malformed header), 413 M_TOO_LARGE for a body over the limit.
func (in *Inbound) Verify(w http.ResponseWriter, r *http.Request) (origin string, err error) {
	o, _, err := in.verify(w, r)
	return string(o), err
}

// verify checks r's X-Matrix signature, with its body limited to maxRequestBody, and
// returns the origin and the body it read.
func (in *Inbound) verify(w http.ResponseWriter, r *http.Request) (spec.ServerName, []byte, error) {
	if r.ContentLength > maxRequestBody {
		return "", nil, matrix.Errorf(http.StatusRequestEntityTooLarge, matrix.CodeTooLarge, "request body is larger than %d bytes", maxRequestBody)
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxRequestBody)
	fr, resp := fclient.VerifyHTTPRequest(r, time.Now(), spec.ServerName(in.cfg.ServerName), nil, in.keys)
	if fr == nil {
		var body struct {
			Message string `json:"message"`
			Error   string `json:"error"`
		}
		b, _ := json.Marshal(resp.JSON)
		_ = json.Unmarshal(b, &body)
		msg := body.Message + body.Error
		if msg == "" {
			msg = "request signature verification failed"
		}
		status := resp.Code
		if status < 400 {
			status = http.StatusUnauthorized
		}
		return "", nil, matrix.Errorf(status, matrix.CodeUnauthorized, "%s", msg)
	}
	if fr.Origin() == spec.ServerName(in.cfg.ServerName) {
		return "", nil, matrix.Errorf(http.StatusUnauthorized, matrix.CodeUnauthorized, "requests from ourselves are not accepted")
	}
	return fr.Origin(), fr.Content(), nil
}

// checkACL returns 403 M_FORBIDDEN when roomID's m.room.server_acl denies origin. An unknown
// room passes (the handler reports it).
func (in *Inbound) checkACL(ctx context.Context, roomID string, origin spec.ServerName) error {
	ev, err := in.rooms.CurrentStateEvent(ctx, roomID, "m.room.server_acl", "")
	if errors.Is(err, sqldb.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("loading server ACL of %s: %w", roomID, err)
	}
	if !aclAllows(ev.PDU.Content(), string(origin)) {
		return matrix.Forbidden("server %s is denied by the room's server ACL", origin)
	}
	return nil
}

// aclAllows applies the m.room.server_acl content acl to server, as the spec describes:
// IP literals are denied unless allow_ip_literals; deny wins over allow; no allow entry
// matching means denied. Malformed content allows everyone.
func aclAllows(acl []byte, server string) bool {
	var c struct {
		Allow           []any `json:"allow"`
		Deny            []any `json:"deny"`
		AllowIPLiterals *bool `json:"allow_ip_literals"`
	}
	if err := json.Unmarshal(acl, &c); err != nil {
		return true
	}
	host := server
	if strings.HasPrefix(host, "[") {
		if i := strings.Index(host, "]"); i > 0 {
			host = host[1:i]
		}
	} else if i := strings.LastIndexByte(host, ':'); i >= 0 {
		host = host[:i]
	}
	allowIP := c.AllowIPLiterals == nil || *c.AllowIPLiterals
	if !allowIP && isIPLiteral(host) {
		return false
	}
	for _, d := range c.Deny {
		if s, ok := d.(string); ok && globMatch(s, host) {
			return false
		}
	}
	for _, a := range c.Allow {
		if s, ok := a.(string); ok && globMatch(s, host) {
			return true
		}
	}
	return false
}

func isIPLiteral(host string) bool {
	if strings.Contains(host, ":") {
		return true
	}
	parts := strings.Split(host, ".")
	if len(parts) != 4 {
		return false
	}
	for _, p := range parts {
		if p == "" || strings.Trim(p, "0123456789") != "" {
			return false
		}
	}
	return true
}

// globMatch matches s against a glob with * (any run) and ? (one character), case-insensitively.
func globMatch(glob, s string) bool {
	glob, s = strings.ToLower(glob), strings.ToLower(s)
	var match func(g, s string) bool
	match = func(g, s string) bool {
		for len(g) > 0 {
			switch g[0] {
			case '*':
				for len(g) > 0 && g[0] == '*' {
					g = g[1:]
				}
				if g == "" {
					return true
				}
				for i := 0; i <= len(s); i++ {
					if match(g, s[i:]) {
						return true
					}
				}
				return false
			case '?':
				if s == "" {
					return false
				}
				g, s = g[1:], s[1:]
			default:
				if s == "" || g[0] != s[0] {
					return false
				}
				g, s = g[1:], s[1:]
			}
		}
		return s == ""
	}
	return match(glob, s)
}

// roomVersion returns roomID's version, 404 M_NOT_FOUND when unknown.
func (in *Inbound) roomVersion(ctx context.Context, roomID string) (gomatrixserverlib.IRoomVersion, error) {
	v, err := in.rooms.RoomVersion(ctx, roomID)
	if err != nil {
		return nil, err
	}
	impl, err := gomatrixserverlib.GetRoomVersion(v)
	if err != nil {
		return nil, fmt.Errorf("room %s: %w", roomID, err)
	}
	return impl, nil
}

// fedJSON is ev as sent over federation: without the unsigned section this server stores
// for its clients.
func fedJSON(ev gomatrixserverlib.PDU) json.RawMessage {
	js := ev.JSON()
	if out, err := matrix.WithoutUnsigned(js); err == nil {
		return out
	}
	return js
}

func fedJSONs(evs []gomatrixserverlib.PDU) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(evs))
	for _, e := range evs {
		out = append(out, fedJSON(e))
	}
	return out
}

// userIDForSender maps a sender ID to a user ID: Myelin has no pseudo-ID rooms. It never
// returns (nil, nil), which makes gmsl panic.
func userIDForSender(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
	if senderID == "" {
		return nil, errors.New("empty sender")
	}
	u, err := spec.NewUserID(string(senderID), true)
	if err != nil {
		return nil, fmt.Errorf("sender %q: %w", senderID, err)
	}
	return u, nil
}

// gmslError turns an error from a gmsl Handle* helper into a client-facing one.
func gmslError(err error) error {
	var me spec.MatrixError
	if errors.As(err, &me) {
		status := http.StatusBadRequest
		switch me.ErrCode {
		case spec.ErrorForbidden:
			status = http.StatusForbidden
		case spec.ErrorNotFound:
			status = http.StatusNotFound
		case spec.ErrorUnableToAuthoriseJoin:
			status = http.StatusBadRequest
		}
		return matrix.Errorf(status, string(me.ErrCode), "%s", me.Err)
	}
	var ie spec.IncompatibleRoomVersionError
	if errors.As(err, &ie) {
		return matrix.Errorf(http.StatusBadRequest, matrix.CodeIncompatibleRoomVer, "%s", ie.Error()).With("room_version", ie.RoomVersion)
	}
	return err
}
