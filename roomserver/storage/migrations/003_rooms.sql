-- Transaction IDs are scoped to the room as well as the sender's device: the same txn_id sent
-- to two rooms makes two events (Synapse keys its transaction cache by the request path).
DROP INDEX events_txn;
CREATE UNIQUE INDEX events_room_txn ON events (room_nid, sender, txn_device, txn_id);
