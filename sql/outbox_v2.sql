-- dub's transactional outbox, schema version 2: the rate-limit budget relays share.
--
-- Every relay on one Dub API key takes its turns from one row here (GCRA: the row holds the
-- theoretical arrival time of the next turn), so N relays pace together at the key's limit
-- instead of N times it. The key is a SHA-256 of the API key: the API key itself never enters
-- the database. UNLOGGED: losing the row in a crash only resets the pacing.

CREATE UNLOGGED TABLE IF NOT EXISTS dub_outbox_budget (
    key text PRIMARY KEY,
    tat timestamptz NOT NULL
);

INSERT INTO dub_outbox_schema (version) VALUES (2);
