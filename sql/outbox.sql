-- dub's transactional outbox, schema version 1 (https://docs.rs/dub: module `outbox`).
--
-- `dub::outbox::migrate` (or `dub-track outbox migrate`) applies this file once, under an
-- advisory lock, and records it in dub_outbox_schema. Teams with their own migration tool may
-- apply it themselves instead: it records its version the same way, so `migrate` then finds
-- nothing to do. It creates its objects in the first schema of the search_path.
--
-- Producers insert rows with plain SQL, in the JSON record format `dub-track send` reads:
--
--   INSERT INTO dub_outbox (event)
--   VALUES ('{"type":"sale","customerExternalId":"user_42","amount":4900,"invoiceId":"in_1"}')
--   ON CONFLICT DO NOTHING;
--
-- The names of the table and of the columns event, state, last_error and response are a
-- contract; the other columns belong to the relays.

CREATE TABLE IF NOT EXISTS dub_outbox_schema (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- JavaScript's String.prototype.trim, which Dub applies to a lead's customerExternalId and
-- eventName: whitespace and line terminators (Unicode's space separators, tab, vertical tab,
-- form feed, no-break space, byte-order mark, LF, CR, line and paragraph separators).
CREATE FUNCTION dub_outbox_js_trim(value text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT btrim(value, E'\t\n\u000B\f\r \u00A0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200A\u2028\u2029\u202F\u205F\u3000\uFEFF')
$$;

-- The key under which Dub deduplicates an event, or NULL when it does not:
-- a sale with a non-empty invoiceId: the invoice;
-- a lead in mode async (the default) or wait: the customer and the event name, as Dub
--   normalises them (both trimmed; the name lowercased, spaces as dashes).
-- A sale without invoiceId and a lead in mode deferred (or a mode this version does not know)
-- have none: each such row is its own event, delivered at most once.
CREATE FUNCTION dub_outbox_dedup_key(event jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE
    WHEN event->>'type' = 'sale' AND event->>'invoiceId' <> ''
        THEN 'sale:' || (event->>'invoiceId')
    WHEN event->>'type' = 'lead' AND coalesce(event->>'mode', 'async') IN ('async', 'wait')
        AND dub_outbox_js_trim(event->>'customerExternalId') IS NOT NULL
        AND dub_outbox_js_trim(event->>'eventName') IS NOT NULL
        -- The customer's length first, so that no customer and name run into each other.
        THEN 'lead:' || length(dub_outbox_js_trim(event->>'customerExternalId'))::text || ':'
            || dub_outbox_js_trim(event->>'customerExternalId') || ':'
            || replace(lower(dub_outbox_js_trim(event->>'eventName')), ' ', '-')
END
$$;

CREATE TABLE dub_outbox (
    id              bigserial PRIMARY KEY,
    -- The contract: the record, its state, the last error as dub-track prints it, and Dub's
    -- answer once delivered.
    event           jsonb NOT NULL,
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'in_flight', 'delivered', 'failed', 'uncertain')),
    last_error      text,
    response        jsonb,
    -- A customer's events are delivered in insertion order (its lead before its sales); the
    -- id is trimmed as Dub trims a lead's.
    customer        text GENERATED ALWAYS AS (dub_outbox_js_trim(event->>'customerExternalId')) STORED,
    -- Unique, so that ON CONFLICT DO NOTHING drops the second copy of an event Dub
    -- deduplicates, and no two attempts of one invoice can ever be in flight at once.
    dedup_key       text GENERATED ALWAYS AS (dub_outbox_dedup_key(event)) STORED UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    -- Not claimed before this time: a retry's backoff, or the end of an earlier attempt that
    -- may still be in flight at Dub.
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- The relay holding the row in_flight, and until when: past it, another relay takes the
    -- row over.
    locked_by       text,
    locked_until    timestamptz,
    -- An attempt may have reached Dub: an event Dub does not deduplicate is then never sent
    -- again (it ends uncertain).
    maybe_sent      boolean NOT NULL DEFAULT false,
    -- When the row reached delivered, failed or uncertain; delivered rows are pruned after a
    -- retention period.
    finished_at     timestamptz
);

-- What relays claim: pending rows that are due, and the rows whose lease ran out.
CREATE INDEX dub_outbox_due ON dub_outbox (next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX dub_outbox_leases ON dub_outbox (locked_until) WHERE state = 'in_flight';
-- A customer's earlier undelivered events, which hold back its later ones.
CREATE INDEX dub_outbox_customer_open ON dub_outbox (customer, id)
    WHERE state IN ('pending', 'in_flight');
-- Pruning, and the counts of `stats`.
CREATE INDEX dub_outbox_finished ON dub_outbox (state, finished_at)
    WHERE state IN ('delivered', 'failed', 'uncertain');

-- Wakes idle relays when events are committed (notifications are sent at commit, once per
-- channel and payload within a transaction); relays also poll, so none is ever required.
CREATE FUNCTION dub_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dub_outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER dub_outbox_notify AFTER INSERT ON dub_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION dub_outbox_notify();

INSERT INTO dub_outbox_schema (version) VALUES (1);
