-- The notification of an events insert names the aggregate types it
-- inserted (comma-separated, each once), so that a feed of a few types
-- (a node's revocation and live followers, the home feed) ignores the
-- commits of other types instead of reading the store after each of them
-- (issue 14: three typed feeds read once per login). An empty payload
-- (an insert of no rows) concerns every feed.
CREATE OR REPLACE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('streamforge_events',
                      COALESCE((SELECT string_agg(DISTINCT aggregate_type, ',') FROM new_events), ''));
    RETURN NULL;
END;
$$;

DROP TRIGGER events_notify_after_insert ON events;

CREATE TRIGGER events_notify_after_insert
    AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();
