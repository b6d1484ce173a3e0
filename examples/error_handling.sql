-- The guide's error handling: when a step runs out of retries, its error is
-- raised in the handler at that step (SQLSTATE JB001), where it can be caught.
--
--   try {
--     const result = await step.run("risky-operation", ...);
--     await step.run("handle-success", ...);
--   } catch (error) {
--     await step.run("handle-error", async () => { await logError(error); await notifyAdmin(error); });
--     throw error;   // rethrow: the run fails
--   }

CREATE TABLE IF NOT EXISTS error_log (message text, detail text, logged_at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS admin_notifications (text text, sent_at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS processed_data (id text, result jsonb);

CREATE OR REPLACE FUNCTION risky_operation(data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF (data->>'value')::numeric < 0 THEN
        RAISE EXCEPTION 'cannot process a negative value: %', data->>'value';
    END IF;
    RETURN jsonb_build_object('id', data->>'id', 'doubled', (data->>'value')::numeric * 2);
END
$$;

CREATE OR REPLACE FUNCTION error_handling(ctx jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    result jsonb;
    detail text;
BEGIN
    result := jobs.step('risky-operation', 'SELECT risky_operation($1)', ctx->'event'->'data');
    PERFORM jobs.step('handle-success',
        'INSERT INTO processed_data VALUES ($1->>''id'', $1)', result);
    RETURN result;
EXCEPTION WHEN SQLSTATE 'JB001' THEN
    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;   -- which step, how many attempts
    PERFORM jobs.step('handle-error',
        $step$ INSERT INTO error_log (message, detail) VALUES ($1->>'message', $1->>'detail');
               INSERT INTO admin_notifications (text) VALUES ('Processing failed: ' || ($1->>'message')) $step$,
        jsonb_build_object('message', SQLERRM, 'detail', detail));
    RAISE;
END
$$;

-- Quick retries, so that the failure path is reached in seconds.
SELECT jobs.create_function('error-handling', 'error_handling(jsonb)', '{
    "event": "app/process.data",
    "retries": {"attempts": 3, "backoff": {"type": "fixed", "base": "1s"}}
}');

-- Try it: one that works, one that fails three times and is handled.
SELECT jobs.send('app/process.data', '{"id": "d-1", "value": 21}');
SELECT jobs.send('app/process.data', '{"id": "d-2", "value": -1}');
