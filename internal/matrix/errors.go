// Package matrix holds the vocabulary shared by every component: the Matrix error type that
// clients see, error codes, identifier validation, filters and the client event format. It
// imports only the standard library and gomatrixserverlib.
package matrix

import (
	"errors"
	"fmt"
	"net/http"
)

// Error codes used by Myelin. The spec's full list is in client-server-api/_index.md.
const (
	CodeForbidden            = "M_FORBIDDEN"
	CodeUnknownToken         = "M_UNKNOWN_TOKEN"
	CodeMissingToken         = "M_MISSING_TOKEN"
	CodeUserLocked           = "M_USER_LOCKED"
	CodeBadJSON              = "M_BAD_JSON"
	CodeNotJSON              = "M_NOT_JSON"
	CodeNotFound             = "M_NOT_FOUND"
	CodeLimitExceeded        = "M_LIMIT_EXCEEDED"
	CodeUnrecognized         = "M_UNRECOGNIZED"
	CodeUnknown              = "M_UNKNOWN"
	CodeUnauthorized         = "M_UNAUTHORIZED"
	CodeUserDeactivated      = "M_USER_DEACTIVATED"
	CodeUserInUse            = "M_USER_IN_USE"
	CodeInvalidUsername      = "M_INVALID_USERNAME"
	CodeRoomInUse            = "M_ROOM_IN_USE"
	CodeInvalidRoomState     = "M_INVALID_ROOM_STATE"
	CodeUnsupportedRoomVer   = "M_UNSUPPORTED_ROOM_VERSION"
	CodeIncompatibleRoomVer  = "M_INCOMPATIBLE_ROOM_VERSION"
	CodeBadState             = "M_BAD_STATE"
	CodeGuestAccessForbidden = "M_GUEST_ACCESS_FORBIDDEN"
	CodeMissingParam         = "M_MISSING_PARAM"
	CodeInvalidParam         = "M_INVALID_PARAM"
	CodeTooLarge             = "M_TOO_LARGE"
	CodeExclusive            = "M_EXCLUSIVE"
	CodeUnknownDevice        = "M_UNKNOWN_DEVICE"
	CodeWeakPassword         = "M_WEAK_PASSWORD"
	CodeThreepidInUse        = "M_THREEPID_IN_USE"
	CodeThreepidNotFound     = "M_THREEPID_NOT_FOUND"
)

// Error is the error a client sees: an HTTP status, a Matrix errcode and a message, plus
// optional extra top-level JSON fields (retry_after_ms, soft_logout, room_version…).
// Everything that is not an *Error becomes a logged 500 M_UNKNOWN with no detail sent.
type Error struct {
	Status  int
	Code    string
	Message string
	Extra   map[string]any
}

// Error implements error.
func (e *Error) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message) }

// With returns a copy of e with the extra top-level field k set to v.
func (e *Error) With(k string, v any) *Error {
	c := *e
	c.Extra = make(map[string]any, len(e.Extra)+1)
	for k2, v2 := range e.Extra {
		c.Extra[k2] = v2
	}
	c.Extra[k] = v
	return &c
}

// Errorf returns an *Error with the given status, code and formatted message.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// AsError returns the *Error in err's chain, or nil.
func AsError(err error) *Error {
	var me *Error
	if errors.As(err, &me) {
		return me
	}
	return nil
}

// Shorthands for the most common errors.

// Forbidden is 403 M_FORBIDDEN.
func Forbidden(format string, args ...any) *Error {
	return Errorf(http.StatusForbidden, CodeForbidden, format, args...)
}

// BadJSON is 400 M_BAD_JSON.
func BadJSON(format string, args ...any) *Error {
	return Errorf(http.StatusBadRequest, CodeBadJSON, format, args...)
}

// NotFound is 404 M_NOT_FOUND.
func NotFound(format string, args ...any) *Error {
	return Errorf(http.StatusNotFound, CodeNotFound, format, args...)
}

// InvalidParam is 400 M_INVALID_PARAM.
func InvalidParam(format string, args ...any) *Error {
	return Errorf(http.StatusBadRequest, CodeInvalidParam, format, args...)
}

// MissingParam is 400 M_MISSING_PARAM.
func MissingParam(format string, args ...any) *Error {
	return Errorf(http.StatusBadRequest, CodeMissingParam, format, args...)
}

// Unrecognized is the answer for an endpoint Myelin does not serve.
func Unrecognized(status int) *Error {
	return Errorf(status, CodeUnrecognized, "unrecognized request")
}
