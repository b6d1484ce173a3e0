//! Crashes, restarts and reloads: nothing committed is lost, nothing finishes twice.
//! These tests restart the server, so they take turns.

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use pg_jobs_e2e::*;

fn cluster() -> (&'static Cluster, MutexGuard<'static, ()>) {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let cluster = CLUSTER.get_or_init(|| {
        let cluster = Cluster::with_pg_jobs("lifecycle", 2, &[]);
        cluster
            .connect()
            .batch_execute(
                "CREATE TABLE gate (name text PRIMARY KEY, open bool NOT NULL DEFAULT false);
                 CREATE TABLE effects (function_id text, attempt int, at timestamptz DEFAULT clock_timestamp());
                 -- Writes its effect, then waits at its gate: the test interrupts it there.
                 CREATE FUNCTION gated(ctx jsonb) RETURNS text LANGUAGE plpgsql AS $$
                 BEGIN
                     INSERT INTO effects VALUES (ctx->>'function_id', (ctx->>'attempt')::int);
                     WHILE NOT (SELECT open FROM gate WHERE name = ctx->>'function_id') LOOP
                         PERFORM pg_sleep(0.02);
                     END LOOP;
                     RETURN 'done on attempt ' || (ctx->>'attempt');
                 END $$;
                 CREATE FUNCTION wait_at_gate(gate_name text) RETURNS void LANGUAGE plpgsql AS $$
                 BEGIN
                     WHILE NOT (SELECT open FROM gate WHERE name = gate_name) LOOP
                         PERFORM pg_sleep(0.02);
                     END LOOP;
                 END $$;
                 -- Two steps; the gate holds the run inside the second step, or between the two.
                 CREATE FUNCTION gated_steps(ctx jsonb) RETURNS text LANGUAGE plpgsql AS $$
                 DECLARE
                     f text := ctx->>'function_id';
                 BEGIN
                     PERFORM jobs.step('first', 'INSERT INTO effects VALUES ($1->>''f'' || ''/first'', 0)', jsonb_build_object('f', f));
                     IF f LIKE '%between%' THEN
                         PERFORM wait_at_gate(f);
                     END IF;
                     PERFORM jobs.step('second',
                         'INSERT INTO effects VALUES ($1->>''f'' || ''/second'', 0); SELECT wait_at_gate(CASE WHEN $1->>''f'' LIKE ''%between%'' THEN ''open'' ELSE $1->>''f'' END)',
                         jsonb_build_object('f', f));
                     RETURN 'done';
                 END $$;
                 INSERT INTO gate VALUES ('open', true);",
            )
            .unwrap();
        cluster
    });
    (cluster, turn)
}

/// Defines `function_id` with `handler`, sends its event and waits until
/// `at_gate` (a query; `$1` is the function id) finds the executor holding the
/// run at its gate; returns that executor's pid.
fn start_at_gate(cluster: &Cluster, function_id: &str, handler: &str, at_gate: &str) -> i32 {
    let mut c = cluster.connect();
    c.execute("INSERT INTO gate VALUES ($1, false)", &[&function_id])
        .unwrap();
    c.execute(
        "SELECT jobs.create_function($1, $2::text::regprocedure, jsonb_build_object('event', 'test/' || $1, 'retries', 3))",
        &[&function_id, &handler],
    )
    .unwrap();
    c.execute("SELECT jobs.send('test/' || $1::text)", &[&function_id])
        .unwrap();
    let mut pid = 0;
    wait_until(
        "an executor holds the run at its gate",
        Duration::from_secs(30),
        || {
            pid = c
                .query(at_gate, &[&function_id])
                .unwrap()
                .first()
                .map_or(0, |row| row.get(0));
            pid != 0
        },
    );
    pid
}

fn start_gated_run(cluster: &Cluster, function_id: &str) -> i32 {
    start_at_gate(
        cluster,
        function_id,
        "gated(jsonb)",
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_jobs executor' AND query LIKE '%of ' || $1",
    )
}

/// Starts a run of `gated_steps` and waits until an executor is at `activity`
/// (a LIKE pattern, after the function id) with the first step committed (the
/// first invocation, which stops at that step, would look the same).
fn start_gated_steps(cluster: &Cluster, function_id: &str, activity: &str) -> i32 {
    let at_gate = format!(
        "SELECT a.pid FROM pg_stat_activity a
         WHERE a.backend_type = 'pg_jobs executor' AND a.query LIKE '%of ' || $1 || '{activity}'
           AND EXISTS (SELECT FROM jobs.steps s JOIN jobs.runs r ON r.id = s.run_id
                       WHERE r.function_id = $1 AND s.id = 'first' AND s.status = 'completed')"
    );
    start_at_gate(cluster, function_id, "gated_steps(jsonb)", &at_gate)
}

/// Opens the gate and checks the run completed on its second attempt with exactly one effect.
fn finish_and_check(cluster: &Cluster, function_id: &str) {
    let mut c = cluster.connect();
    c.execute(
        "UPDATE gate SET open = true WHERE name = $1",
        &[&function_id],
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, function_id, 1), ["completed"]);
    let row = c
        .query_one(
            "SELECT attempt, output #>> '{}' FROM jobs.runs WHERE function_id = $1",
            &[&function_id],
        )
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1, "the interrupted attempt counts");
    assert_eq!(row.get::<_, String>(1), "done on attempt 1");
    let effects: Vec<i32> = c
        .query(
            "SELECT attempt FROM effects WHERE function_id = $1",
            &[&function_id],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        effects,
        [1],
        "the interrupted attempt's write was rolled back; the run's effect exists once"
    );
}

#[test]
fn sigkill_of_an_executor_mid_run_loses_nothing_and_runs_once() {
    let (cluster, _turn) = cluster();
    let pid = start_gated_run(cluster, "sigkill-mid-run");
    let before = cluster.executor_pids(&mut cluster.connect());
    kill_9(pid);
    // The postmaster restarts every process; the launcher releases the claim.
    cluster.wait_for_new_executors(2, &before);
    finish_and_check(cluster, "sigkill-mid-run");
    assert!(
        cluster
            .log()
            .contains("resuming 1 run(s) that were in flight"),
        "{}",
        cluster.log()
    );
}

#[test]
fn immediate_shutdown_mid_run_then_restart_resumes_the_run() {
    let (cluster, _turn) = cluster();
    start_gated_run(cluster, "immediate-shutdown");
    cluster.stop_immediately();
    cluster.start_server();
    cluster.wait_for_executors(2);
    let mut c = cluster.connect();
    let status: String = c
        .query_one(
            "SELECT status FROM jobs.runs WHERE function_id = 'immediate-shutdown'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(status == "running" || status == "queued", "{status}");
    finish_and_check(cluster, "immediate-shutdown");
}

#[test]
fn a_terminated_executor_is_replaced_and_its_run_retried() {
    let (cluster, _turn) = cluster();
    let pid = start_gated_run(cluster, "terminated");
    let mut c = cluster.connect();
    c.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    wait_until(
        "a new executor replaces the terminated one",
        Duration::from_secs(30),
        || {
            let pids = cluster.executor_pids(&mut c);
            pids.len() == 2 && !pids.contains(&pid)
        },
    );
    finish_and_check(cluster, "terminated");
    assert!(cluster
        .log()
        .contains("an executor stopped; 1 run(s) it held will be retried"));
}

#[test]
fn settings_reload_on_sighup() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    c.execute("ALTER SYSTEM SET jobs.workers = 3", &[]).unwrap();
    c.execute("SELECT pg_reload_conf()", &[]).unwrap();
    cluster.wait_for_executors(3);
    c.execute("ALTER SYSTEM RESET jobs.workers", &[]).unwrap();
    c.execute("SELECT pg_reload_conf()", &[]).unwrap();
    cluster.wait_for_executors(2);
}

fn check_steps_ran_once(cluster: &Cluster, function_id: &str) {
    let mut c = cluster.connect();
    c.execute(
        "UPDATE gate SET open = true WHERE name = $1",
        &[&function_id],
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, function_id, 1), ["completed"]);
    for step in ["first", "second"] {
        let effects: i64 = c
            .query_one(
                "SELECT count(*) FROM effects WHERE function_id = $1 || '/' || $2",
                &[&function_id, &step],
            )
            .unwrap()
            .get(0);
        assert_eq!(
            effects, 1,
            "step {step} of {function_id} took effect {effects} times"
        );
    }
    let attempts: Vec<i32> = c
        .query(
            "SELECT s.attempts FROM jobs.steps s JOIN jobs.runs r ON r.id = s.run_id WHERE r.function_id = $1 ORDER BY s.started_at",
            &[&function_id],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(attempts, [1, 1], "a committed step never runs again");
}

#[test]
fn sigkill_while_a_step_runs_reruns_only_that_step() {
    let (cluster, _turn) = cluster();
    let pid = start_gated_steps(cluster, "kill-in-step", ": step second");
    let before = cluster.executor_pids(&mut cluster.connect());
    kill_9(pid);
    cluster.wait_for_new_executors(2, &before);
    check_steps_ran_once(cluster, "kill-in-step");
}

#[test]
fn sigkill_between_two_steps_does_not_run_the_first_again() {
    let (cluster, _turn) = cluster();
    let pid = start_gated_steps(cluster, "kill-between-steps", "");
    let mut c = cluster.connect();
    let before = cluster.executor_pids(&mut c);
    kill_9(pid);
    cluster.wait_for_new_executors(2, &before);
    check_steps_ran_once(cluster, "kill-between-steps");
}

/// A handler that kills its own process at once, as a bug in C code or the
/// OOM killer would: each attempt takes the server down before the attempt's
/// run commits anything, yet each one counts and is in the run's history, and
/// the run stops after its attempts instead of crashing the server forever.
#[test]
fn code_that_crashes_the_server_at_once_stops_after_its_attempts() {
    let (cluster, _turn) = cluster();
    let crashes_before = cluster.log().matches("terminated by signal 9").count();
    cluster
        .connect()
        .batch_execute(
            "CREATE FUNCTION crash_at_once(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
             BEGIN
                 COPY (SELECT 1) TO PROGRAM 'kill -9 $PPID';
             END $$;
             SELECT jobs.create_function('crash-at-once', 'crash_at_once(jsonb)',
                                         '{\"event\": \"test/crash\", \"retries\": 2}');
             SELECT jobs.send('test/crash');",
        )
        .unwrap();
    let mut c = cluster.connect();
    wait_until(
        "the crashing run to fail",
        Duration::from_secs(90),
        || {
            match c.query_one(
            "SELECT count(*) FROM jobs.runs WHERE function_id = 'crash-at-once' AND status = 'failed'",
            &[],
        ) {
            Ok(row) => row.get::<_, i64>(0) == 1,
            Err(_) => {
                c = cluster.connect();
                false
            }
        }
        },
    );
    let sqlstate: String = c
        .query_one(
            "SELECT error->>'sqlstate' FROM jobs.runs WHERE function_id = 'crash-at-once'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(sqlstate, "57P01");
    let interrupted: Vec<(i32, String)> = c
        .query(
            "SELECT a.attempt, a.sqlstate FROM jobs.attempt_errors a JOIN jobs.runs r ON r.id = a.run_id
             WHERE r.function_id = 'crash-at-once' ORDER BY a.attempt",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let expected: Vec<(i32, String)> = (0..3).map(|attempt| (attempt, "57P01".into())).collect();
    assert_eq!(interrupted, expected, "one recorded failure per crash");
    let crashes = cluster.log().matches("terminated by signal 9").count() - crashes_before;
    assert_eq!(crashes, 3, "one crash per attempt\n{}", cluster.log());
}

/// A claim's note is cleared once the claim is on disk: a crash after the run
/// parked replays nothing, and the run stays as it was.
#[test]
fn a_crash_after_a_run_parked_replays_no_claim() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    c.batch_execute(
        "CREATE FUNCTION nap(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
         BEGIN PERFORM jobs.sleep('nap', '1 day'); END $$;
         SELECT jobs.create_function('nap', 'nap(jsonb)', '{\"event\": \"test/nap\"}');
         SELECT jobs.send('test/nap');",
    )
    .unwrap();
    wait_until("the run to sleep", Duration::from_secs(30), || {
        statuses(&mut c, "nap") == ["sleeping"]
    });
    let replays_before = cluster.log().matches("lost with the WAL").count();
    let before = cluster.executor_pids(&mut c);
    kill_9(before[0]);
    cluster.wait_for_new_executors(2, &before);
    let mut c = cluster.connect();
    assert_eq!(statuses(&mut c, "nap"), ["sleeping"]);
    let attempt: i32 = c
        .query_one(
            "SELECT attempt FROM jobs.runs WHERE function_id = 'nap'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(attempt, 0);
    assert_eq!(
        cluster.log().matches("lost with the WAL").count(),
        replays_before
    );
}
