package sender

import (
	"context"
	"net/url"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/roomserver"
)

var _ roomserver.HierarchyRemote = (*Remote)(nil)

// Hierarchy implements roomserver.HierarchyRemote: GET /_matrix/federation/v1/hierarchy/{roomID}.
func (r *Remote) Hierarchy(ctx context.Context, server, roomID string, suggestedOnly bool) (*roomserver.FederationHierarchy, error) {
	path := "/_matrix/federation/v1/hierarchy/" + url.PathEscape(roomID)
	if suggestedOnly {
		path += "?suggested_only=true"
	}
	var res roomserver.FederationHierarchy
	if err := r.get(ctx, spec.ServerName(server), path, &res); err != nil {
		return nil, err
	}
	return &res, nil
}
