-- The guide's long-running job: allow each attempt up to five minutes
-- (max_runtime); an attempt that runs longer is cancelled and retried.
--
--   inngest.createFunction({ id: "long-running-job", maxRuntime: "5m" },
--     { event: "app/heavy.task" }, async ({ event, step }) => { ... });

CREATE TABLE IF NOT EXISTS reports (id text, rows_scanned bigint, built_at timestamptz DEFAULT now());

CREATE OR REPLACE FUNCTION long_running_job(ctx jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM jobs.step('build-report',
        $step$ INSERT INTO reports (id, rows_scanned)
               SELECT $1->>'reportId', count(*) FROM generate_series(1, ($1->>'rows')::int) $step$,
        ctx->'event'->'data');
END
$$;

SELECT jobs.create_function('long-running-job', 'long_running_job(jsonb)',
                            '{"event": "app/heavy.task", "maxRuntime": "5m"}');

-- Try it:
SELECT jobs.send('app/heavy.task', '{"reportId": "r-1", "rows": 1000000}');
