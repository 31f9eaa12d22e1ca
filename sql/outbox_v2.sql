-- dub's transactional outbox, schema version 2: the rate-limit budget relays share.
--
-- Every relay on one Dub API key takes its turns from one row here (GCRA: the row holds the
-- theoretical arrival time of the next turn), so N relays pace together at the key's limit
-- instead of N times it. The key is a SHA-256 of the API key: the API key itself never enters
-- the database. UNLOGGED: losing the row in a crash only resets the pacing.
--
-- limit_per_minute is the key's limit as the relays know it: given to a relay (its
-- --rate-limit), or learned from the X-RateLimit-Limit of a 429 Dub sent any relay on the key.
-- NULL while nobody knows it: relays then take no turns here, only a 429's hold.

CREATE UNLOGGED TABLE IF NOT EXISTS dub_outbox_budget (
    key text PRIMARY KEY,
    tat timestamptz NOT NULL,
    limit_per_minute integer CHECK (limit_per_minute > 0)
);

INSERT INTO dub_outbox_schema (version) VALUES (2);
