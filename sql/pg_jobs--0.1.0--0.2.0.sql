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
-- condition to; its grammar was pg_jobs' own: roots `$.event`/`$.async`,
-- fields `."name"`, indexes `[n]`, JSON strings, and the operators CEL has.
CREATE FUNCTION jobs._cel_of_jsonpath(path text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT string_agg(
        CASE WHEN piece LIKE '"%' THEN
                 CASE WHEN lag(piece) OVER w LIKE '%.' THEN '[' || piece || ']' ELSE piece END
             ELSE regexp_replace(replace(piece, '$.', ''),
                                 CASE WHEN lead(piece) OVER w LIKE '"%' THEN '\.$' ELSE '^$' END, '')
        END, '' ORDER BY n)
    FROM regexp_matches(path, '("(?:[^"\\]|\\.)*"|[^"]+)', 'g') WITH ORDINALITY AS m (parts, n)
    CROSS JOIN LATERAL (SELECT m.parts[1] AS piece) p
    WINDOW w AS (ORDER BY n)
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
