//! An executor: claims runnable runs from `jobs.queue`, runs their handlers
//! and records the outcome. Many run at once; `FOR UPDATE SKIP LOCKED` keeps
//! them from claiming the same run.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::JsonB;

use super::invoke::{self, Call, Failure};
use super::{attach_signal_handlers, handle_interrupts, in_transaction, report_activity, wait};
use crate::api::{prepared, StatementCache};
use crate::backoff::Backoff;
use crate::gucs;
use crate::shmem::shared;

/// Claimed runs are committed together, but never held back longer than this
/// by a slow one in the same batch.
const BATCH_COMMIT_AFTER: Duration = Duration::from_millis(20);
/// Shortest wait when work is due but was locked by another executor.
const MIN_WAIT: Duration = Duration::from_millis(5);

thread_local! {
    static CLAIM: StatementCache = const { StatementCache::new() };
    static NEXT_DUE: StatementCache = const { StatementCache::new() };
    static LOAD: StatementCache = const { StatementCache::new() };
    static COMPLETE: StatementCache = const { StatementCache::new() };
    static RETRY: StatementCache = const { StatementCache::new() };
    static FAIL: StatementCache = const { StatementCache::new() };
    static HOLD: StatementCache = const { StatementCache::new() };
    static CANCEL: StatementCache = const { StatementCache::new() };
}

#[pg_guard]
unsafe extern "C-unwind" fn vacate_slot(_code: i32, slot: pg_sys::Datum) {
    shared().workers[slot.value()].vacate();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_jobs_executor_main(arg: pg_sys::Datum) {
    let slot_index = arg.value();
    attach_signal_handlers();
    pgrx::bgworkers::BackgroundWorker::connect_worker_to_spi(Some(&gucs::database()), None);
    let slot = &shared().workers[slot_index];
    slot.occupy();
    unsafe { pg_sys::before_shmem_exit(Some(vacate_slot), arg) };
    // The executor's own statements must not resolve names through anything a
    // user could create; handlers get the default search_path back (invoke.rs).
    in_transaction(|| {
        Spi::run("SET search_path = pg_catalog, pg_temp").expect("setting search_path")
    });

    let mut backoff_cache: HashMap<String, Backoff> = HashMap::new();
    loop {
        handle_interrupts();
        // Idle before looking: a commit after this point sees it and wakes it.
        slot.set_idle(true);
        report_activity(pg_sys::BackendState::STATE_IDLE, "waiting for runs");
        let (claimed, next_due) = in_transaction(claim);
        if claimed.is_empty() {
            let poll = Duration::from_millis(gucs::POLL_INTERVAL_MS.get() as u64);
            wait(next_due.map_or(poll, |due| due.clamp(MIN_WAIT, poll)));
            continue;
        }
        slot.set_idle(false);
        execute(claimed, &mut backoff_cache);
    }
}

/// Claims up to `jobs.batch_size` due runs; when there are none, says how soon the next one is due.
fn claim() -> (Vec<pgrx::Uuid>, Option<Duration>) {
    Spi::connect_mut(|client| {
        let claim = prepared(
            &CLAIM,
            client,
            "WITH picked AS (
                SELECT run_id FROM jobs.queue
                WHERE claimed_by IS NULL AND NOT held AND due_at <= now()
                ORDER BY due_at LIMIT $1
                FOR UPDATE SKIP LOCKED
             ), claimed AS (
                UPDATE jobs.queue q SET claimed_by = $2, claims = q.claims + 1
                FROM picked WHERE q.run_id = picked.run_id
                RETURNING q.run_id, q.claims, q.due_at
             )
             UPDATE jobs.runs r SET status = 'running', attempt = claimed.claims - 1,
                    started_at = coalesce(r.started_at, now())
             FROM claimed WHERE r.id = claimed.run_id
             RETURNING r.id, claimed.due_at",
            &[INT4OID.value(), INT4OID.value()],
        );
        let mut rows: Vec<(pgrx::Uuid, TimestampWithTimeZone)> = client
            .update(
                claim,
                None,
                &[
                    gucs::BATCH_SIZE.get().into(),
                    unsafe { pg_sys::MyProcPid }.into(),
                ],
            )
            .expect("claiming runs")
            .map(|row| {
                (
                    row.get(1).ok().flatten().expect("id"),
                    row.get(2).ok().flatten().expect("due_at"),
                )
            })
            .collect();
        if !rows.is_empty() {
            rows.sort_by_key(|(_, due)| pg_sys::TimestampTz::from(*due));
            return (rows.into_iter().map(|(id, _)| id).collect(), None);
        }
        let next = prepared(
            &NEXT_DUE,
            client,
            "SELECT (extract(epoch FROM min(due_at) - clock_timestamp()) * 1000)::int8
             FROM jobs.queue WHERE claimed_by IS NULL AND NOT held",
            &[],
        );
        let millis: Option<i64> = client
            .select(next, None, &[])
            .expect("finding the next due run")
            .first()
            .get_one()
            .ok()
            .flatten();
        (
            Vec::new(),
            millis.map(|ms| Duration::from_millis(ms.max(0) as u64)),
        )
    })
}

/// A claimed run, with what executing it needs.
struct Run {
    id: pgrx::Uuid,
    function_id: String,
    attempt: i32,
    function_exists: bool,
    paused: bool,
    max_attempts: i32,
    backoff: String,
    call: Option<Call>,
    handler: String,
    ctx: String,
    last_error: Option<String>,
}

fn load(ids: &[pgrx::Uuid]) -> Vec<Run> {
    Spi::connect_mut(|client| {
        let load = prepared(
            &LOAD,
            client,
            "SELECT r.id, r.function_id, r.attempt,
                    f.id IS NOT NULL, coalesce(f.paused, false), coalesce(f.max_attempts, 1),
                    coalesce(f.backoff::text, '{}'), (extract(epoch FROM f.max_runtime) * 1000)::int8,
                    f.owner::oid, coalesce(f.handler, ''),
                    quote_ident(n.nspname) || '.' || quote_ident(p.proname),
                    p.prorettype = 'pg_catalog.void'::pg_catalog.regtype,
                    jsonb_build_object('event', ev.event, 'events', jsonb_build_array(ev.event),
                        'run_id', r.id, 'function_id', r.function_id, 'attempt', r.attempt)::text,
                    r.error::text
             FROM jobs.runs r
             JOIN jobs.events e ON e.id = r.event_id
             CROSS JOIN LATERAL (SELECT jsonb_build_object(
                    'id', e.id, 'name', e.name, 'data', e.data, 'ts', e.ts) AS event) ev
             LEFT JOIN jobs.functions f ON f.id = r.function_id
             LEFT JOIN pg_proc p ON p.oid = to_regprocedure(f.handler)
             LEFT JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE r.id = ANY ($1)",
            &[UUIDARRAYOID.value()],
        );
        client
            .select(load, None, &[ids.to_vec().into()])
            .expect("loading claimed runs")
            .map(|row| {
                let max_runtime: Option<i64> = row.get(8).ok().flatten();
                let max_runtime = max_runtime.map(|ms| Duration::from_millis(ms.max(1) as u64));
                let owner: Option<pg_sys::Oid> = row.get(9).ok().flatten();
                let name: Option<String> = row.get(11).ok().flatten();
                let returns_void: Option<bool> = row.get(12).ok().flatten();
                Run {
                    id: row.get(1).ok().flatten().expect("id"),
                    function_id: row.get(2).ok().flatten().expect("function_id"),
                    attempt: row.get(3).ok().flatten().expect("attempt"),
                    function_exists: row.get(4).ok().flatten().expect("exists"),
                    paused: row.get(5).ok().flatten().expect("paused"),
                    max_attempts: row.get(6).ok().flatten().expect("max_attempts"),
                    backoff: row.get(7).ok().flatten().expect("backoff"),
                    call: match (name, owner) {
                        (Some(name), Some(owner)) => Some(Call::new(
                            &name,
                            returns_void == Some(true),
                            owner,
                            max_runtime,
                        )),
                        _ => None,
                    },
                    handler: row.get(10).ok().flatten().expect("handler"),
                    ctx: row.get(13).ok().flatten().expect("ctx"),
                    last_error: row.get(14).ok().flatten(),
                }
            })
            .collect()
    })
}

/// Executes the claimed runs in order, committing after the batch or as soon
/// as one run has made the others wait `BATCH_COMMIT_AFTER`.
fn execute(claimed: Vec<pgrx::Uuid>, backoffs: &mut HashMap<String, Backoff>) {
    let mut remaining: &[pgrx::Uuid] = &claimed;
    while !remaining.is_empty() {
        let done = in_transaction(|| {
            let started = Instant::now();
            let mut runs: HashMap<pgrx::Uuid, Run> =
                load(remaining).into_iter().map(|r| (r.id, r)).collect();
            let mut done = 0;
            for id in remaining {
                done += 1;
                if let Some(run) = runs.remove(id) {
                    execute_one(run, backoffs);
                }
                if started.elapsed() >= BATCH_COMMIT_AFTER {
                    break;
                }
            }
            done
        });
        remaining = &remaining[done..];
    }
}

/// How a claimed run leaves the executor's hands.
enum Outcome {
    Completed(Option<String>),
    /// Failed for good; `logged` says whether the attempt is also recorded in
    /// `jobs.attempt_errors` (not when no attempt ran at all).
    Failed {
        failure: Failure,
        logged: bool,
    },
    Retry {
        failure: Failure,
        delay: Duration,
    },
    Cancelled(Failure),
    /// The function was paused after the run was claimed: back to the queue, held,
    /// and this claim does not count as an attempt.
    Held,
}

fn execute_one(run: Run, backoffs: &mut HashMap<String, Backoff>) {
    let outcome = if !run.function_exists {
        Outcome::Cancelled(Failure::new("", "function deleted"))
    } else if run.paused {
        Outcome::Held
    } else if run.attempt >= run.max_attempts {
        // Every attempt was interrupted (crash, restart) before it could record an outcome.
        let message = run
            .last_error
            .as_deref()
            .and_then(|e| serde_json::from_str::<serde_json::Value>(e).ok())
            .and_then(|e| {
                e.get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "every attempt was interrupted before it finished".into());
        Outcome::Failed {
            failure: Failure::new("XX000", message),
            logged: false,
        }
    } else {
        let result = match &run.call {
            None => Err(Failure::new(
                "42883",
                format!("handler {} does not exist", run.handler),
            )),
            Some(call) => {
                report_activity(
                    pg_sys::BackendState::STATE_RUNNING,
                    &format!("run {} of {}", run.id, run.function_id),
                );
                invoke::run(call, &run.ctx)
            }
        };
        match result {
            Ok(output) => Outcome::Completed(output),
            Err(failure) if run.attempt + 1 >= run.max_attempts => Outcome::Failed {
                failure,
                logged: true,
            },
            Err(failure) => {
                let backoff = backoffs.entry(run.backoff.clone()).or_insert_with(|| {
                    Backoff::from_stored(&serde_json::from_str(&run.backoff).unwrap_or_default())
                });
                Outcome::Retry {
                    failure,
                    delay: backoff.delay(run.attempt as u32, random_fraction()),
                }
            }
        }
    };
    record(&run, outcome);
}

/// A uniform number in [0, 1) for jitter, from the standard library's random hash keys.
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    (RandomState::new().hash_one(Instant::now()) >> 11) as f64 / (1u64 << 53) as f64
}

/// Records the outcome in the executor's transaction.
fn record(run: &Run, outcome: Outcome) {
    use pgrx::datum::DatumWithOid;
    let id: DatumWithOid = run.id.into();
    let attempt: DatumWithOid = run.attempt.into();
    let (cache, sql, args): (_, &str, Vec<DatumWithOid>) = match outcome {
        Outcome::Completed(output) => (
            &COMPLETE,
            "WITH done AS (DELETE FROM jobs.queue WHERE run_id = $1)
             UPDATE jobs.runs SET status = 'completed', output = $2::text::jsonb, error = NULL,
                    ended_at = clock_timestamp()
             WHERE id = $1",
            vec![id, output.into()],
        ),
        Outcome::Failed { failure, logged } => (
            &FAIL,
            "WITH done AS (DELETE FROM jobs.queue WHERE run_id = $1),
                  logged AS (INSERT INTO jobs.attempt_errors (run_id, attempt, sqlstate, message, detail, hint)
                             SELECT $1, $3, $2->>'sqlstate', $2->>'message', $2->>'detail', $2->>'hint'
                             WHERE $4
                             ON CONFLICT DO NOTHING)
             UPDATE jobs.runs SET status = 'failed', error = $2, ended_at = clock_timestamp()
             WHERE id = $1",
            vec![id, JsonB(failure.to_json()).into(), attempt, logged.into()],
        ),
        Outcome::Retry { failure, delay } => (
            &RETRY,
            "WITH logged AS (INSERT INTO jobs.attempt_errors (run_id, attempt, sqlstate, message, detail, hint)
                             VALUES ($1, $3, $2->>'sqlstate', $2->>'message', $2->>'detail', $2->>'hint')
                             ON CONFLICT DO NOTHING),
                  later AS (UPDATE jobs.queue SET claimed_by = NULL,
                                   due_at = clock_timestamp() + $4 * interval '1 millisecond'
                            WHERE run_id = $1)
             UPDATE jobs.runs SET error = $2 WHERE id = $1",
            vec![id, JsonB(failure.to_json()).into(), attempt, (delay.as_secs_f64() * 1000.0).into()],
        ),
        Outcome::Cancelled(reason) => (
            &CANCEL,
            "WITH done AS (DELETE FROM jobs.queue WHERE run_id = $1)
             UPDATE jobs.runs SET status = 'cancelled', error = $2, ended_at = clock_timestamp()
             WHERE id = $1",
            vec![id, JsonB(reason.to_json()).into()],
        ),
        Outcome::Held => (
            &HOLD,
            "WITH held AS (UPDATE jobs.queue SET held = true, claimed_by = NULL, claims = claims - 1
                           WHERE run_id = $1)
             UPDATE jobs.runs SET status = 'queued', attempt = greatest(attempt - 1, 0) WHERE id = $1",
            vec![id],
        ),
    };
    Spi::connect_mut(|client| {
        let types: Vec<pg_sys::Oid> = args.iter().map(|a| a.oid()).collect();
        let statement = prepared(cache, client, sql, &types);
        client
            .update(statement, None, &args)
            .expect("recording a run's outcome");
    });
}
