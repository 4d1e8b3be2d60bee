-- The room DAG. roomserver is the only writer of these tables.

-- rooms: one row per room. The mutable columns (extremities, depth, state) change only under
-- the room's lock (in-process mutex plus pg_advisory_xact_lock(room_nid)).
CREATE TABLE rooms (
	room_nid BIGSERIAL PRIMARY KEY,
	room_id TEXT NOT NULL UNIQUE,
	room_version TEXT NOT NULL,
	-- forward extremities: a JSON array of event IDs
	extremities TEXT NOT NULL DEFAULT '[]',
	-- the greatest depth among the forward extremities
	depth BIGINT NOT NULL DEFAULT 0,
	-- the state snapshot after the forward extremities (the current state), 0 before the create event
	state_nid BIGINT NOT NULL DEFAULT 0,
	-- how many delta snapshots separate state_nid from its full snapshot
	state_chain BIGINT NOT NULL DEFAULT 0
);

-- events: every event we hold. stream_pos is the position in the room-event stream (0 for
-- outliers). event_json is the event as served: the redacted form once redacted_by is set.
CREATE TABLE events (
	event_nid BIGSERIAL PRIMARY KEY,
	event_id TEXT NOT NULL UNIQUE,
	room_nid BIGINT NOT NULL,
	stream_pos BIGINT NOT NULL,
	type TEXT NOT NULL,
	state_key TEXT,
	sender TEXT NOT NULL,
	depth BIGINT NOT NULL,
	state_before BIGINT NOT NULL,
	state_after BIGINT NOT NULL,
	event_json BYTEA NOT NULL,
	redacted BOOLEAN NOT NULL DEFAULT FALSE,
	redacted_by TEXT,
	txn_device TEXT,
	txn_id TEXT
);
CREATE INDEX events_room_pos ON events (room_nid, stream_pos);
CREATE INDEX events_pos ON events (stream_pos);
CREATE INDEX events_member_pos ON events (state_key, stream_pos) WHERE type = 'm.room.member';
CREATE UNIQUE INDEX events_txn ON events (sender, txn_device, txn_id);

-- state_snapshots: the state after some event. A full snapshot (parent_nid = 0) lists every
-- state entry; a delta lists only the entries that differ from its parent. Chains are cut at
-- a bounded length by writing a full snapshot, so reading a state touches at most one full
-- snapshot plus a few single-row deltas, and writing a state event usually writes one row.
CREATE TABLE state_snapshots (
	snapshot_nid BIGSERIAL PRIMARY KEY,
	room_nid BIGINT NOT NULL,
	parent_nid BIGINT NOT NULL
);

-- state_entries: event_nid 0 means the (type, state_key) was removed relative to the parent.
CREATE TABLE state_entries (
	snapshot_nid BIGINT NOT NULL,
	type TEXT NOT NULL,
	state_key TEXT NOT NULL,
	event_nid BIGINT NOT NULL,
	PRIMARY KEY (snapshot_nid, type, state_key)
);

-- current_state: the state at the forward extremities, for cheap auth and lookups.
CREATE TABLE current_state (
	room_nid BIGINT NOT NULL,
	type TEXT NOT NULL,
	state_key TEXT NOT NULL,
	event_nid BIGINT NOT NULL,
	PRIMARY KEY (room_nid, type, state_key)
);

-- memberships: the current m.room.member state of each user in each room.
CREATE TABLE memberships (
	room_nid BIGINT NOT NULL,
	user_id TEXT NOT NULL,
	membership TEXT NOT NULL,
	event_nid BIGINT NOT NULL,
	PRIMARY KEY (room_nid, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id, membership);

-- redactions: every redaction event, so that one arriving before its target is applied when
-- the target arrives.
CREATE TABLE redactions (
	redaction_id TEXT NOT NULL PRIMARY KEY,
	redacts_id TEXT NOT NULL,
	applied BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX redactions_redacts ON redactions (redacts_id);
