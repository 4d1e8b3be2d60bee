package clientapi

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/userapi"
)

var passwordFlows = [][]string{{stagePassword}}

type passwordRequest struct {
	NewPassword   string          `json:"new_password"`
	LogoutDevices *bool           `json:"logout_devices"`
	Auth          json.RawMessage `json:"auth"`
}

func (s *Service) changePassword(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	var req passwordRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	sess, err := s.interactiveAuth(r, req.Auth, dev.UserID, passwordFlows)
	if err != nil {
		return err
	}
	if req.NewPassword == "" {
		return matrix.MissingParam("new_password is required")
	}
	if err := checkPassword(req.NewPassword); err != nil {
		return err
	}
	logout := req.LogoutDevices == nil || *req.LogoutDevices
	if err := s.users.SetPassword(r.Context(), dev.UserID, req.NewPassword, logout, dev.DeviceID); err != nil {
		return err
	}
	s.users.DeleteUIASession(r.Context(), sess.ID)
	return httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

func (s *Service) deactivate(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	var req struct {
		Auth  json.RawMessage `json:"auth"`
		Erase bool            `json:"erase"`
	}
	if err := httpx.DecodeJSONOptional(r, &req); err != nil {
		return err
	}
	sess, err := s.interactiveAuth(r, req.Auth, dev.UserID, passwordFlows)
	if err != nil {
		return err
	}
	if err := s.users.Deactivate(r.Context(), dev.UserID); err != nil {
		return err
	}
	s.users.DeleteUIASession(r.Context(), sess.ID)
	s.log.Info("deactivated account", "user_id", dev.UserID)
	return httpx.WriteJSON(w, http.StatusOK, map[string]string{"id_server_unbind_result": "no-support"})
}

type deviceJSON struct {
	DeviceID    string  `json:"device_id"`
	DisplayName *string `json:"display_name"`
	LastSeenIP  *string `json:"last_seen_ip"`
	LastSeenTS  *int64  `json:"last_seen_ts"`
}

func toDeviceJSON(d userapi.Device) deviceJSON {
	j := deviceJSON{DeviceID: d.DeviceID}
	if d.DisplayName != "" {
		j.DisplayName = &d.DisplayName
	}
	if d.LastSeenIP != "" {
		j.LastSeenIP = &d.LastSeenIP
	}
	if d.LastSeenTS != 0 {
		j.LastSeenTS = &d.LastSeenTS
	}
	return j
}

func (s *Service) devices(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	ds, err := s.users.Devices(r.Context(), dev.UserID)
	if err != nil {
		return err
	}
	out := make([]deviceJSON, 0, len(ds))
	for _, d := range ds {
		out = append(out, toDeviceJSON(d))
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{"devices": out})
}

func (s *Service) device(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	d, err := s.users.Device(r.Context(), dev.UserID, httpx.Var(r, "deviceID"))
	if errors.Is(err, userapi.ErrNotFound) {
		return matrix.NotFound("unknown device")
	}
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, toDeviceJSON(*d))
}

func (s *Service) renameDevice(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	var req struct {
		DisplayName *string `json:"display_name"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	id := httpx.Var(r, "deviceID")
	if req.DisplayName == nil {
		if _, err := s.users.Device(r.Context(), dev.UserID, id); errors.Is(err, userapi.ErrNotFound) {
			return matrix.NotFound("unknown device")
		} else if err != nil {
			return err
		}
		return httpx.WriteJSON(w, http.StatusOK, struct{}{})
	}
	err := s.users.RenameDevice(r.Context(), dev.UserID, id, *req.DisplayName)
	if errors.Is(err, userapi.ErrNotFound) {
		return matrix.NotFound("unknown device")
	}
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

func (s *Service) deleteDevice(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	var req struct {
		Auth json.RawMessage `json:"auth"`
	}
	if err := httpx.DecodeJSONOptional(r, &req); err != nil {
		return err
	}
	id := httpx.Var(r, "deviceID")
	sess, err := s.interactiveAuth(r, req.Auth, dev.UserID, passwordFlows)
	if err != nil {
		return err
	}
	if err := s.users.DeleteDevices(r.Context(), dev.UserID, []string{id}); err != nil {
		return err
	}
	s.users.DeleteUIASession(r.Context(), sess.ID)
	return httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

func (s *Service) deleteDevices(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	var req struct {
		Devices []string        `json:"devices"`
		Auth    json.RawMessage `json:"auth"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if req.Devices == nil {
		return matrix.MissingParam("devices is required")
	}
	sess, err := s.interactiveAuth(r, req.Auth, dev.UserID, passwordFlows)
	if err != nil {
		return err
	}
	if err := s.users.DeleteDevices(r.Context(), dev.UserID, req.Devices); err != nil {
		return err
	}
	s.users.DeleteUIASession(r.Context(), sess.ID)
	return httpx.WriteJSON(w, http.StatusOK, struct{}{})
}
