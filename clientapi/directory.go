package clientapi

import (
	"context"
	"net/http"
	"strconv"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/userapi"
)

// This file serves the published room directory: GET/PUT /directory/list/room/{roomId} and
// GET/POST /publicRooms. Only this server's directory is served; another server's needs
// federation.

// Directory is what the alias, room directory and room summary endpoints need of the
// roomserver; Rooms includes it.
type Directory interface {
	CreateAlias(ctx context.Context, alias, roomID, creator string) error
	Alias(ctx context.Context, alias string) (roomID, creator string, err error)
	DeleteAlias(ctx context.Context, alias string) (roomID string, err error)
	RoomAliases(ctx context.Context, roomID string) ([]string, error)
	MaySendState(ctx context.Context, roomID, userID, evType string) (bool, error)
	JoinedMembers(ctx context.Context, roomID string) ([]string, error)
	SetPublished(ctx context.Context, roomID string, published bool) error
	Published(ctx context.Context, roomID string) (bool, error)
	PublicRooms(ctx context.Context, req roomserver.PublicRoomsRequest) (*roomserver.PublicRoomsPage, error)
	RoomSummary(ctx context.Context, roomID string) (*roomserver.RoomSummary, error)
}

// registerDirectory adds the alias, room directory and room summary routes.
func (s *Service) registerDirectory(c httpx.Prefix) {
	h := httpx.Handler
	get, post, put, del := http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete
	c.Handle("/directory/room/{roomAlias}", s.authed(s.putAlias)).Methods(put)
	c.Handle("/directory/room/{roomAlias}", h(s.getAlias)).Methods(get)
	c.Handle("/directory/room/{roomAlias}", s.authed(s.deleteAlias)).Methods(del)
	c.Handle("/rooms/{roomID}/aliases", s.authed(s.roomAliases)).Methods(get)
	c.Handle("/directory/list/room/{roomID}", h(s.getVisibility)).Methods(get)
	c.Handle("/directory/list/room/{roomID}", s.authed(s.putVisibility)).Methods(put)
	c.Handle("/publicRooms", h(s.getPublicRooms)).Methods(get)
	c.Handle("/publicRooms", s.authed(s.postPublicRooms)).Methods(post)
	c.Router.Handle("/_matrix/client/v1/room_summary/{roomIDOrAlias}", h(s.roomSummary)).Methods(get)
}

type visibility struct {
	Visibility string `json:"visibility"`
}

func (s *Service) getVisibility(w http.ResponseWriter, r *http.Request) error {
	public, err := s.rooms.Published(r.Context(), httpx.Var(r, "roomID"))
	if err != nil {
		return roomErr(err)
	}
	v := visibility{Visibility: "private"}
	if public {
		v.Visibility = "public"
	}
	return httpx.WriteJSON(w, http.StatusOK, v)
}

func (s *Service) putVisibility(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	var req visibility
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if err := s.setVisibility(r.Context(), dev.UserID, httpx.Var(r, "roomID"), req.Visibility); err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

// setVisibility publishes roomID in the directory ("public", the default) or withdraws it
// ("private") for userID, who must be joined with the power to change the canonical alias,
// as Synapse requires. Errors: 400 M_INVALID_PARAM, 404 for an unknown room, 403.
func (s *Service) setVisibility(ctx context.Context, userID, roomID, vis string) error {
	var public bool
	switch vis {
	case "", "public":
		public = true
	case "private":
	default:
		return matrix.InvalidParam("visibility must be public or private")
	}
	if _, err := s.rooms.RoomVersion(ctx, roomID); err != nil {
		return roomErr(err)
	}
	if err := s.requireModerator(ctx, roomID, userID); err != nil {
		return err
	}
	return roomErr(s.rooms.SetPublished(ctx, roomID, public))
}

// publicRoomsRequest is the body of POST /publicRooms.
type publicRoomsRequest struct {
	Limit  int    `json:"limit"`
	Since  string `json:"since"`
	Filter struct {
		GenericSearchTerm string    `json:"generic_search_term"`
		RoomTypes         []*string `json:"room_types"`
	} `json:"filter"`
	IncludeAllNetworks   bool   `json:"include_all_networks"`
	ThirdPartyInstanceID string `json:"third_party_instance_id"`
}

// publicRoom is one entry of a published rooms chunk.
type publicRoom = matrix.PublicRoom

func toPublicRoom(r *roomserver.RoomSummary) publicRoom {
	return publicRoom{
		RoomID: r.RoomID, Name: r.Name, Topic: r.Topic, CanonicalAlias: r.CanonicalAlias, AvatarURL: r.AvatarURL,
		NumJoinedMembers: r.JoinedMembers, WorldReadable: r.WorldReadable(), GuestCanJoin: r.GuestCanJoin(),
		JoinRule: r.JoinRule, RoomType: r.RoomType,
	}
}

type publicRoomsResponse struct {
	Chunk     []publicRoom `json:"chunk"`
	NextBatch string       `json:"next_batch,omitempty"`
	PrevBatch string       `json:"prev_batch,omitempty"`
	Total     int64        `json:"total_room_count_estimate"`
}

func (s *Service) getPublicRooms(w http.ResponseWriter, r *http.Request) error {
	// The spec lets anyone read the directory; a token that is sent must still be valid.
	if _, err := s.optionalAuth(r); err != nil {
		return err
	}
	q := r.URL.Query()
	req := roomserver.PublicRoomsRequest{Since: q.Get("since")}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil {
			return matrix.InvalidParam("limit must be an integer")
		}
		req.Limit = n
	}
	resp, err := s.publicRooms(r.Context(), q.Get("server"), req)
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, resp)
}

func (s *Service) postPublicRooms(w http.ResponseWriter, r *http.Request, _ *userapi.Device) error {
	var body publicRoomsRequest
	if err := httpx.DecodeJSONOptional(r, &body); err != nil {
		return err
	}
	resp, err := s.publicRooms(r.Context(), r.URL.Query().Get("server"), roomserver.PublicRoomsRequest{
		Limit: body.Limit, Since: body.Since, Search: body.Filter.GenericSearchTerm, RoomTypes: body.Filter.RoomTypes,
	})
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, resp)
}

// publicRooms returns a page of the directory of server ("" or this server). Errors: 404
// M_NOT_FOUND for another server's directory (federation cannot ask it yet), 400
// M_INVALID_PARAM for a bad since token.
func (s *Service) publicRooms(ctx context.Context, server string, req roomserver.PublicRoomsRequest) (*publicRoomsResponse, error) {
	if server != "" && server != s.global.ServerName {
		return nil, matrix.NotFound("listing the room directory of %s is not supported yet", server)
	}
	page, err := s.rooms.PublicRooms(ctx, req)
	if err != nil {
		return nil, err
	}
	resp := &publicRoomsResponse{Chunk: make([]publicRoom, 0, len(page.Rooms)),
		NextBatch: page.NextBatch, PrevBatch: page.PrevBatch, Total: page.Total}
	for i := range page.Rooms {
		resp.Chunk = append(resp.Chunk, toPublicRoom(&page.Rooms[i]))
	}
	return resp, nil
}

// optionalAuth returns the device behind the request's access token, or nil when the
// request has none. A token that is sent but invalid is 401.
func (s *Service) optionalAuth(r *http.Request) (*userapi.Device, error) {
	if r.Header.Get("Authorization") == "" && r.URL.Query().Get("access_token") == "" {
		return nil, nil
	}
	return s.Authenticate(r)
}
