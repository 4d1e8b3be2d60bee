package clientapi

import (
	"errors"
	"net/http"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/userapi"
)

func (s *Service) loginFlows(w http.ResponseWriter, r *http.Request) error {
	flows := []map[string]string{{"type": stagePassword}}
	if len(s.apps.Services()) > 0 {
		flows = append(flows, map[string]string{"type": loginAppService})
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{"flows": flows})
}

type loginRequest struct {
	Type                     string      `json:"type"`
	Identifier               *identifier `json:"identifier"`
	User                     string      `json:"user"`
	Password                 string      `json:"password"`
	DeviceID                 string      `json:"device_id"`
	InitialDeviceDisplayName string      `json:"initial_device_display_name"`
	RefreshToken             bool        `json:"refresh_token"`
}

func (s *Service) login(w http.ResponseWriter, r *http.Request) error {
	var req loginRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if err := s.limit(s.logLimit, r); err != nil {
		return err
	}
	if req.Type != stagePassword && req.Type != loginAppService {
		return matrix.Errorf(http.StatusBadRequest, matrix.CodeUnknown, "login type %q is not supported", req.Type)
	}
	who := req.User
	if req.Identifier != nil {
		if req.Identifier.Type != "m.id.user" {
			return matrix.Errorf(http.StatusBadRequest, matrix.CodeUnknown, "identifier type %q is not supported", req.Identifier.Type)
		}
		who = req.Identifier.User
	}
	if who == "" {
		return matrix.MissingParam("identifier.user is required")
	}
	userID, ok := s.users.NormaliseLogin(who)
	if !ok {
		return matrix.Forbidden("invalid username or password")
	}
	var err error
	if req.Type == loginAppService {
		err = s.checkAppServiceLogin(r, userID)
	} else {
		err = s.users.CheckPassword(r.Context(), userID, req.Password)
	}
	switch {
	case errors.Is(err, userapi.ErrDeactivated):
		return matrix.Errorf(http.StatusForbidden, matrix.CodeUserDeactivated, "this account has been deactivated")
	case errors.Is(err, userapi.ErrNoSuchUser), errors.Is(err, userapi.ErrBadPassword):
		return matrix.Forbidden("invalid username or password")
	case err != nil:
		return err
	}
	sess, err := s.users.StartSession(r.Context(), userapi.LoginRequest{
		UserID: userID, DeviceID: req.DeviceID, DisplayName: req.InitialDeviceDisplayName,
		Refresh: req.RefreshToken, IP: s.clientIP(r), UserAgent: r.UserAgent(),
	})
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, s.sessionResponse(sess))
}

// checkAppServiceLogin checks that the request carries the as_token of an application
// service that may log in as userID, an existing user in its user namespaces. It returns
// 401 M_MISSING_TOKEN or M_UNKNOWN_TOKEN, 403 M_EXCLUSIVE for a user outside the
// namespaces, and userapi.ErrNoSuchUser or ErrDeactivated.
func (s *Service) checkAppServiceLogin(r *http.Request, userID string) error {
	token, err := accessToken(r)
	if err != nil {
		return err
	}
	as := s.apps.ByToken(token)
	if as == nil {
		return matrix.Errorf(http.StatusUnauthorized, matrix.CodeUnknownToken, "unknown application service token")
	}
	if !as.IsInterestedInUser(userID) {
		return matrix.Errorf(http.StatusForbidden, matrix.CodeExclusive, "%s is not in the application service's user namespaces", userID)
	}
	acct, err := s.users.Account(r.Context(), userID)
	if err != nil {
		return err
	}
	if acct.Deactivated {
		return userapi.ErrDeactivated
	}
	return nil
}

func (s *Service) refresh(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		RefreshToken string `json:"refresh_token"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if req.RefreshToken == "" {
		return matrix.MissingParam("refresh_token is required")
	}
	sess, err := s.users.Refresh(r.Context(), req.RefreshToken)
	if errors.Is(err, userapi.ErrUnknownToken) {
		return matrix.Errorf(http.StatusUnauthorized, matrix.CodeUnknownToken, "unknown refresh token").With("soft_logout", false)
	}
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{
		"access_token": sess.AccessToken, "refresh_token": sess.RefreshToken, "expires_in_ms": sess.ExpiresIn.Milliseconds(),
	})
}

func (s *Service) logout(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	if err := s.users.DeleteDevices(r.Context(), dev.UserID, []string{dev.DeviceID}); err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

func (s *Service) logoutAll(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	if err := s.users.LogoutAll(r.Context(), dev.UserID); err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

func (s *Service) whoami(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	out := map[string]any{"user_id": dev.UserID, "is_guest": dev.IsGuest}
	if dev.DeviceID != "" { // an application service acting without a device has none
		out["device_id"] = dev.DeviceID
	}
	return httpx.WriteJSON(w, http.StatusOK, out)
}
