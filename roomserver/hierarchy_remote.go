package roomserver

import "context"

// HierarchyRemote is the federation call the space hierarchy makes. When the configured
// Remote also implements it, Hierarchy includes rooms this server is not in.
type HierarchyRemote interface {
	// Hierarchy asks server for roomID's summary and its children's
	// (GET /_matrix/federation/v1/hierarchy/{roomID}).
	Hierarchy(ctx context.Context, server, roomID string, suggestedOnly bool) (*FederationHierarchy, error)
}

// FederationHierarchy is the federation answer for one room of a space hierarchy.
type FederationHierarchy struct {
	Room                 HierarchyRoom   `json:"room"`                  // the room, with its children_state
	Children             []HierarchyRoom `json:"children"`              // summaries of its children, without children_state
	InaccessibleChildren []string        `json:"inaccessible_children"` // children the asking server may not see
}
