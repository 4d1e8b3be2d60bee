package clientapi

import (
	"net/http"

	"github.com/gorilla/mux"

	"github.com/myelin-chat/myelin/internal/httpx"
)

// Register adds every Client-Server route clientapi serves to r.
func (s *Service) Register(r *mux.Router) {
	h := httpx.Handler
	get, post, put, del := http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete

	r.Handle("/_matrix/client/versions", h(s.versions)).Methods(get)
	r.Handle("/.well-known/matrix/client", h(s.wellKnownClient)).Methods(get)
	r.Handle("/.well-known/matrix/server", h(s.wellKnownServer)).Methods(get)
	r.Handle("/_synapse/admin/v1/register", h(s.adminRegisterNonce)).Methods(get)
	r.Handle("/_synapse/admin/v1/register", h(s.adminRegister)).Methods(post)
	s.registerAdmin(httpx.Prefix{Router: r})

	// Every endpoint below is served under r0 and v3 (and v1 where the spec says so).
	c := httpx.Prefix{Router: r, Path: "/_matrix/client/{apiVersion:(?:r0|v3)}"}

	c.Handle("/register", h(s.register)).Methods(post)
	c.Handle("/register/available", h(s.registerAvailable)).Methods(get)
	c.Handle("/login", h(s.loginFlows)).Methods(get)
	c.Handle("/login", h(s.login)).Methods(post)
	c.Handle("/refresh", h(s.refresh)).Methods(post)
	c.Handle("/logout", s.authed(s.logout)).Methods(post)
	c.Handle("/logout/all", s.authed(s.logoutAll)).Methods(post)
	c.Handle("/account/whoami", s.authed(s.whoami)).Methods(get)
	c.Handle("/account/password", s.authed(s.changePassword)).Methods(post)
	c.Handle("/account/deactivate", s.authed(s.deactivate)).Methods(post)
	c.Handle("/capabilities", s.authed(s.capabilities)).Methods(get)

	c.Handle("/devices", s.authed(s.devices)).Methods(get)
	c.Handle("/devices/{deviceID}", s.authed(s.device)).Methods(get)
	c.Handle("/devices/{deviceID}", s.authed(s.renameDevice)).Methods(put)
	c.Handle("/devices/{deviceID}", s.authed(s.deleteDevice)).Methods(del)
	c.Handle("/delete_devices", s.authed(s.deleteDevices)).Methods(post)

	c.Handle("/profile/{userID}", h(s.getProfile)).Methods(get)
	c.Handle("/profile/{userID}/{field:(?:displayname|avatar_url)}", h(s.getProfileField)).Methods(get)
	c.Handle("/profile/{userID}/{field:(?:displayname|avatar_url)}", s.authed(s.setProfileField)).Methods(put)

	c.Handle("/user/{userID}/account_data/{type}", s.authed(s.getAccountData)).Methods(get)
	c.Handle("/user/{userID}/account_data/{type}", s.authed(s.putAccountData)).Methods(put)
	c.Handle("/user/{userID}/rooms/{roomID}/account_data/{type}", s.authed(s.getAccountData)).Methods(get)
	c.Handle("/user/{userID}/rooms/{roomID}/account_data/{type}", s.authed(s.putAccountData)).Methods(put)
	c.Handle("/user/{userID}/filter", s.authed(s.putFilter)).Methods(post)
	c.Handle("/user/{userID}/filter/{filterID}", s.authed(s.getFilter)).Methods(get)

	s.registerRooms(c)
	s.registerRoomReads(c)
	s.registerDirectory(c)
	s.registerHierarchy(c)
}
