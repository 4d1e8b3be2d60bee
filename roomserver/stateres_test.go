package roomserver

import (
	"crypto/ed25519"
	"encoding/json"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/testkit"
)

// v12DAG builds signed room version 12 events by hand for state resolution tests.
type v12DAG struct {
	t      *testing.T
	priv   ed25519.PrivateKey
	roomID string
	ts     time.Time
	all    map[string]gomatrixserverlib.PDU
	create gomatrixserverlib.PDU
}

const (
	srAlice   = "@alice:sr.test"
	srBob     = "@bob:sr.test"
	srCharlie = "@charlie:sr.test"
	srEve     = "@eve:sr.test"
)

func newV12DAG(t *testing.T) *v12DAG {
	_, priv, err := ed25519.GenerateKey(nil)
	testkit.Must(t, err, "generating a key")
	d := &v12DAG{t: t, priv: priv, ts: time.UnixMilli(1_700_000_000_000), all: map[string]gomatrixserverlib.PDU{}}
	d.create = d.ev("", srAlice, spec.MRoomCreate, "", map[string]any{"room_version": "12"})
	d.roomID = "!" + d.create.EventID()[1:]
	return d
}

// ev builds an event of sender at a fresh, later timestamp, citing auth as auth and prev events.
func (d *v12DAG) ev(roomID, sender, typ, stateKey string, content any, auth ...gomatrixserverlib.PDU) gomatrixserverlib.PDU {
	d.t.Helper()
	if roomID == "" && typ != spec.MRoomCreate {
		roomID = d.roomID
	}
	raw, err := json.Marshal(content)
	testkit.Must(d.t, err, "encoding content")
	ids := []string{}
	for _, a := range auth {
		ids = append(ids, a.EventID())
	}
	prev := ids
	if typ == spec.MRoomCreate {
		prev = []string{}
	} else if len(prev) == 0 {
		prev = []string{d.create.EventID()}
	}
	d.ts = d.ts.Add(time.Second)
	ver := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionV12)
	e, err := ver.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
		SenderID: sender, RoomID: roomID, Type: typ, StateKey: &stateKey, Content: raw,
		PrevEvents: prev, AuthEvents: ids, Depth: int64(len(d.all) + 1),
	}).Build(d.ts, "sr.test", "ed25519:a", d.priv)
	testkit.Must(d.t, err, "building %s", typ)
	d.all[e.EventID()] = e
	return e
}

// at is ev with an explicit timestamp offset from the DAG's start (to control tie-breaks).
func (d *v12DAG) at(sec int, sender, typ, stateKey string, content any, auth ...gomatrixserverlib.PDU) gomatrixserverlib.PDU {
	saved := d.ts
	d.ts = time.UnixMilli(1_700_000_000_000).Add(time.Duration(sec-1) * time.Second)
	e := d.ev("", sender, typ, stateKey, content, auth...)
	d.ts = saved
	return e
}

func srMember(m string) map[string]any { return map[string]any{"membership": m} }

// resolveForTest runs resolveStateV21Sets over sets with every built event known.
func (d *v12DAG) resolve(sets ...[]gomatrixserverlib.PDU) map[gomatrixserverlib.StateKeyTuple]string {
	d.t.Helper()
	var chain []gomatrixserverlib.PDU
	for _, e := range d.all {
		chain = append(chain, e)
	}
	out, err := resolveStateV21Sets(sets, chain)
	testkit.Must(d.t, err, "resolving")
	m := map[gomatrixserverlib.StateKeyTuple]string{}
	for _, e := range out {
		m[gomatrixserverlib.StateKeyTuple{EventType: e.Type(), StateKey: *e.StateKey()}] = e.EventID()
	}
	return m
}

func TestResolveStateV21(t *testing.T) {
	type expect map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU
	key := func(typ, sk string) gomatrixserverlib.StateKeyTuple {
		return gomatrixserverlib.StateKeyTuple{EventType: typ, StateKey: sk}
	}
	for _, tc := range []struct {
		name  string
		build func(d *v12DAG) (sets [][]gomatrixserverlib.PDU, want expect, absent []gomatrixserverlib.StateKeyTuple)
	}{{
		// Complement TestMSC4289PrivilegedRoomCreators "admin with >PL100 sorts after the room
		// creator": the creator (infinite power) sorts first, so the admin's concurrent change wins.
		name: "creator sorts before admin above PL100",
		build: func(d *v12DAG) ([][]gomatrixserverlib.PDU, expect, []gomatrixserverlib.StateKeyTuple) {
			aj := d.ev("", srAlice, spec.MRoomMember, srAlice, srMember("join"))
			pl0 := d.ev("", srAlice, spec.MRoomPowerLevels, "", map[string]any{}, aj)
			jr := d.ev("", srAlice, spec.MRoomJoinRules, "", map[string]any{"join_rule": "public"}, aj, pl0)
			bj := d.ev("", srBob, spec.MRoomMember, srBob, srMember("join"), jr, pl0)
			pl1 := d.ev("", srAlice, spec.MRoomPowerLevels, "", map[string]any{"users": map[string]any{srBob: 9493420}}, aj, pl0)
			// Bob's knock is earlier than alice's invite, so neither timestamps nor IDs let the
			// creator's event win: only her infinite power puts it first.
			bobJR := d.at(100, srBob, spec.MRoomJoinRules, "", map[string]any{"join_rule": "knock"}, bj, pl1)
			aliceJR := d.at(200, srAlice, spec.MRoomJoinRules, "", map[string]any{"join_rule": "invite"}, aj, pl1)
			base := []gomatrixserverlib.PDU{d.create, aj, bj, pl1}
			return [][]gomatrixserverlib.PDU{append(slicesClone(base), aliceJR), append(slicesClone(base), bobJR)},
				expect{key(spec.MRoomJoinRules, ""): bobJR, key(spec.MRoomPowerLevels, ""): pl1}, nil
		},
	}, {
		name: "creator demotes a moderator concurrently with the moderator's join rule change",
		build: func(d *v12DAG) ([][]gomatrixserverlib.PDU, expect, []gomatrixserverlib.StateKeyTuple) {
			aj := d.ev("", srAlice, spec.MRoomMember, srAlice, srMember("join"))
			pl0 := d.ev("", srAlice, spec.MRoomPowerLevels, "", map[string]any{"users": map[string]any{srBob: 50}}, aj)
			jr := d.ev("", srAlice, spec.MRoomJoinRules, "", map[string]any{"join_rule": "public"}, aj, pl0)
			bj := d.ev("", srBob, spec.MRoomMember, srBob, srMember("join"), jr, pl0)
			pl1 := d.at(300, srAlice, spec.MRoomPowerLevels, "", map[string]any{}, aj, pl0)
			bobJR := d.at(100, srBob, spec.MRoomJoinRules, "", map[string]any{"join_rule": "invite"}, bj, pl0)
			return [][]gomatrixserverlib.PDU{
					{d.create, aj, bj, jr, pl1},
					{d.create, aj, bj, bobJR, pl0},
				}, expect{key(spec.MRoomJoinRules, ""): jr, key(spec.MRoomPowerLevels, ""): pl1, key(spec.MRoomMember, srBob): bj},
				nil
		},
	}, {
		name: "a ban beats the banned user's concurrent topic",
		build: func(d *v12DAG) ([][]gomatrixserverlib.PDU, expect, []gomatrixserverlib.StateKeyTuple) {
			aj := d.ev("", srAlice, spec.MRoomMember, srAlice, srMember("join"))
			pl0 := d.ev("", srAlice, spec.MRoomPowerLevels, "", map[string]any{"events": map[string]any{"m.room.topic": 0}}, aj)
			jr := d.ev("", srAlice, spec.MRoomJoinRules, "", map[string]any{"join_rule": "public"}, aj, pl0)
			bj := d.ev("", srBob, spec.MRoomMember, srBob, srMember("join"), jr, pl0)
			ban := d.at(300, srAlice, spec.MRoomMember, srBob, srMember("ban"), aj, pl0, bj)
			topic := d.at(100, srBob, spec.MRoomTopic, "", map[string]any{"topic": "hi"}, bj, pl0)
			return [][]gomatrixserverlib.PDU{
					{d.create, aj, pl0, jr, ban},
					{d.create, aj, pl0, jr, bj, topic},
				}, expect{key(spec.MRoomMember, srBob): ban, key(spec.MRoomJoinRules, ""): jr},
				[]gomatrixserverlib.StateKeyTuple{key(spec.MRoomTopic, "")}
		},
	}, {
		// Complement TestMSC4297StateResolutionV2_1_starts_from_empty_set: a state wrongly
		// claims the join rule is public after alice (who set invite) left. Starting from the
		// unconflicted state (alice left) would reject both join rules; v2.1 starts empty and
		// authorises them by their own auth events, so invite (later) wins, and alice stays left.
		name: "starts from the empty set",
		build: func(d *v12DAG) ([][]gomatrixserverlib.PDU, expect, []gomatrixserverlib.StateKeyTuple) {
			aj := d.ev("", srAlice, spec.MRoomMember, srAlice, srMember("join"))
			pl0 := d.ev("", srAlice, spec.MRoomPowerLevels, "", map[string]any{}, aj)
			pub := d.ev("", srAlice, spec.MRoomJoinRules, "", map[string]any{"join_rule": "public"}, aj, pl0)
			bj := d.ev("", srBob, spec.MRoomMember, srBob, srMember("join"), pub, pl0)
			inv := d.ev("", srAlice, spec.MRoomJoinRules, "", map[string]any{"join_rule": "invite"}, aj, pl0)
			al := d.ev("", srAlice, spec.MRoomMember, srAlice, srMember("leave"), aj, pl0)
			return [][]gomatrixserverlib.PDU{
					{d.create, al, pl0, bj, inv},
					{d.create, al, pl0, bj, pub},
				}, expect{key(spec.MRoomJoinRules, ""): inv, key(spec.MRoomMember, srAlice): al},
				nil
		},
	}, {
		// Complement TestMSC4297StateResolutionV2_1_includes_conflicted_subgraph: PL1 and PL3
		// conflict; PL2 lies between them and is in every auth chain, so only the conflicted
		// subgraph brings it in, which lets bob's PL3 pass.
		name: "includes the conflicted subgraph",
		build: func(d *v12DAG) ([][]gomatrixserverlib.PDU, expect, []gomatrixserverlib.StateKeyTuple) {
			aj := d.ev("", srAlice, spec.MRoomMember, srAlice, srMember("join"))
			pl1 := d.ev("", srAlice, spec.MRoomPowerLevels, "", map[string]any{}, aj)
			jr := d.ev("", srAlice, spec.MRoomJoinRules, "", map[string]any{"join_rule": "public"}, aj, pl1)
			bj := d.ev("", srBob, spec.MRoomMember, srBob, srMember("join"), jr, pl1)
			cj := d.ev("", srCharlie, spec.MRoomMember, srCharlie, srMember("join"), jr, pl1)
			pl2 := d.ev("", srAlice, spec.MRoomPowerLevels, "", map[string]any{
				"users": map[string]any{srBob: 50}, "events": map[string]any{"m.room.power_levels": 50}}, aj, pl1)
			pl3 := d.ev("", srBob, spec.MRoomPowerLevels, "", map[string]any{
				"users": map[string]any{srBob: 50, srCharlie: 50}, "events": map[string]any{"m.room.power_levels": 50}}, bj, pl2)
			ej := d.ev("", srEve, spec.MRoomMember, srEve, srMember("join"), jr, pl3)
			return [][]gomatrixserverlib.PDU{
					{d.create, aj, jr, bj, cj, ej, pl1},
					{d.create, aj, jr, bj, cj, ej, pl3},
				}, expect{key(spec.MRoomPowerLevels, ""): pl3, key(spec.MRoomMember, srEve): ej},
				nil
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			d := newV12DAG(t)
			sets, want, absent := tc.build(d)
			got := d.resolve(sets...)
			if got[key(spec.MRoomCreate, "")] != d.create.EventID() {
				t.Errorf("create = %q; want %s", got[key(spec.MRoomCreate, "")], d.create.EventID())
			}
			for k, e := range want {
				if got[k] != e.EventID() {
					t.Errorf("%v = %s; want %s (%s)", k, got[k], e.EventID(), e.Content())
				}
			}
			for _, k := range absent {
				if id, ok := got[k]; ok {
					t.Errorf("%v = %s; want absent", k, id)
				}
			}
		})
	}
}

func slicesClone(s []gomatrixserverlib.PDU) []gomatrixserverlib.PDU {
	return append([]gomatrixserverlib.PDU(nil), s...)
}
