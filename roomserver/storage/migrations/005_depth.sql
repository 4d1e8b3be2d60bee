-- Initial syncs pick a room's recent events in topological order (depth, then stream
-- position), as Synapse does, so that a late fork does not push the room's newest events
-- out of a short timeline.
CREATE INDEX events_room_depth ON events (room_nid, depth, stream_pos);
