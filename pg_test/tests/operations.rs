//! Operating runs on a real cluster: rerun (from a step, with new input),
//! bulk replay, bulk cancel, retention, and what two ordinary roles may do
//! to each other's runs. Effects are rows in `effects`, so "once" is
//! counted from what committed.

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use pg_jobs_e2e::*;

fn cluster() -> (&'static Cluster, MutexGuard<'static, ()>) {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let cluster = CLUSTER.get_or_init(|| {
        let cluster = Cluster::with_pg_jobs("operations", 2, &[]);
        cluster.connect().batch_execute(SETUP).unwrap();
        cluster
    });
    (cluster, turn)
}

/// Two ordinary roles with what the README's Security section grants a
/// definer, and a three-step handler whose middle step fails until `broken`
/// says otherwise or its args say `{"ok": true}`.
const SETUP: &str = "
    CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN;
    GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA jobs TO alice, bob;
    GRANT SELECT ON ALL TABLES IN SCHEMA jobs TO alice, bob;
    CREATE TABLE effects (function_id text, step text, n int, args jsonb, at timestamptz DEFAULT clock_timestamp());
    CREATE TABLE broken (function_id text PRIMARY KEY);
    GRANT ALL ON effects, broken TO alice, bob;
    CREATE FUNCTION effect(args jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
    BEGIN
        IF args->>'step' = 'b' AND coalesce(args->>'ok', '') <> 'true'
           AND EXISTS (SELECT FROM broken WHERE function_id = args->>'f') THEN
            RAISE EXCEPTION 'step b is broken for %', args->>'f';
        END IF;
        INSERT INTO effects (function_id, step, n, args) VALUES (args->>'f', args->>'step', (args->>'n')::int, args);
        RETURN jsonb_build_object('step', args->>'step', 'at', clock_timestamp());
    END $$;
    CREATE FUNCTION three_steps(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
    DECLARE
        base jsonb := jsonb_build_object('f', ctx->>'function_id', 'n', ctx->'event'->'data'->'n');
    BEGIN
        PERFORM jobs.step('a', 'SELECT effect($1)', base || '{\"step\": \"a\"}');
        PERFORM jobs.step('b', 'SELECT effect($1)', base || '{\"step\": \"b\"}');
        RETURN jobs.step('c', 'SELECT effect($1)', base || '{\"step\": \"c\"}');
    END $$;
    CREATE FUNCTION sleeps_long(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM jobs.sleep('nap', '1 hour');
    END $$;
    CREATE TABLE gate (open bool NOT NULL);
    INSERT INTO gate VALUES (false);
    GRANT ALL ON gate TO alice, bob;
    CREATE FUNCTION held_at_gate(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM jobs.step('hold', $s$
            DO $d$ BEGIN
                WHILE NOT (SELECT open FROM gate) LOOP PERFORM pg_sleep(0.05); END LOOP;
            END $d$ $s$);
    END $$;
    GRANT EXECUTE ON FUNCTION effect(jsonb), three_steps(jsonb), sleeps_long(jsonb), held_at_gate(jsonb) TO alice, bob;";

fn as_role(cluster: &Cluster, role: &str) -> Client {
    cluster.connect_as(role, "postgres")
}

fn effects(c: &mut Client, function_id: &str, step: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM effects WHERE function_id = $1 AND step = $2",
        &[&function_id, &step],
    )
    .unwrap()
    .get(0)
}

fn send(c: &mut Client, name: &str, data: &str) {
    c.execute("SELECT jobs.send($1, $2::text::jsonb)", &[&name, &data])
        .unwrap();
}

fn run_status(c: &mut Client, run: uuid::Uuid) -> String {
    c.query_one("SELECT status FROM jobs.runs WHERE id = $1", &[&run])
        .unwrap()
        .get(0)
}

fn wait_for_status(c: &mut Client, run: uuid::Uuid, status: &str) {
    wait_until(
        &format!("run {run} is {status}"),
        Duration::from_secs(60),
        || run_status(c, run) == status,
    );
}

fn only_run(c: &mut Client, function_id: &str) -> uuid::Uuid {
    c.query_one(
        "SELECT id FROM jobs.runs WHERE function_id = $1",
        &[&function_id],
    )
    .unwrap()
    .get(0)
}

#[test]
fn rerun_from_a_failed_middle_step_runs_that_step_and_those_after_it() {
    let (cluster, _turn) = cluster();
    let mut c = as_role(cluster, "alice");
    c.batch_execute(
        "INSERT INTO broken VALUES ('middle');
         SELECT jobs.create_function('middle', 'three_steps(jsonb)', '{\"event\": \"ops/middle\", \"retries\": 0}');",
    )
    .unwrap();
    send(&mut c, "ops/middle", "{\"n\": 1}");
    let failed = only_run(&mut c, "middle");
    wait_for_status(&mut c, failed, "failed");
    assert_eq!(effects(&mut c, "middle", "a"), 1);

    // With new input for the failed step: a is not run again, b runs with the input.
    let rerun: uuid::Uuid = c
        .query_one(
            "SELECT jobs.rerun($1, 'b', '{\"f\": \"middle\", \"step\": \"b\", \"ok\": true, \"n\": 1}')",
            &[&failed],
        )
        .unwrap()
        .get(0);
    wait_for_status(&mut c, rerun, "completed");
    assert_eq!(
        (
            effects(&mut c, "middle", "a"),
            effects(&mut c, "middle", "b"),
            effects(&mut c, "middle", "c")
        ),
        (1, 1, 1)
    );
    let row = c
        .query_one(
            "SELECT r.rerun_of, r.rerun_step, r.event_id = o.event_id,
                    (SELECT output FROM jobs.steps WHERE run_id = r.id AND id = 'a')
                        = (SELECT output FROM jobs.steps WHERE run_id = o.id AND id = 'a')
             FROM jobs.runs r, jobs.runs o WHERE r.id = $1 AND o.id = $2",
            &[&rerun, &failed],
        )
        .unwrap();
    assert_eq!(row.get::<_, Option<uuid::Uuid>>(0), Some(failed));
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("b"));
    assert!(row.get::<_, bool>(2), "same event");
    assert!(
        row.get::<_, bool>(3),
        "a's stored output is what the rerun saw"
    );

    // Once the cause is fixed, a plain rerun starts from the beginning.
    c.batch_execute("DELETE FROM broken WHERE function_id = 'middle'")
        .unwrap();
    let again: uuid::Uuid = c
        .query_one("SELECT jobs.rerun($1)", &[&failed])
        .unwrap()
        .get(0);
    wait_for_status(&mut c, again, "completed");
    assert_eq!(effects(&mut c, "middle", "a"), 2);
    assert_eq!(effects(&mut c, "middle", "c"), 2);
}

#[test]
fn replay_reruns_a_thousand_failed_runs_a_few_at_a_time() {
    let (cluster, _turn) = cluster();
    let mut c = as_role(cluster, "alice");
    c.batch_execute(
        "INSERT INTO broken VALUES ('outage');
         SELECT jobs.create_function('outage', 'three_steps(jsonb)', '{\"event\": \"ops/outage\", \"retries\": 0}');
         SELECT jobs.send('ops/outage', jsonb_build_object('n', n)) FROM generate_series(1, 1000) n;",
    )
    .unwrap();
    wait_until(
        "the outage fails 1000 runs",
        Duration::from_secs(180),
        || {
            count(
                &mut c,
                "SELECT count(*) FROM jobs.runs WHERE function_id = 'outage' AND status = 'failed'",
            ) == 1000
        },
    );
    c.batch_execute("DELETE FROM broken WHERE function_id = 'outage'")
        .unwrap();
    let replay: uuid::Uuid = c
        .query_one(
            "SELECT jobs.replay('outage', now() - interval '1 hour', now())",
            &[],
        )
        .unwrap()
        .get(0);
    let mut most_in_flight = 0;
    wait_until("the replay finishes", Duration::from_secs(300), || {
        let in_flight = c
            .query_one(
                "SELECT count(*) FROM jobs.runs r JOIN jobs.queue q ON q.run_id = r.id AND q.step_id = ''
                 WHERE r.replay_id = $1",
                &[&replay],
            )
            .unwrap()
            .get::<_, i64>(0);
        most_in_flight = most_in_flight.max(in_flight);
        c.query_one("SELECT status FROM jobs.replays WHERE id = $1", &[&replay])
            .unwrap()
            .get::<_, String>(0)
            == "finished"
    });
    let row = c
        .query_one(
            "SELECT total, started, finished FROM jobs.replays WHERE id = $1",
            &[&replay],
        )
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2)
        ),
        (1000, 1000, 1000)
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.runs WHERE function_id = 'outage' AND status = 'completed' AND rerun_of IS NOT NULL"
        ),
        1000
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(DISTINCT n) FROM effects WHERE function_id = 'outage' AND step = 'c'"
        ),
        1000
    );
    // 8 per executor at most, so that other work is never queued behind the whole replay.
    assert!(
        most_in_flight <= 16,
        "{most_in_flight} replay runs in flight"
    );
}

#[test]
fn replay_starts_the_events_a_rate_limit_skipped_and_can_be_cancelled() {
    let (cluster, _turn) = cluster();
    let mut c = as_role(cluster, "alice");
    c.batch_execute(
        "SELECT jobs.create_function('limited', 'three_steps(jsonb)',
             '{\"event\": \"ops/limited\", \"rate_limit\": {\"limit\": 1, \"period\": \"1h\"}}');
         SELECT jobs.send('ops/limited', jsonb_build_object('n', n)) FROM generate_series(1, 3) n;",
    )
    .unwrap();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.skips WHERE function_id = 'limited'"
        ),
        2
    );
    let replay: uuid::Uuid = c
        .query_one(
            "SELECT jobs.replay('limited', now() - interval '1 hour', now(), '{skipped}')",
            &[],
        )
        .unwrap()
        .get(0);
    wait_until("the skipped events run", Duration::from_secs(60), || {
        count(
            &mut c,
            "SELECT count(*) FROM jobs.runs WHERE function_id = 'limited' AND status = 'completed'",
        ) == 3
    });
    assert_eq!(
        c.query_one("SELECT total FROM jobs.replays WHERE id = $1", &[&replay])
            .unwrap()
            .get::<_, i64>(0),
        2
    );

    // A replay of runs that hold the executors stops starting them once cancelled.
    c.batch_execute(
        "SELECT jobs.create_function('held', 'held_at_gate(jsonb)', '{\"event\": \"ops/held\", \"retries\": 0}');
         UPDATE gate SET open = true;
         SELECT jobs.send('ops/held', '{}') FROM generate_series(1, 100);",
    )
    .unwrap();
    wait_until("the held runs complete", Duration::from_secs(60), || {
        count(
            &mut c,
            "SELECT count(*) FROM jobs.runs WHERE function_id = 'held' AND status = 'completed'",
        ) == 100
    });
    c.batch_execute("UPDATE gate SET open = false").unwrap();
    let replay: uuid::Uuid = c
        .query_one(
            "SELECT jobs.replay('held', now() - interval '1 hour', now(), '{completed}')",
            &[],
        )
        .unwrap()
        .get(0);
    wait_until("the replay starts some", Duration::from_secs(60), || {
        c.query_one("SELECT started FROM jobs.replays WHERE id = $1", &[&replay])
            .unwrap()
            .get::<_, i64>(0)
            > 0
    });
    c.execute("SELECT jobs.cancel_replay($1)", &[&replay])
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let row = c
        .query_one(
            "SELECT status, started, ended_at IS NULL FROM jobs.replays WHERE id = $1",
            &[&replay],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "cancelled");
    assert!(row.get::<_, bool>(2), "its runs are still under way");
    let started: i64 = row.get(1);
    assert!(started <= 16, "{started} started");
    assert_eq!(
        count(
            &mut c,
            &format!("SELECT count(*) FROM jobs.runs WHERE replay_id = '{replay}'")
        ),
        started
    );
    let cancelled: i64 = c
        .query_one("SELECT jobs.cancel_runs('held')", &[])
        .unwrap()
        .get(0);
    assert_eq!(cancelled, started);
    wait_until("the cancelled replay ends", Duration::from_secs(60), || {
        c.query_one(
            "SELECT ended_at IS NOT NULL FROM jobs.replays WHERE id = $1",
            &[&replay],
        )
        .unwrap()
        .get::<_, bool>(0)
    });
    assert_eq!(
        count(
            &mut c,
            &format!("SELECT count(*) FROM jobs.runs WHERE replay_id = '{replay}' AND status = 'cancelled'")
        ),
        started
    );
}

#[test]
fn cancel_runs_cancels_the_unfinished_runs_an_expression_matches() {
    let (cluster, _turn) = cluster();
    let mut c = as_role(cluster, "alice");
    c.batch_execute(
        "SELECT jobs.create_function('flood', 'sleeps_long(jsonb)', '{\"event\": \"ops/flood\"}');
         SELECT jobs.send('ops/flood', jsonb_build_object('n', n, 'tenant', CASE WHEN n % 2 = 0 THEN 'noisy' ELSE 'calm' END))
         FROM generate_series(1, 20) n;",
    )
    .unwrap();
    wait_until("the flood sleeps", Duration::from_secs(60), || {
        count(
            &mut c,
            "SELECT count(*) FROM jobs.runs WHERE function_id = 'flood' AND status = 'sleeping'",
        ) == 20
    });
    let cancelled: i64 = c
        .query_one(
            "SELECT jobs.cancel_runs('flood', now() - interval '1 hour', NULL, 'event.data.tenant == \"noisy\"')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(cancelled, 10);
    wait_until("the noisy runs end", Duration::from_secs(60), || {
        count(
            &mut c,
            "SELECT count(*) FROM jobs.runs r JOIN jobs.events e ON e.id = r.event_id
             WHERE r.function_id = 'flood' AND r.status = 'cancelled' AND e.data->>'tenant' = 'noisy'",
        ) == 10
    });
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.runs WHERE function_id = 'flood' AND status = 'sleeping'"
        ),
        10
    );
    // A window that holds none cancels none.
    let none: i64 = c
        .query_one(
            "SELECT jobs.cancel_runs('flood', NULL, now() - interval '1 hour')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(none, 0);
    let stats = c
        .query_one(
            "SELECT sleeping, queued, completed_last_hour FROM jobs.function_stats WHERE function_id = 'flood'",
            &[],
        )
        .unwrap();
    assert_eq!(
        (
            stats.get::<_, i64>(0),
            stats.get::<_, i64>(1),
            stats.get::<_, i64>(2)
        ),
        (10, 0, 0)
    );
    c.execute("SELECT jobs.cancel_runs('flood')", &[]).unwrap();
}

#[test]
fn another_role_and_bad_input_change_nothing() {
    let (cluster, _turn) = cluster();
    let mut alice = as_role(cluster, "alice");
    let mut bob = as_role(cluster, "bob");
    alice
        .batch_execute(
            "INSERT INTO broken VALUES ('guarded');
             SELECT jobs.create_function('guarded', 'three_steps(jsonb)', '{\"event\": \"ops/guarded\", \"retries\": 0}');",
        )
        .unwrap();
    send(&mut alice, "ops/guarded", "{\"n\": 7}");
    let run = only_run(&mut alice, "guarded");
    wait_for_status(&mut alice, run, "failed");
    let state = |c: &mut Client| {
        count(
            c,
            "SELECT (SELECT count(*) FROM jobs.runs) * 1000 + (SELECT count(*) FROM jobs.replay_requests)",
        )
    };
    let mut admin = cluster.connect();
    let before = state(&mut admin);
    let run_text = run.to_string();
    for (who, sql, code) in [
        ("bob", format!("SELECT jobs.rerun('{run_text}')"), "42501"),
        ("bob", "SELECT jobs.replay('guarded', now() - interval '1 hour', now())".into(), "42501"),
        ("bob", "SELECT jobs.cancel_runs('guarded')".into(), "42501"),
        ("alice", "SELECT jobs.rerun(NULL)".into(), "22004"),
        ("alice", format!("SELECT jobs.rerun('{}')", uuid::Uuid::nil()), "42704"),
        ("alice", format!("SELECT jobs.rerun('{run_text}', 'nope')"), "22023"),
        ("alice", format!("SELECT jobs.rerun('{run_text}', NULL, '{{}}')"), "22023"),
        ("alice", "SELECT jobs.replay('nobody', now() - interval '1 hour', now())".into(), "42704"),
        ("alice", "SELECT jobs.replay('guarded', now(), now() - interval '1 hour')".into(), "22023"),
        ("alice", "SELECT jobs.replay('guarded', now() - interval '1 hour', now(), '{finished}')".into(), "22023"),
        ("alice", "SELECT jobs.cancel_runs('guarded', NULL, NULL, 'event.data.n >')".into(), "22023"),
        ("alice", format!("SELECT jobs.cancel_replay('{}')", uuid::Uuid::nil()), "42704"),
        ("alice", "SELECT jobs.create_function('bad-keep', 'three_steps(jsonb)', '{\"keep\": \"some\"}')".into(), "22023"),
        ("alice", "SELECT jobs.create_function('bad-keep', 'three_steps(jsonb)', '{\"retention\": \"0s\"}')".into(), "22023"),
    ] {
        let client = if who == "bob" { &mut bob } else { &mut alice };
        let result = client.batch_execute(&sql);
        let message = error_message(client.batch_execute(&sql));
        assert_eq!(sqlstate(result), code, "{who}: {sql}: {message}");
    }
    assert_eq!(state(&mut admin), before);
    // Bob sees none of alice's replays or stats.
    alice
        .query_one(
            "SELECT jobs.replay('guarded', now() - interval '1 hour', now())",
            &[],
        )
        .unwrap();
    assert_eq!(count(&mut bob, "SELECT count(*) FROM jobs.replays"), 0);
    assert_eq!(
        count(
            &mut bob,
            "SELECT count(*) FROM jobs.function_stats WHERE function_id = 'guarded'"
        ),
        0
    );
    assert!(count(&mut alice, "SELECT count(*) FROM jobs.replays") > 0);
}

#[test]
fn retention_removes_exactly_the_expired_finished_runs() {
    let (cluster, _turn) = cluster();
    let mut c = as_role(cluster, "alice");
    c.batch_execute(
        "SELECT jobs.create_function('brief', 'three_steps(jsonb)', '{\"event\": \"ops/brief\", \"retention\": \"3s\", \"retries\": 0}');
         SELECT jobs.create_function('brief-nap', 'sleeps_long(jsonb)', '{\"event\": \"ops/brief\", \"retention\": \"3s\"}');
         SELECT jobs.create_function('kept', 'three_steps(jsonb)', '{\"event\": \"ops/brief\"}');
         INSERT INTO broken VALUES ('failures-only');
         SELECT jobs.create_function('failures-only', 'three_steps(jsonb)',
             '{\"event\": \"ops/failures\", \"keep\": \"failures\", \"retries\": 0}');",
    )
    .unwrap();
    send(&mut c, "ops/brief", "{\"n\": 1}");
    let finished = |c: &mut Client, f: &str| {
        count(
            c,
            &format!(
                "SELECT count(*) FROM jobs.runs WHERE function_id = '{f}' AND status = 'completed'"
            ),
        )
    };
    wait_until("the brief runs finish", Duration::from_secs(60), || {
        finished(&mut c, "brief") == 1 && finished(&mut c, "kept") == 1
    });
    let brief = only_run(&mut c, "brief");
    let nap = only_run(&mut c, "brief-nap");
    wait_until("the expired run goes", Duration::from_secs(60), || {
        count(
            &mut c,
            "SELECT count(*) FROM jobs.runs WHERE function_id = 'brief'",
        ) == 0
    });
    let mut admin = cluster.connect();
    for table in ["steps", "attempt_errors"] {
        assert_eq!(
            count(
                &mut admin,
                &format!("SELECT count(*) FROM jobs.{table} WHERE run_id = '{brief}'")
            ),
            0,
            "{table}"
        );
    }
    assert_eq!(run_status(&mut c, nap), "sleeping", "unfinished runs stay");
    assert_eq!(finished(&mut c, "kept"), 1, "30 days for the others");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.events e JOIN jobs.runs r ON r.event_id = e.id WHERE r.id IN (SELECT id FROM jobs.runs WHERE function_id = 'kept')"
        ),
        1,
        "events that runs still need stay"
    );

    // keep: failures: completed runs go at once, failed ones stay.
    send(&mut c, "ops/failures", "{\"n\": 1}");
    let failed = only_run(&mut c, "failures-only");
    wait_for_status(&mut c, failed, "failed");
    c.batch_execute("DELETE FROM broken WHERE function_id = 'failures-only'")
        .unwrap();
    send(&mut c, "ops/failures", "{\"n\": 2}");
    wait_until("the second run ends", Duration::from_secs(60), || {
        count(
            &mut c,
            "SELECT count(*) FROM effects WHERE function_id = 'failures-only' AND step = 'c'",
        ) == 1
            && count(
                &mut c,
                "SELECT count(*) FROM jobs.queue WHERE function_id = 'failures-only'",
            ) == 0
    });
    assert_eq!(only_run(&mut c, "failures-only"), failed);

    // The setting: events that no run needs go once older than jobs.retention.
    for statement in [
        "ALTER SYSTEM SET jobs.retention = '2s'",
        "SELECT pg_reload_conf()",
        "SELECT jobs.send('ops/nobody-listens', '{}')",
    ] {
        admin.batch_execute(statement).unwrap();
    }
    wait_until("the unneeded event goes", Duration::from_secs(60), || {
        count(
            &mut admin,
            "SELECT count(*) FROM jobs.events WHERE name = 'ops/nobody-listens'",
        ) == 0
    });
    assert_eq!(run_status(&mut c, nap), "sleeping");
    assert_eq!(
        count(
            &mut admin,
            &format!("SELECT count(*) FROM jobs.events e JOIN jobs.runs r ON r.event_id = e.id WHERE r.id = '{nap}'")
        ),
        1,
        "the sleeping run's event stays"
    );
    admin
        .batch_execute("ALTER SYSTEM RESET jobs.retention")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    c.execute("SELECT jobs.cancel_runs('brief-nap')", &[])
        .unwrap();
}
