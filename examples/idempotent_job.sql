-- The guide's idempotent job: a request id is processed once, however often
-- its event is sent.
--
--   const existing = await step.run("check-existing", () => db.processLog.findUnique({ where: { requestId } }));
--   if (existing) return { message: "Already processed" };
--   const result = await step.run("process", () => heavyProcess(event.data));
--   await step.run("mark-processed", () => db.processLog.create({ data: { requestId, result } }));
--   return result;
--
-- In pg_jobs the last two steps could be one (a step's effects and its output
-- commit together); and jobs.send's id argument drops repeats before any run.

CREATE TABLE IF NOT EXISTS process_log (request_id text PRIMARY KEY, result jsonb, processed_at timestamptz DEFAULT now());

CREATE OR REPLACE FUNCTION idempotent_job(ctx jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    request jsonb := ctx->'event'->'data';   -- {"requestId", "amount"}
    existing jsonb;
    result jsonb;
BEGIN
    existing := jobs.step('check-existing',
        'SELECT result FROM process_log WHERE request_id = $1->>''requestId''', request);
    IF existing IS NOT NULL THEN
        RETURN jsonb_build_object('message', 'Already processed');
    END IF;
    result := jobs.step('process',
        'SELECT jsonb_build_object(''total'', ($1->>''amount'')::numeric * 1.1)', request);
    PERFORM jobs.step('mark-processed',
        'INSERT INTO process_log (request_id, result) VALUES ($1->>''requestId'', $1->''result'')',
        request || jsonb_build_object('result', result));
    RETURN result;
END
$$;

SELECT jobs.create_function('idempotent-job', 'idempotent_job(jsonb)', '{"event": "app/process.request"}');

-- Try it: the second run finds the request processed.
SELECT jobs.send('app/process.request', '{"requestId": "req-1", "amount": 100}');
