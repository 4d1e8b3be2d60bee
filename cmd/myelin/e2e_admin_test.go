package main

import (
	"net/http"
	"testing"

	"github.com/myelin-chat/myelin/internal/testkit"
)

// TestAdminRegistrationTokens covers the Synapse-compatible registration-token admin API and
// the Client-Server validity check: an admin makes a one-use token, it lets one user register
// and then stops being valid; non-admins are refused.
func TestAdminRegistrationTokens(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b testkit.Backend) {
		s := startServer(t, b, serverOpts{requiresToken: true, tokens: []string{"bootstrap"}})
		if out, err := s.myelinctl(t, "create-account", "-u", "root", "-p", "rootpw", "--admin", "--config", s.config); err != nil {
			t.Fatalf("create-account --admin: %v\n%s", err, out)
		}
		admin := s.login(t, "root", "rootpw")
		plain := s.register(t, "pat", "pw", "auth", map[string]string{"type": "m.login.registration_token", "token": "bootstrap"})
		base := "/_synapse/admin/v1/registration_tokens"

		plain.do(t, "GET", base, nil).wantErr(t, http.StatusForbidden, "M_FORBIDDEN")
		s.anon().do(t, "GET", base, nil).wantErr(t, http.StatusUnauthorized, "M_MISSING_TOKEN")
		admin.do(t, "POST", base+"/new", map[string]any{"token": "bad token!"}).wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")

		made := admin.do(t, "POST", base+"/new", map[string]any{"token": "once-only", "uses_allowed": 1}).wantOK(t)
		if made["token"] != "once-only" || made["uses_allowed"] != float64(1) {
			t.Fatalf("new token: got %v; want once-only with 1 use", made)
		}
		admin.do(t, "POST", base+"/new", map[string]any{"token": "once-only"}).wantErr(t, http.StatusBadRequest, "M_INVALID_PARAM")
		gen := admin.do(t, "POST", base+"/new", map[string]any{"length": 20}).wantOK(t)
		if tok, _ := gen["token"].(string); len(tok) != 20 {
			t.Errorf("generated token: got %q; want 20 characters", tok)
		}

		validity := "/_matrix/client/v1/register/m.login.registration_token/validity?token="
		if got := s.anon().do(t, "GET", validity+"once-only", nil).wantOK(t)["valid"]; got != true {
			t.Fatalf("validity before use: got %v; want true", got)
		}
		s.anon().do(t, "POST", v3+"/register", map[string]any{"username": "quinn", "password": "pw",
			"auth": map[string]string{"type": "m.login.registration_token", "token": "once-only"}}).wantOK(t)
		if got := s.anon().do(t, "GET", validity+"once-only", nil).wantOK(t)["valid"]; got != false {
			t.Fatalf("validity after its one use: got %v; want false", got)
		}
		got := admin.do(t, "GET", base+"/once-only", nil).wantOK(t)
		if got["completed"] != float64(1) {
			t.Errorf("completed: got %v; want 1", got["completed"])
		}
		// Raising the limit makes it valid again; deleting it removes it.
		admin.do(t, "PUT", base+"/once-only", map[string]any{"uses_allowed": 2}).wantOK(t)
		if got := s.anon().do(t, "GET", validity+"once-only", nil).wantOK(t)["valid"]; got != true {
			t.Fatalf("validity after raising uses_allowed: got %v; want true", got)
		}
		list := admin.do(t, "GET", base, nil).wantOK(t)
		if toks, _ := list["registration_tokens"].([]any); len(toks) != 2 {
			t.Errorf("list: got %v; want 2 tokens", list)
		}
		admin.do(t, "DELETE", base+"/once-only", nil).wantOK(t)
		admin.do(t, "GET", base+"/once-only", nil).wantErr(t, http.StatusNotFound, "M_NOT_FOUND")
	})
}
