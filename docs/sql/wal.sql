-- pgws with PGWS_SOURCE=wal: the SQL side. Install once per database (psql -f docs/sql/wal.sql).
-- Replace 'postgres-websockets-listener' if you changed PGWS_LISTEN_CHANNEL.
-- The integration tests install this very file (tests/it/wal.rs), so it stays true.

-- pgws_send(channel, payload): sends `payload` to every client of `channel`, on every pgws node,
-- when the calling transaction commits (nothing is sent if it rolls back). Any size; no
-- database-wide lock at commit, unlike NOTIFY. Returns the message's WAL position.
CREATE OR REPLACE FUNCTION pgws_send(channel text, payload jsonb)
RETURNS pg_lsn
LANGUAGE sql
AS $$
  SELECT pg_logical_emit_message(
    true,
    'postgres-websockets-listener',
    json_build_object('channel', channel, 'payload', payload)::text
  )
$$;

-- A trigger function that sends each new or changed row to the channel named after its table:
--   CREATE TRIGGER messages_to_pgws AFTER INSERT OR UPDATE ON messages
--     FOR EACH ROW EXECUTE FUNCTION pgws_row_changed();
-- Clients of channel `messages` then receive {"channel":"messages","payload":{…the row…}}.
CREATE OR REPLACE FUNCTION pgws_row_changed()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
  PERFORM pgws_send(TG_TABLE_NAME, to_jsonb(NEW));
  RETURN NEW;
END
$$;
