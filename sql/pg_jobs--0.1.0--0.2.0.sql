-- pg_jobs 0.1.0 -> 0.2.0 (ALTER EXTENSION pg_jobs UPDATE). Written by hand:
-- every definition, event, run and step is kept, and queued, sleeping and
-- waiting runs go on after the update. The result must equal a fresh 0.2.0
-- install (pg_test/tests/upgrade.rs compares the two).

-- Trust between roles ---------------------------------------------------------

-- Expressions are CEL now: filters and conditions are stored as their source.
ALTER TABLE jobs.functions ALTER COLUMN filter TYPE text USING config->>'if';

-- cancel_on conditions, likewise, from the config they were checked from.
UPDATE jobs.functions f SET cancel_on = (
    SELECT jsonb_agg(c.spec || jsonb_build_object('condition', given.spec->'if') ORDER BY c.n)
    FROM jsonb_array_elements(f.cancel_on) WITH ORDINALITY AS c (spec, n)
    JOIN LATERAL (SELECT coalesce(f.config->'cancel_on', f.config->'cancelOn') AS value) config ON true
    JOIN jsonb_array_elements(CASE jsonb_typeof(config.value) WHEN 'array' THEN config.value
                                   ELSE jsonb_build_array(config.value) END)
         WITH ORDINALITY AS given (spec, n) USING (n))
WHERE cancel_on IS NOT NULL;

-- The waits that runs are in hold the SQL/JSON path 0.1.0 translated their
-- condition to, as PostgreSQL prints it: roots `$."event"`/`$."async"`, keys
-- `."name"`, indexes `[n]`, JSON strings, and operators CEL has. Quoted
-- pieces are keys after a dot (a bare name when CEL allows one) and string
-- literals otherwise; the dot or root before a key goes.
CREATE FUNCTION jobs._cel_of_jsonpath(path text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT string_agg(
        CASE WHEN piece NOT LIKE '"%' THEN
                 CASE WHEN next LIKE '"%' THEN regexp_replace(piece, '\$?\.$', '') ELSE piece END
             WHEN prev LIKE '%$.' THEN piece::json #>> '{}'
             WHEN prev NOT LIKE '%.' THEN piece
             WHEN piece::json #>> '{}' ~ '^[A-Za-z_][A-Za-z0-9_]*$'
                  AND piece::json #>> '{}' NOT IN ('true', 'false', 'null', 'in', 'as', 'break', 'const',
                      'continue', 'else', 'for', 'function', 'if', 'import', 'let', 'loop', 'package',
                      'namespace', 'return', 'var', 'void', 'while') THEN '.' || (piece::json #>> '{}')
             ELSE '[' || piece || ']'
        END, '' ORDER BY n)
    FROM (SELECT m.parts[1] AS piece, n,
                 lag(m.parts[1]) OVER (ORDER BY n) AS prev, lead(m.parts[1]) OVER (ORDER BY n) AS next
          FROM regexp_matches(path, '("(?:[^"\\]|\\.)*"|[^"]+)', 'g') WITH ORDINALITY AS m (parts, n)) pieces
$$;
ALTER TABLE jobs.waits ALTER COLUMN condition TYPE text USING jobs._cel_of_jsonpath(condition::text);
DROP FUNCTION jobs._cel_of_jsonpath(text);

-- The handler's owner at definition (now, for functions defined before).
ALTER TABLE jobs.functions ADD COLUMN handler_owner regrole;
UPDATE jobs.functions f SET handler_owner = coalesce(
    (SELECT p.proowner FROM pg_catalog.pg_proc p WHERE p.oid = pg_catalog.to_regprocedure(f.handler)),
    f.owner);
ALTER TABLE jobs.functions ALTER COLUMN handler_owner SET NOT NULL;
ALTER TABLE jobs.functions ADD COLUMN invokers regrole[] NOT NULL DEFAULT '{}';

ALTER TABLE jobs.events ADD COLUMN owner regrole;
ALTER TABLE jobs.runs ADD COLUMN from_system_event boolean NOT NULL DEFAULT false;

ALTER TABLE jobs.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_events_or_app_events ON jobs.events USING (
    owner IS NULL OR pg_catalog.pg_has_role(owner, 'MEMBER'));

CREATE FUNCTION jobs."_expr_true"(
	"expression" TEXT,
	"variables" jsonb
) RETURNS bool
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'expr_true_wrapper';
REVOKE EXECUTE ON FUNCTION jobs._expr_true(text, jsonb) FROM PUBLIC;

-- Step functions hand their results to the SQL wrappers as text, which
-- PostgreSQL parses (at any depth), instead of jsonb built in Rust.
DROP FUNCTION jobs._step(text, text, jsonb);
CREATE FUNCTION jobs."_step"(
	"id" TEXT,
	"sql" TEXT,
	"args" jsonb
) RETURNS TEXT
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'step_internal_wrapper';
DROP FUNCTION jobs._parallel(text[], text[], jsonb[]);
CREATE FUNCTION jobs."_parallel"(
	"ids" TEXT[],
	"sqls" TEXT[],
	"args" TEXT[]
) RETURNS TEXT
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'parallel_internal_wrapper';
DROP FUNCTION jobs._wait_for_event(text, text, interval, text, text);
CREATE FUNCTION jobs."_wait_for_event"(
	"id" TEXT,
	"event" TEXT,
	"timeout" interval,
	"match_path" TEXT,
	"condition" TEXT
) RETURNS TEXT
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'wait_for_event_internal_wrapper';
DROP FUNCTION jobs._invoke(text, text, jsonb, interval);
CREATE FUNCTION jobs."_invoke"(
	"id" TEXT,
	"function_id" TEXT,
	"data" jsonb,
	"timeout" interval
) RETURNS TEXT
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'invoke_internal_wrapper';

CREATE OR REPLACE FUNCTION jobs.step(id text, sql text, args jsonb DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    done jsonb := jobs._step(id, sql, args)::jsonb;
BEGIN
    IF done ? 'error' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'JB001',
            MESSAGE = done->'error'->>'message',
            DETAIL = format('step "%s" failed after %s attempt(s); its last error had SQLSTATE %s',
                            id, done->'error'->>'attempts', done->'error'->>'sqlstate');
    END IF;
    RETURN nullif(done->'output', 'null');
END
$$;

CREATE OR REPLACE FUNCTION jobs.parallel(VARIADIC steps jobs.step_spec[]) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    done jsonb;
BEGIN
    SELECT jobs._parallel(array_agg(s.id ORDER BY s.n), array_agg(s.sql ORDER BY s.n), array_agg(s.args::text ORDER BY s.n))::jsonb
    INTO done
    FROM unnest(steps) WITH ORDINALITY AS s (id, sql, args, n);
    IF done ? 'error' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'JB001',
            MESSAGE = done->'error'->>'message',
            DETAIL = format('a parallel step failed after %s attempt(s); its last error had SQLSTATE %s',
                            done->'error'->>'attempts', done->'error'->>'sqlstate');
    END IF;
    RETURN done->'output';
END
$$;

CREATE OR REPLACE FUNCTION jobs.wait_for_event(id text, event text, timeout interval,
                                    match text DEFAULT NULL, condition text DEFAULT NULL) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jobs._wait_for_event(id, event, timeout, match, condition)::jsonb $$;

CREATE OR REPLACE FUNCTION jobs.invoke(id text, function_id text, data jsonb DEFAULT '{}', timeout interval DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    done jsonb := jobs._invoke(id, function_id, data, timeout)::jsonb;
BEGIN
    IF done ? 'error' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'JB001',
            MESSAGE = done->'error'->>'message',
            DETAIL = format('the run of "%s" that step "%s" invoked failed; its error had SQLSTATE %s',
                            function_id, id, done->'error'->>'sqlstate');
    END IF;
    RETURN nullif(done->'output', 'null');
END
$$;

REVOKE EXECUTE ON FUNCTION jobs._step(text, text, jsonb), jobs._parallel(text[], text[], text[]),
    jobs._wait_for_event(text, text, interval, text, text), jobs._invoke(text, text, jsonb, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION jobs._step(text, text, jsonb), jobs._parallel(text[], text[], text[]),
    jobs._wait_for_event(text, text, interval, text, text), jobs._invoke(text, text, jsonb, interval) TO PUBLIC;

-- Flow control ----------------------------------------------------------------

ALTER TABLE jobs.functions ADD COLUMN flow jsonb;

ALTER TABLE jobs.queue
    ADD COLUMN ckey1 text,
    ADD COLUMN lim1 int,
    ADD COLUMN ckey2 text,
    ADD COLUMN lim2 int,
    ADD COLUMN blocked_on text,
    ADD COLUMN throttle_key text,
    ADD COLUMN start_by timestamptz,
    ADD COLUMN start_within interval,
    ADD COLUMN finish_within interval,
    ADD COLUMN finish_by timestamptz,
    ADD COLUMN admit boolean GENERATED ALWAYS AS (ckey1 IS NOT NULL OR throttle_key IS NOT NULL) STORED;
DROP INDEX jobs.queue_runnable;
CREATE INDEX queue_runnable ON jobs.queue (due_at) WHERE claimed_by IS NULL AND NOT held AND NOT admit;
CREATE INDEX queue_admittable ON jobs.queue (due_at)
    WHERE claimed_by IS NULL AND NOT held AND admit AND blocked_on IS NULL;
CREATE INDEX queue_slots1 ON jobs.queue (ckey1) WHERE claimed_by IS NOT NULL AND ckey1 IS NOT NULL;
CREATE INDEX queue_slots2 ON jobs.queue (ckey2) WHERE claimed_by IS NOT NULL AND ckey2 IS NOT NULL;
CREATE INDEX queue_blocked ON jobs.queue (blocked_on, due_at) WHERE blocked_on IS NOT NULL;
CREATE INDEX queue_waiting_for_slot ON jobs.queue (ckey1)
    WHERE claimed_by IS NULL AND blocked_on IS NULL AND ckey1 IS NOT NULL;
CREATE INDEX queue_start_by ON jobs.queue (start_by) WHERE start_by IS NOT NULL;
CREATE INDEX queue_finish_by ON jobs.queue (finish_by) WHERE finish_by IS NOT NULL;

-- Flow-control state, changed in the transactions of the runs it governs, so
-- that it cannot leak or drift on a crash.

-- Throttle: each key's theoretical arrival time (GCRA), in µs since 1970.
CREATE TABLE jobs.throttles (
    key         text PRIMARY KEY,
    tat_us      bigint NOT NULL
);

-- Debounce: the run each key's events push back, until it starts.
CREATE TABLE jobs.debounces (
    function_id text NOT NULL,
    key         text NOT NULL,
    run_id      uuid NOT NULL,
    first_at    timestamptz NOT NULL,
    PRIMARY KEY (function_id, key)
);
CREATE INDEX debounces_run_id ON jobs.debounces (run_id);

-- Batches: the open batch of each key, and the events of each batch run.
CREATE TABLE jobs.batches (
    function_id text NOT NULL,
    key         text NOT NULL,
    run_id      uuid NOT NULL,
    size        int NOT NULL,
    PRIMARY KEY (function_id, key)
);
CREATE INDEX batches_run_id ON jobs.batches (run_id);
CREATE TABLE jobs.batch_events (
    run_id      uuid NOT NULL,
    position    int NOT NULL,
    event_id    uuid NOT NULL,
    PRIMARY KEY (run_id, position)
);
CREATE INDEX batch_events_event_id ON jobs.batch_events (event_id);

-- Singleton: the unfinished run of each key.
CREATE TABLE jobs.singletons (
    function_id text NOT NULL,
    key         text NOT NULL,
    run_id      uuid NOT NULL,
    PRIMARY KEY (function_id, key)
);
CREATE INDEX singletons_run_id ON jobs.singletons (run_id);

-- Idempotency: the key values seen in the last 24 hours.
CREATE TABLE jobs.idempotency_keys (
    function_id text NOT NULL,
    key         text NOT NULL,
    event_id    uuid NOT NULL,
    seen_at     timestamptz NOT NULL,
    PRIMARY KEY (function_id, key)
);
CREATE INDEX idempotency_keys_seen_at ON jobs.idempotency_keys (seen_at);

-- Events that matched a function and started nothing because of its flow
-- control (rate limited, idempotent, singleton, debounced into a later one).
CREATE TABLE jobs.skips (
    event_id    uuid NOT NULL,
    function_id text NOT NULL,
    reason      text NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (event_id, function_id)
);
CREATE INDEX skips_function_id_at ON jobs.skips (function_id, at);

ALTER TABLE jobs.skips ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.skips USING (EXISTS (
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
-- Throttle keys name no function row: only superusers read them.
ALTER TABLE jobs.throttles ENABLE ROW LEVEL SECURITY;

-- Runs by function, newest first (the dashboard's runs list, replays and
-- bulk cancels): by id, which is UUIDv7 and so in creation order.
DROP INDEX jobs.runs_function_id_created_at;
CREATE INDEX runs_function_id_id ON jobs.runs (function_id, id);

-- Operating runs: rerun, replay, bulk cancel, retention, stats -----------------

ALTER TABLE jobs.functions
    ADD COLUMN retention interval,
    ADD COLUMN keep text NOT NULL DEFAULT 'all' CHECK (keep IN ('all', 'failures'));
ALTER TABLE jobs.runs
    ADD COLUMN rerun_of uuid,
    ADD COLUMN rerun_step text,
    ADD COLUMN rerun_input jsonb,
    ADD COLUMN replay_id uuid;

CREATE TABLE jobs.replay_requests (
    id          uuid PRIMARY KEY,
    function_id text NOT NULL,
    window_from timestamptz NOT NULL,
    window_to   timestamptz NOT NULL,
    statuses    text[] NOT NULL,
    created_by  regrole NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    total       bigint NOT NULL,
    started     bigint NOT NULL DEFAULT 0,
    finished    bigint NOT NULL DEFAULT 0,
    cancelled_at timestamptz,
    ended_at    timestamptz
);
CREATE INDEX replay_requests_active ON jobs.replay_requests (created_at) WHERE ended_at IS NULL;
CREATE TABLE jobs.replay_items (
    replay_id   uuid NOT NULL,
    position    bigint NOT NULL,
    source_run_id uuid,
    event_id    uuid,
    run_id      uuid,
    done        boolean NOT NULL DEFAULT false,
    PRIMARY KEY (replay_id, position)
);
CREATE INDEX replay_items_pending ON jobs.replay_items (replay_id, position) WHERE run_id IS NULL;
CREATE INDEX replay_items_in_flight ON jobs.replay_items (replay_id) WHERE run_id IS NOT NULL AND NOT done;
CREATE INDEX replay_items_source_run_id ON jobs.replay_items (source_run_id) WHERE run_id IS NULL;
CREATE INDEX replay_items_event_id ON jobs.replay_items (event_id) WHERE run_id IS NULL;

CREATE VIEW jobs.replays WITH (security_invoker = true) AS
SELECT id, function_id, window_from, window_to, statuses, created_by, created_at,
       total, started, finished,
       CASE WHEN cancelled_at IS NOT NULL THEN 'cancelled'
            WHEN ended_at IS NOT NULL THEN 'finished' ELSE 'running' END AS status,
       cancelled_at, ended_at
FROM jobs.replay_requests;

ALTER TABLE jobs.replay_requests ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.replay_requests USING (EXISTS (
    SELECT 1 FROM jobs.functions f WHERE f.id = function_id));
ALTER TABLE jobs.replay_items ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.replay_items USING (EXISTS (
    SELECT 1 FROM jobs.replay_requests q WHERE q.id = replay_id));

CREATE FUNCTION jobs."rerun"(
	"run_id" uuid,
	"from_step" TEXT DEFAULT NULL,
	"input" jsonb DEFAULT NULL
) RETURNS uuid
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'rerun_wrapper';
CREATE FUNCTION jobs."replay"(
	"function_id" TEXT,
	"from" timestamp with time zone,
	"to" timestamp with time zone,
	"statuses" TEXT[] DEFAULT '{failed}'
) RETURNS uuid
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'replay_wrapper';
CREATE FUNCTION jobs."cancel_replay"(
	"replay_id" uuid
) RETURNS void
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'cancel_replay_wrapper';
CREATE FUNCTION jobs."_cancel_runs"(
	"function_id" TEXT,
	"from" timestamp with time zone DEFAULT NULL,
	"to" timestamp with time zone DEFAULT NULL,
	"condition" TEXT DEFAULT NULL
) RETURNS bigint
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'cancel_runs_wrapper';

CREATE FUNCTION jobs._first_id_at(ts timestamptz) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
    SELECT (pg_catalog.lpad(pg_catalog.to_hex(GREATEST(0::int8,
                pg_catalog.floor(EXTRACT(epoch FROM ts) * 1000)::int8)), 12, '0')
            || '00000000000000000000')::uuid
$$;

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

REVOKE EXECUTE ON FUNCTION jobs.rerun(uuid, text, jsonb), jobs.replay(text, timestamptz, timestamptz, text[]),
    jobs.cancel_replay(uuid), jobs._cancel_runs(text, timestamptz, timestamptz, text),
    jobs.cancel_runs(text, timestamptz, timestamptz, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION jobs._first_id_at(timestamptz) TO PUBLIC;

-- jobs.fetch (issue 14) ------------------------------------------------------

ALTER TABLE jobs.steps DROP CONSTRAINT steps_kind_check;
ALTER TABLE jobs.steps ADD CONSTRAINT steps_kind_check
    CHECK (kind IN ('run', 'sleep', 'wait', 'invoke', 'fetch'));

CREATE TABLE jobs.fetches (
    run_id      uuid NOT NULL,
    step_id     text NOT NULL,
    function_id text NOT NULL,
    spec        jsonb NOT NULL,
    due_at      timestamptz NOT NULL,
    claimed_by  int,
    PRIMARY KEY (run_id, step_id)
);
CREATE INDEX fetches_due ON jobs.fetches (due_at) WHERE claimed_by IS NULL;

CREATE TABLE jobs.secrets (
    owner       regrole NOT NULL,
    name        text NOT NULL,
    value       text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, name)
);
SELECT pg_catalog.pg_extension_config_dump('jobs.secrets', '');

CREATE FUNCTION jobs."_fetch"(
	"id" TEXT,
	"spec" jsonb
) RETURNS TEXT
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'fetch_internal_wrapper';
CREATE FUNCTION jobs."set_secret"(
	"name" TEXT,
	"value" TEXT
) RETURNS void
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'set_secret_wrapper';
CREATE FUNCTION jobs."delete_secret"(
	"name" TEXT
) RETURNS bool
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'delete_secret_wrapper';

CREATE FUNCTION jobs._fetch_spec(url text, method text, headers jsonb, body jsonb, timeout interval, accept int[])
RETURNS jsonb
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object('url', url, 'method', method, 'headers', headers, 'body', body,
                              'timeout', extract(epoch FROM timeout), 'accept', to_jsonb(accept))
$$;

CREATE FUNCTION jobs.fetch(id text, url text, method text DEFAULT 'GET', headers jsonb DEFAULT '{}',
                           body jsonb DEFAULT NULL, timeout interval DEFAULT '30s', accept int[] DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    done jsonb := jobs._fetch(id, jobs._fetch_spec(url, method, headers, body, timeout, accept))::jsonb;
BEGIN
    IF done ? 'error' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'JB001',
            MESSAGE = done->'error'->>'message',
            DETAIL = format('fetch "%s" failed after %s attempt(s); its last error had SQLSTATE %s',
                            id, done->'error'->>'attempts', done->'error'->>'sqlstate');
    END IF;
    RETURN done->'output';
END
$$;

CREATE FUNCTION jobs.plan_fetch(id text, url text, method text DEFAULT 'GET', headers jsonb DEFAULT '{}',
                                body jsonb DEFAULT NULL, timeout interval DEFAULT '30s', accept int[] DEFAULT NULL)
RETURNS jobs.step_spec
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ROW(id, NULL, jsonb_build_object('fetch',
        jobs._fetch_spec(url, method, headers, body, timeout, accept)))::jobs.step_spec
$$;

REVOKE EXECUTE ON FUNCTION jobs.fetch(text, text, text, jsonb, jsonb, interval, int[]),
    jobs.plan_fetch(text, text, text, jsonb, jsonb, interval, int[]),
    jobs.set_secret(text, text), jobs.delete_secret(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION jobs._fetch(text, jsonb),
    jobs._fetch_spec(text, text, jsonb, jsonb, interval, int[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION jobs._fetch(text, jsonb),
    jobs._fetch_spec(text, text, jsonb, jsonb, interval, int[])
TO PUBLIC;

ALTER TABLE jobs.fetches ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.fetches USING (EXISTS (
    SELECT 1 FROM jobs.functions f WHERE f.id = function_id));
ALTER TABLE jobs.secrets ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON jobs.secrets USING (owner::oid = (
    SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user));
