package roomserver

import (
	"bytes"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// This file implements state resolution v2.1 (room version 12, MSC4297), following the
// spec's "State resolution" section of /rooms/v12 step by step. gmsl's resolver is not
// used for these rooms: it panics when sorting power events in privileged-creator rooms.

// infinitePower is the power level of a room creator in a v12 room (MSC4289): greater than
// any power level a power_levels event can grant.
const infinitePower = math.MaxInt64

// resolveStateV21 resolves sets (each a full room state, as a list of state events) with
// state resolution v2.1. events holds every event the algorithm may look at: the state events
// and their auth chains; an auth event missing from it is treated as rejected (rejected events
// are not stored as room events). create is the room's create event, which v12 events do not
// cite in their auth_events.
func resolveStateV21(sets [][]gomatrixserverlib.PDU, events map[string]gomatrixserverlib.PDU, create gomatrixserverlib.PDU) ([]gomatrixserverlib.PDU, error) {
	if create == nil {
		return nil, errors.New("state resolution v2.1: missing create event")
	}
	r := &stateResolver{events: events, create: create, chains: map[string]map[string]bool{}}
	for _, set := range sets {
		for _, e := range set {
			if _, ok := r.events[e.EventID()]; !ok {
				r.events[e.EventID()] = e
			}
		}
	}
	creators := gomatrixserverlib.CreatorsFromCreateEvent(create)
	r.creators = make(map[string]bool, len(creators))
	for _, c := range creators {
		r.creators[c] = true
	}

	unconflicted, conflicted := splitConflicts(sets)

	// Full conflicted set: conflicted state set ∪ conflicted state subgraph ∪ auth difference.
	full := map[string]bool{}
	for _, id := range conflicted {
		full[id] = true
	}
	for id := range r.conflictedSubgraph(conflicted) {
		full[id] = true
	}
	for id := range r.authDifference(sets) {
		full[id] = true
	}
	for id := range full {
		if _, ok := r.events[id]; !ok {
			delete(full, id)
		}
	}

	// Step 1: the power events of the full conflicted set, enlarged with the parts of
	// their auth chains inside the full conflicted set, in reverse topological power order.
	powerSet := map[string]bool{}
	for id := range full {
		if !isPowerEvent(r.events[id]) {
			continue
		}
		powerSet[id] = true
		for a := range r.authChain(id) {
			if full[a] {
				powerSet[a] = true
			}
		}
	}
	powerSorted := r.reverseTopologicalPowerOrder(powerSet)

	// Step 2: iterative auth checks from the empty state map.
	partial := map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU{}
	r.iterativeAuthChecks(partial, powerSorted)

	// Step 3: the remaining events in mainline order based on the partial state's power levels.
	var rest []gomatrixserverlib.PDU
	for id := range full {
		if !powerSet[id] {
			rest = append(rest, r.events[id])
		}
	}
	r.mainlineOrder(rest, partial[gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomPowerLevels}])

	// Step 4: iterative auth checks on the partial state.
	r.iterativeAuthChecks(partial, rest)

	// Step 5: the unconflicted state map replaces whatever shares its keys.
	for k, e := range unconflicted {
		partial[k] = e
	}
	out := make([]gomatrixserverlib.PDU, 0, len(partial))
	for _, e := range partial {
		out = append(out, e)
	}
	return out, nil
}

// stateResolver holds what one run of resolveStateV21 looks up repeatedly.
type stateResolver struct {
	events   map[string]gomatrixserverlib.PDU
	create   gomatrixserverlib.PDU
	creators map[string]bool
	chains   map[string]map[string]bool // memoised auth chains
}

// splitConflicts divides the states into the unconflicted state map and the conflicted
// state set (as event IDs, without duplicates).
func splitConflicts(sets [][]gomatrixserverlib.PDU) (map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU, []string) {
	type seen struct {
		ids   map[string]gomatrixserverlib.PDU
		count int
	}
	keys := map[gomatrixserverlib.StateKeyTuple]*seen{}
	for _, set := range sets {
		for _, e := range set {
			if e.StateKey() == nil {
				continue
			}
			k := gomatrixserverlib.StateKeyTuple{EventType: e.Type(), StateKey: *e.StateKey()}
			s := keys[k]
			if s == nil {
				s = &seen{ids: map[string]gomatrixserverlib.PDU{}}
				keys[k] = s
			}
			s.ids[e.EventID()] = e
			s.count++
		}
	}
	unconflicted := map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU{}
	conflictedSet := map[string]bool{}
	for k, s := range keys {
		if len(s.ids) == 1 && s.count == len(sets) {
			for _, e := range s.ids {
				unconflicted[k] = e
			}
			continue
		}
		for id := range s.ids {
			conflictedSet[id] = true
		}
	}
	conflicted := make([]string, 0, len(conflictedSet))
	for id := range conflictedSet {
		conflicted = append(conflicted, id)
	}
	slices.Sort(conflicted)
	return unconflicted, conflicted
}

// authChain returns the auth chain of the event id (all events reachable through
// auth_events, not the event itself), restricted to known events; memoised.
func (r *stateResolver) authChain(id string) map[string]bool {
	if c, ok := r.chains[id]; ok {
		return c
	}
	chain := map[string]bool{}
	stack := []string{id}
	for len(stack) > 0 {
		cur := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		e, ok := r.events[cur]
		if !ok {
			continue
		}
		for _, a := range e.AuthEventIDs() {
			if chain[a] {
				continue
			}
			if _, ok := r.events[a]; !ok {
				continue
			}
			chain[a] = true
			stack = append(stack, a)
		}
	}
	r.chains[id] = chain
	return chain
}

// authDifference is ∪Cᵢ − ∩Cᵢ, Cᵢ being the union of the auth chains of the events of state i.
func (r *stateResolver) authDifference(sets [][]gomatrixserverlib.PDU) map[string]bool {
	counts := map[string]int{}
	for _, set := range sets {
		// One walk per state (not per event): a big room's member events share most of
		// their auth chains.
		full := map[string]bool{}
		var stack []string
		for _, e := range set {
			stack = append(stack, e.AuthEventIDs()...)
		}
		for len(stack) > 0 {
			id := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			ev, ok := r.events[id]
			if !ok || full[id] {
				continue
			}
			full[id] = true
			stack = append(stack, ev.AuthEventIDs()...)
		}
		for a := range full {
			counts[a]++
		}
	}
	out := map[string]bool{}
	for a, n := range counts {
		if n < len(sets) {
			out[a] = true
		}
	}
	return out
}

// conflictedSubgraph returns the events on auth_events paths between events of the
// conflicted state set, endpoints included: the events reachable from a conflicted event
// that themselves reach a conflicted event, plus the conflicted events.
func (r *stateResolver) conflictedSubgraph(conflicted []string) map[string]bool {
	isConflicted := make(map[string]bool, len(conflicted))
	for _, id := range conflicted {
		isConflicted[id] = true
	}
	// reaches[id]: id has an auth_events path (length ≥ 1) to a conflicted event.
	reaches := map[string]bool{}
	done := map[string]bool{}
	var visit func(id string) bool
	visit = func(root string) bool {
		// Iterative post-order DFS to survive deep auth chains.
		type frame struct {
			id  string
			idx int
		}
		stack := []frame{{id: root}}
		onStack := map[string]bool{root: true}
		for len(stack) > 0 {
			top := &stack[len(stack)-1]
			e := r.events[top.id]
			var auth []string
			if e != nil {
				auth = e.AuthEventIDs()
			}
			if top.idx < len(auth) {
				a := auth[top.idx]
				top.idx++
				if _, ok := r.events[a]; !ok || done[a] || onStack[a] {
					continue
				}
				onStack[a] = true
				stack = append(stack, frame{id: a})
				continue
			}
			res := false
			for _, a := range auth {
				if isConflicted[a] || reaches[a] {
					res = true
					break
				}
			}
			reaches[top.id] = res
			done[top.id] = true
			delete(onStack, top.id)
			stack = stack[:len(stack)-1]
		}
		return reaches[root]
	}
	out := map[string]bool{}
	for _, c := range conflicted {
		if _, ok := r.events[c]; !ok {
			continue
		}
		out[c] = true
		for a := range r.authChain(c) {
			if isConflicted[a] || visit(a) {
				out[a] = true
			}
		}
	}
	return out
}

// isPowerEvent reports whether e is a power event: power levels, join rules, or a kick or ban.
func isPowerEvent(e gomatrixserverlib.PDU) bool {
	if e.StateKey() == nil {
		return false
	}
	switch e.Type() {
	case spec.MRoomPowerLevels, spec.MRoomJoinRules:
		return true
	case spec.MRoomMember:
		m, err := e.Membership()
		if err != nil {
			return false
		}
		return (m == spec.Leave || m == spec.Ban) && string(e.SenderID()) != *e.StateKey()
	}
	return false
}

// senderPower is the power level of e's sender as given by e's auth events; the room's
// creators have infinite power.
func (r *stateResolver) senderPower(e gomatrixserverlib.PDU) int64 {
	if r.creators[string(e.SenderID())] {
		return infinitePower
	}
	for _, a := range e.AuthEventIDs() {
		pl, ok := r.events[a]
		if !ok || pl.Type() != spec.MRoomPowerLevels || !pl.StateKeyEquals("") {
			continue
		}
		c, err := gomatrixserverlib.NewPowerLevelContentFromEvent(pl)
		if err != nil {
			return 0
		}
		return c.UserLevel(e.SenderID())
	}
	return 0
}

// powerItem is a vertex of the power-ordering sort.
type powerItem struct {
	ev    gomatrixserverlib.PDU
	power int64
}

// powerHeap orders candidates by the reverse topological power ordering's comparison.
type powerHeap []powerItem

func (h powerHeap) Len() int { return len(h) }
func (h powerHeap) Less(i, j int) bool {
	x, y := h[i], h[j]
	if x.power != y.power {
		return x.power > y.power
	}
	if x.ev.OriginServerTS() != y.ev.OriginServerTS() {
		return x.ev.OriginServerTS() < y.ev.OriginServerTS()
	}
	return x.ev.EventID() < y.ev.EventID()
}
func (h powerHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *powerHeap) Push(v any)   { *h = append(*h, v.(powerItem)) }
func (h *powerHeap) Pop() any {
	old := *h
	v := old[len(old)-1]
	*h = old[:len(old)-1]
	return v
}

// reverseTopologicalPowerOrder sorts set with Kahn's algorithm over the auth_events DAG
// restricted to set, taking the smallest candidate at each step.
func (r *stateResolver) reverseTopologicalPowerOrder(set map[string]bool) []gomatrixserverlib.PDU {
	pending := map[string]int{}       // number of the event's auth events in set not yet emitted
	children := map[string][]string{} // auth event → events in set citing it
	for id := range set {
		n := 0
		for _, a := range dedupe(r.events[id].AuthEventIDs()) {
			if set[a] {
				n++
				children[a] = append(children[a], id)
			}
		}
		pending[id] = n
	}
	h := &powerHeap{}
	for id, n := range pending {
		if n == 0 {
			*h = append(*h, powerItem{ev: r.events[id], power: r.senderPower(r.events[id])})
		}
	}
	heap.Init(h)
	out := make([]gomatrixserverlib.PDU, 0, len(set))
	for h.Len() > 0 {
		it := heap.Pop(h).(powerItem)
		out = append(out, it.ev)
		for _, c := range children[it.ev.EventID()] {
			pending[c]--
			if pending[c] == 0 {
				heap.Push(h, powerItem{ev: r.events[c], power: r.senderPower(r.events[c])})
			}
		}
	}
	return out
}

// plAuthEvent returns the m.room.power_levels event among e's auth events, or nil.
func (r *stateResolver) plAuthEvent(e gomatrixserverlib.PDU) gomatrixserverlib.PDU {
	for _, a := range e.AuthEventIDs() {
		if pl, ok := r.events[a]; ok && pl.Type() == spec.MRoomPowerLevels && pl.StateKeyEquals("") {
			return pl
		}
	}
	return nil
}

// mainlineOrder sorts evs by the mainline ordering based on the power levels event pl
// (which may be nil: then every mainline position is ∞).
func (r *stateResolver) mainlineOrder(evs []gomatrixserverlib.PDU, pl gomatrixserverlib.PDU) {
	mainline := map[string]int{}
	for i, p := 0, pl; p != nil; i++ {
		if _, seen := mainline[p.EventID()]; seen {
			break // a cycle cannot happen in a valid DAG; do not loop on a broken one
		}
		mainline[p.EventID()] = i
		p = r.plAuthEvent(p)
	}
	position := make(map[string]int, len(evs))
	for _, e := range evs {
		pos := math.MaxInt
		seen := map[string]bool{}
		for p := r.plAuthEvent(e); p != nil && !seen[p.EventID()]; p = r.plAuthEvent(p) {
			seen[p.EventID()] = true
			if i, ok := mainline[p.EventID()]; ok {
				pos = i
				break
			}
		}
		position[e.EventID()] = pos
	}
	slices.SortFunc(evs, func(x, y gomatrixserverlib.PDU) int {
		px, py := position[x.EventID()], position[y.EventID()]
		if px != py {
			if px > py {
				return -1
			}
			return 1
		}
		if x.OriginServerTS() != y.OriginServerTS() {
			if x.OriginServerTS() < y.OriginServerTS() {
				return -1
			}
			return 1
		}
		return bytes.Compare([]byte(x.EventID()), []byte(y.EventID()))
	})
}

// iterativeAuthChecks applies each of evs to state in order when the auth rules allow it
// against state; a key the rules need that state lacks comes from the event's own auth
// events (all stored events are non-rejected). The room's create event is always given,
// since v12 events do not cite it.
func (r *stateResolver) iterativeAuthChecks(state map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU, evs []gomatrixserverlib.PDU) {
	for _, e := range evs {
		if e.StateKey() == nil {
			continue
		}
		provider, err := gomatrixserverlib.NewAuthEvents(nil)
		if err != nil {
			continue
		}
		// The event's own auth events first, then the state's entries for the needed keys on top.
		for _, a := range e.AuthEventIDs() {
			if ae, ok := r.events[a]; ok && ae.StateKey() != nil {
				_ = provider.AddEvent(ae)
			}
		}
		for _, k := range gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{e}).Tuples() {
			if se, ok := state[k]; ok {
				_ = provider.AddEvent(se)
			}
		}
		if cur, _ := provider.Create(); cur == nil {
			_ = provider.AddEvent(r.create)
		}
		if err := gomatrixserverlib.Allowed(e, provider, userIDForSender); err != nil {
			continue
		}
		state[gomatrixserverlib.StateKeyTuple{EventType: e.Type(), StateKey: *e.StateKey()}] = e
	}
}

// dedupe returns ids without repeats, in first-seen order.
func dedupe(ids []string) []string {
	seen := make(map[string]bool, len(ids))
	out := ids[:0:0]
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}

// errNoCreate is returned when no state to resolve holds a create event.
var errNoCreate = fmt.Errorf("state resolution v2.1: no create event in the states")

// resolveStateV21Sets runs resolveStateV21 over pduSets with the events of chain (their auth
// chains) available, taking the create event from the states.
func resolveStateV21Sets(pduSets [][]gomatrixserverlib.PDU, chain []gomatrixserverlib.PDU) ([]gomatrixserverlib.PDU, error) {
	events := make(map[string]gomatrixserverlib.PDU, len(chain))
	for _, p := range chain {
		events[p.EventID()] = p
	}
	var create gomatrixserverlib.PDU
	for _, set := range pduSets {
		for _, p := range set {
			if p.Type() == spec.MRoomCreate && p.StateKeyEquals("") {
				create = p
			}
		}
	}
	if create == nil {
		return nil, errNoCreate
	}
	return resolveStateV21(pduSets, events, create)
}

// storedEventNID returns the event_nid of the stored event id.
func storedEventNID(ctx context.Context, q querier, id string) (int64, error) {
	st, err := stateFromIDs(ctx, q, []string{id})
	if err != nil {
		return 0, fmt.Errorf("loading resolved event %s: %w", id, err)
	}
	for _, e := range st {
		return e.nid, nil
	}
	return 0, fmt.Errorf("resolved event %s is not a state event", id)
}
