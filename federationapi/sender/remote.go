package sender

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/matrix-org/gomatrix"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/roomserver"
)

// RemoteConfig is what Remote needs from main.
type RemoteConfig struct {
	ServerName string
	KeyID      gomatrixserverlib.KeyID
	PrivateKey ed25519.PrivateKey
	// RoomVersions are the versions offered in make_join and make_knock (ver=).
	RoomVersions []string
}

// Remote implements roomserver.Remote over the federation client: remote joins through gmsl's
// PerformJoin, invites, leaves and knocks.
type Remote struct {
	cfg  RemoteConfig
	fed  fclient.FederationClient
	keys gomatrixserverlib.JSONVerifier
}

var _ roomserver.Remote = (*Remote)(nil)

// NewRemote returns the federation side of roomserver's remote memberships. keys must be a
// *gomatrixserverlib.KeyRing for joins (gmsl's PerformJoin requires one).
func NewRemote(cfg RemoteConfig, fed fclient.FederationClient, keys gomatrixserverlib.JSONVerifier) *Remote {
	if len(cfg.RoomVersions) == 0 {
		cfg.RoomVersions = roomserver.SupportedRoomVersions()
	}
	return &Remote{cfg: cfg, fed: fed, keys: keys}
}

// joinClient adapts the federation client to gmsl's FederatedJoinClient: make_join offers
// only the room versions we support, and the responses are returned as gmsl's interfaces.
type joinClient struct{ r *Remote }

func (c joinClient) MakeJoin(ctx context.Context, origin, s spec.ServerName, roomID, userID string) (gomatrixserverlib.MakeJoinResponse, error) {
	var res fclient.RespMakeJoin
	if err := c.r.get(ctx, s, "/_matrix/federation/v1/make_join/"+url.PathEscape(roomID)+"/"+url.PathEscape(userID)+c.r.verQuery(), &res); err != nil {
		return nil, err
	}
	return &res, nil
}

func (c joinClient) SendJoin(ctx context.Context, origin, s spec.ServerName, event gomatrixserverlib.PDU) (gomatrixserverlib.SendJoinResponse, error) {
	res, err := c.r.fed.SendJoin(ctx, origin, s, event)
	if err != nil {
		return nil, err
	}
	return &res, nil
}

// verQuery is "?ver=1&ver=2…" for the supported room versions.
func (r *Remote) verQuery() string {
	var b strings.Builder
	for i, v := range r.cfg.RoomVersions {
		if i == 0 {
			b.WriteByte('?')
		} else {
			b.WriteByte('&')
		}
		b.WriteString("ver=" + url.QueryEscape(v))
	}
	return b.String()
}

// get makes a signed GET request to server and decodes the answer into out.
func (r *Remote) get(ctx context.Context, server spec.ServerName, path string, out any) error {
	req := fclient.NewFederationRequest(http.MethodGet, spec.ServerName(r.cfg.ServerName), server, path)
	if err := req.Sign(spec.ServerName(r.cfg.ServerName), r.cfg.KeyID, r.cfg.PrivateKey); err != nil {
		return fmt.Errorf("signing request: %w", err)
	}
	hr, err := req.HTTPRequest()
	if err != nil {
		return fmt.Errorf("building request: %w", err)
	}
	return r.fed.DoRequestAndParseResponse(ctx, hr, out)
}

// Join implements roomserver.Remote with gmsl's PerformJoin (make_join, send_join, and the
// checks of the response's signatures and auth).
func (r *Remote) Join(ctx context.Context, server, roomID, userID string, content map[string]any) (*roomserver.RemoteJoin, error) {
	ring, ok := r.keys.(*gomatrixserverlib.KeyRing)
	if !ok {
		return nil, errors.New("remote joins need a *gomatrixserverlib.KeyRing")
	}
	uid, err := spec.NewUserID(userID, true)
	if err != nil {
		return nil, matrix.InvalidParam("invalid user ID %q", userID)
	}
	rid, err := spec.NewRoomID(roomID)
	if err != nil {
		return nil, matrix.InvalidParam("invalid room ID %q", roomID)
	}
	res, ferr := gomatrixserverlib.PerformJoin(ctx, joinClient{r}, gomatrixserverlib.PerformJoinInput{
		UserID: uid, RoomID: rid, ServerName: spec.ServerName(server), Content: content,
		PrivateKey: r.cfg.PrivateKey, KeyID: r.cfg.KeyID, KeyRing: ring,
		EventProvider: r.eventProvider(spec.ServerName(server)),
		UserIDQuerier: userIDForSender,
	})
	if ferr != nil {
		return nil, remoteErr(ferr.Err)
	}
	return linearise(res)
}

// linearise turns the checked send_join response into a RemoteJoin, as gmsl's
// LineariseStateResponse does (auth chain and state, each event once, after its auth events),
// but parsing each event once and holding it once: the response's JSON is dropped event by
// event as it is parsed, and each event is compacted (see compact), so the room's state is
// not pinned twice while roomserver stores it.
func linearise(res *gomatrixserverlib.PerformJoinResponse) (*roomserver.RemoteJoin, error) {
	ver, err := gomatrixserverlib.GetRoomVersion(res.JoinEvent.Version())
	if err != nil {
		return nil, err
	}
	join, err := compact(ver, res.JoinEvent)
	if err != nil {
		return nil, err
	}
	auth, state := res.StateSnapshot.GetAuthEvents(), res.StateSnapshot.GetStateEvents()
	byID := make(map[string]gomatrixserverlib.PDU, len(auth)+len(state))
	j := &roomserver.RemoteJoin{Event: join, State: make([]string, 0, len(state))}
	for k, list := range []gomatrixserverlib.EventJSONs{auth, state} {
		for i, js := range list {
			list[i] = nil // the parsed event replaces it
			ev, err := ver.NewEventFromUntrustedJSON(js)
			if ve, ok := err.(gomatrixserverlib.EventValidationError); err != nil && !(ok && ve.Persistable) {
				continue // as gmsl's EventJSONs.UntrustedEvents
			}
			if ev, err = compact(ver, ev); err != nil {
				return nil, err
			}
			byID[ev.EventID()] = ev
			if k == 1 {
				j.State = append(j.State, ev.EventID())
			}
		}
	}
	all := make([]gomatrixserverlib.PDU, 0, len(byID))
	for _, ev := range byID {
		all = append(all, ev)
	}
	j.Events = gomatrixserverlib.ReverseTopologicalOrdering(all, gomatrixserverlib.TopologicalOrderByAuthEvents)
	return j, nil
}

// compact returns ev re-parsed from its own canonical JSON. gmsl's untrusted parse keeps
// content and unsigned as slices of the JSON it was given (spec.RawJSON does not copy), which
// for a send_join response is the whole response body or gmsl's checked copy of it: the
// compacted event holds only its own JSON.
func compact(ver gomatrixserverlib.IRoomVersion, ev gomatrixserverlib.PDU) (gomatrixserverlib.PDU, error) {
	out, err := ver.NewEventFromTrustedJSONWithEventID(ev.EventID(), ev.JSON(), ev.Redacted())
	if err != nil {
		return nil, fmt.Errorf("re-parsing event %s: %w", ev.EventID(), err)
	}
	return out, nil
}

// eventProvider fetches auth events missing from a send_join response from server. It returns
// exactly the requested events it could fetch (gmsl loops forever on anything else).
func (r *Remote) eventProvider(server spec.ServerName) gomatrixserverlib.EventProvider {
	return func(ver gomatrixserverlib.RoomVersion, ids []string) ([]gomatrixserverlib.PDU, error) {
		verImpl, err := gomatrixserverlib.GetRoomVersion(ver)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var out []gomatrixserverlib.PDU
		for _, id := range ids {
			txn, err := r.fed.GetEvent(ctx, spec.ServerName(r.cfg.ServerName), server, id)
			if err != nil || len(txn.PDUs) == 0 {
				continue
			}
			ev, err := verImpl.NewEventFromUntrustedJSON(txn.PDUs[0])
			if err != nil || ev.EventID() != id {
				continue
			}
			out = append(out, ev)
		}
		return out, nil
	}
}

// Invite implements roomserver.Remote: PUT /v2/invite to the invitee's server, whose signature
// on the returned event is checked.
func (r *Remote) Invite(ctx context.Context, ev gomatrixserverlib.PDU, stripped []json.RawMessage) (gomatrixserverlib.PDU, error) {
	target := ""
	if ev.StateKey() != nil {
		target = *ev.StateKey()
	}
	_, server, err := matrix.SplitID('@', target)
	if err != nil {
		return nil, matrix.InvalidParam("invalid invitee %q", target)
	}
	// gmsl's invite request can only carry stripped events; MSC4311 wants the full create
	// event, so the body is built here.
	if stripped == nil {
		stripped = []json.RawMessage{}
	}
	body := struct {
		Event           json.RawMessage   `json:"event"`
		RoomVersion     string            `json:"room_version"`
		InviteRoomState []json.RawMessage `json:"invite_room_state"`
	}{ev.JSON(), string(ev.Version()), stripped}
	req := fclient.NewFederationRequest(http.MethodPut, spec.ServerName(r.cfg.ServerName), spec.ServerName(server),
		"/_matrix/federation/v2/invite/"+url.PathEscape(ev.RoomID().String())+"/"+url.PathEscape(ev.EventID()))
	if err := req.SetContent(body); err != nil {
		return nil, fmt.Errorf("building invite request: %w", err)
	}
	if err := req.Sign(spec.ServerName(r.cfg.ServerName), r.cfg.KeyID, r.cfg.PrivateKey); err != nil {
		return nil, fmt.Errorf("signing invite request: %w", err)
	}
	hr, err := req.HTTPRequest()
	if err != nil {
		return nil, fmt.Errorf("building invite request: %w", err)
	}
	var res struct {
		Event json.RawMessage `json:"event"`
	}
	if err := r.fed.DoRequestAndParseResponse(ctx, hr, &res); err != nil {
		return nil, remoteErr(err)
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(ev.Version())
	if err != nil {
		return nil, err
	}
	signed, err := verImpl.NewEventFromUntrustedJSON(res.Event)
	if err != nil {
		return nil, matrix.Errorf(http.StatusBadGateway, matrix.CodeUnknown, "invalid invite event from %s: %v", server, err)
	}
	if err := gomatrixserverlib.VerifyEventSignatures(ctx, signed, r.keys, userIDForSender); err != nil {
		return nil, matrix.Errorf(http.StatusBadGateway, matrix.CodeUnknown, "invite event from %s has bad signatures: %v", server, err)
	}
	return signed, nil
}

// Leave implements roomserver.Remote: make_leave, then send_leave with the event built from the
// template and signed by this server.
func (r *Remote) Leave(ctx context.Context, server, roomID, userID string, content map[string]any) (gomatrixserverlib.PDU, error) {
	origin := spec.ServerName(r.cfg.ServerName)
	res, err := r.fed.MakeLeave(ctx, origin, spec.ServerName(server), roomID, userID)
	if err != nil {
		return nil, remoteErr(err)
	}
	ev, err := r.fill(res.LeaveEvent, res.RoomVersion, roomID, userID, content)
	if err != nil {
		return nil, err
	}
	if err := r.fed.SendLeave(ctx, origin, spec.ServerName(server), ev); err != nil {
		return nil, remoteErr(err)
	}
	return ev, nil
}

// Knock implements roomserver.Remote: make_knock (offering our room versions), then send_knock.
func (r *Remote) Knock(ctx context.Context, server, roomID, userID string, content map[string]any) (gomatrixserverlib.PDU, []json.RawMessage, error) {
	origin := spec.ServerName(r.cfg.ServerName)
	vers := make([]gomatrixserverlib.RoomVersion, len(r.cfg.RoomVersions))
	for i, v := range r.cfg.RoomVersions {
		vers[i] = gomatrixserverlib.RoomVersion(v)
	}
	res, err := r.fed.MakeKnock(ctx, origin, spec.ServerName(server), roomID, userID, vers)
	if err != nil {
		return nil, nil, remoteErr(err)
	}
	ev, err := r.fill(res.KnockEvent, res.RoomVersion, roomID, userID, content)
	if err != nil {
		return nil, nil, err
	}
	sent, err := r.fed.SendKnock(ctx, origin, spec.ServerName(server), ev)
	if err != nil {
		return nil, nil, remoteErr(err)
	}
	stripped := make([]json.RawMessage, 0, len(sent.KnockRoomState))
	for _, st := range sent.KnockRoomState {
		b, err := json.Marshal(st)
		if err != nil {
			return nil, nil, fmt.Errorf("encoding knock room state: %w", err)
		}
		stripped = append(stripped, b)
	}
	return ev, stripped, nil
}

// Alias implements roomserver.Remote: GET /query/directory on the alias's server.
func (r *Remote) Alias(ctx context.Context, server, alias string) (string, []string, error) {
	res, err := r.fed.LookupRoomAlias(ctx, spec.ServerName(r.cfg.ServerName), spec.ServerName(server), alias)
	if err != nil {
		return "", nil, remoteErr(err)
	}
	servers := make([]string, 0, len(res.Servers))
	for _, s := range res.Servers {
		servers = append(servers, string(s))
	}
	return res.RoomID, servers, nil
}

// Profile asks userID's server for their profile (GET /query/profile). A Matrix error of
// that server (404 M_NOT_FOUND for an unknown user) comes back as a *matrix.Error.
func (r *Remote) Profile(ctx context.Context, userID string) (displayName, avatarURL string, err error) {
	_, server, err := gomatrixserverlib.SplitID('@', userID)
	if err != nil {
		return "", "", matrix.InvalidParam("%q is not a user ID", userID)
	}
	res, err := r.fed.LookupProfile(ctx, spec.ServerName(r.cfg.ServerName), server, userID, "")
	if err != nil {
		return "", "", remoteErr(err)
	}
	return res.DisplayName, res.AvatarURL, nil
}

// fill builds and signs the member event from a make_leave/make_knock template, keeping the
// template's membership and taking the rest of the content from content.
func (r *Remote) fill(proto gomatrixserverlib.ProtoEvent, ver gomatrixserverlib.RoomVersion, roomID, userID string, content map[string]any) (gomatrixserverlib.PDU, error) {
	if ver == "" {
		ver = gomatrixserverlib.RoomVersionV1
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(ver)
	if err != nil {
		return nil, matrix.Errorf(http.StatusBadRequest, matrix.CodeIncompatibleRoomVer, "room version %s is not supported", ver)
	}
	var tmpl map[string]any
	_ = json.Unmarshal(proto.Content, &tmpl)
	membership, _ := tmpl["membership"].(string)
	c := map[string]any{}
	for k, v := range content {
		c[k] = v
	}
	if membership != "" {
		c["membership"] = membership
	}
	proto.Type, proto.RoomID, proto.SenderID, proto.StateKey, proto.Redacts = spec.MRoomMember, roomID, userID, &userID, ""
	eb := verImpl.NewEventBuilderFromProtoEvent(&proto)
	if err := eb.SetContent(c); err != nil {
		return nil, fmt.Errorf("setting member content: %w", err)
	}
	if err := eb.SetUnsigned(struct{}{}); err != nil {
		return nil, fmt.Errorf("setting unsigned: %w", err)
	}
	ev, err := eb.Build(time.Now(), spec.ServerName(r.cfg.ServerName), r.cfg.KeyID, r.cfg.PrivateKey)
	if err != nil {
		return nil, matrix.Errorf(http.StatusBadGateway, matrix.CodeUnknown, "building member event from the template: %v", err)
	}
	return ev, nil
}

// remoteErr turns a remote server's Matrix error (a 4xx with errcode) into a *matrix.Error to
// pass on to the client; anything else is wrapped as it is.
func remoteErr(err error) error {
	var he gomatrix.HTTPError
	if errors.As(err, &he) && he.Code >= 400 && he.Code < 500 {
		var body struct {
			ErrCode string `json:"errcode"`
			Error   string `json:"error"`
		}
		if json.Unmarshal(he.Contents, &body) == nil && body.ErrCode != "" {
			return fmt.Errorf("%w: %w", matrix.Errorf(he.Code, body.ErrCode, "%s", body.Error), err)
		}
	}
	return err
}

// userIDForSender maps a sender ID to a user ID: Myelin has no pseudo-ID rooms.
func userIDForSender(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
	if senderID == "" {
		return nil, errors.New("empty sender")
	}
	u := senderID.ToUserID()
	if u == nil {
		return nil, fmt.Errorf("sender %q is not a user ID", senderID)
	}
	return u, nil
}
