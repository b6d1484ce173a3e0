//! Writes to the history and the queue, in the executor's transaction. Each is
//! one prepared statement.

use std::thread::LocalKey;
use std::time::Duration;

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::JsonB;

use super::invoke::Failure;
use crate::api::{prepared, StatementCache};

/// Runs `sql`, prepared once per executor, with `args`; the first column of
/// the first row it returns, if any.
fn exec<T: FromDatum + IntoDatum>(
    cache: &'static LocalKey<StatementCache>,
    sql: &str,
    args: Vec<DatumWithOid>,
) -> Option<T> {
    Spi::connect_mut(|client| {
        let types: Vec<pg_sys::Oid> = args.iter().map(|a| a.oid()).collect();
        let statement = prepared(cache, client, sql, &types);
        let rows = client
            .update(statement, None, &args)
            .unwrap_or_else(|e| panic!("pg_jobs bookkeeping failed: {e}"));
        if rows.is_empty() {
            None
        } else {
            rows.first().get_one::<T>().ok().flatten()
        }
    })
}

fn failure_json(failure: &Failure) -> DatumWithOid<'static> {
    JsonB(failure.to_json()).into()
}

fn millis(duration: Duration) -> DatumWithOid<'static> {
    (duration.as_secs_f64() * 1000.0).into()
}

thread_local! {
    static COMPLETE: StatementCache = const { StatementCache::new() };
    static FAIL: StatementCache = const { StatementCache::new() };
    static RETRY: StatementCache = const { StatementCache::new() };
    static CANCEL: StatementCache = const { StatementCache::new() };
    static HOLD: StatementCache = const { StatementCache::new() };
    static ATTEMPT_ERROR: StatementCache = const { StatementCache::new() };
    static STEP: StatementCache = const { StatementCache::new() };
    static RELEASE: StatementCache = const { StatementCache::new() };
    static SLEEP: StatementCache = const { StatementCache::new() };
    static PLAN: StatementCache = const { StatementCache::new() };
    static TASK_DONE: StatementCache = const { StatementCache::new() };
}

/// The run returned: its output, and the end of its queue entry.
pub fn complete(run: pgrx::Uuid, output: Option<String>) {
    exec::<bool>(
        &COMPLETE,
        "WITH done AS (DELETE FROM jobs.queue WHERE run_id = $1)
         UPDATE jobs.runs SET status = 'completed', output = $2::text::jsonb, error = NULL,
                ended_at = clock_timestamp()
         WHERE id = $1",
        vec![run.into(), output.into()],
    );
}

/// The run failed for good.
pub fn fail(run: pgrx::Uuid, failure: &Failure) {
    exec::<bool>(
        &FAIL,
        "WITH done AS (DELETE FROM jobs.queue WHERE run_id = $1)
         UPDATE jobs.runs SET status = 'failed', error = $2, ended_at = clock_timestamp()
         WHERE id = $1",
        vec![run.into(), failure_json(failure)],
    );
}

/// The handler failed; the run is tried again after `delay`, as attempt `attempt + 1`.
pub fn retry(run: pgrx::Uuid, attempt: i32, failure: &Failure, delay: Duration) {
    exec::<bool>(
        &RETRY,
        "WITH later AS (UPDATE jobs.queue SET claimed_by = NULL, claims = 0,
                               due_at = clock_timestamp() + $4 * interval '1 millisecond'
                        WHERE run_id = $1 AND step_id = '')
         UPDATE jobs.runs SET error = $2, attempt = $3 + 1 WHERE id = $1",
        vec![
            run.into(),
            failure_json(failure),
            attempt.into(),
            millis(delay),
        ],
    );
}

pub fn cancel(run: pgrx::Uuid, reason: &Failure) {
    exec::<bool>(
        &CANCEL,
        "WITH done AS (DELETE FROM jobs.queue WHERE run_id = $1)
         UPDATE jobs.runs SET status = 'cancelled', error = $2, ended_at = clock_timestamp()
         WHERE id = $1",
        vec![run.into(), failure_json(reason)],
    );
}

/// The function was paused after the run (or its parallel step) was claimed:
/// back to the queue, held until resumed.
pub fn hold(run: pgrx::Uuid, step: &str) {
    exec::<bool>(
        &HOLD,
        "WITH held AS (UPDATE jobs.queue SET held = true, claimed_by = NULL, claims = 0
                       WHERE run_id = $1 AND step_id = $2)
         UPDATE jobs.runs SET status = 'queued' WHERE id = $1 AND $2 = ''",
        vec![run.into(), step.into()],
    );
}

/// One failed attempt, of a step or (step '') of the handler.
pub fn attempt_error(run: pgrx::Uuid, step: &str, attempt: i32, failure: &Failure) {
    exec::<bool>(
        &ATTEMPT_ERROR,
        "INSERT INTO jobs.attempt_errors (run_id, step_id, attempt, sqlstate, message, detail, hint)
         VALUES ($1, $2, $3, $4->>'sqlstate', $4->>'message', $4->>'detail', $4->>'hint')
         ON CONFLICT DO NOTHING",
        vec![run.into(), step.into(), attempt.into(), failure_json(failure)],
    );
}

/// A step's row in the timeline: created at its first attempt, updated at each.
pub struct StepUpdate<'a> {
    pub run: pgrx::Uuid,
    pub id: &'a str,
    pub name: &'a str,
    pub kind: &'a str,
    pub status: &'a str,
    /// Whether an attempt was made (it counts in `attempts`).
    pub attempted: bool,
    pub output: Option<String>,
    pub failure: Option<&'a Failure>,
    /// How long the attempt took, so that `started_at` is when it began.
    pub elapsed: Duration,
}

pub fn step(update: StepUpdate) {
    exec::<bool>(
        &STEP,
        "INSERT INTO jobs.steps AS s (run_id, id, name, kind, status, attempts, output, error, started_at, ended_at)
         VALUES ($1, $2, $3, $4, $5, $6::int, $7::text::jsonb, $8, clock_timestamp() - $9 * interval '1 millisecond',
                 CASE WHEN $5 IN ('completed', 'failed') THEN clock_timestamp() END)
         ON CONFLICT (run_id, id) DO UPDATE SET
             status = excluded.status, attempts = s.attempts + $6::int, output = excluded.output,
             error = coalesce(excluded.error, s.error), ended_at = excluded.ended_at",
        vec![
            update.run.into(),
            update.id.into(),
            update.name.into(),
            update.kind.into(),
            update.status.into(),
            i32::from(update.attempted).into(),
            update.output.into(),
            update.failure.map_or(DatumWithOid::null::<JsonB>(), failure_json),
            millis(update.elapsed),
        ],
    );
}

/// The run (or a parallel step, `step` not '') waits `delay` before it is claimed again.
pub fn release(run: pgrx::Uuid, step: &str, delay: Duration) {
    exec::<bool>(
        &RELEASE,
        "UPDATE jobs.queue SET claimed_by = NULL, claims = 0,
                due_at = clock_timestamp() + $3 * interval '1 millisecond'
         WHERE run_id = $1 AND step_id = $2",
        vec![run.into(), step.into(), millis(delay)],
    );
}

/// The run sleeps until `until_ms` (Unix milliseconds).
pub fn sleep(run: pgrx::Uuid, until_ms: i64) {
    exec::<bool>(
        &SLEEP,
        "WITH later AS (UPDATE jobs.queue SET claimed_by = NULL, claims = 0,
                               due_at = to_timestamp($2 / 1000.0)
                        WHERE run_id = $1 AND step_id = '')
         UPDATE jobs.runs SET status = 'sleeping' WHERE id = $1",
        vec![run.into(), until_ms.into()],
    );
}

/// Queues steps planned by jobs.parallel for any executor, and parks the run
/// until they are all done. Returns how many were queued.
pub fn plan(run: pgrx::Uuid, function: &str, steps: &[crate::replay::PlannedStep]) -> i64 {
    let ids: Vec<&str> = steps.iter().map(|s| s.id.as_str()).collect();
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    let sqls: Vec<&str> = steps.iter().map(|s| s.sql.as_str()).collect();
    let args: Vec<Option<&str>> = steps.iter().map(|s| s.args.as_deref()).collect();
    exec::<i64>(
        &PLAN,
        "WITH planned AS (
            SELECT * FROM unnest($3::text[], $4::text[], $5::text[], $6::text[]) AS p (id, name, sql, args)
         ), steps AS (
            INSERT INTO jobs.steps (run_id, id, name, kind, status)
            SELECT $1, id, name, 'run', 'queued' FROM planned
            ON CONFLICT (run_id, id) DO NOTHING
         ), tasks AS (
            INSERT INTO jobs.queue (run_id, step_id, function_id, due_at, sql, args)
            SELECT $1, id, $2, now(), sql, args::jsonb FROM planned
            ON CONFLICT (run_id, step_id) DO NOTHING
            RETURNING 1
         )
         UPDATE jobs.queue SET claimed_by = NULL, claims = 0,
                pending_steps = pending_steps + (SELECT count(*) FROM tasks),
                due_at = CASE WHEN pending_steps + (SELECT count(*) FROM tasks) > 0
                              THEN 'infinity'::timestamptz ELSE now() END
         WHERE run_id = $1 AND step_id = ''
         RETURNING (SELECT count(*) FROM tasks)",
        vec![run.into(), function.into(), ids.into(), names.into(), sqls.into(), args.into()],
    )
    .unwrap_or(0)
}

/// A parallel step is done (or failed for good): its task goes, and the run is
/// due again when it was the last. Returns whether the run is due.
pub fn task_done(run: pgrx::Uuid, step: &str) -> bool {
    exec::<bool>(
        &TASK_DONE,
        "WITH done AS (DELETE FROM jobs.queue WHERE run_id = $1 AND step_id = $2)
         UPDATE jobs.queue SET pending_steps = pending_steps - 1,
                due_at = CASE WHEN pending_steps <= 1 THEN now() ELSE due_at END
         WHERE run_id = $1 AND step_id = ''
         RETURNING pending_steps = 0",
        vec![run.into(), step.into()],
    )
    .unwrap_or(false)
}
