-- The guide's data sync: fetch the changed entity, POST it to two services
-- with jobs.fetch, log the sync. An unknown entity type can never succeed, so
-- it fails at once instead of being retried five times (jobs.non_retriable).
-- The services' hosts must be in jobs.fetch_allowed_hosts.
--
--   const data = await step.run("fetch-data", async () => { switch (entityType) {
--       case "user": ...; case "order": ...; default: throw new Error(`Unknown entity type: ${entityType}`); } });
--   await step.run("sync-to-service-a", ...);   await step.run("sync-to-service-b", ...);
--   await step.run("log-sync", ...);

CREATE TABLE IF NOT EXISTS app_users (
    id int PRIMARY KEY, email text, account_status text DEFAULT 'trial', subscription_id text);
CREATE TABLE IF NOT EXISTS shop_orders (id int PRIMARY KEY, user_id int, total numeric);
-- Where the services are (a test points them at a local server).
CREATE TABLE IF NOT EXISTS app_settings (name text PRIMARY KEY, value text NOT NULL);
INSERT INTO app_settings VALUES ('service_a_url', 'https://service-a.example.com'),
                                ('service_b_url', 'https://service-b.example.com')
ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS sync_log (
    entity_type text, entity_id int, synced_at timestamptz DEFAULT now(), services text[],
    PRIMARY KEY (entity_type, entity_id));

CREATE OR REPLACE FUNCTION fetch_entity(entity_type text, entity_id int) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    CASE entity_type
        WHEN 'user' THEN RETURN (SELECT to_jsonb(u) FROM app_users u WHERE id = entity_id);
        WHEN 'order' THEN RETURN (SELECT to_jsonb(o) FROM shop_orders o WHERE id = entity_id);
        ELSE PERFORM jobs.non_retriable('Unknown entity type: ' || entity_type);
    END CASE;
END
$$;

CREATE OR REPLACE FUNCTION sync_to_external(ctx jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    changed jsonb := ctx->'event'->'data';   -- {"entityType", "entityId"}
    data jsonb;
BEGIN
    data := jobs.step('fetch-data',
        'SELECT fetch_entity($1->>''entityType'', ($1->>''entityId'')::int)', changed);
    PERFORM jobs.fetch('sync-to-service-a',
        (SELECT value FROM app_settings WHERE name = 'service_a_url') || '/sync', 'POST', body => data);
    PERFORM jobs.fetch('sync-to-service-b',
        (SELECT value FROM app_settings WHERE name = 'service_b_url') || '/sync', 'POST', body => data);
    PERFORM jobs.step('log-sync',
        $step$ INSERT INTO sync_log (entity_type, entity_id, services)
               VALUES ($1->>'entityType', ($1->>'entityId')::int, '{service-a,service-b}')
               ON CONFLICT (entity_type, entity_id) DO UPDATE SET synced_at = now(), services = excluded.services $step$,
        changed);
END
$$;

SELECT jobs.create_function('sync-to-external', 'sync_to_external(jsonb)', '{"event": "app/data.updated", "retries": 5}');

-- Try it:
INSERT INTO shop_orders VALUES (501, 7, 99.5) ON CONFLICT DO NOTHING;
SELECT jobs.send('app/data.updated', '{"entityType": "order", "entityId": 501}');
SELECT jobs.send('app/data.updated', '{"entityType": "invoice", "entityId": 9}');   -- fails at once
