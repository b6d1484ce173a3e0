-- The guide's nightly full sync: at 2:00, find records not synced for 24 hours
-- (100 at a time) and send one app/data.updated event each; the data-sync
-- function (data_sync.sql) does the rest, one run per record.
--
--   inngest.createFunction({ id: "full-sync" }, { cron: "0 2 * * *" }, async ({ step }) => {
--     const unsyncedRecords = await step.run("fetch-unsynced", ...);
--     await step.run("trigger-sync-events", () => inngest.send(unsyncedRecords.map(...)));
--     return { syncedCount: unsyncedRecords.length };
--   });

CREATE TABLE IF NOT EXISTS sync_log (
    entity_type text, entity_id int, synced_at timestamptz DEFAULT now(), services text[],
    PRIMARY KEY (entity_type, entity_id));

CREATE OR REPLACE FUNCTION full_sync(ctx jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    unsynced jsonb;
BEGIN
    unsynced := jobs.step('fetch-unsynced',
        $step$ SELECT coalesce(jsonb_agg(jsonb_build_object('entityType', entity_type, 'entityId', entity_id)), '[]')
               FROM (SELECT entity_type, entity_id FROM sync_log
                     WHERE synced_at < now() - interval '24 hours'
                     ORDER BY synced_at LIMIT 100) batch $step$);
    -- Sending is part of the step: the events commit with it, exactly once.
    PERFORM jobs.step('trigger-sync-events',
        $step$ SELECT jobs.send(coalesce(jsonb_agg(jsonb_build_object('name', 'app/data.updated', 'data', record)), '[]'))
               FROM jsonb_array_elements($1) AS record $step$,
        unsynced);
    RETURN jsonb_build_object('syncedCount', jsonb_array_length(unsynced));
END
$$;

SELECT jobs.create_function('full-sync', 'full_sync(jsonb)', '{"cron": "0 2 * * *"}');

-- Try it now instead of at 2:00:
INSERT INTO sync_log (entity_type, entity_id, synced_at)
VALUES ('order', 501, now() - interval '2 days'), ('order', 502, now() - interval '3 days'),
       ('user', 7, now() - interval '1 hour')
ON CONFLICT DO NOTHING;
SELECT jobs.invoke_function('full-sync');
