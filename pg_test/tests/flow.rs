//! Flow control on a real cluster: each key of create_function, and how it
//! behaves under faults. Steps record when they ran in `spans`, so that
//! overlaps are counted from what committed, not from timing assumptions.

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use pg_jobs_e2e::*;

fn cluster() -> (&'static Cluster, MutexGuard<'static, ()>) {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let cluster = CLUSTER.get_or_init(|| {
        let cluster = Cluster::with_pg_jobs("flow", 3, &[]);
        cluster.connect().batch_execute(SETUP).unwrap();
        cluster
    });
    (cluster, turn)
}

const SETUP: &str = "
    CREATE TABLE spans (function_id text, key text, started timestamptz, ended timestamptz, data jsonb);
    -- A step that takes `ms` and records when it ran.
    CREATE FUNCTION span(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
    DECLARE
        began timestamptz := clock_timestamp();
    BEGIN
        PERFORM pg_sleep(coalesce((args->>'ms')::int, 100) / 1000.0);
        INSERT INTO spans VALUES (args->>'f', args->>'key', began, clock_timestamp(), args->'data');
    END $$;
    CREATE FUNCTION one_span(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM jobs.step('span', 'SELECT span($1)', jsonb_build_object(
            'f', ctx->>'function_id', 'key', ctx->'event'->'data'->>'key',
            'ms', ctx->'event'->'data'->'ms', 'data', ctx->'event'->'data'));
    END $$;
    CREATE FUNCTION record_events(ctx jsonb) RETURNS jsonb LANGUAGE sql AS $$
        INSERT INTO spans (function_id, started, data) VALUES (ctx->>'function_id', clock_timestamp(), ctx->'events')
        RETURNING to_jsonb(jsonb_array_length(ctx->'events'))
    $$;
    CREATE TABLE gate (name text PRIMARY KEY, open bool NOT NULL DEFAULT false);";

/// Most spans of `function_id` (or, with `per_key`, of one key) running at
/// once: the most that were running at the moment one of them began.
fn max_overlap(c: &mut Client, function_id: &str, per_key: bool) -> i64 {
    let group = if per_key { "a.key = b.key" } else { "true" };
    c.query_one(
        &format!(
            "SELECT coalesce(max(n), 0) FROM (
                SELECT count(*) AS n FROM spans a JOIN spans b ON {group}
                    AND b.started <= a.started AND a.started < b.ended
                WHERE a.function_id = $1 AND b.function_id = $1 GROUP BY a.ctid) x"
        ),
        &[&function_id],
    )
    .unwrap()
    .get(0)
}

fn send_many(c: &mut Client, name: &str, events: &str) {
    c.batch_execute(&format!(
        "SELECT jobs.send(jsonb_agg(jsonb_build_object('name', '{name}', 'data', d))) FROM ({events}) e (d)"
    ))
    .unwrap();
}

#[test]
fn concurrency_limits_steps_executing() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    c.batch_execute(
        "SELECT jobs.create_function('conc-2', 'one_span(jsonb)', '{\"event\": \"flow/conc-2\", \"concurrency\": 2}')",
    )
    .unwrap();
    send_many(
        &mut c,
        "flow/conc-2",
        "SELECT jsonb_build_object('ms', 200) FROM generate_series(1, 10)",
    );
    assert_eq!(wait_for_runs(&mut c, "conc-2", 10).len(), 10);
    // Three executors, two slots: exactly two steps at a time.
    let spans: Vec<String> = c
        .query(
            "SELECT started::time::text || '-' || ended::time::text FROM spans WHERE function_id = 'conc-2' ORDER BY started",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(max_overlap(&mut c, "conc-2", false), 2, "{spans:?}");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.queue WHERE function_id = 'conc-2'"
        ),
        0
    );
}

#[test]
fn a_keyed_limit_serializes_each_key_and_runs_keys_in_parallel() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    c.batch_execute(
        "SELECT jobs.create_function('per-user', 'one_span(jsonb)',
             '{\"event\": \"flow/per-user\", \"concurrency\": {\"limit\": 1, \"key\": \"event.data.key\"}}')",
    )
    .unwrap();
    send_many(
        &mut c,
        "flow/per-user",
        "SELECT jsonb_build_object('key', 'user-' || (n % 5), 'ms', 150) FROM generate_series(1, 15) n",
    );
    assert_eq!(wait_for_runs(&mut c, "per-user", 15).len(), 15);
    assert_eq!(max_overlap(&mut c, "per-user", true), 1);
    assert!(max_overlap(&mut c, "per-user", false) > 1);
}

#[test]
fn a_sleeping_run_holds_no_slot() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    c.batch_execute(
        "CREATE FUNCTION nap_then_span(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
         BEGIN
             IF (ctx->'event'->'data'->>'nap')::bool THEN
                 PERFORM jobs.sleep('nap', '3 seconds');
             END IF;
             PERFORM jobs.step('span', 'SELECT span($1)', jsonb_build_object('f', ctx->>'function_id', 'ms', 10));
         END $$;
         SELECT jobs.create_function('napper', 'nap_then_span(jsonb)', '{\"event\": \"flow/napper\", \"concurrency\": 1}');
         SELECT jobs.send('flow/napper', '{\"nap\": true}');",
    )
    .unwrap();
    wait_until("the first run sleeps", Duration::from_secs(10), || {
        statuses(&mut c, "napper") == ["sleeping"]
    });
    c.batch_execute("SELECT jobs.send('flow/napper', '{\"nap\": false}')")
        .unwrap();
    wait_until(
        "the second run completes while the first sleeps",
        Duration::from_secs(2),
        || statuses(&mut c, "napper") == ["sleeping", "completed"],
    );
    assert_eq!(
        wait_for_runs(&mut c, "napper", 2),
        ["completed", "completed"]
    );
}

#[test]
fn a_killed_executor_gives_its_slot_back() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    c.batch_execute(
        "INSERT INTO gate VALUES ('killed-slot');
         CREATE FUNCTION gated_span(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM jobs.step('wait', $s$
                 DO $d$ BEGIN
                     WHILE NOT (SELECT open FROM gate WHERE name = 'killed-slot') LOOP PERFORM pg_sleep(0.02); END LOOP;
                 END $d$ $s$);
             PERFORM jobs.step('span', 'SELECT span($1)', jsonb_build_object('f', ctx->>'function_id', 'ms', 10));
         END $$;
         SELECT jobs.create_function('killed-slot', 'gated_span(jsonb)',
             '{\"event\": \"flow/killed-slot\", \"concurrency\": {\"limit\": 1, \"key\": \"\\\"shared\\\"\"}}');
         SELECT jobs.send('flow/killed-slot'); SELECT jobs.send('flow/killed-slot');",
    )
    .unwrap();
    wait_until(
        "the first run holds the slot, at its gate",
        Duration::from_secs(10),
        || {
            count(&mut c, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_jobs executor' AND query LIKE '%step wait%'") == 1
        },
    );
    let holder: i32 = c
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_jobs executor' AND query LIKE '%step wait%'",
            &[],
        )
        .unwrap()
        .get(0);
    c.batch_execute("UPDATE gate SET open = true WHERE name = 'killed-slot'")
        .unwrap();
    let before = cluster.executor_pids(&mut c);
    kill_9(holder);
    drop(c);
    cluster.wait_for_new_executors(3, &before);
    let mut c = cluster.connect();
    // Both runs finish: the slot came back with the restart, not after a lease ran out.
    assert_eq!(
        wait_for_runs(&mut c, "killed-slot", 2),
        ["completed", "completed"]
    );
    assert_eq!(max_overlap(&mut c, "killed-slot", false), 1);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.queue WHERE function_id = 'killed-slot'"
        ),
        0
    );
}

#[test]
fn throttle_spaces_starts_after_the_burst() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    c.batch_execute(
        "SELECT jobs.create_function('throttled', 'one_span(jsonb)',
             '{\"event\": \"flow/throttled\", \"throttle\": {\"limit\": 5, \"period\": \"1s\"}}')",
    )
    .unwrap();
    send_many(
        &mut c,
        "flow/throttled",
        "SELECT jsonb_build_object('ms', 1) FROM generate_series(1, 8)",
    );
    assert_eq!(wait_for_runs(&mut c, "throttled", 8).len(), 8);
    let gaps: Vec<f64> = c
        .query(
            "SELECT (extract(epoch FROM started_at - lag(started_at) OVER (ORDER BY started_at)) * 1000)::float8
             FROM jobs.runs WHERE function_id = 'throttled' ORDER BY started_at",
            &[],
        )
        .unwrap()
        .iter()
        .skip(2)
        .map(|row| row.get::<_, f64>(0))
        .collect();
    // A burst of two (1 + burst 1), then one start every 200 ms.
    assert!(gaps.iter().all(|gap| *gap >= 190.0), "{gaps:?}");
}

#[test]
fn a_rate_limit_skips_events_and_says_why() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    c.batch_execute(
        "SELECT jobs.create_function('limited', 'one_span(jsonb)',
             '{\"event\": \"flow/limited\", \"rate_limit\": {\"limit\": 2, \"period\": \"1h\", \"key\": \"event.data.key\"}}')",
    )
    .unwrap();
    let ids: Vec<String> = (0..5)
        .map(|_| {
            c.query_one(
                "SELECT jobs.send('flow/limited', '{\"key\": \"a\", \"ms\": 1}')::text",
                &[],
            )
            .unwrap()
            .get(0)
        })
        .collect();
    c.batch_execute("SELECT jobs.send('flow/limited', '{\"key\": \"b\", \"ms\": 1}')")
        .unwrap();
    assert_eq!(wait_for_runs(&mut c, "limited", 3).len(), 3);
    let reason: String = c
        .query_one(
            "SELECT reason FROM jobs.explain_event($1::text::uuid) WHERE function_id = 'limited'",
            &[&ids[4]],
        )
        .unwrap()
        .get(0);
    assert!(reason.starts_with("rate limited"), "{reason}");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.skips WHERE function_id = 'limited'"
        ),
        3
    );
}

#[test]
fn debounce_starts_one_run_with_the_last_event() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    c.batch_execute(
        "SELECT jobs.create_function('debounced', 'one_span(jsonb)',
             '{\"event\": \"flow/debounced\", \"debounce\": {\"period\": \"1s\", \"key\": \"event.data.key\"}}')",
    )
    .unwrap();
    for n in 1..=5 {
        c.execute(
            "SELECT jobs.send('flow/debounced', jsonb_build_object('key', 'k', 'n', $1::int, 'ms', 1))",
            &[&n],
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(wait_for_runs(&mut c, "debounced", 1), ["completed"]);
    let n: i32 = c
        .query_one(
            "SELECT (data->>'n')::int FROM spans WHERE function_id = 'debounced'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 5);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.skips WHERE function_id = 'debounced'"
        ),
        4
    );
}

#[test]
fn debounce_timeout_fires_under_a_steady_stream() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    c.batch_execute(
        "SELECT jobs.create_function('debounce-capped', 'one_span(jsonb)',
             '{\"event\": \"flow/debounce-capped\", \"debounce\": {\"period\": \"1s\", \"timeout\": \"2s\"}}')",
    )
    .unwrap();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(4500) {
        c.batch_execute("SELECT jobs.send('flow/debounce-capped', '{\"ms\": 1}')")
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(1500));
    // Without the timeout the stream would start nothing until it stopped.
    let runs = statuses(&mut c, "debounce-capped").len();
    assert!(runs >= 2, "{runs} run(s)");
}

#[test]
fn batches_fill_up_or_time_out() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    c.batch_execute(
        "SELECT jobs.create_function('batched', 'record_events(jsonb)',
             '{\"event\": \"flow/batched\", \"batch_events\": {\"max_size\": 10, \"timeout\": \"1s\"}}')",
    )
    .unwrap();
    for _ in 0..25 {
        c.batch_execute("SELECT jobs.send('flow/batched', '{}')")
            .unwrap();
    }
    assert_eq!(wait_for_runs(&mut c, "batched", 3).len(), 3);
    let sizes: Vec<i32> = c
        .query(
            "SELECT output::int FROM jobs.runs WHERE function_id = 'batched' ORDER BY created_at",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(sizes, [10, 10, 5]);
}

#[test]
fn priority_orders_a_backlog() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    c.batch_execute(
        "SELECT jobs.create_function('prioritized', 'one_span(jsonb)',
             '{\"event\": \"flow/prioritized\", \"concurrency\": 1, \"priority\": {\"run\": \"event.data.p\"}}');
         SELECT jobs.pause_function('prioritized');",
    )
    .unwrap();
    for p in [0, 0, 0, 300, 0, 120] {
        c.execute(
            "SELECT jobs.send('flow/prioritized', jsonb_build_object('p', $1::int, 'ms', 20))",
            &[&p],
        )
        .unwrap();
    }
    c.batch_execute("SELECT jobs.resume_function('prioritized')")
        .unwrap();
    assert_eq!(wait_for_runs(&mut c, "prioritized", 6).len(), 6);
    let order: Vec<i32> = c
        .query(
            "SELECT (data->>'p')::int FROM spans WHERE function_id = 'prioritized' ORDER BY started",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(order, [300, 120, 0, 0, 0, 0]);
}

#[test]
fn singleton_skips_or_cancels() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    c.batch_execute(
        "CREATE FUNCTION slow_then_span(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM jobs.sleep('wait', '2 seconds');
             PERFORM jobs.step('span', 'SELECT span($1)', jsonb_build_object('f', ctx->>'function_id', 'ms', 1));
         END $$;
         SELECT jobs.create_function('single-skip', 'slow_then_span(jsonb)',
             '{\"event\": \"flow/single\", \"singleton\": {\"key\": \"event.data.key\", \"mode\": \"skip\"}}');
         SELECT jobs.create_function('single-cancel', 'slow_then_span(jsonb)',
             '{\"event\": \"flow/single\", \"singleton\": {\"key\": \"event.data.key\", \"mode\": \"cancel\"}}');
         SELECT jobs.send('flow/single', '{\"key\": \"a\"}');
         SELECT jobs.send('flow/single', '{\"key\": \"a\"}');
         SELECT jobs.send('flow/single', '{\"key\": \"b\"}');",
    )
    .unwrap();
    assert_eq!(
        wait_for_runs(&mut c, "single-skip", 2),
        ["completed", "completed"]
    );
    assert_eq!(
        wait_for_runs(&mut c, "single-cancel", 3),
        ["cancelled", "completed", "completed"]
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.singletons WHERE function_id LIKE 'single-%'"
        ),
        0
    );
    // Once the key's run ended, the key takes a new one.
    c.batch_execute("SELECT jobs.send('flow/single', '{\"key\": \"a\"}')")
        .unwrap();
    assert_eq!(wait_for_runs(&mut c, "single-skip", 3).len(), 3);
}

#[test]
fn idempotency_starts_one_run_per_key() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    c.batch_execute(
        "SELECT jobs.create_function('once-per-order', 'one_span(jsonb)',
             '{\"event\": \"flow/order\", \"idempotency\": \"event.data.orderId\"}');
         SELECT jobs.send('flow/order', '{\"orderId\": 1, \"ms\": 1}');
         SELECT jobs.send('flow/order', '{\"orderId\": 1, \"ms\": 1}');
         SELECT jobs.send('flow/order', '{\"orderId\": 2, \"ms\": 1}');",
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "once-per-order", 2).len(), 2);
    let reason: String = c
        .query_one(
            "SELECT reason FROM jobs.skips WHERE function_id = 'once-per-order'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(reason.contains("idempotency"), "{reason}");
}

#[test]
fn timeouts_cancel_runs_that_start_or_finish_too_late() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    c.batch_execute(
        "CREATE FUNCTION long_sleep(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM jobs.sleep('wait', '30 seconds');
         END $$;
         SELECT jobs.create_function('finish-late', 'long_sleep(jsonb)',
             '{\"event\": \"flow/finish-late\", \"timeouts\": {\"finish\": \"1s\"}}');
         SELECT jobs.send('flow/finish-late');",
    )
    .unwrap();
    // Claimed with the gated run below, the sleep would commit with that
    // run's round, after the gate opens.
    wait_until("the run sleeps", Duration::from_secs(10), || {
        statuses(&mut c, "finish-late") == ["sleeping"]
    });
    c.batch_execute(
        "INSERT INTO gate VALUES ('start-late');
         CREATE FUNCTION hold_slot(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM jobs.step('hold', $s$
                 DO $d$ BEGIN
                     WHILE NOT (SELECT open FROM gate WHERE name = 'start-late') LOOP PERFORM pg_sleep(0.02); END LOOP;
                 END $d$ $s$);
         END $$;
         SELECT jobs.create_function('start-late', 'hold_slot(jsonb)',
             '{\"event\": \"flow/start-late\", \"concurrency\": 1, \"timeouts\": {\"start\": \"1s\"}}');
         SELECT jobs.send('flow/start-late'); SELECT jobs.send('flow/start-late');",
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "finish-late", 1), ["cancelled"]);
    // The second run waits behind the first one's slot, and is cancelled there.
    wait_until(
        "the queued run is cancelled",
        Duration::from_secs(10),
        || statuses(&mut c, "start-late").contains(&"cancelled".to_string()),
    );
    c.batch_execute("UPDATE gate SET open = true WHERE name = 'start-late'")
        .unwrap();
    let mut statuses_now = wait_for_runs(&mut c, "start-late", 2);
    statuses_now.sort();
    assert_eq!(statuses_now, ["cancelled", "completed"]);
    let errors: Vec<String> = c
        .query(
            "SELECT error->>'sqlstate' || ' ' || (error->>'message') FROM jobs.runs
             WHERE function_id IN ('finish-late', 'start-late') AND status = 'cancelled' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(
        errors.iter().all(|e| e.starts_with("57014 timeouts.")),
        "{errors:?}"
    );
}

#[test]
fn work_held_back_by_a_limit_is_not_scanned_by_the_claim() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    c.batch_execute(
        "INSERT INTO gate VALUES ('backlog');
         CREATE FUNCTION backlogged(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM jobs.step('hold', $s$
                 DO $d$ BEGIN
                     WHILE NOT (SELECT open FROM gate WHERE name = 'backlog') LOOP PERFORM pg_sleep(0.05); END LOOP;
                 END $d$ $s$);
         END $$;
         SELECT jobs.create_function('backlog', 'backlogged(jsonb)',
             '{\"event\": \"flow/backlog\", \"concurrency\": {\"limit\": 1, \"key\": \"\\\"one\\\"\"}}');
         CREATE TABLE plain_sink (n int);
         CREATE FUNCTION plain(ctx jsonb) RETURNS void LANGUAGE sql AS 'INSERT INTO plain_sink VALUES (1)';
         SELECT jobs.create_function('plain', 'plain(jsonb)', '{\"event\": \"flow/plain\"}');",
    )
    .unwrap();
    send_many(
        &mut c,
        "flow/backlog",
        "SELECT '{}'::jsonb FROM generate_series(1, 30000)",
    );
    // Large enough that one scan of the blocked rows per claim would show,
    // small enough to be held back quickly on a slow shared machine.
    wait_until(
        "the backlog waits for its one slot",
        Duration::from_secs(300),
        || {
            count(&mut c, "SELECT count(*) FROM jobs.queue WHERE function_id = 'backlog' AND blocked_on IS NOT NULL") == 29_999
        },
    );
    let fetched = |c: &mut Client| {
        count(
            c,
            "SELECT coalesce(idx_tup_fetch, 0) + coalesce(seq_tup_read, 0)
             FROM pg_stat_user_tables WHERE relid = 'jobs.queue'::regclass",
        )
    };
    // Statistics reach pg_stat_user_tables about once a second.
    std::thread::sleep(Duration::from_millis(2500));
    let before = fetched(&mut c);
    send_many(
        &mut c,
        "flow/plain",
        "SELECT '{}'::jsonb FROM generate_series(1, 1000)",
    );
    assert_eq!(wait_for_runs(&mut c, "plain", 1000).len(), 1000);
    std::thread::sleep(Duration::from_millis(2500));
    let read = fetched(&mut c) - before;
    // Each plain run is read a few times; the 29,999 blocked runs never.
    assert!(read < 10_000, "{read} queue rows read for 1000 runs");
    c.batch_execute("SELECT jobs.delete_function('backlog'); UPDATE gate SET open = true WHERE name = 'backlog'")
        .unwrap();
    wait_until("the backlog is gone", Duration::from_secs(120), || {
        count(
            &mut c,
            "SELECT count(*) FROM jobs.queue WHERE function_id = 'backlog'",
        ) == 0
    });
}

#[test]
fn bad_flow_control_values_are_refused_by_name() {
    let (cluster, _turn) = cluster();
    let mut c = cluster.connect();
    for (config, named) in [
        ("{\"concurrency\": 0}", "concurrency"),
        ("{\"throttle\": {\"limit\": 5, \"period\": \"10ms\"}}", "throttle.period"),
        ("{\"rate_limit\": {\"limit\": 5, \"period\": \"2d\"}}", "rate_limit.period"),
        ("{\"debounce\": {\"period\": \"1s\", \"key\": \"usr.id\"}}", "debounce.key"),
        ("{\"priority\": {\"run\": \"event.data.p +\"}}", "priority.run"),
        ("{\"event\": \"a/b\", \"batch_events\": {\"max_size\": 5, \"timeout\": \"1s\"}, \"singleton\": {\"mode\": \"skip\"}}", "batch_events"),
    ] {
        let result = c.execute(
            "SELECT jobs.create_function('bad-flow', 'one_span(jsonb)', $1::text::jsonb)",
            &[&config],
        );
        let message = error_message(c.execute(
            "SELECT jobs.create_function('bad-flow', 'one_span(jsonb)', $1::text::jsonb)",
            &[&config],
        ));
        assert_eq!(sqlstate(result), "22023", "{config}");
        assert!(message.contains(&format!("\"{named}\"")), "{config}: {message}");
    }
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.functions WHERE id = 'bad-flow'"
        ),
        0
    );
}
