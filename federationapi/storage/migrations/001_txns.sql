-- Inbound /send transactions already processed, so that a retried transaction gets the same
-- answer without being processed again. Rows older than a day are deleted.
CREATE TABLE federation_txns (
	origin TEXT NOT NULL,
	txn_id TEXT NOT NULL,
	response TEXT NOT NULL,
	created_ts BIGINT NOT NULL,
	PRIMARY KEY (origin, txn_id)
);
CREATE INDEX federation_txns_created ON federation_txns (created_ts);
