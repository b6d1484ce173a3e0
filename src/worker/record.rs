//! Writes to the history and the queue, in the executor's transaction. Each is
//! one prepared statement.

use std::thread::LocalKey;
use std::time::Duration;

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::JsonB;

use super::invoke::Failure;
use crate::api::{prepared, StatementCache};
use crate::replay::{PlannedInvoke, PlannedWait};

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

/// Work was put back with a due time: an idle executor recomputes its timer at
/// commit, so the time is kept even while this executor stays busy.
fn rearm_timers() {
    crate::shmem::wake_workers_at_commit(1);
}

fn failure_json(failure: &Failure) -> DatumWithOid<'static> {
    JsonB(failure.to_json()).into()
}

fn millis(duration: Duration) -> DatumWithOid<'static> {
    (duration.as_secs_f64() * 1000.0).into()
}

thread_local! {
    static FINISH: StatementCache = const { StatementCache::new() };
    static RETRY: StatementCache = const { StatementCache::new() };
    static LOOK_BACK: StatementCache = const { StatementCache::new() };
    static WAIT: StatementCache = const { StatementCache::new() };
    static INVOKE: StatementCache = const { StatementCache::new() };
    static HOLD: StatementCache = const { StatementCache::new() };
    static ATTEMPT_ERROR: StatementCache = const { StatementCache::new() };
    static INTERRUPTED_ATTEMPTS: StatementCache = const { StatementCache::new() };
    static STEP: StatementCache = const { StatementCache::new() };
    static RELEASE: StatementCache = const { StatementCache::new() };
    static RELEASE_CLAIMED: StatementCache = const { StatementCache::new() };
    static SLEEP: StatementCache = const { StatementCache::new() };
    static PLAN: StatementCache = const { StatementCache::new() };
    static TASK_DONE: StatementCache = const { StatementCache::new() };
    static FORGET: StatementCache = const { StatementCache::new() };
}

/// Removes finished runs with their steps, attempt errors and batches
/// (retention, `keep: "failures"`); returns how many runs went. Their events
/// go later, once no run needs them (worker/retention.rs).
pub fn forget_runs(runs: Vec<pgrx::Uuid>) -> i64 {
    exec::<i64>(
        &FORGET,
        "WITH runs AS (DELETE FROM jobs.runs WHERE id = ANY ($1) RETURNING 1),
              steps AS (DELETE FROM jobs.steps WHERE run_id = ANY ($1)),
              errors AS (DELETE FROM jobs.attempt_errors WHERE run_id = ANY ($1)),
              batch AS (DELETE FROM jobs.batch_events WHERE run_id = ANY ($1))
         SELECT count(*) FROM runs",
        vec![runs.into()],
    )
    .unwrap_or(0)
}

/// A run's end, written with the other ends of its round (`write_finished`).
struct Finished {
    run: pgrx::Uuid,
    /// Its function has flow control: singleton, debounce or batch state may name it.
    flow: bool,
    /// Its function keeps failures only, and it completed: it goes at once.
    forget: bool,
    status: &'static str,
    output: Option<String>,
    error: Option<JsonB>,
}

thread_local! {
    static FINISHED: std::cell::RefCell<Vec<Finished>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The run finished (`completed`, `failed` or `cancelled`). The end is written
/// by `write_finished`, in the same transaction, with the other runs that end
/// in this round: one statement instead of one per run.
pub fn finish(
    run: pgrx::Uuid,
    flow: bool,
    keep_failures_only: bool,
    status: &'static str,
    output: Option<String>,
    failure: Option<&Failure>,
) {
    FINISHED.with(|finished| {
        finished.borrow_mut().push(Finished {
            run,
            flow,
            forget: keep_failures_only && status == "completed",
            status,
            output,
            error: failure.map(|f| JsonB(f.to_json())),
        })
    });
}

/// Writes the ends of runs recorded by `finish`: their queue entries and waits
/// go, and the runs that invoked them resume.
pub fn write_finished() {
    let finished = FINISHED.with(|finished| std::mem::take(&mut *finished.borrow_mut()));
    if finished.is_empty() {
        return;
    }
    let (mut runs, mut statuses, mut outputs, mut errors) = (vec![], vec![], vec![], vec![]);
    let (mut with_flow, mut forgotten) = (vec![], vec![]);
    for end in finished {
        if end.flow {
            with_flow.push(end.run);
        }
        if end.forget {
            forgotten.push(end.run);
        }
        runs.push(end.run);
        statuses.push(end.status);
        outputs.push(end.output);
        errors.push(end.error);
    }
    let resumed = exec::<i64>(
        &FINISH,
        "WITH ended AS (
                SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[])
                    AS e (run_id, status, output, error)),
              done AS (DELETE FROM jobs.queue q WHERE q.run_id = ANY ($1)),
              -- Flow-control state that a run of a function with flow control holds.
              singleton AS (DELETE FROM jobs.singletons s WHERE s.run_id = ANY ($5)),
              debounce AS (DELETE FROM jobs.debounces d WHERE d.run_id = ANY ($5)),
              batch AS (DELETE FROM jobs.batches b WHERE b.run_id = ANY ($5)),
              gone AS (DELETE FROM jobs.waits w WHERE w.run_id = ANY ($1)),
              -- A request in flight is not answered into the history any more.
              requests AS (DELETE FROM jobs.fetches x WHERE x.run_id = ANY ($1)),
              run AS (UPDATE jobs.runs r SET status = e.status, output = e.output::jsonb, error = e.error,
                             ended_at = clock_timestamp()
                      FROM ended e WHERE r.id = ANY ($1) AND r.id = e.run_id
                      RETURNING r.parent_run_id, r.parent_step_id, e.status, e.output, e.error),
              parent AS (UPDATE jobs.steps s
                         SET status = CASE WHEN run.status = 'completed' THEN 'completed' ELSE 'failed' END,
                             output = run.output::jsonb, error = run.error, ended_at = clock_timestamp()
                         FROM run WHERE s.run_id = ANY (ARRAY(SELECT parent_run_id FROM run))
                                    AND s.run_id = run.parent_run_id AND s.id = run.parent_step_id
                                    AND s.status = 'waiting'
                         RETURNING s.run_id),
              parent_due AS (UPDATE jobs.queue q SET due_at = now()
                             WHERE q.run_id = ANY (ARRAY(SELECT run_id FROM parent)) AND q.step_id = ''
                             RETURNING 1)
         SELECT count(*) FROM parent_due",
        vec![
            runs.into(),
            statuses.into(),
            outputs.into(),
            errors.into(),
            with_flow.into(),
        ],
    )
    .unwrap_or(0);
    if resumed > 0 {
        crate::shmem::wake_workers_at_commit(resumed as usize);
    }
    if !forgotten.is_empty() {
        forget_runs(forgotten);
    }
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
    rearm_timers();
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

/// Records the interrupted attempt of each of `runs`, just claimed again:
/// the one before the attempt the claim started.
pub fn interrupted_attempts(runs: Vec<pgrx::Uuid>) {
    exec::<bool>(
        &INTERRUPTED_ATTEMPTS,
        "INSERT INTO jobs.attempt_errors (run_id, step_id, attempt, sqlstate, message, detail, hint)
         SELECT r.id, '', r.attempt - 1, $2->>'sqlstate', $2->>'message', $2->>'detail', $2->>'hint'
         FROM jobs.runs r WHERE r.id = ANY ($1)
         ON CONFLICT DO NOTHING",
        vec![runs.into(), failure_json(&Failure::interrupted())],
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

/// Records a step's outcome; returns how many attempts it has had.
pub fn step(update: &StepUpdate) -> i32 {
    exec::<i32>(
        &STEP,
        "INSERT INTO jobs.steps AS s (run_id, id, name, kind, status, attempts, output, error, started_at, ended_at)
         VALUES ($1, $2, $3, $4, $5, $6::int, $7::text::jsonb, $8, clock_timestamp() - $9 * interval '1 millisecond',
                 CASE WHEN $5 IN ('completed', 'failed') THEN clock_timestamp() END)
         ON CONFLICT (run_id, id) DO UPDATE SET
             status = excluded.status, attempts = s.attempts + $6::int, output = excluded.output,
             error = coalesce(excluded.error, s.error), ended_at = excluded.ended_at
         RETURNING s.attempts",
        vec![
            update.run.into(),
            update.id.into(),
            update.name.into(),
            update.kind.into(),
            update.status.into(),
            i32::from(update.attempted).into(),
            update.output.as_deref().into(),
            update.failure.map_or(DatumWithOid::null::<JsonB>(), failure_json),
            millis(update.elapsed),
        ],
    )
    .unwrap_or(0)
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
    rearm_timers();
}

/// Gives back items this executor claimed and another took over, where the
/// other did not get them: nobody holds them then, and they run again.
pub fn release_claimed(items: Vec<(pgrx::Uuid, String)>) {
    let (runs, steps): (Vec<pgrx::Uuid>, Vec<String>) = items.into_iter().unzip();
    exec::<bool>(
        &RELEASE_CLAIMED,
        "UPDATE jobs.queue q SET claimed_by = NULL
         FROM unnest($1::uuid[], $2::text[]) AS t (run_id, step_id)
         WHERE (q.run_id, q.step_id) = (t.run_id, t.step_id) AND q.claimed_by = $3",
        vec![
            runs.into(),
            steps.into(),
            unsafe { pg_sys::MyProcPid }.into(),
        ],
    );
    rearm_timers();
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
    rearm_timers();
}

/// Queues steps planned by jobs.parallel for any executor, and fetches for
/// the fetcher, and parks the run until they are all done (a run waiting for
/// fetches alone is `waiting`). Returns how many steps were queued for executors.
pub fn plan(run: pgrx::Uuid, function: &str, steps: &[crate::replay::PlannedStep]) -> i64 {
    let ids: Vec<&str> = steps.iter().map(|s| s.id.as_str()).collect();
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    let sqls: Vec<&str> = steps.iter().map(|s| s.sql.as_str()).collect();
    let args: Vec<Option<&str>> = steps.iter().map(|s| s.args.as_deref()).collect();
    let fetches: Vec<Option<&str>> = steps.iter().map(|s| s.fetch.as_deref()).collect();
    exec::<i64>(
        &PLAN,
        "WITH planned AS (
            SELECT * FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
                AS p (id, name, sql, args, request)
         ), steps AS (
            INSERT INTO jobs.steps (run_id, id, name, kind, status)
            SELECT $1, id, name, CASE WHEN request IS NULL THEN 'run' ELSE 'fetch' END, 'queued' FROM planned
            ON CONFLICT (run_id, id) DO NOTHING
         ), tasks AS (
            -- Each parallel step takes the run's concurrency slots of its own.
            INSERT INTO jobs.queue (run_id, step_id, function_id, due_at, sql, args, ckey1, lim1, ckey2, lim2)
            SELECT $1, p.id, $2, now(), p.sql, p.args::jsonb, r.ckey1, r.lim1, r.ckey2, r.lim2
            FROM planned p LEFT JOIN jobs.queue r ON r.run_id = $1 AND r.step_id = ''
            WHERE p.request IS NULL
            ON CONFLICT (run_id, step_id) DO NOTHING
            RETURNING 1
         ), requests AS (
            -- A request takes no slot: the run is suspended while it is made.
            INSERT INTO jobs.fetches (run_id, step_id, function_id, spec, due_at)
            SELECT $1, p.id, $2, p.request::jsonb, now() FROM planned p WHERE p.request IS NOT NULL
            ON CONFLICT (run_id, step_id) DO NOTHING
            RETURNING 1
         ), status AS (
            UPDATE jobs.runs SET status = 'waiting'
            WHERE id = $1 AND NOT EXISTS (SELECT FROM planned WHERE request IS NULL)
         )
         UPDATE jobs.queue SET claimed_by = NULL, claims = 0,
                pending_steps = pending_steps + (SELECT count(*) FROM tasks) + (SELECT count(*) FROM requests),
                due_at = CASE WHEN pending_steps + (SELECT count(*) FROM tasks) + (SELECT count(*) FROM requests) > 0
                              THEN 'infinity'::timestamptz ELSE now() END
         WHERE run_id = $1 AND step_id = ''
         RETURNING (SELECT count(*) FROM tasks)",
        vec![
            run.into(),
            function.into(),
            ids.into(),
            names.into(),
            sqls.into(),
            args.into(),
            fetches.into(),
        ],
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

/// The earliest event that satisfies the wait among those sent since the run
/// started, not taken by an earlier wait of the run: it arrived before the
/// run reached the wait, and still counts.
pub fn look_back(run: pgrx::Uuid, wait: &PlannedWait) -> Option<String> {
    exec::<String>(
        &LOOK_BACK,
        "SELECT a.doc::text
         FROM jobs.runs r
         JOIN jobs.functions f ON f.id = r.function_id
         JOIN jobs.events t ON t.id = r.event_id
         CROSS JOIN LATERAL (SELECT jsonb_build_object('id', t.id, 'name', t.name, 'data', t.data, 'ts', t.ts) AS doc) trigger
         JOIN jobs.events e ON e.name = $2 AND e.received_at >= r.created_at AND e.duplicate_of IS NULL
                           AND (e.owner IS NULL OR pg_has_role(f.owner, e.owner, 'MEMBER'))
         CROSS JOIN LATERAL (SELECT jsonb_build_object('id', e.id, 'name', e.name, 'data', e.data, 'ts', e.ts) AS doc) a
         WHERE r.id = $1
           AND (cardinality($3::text[]) = 0 OR a.doc #> $3 = trigger.doc #> $3)
           AND ($4::text IS NULL OR jobs._expr_true($4, jsonb_build_object('event', trigger.doc, 'async', a.doc)))
           AND NOT EXISTS (SELECT FROM jobs.steps s WHERE s.run_id = r.id AND s.kind = 'wait'
                           AND s.output->>'id' = e.id::text)
         ORDER BY e.received_at
         LIMIT 1",
        vec![
            run.into(),
            wait.event.as_str().into(),
            wait.match_path.clone().unwrap_or_default().into(),
            wait.condition.as_deref().into(),
        ],
    )
}

/// Parks the run until an event matches the wait (jobs.send finds it) or the
/// timeout passes.
pub fn wait(run: pgrx::Uuid, wait: &PlannedWait) {
    exec::<bool>(
        &WAIT,
        "WITH trigger AS (
            SELECT jsonb_build_object('id', t.id, 'name', t.name, 'data', t.data, 'ts', t.ts) AS doc
            FROM jobs.runs r JOIN jobs.events t ON t.id = r.event_id WHERE r.id = $1
         ), waiting AS (
            INSERT INTO jobs.waits AS w (run_id, step_id, kind, event, match_path, match_value, condition, trigger, expires_at)
            SELECT $1, $5, 'event', $2, $3, CASE WHEN cardinality($3) = 0 THEN 'true' ELSE doc #> $3 END, $4::text,
                   CASE WHEN $4 IS NOT NULL THEN doc END, clock_timestamp() + $6 * interval '1 millisecond'
            FROM trigger
            ON CONFLICT (run_id, step_id) DO UPDATE SET expires_at = excluded.expires_at
         ), path AS (
            INSERT INTO jobs.wait_paths (event, match_path) VALUES ($2, $3)
            ON CONFLICT DO NOTHING
         ), step AS (
            INSERT INTO jobs.steps AS s (run_id, id, name, kind, status) VALUES ($1, $5, $7, 'wait', 'waiting')
            ON CONFLICT (run_id, id) DO UPDATE SET status = 'waiting'
         ), later AS (
            UPDATE jobs.queue SET claimed_by = NULL, claims = 0,
                   due_at = clock_timestamp() + $6 * interval '1 millisecond'
            WHERE run_id = $1 AND step_id = ''
         )
         UPDATE jobs.runs SET status = 'waiting' WHERE id = $1",
        vec![
            run.into(),
            wait.event.as_str().into(),
            wait.match_path.clone().unwrap_or_default().into(),
            wait.condition.as_deref().into(),
            wait.id.as_str().into(),
            (wait.timeout_ms as f64).into(),
            wait.name.as_str().into(),
        ],
    );
    rearm_timers();
}

/// Parks the run until the run it invoked finishes, or the timeout passes.
pub fn invoked(run: pgrx::Uuid, invoke: &PlannedInvoke) {
    exec::<bool>(
        &INVOKE,
        "WITH step AS (
            INSERT INTO jobs.steps AS s (run_id, id, name, kind, status, attempts)
            VALUES ($1, $2, $3, 'invoke', 'waiting', 1)
            ON CONFLICT (run_id, id) DO UPDATE SET status = 'waiting', attempts = s.attempts + 1
         ), later AS (
            UPDATE jobs.queue SET claimed_by = NULL, claims = 0,
                   due_at = coalesce(clock_timestamp() + $4 * interval '1 millisecond', 'infinity')
            WHERE run_id = $1 AND step_id = ''
         )
         UPDATE jobs.runs SET status = 'waiting' WHERE id = $1",
        vec![
            run.into(),
            invoke.id.as_str().into(),
            invoke.name.as_str().into(),
            invoke.timeout_ms.map(|ms| ms as f64).into(),
        ],
    );
    rearm_timers();
}
