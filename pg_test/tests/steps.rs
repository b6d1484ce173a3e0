//! Durable steps: replay, memoization, retries per step, sleeps, parallel steps.

use std::sync::OnceLock;
use std::time::Duration;

use pg_jobs_e2e::*;

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = Cluster::with_pg_jobs("steps", 3, &[]);
        cluster
            .connect()
            .batch_execute(
                "CREATE TABLE emails (recipient text, subject text, body text);
                 CREATE TABLE effects (test text, what text, at timestamptz DEFAULT clock_timestamp());",
            )
            .unwrap();
        cluster
    })
}

fn effects(c: &mut Client, test: &str, what: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM effects WHERE test = $1 AND what = $2",
        &[&test, &what],
    )
    .unwrap()
    .get(0)
}

/// (id, status, attempts) of every step of the function's only run, in the order they started.
fn timeline(c: &mut Client, function_id: &str) -> Vec<(String, String, i32)> {
    c.query(
        "SELECT s.id, s.status, s.attempts FROM jobs.steps s JOIN jobs.runs r ON r.id = s.run_id
         WHERE r.function_id = $1 ORDER BY s.started_at, s.id",
        &[&function_id],
    )
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1), row.get(2)))
    .collect()
}

fn steps(list: &[(&str, &str, i32)]) -> Vec<(String, String, i32)> {
    list.iter()
        .map(|(id, status, attempts)| (id.to_string(), status.to_string(), *attempts))
        .collect()
}

#[test]
fn user_onboarding_runs_three_steps_once_each() {
    let mut c = cluster().connect();
    c.batch_execute(
        r#"
        CREATE TABLE user_profiles (id serial PRIMARY KEY, user_id int, display_name text);
        CREATE TABLE slack_messages (channel text, text text);
        CREATE FUNCTION user_onboarding(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
        DECLARE
            email_result jsonb;
            profile jsonb;
        BEGIN
            email_result := jobs.step('send-welcome-email',
                $q$INSERT INTO emails VALUES ($1->>'email', 'Welcome!', 'Thank you for signing up!')
                   RETURNING true AS sent$q$,
                ctx->'event'->'data');
            profile := jobs.step('create-user-profile',
                $q$INSERT INTO user_profiles (user_id, display_name)
                   VALUES (($1->>'userId')::int, $1->>'name') RETURNING id, user_id, display_name$q$,
                ctx->'event'->'data');
            PERFORM jobs.step('send-slack-notification',
                $q$INSERT INTO slack_messages VALUES ('#new-users', 'New user signed up: ' || ($1->>'name'))$q$,
                ctx->'event'->'data');
            RETURN jsonb_build_object('success', true, 'emailSent', email_result, 'profileId', profile->'id');
        END $$;
        SELECT jobs.create_function('user-onboarding', 'user_onboarding(jsonb)', '{"event": "app/user.created"}');
        SELECT jobs.send('app/user.created', '{"userId": 42, "email": "ada@example.com", "name": "Ada"}');
        "#,
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "user-onboarding", 1), ["completed"]);
    let row = c
        .query_one(
            "SELECT (output->>'profileId')::int = (SELECT id FROM user_profiles WHERE user_id = 42),
                    output->'emailSent' = 'true', output->>'success'
             FROM jobs.runs WHERE function_id = 'user-onboarding'",
            &[],
        )
        .unwrap();
    assert!(row.get::<_, bool>(0), "the output holds the profile id");
    assert!(row.get::<_, bool>(1));
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM emails WHERE recipient = 'ada@example.com'"
        ),
        1
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM user_profiles"), 1);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM slack_messages WHERE text = 'New user signed up: Ada'"
        ),
        1
    );
    assert_eq!(
        timeline(&mut c, "user-onboarding"),
        steps(&[
            ("send-welcome-email", "completed", 1),
            ("create-user-profile", "completed", 1),
            ("send-slack-notification", "completed", 1)
        ])
    );
    let profile: String = c
        .query_one(
            "SELECT s.output::text FROM jobs.steps s JOIN jobs.runs r ON r.id = s.run_id
             WHERE r.function_id = 'user-onboarding' AND s.id = 'create-user-profile'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        profile, r#"{"id": 1, "user_id": 42, "display_name": "Ada"}"#,
        "several columns become an object"
    );
}

#[test]
fn writes_outside_steps_commit_once_with_the_run() {
    let mut c = cluster().connect();
    c.batch_execute(
        r#"
        CREATE FUNCTION outside_writes(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO effects VALUES ('outside', 'handler body');
            PERFORM jobs.step('a', $q$INSERT INTO effects VALUES ('outside', 'a')$q$);
            INSERT INTO effects VALUES ('outside', 'handler body');
            PERFORM jobs.step('b', $q$INSERT INTO effects VALUES ('outside', 'b')$q$);
        END $$;
        SELECT jobs.create_function('outside-writes', 'outside_writes(jsonb)', '{"event": "test/outside"}');
        SELECT jobs.send('test/outside');
        "#,
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "outside-writes", 1), ["completed"]);
    // Three invocations ran the body; only the last one's writes committed.
    assert_eq!(effects(&mut c, "outside", "handler body"), 2);
    assert_eq!(
        (
            effects(&mut c, "outside", "a"),
            effects(&mut c, "outside", "b")
        ),
        (1, 1)
    );
}

#[test]
fn step_values_map_columns_to_json() {
    let mut c = cluster().connect();
    c.batch_execute(
        r#"
        CREATE FUNCTION shapes(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
        BEGIN
            RETURN jsonb_build_object(
                'one', jobs.step('one', 'SELECT 42'),
                'text', jobs.step('text', $q$SELECT 'forty-two'$q$),
                'several', jobs.step('several', $q$SELECT 1 AS a, 'x' AS b, NULL::int AS c$q$),
                'none', jobs.step('none', 'SELECT 1 WHERE false'),
                'args', jobs.step('args', $q$SELECT ($1->>'n')::int * 2$q$, '{"n": 21}'),
                'json', jobs.step('json', $q$SELECT '{"k": [1, 2]}'::jsonb$q$),
                'none_is_null', jobs.step('none2', 'SELECT 1 WHERE false') IS NULL);
        END $$;
        SELECT jobs.create_function('shapes', 'shapes(jsonb)', '{"event": "test/shapes"}');
        SELECT jobs.send('test/shapes');
        "#,
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "shapes", 1), ["completed"]);
    let output: String = c
        .query_one(
            "SELECT output::text FROM jobs.runs WHERE function_id = 'shapes'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        output,
        r#"{"one": 42, "args": 42, "json": {"k": [1, 2]}, "none": null, "text": "forty-two", "several": {"a": 1, "b": "x", "c": null}, "none_is_null": true}"#
    );
}

#[test]
fn step_sql_runs_statement_by_statement_and_sees_replaced_functions() {
    let mut c = cluster().connect();
    c.batch_execute(
        r#"
        CREATE FUNCTION version_of_helper() RETURNS text LANGUAGE sql AS $$ SELECT 'v1' $$;
        CREATE FUNCTION statements(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
        BEGIN
            RETURN jsonb_build_object(
                -- A later statement uses what an earlier one created.
                'made', jobs.step('make', $q$CREATE TABLE made_in_step (n int);
                                             INSERT INTO made_in_step VALUES (7);
                                             SELECT n FROM made_in_step$q$),
                'helper', jobs.step('helper', 'SELECT version_of_helper()'));
        END $$;
        SELECT jobs.create_function('statements', 'statements(jsonb)', '{"event": "test/statements"}');
        SELECT jobs.send('test/statements', '{"n": 1}');
        "#,
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "statements", 1), ["completed"]);
    // The same step SQL and handler again, after both functions were replaced.
    c.batch_execute(
        r#"
        CREATE OR REPLACE FUNCTION version_of_helper() RETURNS text LANGUAGE sql AS $$ SELECT 'v2' $$;
        CREATE OR REPLACE FUNCTION statements(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
        BEGIN
            RETURN jsonb_build_object('helper', jobs.step('helper', 'SELECT version_of_helper()'), 'handler', 2);
        END $$;
        SELECT jobs.send('test/statements');
        "#,
    )
    .unwrap();
    assert_eq!(
        wait_for_runs(&mut c, "statements", 2),
        ["completed", "completed"]
    );
    let outputs: Vec<String> = c
        .query(
            "SELECT output::text FROM jobs.runs WHERE function_id = 'statements' ORDER BY created_at",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        outputs,
        [
            r#"{"made": 7, "helper": "v1"}"#,
            r#"{"helper": "v2", "handler": 2}"#
        ]
    );
}

#[test]
fn a_loop_calling_one_step_id_five_times_gets_numbered_ids() {
    let mut c = cluster().connect();
    c.batch_execute(
        r#"
        CREATE FUNCTION looping(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
        DECLARE
            total int := 0;
        BEGIN
            FOR i IN 1..5 LOOP
                total := total + (jobs.step('add', $q$INSERT INTO effects VALUES ('loop', 'item ' || ($1->>'i')) RETURNING ($1->>'i')::int$q$,
                                            jsonb_build_object('i', i)))::int;
            END LOOP;
            RETURN to_jsonb(total);
        END $$;
        SELECT jobs.create_function('looping', 'looping(jsonb)', '{"event": "test/loop"}');
        SELECT jobs.send('test/loop');
        "#,
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "looping", 1), ["completed"]);
    assert_eq!(
        count(
            &mut c,
            "SELECT output::int8 FROM jobs.runs WHERE function_id = 'looping'"
        ),
        15
    );
    let ids: Vec<String> = timeline(&mut c, "looping")
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    assert_eq!(ids, ["add", "add:1", "add:2", "add:3", "add:4"]);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(DISTINCT what) FROM effects WHERE test = 'loop'"
        ),
        5
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM effects WHERE test = 'loop'"),
        5
    );
}

#[test]
fn a_step_that_fails_twice_then_succeeds_runs_three_times() {
    let mut c = cluster().connect();
    c.batch_execute(
        r#"
        CREATE SEQUENCE flaky_step_attempts;
        CREATE FUNCTION flaky_call() RETURNS text LANGUAGE plpgsql AS $$
        BEGIN
            IF nextval('flaky_step_attempts') < 3 THEN
                RAISE EXCEPTION 'service unavailable' USING ERRCODE = 'P0002';
            END IF;
            RETURN 'ok';
        END $$;
        CREATE FUNCTION flaky_steps(ctx jsonb) RETURNS text LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM jobs.step('before', $q$INSERT INTO effects VALUES ('flaky-step', 'before')$q$);
            RETURN jobs.step('call-external-api', 'SELECT flaky_call()') #>> '{}';
        END $$;
        SELECT jobs.create_function('flaky-steps', 'flaky_steps(jsonb)',
            '{"event": "test/flaky-step", "retries": {"attempts": 4, "backoff": {"type": "fixed", "base": "50ms"}}}');
        SELECT jobs.send('test/flaky-step');
        "#,
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "flaky-steps", 1), ["completed"]);
    assert_eq!(effects(&mut c, "flaky-step", "before"), 1);
    assert_eq!(
        count(&mut c, "SELECT last_value FROM flaky_step_attempts"),
        3
    );
    assert_eq!(
        timeline(&mut c, "flaky-steps"),
        steps(&[
            ("before", "completed", 1),
            ("call-external-api", "completed", 3)
        ])
    );
    let errors: Vec<(String, i32, String)> = c
        .query(
            "SELECT e.step_id, e.attempt, e.sqlstate FROM jobs.attempt_errors e JOIN jobs.runs r ON r.id = e.run_id
             WHERE r.function_id = 'flaky-steps' ORDER BY e.attempt",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(
        errors,
        [
            ("call-external-api".to_string(), 0, "P0002".to_string()),
            ("call-external-api".to_string(), 1, "P0002".to_string())
        ]
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT attempt::int8 FROM jobs.runs WHERE function_id = 'flaky-steps'"
        ),
        0,
        "step retries are not run retries"
    );
}

#[test]
fn the_guides_error_handling_catches_a_step_out_of_retries() {
    let mut c = cluster().connect();
    c.batch_execute(
        r#"
        CREATE TABLE error_log (message text, detail text);
        CREATE FUNCTION risky_operation(data jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'risky operation failed for %', data->>'id' USING ERRCODE = '22012';
        END $$;
        CREATE FUNCTION error_handling(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
        DECLARE
            result jsonb;
        BEGIN
            BEGIN
                result := jobs.step('risky-operation', 'SELECT risky_operation($1)', ctx->'event'->'data');
                PERFORM jobs.step('handle-success', $q$INSERT INTO effects VALUES ('error-handling', 'success')$q$);
            EXCEPTION WHEN SQLSTATE 'JB001' THEN
                PERFORM jobs.step('handle-error', 'INSERT INTO error_log VALUES ($1->>''message'', $1->>''detail'')',
                                  jsonb_build_object('message', SQLERRM, 'detail', (SELECT d FROM (SELECT 1) x, LATERAL (SELECT NULL::text AS d) y)));
                RAISE;
            END;
            RETURN result;
        END $$;
        SELECT jobs.create_function('error-handling', 'error_handling(jsonb)',
            '{"event": "app/process.data", "retries": {"attempts": 3, "backoff": {"type": "fixed", "base": "20ms"}}}');
        SELECT jobs.send('app/process.data', '{"id": "d-1"}');
        "#,
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "error-handling", 1), ["failed"]);
    assert_eq!(
        timeline(&mut c, "error-handling"),
        steps(&[
            ("risky-operation", "failed", 3),
            ("handle-error", "completed", 1)
        ])
    );
    assert_eq!(effects(&mut c, "error-handling", "success"), 0);
    let logged: String = c
        .query_one("SELECT message FROM error_log", &[])
        .unwrap()
        .get(0);
    assert_eq!(logged, "risky operation failed for d-1");
    let error = c
        .query_one("SELECT error->>'sqlstate', error->>'message', error->>'detail' FROM jobs.runs WHERE function_id = 'error-handling'", &[])
        .unwrap();
    assert_eq!(error.get::<_, String>(0), "JB001");
    assert_eq!(error.get::<_, String>(1), "risky operation failed for d-1");
    assert!(
        error.get::<_, String>(2).contains("SQLSTATE 22012"),
        "{}",
        error.get::<_, String>(2)
    );
}

#[test]
fn catch_all_handlers_do_not_swallow_step_boundaries() {
    let mut c = cluster().connect();
    c.batch_execute(
        r#"
        CREATE FUNCTION catch_all(ctx jsonb) RETURNS text LANGUAGE plpgsql AS $$
        DECLARE
            got jsonb;
        BEGIN
            BEGIN
                got := jobs.step('guarded', $q$INSERT INTO effects VALUES ('catch-all', 'guarded') RETURNING 'value'$q$);
            EXCEPTION WHEN OTHERS THEN
                RETURN 'swallowed: ' || SQLERRM;
            END;
            -- A handler that even catches query_canceled cannot turn a step into its return value.
            BEGIN
                got := jobs.step('stubborn', $q$INSERT INTO effects VALUES ('catch-all', 'stubborn') RETURNING 'second'$q$);
            EXCEPTION WHEN query_canceled THEN
                RETURN 'caught the stop';
            END;
            RETURN got #>> '{}';
        END $$;
        SELECT jobs.create_function('catch-all', 'catch_all(jsonb)', '{"event": "test/catch-all"}');
        SELECT jobs.send('test/catch-all');
        "#,
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "catch-all", 1), ["completed"]);
    let output: String = c
        .query_one(
            "SELECT output #>> '{}' FROM jobs.runs WHERE function_id = 'catch-all'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(output, "second");
    assert_eq!(
        (
            effects(&mut c, "catch-all", "guarded"),
            effects(&mut c, "catch-all", "stubborn")
        ),
        (1, 1)
    );
}

#[test]
fn a_user_error_is_never_taken_for_a_step_boundary() {
    let mut c = cluster().connect();
    c.batch_execute(
        r#"
        CREATE FUNCTION cancels_itself(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'pretending to be a step' USING ERRCODE = 'query_canceled';
        END $$;
        SELECT jobs.create_function('cancels-itself', 'cancels_itself(jsonb)', '{"event": "test/cancels", "retries": 0}');
        SELECT jobs.send('test/cancels');
        "#,
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "cancels-itself", 1), ["failed"]);
    assert_eq!(timeline(&mut c, "cancels-itself"), vec![]);
}

#[test]
fn non_retriable_fails_at_once_and_retry_after_sets_the_delay() {
    let mut c = cluster().connect();
    c.batch_execute(
        r#"
        CREATE SEQUENCE busy_calls;
        CREATE FUNCTION busy_then_ok() RETURNS text LANGUAGE plpgsql AS $$
        BEGIN
            IF nextval('busy_calls') = 1 THEN
                PERFORM jobs.retry_after('rate limited', interval '700 milliseconds');
            END IF;
            RETURN 'ok';
        END $$;
        CREATE FUNCTION retry_control(ctx jsonb) RETURNS text LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM jobs.step('patient', 'SELECT busy_then_ok()');
            PERFORM jobs.step('hopeless', $q$SELECT jobs.non_retriable('unknown entity type: ' || ($1->>'entityType'))$q$,
                              ctx->'event'->'data');
            RETURN 'unreachable';
        END $$;
        SELECT jobs.create_function('retry-control', 'retry_control(jsonb)',
            '{"event": "test/retry-control", "retries": {"attempts": 5, "backoff": {"type": "fixed", "base": "10ms"}}}');
        SELECT jobs.send('test/retry-control', '{"entityType": "invoice"}');
        "#,
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "retry-control", 1), ["failed"]);
    assert_eq!(
        timeline(&mut c, "retry-control"),
        steps(&[("patient", "completed", 2), ("hopeless", "failed", 1)])
    );
    let waited: f64 = c
        .query_one(
            "SELECT extract(epoch FROM s.ended_at - e.failed_at)::float8
             FROM jobs.steps s JOIN jobs.runs r ON r.id = s.run_id
             JOIN jobs.attempt_errors e ON e.run_id = s.run_id AND e.step_id = s.id
             WHERE r.function_id = 'retry-control' AND s.id = 'patient'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        waited >= 0.7,
        "retry_after asked for 700 ms, the retry came after {waited} s"
    );
    let error = c.query_one("SELECT error->>'sqlstate', error->>'message' FROM jobs.runs WHERE function_id = 'retry-control'", &[]).unwrap();
    assert_eq!(error.get::<_, String>(0), "JB001");
    assert_eq!(error.get::<_, String>(1), "unknown entity type: invoice");
}

#[test]
fn exponential_backoff_spaces_attempts_along_the_curve() {
    let mut c = cluster().connect();
    c.batch_execute(
        r#"
        CREATE FUNCTION always_busy() RETURNS void LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'still busy'; END $$;
        CREATE FUNCTION heavy_task(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN PERFORM jobs.step('heavy', 'SELECT always_busy()'); END $$;
        SELECT jobs.create_function('custom-retry', 'heavy_task(jsonb)',
            '{"event": "app/heavy.task", "retries": {"attempts": 5, "backoff": {"type": "exponential", "base": 0.2, "max": 1}}}');
        SELECT jobs.send('app/heavy.task');
        "#,
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "custom-retry", 1), ["failed"]);
    let gaps: Vec<f64> = c
        .query(
            "SELECT extract(epoch FROM failed_at - lag(failed_at) OVER (ORDER BY e.attempt))::float8
             FROM jobs.attempt_errors e JOIN jobs.runs r ON r.id = e.run_id
             WHERE r.function_id = 'custom-retry' AND e.step_id = 'heavy' ORDER BY e.attempt OFFSET 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    // base·2^n capped at max, plus up to 10% jitter: 0.2, 0.4, 0.8, 1.0 seconds.
    let curve = [0.2, 0.4, 0.8, 1.0];
    assert_eq!(gaps.len(), curve.len(), "{gaps:?}");
    for (gap, expected) in gaps.iter().zip(curve) {
        assert!(
            *gap >= expected && *gap < expected * 1.1 + 0.5,
            "gaps {gaps:?} should follow {curve:?}"
        );
    }
}

#[test]
fn delayed_notification_sleeps_without_holding_a_worker() {
    let mut c = cluster().connect();
    c.batch_execute(
        r#"
        CREATE FUNCTION delayed_notification(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM jobs.sleep('wait-7-days', interval '2 seconds');
            PERFORM jobs.step('send-reminder',
                $q$INSERT INTO emails VALUES ($1->>'email', 'Your trial is ending soon!', 'Only 3 days left in your trial.')$q$,
                ctx->'event'->'data');
        END $$;
        SELECT jobs.create_function('delayed-notification', 'delayed_notification(jsonb)', '{"event": "app/trial.started"}');
        SELECT jobs.send('app/trial.started', '{"email": "grace@example.com"}');
        "#,
    )
    .unwrap();
    wait_until("the run sleeps", Duration::from_secs(10), || {
        statuses(&mut c, "delayed-notification") == ["sleeping"]
    });
    let busy = count(
        &mut c,
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_jobs executor' AND query LIKE '%delayed-notification%'",
    );
    assert_eq!(busy, 0, "no executor holds a sleeping run");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM emails WHERE recipient = 'grace@example.com'"
        ),
        0
    );
    assert_eq!(
        wait_for_runs(&mut c, "delayed-notification", 1),
        ["completed"]
    );
    assert_eq!(
        timeline(&mut c, "delayed-notification"),
        steps(&[
            ("wait-7-days", "completed", 0),
            ("send-reminder", "completed", 1)
        ])
    );
    let slept: f64 = c
        .query_one(
            "SELECT extract(epoch FROM s.ended_at - s.started_at)::float8 FROM jobs.steps s JOIN jobs.runs r ON r.id = s.run_id
             WHERE r.function_id = 'delayed-notification' AND s.id = 'wait-7-days'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(slept >= 2.0, "slept {slept} s");
}

#[test]
fn sleep_until_a_past_time_goes_straight_on() {
    let mut c = cluster().connect();
    c.batch_execute(
        r#"
        CREATE FUNCTION past_sleep(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM jobs.sleep_until('expiry', now() - interval '1 day');
            PERFORM jobs.step('after', $q$INSERT INTO effects VALUES ('past-sleep', 'after')$q$);
        END $$;
        SELECT jobs.create_function('past-sleep', 'past_sleep(jsonb)', '{"event": "test/past-sleep"}');
        SELECT jobs.send('test/past-sleep');
        "#,
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "past-sleep", 1), ["completed"]);
    assert_eq!(
        timeline(&mut c, "past-sleep"),
        steps(&[("expiry", "completed", 0), ("after", "completed", 1)])
    );
}

#[test]
fn parallel_steps_run_at_the_same_time_then_the_run_uses_their_outputs() {
    let mut c = cluster().connect();
    c.batch_execute(
        r#"
        CREATE TABLE images (id text, thumbnail text, webp text, metadata jsonb);
        CREATE FUNCTION parallel_processing(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
        DECLARE
            results jsonb;
        BEGIN
            results := jobs.parallel(
                jobs.plan('create-thumbnail', $q$SELECT jsonb_build_object('url', $1->>'imageUrl' || '?w=150') FROM pg_sleep(1)$q$,
                          ctx->'event'->'data'),
                jobs.plan('convert-to-webp', $q$SELECT jsonb_build_object('url', $1->>'imageUrl' || '.webp') FROM pg_sleep(1)$q$,
                          ctx->'event'->'data'),
                jobs.plan('extract-metadata', $q$SELECT jsonb_build_object('width', 1920, 'height', 1080) FROM pg_sleep(1)$q$));
            PERFORM jobs.step('save-results',
                $q$INSERT INTO images VALUES ($1->>'imageId', $1->'results'->0->>'url', $1->'results'->1->>'url', $1->'results'->2)$q$,
                jsonb_build_object('imageId', ctx->'event'->'data'->>'imageId', 'results', results));
            RETURN results;
        END $$;
        SELECT jobs.create_function('parallel-processing', 'parallel_processing(jsonb)', '{"event": "app/image.uploaded"}');
        SELECT jobs.send('app/image.uploaded', '{"imageId": "img-1", "imageUrl": "https://cdn.example.com/a.jpg"}');
        "#,
    )
    .unwrap();
    assert_eq!(
        wait_for_runs(&mut c, "parallel-processing", 1),
        ["completed"]
    );
    let saved = c
        .query_one(
            "SELECT thumbnail, webp, metadata->>'width' FROM images WHERE id = 'img-1'",
            &[],
        )
        .unwrap();
    assert_eq!(
        saved.get::<_, String>(0),
        "https://cdn.example.com/a.jpg?w=150"
    );
    assert_eq!(
        saved.get::<_, String>(1),
        "https://cdn.example.com/a.jpg.webp"
    );
    assert_eq!(saved.get::<_, String>(2), "1920");
    let output: String = c
        .query_one(
            "SELECT output->1->>'url' FROM jobs.runs WHERE function_id = 'parallel-processing'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        output, "https://cdn.example.com/a.jpg.webp",
        "outputs come in the order planned"
    );
    // The three one-second steps overlapped: each started before any ended.
    let overlapped: bool = c
        .query_one(
            "SELECT max(s.started_at) < min(s.ended_at) FROM jobs.steps s JOIN jobs.runs r ON r.id = s.run_id
             WHERE r.function_id = 'parallel-processing' AND s.id <> 'save-results'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(overlapped, "parallel steps ran one after another");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.queue WHERE function_id = 'parallel-processing'"
        ),
        0
    );
}

#[test]
fn a_step_output_over_4_mib_is_a_failed_attempt() {
    let mut c = cluster().connect();
    c.batch_execute(
        r#"
        CREATE FUNCTION too_big(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN PERFORM jobs.step('huge', $q$SELECT repeat('x', 5 * 1024 * 1024)$q$); END $$;
        SELECT jobs.create_function('too-big', 'too_big(jsonb)', '{"event": "test/too-big", "retries": 0}');
        SELECT jobs.send('test/too-big');
        "#,
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "too-big", 1), ["failed"]);
    let error: String = c
        .query_one(
            "SELECT s.error->>'message' FROM jobs.steps s JOIN jobs.runs r ON r.id = s.run_id WHERE r.function_id = 'too-big'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(error.contains("over the 4 MiB limit"), "{error}");
}
