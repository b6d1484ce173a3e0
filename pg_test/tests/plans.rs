//! pg_jobs' own statements look rows up by key, whatever the planner's
//! statistics say. A fresh install is the hard case: the tables were empty
//! when last analyzed and grow by thousands of rows a second.

use std::time::Duration;

use pg_jobs_e2e::*;

/// (sequential scans, rows they read) of each table, once the counters
/// of every backend are flushed.
fn sequential_reads(c: &mut Client, tables: &[&str]) -> Vec<(i64, i64)> {
    c.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
    tables
        .iter()
        .map(|table| {
            let row = c
                .query_one(
                    "SELECT seq_scan, seq_tup_read FROM pg_stat_user_tables WHERE schemaname = 'jobs' AND relname = $1",
                    &[table],
                )
                .unwrap();
            (row.get(0), row.get(1))
        })
        .collect()
}

#[test]
fn a_burst_of_step_functions_on_a_fresh_install_scans_no_table() {
    let cluster = Cluster::with_pg_jobs("plans", 2, &[]);
    let mut c = cluster.connect();
    c.batch_execute(
        "CREATE TABLE sink (n int);
         CREATE FUNCTION three_steps(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM jobs.step('a', 'INSERT INTO sink VALUES (1)');
             PERFORM jobs.step('b', 'INSERT INTO sink VALUES (2)');
             PERFORM jobs.step('c', 'INSERT INTO sink VALUES (3)');
         END $$;
         SELECT jobs.create_function('burst', 'three_steps(jsonb)', '{\"event\": \"test/burst\"}');
         SELECT jobs.pause_function('burst');
         ANALYZE jobs.queue, jobs.runs, jobs.steps, jobs.events;",
    )
    .unwrap();
    let tables = ["queue", "steps", "runs", "events"];
    // The statistics the executors flush at most once a second settle first.
    std::thread::sleep(Duration::from_secs(2));
    let before = sequential_reads(&mut c, &tables);

    // A backlog builds up (each send looks at the waits and the queue), then drains.
    for _ in 0..4 {
        c.batch_execute("SELECT count(jobs.send('test/burst')) FROM generate_series(1, 500)")
            .unwrap();
    }
    c.batch_execute("SELECT jobs.resume_function('burst')")
        .unwrap();
    // Waiting reads only the handler's own table, so that every sequential
    // scan of pg_jobs' tables from here on is the executors'.
    wait_until("6000 steps ran", Duration::from_secs(120), || {
        count(&mut c, "SELECT count(*) FROM sink") == 6000
    });
    // Executors flush their statistics at most once a second, and poll once a second when idle.
    std::thread::sleep(Duration::from_secs(3));
    let after = sequential_reads(&mut c, &tables);
    for (i, table) in tables.iter().enumerate() {
        assert_eq!(
            after[i].1 - before[i].1,
            0,
            "rows of jobs.{table} read by sequential scans ({} scans)",
            after[i].0 - before[i].0
        );
    }
    wait_until("the 2000 runs complete", Duration::from_secs(30), || {
        count(
            &mut c,
            "SELECT count(*) FROM jobs.runs WHERE function_id = 'burst' AND status = 'completed'",
        ) == 2000
    });
}
