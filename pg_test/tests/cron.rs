//! Cron schedules: fired by the launcher, once per instant, through crashes.
//!
//! The day rule (`*/2` in a day field) and daylight saving time cannot be
//! shown on a real clock (a seconds-field schedule stands in for neither):
//! the pure tests in src/cron.rs check them against an oracle.

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use pg_jobs_e2e::*;

fn cluster() -> (&'static Cluster, MutexGuard<'static, ()>) {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let cluster = CLUSTER.get_or_init(|| {
        let cluster = Cluster::with_pg_jobs("cron", 2, &[]);
        cluster
            .connect()
            .batch_execute(
                "CREATE TABLE ticks (function_id text, cron text, scheduled_at timestamptz, ran_at timestamptz DEFAULT clock_timestamp());
                 CREATE FUNCTION tick(ctx jsonb) RETURNS void LANGUAGE sql AS $$
                     INSERT INTO ticks VALUES (ctx->>'function_id', ctx->'event'->'data'->>'cron',
                                               (ctx->'event'->'data'->>'scheduled_at')::timestamptz)
                 $$;",
            )
            .unwrap();
        cluster
    });
    (cluster, turn)
}

/// The instants `function_id` ran for, in order, with how many runs each had.
fn ticks(c: &mut Client, function_id: &str) -> Vec<(f64, i64)> {
    c.query(
        "SELECT extract(epoch FROM scheduled_at)::float8, count(*) FROM ticks WHERE function_id = $1
         GROUP BY scheduled_at ORDER BY scheduled_at",
        &[&function_id],
    )
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

fn wait_for_ticks(c: &mut Client, function_id: &str, n: usize) -> Vec<(f64, i64)> {
    let mut last = Vec::new();
    wait_until(
        &format!("{n} ticks of {function_id}"),
        Duration::from_secs(30),
        || {
            last = ticks(c, function_id);
            last.len() >= n
        },
    );
    last
}

/// Consecutive instants `step` seconds apart, one run each.
fn assert_every(ticks: &[(f64, i64)], step: f64) {
    for pair in ticks.windows(2) {
        assert_eq!(pair[1].0 - pair[0].0, step, "instants {ticks:?}");
    }
    assert!(
        ticks.iter().all(|(_, runs)| *runs == 1),
        "one run per instant: {ticks:?}"
    );
}

#[test]
fn a_seconds_field_schedule_fires_each_instant_once() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    c.batch_execute(
        "SELECT jobs.create_function('every-2s', 'tick(jsonb)', '{\"cron\": \"*/2 * * * * *\"}')",
    )
    .unwrap();
    let ticks = wait_for_ticks(&mut c, "every-2s", 4);
    assert_every(&ticks, 2.0);
    assert!(ticks.iter().all(|(at, _)| *at as i64 % 2 == 0), "{ticks:?}");
    let late: f64 = c
        .query_one("SELECT max(extract(epoch FROM ran_at - scheduled_at))::float8 FROM ticks WHERE function_id = 'every-2s'", &[])
        .unwrap()
        .get(0);
    assert!(late < 1.0, "runs started {late} s after their instant");
    let row = c
        .query_one(
            "SELECT expression, timezone, next_fire_at > last_fired_at, last_run_id IS NOT NULL FROM jobs.schedules WHERE function_id = 'every-2s'",
            &[],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("*/2 * * * * *".into(), "UTC".into())
    );
    assert!(row.get::<_, bool>(2) && row.get::<_, bool>(3));
    c.batch_execute("SELECT jobs.delete_function('every-2s')")
        .unwrap();
}

#[test]
fn overlapping_expressions_start_one_run_per_instant_and_tell_which_fired() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    c.batch_execute("SELECT jobs.create_function('overlap', 'tick(jsonb)', '{\"cron\": [\"*/2 * * * * *\", \"*/4 * * * * *\"]}')").unwrap();
    let ticks = wait_for_ticks(&mut c, "overlap", 4);
    assert_every(&ticks, 2.0);
    c.batch_execute("SELECT jobs.delete_function('overlap')")
        .unwrap();
    let crons: i64 = c
        .query_one(
            "SELECT count(DISTINCT cron) FROM ticks WHERE function_id = 'overlap'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(crons >= 1);
}

#[test]
fn a_paused_function_does_not_fire_and_resumes_without_a_burst() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    c.batch_execute("SELECT jobs.create_function('pausable-cron', 'tick(jsonb)', '{\"cron\": \"* * * * * *\"}')").unwrap();
    wait_for_ticks(&mut c, "pausable-cron", 2);
    c.batch_execute("SELECT jobs.pause_function('pausable-cron')")
        .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let paused_at = ticks(&mut c, "pausable-cron").len();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        ticks(&mut c, "pausable-cron").len(),
        paused_at,
        "no run while paused"
    );
    c.batch_execute("SELECT jobs.resume_function('pausable-cron')")
        .unwrap();
    let after = wait_for_ticks(&mut c, "pausable-cron", paused_at + 2);
    let resumed = &after[paused_at..];
    assert_every(resumed, 1.0);
    assert!(
        resumed[0].0 - after[paused_at - 1].0 >= 3.0,
        "the paused instants are not caught up: {after:?}"
    );
    c.batch_execute("SELECT jobs.delete_function('pausable-cron')")
        .unwrap();
}

#[test]
fn killing_the_launcher_around_a_fire_time_neither_loses_nor_doubles_a_run() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    c.batch_execute(
        "SELECT jobs.create_function('crash-cron', 'tick(jsonb)', '{\"cron\": \"*/3 * * * * *\"}')",
    )
    .unwrap();
    wait_for_ticks(&mut c, "crash-cron", 1);
    // Kill it 100 ms before the next instant: the restart takes longer, so the
    // instant is missed while down and must be caught up once.
    let next: f64 = c
        .query_one("SELECT extract(epoch FROM next_fire_at - clock_timestamp())::float8 FROM jobs.schedules WHERE function_id = 'crash-cron'", &[])
        .unwrap()
        .get(0);
    std::thread::sleep(Duration::from_secs_f64((next - 0.1).max(0.0)));
    let launcher: i32 = c
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_jobs launcher'",
            &[],
        )
        .unwrap()
        .get(0);
    let before = cluster.executor_pids(&mut c);
    let killed_at = Instant::now();
    kill_9(launcher);
    cluster.wait_for_new_executors(2, &before);
    let mut c = cluster.connect();
    let ticks = wait_for_ticks(&mut c, "crash-cron", 4);
    assert!(killed_at.elapsed() < Duration::from_secs(60));
    assert_every(&ticks, 3.0);
    c.batch_execute("SELECT jobs.delete_function('crash-cron')")
        .unwrap();
}

#[test]
fn handlers_tell_their_schedules_apart() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    // The guide's morning/evening example, with seconds instead of hours.
    c.batch_execute(
        r#"
        CREATE TABLE shifts (task text, scheduled_at text);
        CREATE FUNCTION multi_schedule(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            IF ctx->'event'->>'name' <> 'jobs/scheduled.timer' THEN
                RAISE EXCEPTION 'unexpected event %', ctx->'event'->>'name';
            END IF;
            IF ctx->'event'->'data'->>'cron' = '1-59/2 * * * * *' THEN
                PERFORM jobs.step('morning-task', 'INSERT INTO shifts VALUES (''morning'', $1->>''scheduled_at'')', ctx->'event'->'data');
            ELSE
                PERFORM jobs.step('evening-task', 'INSERT INTO shifts VALUES (''evening'', $1->>''scheduled_at'')', ctx->'event'->'data');
            END IF;
        END $$;
        SELECT jobs.create_function('multi-schedule', 'multi_schedule(jsonb)', '{"cron": ["1-59/2 * * * * *", "*/2 * * * * *"]}');
        "#,
    )
    .unwrap();
    wait_until("both schedules fired", Duration::from_secs(20), || {
        count(&mut c, "SELECT count(DISTINCT task) FROM shifts") == 2
            && count(&mut c, "SELECT count(*) FROM shifts") >= 4
    });
    c.batch_execute("SELECT jobs.delete_function('multi-schedule')")
        .unwrap();
    let odd_mornings: i64 = c
        .query_one(
            "SELECT count(*) FROM shifts WHERE (task = 'morning') <> (extract(second FROM scheduled_at::timestamptz)::int % 2 = 1)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(odd_mornings, 0, "each run knew which schedule started it");
}

#[test]
fn after_downtime_a_schedule_runs_once_for_the_latest_missed_instant() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    c.batch_execute(
        "SELECT jobs.create_function('downtime', 'tick(jsonb)', '{\"cron\": \"*/2 * * * * *\"}')",
    )
    .unwrap();
    wait_for_ticks(&mut c, "downtime", 1);
    cluster.stop_immediately();
    let stopped: f64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    std::thread::sleep(Duration::from_millis(6500));
    cluster.start_server();
    let started: f64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    cluster.wait_for_executors(2);
    let mut c = cluster.connect();
    let before = ticks(&mut c, "downtime").len();
    let ticks = wait_for_ticks(&mut c, "downtime", before + 2);
    let in_downtime: Vec<f64> = ticks
        .iter()
        .map(|(at, _)| *at)
        .filter(|at| *at > stopped && *at < started)
        .collect();
    assert_eq!(
        in_downtime.len(),
        1,
        "one catch-up run for the instants missed while down: {ticks:?}"
    );
    assert!(
        started - in_downtime[0] <= 2.0,
        "the catch-up is for the latest missed instant: {in_downtime:?}, up at {started}"
    );
    assert!(ticks.iter().all(|(_, runs)| *runs == 1), "{ticks:?}");
    assert!(
        cluster.log().contains("of downtime missed instants from"),
        "the catch-up is logged"
    );
    c.batch_execute("SELECT jobs.delete_function('downtime')")
        .unwrap();
}

fn launcher_pid(c: &mut Client) -> i32 {
    c.query_one(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_jobs launcher'",
        &[],
    )
    .unwrap()
    .get(0)
}

fn now_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn reboot_runs_once_per_server_start() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    // Two spellings, one function: one run per start. The witness shows
    // that the launcher went round after each event.
    c.batch_execute(
        r#"SELECT jobs.create_function('on-start', 'tick(jsonb)', '{"cron": ["@reboot", "@restart"]}');
           SELECT jobs.create_function('witness', 'tick(jsonb)', '{"cron": "* * * * * *"}');"#,
    )
    .unwrap();
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM jobs.schedules WHERE function_id = 'on-start' AND next_fire_at = 'infinity' AND last_fired_at IS NULL"),
        2
    );
    let witnessed = ticks(&mut c, "witness").len();
    wait_for_ticks(&mut c, "witness", witnessed + 2);
    assert!(
        ticks(&mut c, "on-start").is_empty(),
        "a schedule added after the start waits for the next start"
    );

    // A clean start.
    cluster.stop_immediately();
    let stopped = now_epoch();
    cluster.start_server();
    cluster.wait_for_executors(2);
    let mut c = cluster.connect();
    let first = wait_for_ticks(&mut c, "on-start", 1);
    assert!(
        first[0].0 > stopped && first[0].0 < now_epoch(),
        "the run is for this start: {first:?}, stopped at {stopped}"
    );

    // The launcher alone restarts (SIGTERM; the postmaster starts it again): no new run.
    let launcher = launcher_pid(&mut c);
    c.query_one("SELECT pg_terminate_backend($1)", &[&launcher])
        .unwrap();
    wait_until("a new launcher", Duration::from_secs(30), || {
        let mut c = cluster.connect();
        c.query_opt(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_jobs launcher' AND pid <> $1",
            &[&launcher],
        )
        .unwrap()
        .is_some()
    });
    let witnessed = ticks(&mut c, "witness").len();
    wait_for_ticks(&mut c, "witness", witnessed + 2);
    assert_eq!(
        ticks(&mut c, "on-start"),
        first,
        "no run for a launcher restart"
    );

    // A crash: the postmaster sets shared memory up again, a new start.
    let before = cluster.executor_pids(&mut c);
    kill_9(launcher_pid(&mut c));
    cluster.wait_for_new_executors(2, &before);
    let mut c = cluster.connect();
    let runs = wait_for_ticks(&mut c, "on-start", 2);
    assert!(runs[1].0 > first[0].0, "{runs:?}");
    assert!(
        runs.iter().all(|(_, n)| *n == 1),
        "one run per start: {runs:?}"
    );
    let crons: Vec<String> = c
        .query(
            "SELECT DISTINCT cron FROM ticks WHERE function_id = 'on-start'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(
        crons
            .iter()
            .all(|cron| cron == "@reboot" || cron == "@restart"),
        "{crons:?}"
    );
    let last: f64 = c
        .query_one(
            "SELECT extract(epoch FROM max(last_fired_at))::float8 FROM jobs.schedules WHERE function_id = 'on-start'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(last, runs[1].0);
    assert!(cluster.log().contains("@reboot schedule(s) started a run"));
    c.batch_execute(
        "SELECT jobs.delete_function('on-start'); SELECT jobs.delete_function('witness')",
    )
    .unwrap();
}
