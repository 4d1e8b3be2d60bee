package roomserver

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"testing"

	"github.com/myelin-chat/myelin/internal/matrix"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
)

func createSpace(t *testing.T, s *Service, joinRule string) string {
	t.Helper()
	id, err := s.CreateRoom(context.Background(), CreateRoomRequest{
		Creator: alice, RoomVersion: "10", CreateContent: raw(map[string]string{"type": "m.space"}),
		Initial: initial("10", alice, joinRule),
	})
	testkit.Must(t, err, "creating space")
	return id
}

func link(t *testing.T, s *Service, parent, child string, content map[string]any) {
	t.Helper()
	send(t, s, SendRequest{RoomID: parent, Sender: alice, Type: "m.space.child", StateKey: ptr(child), Content: raw(content)})
}

func hierarchyIDs(p *HierarchyPage) []string {
	var ids []string
	for _, r := range p.Rooms {
		ids = append(ids, r.RoomID)
	}
	return ids
}

func TestHierarchy(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		s, _ := newService(t, db)
		ctx := context.Background()
		via := []string{"test.local"}
		root := createSpace(t, s, "public")
		r1 := createRoom(t, s, "10", "public")
		ss1 := createSpace(t, s, "invite")
		r2 := createRoom(t, s, "10", "public")
		r3 := createRoom(t, s, "10", "invite")
		link(t, s, root, r1, map[string]any{"via": via, "suggested": true})
		link(t, s, root, ss1, map[string]any{"via": via})
		link(t, s, root, r2, map[string]any{"via": via, "order": "a"}) // ordered first
		link(t, s, ss1, r3, map[string]any{"via": via})
		link(t, s, root, "!gone:test.local", map[string]any{}) // no via: ignored

		tests := []struct {
			name string
			req  HierarchyRequest
			want []string
		}{
			{"whole graph for a member", HierarchyRequest{UserID: alice, MaxDepth: -1}, []string{root, r2, r1, ss1, r3}},
			{"max depth", HierarchyRequest{UserID: alice, MaxDepth: 1}, []string{root, r2, r1, ss1}},
			{"suggested only", HierarchyRequest{UserID: alice, MaxDepth: -1, SuggestedOnly: true}, []string{root, r1}},
			{"outsider sees public rooms only", HierarchyRequest{UserID: bob, MaxDepth: -1}, []string{root, r2, r1}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				tc.req.RoomID = root
				p, err := s.Hierarchy(ctx, tc.req)
				testkit.Must(t, err, "hierarchy")
				if got := hierarchyIDs(p); !slices.Equal(got, tc.want) || p.NextBatch != "" {
					t.Errorf("rooms = %v (next %q); want %v", got, p.NextBatch, tc.want)
				}
			})
		}

		t.Run("pagination", func(t *testing.T) {
			var got []string
			req := HierarchyRequest{RoomID: root, UserID: alice, MaxDepth: -1, Limit: 2}
			for i := 0; i < 5; i++ {
				p, err := s.Hierarchy(ctx, req)
				testkit.Must(t, err, "hierarchy page %d", i)
				got = append(got, hierarchyIDs(p)...)
				if p.NextBatch == "" {
					break
				}
				req.From = p.NextBatch
			}
			if want := []string{root, r2, r1, ss1, r3}; !slices.Equal(got, want) {
				t.Errorf("paged rooms = %v; want %v", got, want)
			}
			_, err := s.Hierarchy(ctx, HierarchyRequest{RoomID: root, UserID: alice, MaxDepth: 1, From: req.From})
			var me *matrix.Error
			if !errors.As(err, &me) || me.Status != http.StatusBadRequest {
				t.Errorf("mismatched token: err = %v; want 400", err)
			}
		})

		t.Run("inaccessible root", func(t *testing.T) {
			_, err := s.Hierarchy(ctx, HierarchyRequest{RoomID: ss1, UserID: bob, MaxDepth: -1})
			var me *matrix.Error
			if !errors.As(err, &me) || me.Status != http.StatusForbidden {
				t.Errorf("err = %v; want 403", err)
			}
		})

		t.Run("federation", func(t *testing.T) {
			res, err := s.FederationHierarchy(ctx, "other.test", root, false)
			testkit.Must(t, err, "federation hierarchy")
			var children []string
			for _, c := range res.Children {
				children = append(children, c.RoomID)
			}
			if want := []string{r2, r1}; !slices.Equal(children, want) || !slices.Equal(res.InaccessibleChildren, []string{ss1}) {
				t.Errorf("children = %v, inaccessible = %v; want %v, [%s]", children, res.InaccessibleChildren, want, ss1)
			}
			if len(res.Room.ChildrenState) != 3 {
				t.Errorf("children_state has %d events; want 3", len(res.Room.ChildrenState))
			}
			_, err = s.FederationHierarchy(ctx, "other.test", ss1, false)
			var me *matrix.Error
			if !errors.As(err, &me) || me.Status != http.StatusNotFound {
				t.Errorf("private space: err = %v; want 404", err)
			}
		})
	})
}
