-- The guide's custom retry: 5 attempts, spaced exponentially from 2 s up to 60 s
-- (2, 4, 8, 16 s, plus up to 10% jitter). `attempts` counts every attempt.
--
--   inngest.createFunction({ id: "custom-retry",
--       retries: { attempts: 5, backoff: { type: "exponential", base: 2, max: 60 } } },
--     { event: "app/heavy.task" }, async ({ event, step }) => { ... });

CREATE TABLE IF NOT EXISTS heavy_results (task_id text, result text, done_at timestamptz DEFAULT now());
CREATE SEQUENCE IF NOT EXISTS heavy_attempts;

-- Fails the first two times it is called: a flaky dependency.
CREATE OR REPLACE FUNCTION heavy_computation(task jsonb) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('heavy_attempts') <= 2 THEN
        RAISE EXCEPTION 'worker pool busy';
    END IF;
    RETURN 'computed ' || (task->>'taskId');
END
$$;

CREATE OR REPLACE FUNCTION custom_retry(ctx jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM jobs.step('heavy-work',
        $step$ INSERT INTO heavy_results (task_id, result) VALUES ($1->>'taskId', heavy_computation($1)) $step$,
        ctx->'event'->'data');
END
$$;

SELECT jobs.create_function('custom-retry', 'custom_retry(jsonb)', '{
    "event": "app/heavy.task",
    "retries": {"attempts": 5, "backoff": {"type": "exponential", "base": 2, "max": 60}}
}');

-- Try it: fails twice, succeeds on the third attempt about 6 s later.
SELECT jobs.send('app/heavy.task', '{"taskId": "t-1"}');
