-- Event store: the table postgres-es 0.5 writes (its INSERT names seven
-- columns), plus the columns the relay and the Postgres feed need
-- (ARCHITECTURE decided 1 and 2).
CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    -- Global, gap-tolerant order inside a transaction; never used alone as a cursor.
    position       bigint GENERATED ALWAYS AS IDENTITY,
    -- Writing transaction: the commit-safe cursor is (txid, position) below the
    -- snapshot xmin.
    txid           xid8                         NOT NULL DEFAULT pg_current_xact_id(),
    -- Stable id of this event for consumers (envelope `event_id`).
    event_id       uuid                         NOT NULL DEFAULT gen_random_uuid(),
    -- Wall-clock time of the append (envelope `occurred_at`).
    recorded_at    timestamptz                  NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE UNIQUE INDEX events_cursor_idx ON events (txid, position);
CREATE UNIQUE INDEX events_event_id_idx ON events (event_id);

-- Only present so postgres-es can be constructed; snapshot mode is never used.
CREATE TABLE snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json                                 NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- Wake tailers after commit (NOTIFY is delivered only when the transaction
-- commits); they fall back to a slow poll (ARCHITECTURE decided 12).
CREATE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('streamforge_events', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify_after_insert
    AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();

-- Durable cursors of event-table tailers: the relay and each Postgres-feed
-- consumer group. (last_txid, last_position) is the last envelope handed on.
CREATE TABLE tail_checkpoints
(
    name          text        PRIMARY KEY,
    last_txid     xid8        NOT NULL DEFAULT '0'::xid8,
    last_position bigint      NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Per-aggregate checkpoint of every projector (ARCHITECTURE decided 5):
-- written in the same transaction as the read-model change.
CREATE TABLE projection_checkpoints
(
    projector      text   NOT NULL,
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    sequence       bigint NOT NULL,
    PRIMARY KEY (projector, aggregate_type, aggregate_id)
);
