-- Other servers' signing keys, as the key ring caches them. valid_until_ts is the
-- publisher's valid_until_ts, capped at seven days after the fetch; expired_ts is 0 for a
-- current key and the expiry for an old one (then valid_until_ts is 0).
CREATE TABLE server_signing_keys (
	server_name TEXT NOT NULL,
	key_id TEXT NOT NULL,
	public_key TEXT NOT NULL,
	valid_until_ts BIGINT NOT NULL,
	expired_ts BIGINT NOT NULL,
	fetched_ts BIGINT NOT NULL,
	PRIMARY KEY (server_name, key_id)
);

-- The newest /_matrix/key/v2/server response each server sent us, exactly as it signed
-- it, so that the notary endpoint can pass it on with our signature added.
CREATE TABLE server_key_responses (
	server_name TEXT NOT NULL PRIMARY KEY,
	valid_until_ts BIGINT NOT NULL,
	fetched_ts BIGINT NOT NULL,
	response TEXT NOT NULL
);
