-- The guide's troubleshooting, "retry loops": a step that catches its error
-- and returns null is done; it is not retried and the run goes on.
--
--   await step.run("safe-operation", async () => {
--     try { return await riskyOperation(); }
--     catch (error) { console.error(error); return null; }   // log, count as success
--   });
--
-- In SQL the catch is an EXCEPTION block around the risky call, inside the
-- step's SQL; RAISE WARNING is console.error (it goes to the server log).

CREATE TABLE IF NOT EXISTS operation_log (outcome text, logged_at timestamptz DEFAULT now());

CREATE OR REPLACE FUNCTION risky_operation(data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF data->>'input' IS NULL THEN
        RAISE EXCEPTION 'risky operation needs an input';
    END IF;
    RETURN jsonb_build_object('processed', data->>'input');
END
$$;

CREATE OR REPLACE FUNCTION safe_risky_operation(data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    RETURN risky_operation(data);
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'safe-operation: %', SQLERRM;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION safe_operation(ctx jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    result jsonb;
BEGIN
    result := jobs.step('safe-operation', 'SELECT safe_risky_operation($1)', ctx->'event'->'data');
    PERFORM jobs.step('log-outcome', 'INSERT INTO operation_log (outcome) VALUES (coalesce($1::text, ''skipped''))', result);
    RETURN result;
END
$$;

SELECT jobs.create_function('safe-operation', 'safe_operation(jsonb)', '{"event": "app/risky.task"}');

-- Try it: one that works, one whose risky operation fails and is logged, not retried.
SELECT jobs.send('app/risky.task', '{"input": "a"}');
SELECT jobs.send('app/risky.task', '{}');
