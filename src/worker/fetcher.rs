//! The fetcher: one background worker that makes the HTTP requests of
//! `jobs.fetch` and `jobs.plan_fetch`.
//!
//! It claims due requests from `jobs.fetches` (committing the claim), hands
//! them to the HTTP client's own thread (src/fetch/client.rs, which never
//! touches the database) and records each answer in a short transaction of
//! its own: the step's value, a failed attempt with its retry time, or the
//! step's failure; the run is due again when its last pending step ends. No
//! transaction, lock or executor is held while a request is in flight, and
//! up to `jobs.fetch_max_in_flight` requests are in flight at once.
//!
//! At least once: a request whose answer was not recorded (the server
//! crashed or restarted meanwhile) is made again when the fetcher starts,
//! with the same `Idempotency-Key`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::JsonB;

use super::invoke::Failure;
use super::run::{random_fraction, Policy};
use super::{attach_signal_handlers, handle_interrupts, in_transaction, wait};
use crate::api::{prepared, StatementCache};
use crate::fetch::{self, AllowedHosts, Client, FetchSpec, Outcome, PreparedRequest, Secrets};
use crate::gucs;
use crate::shmem::{self, shared};

/// Shortest wait when a request is due soon.
const MIN_WAIT: Duration = Duration::from_millis(1);
/// Answers are recorded at most this often, in one transaction per round:
/// a round per answer would cost the executors a share of the machine when
/// hundreds of answers arrive a second, and a step waits a few ms at most.
const ROUND_EVERY: Duration = Duration::from_millis(5);

/// Who may make requests: the owner of the function must be allowed to call this.
const FETCH_FUNCTION: &str = "jobs.fetch(text, text, text, jsonb, jsonb, interval, integer[])";

thread_local! {
    static CLAIM: StatementCache = const { StatementCache::new() };
    static SECRETS: StatementCache = const { StatementCache::new() };
    static OUTCOME: StatementCache = const { StatementCache::new() };
    static NEXT_DUE: StatementCache = const { StatementCache::new() };
}

pub fn register() {
    BackgroundWorkerBuilder::new("pg_jobs fetcher")
        .set_type("pg_jobs fetcher")
        .set_library("pg_jobs")
        .set_function("pg_jobs_fetcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

/// A request handed to the client, and what recording its answer needs.
struct InFlight {
    run: pgrx::Uuid,
    step: String,
    /// Attempts made before this one.
    attempts: i32,
    policy: Policy,
}

/// A claimed request, as the claim read it.
struct Claimed {
    run: pgrx::Uuid,
    step: String,
    spec: String,
    attempts: i32,
    policy: Policy,
    owner: Option<pg_sys::Oid>,
    owner_name: String,
    may_fetch: bool,
}

/// The settings requests are made under, read again after each reload.
struct Settings {
    read: (String, usize),
    policy: Result<Arc<fetch::Policy>, String>,
}

impl Settings {
    fn current(cached: &mut Option<Settings>) -> &Result<Arc<fetch::Policy>, String> {
        let read = (gucs::fetch_allowed_hosts(), gucs::fetch_max_response_size());
        if cached.as_ref().is_none_or(|settings| settings.read != read) {
            let policy = AllowedHosts::parse(&read.0).map(|allowed_hosts| {
                Arc::new(fetch::Policy {
                    allowed_hosts,
                    max_response_size: read.1,
                })
            });
            if let Err(e) = &policy {
                warning!("pg_jobs: {e}; every request fails until it is corrected");
            }
            *cached = Some(Settings { read, policy });
        }
        &cached.as_ref().expect("just set").policy
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn forget_fetcher(_code: i32, _arg: pg_sys::Datum) {
    shared().set_fetcher(false);
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_jobs_fetcher_main(_arg: pg_sys::Datum) {
    attach_signal_handlers();
    pgrx::bgworkers::BackgroundWorker::connect_worker_to_spi(Some(&gucs::database()), None);
    super::use_own_settings();
    // The client's thread must not call into PostgreSQL (not even SetLatch
    // through pgrx, which refuses calls from other threads). kill() is
    // async-signal-safe and plain libc; the SIGUSR1 it sends is handled on
    // this main thread, the only one that does not block signals, by
    // PostgreSQL's procsignal handler, which sets this process's latch.
    let client = Client::<u64>::start(Arc::new(|| unsafe {
        libc::kill(libc::getpid(), libc::SIGUSR1);
    }))
    .unwrap_or_else(|e| panic!("pg_jobs fetcher: {e}"));
    shared().set_fetcher(true);
    unsafe { pg_sys::before_shmem_exit(Some(forget_fetcher), pg_sys::Datum::from(0)) };

    let mut in_flight: HashMap<u64, InFlight> = HashMap::new();
    let mut next_id = 0u64;
    let mut recovered = false;
    let mut settings = None;
    let mut last_round = std::time::Instant::now();
    loop {
        let since = last_round.elapsed();
        if since < ROUND_EVERY && !in_flight.is_empty() {
            // Not wait(): answers keep setting the latch.
            std::thread::sleep(ROUND_EVERY - since);
        }
        last_round = std::time::Instant::now();
        handle_interrupts();
        let poll = Duration::from_millis(gucs::POLL_INTERVAL_MS.get() as u64);
        let answers: Vec<_> = std::iter::from_fn(|| client.try_recv()).collect();
        let room = (gucs::FETCH_MAX_IN_FLIGHT.get() as usize).saturating_sub(client.in_flight());
        let policy = Settings::current(&mut settings).clone();
        // One transaction a round: the answers, then the next claims.
        let round = in_transaction(|| {
            // Safe without waiting for the WAL flush: a claim or an answer
            // lost in a crash leaves the request claimed by a fetcher that is
            // gone, so it is made again (at least once); and whatever a run
            // does next commits after it, flushing it first.
            gucs::set_for_transaction(c"synchronous_commit", c"off");
            if super::launcher::installed_version() != env!("CARGO_PKG_VERSION") {
                return None;
            }
            if !recovered {
                let again = release_claims();
                if again > 0 {
                    log!("pg_jobs: {again} request(s) in flight when the fetcher stopped are made again");
                }
                recovered = true;
            }
            for answer in answers {
                if let Some(request) = in_flight.remove(&answer.id) {
                    record_outcome(&request, answer.outcome);
                }
            }
            Some(if room > 0 {
                claim(room, &policy)
            } else {
                (Vec::new(), None)
            })
        })
        .flatten();
        let Some((ready, next_due)) = round else {
            // Dropped (or not updated): answers have nowhere to go.
            in_flight.clear();
            recovered = false;
            wait(poll);
            continue;
        };
        let full = room > 0 && ready.len() == room;
        for (request, prepared) in ready {
            client
                .submit(next_id, prepared)
                .unwrap_or_else(|e| panic!("pg_jobs fetcher: {e}"));
            in_flight.insert(next_id, request);
            next_id += 1;
        }
        if full {
            continue;
        }
        let activity = std::ffi::CString::new(format!("{} request(s) in flight", in_flight.len()))
            .unwrap_or_default();
        unsafe {
            pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, activity.as_ptr())
        };
        wait(next_due.map_or(poll, |due| due.clamp(MIN_WAIT, poll)));
    }
}

/// There is one fetcher: whatever is claimed when it starts was in flight
/// in the one before, and is made again.
fn release_claims() -> i64 {
    Spi::get_one::<i64>(
        "WITH again AS (UPDATE jobs.fetches SET claimed_by = NULL WHERE claimed_by IS NOT NULL RETURNING 1)
         SELECT count(*) FROM again",
    )
    .expect("releasing requests")
    .unwrap_or(0)
}

/// Claims up to `limit` due requests and prepares them; those that cannot be
/// made (no secret, host not allowed, no right to fetch) fail in the same
/// transaction. When nothing is due, says how soon something will be.
fn claim(
    limit: usize,
    policy: &Result<Arc<fetch::Policy>, String>,
) -> (Vec<(InFlight, PreparedRequest)>, Option<Duration>) {
    let claimed: Vec<Claimed> = Spi::connect_mut(|client| {
        let claim = prepared(
            &CLAIM,
            client,
            &format!(
                "WITH picked AS (
                    SELECT run_id, step_id FROM jobs.fetches
                    WHERE claimed_by IS NULL AND due_at <= now()
                    ORDER BY due_at LIMIT $1
                    FOR UPDATE SKIP LOCKED
                 ), claimed AS (
                    UPDATE jobs.fetches x SET claimed_by = $2 FROM picked
                    WHERE (x.run_id, x.step_id) = (picked.run_id, picked.step_id)
                    RETURNING x.run_id, x.step_id, x.function_id, x.spec
                 )
                 SELECT c.run_id, c.step_id, c.spec::text, coalesce(s.attempts, 0),
                        coalesce(f.max_attempts, 1), coalesce(f.backoff::text, '{{}}'), f.owner::oid,
                        coalesce(f.owner::text, ''),
                        coalesce(has_function_privilege(f.owner::oid, '{FETCH_FUNCTION}', 'EXECUTE'), false)
                 FROM claimed c
                 LEFT JOIN jobs.steps s ON s.run_id = c.run_id AND s.id = c.step_id
                 LEFT JOIN jobs.functions f ON f.id = c.function_id"
            ),
            &[INT4OID.value(), INT4OID.value()],
        );
        client
            .update(
                claim,
                None,
                &[(limit as i32).into(), unsafe { pg_sys::MyProcPid }.into()],
            )
            .expect("claiming requests")
            .map(|row| {
                let max_attempts: i32 = row.get(5).ok().flatten().expect("max_attempts");
                let backoff: String = row.get(6).ok().flatten().expect("backoff");
                Claimed {
                    run: row.get(1).ok().flatten().expect("run_id"),
                    step: row.get(2).ok().flatten().expect("step_id"),
                    spec: row.get(3).ok().flatten().expect("spec"),
                    attempts: row.get(4).ok().flatten().expect("attempts"),
                    policy: Policy::new(max_attempts, &backoff),
                    owner: row.get(7).ok().flatten(),
                    owner_name: row.get(8).ok().flatten().unwrap_or_default(),
                    may_fetch: row.get(9).ok().flatten().unwrap_or(false),
                }
            })
            .collect()
    });
    if claimed.is_empty() {
        return (Vec::new(), next_due());
    }
    let mut secrets = owners_secrets(
        claimed
            .iter()
            .filter(|c| c.may_fetch)
            .filter_map(|c| c.owner)
            .collect(),
    );
    let mut ready = Vec::new();
    for item in claimed {
        let request = InFlight {
            run: item.run,
            step: item.step,
            attempts: item.attempts,
            policy: item.policy,
        };
        let prepared = if item.owner.is_none() {
            Err(Failure::new("57014", "function deleted"))
        } else if !item.may_fetch {
            let mut failure = Failure::new(
                "42501",
                format!(
                    "role {} may not make HTTP requests: it has no EXECUTE privilege on {FETCH_FUNCTION}",
                    item.owner_name
                ),
            );
            failure.hint = Some(format!(
                "A superuser grants it: GRANT EXECUTE ON FUNCTION {FETCH_FUNCTION} TO {};",
                item.owner_name
            ));
            Err(failure)
        } else {
            prepare(&item.spec, &request, &mut secrets, item.owner, policy)
        };
        match prepared {
            Ok(prepared) => ready.push((request, prepared)),
            Err(failure) => record_failure(&request, failure, None),
        }
    }
    (ready, None)
}

fn prepare(
    spec: &str,
    request: &InFlight,
    secrets: &mut HashMap<pg_sys::Oid, Secrets>,
    owner: Option<pg_sys::Oid>,
    policy: &Result<Arc<fetch::Policy>, String>,
) -> Result<PreparedRequest, Failure> {
    let spec = serde_json::from_str(spec)
        .map_err(|e| e.to_string())
        .and_then(|value| FetchSpec::from_json(&value).map_err(|e| e.0))
        .map_err(|e| Failure::new("22023", format!("the stored request cannot be read: {e}")))?;
    let policy = policy.as_ref().map_err(|e| {
        Failure::new(
            fetch::FailureKind::HostNotAllowed.sqlstate(),
            format!("{}: {e}", spec.display()),
        )
    })?;
    let owner_secrets = owner
        .and_then(|owner| secrets.get(&owner))
        .cloned()
        .unwrap_or_default();
    let key = fetch::idempotency_key(&request.run, &request.step);
    fetch::prepare(&spec, &owner_secrets, &key, policy.clone()).map_err(failure_of)
}

/// The secrets of these roles, by role.
fn owners_secrets(owners: Vec<pg_sys::Oid>) -> HashMap<pg_sys::Oid, Secrets> {
    let mut by_owner: HashMap<pg_sys::Oid, Secrets> = HashMap::new();
    if owners.is_empty() {
        return by_owner;
    }
    Spi::connect(|client| {
        let load = prepared(
            &SECRETS,
            client,
            "SELECT owner::oid, name, value FROM jobs.secrets WHERE owner::oid = ANY ($1)",
            &[OIDARRAYOID.value()],
        );
        for row in client
            .select(load, None, &[owners.into()])
            .expect("loading secrets")
        {
            let owner: pg_sys::Oid = row.get(1).ok().flatten().expect("owner");
            by_owner.entry(owner).or_default().insert(
                row.get(2).ok().flatten().expect("name"),
                row.get(3).ok().flatten().expect("value"),
            );
        }
    });
    by_owner
}

fn next_due() -> Option<Duration> {
    Spi::connect(|client| {
        let next = prepared(
            &NEXT_DUE,
            client,
            "SELECT (extract(epoch FROM min(due_at) - clock_timestamp()) * 1000)::int8
             FROM jobs.fetches WHERE claimed_by IS NULL",
            &[],
        );
        client
            .select(next, None, &[])
            .expect("finding the next request")
            .first()
            .get_one::<i64>()
            .ok()
            .flatten()
            .map(|ms| Duration::from_millis(ms.max(0) as u64))
    })
}

fn failure_of(failure: fetch::Failure) -> Failure {
    let mut recorded = Failure::new(failure.sqlstate(), failure.message);
    recorded.detail = failure.status.map(|status| format!("HTTP status {status}"));
    recorded.hint = match failure.kind {
        fetch::FailureKind::HostNotAllowed => Some(
            "A superuser adds the host to jobs.fetch_allowed_hosts (postgresql.conf or ALTER SYSTEM) and reloads."
                .into(),
        ),
        fetch::FailureKind::Secret => {
            Some("The function's owner sets it with jobs.set_secret(name, value).".into())
        }
        _ => None,
    };
    recorded
}

fn record_outcome(request: &InFlight, outcome: Outcome) {
    match outcome {
        Outcome::Value(value) => write(
            request,
            "completed",
            Some(value.to_string()),
            None,
            Duration::ZERO,
        ),
        Outcome::Failed(failure) => {
            let retriable = failure.retriable();
            let retry_after = failure.retry_after;
            record_failure(
                request,
                failure_of(failure),
                retriable.then_some(retry_after),
            )
        }
    }
}

/// A failed attempt: retried after the server's `Retry-After` or the
/// function's backoff when `retry` says it may be (`Some`) and attempts are
/// left; the step's failure otherwise.
fn record_failure(request: &InFlight, failure: Failure, retry: Option<Option<Duration>>) {
    let attempt = request.attempts;
    match retry {
        Some(retry_after) if attempt + 1 < request.policy.max_attempts => {
            let delay = retry_after.unwrap_or_else(|| {
                request
                    .policy
                    .backoff
                    .delay(attempt as u32, random_fraction())
            });
            write(request, "retrying", None, Some(&failure), delay)
        }
        _ => write(request, "failed", None, Some(&failure), Duration::ZERO),
    }
}

/// Records the attempt. Nothing happens if the request is no longer this
/// fetcher's (its run ended meanwhile, cancelled for instance).
fn write(
    request: &InFlight,
    status: &str,
    output: Option<String>,
    failure: Option<&Failure>,
    delay: Duration,
) {
    let due = Spi::connect_mut(|client| {
        let outcome = prepared(
            &OUTCOME,
            client,
            "WITH ended AS (
                DELETE FROM jobs.fetches WHERE run_id = $1 AND step_id = $2 AND claimed_by = $3 AND $4 <> 'retrying'
                RETURNING 1
             ), later AS (
                UPDATE jobs.fetches SET claimed_by = NULL, due_at = clock_timestamp() + $8 * interval '1 millisecond'
                WHERE run_id = $1 AND step_id = $2 AND claimed_by = $3 AND $4 = 'retrying'
                RETURNING 1
             ), mine AS (
                SELECT 1 FROM ended UNION ALL SELECT 1 FROM later
             ), attempt AS (
                INSERT INTO jobs.attempt_errors (run_id, step_id, attempt, sqlstate, message, detail, hint)
                SELECT $1, $2, $7, $6->>'sqlstate', $6->>'message', $6->>'detail', $6->>'hint'
                WHERE $6 IS NOT NULL AND EXISTS (SELECT FROM mine)
                ON CONFLICT DO NOTHING
             ), step AS (
                UPDATE jobs.steps SET status = $4, attempts = attempts + 1, output = $5::jsonb,
                       error = coalesce($6, error),
                       ended_at = CASE WHEN $4 IN ('completed', 'failed') THEN clock_timestamp() END
                WHERE run_id = $1 AND id = $2 AND EXISTS (SELECT FROM mine)
             ), run AS (
                UPDATE jobs.queue SET pending_steps = pending_steps - 1,
                       due_at = CASE WHEN pending_steps <= 1 THEN now() ELSE due_at END
                WHERE run_id = $1 AND step_id = '' AND EXISTS (SELECT FROM ended)
                RETURNING pending_steps = 0 AS due
             )
             SELECT coalesce((SELECT due FROM run), false)",
            &[
                UUIDOID.value(),
                TEXTOID.value(),
                INT4OID.value(),
                TEXTOID.value(),
                TEXTOID.value(),
                JSONBOID.value(),
                INT4OID.value(),
                FLOAT8OID.value(),
            ],
        );
        let args: Vec<DatumWithOid> = vec![
            request.run.into(),
            request.step.as_str().into(),
            unsafe { pg_sys::MyProcPid }.into(),
            status.into(),
            output.as_deref().into(),
            failure.map_or(DatumWithOid::null::<JsonB>(), |f| JsonB(f.to_json()).into()),
            request.attempts.into(),
            (delay.as_secs_f64() * 1000.0).into(),
        ];
        client
            .update(outcome, None, &args)
            .expect("recording an answer")
            .first()
            .get_one::<bool>()
            .ok()
            .flatten()
            .unwrap_or(false)
    });
    if due {
        shmem::wake_workers_at_commit(1);
    }
}
