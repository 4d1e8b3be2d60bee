package clientapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/userapi"
)

// Auth stage types.
const (
	stageDummy    = "m.login.dummy"
	stagePassword = "m.login.password"
	stageToken    = "m.login.registration_token"
)

// authDict is the "auth" object of a user-interactive auth request.
type authDict struct {
	Type       string      `json:"type"`
	Session    string      `json:"session"`
	Password   string      `json:"password"`
	User       string      `json:"user"`
	Identifier *identifier `json:"identifier"`
	Token      string      `json:"token"`
}

// identifier is a login identifier.
type identifier struct {
	Type string `json:"type"`
	User string `json:"user"`
}

type flow struct {
	Stages []string `json:"stages"`
}

// uiaChallenge is the 401 body that tells a client what to do next.
func uiaChallenge(sessionID string, flows [][]string, completed []string, stageErr *matrix.Error) *matrix.Error {
	fs := make([]flow, len(flows))
	for i, f := range flows {
		fs[i] = flow{Stages: f}
	}
	e := &matrix.Error{Status: http.StatusUnauthorized, Code: "", Extra: map[string]any{
		"session": sessionID,
		"flows":   fs,
		"params":  map[string]any{},
	}}
	if len(completed) > 0 {
		e.Extra["completed"] = completed
	}
	if stageErr != nil {
		e.Code, e.Message = stageErr.Code, stageErr.Message
	}
	return e
}

// interactiveAuth runs one step of user-interactive auth for the request r, whose body held
// raw as its "auth" object. userID is the authenticated user ("" for registration), whose
// password m.login.password must check. It returns the completed session once some flow in
// flows is done, or an *matrix.Error: the 401 challenge, or a failure.
func (s *Service) interactiveAuth(r *http.Request, raw json.RawMessage, userID string, flows [][]string) (*userapi.UIASession, error) {
	ctx := r.Context()
	var auth authDict
	if len(raw) > 0 && string(raw) != "null" {
		if err := json.Unmarshal(raw, &auth); err != nil {
			return nil, matrix.BadJSON("auth must be an object")
		}
	}
	var sess *userapi.UIASession
	var err error
	if auth.Session != "" {
		sess, err = s.users.UIASession(ctx, auth.Session)
		if errors.Is(err, userapi.ErrNotFound) {
			return nil, matrix.Errorf(http.StatusBadRequest, matrix.CodeUnknown, "unknown auth session")
		}
		if err != nil {
			return nil, err
		}
		if sess.Method != r.Method || sess.URI != r.URL.Path || sess.UserID != userID {
			return nil, matrix.Forbidden("requested operation has changed during the auth session")
		}
	} else {
		if sess, err = s.users.NewUIASession(ctx, userID, r.Method, r.URL.Path); err != nil {
			return nil, err
		}
	}
	if auth.Type == "" {
		// A retry with only the session performs the call once a flow is complete.
		if flowDone(flows, sess.Completed) {
			return sess, nil
		}
		return nil, uiaChallenge(sess.ID, flows, sess.Completed, nil)
	}
	allowed := false
	for _, f := range flows {
		if slices.Contains(f, auth.Type) {
			allowed = true
		}
	}
	if !allowed {
		return nil, uiaChallenge(sess.ID, flows, sess.Completed,
			matrix.Errorf(http.StatusUnauthorized, matrix.CodeUnrecognized, "auth type %s is not offered", auth.Type))
	}
	switch auth.Type {
	case stageDummy:
	case stagePassword:
		who := auth.User
		if auth.Identifier != nil {
			if auth.Identifier.Type != "m.id.user" {
				return nil, uiaChallenge(sess.ID, flows, sess.Completed, matrix.Errorf(http.StatusUnauthorized, matrix.CodeUnknown, "only m.id.user identifiers are supported"))
			}
			who = auth.Identifier.User
		}
		if who == "" {
			who = userID
		}
		uid, ok := s.users.NormaliseLogin(who)
		if !ok {
			return nil, uiaChallenge(sess.ID, flows, sess.Completed, matrix.Forbidden("invalid username or password"))
		}
		err := s.users.CheckPassword(ctx, uid, auth.Password)
		switch {
		case err == nil && uid != userID:
			// Valid credentials, but for someone else.
			return nil, matrix.Forbidden("credentials are not those of the requesting user")
		case errors.Is(err, userapi.ErrBadPassword), errors.Is(err, userapi.ErrNoSuchUser), errors.Is(err, userapi.ErrDeactivated):
			return nil, uiaChallenge(sess.ID, flows, sess.Completed, matrix.Forbidden("invalid username or password"))
		case err != nil:
			return nil, err
		}
	case stageToken:
		ok, err := s.users.ValidRegistrationToken(ctx, auth.Token)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, uiaChallenge(sess.ID, flows, sess.Completed, matrix.Errorf(http.StatusUnauthorized, matrix.CodeUnauthorized, "invalid registration token"))
		}
	}
	if err := s.users.CompleteUIAStage(ctx, sess, auth.Type); err != nil {
		return nil, err
	}
	if flowDone(flows, sess.Completed) {
		return sess, nil
	}
	return nil, uiaChallenge(sess.ID, flows, sess.Completed, nil)
}

// flowDone reports whether completed covers every stage of some flow.
func flowDone(flows [][]string, completed []string) bool {
	for _, f := range flows {
		done := true
		for _, st := range f {
			if !slices.Contains(completed, st) {
				done = false
			}
		}
		if done {
			return true
		}
	}
	return false
}
