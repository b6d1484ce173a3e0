-- The guide's multiple schedules: at 9:00 and at 17:00. The guide reads the
-- clock to tell them apart; a pg_jobs run knows which schedule started it.
--
--   inngest.createFunction({ id: "multi-schedule" }, { cron: ["0 9 * * *", "0 17 * * *"] },
--     async ({ step }) => { if (new Date().getHours() === 9) ... else ... });

CREATE TABLE IF NOT EXISTS shift_tasks (task text, scheduled_at timestamptz, done_at timestamptz DEFAULT now());

CREATE OR REPLACE FUNCTION multi_schedule(ctx jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    fired jsonb := ctx->'event'->'data';   -- {"cron": "0 9 * * *", "scheduled_at": "..."}
BEGIN
    IF fired->>'cron' = '0 9 * * *' THEN
        PERFORM jobs.step('morning-task',
            $step$ INSERT INTO shift_tasks (task, scheduled_at) VALUES ('morning', ($1->>'scheduled_at')::timestamptz) $step$, fired);
    ELSE
        PERFORM jobs.step('evening-task',
            $step$ INSERT INTO shift_tasks (task, scheduled_at) VALUES ('evening', ($1->>'scheduled_at')::timestamptz) $step$, fired);
    END IF;
END
$$;

SELECT jobs.create_function('multi-schedule', 'multi_schedule(jsonb)', '{"cron": ["0 9 * * *", "0 17 * * *"]}');

SELECT expression, next_fire_at FROM jobs.schedules WHERE function_id = 'multi-schedule' ORDER BY next_fire_at;
