-- Who may do what. Nothing is granted to PUBLIC: sending an event makes other
-- roles' code run, so a superuser decides who may send and who may define
-- functions (README, "Security"):
--   GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA jobs TO app;
--   GRANT SELECT ON ALL TABLES IN SCHEMA jobs TO app;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA jobs FROM PUBLIC;

-- What handlers call acts only inside a handler pg_jobs runs, on its own run,
-- by the role the handler runs as: harmless elsewhere, needed by every owner.
GRANT USAGE ON SCHEMA jobs TO PUBLIC;
GRANT EXECUTE ON FUNCTION
    jobs.step(text, text, jsonb), jobs._step(text, text, jsonb),
    jobs.plan(text, text, jsonb), jobs.parallel(jobs.step_spec[]), jobs._parallel(text[], text[], text[]),
    jobs.sleep(text, interval), jobs.sleep_until(text, timestamptz),
    jobs.wait_for_event(text, text, interval, text, text), jobs._wait_for_event(text, text, interval, text, text),
    jobs.invoke(text, text, jsonb, interval), jobs._invoke(text, text, jsonb, interval),
    jobs.non_retriable(text), jobs.retry_after(text, interval)
TO PUBLIC;
-- jobs.fetch and jobs.plan_fetch make HTTP requests: a superuser grants
-- them (README, "Calling other services"), with jobs.set_secret and
-- jobs.delete_secret. What they call inside is harmless alone: the fetcher
-- makes a request only for a function whose owner may execute jobs.fetch.
GRANT EXECUTE ON FUNCTION jobs._fetch(text, jsonb),
    jobs._fetch_spec(text, text, jsonb, jsonb, interval, int[])
TO PUBLIC;
-- Arithmetic on ids, which jobs.function_stats uses.
GRANT EXECUTE ON FUNCTION jobs._first_id_at(timestamptz) TO PUBLIC;
-- Like pg_stat_activity, the workers' pids and current runs are no secret.
GRANT EXECUTE ON FUNCTION jobs._workers() TO PUBLIC;
GRANT SELECT ON jobs.workers TO PUBLIC;

-- A role granted SELECT sees the definitions and the runs of the functions it
-- owns (is a member of the owner of), not those of other roles.
ALTER TABLE jobs.functions ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.functions USING (pg_catalog.pg_has_role(owner, 'MEMBER'));

-- Application events are shown to whoever may read the table; pg_jobs' own
-- events about a run (they carry its output or error) only to members of the
-- owner of its function.
ALTER TABLE jobs.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_events_or_app_events ON jobs.events USING (
    owner IS NULL OR pg_catalog.pg_has_role(owner, 'MEMBER'));

ALTER TABLE jobs.runs ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.runs USING (EXISTS (
    SELECT 1 FROM jobs.functions f WHERE f.id = function_id));

ALTER TABLE jobs.steps ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.steps USING (EXISTS (
    SELECT 1 FROM jobs.runs r WHERE r.id = run_id));

ALTER TABLE jobs.attempt_errors ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.attempt_errors USING (EXISTS (
    SELECT 1 FROM jobs.runs r WHERE r.id = run_id));

ALTER TABLE jobs.skips ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.skips USING (EXISTS (
    SELECT 1 FROM jobs.functions f WHERE f.id = function_id));

ALTER TABLE jobs.cron_schedules ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.cron_schedules USING (EXISTS (
    SELECT 1 FROM jobs.functions f WHERE f.id = function_id));

ALTER TABLE jobs.triggers ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.triggers USING (EXISTS (
    SELECT 1 FROM jobs.functions f WHERE f.id = function_id));

-- Internal tables hold other roles' data too (a parallel step's arguments, a
-- wait's triggering event, flow-control keys): each role sees only its own
-- functions' rows.
ALTER TABLE jobs.queue ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.queue USING (EXISTS (
    SELECT 1 FROM jobs.functions f WHERE f.id = function_id));
ALTER TABLE jobs.waits ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.waits USING (EXISTS (
    SELECT 1 FROM jobs.runs r WHERE r.id = run_id));
ALTER TABLE jobs.batch_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.batch_events USING (EXISTS (
    SELECT 1 FROM jobs.runs r WHERE r.id = run_id));
ALTER TABLE jobs.debounces ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.debounces USING (EXISTS (
    SELECT 1 FROM jobs.functions f WHERE f.id = function_id));
ALTER TABLE jobs.batches ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.batches USING (EXISTS (
    SELECT 1 FROM jobs.functions f WHERE f.id = function_id));
ALTER TABLE jobs.singletons ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.singletons USING (EXISTS (
    SELECT 1 FROM jobs.functions f WHERE f.id = function_id));
ALTER TABLE jobs.idempotency_keys ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.idempotency_keys USING (EXISTS (
    SELECT 1 FROM jobs.functions f WHERE f.id = function_id));
ALTER TABLE jobs.cron_fires ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.cron_fires USING (EXISTS (
    SELECT 1 FROM jobs.functions f WHERE f.id = function_id));
ALTER TABLE jobs.fetches ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.fetches USING (EXISTS (
    SELECT 1 FROM jobs.functions f WHERE f.id = function_id));
-- A secret is readable by the role that set it (and superusers), not by its
-- members nor anyone granted SELECT on the table.
ALTER TABLE jobs.secrets ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.secrets USING (owner::oid = (
    SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user));
ALTER TABLE jobs.replay_requests ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.replay_requests USING (EXISTS (
    SELECT 1 FROM jobs.functions f WHERE f.id = function_id));
ALTER TABLE jobs.replay_items ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.replay_items USING (EXISTS (
    SELECT 1 FROM jobs.replay_requests q WHERE q.id = replay_id));
-- Throttle keys name no function row: only superusers read them.
ALTER TABLE jobs.throttles ENABLE ROW LEVEL SECURITY;

-- Tell the DBA at CREATE EXTENSION time when nothing is going to run.
DO $$
BEGIN
    IF NOT 'pg_jobs' = ANY (pg_catalog.string_to_array(
            pg_catalog.replace(pg_catalog.current_setting('shared_preload_libraries'), ' ', ''), ',')) THEN
        RAISE WARNING 'pg_jobs is not in shared_preload_libraries: events and functions can be defined, but nothing will run'
            USING HINT = 'Add pg_jobs to shared_preload_libraries in postgresql.conf and restart the server.';
    ELSIF pg_catalog.current_setting('jobs.database', true) IS DISTINCT FROM pg_catalog.current_database() THEN
        RAISE WARNING 'pg_jobs runs functions only in database "%" (jobs.database), not in "%"',
            pg_catalog.current_setting('jobs.database', true), pg_catalog.current_database();
    END IF;
END
$$;
