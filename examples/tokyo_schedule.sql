-- The guide's time zone example: 9:00 in Tokyo, whatever the server's zone.
--
--   inngest.createFunction({ id: "tokyo-schedule", },
--     { cron: "0 9 * * *", timezone: "Asia/Tokyo" }, async ({ step }) => { ... });

CREATE TABLE IF NOT EXISTS tokyo_mornings (scheduled_at timestamptz);

CREATE OR REPLACE FUNCTION tokyo_schedule(ctx jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM jobs.step('greet-tokyo',
        $step$ INSERT INTO tokyo_mornings VALUES (($1->>'scheduled_at')::timestamptz) $step$,
        ctx->'event'->'data');
END
$$;

SELECT jobs.create_function('tokyo-schedule', 'tokyo_schedule(jsonb)',
                            '{"cron": "0 9 * * *", "timezone": "Asia/Tokyo"}');

-- 9:00 in Tokyo is 0:00 UTC (Japan has no daylight saving time).
SELECT next_fire_at AT TIME ZONE 'Asia/Tokyo' AS tokyo_time, next_fire_at AT TIME ZONE 'UTC' AS utc_time
FROM jobs.schedules WHERE function_id = 'tokyo-schedule';
