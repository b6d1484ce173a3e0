//! Advancing a run: call its handler (replaying the steps it has done), then
//! do what the invocation stopped for: a step, a sleep, parallel steps.

use std::collections::HashMap;
use std::ffi::CString;
use std::time::{Duration, Instant};

use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;

use super::invoke::{self, Failure, UserContext};
use super::record::{self, StepUpdate};
use super::report_activity;
use crate::api;
use crate::api::{prepared, StatementCache};
use crate::backoff::Backoff;
use crate::errors::{NON_RETRIABLE, RETRY_AFTER, STEP_FAILED};
use crate::replay::{
    self, Memo, Operation, PlannedInvoke, PlannedStep, PlannedWait, Replay, StepError,
};
use crate::shmem;

thread_local! {
    static END_SUSPENSIONS: StatementCache = const { StatementCache::new() };
    static FIND_CANCELLED: StatementCache = const { StatementCache::new() };
    static LOAD_STEPS: StatementCache = const { StatementCache::new() };
}

#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// A step committed with this round; the run goes on in the next one.
    Continue,
    /// The run finished, or waits in the queue (retry, sleep, parallel steps, pause).
    Done,
    /// Its code waited for a lock while other runs' work waited for the same
    /// commit: rolled back, not an attempt; it goes on in a transaction alone.
    Alone,
}

thread_local! {
    /// Set when the round holds a lock senders wait for (see `wait_for_event`):
    /// the executor commits it before advancing another run.
    static COMMIT_NOW: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the round must commit now; asking clears it.
pub fn must_commit_now() -> bool {
    COMMIT_NOW.with(|c| c.replace(false))
}

/// What the executor knows about how a function's failures are retried.
pub struct Policy {
    pub max_attempts: i32,
    pub backoff: Backoff,
}

impl Policy {
    pub fn new(max_attempts: i32, backoff: &str) -> Policy {
        Policy {
            max_attempts,
            backoff: Backoff::from_stored(&serde_json::from_str(backoff).unwrap_or_default()),
        }
    }

    /// Whether failed attempt `attempt` (0-based) is the last one.
    pub fn is_final(&self, attempt: i32, failure: &Failure) -> bool {
        failure.sqlstate == NON_RETRIABLE || attempt + 1 >= self.max_attempts
    }

    /// How long to wait after failed attempt `attempt`: what jobs.retry_after
    /// asked for, or the function's backoff.
    pub fn delay(&self, attempt: i32, failure: &Failure) -> Duration {
        let asked = (failure.sqlstate == RETRY_AFTER)
            .then(|| {
                failure
                    .detail
                    .as_deref()?
                    .strip_prefix("retry after ")?
                    .strip_suffix(" seconds")?
                    .parse::<f64>()
                    .ok()
            })
            .flatten()
            .filter(|seconds| seconds.is_finite() && *seconds >= 0.0);
        match asked {
            Some(seconds) => {
                Duration::from_secs_f64(seconds.min(crate::duration::MAX.as_secs_f64()))
            }
            None => self.backoff.delay(attempt as u32, random_fraction()),
        }
    }
}

/// A uniform number in [0, 1) for jitter, from the standard library's random hash keys.
pub(super) fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    (RandomState::new().hash_one(Instant::now()) >> 11) as f64 / (1u64 << 53) as f64
}

/// A claimed run, with what advancing it needs.
pub struct LoadedRun {
    pub id: pgrx::Uuid,
    /// Its place in the executor's published batch (shmem), to mark it started.
    pub batch_index: usize,
    /// The concurrency keys whose slots it holds while claimed.
    pub keys: Vec<String>,
    /// Its function has flow control.
    has_flow: bool,
    interrupted: bool,
    function_id: String,
    /// The function's owner, whose functions alone hear about the run's end.
    function_owner: pg_sys::Oid,
    attempt: i32,
    function_exists: bool,
    paused: bool,
    policy: Policy,
    user: UserContext,
    call: Option<CString>,
    handler: String,
    /// The handler now belongs to another role than the one that owned it
    /// when the function was defined.
    handler_replaced: bool,
    ctx: String,
    /// Why the run is being cancelled, when it is.
    cancelled: Option<String>,
    /// A step of it is suspended (sleep, wait, invoke) and ends now.
    suspended: bool,
    memos: HashMap<String, Memo>,
    /// A rerun's step and the args (JSON text) that replace the handler's.
    args_override: Option<(String, String)>,
    /// Its function's `keep: "failures"`: once completed, it is removed.
    keep_failures_only: bool,
}

/// A stored step, from a row of (run_id, id, status, attempts, output,
/// error sqlstate, error message): its run, its id, its status and the memo
/// it stands for.
fn stored_step(row: &pgrx::spi::SpiHeapTupleData) -> (pgrx::Uuid, String, String, Memo) {
    let status: String = row.get(3).ok().flatten().expect("status");
    let attempts = row.get(4).ok().flatten().expect("attempts");
    let memo = match status.as_str() {
        "completed" => Memo::Completed(row.get(5).ok().flatten()),
        "failed" => Memo::Failed(StepError {
            sqlstate: row.get(6).ok().flatten().unwrap_or_default(),
            message: row.get(7).ok().flatten().unwrap_or_default(),
            attempts,
        }),
        _ => Memo::Pending { attempts },
    };
    (
        row.get(1).ok().flatten().expect("run_id"),
        row.get(2).ok().flatten().expect("id"),
        status,
        memo,
    )
}

/// The end of the claim statement (executor.rs): for each claimed row
/// (`claimed c`: run_id, step_id, claims, due_at, cancelled), what advancing
/// its run needs, read by `claimed_run`; NULL for a parallel step's row. The
/// statement sees the runs as they were before it: the attempt the claim
/// starts is computed, and a run not started before has no steps yet.
/// `$new_attempt` says whether the claim starts a new attempt of an
/// interrupted run (a claim does; taking over another executor's claim does not).
macro_rules! claimed_runs_select {
    ($new_attempt:literal) => {
        concat!(
            "SELECT c.run_id, c.step_id, c.claims,
                e.id IS NOT NULL, r.started_at IS NULL AND r.rerun_step IS NULL, r.function_id, r.attempt + ",
            $new_attempt,
            "::int,
                f.id IS NOT NULL, coalesce(f.paused, false), coalesce(f.max_attempts, 1),
                coalesce(f.backoff::text, '{}'), (extract(epoch FROM f.max_runtime) * 1000)::int8,
                f.owner::oid, coalesce(f.handler, ''),
                quote_ident(n.nspname) || '.' || quote_ident(p.proname),
                p.prorettype = 'pg_catalog.void'::pg_catalog.regtype,
                jsonb_build_object('event', ev.event, 'events',
                    CASE WHEN f.flow ? 'batch' THEN coalesce((
                        SELECT jsonb_agg(jsonb_build_object('id', be_e.id, 'name', be_e.name, 'data', be_e.data,
                                                            'ts', be_e.ts) ORDER BY be.position)
                        FROM jobs.batch_events be JOIN jobs.events be_e ON be_e.id = be.event_id
                        WHERE be.run_id = r.id), jsonb_build_array(ev.event))
                    ELSE jsonb_build_array(ev.event) END,
                    'run_id', r.id, 'function_id', r.function_id,
                    'attempt', r.attempt + ",
            $new_attempt,
            "::int)::text,
                c.cancelled::text, p.proowner IS DISTINCT FROM f.handler_owner::oid,
                coalesce(r.from_system_event, false), c.ckey1, c.ckey2, f.flow IS NOT NULL,
                r.rerun_step, r.rerun_input::text, f.keep = 'failures'
         FROM claimed c
         LEFT JOIN jobs.runs r ON r.id = c.run_id AND c.step_id = ''
         LEFT JOIN jobs.events e ON e.id = r.event_id
         LEFT JOIN LATERAL (SELECT jsonb_build_object(
                'id', e.id, 'name', e.name, 'data', e.data, 'ts', e.ts) AS event) ev ON true
         LEFT JOIN jobs.functions f ON f.id = r.function_id
         LEFT JOIN pg_proc p ON p.oid = to_regprocedure(f.handler)
         LEFT JOIN pg_namespace n ON n.oid = p.pronamespace
         ORDER BY c.due_at"
        )
    };
}
pub(crate) use claimed_runs_select;

/// Run `id` from its row of `claimed_runs_select`, if it (with its event) is
/// still there.
pub fn claimed_run(
    row: &pgrx::spi::SpiHeapTupleData,
    id: pgrx::Uuid,
    interrupted: bool,
    batch_index: usize,
    keys: Vec<String>,
) -> Option<ClaimedRun> {
    if row.get::<bool>(4).ok().flatten() != Some(true) {
        return None;
    }
    let max_runtime: Option<i64> = row.get(12).ok().flatten();
    let name: Option<String> = row.get(15).ok().flatten();
    let returns_void: Option<bool> = row.get(16).ok().flatten();
    let max_attempts: i32 = row.get(10).ok().flatten().expect("max_attempts");
    let backoff: String = row.get(11).ok().flatten().expect("backoff");
    let owner: Option<pg_sys::Oid> = row.get(13).ok().flatten();
    let from_system_event: bool = row.get(20).ok().flatten().unwrap_or(false);
    Some(ClaimedRun {
        fresh: row.get(5).ok().flatten().expect("fresh"),
        run: LoadedRun {
            id,
            batch_index,
            keys,
            has_flow: row.get(23).ok().flatten().unwrap_or(false),
            interrupted,
            function_id: row.get(6).ok().flatten().expect("function_id"),
            function_owner: owner.unwrap_or(pg_sys::Oid::INVALID),
            attempt: row.get(7).ok().flatten().expect("attempt"),
            function_exists: row.get(8).ok().flatten().expect("exists"),
            paused: row.get(9).ok().flatten().expect("paused"),
            policy: Policy::new(max_attempts, &backoff),
            user: UserContext::new(owner, max_runtime, from_system_event),
            call: name.map(|n| invoke::handler_call(&n, returns_void == Some(true))),
            handler: row.get(14).ok().flatten().expect("handler"),
            handler_replaced: row.get(19).ok().flatten().unwrap_or(false),
            ctx: row.get(17).ok().flatten().expect("ctx"),
            cancelled: row.get(18).ok().flatten(),
            suspended: false,
            memos: HashMap::new(),
            args_override: row
                .get::<String>(24)
                .ok()
                .flatten()
                .zip(row.get::<String>(25).ok().flatten()),
            keep_failures_only: row.get(26).ok().flatten().unwrap_or(false),
        },
    })
}

/// A run as its claim read it.
pub struct ClaimedRun {
    /// Not started before this claim, so without steps.
    fresh: bool,
    run: LoadedRun,
}

impl ClaimedRun {
    pub fn set_batch_index(&mut self, index: usize) {
        self.run.batch_index = index;
    }
}

/// Completes the claimed runs with the steps they have done. It only reads,
/// so that runs not started yet can still be taken over by another executor
/// (see executor.rs); what suspended a run ends when it is advanced.
pub fn load(claimed: Vec<ClaimedRun>) -> Vec<LoadedRun> {
    let ids: Vec<pgrx::Uuid> = claimed
        .iter()
        .filter(|c| !c.fresh)
        .map(|c| c.run.id)
        .collect();
    let mut loaded: Vec<LoadedRun> = claimed.into_iter().map(|c| c.run).collect();
    if ids.is_empty() {
        return loaded;
    }
    let position: HashMap<pgrx::Uuid, usize> = loaded
        .iter()
        .enumerate()
        .map(|(i, run)| (run.id, i))
        .collect();
    Spi::connect(|client| {
        let steps = prepared(
            &LOAD_STEPS,
            client,
            "SELECT run_id, id, status, attempts, output::text, error->>'sqlstate', error->>'message'
             FROM jobs.steps WHERE run_id = ANY ($1)",
            &[UUIDARRAYOID.value()],
        );
        for row in client
            .select(steps, None, &[ids.into()])
            .expect("loading steps")
        {
            let (run, id, status, memo) = stored_step(&row);
            let Some(loaded) = position.get(&run).map(|&i| &mut loaded[i]) else {
                continue;
            };
            loaded.suspended |= matches!(status.as_str(), "sleeping" | "waiting");
            loaded.memos.insert(id, memo);
        }
    });
    loaded
}

/// Whatever suspended the run is over, since it was due: a sleep ended, a
/// wait or an invoke timed out (an event or a finished run would have ended
/// the step already); such steps end now.
fn end_suspensions(run: &mut LoadedRun) {
    Spi::connect_mut(|client| {
        let ended = prepared(
            &END_SUSPENSIONS,
            client,
            "WITH timed_out AS (
                DELETE FROM jobs.waits w
                WHERE w.run_id = $1 AND w.kind = 'event' AND w.expires_at <= now()
                RETURNING w.run_id, w.step_id
             )
             UPDATE jobs.steps s SET
                status = CASE WHEN s.kind = 'invoke' THEN 'failed' ELSE 'completed' END,
                error = CASE WHEN s.kind = 'invoke' THEN jsonb_build_object(
                    'sqlstate', '57014', 'message', 'the invoked run did not finish in time') END,
                ended_at = clock_timestamp()
             WHERE s.run_id = $1
               AND (s.status = 'sleeping' OR (s.status = 'waiting' AND s.kind = 'invoke')
                    OR (s.run_id, s.id) IN (SELECT run_id, step_id FROM timed_out))
             RETURNING s.run_id, s.id, s.status, s.attempts, s.output::text,
                       s.error->>'sqlstate', s.error->>'message'",
            &[UUIDOID.value()],
        );
        for row in client
            .update(ended, None, &[run.id.into()])
            .expect("ending suspensions")
        {
            let (_, id, _, memo) = stored_step(&row);
            run.memos.insert(id, memo);
        }
    });
}

/// Runs carried from the last round are not loaded again; only whether
/// someone cancelled them meanwhile is new (`jobs.cancel_run`,
/// `delete_function`, `cancel_on`).
pub fn check_cancellations(runs: &mut [LoadedRun]) {
    if runs.is_empty() {
        return;
    }
    let ids: Vec<pgrx::Uuid> = runs.iter().map(|r| r.id).collect();
    let cancelled: HashMap<pgrx::Uuid, String> = Spi::connect(|client| {
        let find = prepared(
            &FIND_CANCELLED,
            client,
            "SELECT run_id, cancelled::text FROM jobs.queue
             WHERE run_id = ANY ($1) AND step_id = '' AND cancelled IS NOT NULL",
            &[UUIDARRAYOID.value()],
        );
        client
            .select(find, None, &[ids.into()])
            .expect("looking for cancelled runs")
            .map(|row| {
                (
                    row.get(1).ok().flatten().expect("run_id"),
                    row.get(2).ok().flatten().expect("cancelled"),
                )
            })
            .collect()
    });
    for run in runs {
        if let Some(reason) = cancelled.get(&run.id) {
            run.cancelled = Some(reason.clone());
        }
    }
}

pub fn advance(run: &mut LoadedRun) -> Progress {
    if let Some(reason) = &run.cancelled {
        let reason: serde_json::Value = serde_json::from_str(reason).unwrap_or_default();
        let message = reason
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("cancelled");
        let mut failure = Failure::new("57014", message);
        failure.detail = Some(reason.to_string());
        finish(run, "cancelled", None, Some(&failure));
        return Progress::Done;
    }
    if !run.function_exists {
        finish(
            run,
            "cancelled",
            None,
            Some(&Failure::new("57014", "function deleted")),
        );
        return Progress::Done;
    }
    if run.paused {
        record::hold(run.id, "");
        return Progress::Done;
    }
    if std::mem::take(&mut run.suspended) {
        end_suspensions(run);
    }
    if std::mem::take(&mut run.interrupted) {
        // The claim counted and recorded the interrupted attempt.
        if run.attempt >= run.policy.max_attempts {
            finish(run, "failed", None, Some(&Failure::interrupted()));
            return Progress::Done;
        }
    }
    if run.handler_replaced && run.call.is_some() {
        // Dropped and created again by someone else: not the code the owner chose.
        let failure = Failure::new(
            "42501",
            format!(
                "handler {} is not the one the function was defined with: it belongs to another role now; define the function again to use it",
                run.handler
            ),
        );
        return handler_failed(run, failure);
    }
    let Some(call) = &run.call else {
        let failure = Failure::new("42883", format!("handler {} does not exist", run.handler));
        return handler_failed(run, failure);
    };
    report_activity(
        pg_sys::BackendState::STATE_RUNNING,
        &format!("run {} of {}", run.id, run.function_id),
        Some(run.id),
    );
    let mut replay = Replay::new(run.user.owner.to_u32(), std::mem::take(&mut run.memos));
    if let Some((step, args)) = &run.args_override {
        replay = replay.with_args_override(step.clone(), args.clone());
    }
    let (result, memos, operation) =
        replay::during(replay, || invoke::call_handler(&run.user, call, &run.ctx));
    run.memos = memos;
    if let Err(failure) = &result {
        if failure.isolate {
            return Progress::Alone;
        }
        if failure.cancelled {
            return cancel_now(run);
        }
    }
    match operation {
        None => match result {
            Ok(output) => {
                finish(run, "completed", output, None);
                Progress::Done
            }
            Err(failure) => handler_failed(run, failure),
        },
        Some(Operation::Run(step)) => run_step(run, step),
        Some(Operation::Sleep { id, name, until_ms }) => sleep(run, &id, &name, until_ms),
        Some(Operation::Parallel(steps)) => {
            let queued = record::plan(run.id, &run.function_id, &steps);
            shmem::wake_workers_at_commit(queued as usize);
            if steps.iter().any(|step| step.fetch.is_some()) {
                shmem::wake_fetcher_at_commit();
            }
            Progress::Done
        }
        Some(Operation::Wait(wait)) => wait_for_event(run, &wait),
        Some(Operation::Invoke(invoke)) => start_invoke(run, &invoke),
    }
}

/// Records the end of the run and tells whoever listens: the
/// `jobs/function.*` events, and a run that invoked this one.
fn finish(
    run: &LoadedRun,
    status: &'static str,
    output: Option<String>,
    failure: Option<&Failure>,
) {
    let event = || {
        serde_json::from_str::<serde_json::Value>(&run.ctx)
            .ok()
            .and_then(|mut ctx| ctx.get_mut("event").map(serde_json::Value::take))
            .unwrap_or_default()
    };
    record::finish(
        run.id,
        run.has_flow,
        run.keep_failures_only,
        status,
        output.clone(),
        failure,
    );
    if run.user.from_system_event {
        // The loop rule: a run that a jobs/function.* event started (or one
        // descending from such a run) sends none of its own.
        return;
    }
    let error = || failure.map(Failure::to_json).unwrap_or_default();
    let owner = run.function_owner;
    api::events::emit("jobs/function.finished", owner, || {
        let mut finished = serde_json::json!({
            "function_id": run.function_id, "run_id": run.id.to_string(), "event": event(),
        });
        match status {
            "completed" => {
                finished["output"] = output
                    .as_deref()
                    .and_then(|o| serde_json::from_str(o).ok())
                    .unwrap_or_default()
            }
            _ => finished["error"] = error(),
        }
        finished
    });
    let specific = || {
        serde_json::json!({
            "function_id": run.function_id, "run_id": run.id.to_string(), "event": event(), "error": error(),
        })
    };
    match status {
        "failed" => api::events::emit("jobs/function.failed", owner, specific),
        "cancelled" => api::events::emit("jobs/function.cancelled", owner, specific),
        _ => 0,
    };
}

/// `jobs.cancel_run` interrupted the run's code: it ends cancelled, for the
/// reason recorded in its queue entry.
fn cancel_now(run: &mut LoadedRun) -> Progress {
    check_cancellations(std::slice::from_mut(run));
    let reason: serde_json::Value = run
        .cancelled
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_else(|| serde_json::json!({"message": "cancelled by jobs.cancel_run"}));
    let message = reason
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or("cancelled")
        .to_string();
    let mut failure = Failure::new("57014", format!("{message} (its code was interrupted)"));
    failure.detail = Some(reason.to_string());
    finish(run, "cancelled", None, Some(&failure));
    Progress::Done
}

/// Registers the wait, unless an event sent since the run started already
/// satisfies it. Holding the event name's lock exclusively meanwhile (senders
/// hold it shared until they commit) makes the look-back and the registration
/// one moment for senders: an event is either seen here or finds the wait.
fn wait_for_event(run: &mut LoadedRun, wait: &PlannedWait) -> Progress {
    if !api::events::lock_event_name(&wait.event, true) {
        // A send of this name is in flight; try again in a moment rather than
        // block (and block every later sender of the name behind us).
        record::release(run.id, "", Duration::from_millis(10));
        return Progress::Done;
    }
    let update = StepUpdate {
        run: run.id,
        id: &wait.id,
        name: &wait.name,
        kind: "wait",
        status: "completed",
        attempted: false,
        output: None,
        failure: None,
        elapsed: Duration::ZERO,
    };
    COMMIT_NOW.with(|c| c.set(true));
    match record::look_back(run.id, wait) {
        Some(event) => {
            record_step(
                run,
                StepUpdate {
                    output: Some(event),
                    ..update
                },
            );
            Progress::Continue
        }
        None => {
            record::wait(run.id, wait);
            Progress::Done
        }
    }
}

fn start_invoke(run: &mut LoadedRun, invoke: &PlannedInvoke) -> Progress {
    let origin = api::events::Origin {
        invoker: Some(run.user.owner),
        parent: Some((run.id, invoke.id.as_str())),
        from_system_event: run.user.from_system_event,
        rerun: None,
    };
    let data = api::types::JsonbDatum::parse(&invoke.data);
    let failure = match api::events::start_run(
        &invoke.function_id,
        "jobs/function.invoked",
        data,
        origin,
    ) {
        api::events::Started::Run(_) => {
            record::invoked(run.id, invoke);
            return Progress::Done;
        }
        api::events::Started::NoSuchFunction => Failure::new(
            "42704",
            format!("function id \"{}\" does not exist", invoke.function_id),
        ),
        api::events::Started::NotAllowed => Failure::new(
            "42501",
            format!(
                "function id \"{}\" belongs to another role, which does not let this function's owner invoke it (config key \"invokers\")",
                invoke.function_id
            ),
        ),
    };
    record_step(
        run,
        StepUpdate {
            run: run.id,
            id: &invoke.id,
            name: &invoke.name,
            kind: "invoke",
            status: "failed",
            attempted: true,
            output: None,
            failure: Some(&failure),
            elapsed: Duration::ZERO,
        },
    );
    Progress::Continue
}

/// The handler raised (outside any step, or a step's failure it did not catch).
fn handler_failed(run: &LoadedRun, failure: Failure) -> Progress {
    record::attempt_error(run.id, "", run.attempt, &failure);
    if failure.sqlstate == STEP_FAILED || run.policy.is_final(run.attempt, &failure) {
        finish(run, "failed", None, Some(&failure));
    } else {
        record::retry(
            run.id,
            run.attempt,
            &failure,
            run.policy.delay(run.attempt, &failure),
        );
    }
    Progress::Done
}

fn run_step(run: &mut LoadedRun, step: PlannedStep) -> Progress {
    report_activity(
        pg_sys::BackendState::STATE_RUNNING,
        &format!("run {} of {}: step {}", run.id, run.function_id, step.id),
        Some(run.id),
    );
    let started = Instant::now();
    let result = invoke::run_step(&run.user, &step.sql, step.args.as_deref());
    let update = StepUpdate {
        run: run.id,
        id: &step.id,
        name: &step.name,
        kind: "run",
        status: "completed",
        attempted: true,
        output: None,
        failure: None,
        elapsed: started.elapsed(),
    };
    match result {
        Ok(output) => {
            record_step(run, StepUpdate { output, ..update });
            Progress::Continue
        }
        Err(failure) if failure.isolate => Progress::Alone,
        Err(failure) if failure.cancelled => {
            record::attempt_error(run.id, &step.id, step.attempts, &failure);
            cancel_now(run)
        }
        Err(failure) => {
            record::attempt_error(run.id, &step.id, step.attempts, &failure);
            if run.policy.is_final(step.attempts, &failure) {
                // The next invocation raises the failure in the handler, at this step.
                record_step(
                    run,
                    StepUpdate {
                        status: "failed",
                        failure: Some(&failure),
                        ..update
                    },
                );
                Progress::Continue
            } else {
                record_step(
                    run,
                    StepUpdate {
                        status: "retrying",
                        failure: Some(&failure),
                        ..update
                    },
                );
                record::release(run.id, "", run.policy.delay(step.attempts, &failure));
                Progress::Done
            }
        }
    }
}

/// Records a step's outcome and keeps it for the run's next invocation: in
/// the same batch, the run is not loaded again.
fn record_step(run: &mut LoadedRun, update: StepUpdate) {
    let attempts = record::step(&update);
    let memo = match (update.status, update.failure) {
        ("completed", _) => Memo::Completed(update.output),
        ("failed", Some(failure)) => Memo::Failed(StepError {
            sqlstate: failure.sqlstate.clone(),
            message: failure.message.clone(),
            attempts,
        }),
        _ => Memo::Pending { attempts },
    };
    run.memos.insert(update.id.to_string(), memo);
}

fn sleep(run: &mut LoadedRun, id: &str, name: &str, until_ms: i64) -> Progress {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let update = StepUpdate {
        run: run.id,
        id,
        name,
        kind: "sleep",
        status: "sleeping",
        attempted: false,
        output: None,
        failure: None,
        elapsed: Duration::ZERO,
    };
    if until_ms <= now_ms {
        record_step(
            run,
            StepUpdate {
                status: "completed",
                ..update
            },
        );
        return Progress::Continue;
    }
    record_step(run, update);
    record::sleep(run.id, until_ms);
    Progress::Done
}
