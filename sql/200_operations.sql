-- "Are the workers up?" in one query: the launcher and each executor, with
-- its pid, whether it is running a run (and which) and its last heartbeat.
CREATE VIEW jobs.workers AS
SELECT kind, slot, pid, state, run_id, last_heartbeat FROM jobs._workers();

-- The smallest UUIDv7 of the millisecond `ts` is in: run and event ids are
-- UUIDv7, so a time window is an index range of ids.
CREATE FUNCTION jobs._first_id_at(ts timestamptz) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
    SELECT (pg_catalog.lpad(pg_catalog.to_hex(GREATEST(0::int8,
                pg_catalog.floor(EXTRACT(epoch FROM ts) * 1000)::int8)), 12, '0')
            || '00000000000000000000')::uuid
$$;

-- Per function: its unfinished runs by status now (from the queue, which
-- holds only those), and the runs created and finished in the last hour
-- (an index range of their ids; no index has ended_at, see jobs.runs).
CREATE VIEW jobs.function_stats WITH (security_invoker = true) AS
SELECT f.id AS function_id, f.paused,
       coalesce(now_.queued, 0) AS queued, coalesce(now_.running, 0) AS running,
       coalesce(now_.sleeping, 0) AS sleeping, coalesce(now_.waiting, 0) AS waiting,
       now() - now_.oldest_queued_at AS oldest_queued_age,
       coalesce(hour.completed, 0) AS completed_last_hour, coalesce(hour.failed, 0) AS failed_last_hour,
       hour.p50 AS p50_duration_last_hour, hour.p95 AS p95_duration_last_hour
FROM jobs.functions f
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE r.status = 'queued') AS queued,
           count(*) FILTER (WHERE r.status = 'running') AS running,
           count(*) FILTER (WHERE r.status = 'sleeping') AS sleeping,
           count(*) FILTER (WHERE r.status = 'waiting') AS waiting,
           min(r.created_at) FILTER (WHERE r.status = 'queued') AS oldest_queued_at
    FROM jobs.queue q JOIN jobs.runs r ON r.id = q.run_id
    WHERE q.function_id = f.id AND q.step_id = ''
) now_ ON true
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE r.status = 'completed') AS completed,
           count(*) FILTER (WHERE r.status = 'failed') AS failed,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY r.ended_at - coalesce(r.started_at, r.created_at)) AS p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY r.ended_at - coalesce(r.started_at, r.created_at)) AS p95
    FROM jobs.runs r
    WHERE r.function_id = f.id AND r.id >= jobs._first_id_at(now() - interval '1 hour')
      AND r.ended_at >= now() - interval '1 hour' AND r.status IN ('completed', 'failed')
) hour ON true;

CREATE FUNCTION jobs.cancel_runs(function_id text, "from" timestamptz DEFAULT NULL,
                                 "to" timestamptz DEFAULT NULL, "if" text DEFAULT NULL) RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$ SELECT jobs._cancel_runs(function_id, "from", "to", "if") $$;
