package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/gorilla/mux"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/userapi"
)

// RemoteProfiles asks other servers for their users' profiles over federation.
type RemoteProfiles interface {
	// Profile returns userID's display name and avatar URL from userID's server; a Matrix
	// error of that server is returned as a *matrix.Error.
	Profile(ctx context.Context, userID string) (displayName, avatarURL string, err error)
}

// profileOf returns userID's profile: from the user API for a local user, else from the
// user's server over federation.
func (s *Service) profileOf(r *http.Request) (*userapi.Profile, error) {
	userID := httpx.Var(r, "userID")
	if _, _, err := matrix.SplitID('@', userID); err != nil {
		return nil, matrix.InvalidParam("%q is not a user ID", userID)
	}
	if _, local := s.users.LocalUser(userID); !local {
		if s.profiles == nil {
			return nil, matrix.NotFound("profile of a remote user is not available")
		}
		name, avatar, err := s.profiles.Profile(r.Context(), userID)
		if err != nil {
			if me := matrix.AsError(err); me != nil {
				return nil, me
			}
			s.log.Info("remote profile query failed", "user_id", userID, "error", err)
			return nil, matrix.Errorf(http.StatusBadGateway, matrix.CodeUnknown, "failed to fetch the profile of %s", userID)
		}
		return &userapi.Profile{DisplayName: name, AvatarURL: avatar}, nil
	}
	p, err := s.users.Profile(r.Context(), userID)
	if errors.Is(err, userapi.ErrNoSuchUser) {
		return nil, matrix.NotFound("profile not found")
	}
	return p, err
}

func (s *Service) getProfile(w http.ResponseWriter, r *http.Request) error {
	p, err := s.profileOf(r)
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, p)
}

func (s *Service) getProfileField(w http.ResponseWriter, r *http.Request) error {
	p, err := s.profileOf(r)
	if err != nil {
		return err
	}
	field := httpx.Var(r, "field")
	v := p.DisplayName
	if field == "avatar_url" {
		v = p.AvatarURL
	}
	if v == "" {
		return matrix.NotFound("%s is not set", field)
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]string{field: v})
}

// maxProfileField bounds display names and avatar URLs (Synapse uses 256 and 1000).
const maxProfileField = 1000

func (s *Service) setProfileField(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	userID, field := httpx.Var(r, "userID"), httpx.Var(r, "field")
	var body map[string]json.RawMessage
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	if userID != dev.UserID {
		return matrix.Forbidden("cannot set the profile of another user")
	}
	var v *string
	if raw, ok := body[field]; ok {
		if err := json.Unmarshal(raw, &v); err != nil {
			return matrix.BadJSON("%s must be a string", field)
		}
	} else {
		return matrix.MissingParam("%s is required", field)
	}
	val := ""
	if v != nil {
		val = *v
	}
	if len(val) > maxProfileField {
		return matrix.Errorf(http.StatusBadRequest, matrix.CodeTooLarge, "%s is too long", field)
	}
	var err error
	if field == "displayname" {
		err = s.users.SetDisplayName(r.Context(), userID, val)
	} else {
		err = s.users.SetAvatarURL(r.Context(), userID, val)
	}
	if err != nil {
		return err
	}
	if err := s.updateMemberships(r.Context(), userID); err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

// serverControlledAccountData are account-data types clients may not write directly.
var serverControlledAccountData = map[string]bool{"m.fully_read": true, "m.push_rules": true}

func (s *Service) accountDataTarget(r *http.Request, dev *userapi.Device) (roomID, evType string, err error) {
	if httpx.Var(r, "userID") != dev.UserID {
		return "", "", matrix.Forbidden("cannot access the account data of another user")
	}
	roomID, evType = httpx.Var(r, "roomID"), httpx.Var(r, "type")
	if _, isRoom := mux.Vars(r)["roomID"]; isRoom && (len(roomID) < 2 || roomID[0] != '!') {
		return "", "", matrix.InvalidParam("%q is not a room ID", roomID)
	}
	return roomID, evType, nil
}

func (s *Service) getAccountData(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	roomID, evType, err := s.accountDataTarget(r, dev)
	if err != nil {
		return err
	}
	c, err := s.users.AccountData(r.Context(), dev.UserID, roomID, evType)
	if errors.Is(err, userapi.ErrNotFound) {
		return matrix.NotFound("account data not found")
	}
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	_, err = w.Write(c)
	return err
}

func (s *Service) putAccountData(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	var content map[string]json.RawMessage
	if err := httpx.DecodeJSON(r, &content); err != nil {
		return err
	}
	roomID, evType, err := s.accountDataTarget(r, dev)
	if err != nil {
		return err
	}
	if serverControlledAccountData[evType] {
		return matrix.Errorf(http.StatusMethodNotAllowed, matrix.CodeBadJSON, "%s is controlled by the server", evType)
	}
	raw, _ := json.Marshal(content)
	if err := s.users.SetAccountData(r.Context(), dev.UserID, roomID, evType, raw); err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

func (s *Service) putFilter(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	var f matrix.Filter
	if err := httpx.DecodeJSON(r, &f); err != nil {
		return err
	}
	if httpx.Var(r, "userID") != dev.UserID {
		return matrix.Forbidden("cannot create filters for another user")
	}
	raw, _ := json.Marshal(f)
	id, err := s.users.PutFilter(r.Context(), dev.UserID, raw)
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]string{"filter_id": id})
}

func (s *Service) getFilter(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	if httpx.Var(r, "userID") != dev.UserID {
		return matrix.Forbidden("cannot read the filters of another user")
	}
	f, err := s.users.Filter(r.Context(), dev.UserID, httpx.Var(r, "filterID"))
	if errors.Is(err, userapi.ErrNotFound) {
		return matrix.NotFound("no such filter")
	}
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	_, err = w.Write(f)
	return err
}
