package clientapi

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"

	"github.com/myelin-chat/myelin/appservice"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/userapi"
)

// loginAppService is the login and registration type of application services.
const loginAppService = "m.login.application_service"

type registerRequest struct {
	Type                     string          `json:"type"` // m.login.application_service, or "" for the UIA flows
	Username                 string          `json:"username"`
	Password                 string          `json:"password"`
	DeviceID                 string          `json:"device_id"`
	InitialDeviceDisplayName string          `json:"initial_device_display_name"`
	InhibitLogin             bool            `json:"inhibit_login"`
	RefreshToken             bool            `json:"refresh_token"`
	Auth                     json.RawMessage `json:"auth"`
}

type sessionResponse struct {
	UserID       string `json:"user_id"`
	AccessToken  string `json:"access_token,omitempty"`
	DeviceID     string `json:"device_id,omitempty"`
	HomeServer   string `json:"home_server,omitempty"`
	RefreshToken string `json:"refresh_token,omitempty"`
	ExpiresInMS  int64  `json:"expires_in_ms,omitempty"`
}

func (s *Service) sessionResponse(sess *userapi.Session) sessionResponse {
	return sessionResponse{
		UserID: sess.UserID, AccessToken: sess.AccessToken, DeviceID: sess.DeviceID,
		HomeServer: s.global.ServerName, RefreshToken: sess.RefreshToken, ExpiresInMS: sess.ExpiresIn.Milliseconds(),
	}
}

// registrationFlows are the auth flows /register offers.
func (s *Service) registrationFlows() [][]string {
	if s.cfg.RegistrationRequiresToken {
		return [][]string{{stageToken}}
	}
	return [][]string{{stageDummy}}
}

// checkLocalpart lower-cases a requested localpart and checks it is valid and free.
func (s *Service) checkLocalpart(r *http.Request, name string) (string, error) {
	return s.checkLocalpartFor(r, name, nil)
}

// checkLocalpartFor lower-cases a localpart requested by application service as (nil: by a
// user) and checks it is valid, free and the requester's to take: a service may register
// only users in its user namespaces and outside other services' exclusive ones, a user
// only outside every exclusive one (400 M_EXCLUSIVE).
func (s *Service) checkLocalpartFor(r *http.Request, name string, as *appservice.Service) (string, error) {
	local := strings.ToLower(name)
	if !matrix.ValidLocalpart(local) {
		return "", matrix.Errorf(http.StatusBadRequest, matrix.CodeInvalidUsername, "user ID may contain only a-z, 0-9, and ._=-/+")
	}
	userID := matrix.UserID(local, s.global.ServerName)
	if len(userID) > 255 {
		return "", matrix.Errorf(http.StatusBadRequest, matrix.CodeInvalidUsername, "user ID is longer than 255 bytes")
	}
	if as != nil && !as.IsInterestedInUser(userID) {
		return "", matrix.Errorf(http.StatusBadRequest, matrix.CodeExclusive, "%s is not in the application service's user namespaces", userID)
	}
	for _, other := range s.apps.Services() {
		if other != as && other.IsExclusiveUser(userID) {
			return "", matrix.Errorf(http.StatusBadRequest, matrix.CodeExclusive, "%s is reserved by an application service", userID)
		}
	}
	taken, err := s.users.Exists(r.Context(), local)
	if err != nil {
		return "", err
	}
	if taken {
		return "", matrix.Errorf(http.StatusBadRequest, matrix.CodeUserInUse, "user ID already taken")
	}
	return local, nil
}

func checkPassword(p string) error {
	if len(p) > 72 {
		return matrix.Errorf(http.StatusBadRequest, matrix.CodeWeakPassword, "password must be at most 72 bytes")
	}
	return nil
}

func (s *Service) register(w http.ResponseWriter, r *http.Request) error {
	var req registerRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if req.Type == loginAppService {
		return s.registerAppServiceUser(w, r, req)
	}
	if err := s.limit(s.regLimit, r); err != nil {
		return err
	}
	kind := r.URL.Query().Get("kind")
	switch kind {
	case "", "user":
	case "guest":
		return s.registerGuest(w, r, req)
	default:
		return matrix.InvalidParam("kind must be user or guest")
	}
	if s.cfg.RegistrationDisabled {
		return matrix.Forbidden("registration is disabled")
	}
	local := ""
	if req.Username != "" {
		var err error
		if local, err = s.checkLocalpart(r, req.Username); err != nil {
			return err
		}
	}
	if err := checkPassword(req.Password); err != nil {
		return err
	}
	sess, err := s.interactiveAuth(r, req.Auth, "", s.registrationFlows())
	if err != nil {
		return err
	}
	if req.Password == "" {
		return matrix.MissingParam("password is required")
	}
	if local == "" {
		local = randomLocalpart("", 12)
	}
	userID, err := s.users.CreateAccount(r.Context(), userapi.NewAccount{Localpart: local, Password: req.Password})
	if errors.Is(err, userapi.ErrUserInUse) {
		return matrix.Errorf(http.StatusBadRequest, matrix.CodeUserInUse, "user ID already taken")
	}
	if err != nil {
		return err
	}
	if slices.Contains(sess.Completed, stageToken) {
		var auth authDict
		_ = json.Unmarshal(req.Auth, &auth)
		if err := s.users.UseRegistrationToken(r.Context(), auth.Token); err != nil {
			return err
		}
	}
	s.users.DeleteUIASession(r.Context(), sess.ID)
	s.log.Info("registered user", "user_id", userID)
	if req.InhibitLogin {
		return httpx.WriteJSON(w, http.StatusOK, sessionResponse{UserID: userID, HomeServer: s.global.ServerName})
	}
	login, err := s.users.StartSession(r.Context(), userapi.LoginRequest{
		UserID: userID, DeviceID: req.DeviceID, DisplayName: req.InitialDeviceDisplayName,
		Refresh: req.RefreshToken, IP: s.clientIP(r), UserAgent: r.UserAgent(),
	})
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, s.sessionResponse(login))
}

// registerAppServiceUser registers a user for the application service whose as_token the
// request carries, without a password or user-interactive auth, even when registration is
// disabled. It returns 401 M_MISSING_TOKEN or M_UNKNOWN_TOKEN without a valid as_token, 400
// M_MISSING_PARAM without a username, 400 M_EXCLUSIVE for a user outside the service's
// namespaces or in another service's exclusive one, and 400 M_USER_IN_USE.
func (s *Service) registerAppServiceUser(w http.ResponseWriter, r *http.Request, req registerRequest) error {
	token, err := accessToken(r)
	if err != nil {
		return err
	}
	as := s.apps.ByToken(token)
	if as == nil {
		return matrix.Errorf(http.StatusUnauthorized, matrix.CodeUnknownToken, "unknown application service token")
	}
	if req.Username == "" {
		return matrix.MissingParam("username is required")
	}
	local, err := s.checkLocalpartFor(r, req.Username, as)
	if err != nil {
		return err
	}
	userID, err := s.users.CreateAccount(r.Context(), userapi.NewAccount{Localpart: local})
	if errors.Is(err, userapi.ErrUserInUse) {
		return matrix.Errorf(http.StatusBadRequest, matrix.CodeUserInUse, "user ID already taken")
	}
	if err != nil {
		return err
	}
	s.log.Info("registered user for an application service", "user_id", userID, "appservice", as)
	if req.InhibitLogin {
		return httpx.WriteJSON(w, http.StatusOK, sessionResponse{UserID: userID, HomeServer: s.global.ServerName})
	}
	login, err := s.users.StartSession(r.Context(), userapi.LoginRequest{
		UserID: userID, DeviceID: req.DeviceID, DisplayName: req.InitialDeviceDisplayName,
		Refresh: req.RefreshToken, IP: s.clientIP(r), UserAgent: r.UserAgent(),
	})
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, s.sessionResponse(login))
}

func (s *Service) registerGuest(w http.ResponseWriter, r *http.Request, req registerRequest) error {
	if s.cfg.GuestsDisabled {
		return matrix.Errorf(http.StatusForbidden, matrix.CodeGuestAccessForbidden, "guest access is disabled")
	}
	local := randomLocalpart("guest-", 10)
	userID, err := s.users.CreateAccount(r.Context(), userapi.NewAccount{Localpart: local, Guest: true})
	if err != nil {
		return err
	}
	login, err := s.users.StartSession(r.Context(), userapi.LoginRequest{
		UserID: userID, DisplayName: req.InitialDeviceDisplayName, IP: s.clientIP(r), UserAgent: r.UserAgent(),
	})
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, s.sessionResponse(login))
}

func (s *Service) registerAvailable(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.RegistrationDisabled {
		return matrix.Forbidden("registration is disabled")
	}
	if err := s.limit(s.regLimit, r); err != nil {
		return err
	}
	name := r.URL.Query().Get("username")
	if name == "" {
		return matrix.MissingParam("username is required")
	}
	if _, err := s.checkLocalpart(r, name); err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]bool{"available": true})
}

// The shared-secret registration API of Synapse, used by admin tools and Complement.

func (s *Service) adminRegisterNonce(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.RegistrationSharedSecret == "" {
		return matrix.Errorf(http.StatusBadRequest, matrix.CodeUnknown, "shared secret registration is not enabled")
	}
	n, err := s.users.NewAdminNonce(r.Context())
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]string{"nonce": n})
}

type adminRegisterRequest struct {
	Nonce       string `json:"nonce"`
	Username    string `json:"username"`
	DisplayName string `json:"displayname"`
	Password    string `json:"password"`
	Admin       bool   `json:"admin"`
	UserType    string `json:"user_type"`
	MAC         string `json:"mac"`
}

func (s *Service) adminRegister(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.RegistrationSharedSecret == "" {
		return matrix.Errorf(http.StatusBadRequest, matrix.CodeUnknown, "shared secret registration is not enabled")
	}
	var req adminRegisterRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if req.Nonce == "" || req.Username == "" || req.Password == "" || req.MAC == "" {
		return matrix.MissingParam("nonce, username, password and mac are required")
	}
	mac := hmac.New(sha1.New, []byte(s.cfg.RegistrationSharedSecret))
	mac.Write([]byte(req.Nonce + "\x00" + req.Username + "\x00" + req.Password + "\x00"))
	if req.Admin {
		mac.Write([]byte("admin"))
	} else {
		mac.Write([]byte("notadmin"))
	}
	if req.UserType != "" {
		mac.Write([]byte("\x00" + req.UserType))
	}
	got, err := hex.DecodeString(req.MAC)
	if err != nil || !hmac.Equal(got, mac.Sum(nil)) {
		return matrix.Forbidden("HMAC incorrect")
	}
	if err := s.users.UseAdminNonce(r.Context(), req.Nonce); err != nil {
		if errors.Is(err, userapi.ErrNotFound) {
			return matrix.Errorf(http.StatusBadRequest, matrix.CodeUnknown, "unrecognised nonce")
		}
		return err
	}
	local, err := s.checkLocalpart(r, req.Username)
	if err != nil {
		return err
	}
	if err := checkPassword(req.Password); err != nil {
		return err
	}
	userID, err := s.users.CreateAccount(r.Context(), userapi.NewAccount{
		Localpart: local, Password: req.Password, Admin: req.Admin, DisplayName: req.DisplayName,
	})
	if errors.Is(err, userapi.ErrUserInUse) {
		return matrix.Errorf(http.StatusBadRequest, matrix.CodeUserInUse, "user ID already taken")
	}
	if err != nil {
		return err
	}
	s.log.Info("registered user with the shared secret", "user_id", userID, "admin", req.Admin)
	login, err := s.users.StartSession(r.Context(), userapi.LoginRequest{UserID: userID, IP: s.clientIP(r), UserAgent: r.UserAgent()})
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, s.sessionResponse(login))
}

// randomLocalpart returns prefix followed by n random characters valid in a localpart, for
// users who did not choose a name.
func randomLocalpart(prefix string, n int) string {
	return prefix + strings.Map(func(r rune) rune {
		if matrix.ValidLocalpart(string(r)) {
			return r
		}
		return 'x'
	}, strings.ToLower(userapi.RandomString(n)))
}
