-- The room directory: local room aliases and the rooms published in the public room list.

-- room_aliases: the aliases this server maintains, all of them on this server. creator may
-- delete the alias whatever its power in the room.
CREATE TABLE room_aliases (
	alias TEXT NOT NULL PRIMARY KEY,
	room_nid BIGINT NOT NULL,
	creator TEXT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_nid);

-- published_rooms: the rooms in this server's public room directory, with a summary of each
-- room's current state for listing, searching and paging without reading room state.
-- The summary is the one at rooms.state_nid = state_nid; a row whose state_nid differs from
-- its room's is stale and recomputed on the next listing (-1: never computed).
CREATE TABLE published_rooms (
	room_nid BIGINT NOT NULL PRIMARY KEY,
	room_id TEXT NOT NULL,
	state_nid BIGINT NOT NULL DEFAULT -1,
	joined BIGINT NOT NULL DEFAULT 0,
	name TEXT NOT NULL DEFAULT '',
	topic TEXT NOT NULL DEFAULT '',
	canonical_alias TEXT NOT NULL DEFAULT '',
	avatar_url TEXT NOT NULL DEFAULT '',
	join_rule TEXT NOT NULL DEFAULT '',
	history_visibility TEXT NOT NULL DEFAULT '',
	guest_access TEXT NOT NULL DEFAULT '',
	room_type TEXT NOT NULL DEFAULT '',
	-- name, topic and canonical alias, lower-cased, for generic_search_term
	search TEXT NOT NULL DEFAULT ''
);
CREATE INDEX published_rooms_order ON published_rooms (joined, room_id);
