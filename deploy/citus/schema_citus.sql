-- distribmail on Citus: the log (events), the fold queue and the projection (messages)
-- distributed by the message they belong to. UNTESTED: no Citus cluster was available
-- where this was written; read docs/scaling.md ("Past one machine") before using it.
--
-- Run on the coordinator, on an EMPTY database, after schema.sql has created the tables
-- (and before any row is written), then let the application run unchanged except for the
-- one column below, which the database fills itself.
--
-- Distribution column: shard_key, a 32-bit hash of the tracked message (provider,
-- message-id, recipient), computed by a generated column, so the application writes
-- nothing new. All the rows of one message (its events, its queue rows, its projection
-- row) live on one worker node, so the append, the trigger that queues the fold, and the
-- projector's read-fold-upsert of a message are each single-shard: no distributed
-- transaction on the hot path.

CREATE EXTENSION IF NOT EXISTS citus;

-- 1. The key. hashtext is stable across nodes and versions of PostgreSQL of one major.
--    coalesce: flagged events without a message-id or recipient still get a key (they
--    are spread by their dedup key instead; they never take part in a fold).
ALTER TABLE events
    ADD COLUMN shard_key integer GENERATED ALWAYS AS (
        CASE WHEN message_id IS NOT NULL AND recipient IS NOT NULL
             THEN hashtext(provider || chr(31) || message_id || chr(31) || recipient)
             ELSE hashtext(encode(dedup_key, 'hex'))
        END) STORED;
ALTER TABLE fold_queue
    ADD COLUMN shard_key integer GENERATED ALWAYS AS (
        hashtext(provider || chr(31) || message_id || chr(31) || recipient)) STORED;
ALTER TABLE messages
    ADD COLUMN shard_key integer GENERATED ALWAYS AS (
        hashtext(provider || chr(31) || message_id || chr(31) || recipient)) STORED;

-- 2. Uniqueness must include the distribution column (Citus can only enforce a unique
--    constraint inside one shard). That is as strict as before:
--    - events: the dedup key is a hash over (provider, source, message-id, recipient,
--      event, time, link), which includes the message key; the same dedup key therefore
--      always comes with the same shard_key, and two rows with one dedup key can never
--      sit on two shards. A retransmission still lands on the same shard and still hits
--      ON CONFLICT DO NOTHING. (Events keyed by their payload, the flagged ones, take
--      their shard_key from the dedup key itself: same argument.) With the monthly
--      partitions of issue 7 part 5 the constraint also holds event_at:
--      UNIQUE NULLS NOT DISTINCT (dedup_key, event_at, shard_key).
--    - messages: shard_key is a function of (provider, message_id, recipient).
--    The recorder's ON CONFLICT target changes to the new column list
--    (ON CONFLICT ON CONSTRAINT events_dedup_key_unique keeps working unchanged).
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_dedup_key_unique;
ALTER TABLE events
    ADD CONSTRAINT events_dedup_key_unique UNIQUE NULLS NOT DISTINCT (dedup_key, shard_key);
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_pkey;
ALTER TABLE events ADD PRIMARY KEY (id, shard_key);

ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_key_unique;
ALTER TABLE messages
    ADD CONSTRAINT messages_key_unique UNIQUE (provider, message_id, recipient, shard_key);
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_pkey;
ALTER TABLE messages ADD PRIMARY KEY (id, shard_key);

ALTER TABLE fold_queue DROP CONSTRAINT IF EXISTS fold_queue_pkey;
ALTER TABLE fold_queue ADD PRIMARY KEY (id, shard_key);

-- 3. Distribute, co-located: the three tables' shards of one key range sit together.
SELECT create_distributed_table('events', 'shard_key', shard_count => 32);
SELECT create_distributed_table('messages', 'shard_key', colocate_with => 'events');
SELECT create_distributed_table('fold_queue', 'shard_key', colocate_with => 'events');

-- Small bookkeeping: one copy on every node.
SELECT create_reference_table('backfill_progress');

-- 4. What this changes for the code (docs/scaling.md lists it):
--    - the events trigger (queue for fold) and the append-only triggers run on the
--      workers' shards: Citus propagates them with the distributed table when
--      citus.enable_unsafe_triggers is on; they only touch the same shard_key (the
--      fold_queue row of the event's own message), which is what makes them safe;
--    - LISTEN/NOTIFY does not cross nodes: the projector falls back to its poll
--      interval (DISTRIBMAIL_PROJECTOR_POLL), or runs one per worker node;
--    - the projector's "DELETE ... FOR UPDATE SKIP LOCKED" over the whole queue becomes
--      a multi-shard statement: run one projector per shard group instead, each draining
--      WHERE shard_key BETWEEN its range (the ranges from pg_dist_shard);
--    - the read API's list (a day, newest first, keyset on sent_at, id) is a multi-shard
--      query merged on the coordinator: fine for a day's page, watch its p95.
