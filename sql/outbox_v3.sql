-- dub's transactional outbox, schema version 3: relays that were not given the key's limit
-- learn it together.
--
-- limit_per_minute is the key's limit as the relays know it: given to a relay (its
-- --rate-limit, written with every turn it takes), or learned from the X-RateLimit-Limit of a
-- 429 Dub sent any relay on the key. limit_set_at is when it was last written: relays not
-- given the limit pace by it for an hour after that (a plan changes; a limit given once for a
-- test must not pace the key for ever), then send unpaced until the next 429 teaches it again.
-- NULL while nobody knows it: relays then take no turns here, only a 429's hold.

ALTER TABLE dub_outbox_budget
    ADD COLUMN IF NOT EXISTS limit_per_minute integer CHECK (limit_per_minute > 0),
    ADD COLUMN IF NOT EXISTS limit_set_at timestamptz;

INSERT INTO dub_outbox_schema (version) VALUES (3);
