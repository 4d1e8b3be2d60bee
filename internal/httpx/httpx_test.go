package httpx_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
)

func TestDecodeJSONErrors(t *testing.T) {
	type body struct {
		Name string `json:"name"`
		N    int    `json:"n"`
	}
	for _, c := range []struct {
		name, in   string
		wantStatus int
		wantCode   string
	}{
		{"ok", `{"name":"x","n":1}`, 0, ""},
		{"not json", `{"name":`, 400, "M_NOT_JSON"},
		{"invalid utf-8", "{\"name\":\"a\x81\"}", 400, "M_NOT_JSON"},
		{"NaN", `{"n": NaN}`, 400, "M_NOT_JSON"},
		{"array", `[1,2]`, 400, "M_BAD_JSON"},
		{"string", `"eyJib2R5Ijp9"`, 400, "M_BAD_JSON"},
		{"wrong type", `{"n":"seven"}`, 400, "M_BAD_JSON"},
		{"too large", `{"name":"` + strings.Repeat("x", 200) + `"}`, 413, "M_TOO_LARGE"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var got body
			h := httpx.WithMaxBody(100)(httpx.Handler(func(w http.ResponseWriter, r *http.Request) error {
				if err := httpx.DecodeJSON(r, &got); err != nil {
					return err
				}
				return httpx.WriteJSON(w, 200, got)
			}))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("POST", "/", strings.NewReader(c.in)))
			if c.wantStatus == 0 {
				if rec.Code != 200 {
					t.Fatalf("got %d %s; want 200", rec.Code, rec.Body)
				}
				return
			}
			var e struct{ Errcode, Error string }
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
				t.Fatalf("error body is not JSON: %s", rec.Body)
			}
			if rec.Code != c.wantStatus || e.Errcode != c.wantCode || e.Error == "" {
				t.Fatalf("got %d %s %q; want %d %s", rec.Code, e.Errcode, e.Error, c.wantStatus, c.wantCode)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Fatalf("Content-Type: got %q; want application/json", ct)
			}
		})
	}
}

func TestRouterUnknownAndWrongMethod(t *testing.T) {
	r := httpx.NewRouter()
	ok := httpx.Handler(func(w http.ResponseWriter, r *http.Request) error {
		return httpx.WriteJSON(w, 200, map[string]string{})
	})
	r.Handle("/a/b", ok).Methods("GET")
	sub := httpx.Prefix{Router: r, Path: "/_matrix/client/{v:(?:r0|v3)}"}
	sub.Handle("/login", ok).Methods("GET", "POST")
	sub.Handle("/rooms/{roomID}/event/{eventID}", httpx.Handler(func(w http.ResponseWriter, r *http.Request) error {
		return httpx.WriteJSON(w, 200, map[string]string{"room": httpx.Var(r, "roomID"), "event": httpx.Var(r, "eventID")})
	})).Methods("GET")
	for _, c := range []struct {
		method, path string
		want         int
		code         string
	}{
		{"GET", "/a/b", 200, ""},
		{"GET", "/nope", 404, matrix.CodeUnrecognized},
		{"PUT", "/a/b", 405, matrix.CodeUnrecognized},
		{"PUT", "/_matrix/client/v3/login", 405, matrix.CodeUnrecognized},
		{"GET", "/_matrix/client/v3/room/unknown", 404, matrix.CodeUnrecognized},
	} {
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, httptest.NewRequest(c.method, c.path, nil))
		var e struct{ Errcode string }
		_ = json.Unmarshal(rec.Body.Bytes(), &e)
		if rec.Code != c.want || e.Errcode != c.code {
			t.Errorf("%s %s: got %d %q; want %d %q", c.method, c.path, rec.Code, e.Errcode, c.want, c.code)
		}
	}
	// A v3 event ID holds "/" and "+": encoded, it must reach the handler intact.
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, httptest.NewRequest("GET", "/_matrix/client/v3/rooms/%21r%3Ahs/event/%24ab%2Fc%2Bd", nil))
	var got map[string]string
	_ = json.Unmarshal(rec.Body.Bytes(), &got)
	if got["room"] != "!r:hs" || got["event"] != "$ab/c+d" {
		t.Errorf("encoded path variables: got %v; want !r:hs and $ab/c+d", got)
	}
}

func TestUIAChallengeHasNoErrcode(t *testing.T) {
	rec := httptest.NewRecorder()
	httpx.WriteError(t.Context(), rec, &matrix.Error{Status: 401, Extra: map[string]any{"session": "s"}})
	var got map[string]any
	_ = json.Unmarshal(rec.Body.Bytes(), &got)
	if _, has := got["errcode"]; has || got["session"] != "s" || rec.Code != 401 {
		t.Fatalf("got %d %v; want 401 with session and no errcode", rec.Code, got)
	}
}
