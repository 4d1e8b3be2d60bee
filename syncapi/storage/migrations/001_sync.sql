-- syncapi's own data: receipts, presence and forgotten rooms. Room events live in roomserver
-- and account data in userapi; syncapi reads those through their owners.

-- receipts: the newest receipt of each (room, type, user, thread). thread_id is '' for an
-- unthreaded receipt. stream_pos is the position in the receipts stream of the last change.
CREATE TABLE receipts (
	room_id TEXT NOT NULL,
	receipt_type TEXT NOT NULL,
	user_id TEXT NOT NULL,
	thread_id TEXT NOT NULL,
	event_id TEXT NOT NULL,
	ts BIGINT NOT NULL,
	stream_pos BIGINT NOT NULL,
	PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX receipts_pos ON receipts (stream_pos);

-- presence: each local user's presence. stream_pos moves only when what others see changes
-- (the state or the status message), not on every sync.
CREATE TABLE presence (
	user_id TEXT NOT NULL PRIMARY KEY,
	presence TEXT NOT NULL,
	status_msg TEXT,
	last_active_ts BIGINT NOT NULL,
	stream_pos BIGINT NOT NULL
);
CREATE INDEX presence_pos ON presence (stream_pos);

-- forgotten_rooms: rooms a user forgot, with the position of the membership event they forgot
-- at. A later membership (a rejoin) makes the room remembered again.
CREATE TABLE forgotten_rooms (
	user_id TEXT NOT NULL,
	room_id TEXT NOT NULL,
	membership_pos BIGINT NOT NULL,
	PRIMARY KEY (user_id, room_id)
);
