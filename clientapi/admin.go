package clientapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/userapi"
)

// registerAdmin adds the admin API Myelin shares with Synapse (admin tools speak it) and the
// registration-token validity check of the Client-Server API.
func (s *Service) registerAdmin(r httpx.Prefix) {
	get, post, put, del := http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete
	r.Handle("/_synapse/admin/v1/registration_tokens", s.admin(s.listRegistrationTokens)).Methods(get)
	r.Handle("/_synapse/admin/v1/registration_tokens/new", s.admin(s.newRegistrationToken)).Methods(post)
	r.Handle("/_synapse/admin/v1/registration_tokens/{token}", s.admin(s.getRegistrationToken)).Methods(get)
	r.Handle("/_synapse/admin/v1/registration_tokens/{token}", s.admin(s.updateRegistrationToken)).Methods(put)
	r.Handle("/_synapse/admin/v1/registration_tokens/{token}", s.admin(s.deleteRegistrationToken)).Methods(del)
	r.Handle("/_matrix/client/v1/register/m.login.registration_token/validity", httpx.Handler(s.registrationTokenValidity)).Methods(get)
}

// admin wraps f so that it runs only for server admins (403 M_FORBIDDEN otherwise).
func (s *Service) admin(f authedFunc) http.Handler {
	return s.authed(func(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
		if !dev.IsAdmin {
			return matrix.Forbidden("you are not a server admin")
		}
		return f(w, r, dev)
	})
}

func (s *Service) listRegistrationTokens(w http.ResponseWriter, r *http.Request, _ *userapi.Device) error {
	ts, err := s.users.RegistrationTokens(r.Context())
	if err != nil {
		return err
	}
	if ts == nil {
		ts = []userapi.RegistrationToken{}
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{"registration_tokens": ts})
}

type tokenRequest struct {
	Token       string `json:"token"`
	Length      *int   `json:"length"`
	UsesAllowed *int64 `json:"uses_allowed"`
	ExpiryTime  *int64 `json:"expiry_time"`
}

// validTokenChars are the characters the spec allows in a registration token.
func validToken(t string) bool {
	if t == "" || len(t) > 64 {
		return false
	}
	for _, c := range t {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("._~-", c)) {
			return false
		}
	}
	return true
}

func (s *Service) newRegistrationToken(w http.ResponseWriter, r *http.Request, _ *userapi.Device) error {
	var req tokenRequest
	if err := httpx.DecodeJSONOptional(r, &req); err != nil {
		return err
	}
	if req.UsesAllowed != nil && *req.UsesAllowed < 0 {
		return matrix.InvalidParam("uses_allowed must be a non-negative integer or null")
	}
	if req.Token == "" {
		n := 16
		if req.Length != nil {
			if *req.Length < 1 || *req.Length > 64 {
				return matrix.InvalidParam("length must be between 1 and 64")
			}
			n = *req.Length
		}
		req.Token = strings.NewReplacer("-", "a", "_", "b").Replace(userapi.RandomString(n))
	}
	if !validToken(req.Token) {
		return matrix.InvalidParam("token must be 1-64 characters of A-Z, a-z, 0-9, ._~-")
	}
	t := userapi.RegistrationToken{Token: req.Token, UsesAllowed: req.UsesAllowed, ExpiryTime: req.ExpiryTime}
	err := s.users.CreateRegistrationToken(r.Context(), t)
	if errors.Is(err, sqldb.ErrExists) {
		return matrix.InvalidParam("token already exists")
	}
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, t)
}

func (s *Service) getRegistrationToken(w http.ResponseWriter, r *http.Request, _ *userapi.Device) error {
	t, err := s.users.RegistrationTokenByName(r.Context(), httpx.Var(r, "token"))
	if errors.Is(err, userapi.ErrNotFound) {
		return matrix.NotFound("no such registration token")
	}
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, t)
}

func (s *Service) updateRegistrationToken(w http.ResponseWriter, r *http.Request, _ *userapi.Device) error {
	var body map[string]json.RawMessage
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	name := httpx.Var(r, "token")
	cur, err := s.users.RegistrationTokenByName(r.Context(), name)
	if errors.Is(err, userapi.ErrNotFound) {
		return matrix.NotFound("no such registration token")
	}
	if err != nil {
		return err
	}
	// Absent keys keep their value; null clears the limit.
	for key, dst := range map[string]**int64{"uses_allowed": &cur.UsesAllowed, "expiry_time": &cur.ExpiryTime} {
		raw, ok := body[key]
		if !ok {
			continue
		}
		var v *int64
		if err := json.Unmarshal(raw, &v); err != nil || (v != nil && *v < 0) {
			return matrix.InvalidParam("%s must be a non-negative integer or null", key)
		}
		*dst = v
	}
	if err := s.users.UpdateRegistrationToken(r.Context(), name, cur.UsesAllowed, cur.ExpiryTime); err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, cur)
}

func (s *Service) deleteRegistrationToken(w http.ResponseWriter, r *http.Request, _ *userapi.Device) error {
	err := s.users.DeleteRegistrationToken(r.Context(), httpx.Var(r, "token"))
	if errors.Is(err, userapi.ErrNotFound) {
		return matrix.NotFound("no such registration token")
	}
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

func (s *Service) registrationTokenValidity(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.RegistrationDisabled {
		return matrix.Forbidden("registration is disabled")
	}
	if err := s.limit(s.regLimit, r); err != nil {
		return err
	}
	token := r.URL.Query().Get("token")
	if token == "" {
		return matrix.MissingParam("token is required")
	}
	ok, err := s.users.ValidRegistrationToken(r.Context(), token)
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]bool{"valid": ok})
}
