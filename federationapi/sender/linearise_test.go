package sender

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/testkit"
)

// TestLinearise checks that a checked send_join response becomes the same events, in auth
// order, as gmsl's LineariseStateResponse gives, with the state's IDs, the redacted flag
// kept, and no event pinning the response's bytes.
func TestLinearise(t *testing.T) {
	_, key, err := ed25519.GenerateKey(nil)
	testkit.Must(t, err, "generating key")
	ver := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionV10)
	const roomID = "!room:origin.test"
	var built []gomatrixserverlib.PDU
	build := func(typ, stateKey string, content map[string]any, auth ...int) gomatrixserverlib.PDU {
		t.Helper()
		c, _ := json.Marshal(content)
		p := &gomatrixserverlib.ProtoEvent{SenderID: alice, RoomID: roomID, Type: typ, StateKey: &stateKey,
			Content: c, Depth: int64(len(built) + 1), AuthEvents: []string{}, PrevEvents: []string{}}
		for _, i := range auth {
			p.AuthEvents = append(p.AuthEvents.([]string), built[i].EventID())
		}
		if len(built) > 0 {
			p.PrevEvents = []string{built[len(built)-1].EventID()}
		}
		ev, err := ver.NewEventBuilderFromProtoEvent(p).Build(time.Now(), origin, "ed25519:1", key)
		testkit.Must(t, err, "building %s", typ)
		built = append(built, ev)
		return ev
	}
	build(spec.MRoomCreate, "", map[string]any{"creator": alice, "room_version": "10"})
	build(spec.MRoomMember, alice, map[string]any{"membership": "join"}, 0)
	build(spec.MRoomPowerLevels, "", map[string]any{"users": map[string]any{alice: 100}}, 0, 1)
	build(spec.MRoomJoinRules, "", map[string]any{"join_rule": "public"}, 0, 1, 2)
	build(spec.MRoomTopic, "", map[string]any{"topic": "hello"}, 0, 1, 2)
	join := build(spec.MRoomMember, "@bob:remote.test", map[string]any{"membership": "join"}, 0, 2, 3)

	// The response's bytes, as one buffer that the events are slices of. The topic's content
	// is altered, so that its hash fails and it is taken as redacted.
	jsons := make([][]byte, len(built))
	for i, ev := range built {
		jsons[i] = ev.JSON()
	}
	jsons[4] = bytes.Replace(jsons[4], []byte(`"hello"`), []byte(`"HELLO"`), 1)
	var body []byte
	var spans [][2]int
	for _, js := range jsons {
		spans = append(spans, [2]int{len(body), len(body) + len(js)})
		body = append(body, js...)
	}
	slice := func(i int) []byte { return body[spans[i][0]:spans[i][1]:spans[i][1]] }
	response := func() *fclient.RespState {
		r := &fclient.RespState{}
		for i := range 4 {
			r.AuthEvents = append(r.AuthEvents, slice(i))
		}
		for i := range 5 {
			r.StateEvents = append(r.StateEvents, slice(i))
		}
		return r
	}
	joinEv, err := ver.NewEventFromUntrustedJSON(slice(5))
	testkit.Must(t, err, "parsing join")

	want := gomatrixserverlib.LineariseStateResponse(ver.Version(), response())
	var wantState []string
	for _, ev := range response().GetStateEvents().UntrustedEvents(ver.Version()) {
		wantState = append(wantState, ev.EventID())
	}

	j, err := linearise(&gomatrixserverlib.PerformJoinResponse{JoinEvent: joinEv, StateSnapshot: response()})
	testkit.Must(t, err, "linearise")
	if !slices.Equal(j.State, wantState) {
		t.Errorf("State = %v; want %v", j.State, wantState)
	}
	if j.Event.EventID() != join.EventID() || !bytes.Equal(j.Event.JSON(), join.JSON()) {
		t.Errorf("join event changed")
	}
	wantByID := map[string]gomatrixserverlib.PDU{}
	for _, ev := range want {
		wantByID[ev.EventID()] = ev
	}
	if len(j.Events) != len(want) {
		t.Fatalf("%d events; want %d", len(j.Events), len(want))
	}
	seen := map[string]bool{}
	for _, ev := range j.Events {
		w := wantByID[ev.EventID()]
		switch {
		case w == nil:
			t.Errorf("unexpected event %s", ev.EventID())
		case !bytes.Equal(ev.JSON(), w.JSON()), ev.Redacted() != w.Redacted(), !bytes.Equal(ev.Content(), w.Content()):
			t.Errorf("event %s differs from gmsl's: %s (redacted %v); want %s (redacted %v)", ev.EventID(), ev.JSON(), ev.Redacted(), w.JSON(), w.Redacted())
		}
		for _, a := range ev.AuthEventIDs() {
			if wantByID[a] != nil && !seen[a] {
				t.Errorf("event %s comes before its auth event %s", ev.EventID(), a)
			}
		}
		seen[ev.EventID()] = true
	}
	if !wantByID[built[4].EventID()].Redacted() {
		t.Errorf("the altered topic is not redacted; the test does not test the flag")
	}

	// Nothing is left pointing into the response.
	for i := range body {
		body[i] = ' '
	}
	for _, ev := range append(slices.Clone(j.Events), j.Event) {
		if !json.Valid(ev.Content()) || !json.Valid(ev.JSON()) {
			t.Errorf("event %s still points into the response: content %q", ev.EventID(), ev.Content())
		}
	}
}
