// Package httpx adapts Myelin's handlers to net/http: handlers return an error, which becomes
// Matrix error JSON; JSON bodies are decoded with size limits; the router is gorilla/mux built so
// that paths are matched raw (v3 event IDs hold "/" and "+", federation signs the raw URI).
// It also provides CORS, request IDs, panic recovery and Prometheus metrics. It imports no
// component.
package httpx

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"unicode/utf8"

	"github.com/gorilla/mux"

	"github.com/myelin-chat/myelin/internal/matrix"
)

// DefaultMaxBody is the JSON body limit used when none is configured.
const DefaultMaxBody = 1 << 20

// HandlerFunc is a handler that returns an error instead of writing one. An *matrix.Error is
// sent as is; any other error is logged and sent as 500 M_UNKNOWN without detail.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// NewRouter returns a gorilla/mux router that matches encoded paths without cleaning them and
// answers unknown paths with 404 M_UNRECOGNIZED and known paths with a wrong method with 405
// M_UNRECOGNIZED.
func NewRouter() *mux.Router {
	r := mux.NewRouter().SkipClean(true).UseEncodedPath()
	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		writeError(w, matrix.Unrecognized(http.StatusNotFound))
	})
	r.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		writeError(w, matrix.Unrecognized(http.StatusMethodNotAllowed))
	})
	return r
}

// Handler turns f into an http.Handler that writes f's error as Matrix JSON.
func Handler(f HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := f(w, r); err != nil {
			WriteError(r.Context(), w, err)
		}
	})
}

// WriteError writes err as Matrix error JSON. Errors that are not *matrix.Error are logged
// with the request's logger and become 500 M_UNKNOWN.
func WriteError(ctx context.Context, w http.ResponseWriter, err error) {
	if me := matrix.AsError(err); me != nil {
		writeError(w, me)
		return
	}
	if errors.Is(err, context.Canceled) {
		// The client went away; nobody reads the answer.
		Logger(ctx).Debug("request cancelled", "error", err)
		writeError(w, matrix.Errorf(http.StatusServiceUnavailable, matrix.CodeUnknown, "request cancelled"))
		return
	}
	Logger(ctx).Error("internal error", "error", err)
	writeError(w, matrix.Errorf(http.StatusInternalServerError, matrix.CodeUnknown, "internal server error"))
}

func writeError(w http.ResponseWriter, e *matrix.Error) {
	body := make(map[string]any, 2+len(e.Extra))
	for k, v := range e.Extra {
		body[k] = v
	}
	if e.Code != "" { // a user-interactive auth challenge carries no error
		body["errcode"] = e.Code
		body["error"] = e.Message
	}
	_ = WriteJSON(w, e.Status, body)
}

// WriteJSON writes v as JSON with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
	return nil
}

type maxBodyKey struct{}

// WithMaxBody returns middleware that records the JSON body limit for DecodeJSON.
func WithMaxBody(limit int64) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), maxBodyKey{}, limit)))
		})
	}
}

// ReadBody reads the request body up to the configured limit. It returns 413 M_TOO_LARGE for a
// larger body.
func ReadBody(r *http.Request) ([]byte, error) {
	limit, _ := r.Context().Value(maxBodyKey{}).(int64)
	if limit <= 0 {
		limit = DefaultMaxBody
	}
	if r.ContentLength > limit {
		return nil, matrix.Errorf(http.StatusRequestEntityTooLarge, matrix.CodeTooLarge, "request body is larger than %d bytes", limit)
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, matrix.Errorf(http.StatusBadRequest, matrix.CodeUnknown, "reading request body failed")
	}
	if int64(len(b)) > limit {
		return nil, matrix.Errorf(http.StatusRequestEntityTooLarge, matrix.CodeTooLarge, "request body is larger than %d bytes", limit)
	}
	return b, nil
}

// DecodeJSON reads a JSON object body into v. A body that is not JSON (or not UTF-8) gives 400
// M_NOT_JSON; JSON that is not an object, or whose fields have the wrong types, gives 400
// M_BAD_JSON.
func DecodeJSON(r *http.Request, v any) error {
	b, err := ReadBody(r)
	if err != nil {
		return err
	}
	return UnmarshalObject(b, v)
}

// DecodeJSONOptional is DecodeJSON, except that an empty body leaves v untouched.
func DecodeJSONOptional(r *http.Request, v any) error {
	b, err := ReadBody(r)
	if err != nil {
		return err
	}
	if len(b) == 0 {
		return nil
	}
	return UnmarshalObject(b, v)
}

// UnmarshalObject decodes b, which must be a JSON object, into v with the errors of DecodeJSON.
func UnmarshalObject(b []byte, v any) error {
	if !utf8.Valid(b) || !json.Valid(b) {
		return matrix.Errorf(http.StatusBadRequest, matrix.CodeNotJSON, "content is not valid JSON")
	}
	if first := firstNonSpace(b); first != '{' {
		// Valid JSON of the wrong shape is bad JSON, as Synapse answers.
		return matrix.BadJSON("content must be a JSON object")
	}
	if err := json.Unmarshal(b, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return matrix.BadJSON("%s: expected %s", fieldName(te), te.Type)
		}
		return matrix.BadJSON("invalid JSON: %v", err)
	}
	if c, ok := v.(interface{ Check() error }); ok {
		return c.Check()
	}
	return nil
}

func fieldName(te *json.UnmarshalTypeError) string {
	if te.Field != "" {
		return te.Field
	}
	return "body"
}

func firstNonSpace(b []byte) byte {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		}
		return c
	}
	return 0
}

// Var returns the path variable name of r, percent-decoded. The router matches encoded paths,
// so every handler reads its variables through Var.
func Var(r *http.Request, name string) string {
	v := mux.Vars(r)[name]
	if d, err := url.PathUnescape(v); err == nil {
		return d
	}
	return v
}

type loggerKey struct{}

// WithLogger returns ctx carrying l for Logger.
func WithLogger(ctx context.Context, l *slog.Logger) context.Context {
	return context.WithValue(ctx, loggerKey{}, l)
}

// Logger returns the request's logger, or slog.Default().
func Logger(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(loggerKey{}).(*slog.Logger); ok {
		return l
	}
	return slog.Default()
}

// Prefix registers routes under a path prefix directly on a router. Unlike a mux subrouter, a
// known path with a wrong method then still answers 405 rather than 404.
type Prefix struct {
	Router *mux.Router
	Path   string
}

// Handle registers h for Path+path.
func (p Prefix) Handle(path string, h http.Handler) *mux.Route {
	return p.Router.Handle(p.Path+path, h)
}
