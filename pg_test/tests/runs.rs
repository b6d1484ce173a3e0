//! Events start runs; executors run them with retries, as the function's owner.

use std::sync::OnceLock;
use std::time::Duration;

use pg_jobs_e2e::*;

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = Cluster::with_pg_jobs("runs", 2, &[]);
        cluster
            .connect()
            .batch_execute(
                "CREATE TABLE effects (function_id text, event_id uuid, data jsonb, at timestamptz DEFAULT clock_timestamp());
                 CREATE FUNCTION record_effect(ctx jsonb) RETURNS jsonb LANGUAGE sql AS $$
                     INSERT INTO effects (function_id, event_id, data)
                     VALUES (ctx->>'function_id', (ctx->'event'->>'id')::uuid, ctx->'event'->'data')
                     RETURNING jsonb_build_object('recorded', ctx->'event'->'data')
                 $$;",
            )
            .unwrap();
        cluster
    })
}

fn effects(client: &mut Client, function_id: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM effects WHERE function_id = $1",
            &[&function_id],
        )
        .unwrap()
        .get(0)
}

#[test]
fn a_handler_without_steps_runs_and_stores_its_output() {
    let mut c = cluster().connect();
    c.batch_execute(
        "CREATE FUNCTION hello_plain(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
         BEGIN
             RAISE LOG 'Hello, %!', ctx->'event'->'data'->>'name';
             RETURN jsonb_build_object('message', 'Hello, ' || (ctx->'event'->'data'->>'name') || '!');
         END $$;
         SELECT jobs.create_function('hello-plain', 'hello_plain(jsonb)', '{\"event\": \"test/hello.plain\"}');
         SELECT jobs.send('test/hello.plain', '{\"name\": \"Ada\"}');",
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "hello-plain", 1), ["completed"]);
    let row = c
        .query_one(
            "SELECT output->>'message', attempt, started_at >= created_at AND ended_at >= started_at, error IS NULL
             FROM jobs.runs WHERE function_id = 'hello-plain'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Hello, Ada!");
    assert_eq!(row.get::<_, i32>(1), 0);
    assert!(row.get::<_, bool>(2));
    assert!(row.get::<_, bool>(3));
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.queue WHERE function_id = 'hello-plain'"
        ),
        0
    );
}

#[test]
fn a_rolled_back_send_starts_nothing() {
    let mut c = cluster().connect();
    c.batch_execute("SELECT jobs.create_function('rollback-fn', 'record_effect(jsonb)', '{\"event\": \"test/rollback\"}')").unwrap();
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT jobs.send('test/rollback', '{\"n\": 1}')", &[])
        .unwrap();
    tx.rollback().unwrap();
    c.batch_execute("SELECT jobs.send('test/rollback', '{\"n\": 2}')")
        .unwrap();
    assert_eq!(wait_for_runs(&mut c, "rollback-fn", 1), ["completed"]);
    // The committed event ran; the rolled-back one left no event, run or effect.
    assert_eq!(effects(&mut c, "rollback-fn"), 1);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM effects WHERE function_id = 'rollback-fn' AND data->>'n' = '2'"
        ),
        1
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.events WHERE name = 'test/rollback'"
        ),
        1
    );
}

#[test]
fn one_event_fans_out_to_an_exact_and_a_wildcard_subscriber() {
    let mut c = cluster().connect();
    c.batch_execute(
        "SELECT jobs.create_function('fan-exact', 'record_effect(jsonb)', '{\"event\": \"test/user.created\"}');
         SELECT jobs.create_function('fan-wild', 'record_effect(jsonb)', '{\"event\": \"test/user.*\"}');
         SELECT jobs.send('test/user.created', '{\"userId\": 42}');",
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "fan-exact", 1), ["completed"]);
    assert_eq!(wait_for_runs(&mut c, "fan-wild", 1), ["completed"]);
    let same_event = count(&mut c, "SELECT count(DISTINCT event_id) FROM effects WHERE function_id IN ('fan-exact', 'fan-wild')");
    assert_eq!(
        (
            effects(&mut c, "fan-exact"),
            effects(&mut c, "fan-wild"),
            same_event
        ),
        (1, 1, 1)
    );
}

#[test]
fn an_if_filter_skips_events_that_do_not_match() {
    let mut c = cluster().connect();
    c.batch_execute(
        "SELECT jobs.create_function('filtered', 'record_effect(jsonb)',
             '{\"event\": \"test/order.placed\", \"if\": \"event.data.amount >= 100\"}');
         SELECT jobs.send('test/order.placed', '{\"amount\": 20}');
         SELECT jobs.send('test/order.placed', '{\"amount\": 150}');",
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "filtered", 1), ["completed"]);
    assert_eq!(count(&mut c, "SELECT count(*) FROM effects WHERE function_id = 'filtered' AND data->>'amount' = '150'"), 1);
    assert_eq!(effects(&mut c, "filtered"), 1);
}

#[test]
fn a_failing_handler_succeeds_on_its_third_attempt() {
    let mut c = cluster().connect();
    // A sequence counts attempts: nextval survives the rollback of a failed attempt.
    c.batch_execute(
        "CREATE SEQUENCE flaky_attempts;
         CREATE FUNCTION flaky(ctx jsonb) RETURNS int LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM nextval('flaky_attempts');
             INSERT INTO effects (function_id) VALUES ('flaky');
             IF (ctx->>'attempt')::int < 2 THEN
                 RAISE EXCEPTION 'upstream unavailable (attempt %)', ctx->>'attempt' USING ERRCODE = 'P0001';
             END IF;
             RETURN (ctx->>'attempt')::int;
         END $$;
         SELECT jobs.create_function('flaky', 'flaky(jsonb)',
             '{\"event\": \"test/flaky\", \"retries\": {\"attempts\": 5, \"backoff\": {\"type\": \"fixed\", \"base\": \"100ms\"}}}');
         SELECT jobs.send('test/flaky');",
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "flaky", 1), ["completed"]);
    assert_eq!(count(&mut c, "SELECT last_value FROM flaky_attempts"), 3);
    // Only the successful attempt's write committed.
    assert_eq!(effects(&mut c, "flaky"), 1);
    let row = c
        .query_one(
            "SELECT attempt, output::text, error FROM jobs.runs WHERE function_id = 'flaky'",
            &[],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, String>(1)),
        (2, "2".to_string())
    );
    let errors: Vec<(i32, String, String)> = c
        .query(
            "SELECT e.attempt, e.sqlstate, e.message FROM jobs.attempt_errors e JOIN jobs.runs r ON r.id = e.run_id
             WHERE r.function_id = 'flaky' ORDER BY e.attempt",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        errors,
        vec![
            (0, "P0001".into(), "upstream unavailable (attempt 0)".into()),
            (1, "P0001".into(), "upstream unavailable (attempt 1)".into())
        ]
    );
}

#[test]
fn exhausted_retries_leave_the_run_failed_with_the_last_error() {
    let mut c = cluster().connect();
    c.batch_execute(
        "CREATE FUNCTION always_fails(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'boom %', ctx->>'attempt' USING ERRCODE = '22012', HINT = 'check the input'; END $$;
         SELECT jobs.create_function('always-fails', 'always_fails(jsonb)',
             '{\"event\": \"test/fail\", \"retries\": {\"attempts\": 3, \"backoff\": {\"type\": \"exponential\", \"base\": 0.05, \"max\": 1}}}');
         SELECT jobs.send('test/fail');",
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "always-fails", 1), ["failed"]);
    let row = c
        .query_one(
            "SELECT attempt, error->>'sqlstate', error->>'message', error->>'hint',
                    (SELECT count(*) FROM jobs.attempt_errors e WHERE e.run_id = r.id)
             FROM jobs.runs r WHERE function_id = 'always-fails'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    assert_eq!(row.get::<_, String>(1), "22012");
    assert_eq!(row.get::<_, String>(2), "boom 2");
    assert_eq!(row.get::<_, String>(3), "check the input");
    assert_eq!(row.get::<_, i64>(4), 3);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.queue WHERE function_id = 'always-fails'"
        ),
        0
    );
}

#[test]
fn max_runtime_bounds_an_attempt() {
    let mut c = cluster().connect();
    c.batch_execute(
        "CREATE FUNCTION slow(ctx jsonb) RETURNS void LANGUAGE sql AS 'SELECT pg_sleep(30)';
         SELECT jobs.create_function('slow', 'slow(jsonb)', '{\"event\": \"test/slow\", \"retries\": 0, \"max_runtime\": \"300ms\"}');
         SELECT jobs.send('test/slow');",
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "slow", 1), ["failed"]);
    let row = c
        .query_one(
            "SELECT error->>'sqlstate', error->>'message', extract(epoch FROM ended_at - started_at)::float8
             FROM jobs.runs WHERE function_id = 'slow'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "57014");
    assert!(
        row.get::<_, String>(1).contains("max_runtime (300ms)"),
        "{}",
        row.get::<_, String>(1)
    );
    assert!(row.get::<_, f64>(2) < 10.0);
}

#[test]
fn handlers_run_as_the_role_that_defined_the_function() {
    let mut c = cluster().connect();
    c.batch_execute(
        "CREATE TABLE secrets (s text); INSERT INTO secrets VALUES ('the superuser''s secret');
         CREATE ROLE app_owner LOGIN;
         CREATE SCHEMA app AUTHORIZATION app_owner;
         GRANT USAGE ON SCHEMA jobs TO app_owner;
         GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA jobs TO app_owner;
         SET ROLE app_owner;
         CREATE TABLE app.notes (who text, secret_count bigint);
         CREATE FUNCTION app.peek(ctx jsonb) RETURNS text LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO app.notes VALUES (current_user, NULL);
             RETURN (SELECT count(*) FROM public.secrets)::text;
         END $$;
         CREATE FUNCTION app.whoami(ctx jsonb) RETURNS text LANGUAGE sql AS $$
             INSERT INTO app.notes VALUES (current_user || '/' || session_user, NULL) RETURNING who
         $$;
         SELECT jobs.create_function('peek', 'app.peek(jsonb)', '{\"event\": \"test/peek\", \"retries\": 0}');
         SELECT jobs.create_function('whoami', 'app.whoami(jsonb)', '{\"event\": \"test/peek\", \"retries\": 0}');
         RESET ROLE;
         SELECT jobs.send('test/peek');",
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "peek", 1), ["failed"]);
    assert_eq!(wait_for_runs(&mut c, "whoami", 1), ["completed"]);
    let error = c.query_one("SELECT error->>'sqlstate', error->>'message' FROM jobs.runs WHERE function_id = 'peek'", &[]).unwrap();
    assert_eq!(error.get::<_, String>(0), "42501");
    assert!(error.get::<_, String>(1).contains("secrets"));
    let who = c
        .query_one(
            "SELECT output #>> '{}' FROM jobs.runs WHERE function_id = 'whoami'",
            &[],
        )
        .unwrap();
    assert_eq!(who.get::<_, String>(0), "app_owner/postgres");
    // The failed attempt's insert was rolled back with it.
    assert_eq!(count(&mut c, "SELECT count(*) FROM app.notes"), 1);
}

#[test]
fn user_code_runs_with_the_configured_settings_not_the_executors() {
    let mut c = cluster().connect();
    c.batch_execute(
        "CREATE FUNCTION settings_seen(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
         BEGIN
             RETURN jsonb_build_object(
                 'handler', current_setting('search_path') || ' ' || current_setting('enable_seqscan'),
                 'step', jobs.step('look',
                     $step$ SELECT current_setting('search_path') || ' ' || current_setting('enable_seqscan') $step$));
         END $$;
         SELECT jobs.create_function('settings-seen', 'settings_seen(jsonb)', '{\"event\": \"test/settings\"}');
         SELECT jobs.send('test/settings');",
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "settings-seen", 1), ["completed"]);
    let output = c
        .query_one(
            "SELECT output->>'handler', output->>'step' FROM jobs.runs WHERE function_id = 'settings-seen'",
            &[],
        )
        .unwrap();
    for seen in [output.get::<_, String>(0), output.get(1)] {
        assert_eq!(seen, "\"$user\", public on");
    }
}

#[test]
fn pause_holds_runs_and_resume_releases_them() {
    let mut c = cluster().connect();
    c.batch_execute(
        "SELECT jobs.create_function('pausable', 'record_effect(jsonb)', '{\"event\": \"test/pausable\"}');
         SELECT jobs.pause_function('pausable');
         SELECT jobs.send('test/pausable');
         SELECT jobs.send('test/pausable');",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(statuses(&mut c, "pausable"), ["queued", "queued"]);
    assert_eq!(effects(&mut c, "pausable"), 0);
    c.batch_execute("SELECT jobs.resume_function('pausable')")
        .unwrap();
    assert_eq!(
        wait_for_runs(&mut c, "pausable", 2),
        ["completed", "completed"]
    );
    assert_eq!(effects(&mut c, "pausable"), 2);
}

#[test]
fn a_duplicate_event_id_starts_nothing() {
    let mut c = cluster().connect();
    c.batch_execute(
        "SELECT jobs.create_function('dedup', 'record_effect(jsonb)', '{\"event\": \"test/dedup\"}');
         SELECT jobs.send('test/dedup', '{}', 'payment-7');
         SELECT jobs.send('test/dedup', '{}', 'payment-7');",
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "dedup", 1), ["completed"]);
    c.batch_execute("SELECT jobs.send('test/dedup', '{}', 'payment-8')")
        .unwrap();
    assert_eq!(
        wait_for_runs(&mut c, "dedup", 2),
        ["completed", "completed"]
    );
    assert_eq!(effects(&mut c, "dedup"), 2);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.events WHERE name = 'test/dedup'"
        ),
        3
    );
}

#[test]
fn a_future_ts_delays_the_run() {
    let mut c = cluster().connect();
    c.batch_execute(
        "SELECT jobs.create_function('delayed', 'record_effect(jsonb)', '{\"event\": \"test/delayed\"}');
         SELECT jobs.send('test/delayed', '{}', NULL, clock_timestamp() + interval '1.5 seconds');",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(statuses(&mut c, "delayed"), ["queued"]);
    assert_eq!(wait_for_runs(&mut c, "delayed", 1), ["completed"]);
    let on_time = count(
        &mut c,
        "SELECT count(*) FROM effects f JOIN jobs.events e ON e.id = f.event_id
         WHERE f.function_id = 'delayed' AND f.at >= e.ts AND f.at < e.ts + interval '1 second'",
    );
    assert_eq!(on_time, 1, "the run must start at ts, promptly");
}

#[test]
fn the_hello_example_runs_as_the_demo_shows() {
    let mut c = cluster().connect();
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/hello.sql"
    ))
    .unwrap();
    c.batch_execute(&example).unwrap();
    assert_eq!(wait_for_runs(&mut c, "hello-world", 1), ["completed"]);
    let row = c
        .query_one(
            "SELECT r.output->>'message', s.id, s.status FROM jobs.runs r JOIN jobs.steps s ON s.run_id = r.id
             WHERE r.function_id = 'hello-world'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Hello, Ada!");
    assert_eq!(
        (row.get::<_, String>(1), row.get::<_, String>(2)),
        ("say-hello".to_string(), "completed".to_string())
    );
}

#[test]
fn the_workers_view_shows_the_launcher_and_the_executors() {
    let mut c = cluster().connect();
    let rows = c
        .query(
            "SELECT kind, count(*), bool_and(last_heartbeat > now() - interval '5 seconds'), bool_and(pid > 0)
             FROM jobs.workers GROUP BY kind ORDER BY kind",
            &[],
        )
        .unwrap();
    let got: Vec<(String, i64, bool, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        got,
        [
            ("executor".to_string(), 2, true, true),
            ("launcher".to_string(), 1, true, true)
        ]
    );
    let pids: i64 = c
        .query_one(
            "SELECT count(*) FROM jobs.workers w JOIN pg_stat_activity a ON a.pid = w.pid AND a.backend_type = 'pg_jobs ' || w.kind",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(pids, 3);
}

#[test]
fn explain_event_tells_why_a_function_did_not_run() {
    let mut c = cluster().connect();
    c.batch_execute(
        "SELECT jobs.create_function('explained', 'record_effect(jsonb)', '{\"event\": \"test/explained\", \"if\": \"event.data.n > 1\"}')",
    )
    .unwrap();
    let event: String = c
        .query_one(
            "SELECT jobs.send('test/explained', '{\"n\": 1}')::text",
            &[],
        )
        .unwrap()
        .get(0);
    let reason: String = c
        .query_one(
            "SELECT reason FROM jobs.explain_event($1::text::uuid) WHERE function_id = 'explained'",
            &[&event],
        )
        .unwrap()
        .get(0);
    assert_eq!(reason, "its if filter is false: event.data.n > 1");
}
