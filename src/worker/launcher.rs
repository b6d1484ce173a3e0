//! The launcher: one per server, started by the postmaster (pg_cron's model).
//! It waits for the extension in `jobs.database`, recovers work that was in
//! flight, keeps `jobs.workers` executors running and does housekeeping.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime, DynamicBackgroundWorker,
};
use pgrx::prelude::*;

use super::{attach_signal_handlers, executor, handle_interrupts, in_transaction, wait};
use crate::claim_notes;
use crate::gucs::{self, MAX_WORKERS};
use crate::shmem::shared;
use crate::{api, cron, pgtime};

const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(60);

pub fn register() {
    BackgroundWorkerBuilder::new("pg_jobs launcher")
        .set_type("pg_jobs launcher")
        .set_library("pg_jobs")
        .set_function("pg_jobs_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

/// The version of the extension installed in the database, which must be
/// this library's for the workers to run (after an upgrade of the library,
/// until `ALTER EXTENSION pg_jobs UPDATE`, it is the old one).
pub(super) fn installed_version() -> String {
    Spi::get_one::<String>(
        "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pg_jobs'",
    )
    .expect("looking for the extension")
    .unwrap_or_default()
}

/// Executors left by an earlier launcher (one that exited on an error while
/// they ran on) are told to stop, so that this launcher owns all claims.
fn stop_orphaned_executors() {
    let slots = &shared().workers;
    for slot in slots {
        let pid = slot.pid.load(Ordering::SeqCst);
        if pid != 0 {
            signal_stop(pid);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while slots.iter().any(|s| s.pid.load(Ordering::SeqCst) != 0) && Instant::now() < deadline {
        handle_interrupts();
        wait(Duration::from_millis(100));
    }
}

/// SIGTERM: the executor stops at its next interrupt check, even inside user code.
fn signal_stop(pid: i32) {
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    unsafe { kill(pid, pg_sys::SIGTERM as i32) };
}

/// Runs claimed by executors that no longer exist become claimable again; the
/// interrupted attempt counts (see README, "Crashes").
/// Concurrency slots go with them: the work waiting for those slots is unblocked.
fn release_claims(pids: &[i32]) -> i64 {
    release("claimed_by = ANY ($1)", pids)
}

fn release_all_claims() -> i64 {
    release("claimed_by IS NOT NULL AND $1::int[] IS NOT NULL", &[])
}

fn release(which: &str, pids: &[i32]) -> i64 {
    let released: Vec<(Option<String>, Option<String>)> = Spi::connect_mut(|client| {
        client
            .update(
                &format!(
                    "UPDATE jobs.queue SET claimed_by = NULL WHERE {which} RETURNING ckey1, ckey2"
                ),
                None,
                &[pids.to_vec().into()],
            )
            .expect("releasing claims")
            .map(|row| (row.get(1).ok().flatten(), row.get(2).ok().flatten()))
            .collect()
    });
    let count = released.len() as i64;
    super::flow::unblock(
        released
            .into_iter()
            .flat_map(|(a, b)| a.into_iter().chain(b))
            .collect(),
    );
    count
}

fn housekeeping() {
    Spi::run("DELETE FROM jobs.dedup_ids WHERE seen_at < now() - interval '24 hours'")
        .expect("expiring dedup ids");
    Spi::run("DELETE FROM jobs.idempotency_keys WHERE seen_at < now() - interval '24 hours'")
        .expect("expiring idempotency keys");
    // A throttle whose theoretical arrival time has passed is as if new.
    Spi::run("DELETE FROM jobs.throttles WHERE tat_us < (extract(epoch FROM now()) * 1e6)::int8")
        .expect("forgetting idle throttles");
    // A fired instant is never due again; the record only has to outlive the
    // moment two expressions of one function could both fire it.
    Spi::run("DELETE FROM jobs.cron_fires WHERE scheduled_at < now() - interval '1 day'")
        .expect("forgetting cron fires");
    super::retention::forget_replays();
}

/// Most runs of replays unfinished at once, per executor: enough to keep
/// the executors busy, few enough that other work queued meanwhile waits
/// behind a handful of them only.
const REPLAY_RUNS_PER_EXECUTOR: i64 = 8;

/// How often the launcher starts replay runs while a replay is under way.
const REPLAY_TICK: Duration = Duration::from_millis(100);

/// Starts the runs of the schedules that are due. An instant fires at most
/// once per function (jobs.cron_fires), and the next fire time moves on in
/// the same transaction, so a crash can neither lose nor double a run. After
/// downtime, a schedule runs once, for the latest instant it missed.
fn fire_due_schedules() {
    let due: Vec<(String, String, String, TimestampWithTimeZone, bool)> =
        Spi::connect_mut(|client| {
            client
                .update(
                    "SELECT s.function_id, s.expression, s.timezone, s.next_fire_at, f.paused
                 FROM jobs.cron_schedules s JOIN jobs.functions f ON f.id = s.function_id
                 WHERE s.next_fire_at <= clock_timestamp()
                 ORDER BY s.next_fire_at LIMIT 100
                 FOR UPDATE OF s",
                    None,
                    &[],
                )
                .expect("finding due schedules")
                .map(|row| {
                    (
                        row.get(1).ok().flatten().expect("function_id"),
                        row.get(2).ok().flatten().expect("expression"),
                        row.get(3).ok().flatten().expect("timezone"),
                        row.get(4).ok().flatten().expect("next_fire_at"),
                        row.get(5).ok().flatten().expect("paused"),
                    )
                })
                .collect()
        });
    for (function_id, expression, timezone, due_at, paused) in due {
        let schedule = cron::parse_zone(&timezone).and_then(|zone| cron::parse(&expression, zone));
        let (Ok(schedule), Some(due_at)) = (schedule, pgtime::from_pg(due_at)) else {
            warning!("pg_jobs: the schedule \"{expression}\" of {function_id} cannot be read any more; it is skipped");
            continue;
        };
        let now = pgtime::now();
        let instant = schedule.last_between(due_at - chrono::Duration::microseconds(1), now);
        let next = schedule.next_after(now).and_then(pgtime::to_pg);
        let run = match instant {
            Some(at) if !paused => {
                if at > due_at {
                    log!("pg_jobs: the schedule \"{expression}\" of {function_id} missed instants from {due_at} on; it runs once, for {at}");
                }
                fire(&function_id, &expression, at)
            }
            _ => None,
        };
        Spi::run_with_args(
            "UPDATE jobs.cron_schedules
             SET next_fire_at = coalesce($3, 'infinity'),
                 last_fired_at = CASE WHEN $5::uuid IS NOT NULL THEN $4 ELSE last_fired_at END,
                 last_run_id = coalesce($5, last_run_id)
             WHERE function_id = $1 AND expression = $2",
            &[
                function_id.as_str().into(),
                expression.as_str().into(),
                next.into(),
                instant.and_then(pgtime::to_pg).into(),
                run.into(),
            ],
        )
        .expect("moving a schedule on");
    }
}

/// `@reboot` schedules: one run per server start, for the instant shared
/// memory was set up. The launcher fires them once, after recovery; if it
/// stops before it has noted that in shared memory, the next launcher finds
/// the instant fired (jobs.cron_fires). Schedules added later wait for the
/// next start; a paused function's run is skipped.
fn fire_reboot_schedules(started: chrono::DateTime<chrono::Utc>) -> usize {
    let schedules: Vec<(String, String, bool)> = Spi::connect_mut(|client| {
        client
            .update(
                "SELECT s.function_id, s.expression, f.paused
                 FROM jobs.cron_schedules s JOIN jobs.functions f ON f.id = s.function_id
                 WHERE s.next_fire_at = 'infinity'
                 FOR UPDATE OF s",
                None,
                &[],
            )
            .expect("finding @reboot schedules")
            .map(|row| {
                (
                    row.get(1).ok().flatten().expect("function_id"),
                    row.get(2).ok().flatten().expect("expression"),
                    row.get(3).ok().flatten().expect("paused"),
                )
            })
            .collect()
    });
    let mut fired = 0;
    for (function_id, expression, paused) in schedules {
        let reboot = cron::parse(&expression, chrono_tz::Tz::UTC).is_ok_and(|c| c.is_reboot());
        if paused || !reboot {
            continue;
        }
        if let Some(run) = fire(&function_id, &expression, started) {
            Spi::run_with_args(
                "UPDATE jobs.cron_schedules SET last_fired_at = $3, last_run_id = $4
                 WHERE function_id = $1 AND expression = $2",
                &[
                    function_id.as_str().into(),
                    expression.as_str().into(),
                    pgtime::to_pg(started).into(),
                    run.into(),
                ],
            )
            .expect("recording a @reboot run");
            fired += 1;
        }
    }
    fired
}

/// Starts the run for one scheduled instant, unless the function already has one for it.
fn fire(
    function_id: &str,
    expression: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> Option<pgrx::Uuid> {
    let first = Spi::get_one_with_args::<bool>(
        "WITH fired AS (
            INSERT INTO jobs.cron_fires (function_id, scheduled_at) VALUES ($1, $2)
            ON CONFLICT DO NOTHING RETURNING 1)
         SELECT EXISTS (SELECT FROM fired)",
        &[function_id.into(), pgtime::to_pg(at).into()],
    )
    .expect("recording a cron fire");
    if first != Some(true) {
        return None;
    }
    let data = serde_json::json!({
        "cron": expression,
        "scheduled_at": at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    });
    let data = api::types::JsonbDatum::parse(&data.to_string());
    let started = api::events::start_run(
        function_id,
        "jobs/scheduled.timer",
        data,
        api::events::Origin::default(),
    );
    let api::events::Started::Run(run) = started else {
        return None;
    };
    Spi::run_with_args(
        "UPDATE jobs.cron_fires SET run_id = $3 WHERE function_id = $1 AND scheduled_at = $2",
        &[function_id.into(), pgtime::to_pg(at).into(), run.into()],
    )
    .expect("recording a cron run");
    Some(run)
}

/// How long until the next schedule is due.
fn next_schedule_in() -> Option<Duration> {
    Spi::get_one::<i64>(
        "SELECT (extract(epoch FROM min(next_fire_at) - clock_timestamp()) * 1000)::int8
         FROM jobs.cron_schedules WHERE next_fire_at < 'infinity'",
    )
    .expect("finding the next schedule")
    .map(|ms| Duration::from_millis(ms.max(0) as u64))
}

fn start_executor(slot: usize) -> Option<DynamicBackgroundWorker> {
    let started = BackgroundWorkerBuilder::new(&format!("pg_jobs executor {slot}"))
        .set_type("pg_jobs executor")
        .set_library("pg_jobs")
        .set_function("pg_jobs_executor_main")
        .set_argument((slot as i32).into_datum())
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic();
    started.ok()
}

#[pg_guard]
unsafe extern "C-unwind" fn forget_launcher(_code: i32, _arg: pg_sys::Datum) {
    shared().set_launcher(0);
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_jobs_launcher_main(_arg: pg_sys::Datum) {
    attach_signal_handlers();
    let database = gucs::database();
    pgrx::bgworkers::BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    super::use_own_settings();
    shared().set_launcher(unsafe { pg_sys::MyProcPid });
    unsafe { pg_sys::before_shmem_exit(Some(forget_launcher), pg_sys::Datum::from(0)) };

    let mut executors: Vec<Option<DynamicBackgroundWorker>> =
        (0..MAX_WORKERS).map(|_| None).collect();
    let mut running = false;
    let mut last_housekeeping = Instant::now();
    let mut said_version = String::new();
    let mut shortfall = (0, 0);
    let mut retention = super::retention::Retention::new();
    let mut next_round = Instant::now();
    loop {
        handle_interrupts();
        // Between rounds, the launcher only removes history (its batches
        // come every few milliseconds while a backlog lasts).
        if running && Instant::now() < next_round {
            let next_batch = retention.tick();
            if wait(
                next_round
                    .min(next_batch)
                    .saturating_duration_since(Instant::now()),
            ) {
                next_round = Instant::now();
            }
            continue;
        }
        shared().launcher_beat();
        let version = in_transaction(installed_version).unwrap_or_default();
        let installed = version == env!("CARGO_PKG_VERSION");
        // After new binaries and a restart, the catalog is the old version's
        // until ALTER EXTENSION pg_jobs UPDATE: nothing may run against it
        // (the SQL functions it declares are the old version's). Said once,
        // at LOG level: an operator's step not done yet, not an error.
        if !version.is_empty() && said_version != version {
            if !installed {
                log!(
                    "pg_jobs: the library is version {}, the extension installed in \"{database}\" is {version}; nothing runs until ALTER EXTENSION pg_jobs UPDATE",
                    env!("CARGO_PKG_VERSION")
                );
            } else if !said_version.is_empty() {
                log!("pg_jobs: the extension in \"{database}\" is version {version} now; starting");
            }
        }
        said_version = version;
        if installed && !running {
            stop_orphaned_executors();
            let (replayed, released) =
                in_transaction(|| (executor::replay_noted_claims(), release_all_claims()))
                    .unwrap_or((0, 0));
            // Applied; kept, a note could be applied again by a later start of
            // the launcher that no checkpoint separates from this one.
            if let Err(e) = claim_notes::clear_all(claim_notes::directory()) {
                panic!("pg_jobs: clearing claim notes: {e}");
            }
            if replayed > 0 {
                log!("pg_jobs: {replayed} claim(s) lost with the WAL in a crash were noted; their attempts count as interrupted");
            }
            if released > 0 {
                log!("pg_jobs: resuming {released} run(s) that were in flight when the server stopped");
            }
            in_transaction(crate::owners::refresh_registry);
            if !shared().reboot_fired() {
                let started = chrono::DateTime::from_timestamp_micros(shared().started_at_us())
                    .expect("the server's start time");
                let fired = in_transaction(|| fire_reboot_schedules(started)).unwrap_or(0);
                shared().set_reboot_fired();
                if fired > 0 {
                    log!("pg_jobs: {fired} @reboot schedule(s) started a run for the server start at {started}");
                }
            }
            running = true;
        } else if !installed && running {
            // The executors stop by themselves at their next transaction
            // (a DROP EXTENSION waited for those under way).
            running = false;
        }
        let poll = Duration::from_millis(gucs::POLL_INTERVAL_MS.get().max(100) as u64);
        let mut timeout = poll;
        let wanted = if running {
            gucs::WORKERS.get() as usize
        } else {
            0
        };
        let missing = supervise(&mut executors, wanted, running);
        if (wanted, missing) != shortfall {
            if missing > 0 {
                warning!(
                    "pg_jobs: only {} of jobs.workers = {wanted} executors could start: raise max_worker_processes",
                    wanted - missing
                );
            } else if shortfall.1 > 0 {
                log!("pg_jobs: all {wanted} executors are running");
            }
            shortfall = (wanted, missing);
            shared().set_workers_shortfall(wanted, missing);
        }
        if running {
            if last_housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL {
                in_transaction(housekeeping);
                last_housekeeping = Instant::now();
            }
            if shared().owners_stale() {
                in_transaction(crate::owners::refresh_registry);
            }
            in_transaction(fire_due_schedules);
            if let Some(next) = in_transaction(next_schedule_in).flatten() {
                timeout = next.clamp(Duration::from_millis(1), poll);
            }
            let max_in_flight = REPLAY_RUNS_PER_EXECUTOR * gucs::WORKERS.get().max(1) as i64;
            if in_transaction(|| super::replays::pump(max_in_flight)) == Some(true) {
                timeout = timeout.min(REPLAY_TICK);
            }
        }
        // Executors starting or stopping set this latch (bgw_notify_pid): a
        // round starts at once. Otherwise the next round is at the next
        // schedule, or soon enough to notice a CREATE EXTENSION or a new
        // schedule.
        next_round = Instant::now() + timeout;
    }
}

/// Keeps exactly `wanted` executors alive, releasing the claims of any that
/// stopped; returns how many of them could not be started. Executors beyond
/// `wanted` (after a reload) are asked to stop, unless the extension is gone
/// (`running` false: they stop by themselves), and tracked until they have,
/// so that their claims are released too.
fn supervise(
    executors: &mut [Option<DynamicBackgroundWorker>],
    wanted: usize,
    running: bool,
) -> usize {
    let mut stopped_pids = Vec::new();
    for (slot, executor) in executors.iter_mut().enumerate() {
        let Some(handle) = executor else { continue };
        match handle.pid() {
            Err(BackgroundWorkerStatus::Stopped) => {
                *executor = None;
                // It stopped without a crash, so its claim reaches the disk with
                // the next WAL flush; its note must not outlive the release.
                if let Err(e) = claim_notes::clear_slot(claim_notes::directory(), slot) {
                    panic!("pg_jobs: clearing the claim note of executor {slot}: {e}");
                }
                stopped_pids.push(shared().workers[slot].last_pid.load(Ordering::SeqCst));
            }
            Ok(pid) if slot >= wanted && running => signal_stop(pid),
            _ => {}
        }
    }
    if !stopped_pids.is_empty() {
        let released = in_transaction(|| release_claims(&stopped_pids)).unwrap_or(0);
        if released > 0 {
            log!("pg_jobs: an executor stopped; {released} run(s) it held will be retried");
        }
    }
    let mut missing = 0;
    for (slot, executor) in executors.iter_mut().enumerate().take(wanted) {
        if executor.is_none() {
            *executor = start_executor(slot);
            missing += usize::from(executor.is_none());
        }
    }
    missing
}
