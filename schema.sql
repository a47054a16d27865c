-- distribmail's whole database, applied by the app at start and by `distribmail db init`.
-- Every statement is idempotent: applying this file twice changes nothing.

-- ---------------------------------------------------------------------------------------
-- The log: one row per received event, never updated, never deleted.
-- ---------------------------------------------------------------------------------------
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_class WHERE oid = to_regclass('events') AND relkind <> 'p') THEN
        RAISE EXCEPTION 'events exists but is not partitioned (a pre-0.1 log): copy it into a '
            'new database with this schema (INSERT INTO events SELECT ...) before upgrading';
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS events (
    -- Arrival position. NOT commit order: a transaction that started earlier can commit
    -- a smaller id later, so readers must not use it as a high-water mark (see fold_queue).
    id           bigserial   NOT NULL,
    -- The message key (provider, message_id, recipient) compares byte by byte (COLLATE
    -- "C"): identifiers, not words. The locale's collation made every comparison in its
    -- index a strcoll call (measured: a sixth of a 500-event append's server time).
    provider     text        COLLATE "C" NOT NULL,
    source       text        NOT NULL,              -- webhook | api
    -- sha256 of what the event says (provider, source, message-id, recipient, event,
    -- time in ms, link): a retransmission hits it and is a no-op.
    dedup_key    bytea       NOT NULL,
    message_id   text        COLLATE "C",           -- normalized: no <>, no blanks
    recipient    text        COLLATE "C",           -- lower-case
    event        text,                              -- the provider's own name
    event_at     timestamptz,                       -- from ts_epoch (UTC) when present
    received_at  timestamptz NOT NULL DEFAULT now(),
    -- Why the event was stored but left out of the fold (unknown event, no message-id,
    -- no time ...); NULL when it was understood.
    problem      text,
    payload      jsonb       NOT NULL,              -- the event object as received
    -- A unique constraint on a partitioned table must hold the partition column. The key
    -- is computed from the event's time (ingest.events.dedup_key), so one key always
    -- comes with one event_at and this is as strict as UNIQUE (dedup_key); NULLS NOT
    -- DISTINCT keeps undated (flagged) events unique too. event_at first: events come
    -- about in time order, so new entries land at the index's end instead of at random
    -- pages of it (measured on a log of a million rows: a 500-event insert 27 -> 12 ms),
    -- and the same index serves scans by time.
    CONSTRAINT events_dedup_key_unique UNIQUE NULLS NOT DISTINCT (event_at, dedup_key)
) PARTITION BY RANGE (event_at);

-- One partition a month (events_YYYY_MM, UTC months), made ahead by schema.sql and on
-- demand by the writer (events_ensure_month); old months are archived explicitly with
-- `distribmail archive`. Undated events, and times too far off to be real (ingest.recorder
-- decides), go to the default partition.
CREATE TABLE IF NOT EXISTS events_undated PARTITION OF events DEFAULT;

-- A log made before the key compared byte by byte: its key columns (and so their index,
-- rebuilt; the rows are not rewritten) take COLLATE "C" once. Detached (archived) months
-- keep their own collation.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation
                WHERE a.attrelid = 'events'::regclass
                  AND a.attname IN ('provider', 'message_id', 'recipient')
                  AND c.collname <> 'C') THEN
        ALTER TABLE events ALTER COLUMN provider TYPE text COLLATE "C",
                           ALTER COLUMN message_id TYPE text COLLATE "C",
                           ALTER COLUMN recipient TYPE text COLLATE "C";
    END IF;
END
$$;

-- A log made before the dedup index led with the time: rebuilt once in the new order (a
-- lock on the log while it is). Its time index is then redundant, and goes.
DO $$
BEGIN
    IF (SELECT pg_get_constraintdef(oid) FROM pg_constraint
         WHERE conrelid = 'events'::regclass AND conname = 'events_dedup_key_unique')
       LIKE '%(dedup_key, event_at)%' THEN
        ALTER TABLE events DROP CONSTRAINT events_dedup_key_unique;
        ALTER TABLE events ADD CONSTRAINT events_dedup_key_unique
            UNIQUE NULLS NOT DISTINCT (event_at, dedup_key);
    END IF;
END
$$;
DROP INDEX IF EXISTS events_event_at_idx;

CREATE INDEX IF NOT EXISTS events_message_idx ON events (provider, message_id, recipient);
CREATE INDEX IF NOT EXISTS events_received_at_idx ON events (received_at);

-- Append-only, enforced here rather than promised by the application.
CREATE OR REPLACE FUNCTION events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events is an append-only log: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE OR REPLACE TRIGGER events_no_update_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();

CREATE OR REPLACE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

-- A TRUNCATE of one partition does not fire the parent's trigger: each partition gets its
-- own (row triggers, for UPDATE and DELETE, are cloned to partitions by PostgreSQL).
CREATE OR REPLACE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events_undated
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

-- The partition of the UTC month holding `moment`, created if missing; returns its name.
-- Created apart and then ATTACHed: ATTACH takes SHARE UPDATE EXCLUSIVE on `events`, which
-- lets appends and reads go on (CREATE TABLE ... PARTITION OF would take ACCESS EXCLUSIVE
-- and queue every webhook behind the longest open reader, a replay say). The CHECK spares
-- ATTACH its scan of the new table. lock_timeout: better to fail (the writer spools and
-- retries) than to wait behind a long transaction.
CREATE OR REPLACE FUNCTION events_ensure_month(moment timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    first_day timestamp := date_trunc('month', moment AT TIME ZONE 'UTC');
    lower_bound timestamptz := first_day AT TIME ZONE 'UTC';
    upper_bound timestamptz := (first_day + interval '1 month') AT TIME ZONE 'UTC';
    partition text := 'events_' || to_char(first_day, 'YYYY_MM');
BEGIN
    IF to_regclass(partition) IS NOT NULL THEN
        RETURN partition;
    END IF;
    PERFORM set_config('lock_timeout', '5s', true);
    -- Writers may ask for the same month at once: one creates it, the others wait.
    PERFORM pg_advisory_xact_lock(hashtext('events_ensure_month'));
    IF to_regclass(partition) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I (LIKE events INCLUDING DEFAULTS,'
            ' CONSTRAINT %I CHECK (event_at IS NOT NULL AND event_at >= %L AND event_at < %L))',
            partition, partition || '_bounds', lower_bound, upper_bound);
        EXECUTE format(
            'CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON %I'
            ' FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change()',
            partition);
        EXECUTE format(
            'ALTER TABLE events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
            partition, lower_bound, upper_bound);
    END IF;
    RETURN partition;
END
$$;

SELECT events_ensure_month(now());
SELECT events_ensure_month(now() + interval '1 month');

-- ---------------------------------------------------------------------------------------
-- The "to fold" queue: filled by the append's own transaction, so a message appears here
-- exactly when its new events become visible, whatever the commit order. The projector
-- drains it with FOR UPDATE SKIP LOCKED; nothing committed late can be skipped.
-- ---------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS fold_queue (
    id          bigserial PRIMARY KEY,
    provider    text NOT NULL,
    message_id  text NOT NULL,
    recipient   text NOT NULL,
    queued_at   timestamptz NOT NULL DEFAULT now()
);

-- One statement-level trigger per append (not per row): a 500-event batch costs one
-- INSERT ... SELECT DISTINCT. No NOTIFY here: it would serialize every commit on
-- PostgreSQL's notification lock; the writer notifies after its commit (ingest.notify).
CREATE OR REPLACE FUNCTION events_queue_for_fold() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fold_queue (provider, message_id, recipient)
    SELECT DISTINCT provider, message_id, recipient
      FROM appended
     WHERE message_id IS NOT NULL AND recipient IS NOT NULL;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER events_queue_for_fold
    AFTER INSERT ON events
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION events_queue_for_fold();

-- ---------------------------------------------------------------------------------------
-- The projection: one row per tracked message (provider, message-id, recipient), derived
-- from the log by the fold. Rebuildable at any time by `distribmail replay`.
-- ---------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS messages (
    -- Stable across replays: derived from the key (query.projection.message_key_id).
    id                  text        PRIMARY KEY,
    provider            text        NOT NULL,
    message_id          text        NOT NULL,
    recipient           text        NOT NULL,
    sender              text,
    subject             text,
    tags                text[]      NOT NULL DEFAULT '{}',
    sent_at             timestamptz NOT NULL,   -- the request's time, else the earliest event's
    status              text,                   -- NULL while only unknown events are known
    status_at           timestamptz,
    last_event_at       timestamptz,
    first_delivered_at  timestamptz,
    first_opened_at     timestamptz,
    opens               integer     NOT NULL DEFAULT 0,
    proxy_opens         integer     NOT NULL DEFAULT 0,
    clicks              integer     NOT NULL DEFAULT 0,
    folded_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT messages_key_unique UNIQUE (provider, message_id, recipient)
);

-- The list: a day or a range, newest first, keyset-paginated on (sent_at, id).
CREATE INDEX IF NOT EXISTS messages_sent_idx ON messages (sent_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS messages_status_sent_idx ON messages (status, sent_at DESC, id DESC);

-- ---------------------------------------------------------------------------------------
-- Backfill progress (`distribmail backfill`): one row per chunk (at most 90 days, Brevo's
-- limit) of a requested range, written after each page is appended, so that an
-- interrupted backfill resumes at the next page. Bookkeeping only: the log's dedup key is
-- what makes pulling a page twice harmless.
-- ---------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS backfill_progress (
    provider         text        NOT NULL,
    range_start      date        NOT NULL,   -- the range the command was asked for
    range_end        date        NOT NULL,
    chunk_start      date        NOT NULL,   -- this chunk, inside that range
    chunk_end        date        NOT NULL,
    next_offset      integer     NOT NULL DEFAULT 0,
    done             boolean     NOT NULL DEFAULT false,
    -- Offsets of pages Brevo kept answering malformed: skipped, reported, not retried.
    skipped_offsets  integer[]   NOT NULL DEFAULT '{}',
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, range_start, range_end, chunk_start)
);

-- ---------------------------------------------------------------------------------------
-- Least privilege. The role `distribmail_app` may do what the service does (append to the
-- log, fold into the projection, read, backfill) and nothing else: no UPDATE, DELETE or
-- TRUNCATE on the log (on top of its triggers), no DDL. An admin applies this file as the
-- tables' owner (`distribmail db init`), then runs the service as a login role that is a
-- member of distribmail_app (README, "Running with least privilege"); `distribmail
-- replay` and `distribmail archive` rebuild and detach tables, so they run as the owner.
-- Done only when the connecting user may create the role (or it exists) and owns the
-- tables; otherwise this block does nothing and the service runs as the owner, as before.
-- ---------------------------------------------------------------------------------------
DO $$
BEGIN
    IF NOT pg_has_role(current_user, (SELECT relowner FROM pg_class
                                       WHERE oid = to_regclass('events')), 'USAGE') THEN
        RETURN;  -- not the owner: it cannot grant, and must not fail the schema for that
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'distribmail_app') THEN
        IF NOT (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
            RAISE NOTICE 'role distribmail_app not created: % may not create roles', current_user;
            RETURN;
        END IF;
        BEGIN
            CREATE ROLE distribmail_app NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- roles are cluster-wide: another database's schema made it meanwhile
        END;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO distribmail_app', current_schema());
    -- Partitions are reached through `events`, whose privileges are the ones checked.
    GRANT SELECT, INSERT ON events TO distribmail_app;
    REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON events FROM distribmail_app;
    EXECUTE format('GRANT USAGE ON SEQUENCE %s TO distribmail_app',
                   pg_get_serial_sequence('events', 'id'));
    -- The append's trigger fills the queue as the appender; the projector drains it
    -- (its FOR UPDATE SKIP LOCKED needs UPDATE).
    GRANT SELECT, INSERT, UPDATE, DELETE ON fold_queue TO distribmail_app;
    EXECUTE format('GRANT USAGE ON SEQUENCE %s TO distribmail_app',
                   pg_get_serial_sequence('fold_queue', 'id'));
    GRANT SELECT, INSERT, UPDATE, DELETE ON messages TO distribmail_app;
    GRANT SELECT, INSERT, UPDATE ON backfill_progress TO distribmail_app;
    -- The writer makes next month's partition on demand: as the owner, who alone may.
    -- (CREATE OR REPLACE above resets these two settings; they are set again every time.)
    ALTER FUNCTION events_ensure_month(timestamptz) SECURITY DEFINER;
    EXECUTE format('ALTER FUNCTION events_ensure_month(timestamptz) SET search_path = %I, pg_temp',
                   current_schema());
    REVOKE EXECUTE ON FUNCTION events_ensure_month(timestamptz) FROM PUBLIC;
    GRANT EXECUTE ON FUNCTION events_ensure_month(timestamptz) TO distribmail_app;
END
$$;
