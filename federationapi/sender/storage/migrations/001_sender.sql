-- The federation sender's durable outbound queue. The room-event stream lives in roomserver;
-- the sender remembers how far it has enqueued and what each destination has yet to receive.

-- sender_state: named positions; 'rooms' is the room-event stream position up to which every
-- event has been enqueued for its destinations.
CREATE TABLE sender_state (
	name TEXT NOT NULL PRIMARY KEY,
	pos BIGINT NOT NULL
);

-- sender_pdus: each PDU still owed to at least one destination, as sent (no unsigned section).
CREATE TABLE sender_pdus (
	pdu_nid BIGSERIAL PRIMARY KEY,
	event_id TEXT NOT NULL,
	pdu_json BYTEA NOT NULL
);

-- sender_queue: what each destination has yet to receive, in queue_nid order. Exactly one of
-- pdu_nid and edu_json is set.
CREATE TABLE sender_queue (
	queue_nid BIGSERIAL PRIMARY KEY,
	destination TEXT NOT NULL,
	pdu_nid BIGINT,
	edu_json BYTEA
);
CREATE INDEX sender_queue_dest ON sender_queue (destination, queue_nid);
CREATE INDEX sender_queue_pdu ON sender_queue (pdu_nid);

-- sender_destinations: delivery state of destinations that have failed: consecutive failures
-- and when to try again (unix milliseconds). A success deletes the row.
CREATE TABLE sender_destinations (
	destination TEXT NOT NULL PRIMARY KEY,
	failures BIGINT NOT NULL,
	retry_at BIGINT NOT NULL
);
