-- Accounts, devices and tokens. Tokens are stored only as SHA-256 hashes.
CREATE TABLE accounts (
	user_id TEXT NOT NULL PRIMARY KEY,
	password_hash TEXT,
	is_admin BOOLEAN NOT NULL DEFAULT FALSE,
	is_guest BOOLEAN NOT NULL DEFAULT FALSE,
	created_ts BIGINT NOT NULL,
	deactivated BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE profiles (
	user_id TEXT NOT NULL PRIMARY KEY,
	displayname TEXT,
	avatar_url TEXT
);

CREATE TABLE devices (
	user_id TEXT NOT NULL,
	device_id TEXT NOT NULL,
	display_name TEXT,
	created_ts BIGINT NOT NULL,
	last_seen_ts BIGINT NOT NULL DEFAULT 0,
	last_seen_ip TEXT NOT NULL DEFAULT '',
	last_seen_user_agent TEXT NOT NULL DEFAULT '',
	PRIMARY KEY (user_id, device_id)
);

CREATE TABLE access_tokens (
	token_hash TEXT NOT NULL PRIMARY KEY,
	user_id TEXT NOT NULL,
	device_id TEXT NOT NULL,
	created_ts BIGINT NOT NULL,
	expires_ts BIGINT NOT NULL DEFAULT 0,
	-- the refresh token this access token was minted from; revoked when this token is first used
	refresh_parent TEXT NOT NULL DEFAULT ''
);
CREATE INDEX access_tokens_device ON access_tokens (user_id, device_id);

CREATE TABLE refresh_tokens (
	token_hash TEXT NOT NULL PRIMARY KEY,
	user_id TEXT NOT NULL,
	device_id TEXT NOT NULL,
	created_ts BIGINT NOT NULL
);
CREATE INDEX refresh_tokens_device ON refresh_tokens (user_id, device_id);

CREATE TABLE account_data (
	user_id TEXT NOT NULL,
	room_id TEXT NOT NULL,
	type TEXT NOT NULL,
	content TEXT NOT NULL,
	stream_pos BIGINT NOT NULL,
	PRIMARY KEY (user_id, room_id, type)
);
CREATE INDEX account_data_stream ON account_data (user_id, stream_pos);

CREATE TABLE filters (
	user_id TEXT NOT NULL,
	filter_id BIGINT NOT NULL,
	filter TEXT NOT NULL,
	PRIMARY KEY (user_id, filter_id)
);

-- User-interactive auth sessions, bound to the request that started them.
CREATE TABLE uia_sessions (
	session_id TEXT NOT NULL PRIMARY KEY,
	user_id TEXT NOT NULL,
	method TEXT NOT NULL,
	uri TEXT NOT NULL,
	completed TEXT NOT NULL,
	created_ts BIGINT NOT NULL
);

CREATE TABLE registration_tokens (
	token TEXT NOT NULL PRIMARY KEY,
	uses_allowed BIGINT,
	pending BIGINT NOT NULL DEFAULT 0,
	completed BIGINT NOT NULL DEFAULT 0,
	expiry_ts BIGINT
);

-- Nonces for shared-secret registration (/_synapse/admin/v1/register).
CREATE TABLE admin_nonces (
	nonce TEXT NOT NULL PRIMARY KEY,
	created_ts BIGINT NOT NULL
);
