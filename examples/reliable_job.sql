-- The guide's reliable job: a step that calls an outside API is retried on
-- failure (3 retries: 4 attempts), with Inngest's backoff schedule.
--
--   inngest.createFunction({ id: "reliable-job", retries: 3 }, { event: "app/api.call" },
--     async ({ event, step }) => step.run("call-external-api", async () => {
--       const response = await fetch("https://api.example.com/data");
--       if (!response.ok) throw new Error("API call failed");
--       return await response.json(); }));

-- The outside API: its answers, in order; an empty queue means "503".
CREATE TABLE IF NOT EXISTS api_example_com (seq serial PRIMARY KEY, status int, body jsonb);

CREATE OR REPLACE FUNCTION fetch_api_data() RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    answer api_example_com;
BEGIN
    DELETE FROM api_example_com WHERE seq = (SELECT min(seq) FROM api_example_com) RETURNING * INTO answer;
    IF answer IS NULL OR answer.status <> 200 THEN
        RAISE EXCEPTION 'API call failed (status %)', coalesce(answer.status, 503);
    END IF;
    RETURN answer.body;
END
$$;

CREATE OR REPLACE FUNCTION reliable_job(ctx jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    RETURN jobs.step('call-external-api', 'SELECT fetch_api_data()');
END
$$;

SELECT jobs.create_function('reliable-job', 'reliable_job(jsonb)', '{"event": "app/api.call", "retries": 3}');

-- Try it: the API answers 200 at once.
INSERT INTO api_example_com (status, body) VALUES (200, '{"items": [1, 2, 3]}');
SELECT jobs.send('app/api.call');
