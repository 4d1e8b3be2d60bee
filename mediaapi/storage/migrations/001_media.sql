-- Media: one row per mxc:// URI, local or cached from a remote server. content_hash names the
-- blob (the SHA-256 of the bytes, so identical files share one blob); it is NULL while an
-- asynchronous upload (/_matrix/media/v1/create) waits for its content, until expires_ts.
CREATE TABLE media (
	origin TEXT NOT NULL,
	media_id TEXT NOT NULL,
	content_hash TEXT,
	size BIGINT NOT NULL DEFAULT 0,
	content_type TEXT NOT NULL DEFAULT '',
	upload_name TEXT NOT NULL DEFAULT '',
	user_id TEXT NOT NULL DEFAULT '',
	created_ts BIGINT NOT NULL,
	expires_ts BIGINT NOT NULL DEFAULT 0,
	PRIMARY KEY (origin, media_id)
);
CREATE INDEX media_pending ON media (user_id, expires_ts) WHERE content_hash IS NULL;

-- Thumbnails of media, keyed by the size and method they were made for (a configured size,
-- or a requested one when dynamic_thumbnails is on).
CREATE TABLE media_thumbnails (
	origin TEXT NOT NULL,
	media_id TEXT NOT NULL,
	width INTEGER NOT NULL,
	height INTEGER NOT NULL,
	method TEXT NOT NULL,
	content_hash TEXT NOT NULL,
	content_type TEXT NOT NULL,
	size BIGINT NOT NULL,
	PRIMARY KEY (origin, media_id, width, height, method)
);
