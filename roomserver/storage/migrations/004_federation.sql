-- Remote events kept out of the events table, so that no reader serves them to clients, but
-- still part of the DAG: later events may name them in prev_events.
--   rejected (soft_failed = FALSE): the event failed the auth rules against its own
--     auth_events or the state before it. state_after is the state before it (a rejected event
--     changes nothing), 0 when that is unknown (a rejected outlier).
--   soft-failed (soft_failed = TRUE): the event passed the auth rules at its own state but not
--     against the room's current state; it is not a forward extremity and not served, and
--     state_after is the state after it.
CREATE TABLE rejected_events (
	event_id TEXT NOT NULL PRIMARY KEY,
	room_nid BIGINT NOT NULL,
	soft_failed BOOLEAN NOT NULL,
	state_after BIGINT NOT NULL,
	event_json BYTEA NOT NULL,
	reason TEXT NOT NULL
);
