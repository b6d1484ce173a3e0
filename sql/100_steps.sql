-- What handlers call. These work only inside a handler that pg_jobs runs
-- (elsewhere they raise SQLSTATE 55000) and only on that handler's run, so every
-- role may call them (see 900_security.sql).
--
-- SQLSTATEs (README, "Errors"): JB001 a step ran out of attempts, JB002
-- jobs.non_retriable, JB003 jobs.retry_after. pgrx cannot raise codes of its
-- own, so these wrappers raise them.

CREATE TYPE jobs.step_spec AS (id text, sql text, args jsonb);

CREATE FUNCTION jobs.step(id text, sql text, args jsonb DEFAULT NULL) RETURNS jsonb
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

CREATE FUNCTION jobs.plan(id text, sql text, args jsonb DEFAULT NULL) RETURNS jobs.step_spec
LANGUAGE sql IMMUTABLE AS $$ SELECT ROW(id, sql, args)::jobs.step_spec $$;

CREATE FUNCTION jobs.parallel(VARIADIC steps jobs.step_spec[]) RETURNS jsonb
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

CREATE FUNCTION jobs.wait_for_event(id text, event text, timeout interval,
                                    match text DEFAULT NULL, condition text DEFAULT NULL) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jobs._wait_for_event(id, event, timeout, match, condition)::jsonb $$;

CREATE FUNCTION jobs.invoke(id text, function_id text, data jsonb DEFAULT '{}', timeout interval DEFAULT NULL)
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

CREATE FUNCTION jobs.non_retriable(message text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'JB002', MESSAGE = message,
        HINT = 'Raised with jobs.non_retriable: the step or run fails without retrying.';
END
$$;

CREATE FUNCTION jobs.retry_after(message text, delay interval) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'JB003', MESSAGE = message,
        DETAIL = format('retry after %s seconds', extract(epoch FROM delay));
END
$$;

-- jobs.fetch: a step whose work is one HTTP request, made by the fetcher
-- worker outside any transaction (README, "Calling other services"). Not
-- granted to PUBLIC: outbound requests are a server capability, and the
-- fetcher checks at request time that the function's owner may call it.
-- JB001 when the request fails for good: the message is the last failure's.
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

-- A fetch for jobs.parallel: a step_spec without sql, whose args are {"fetch": spec}.
CREATE FUNCTION jobs.plan_fetch(id text, url text, method text DEFAULT 'GET', headers jsonb DEFAULT '{}',
                                body jsonb DEFAULT NULL, timeout interval DEFAULT '30s', accept int[] DEFAULT NULL)
RETURNS jobs.step_spec
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ROW(id, NULL, jsonb_build_object('fetch',
        jobs._fetch_spec(url, method, headers, body, timeout, accept)))::jobs.step_spec
$$;

CREATE FUNCTION jobs._fetch_spec(url text, method text, headers jsonb, body jsonb, timeout interval, accept int[])
RETURNS jsonb
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object('url', url, 'method', method, 'headers', headers, 'body', body,
                              'timeout', extract(epoch FROM timeout), 'accept', to_jsonb(accept))
$$;
