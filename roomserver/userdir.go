package roomserver

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// VisibleInDirectory returns which of candidates searcher may find in the user directory:
// as in Synapse (without search_all_users), those joined to a public room (join rule public)
// and those sharing a joined room with searcher. Searcher finds themself only through a
// public room.
func (s *Service) VisibleInDirectory(ctx context.Context, searcher string, candidates []string) (map[string]bool, error) {
	out := map[string]bool{}
	if len(candidates) == 0 {
		return out, nil
	}
	shared := map[int64]bool{}
	rows, err := s.db.Query(ctx, `SELECT room_nid FROM memberships WHERE user_id = $1 AND membership = $2`, searcher, spec.Join)
	if err != nil {
		return nil, fmt.Errorf("listing rooms of %s: %w", searcher, err)
	}
	for rows.Next() {
		var nid int64
		if err := rows.Scan(&nid); err != nil {
			rows.Close()
			return nil, fmt.Errorf("listing rooms of %s: %w", searcher, err)
		}
		shared[nid] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing rooms of %s: %w", searcher, err)
	}

	args := []any{spec.Join}
	for _, c := range candidates {
		args = append(args, c)
	}
	rows, err = s.db.Query(ctx, `SELECT user_id, room_nid FROM memberships WHERE membership = $1 AND user_id IN (`+
		inList(2, len(candidates))+`)`, args...)
	if err != nil {
		return nil, fmt.Errorf("listing rooms of directory candidates: %w", err)
	}
	roomsOf := map[string][]int64{}
	rooms := map[int64]bool{}
	for rows.Next() {
		var u string
		var nid int64
		if err := rows.Scan(&u, &nid); err != nil {
			rows.Close()
			return nil, fmt.Errorf("listing rooms of directory candidates: %w", err)
		}
		roomsOf[u] = append(roomsOf[u], nid)
		rooms[nid] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing rooms of directory candidates: %w", err)
	}

	public, err := s.publicRooms(ctx, rooms)
	if err != nil {
		return nil, err
	}
	for u, nids := range roomsOf {
		for _, nid := range nids {
			if public[nid] || (shared[nid] && u != searcher) {
				out[u] = true
				break
			}
		}
	}
	return out, nil
}

// publicRooms returns which of rooms have the join rule public.
func (s *Service) publicRooms(ctx context.Context, rooms map[int64]bool) (map[int64]bool, error) {
	out := map[int64]bool{}
	nids := make([]any, 0, len(rooms))
	for nid := range rooms {
		nids = append(nids, nid)
	}
	for len(nids) > 0 {
		n := min(len(nids), 500)
		rows, err := s.db.Query(ctx, `SELECT c.room_nid, e.event_json FROM current_state c JOIN events e ON e.event_nid = c.event_nid
			WHERE c.type = 'm.room.join_rules' AND c.state_key = '' AND c.room_nid IN (`+inList(1, n)+`)`, nids[:n]...)
		if err != nil {
			return nil, fmt.Errorf("loading join rules: %w", err)
		}
		for rows.Next() {
			var nid int64
			var js []byte
			if err := rows.Scan(&nid, &js); err != nil {
				rows.Close()
				return nil, fmt.Errorf("loading join rules: %w", err)
			}
			var ev struct {
				Content struct {
					JoinRule string `json:"join_rule"`
				} `json:"content"`
			}
			if json.Unmarshal(js, &ev) == nil && ev.Content.JoinRule == spec.Public {
				out[nid] = true
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("loading join rules: %w", err)
		}
		nids = nids[n:]
	}
	return out, nil
}
