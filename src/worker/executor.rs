//! An executor: claims due work from `jobs.queue` (runs, and steps planned by
//! jobs.parallel), advances it, and records the outcome. Many run at once;
//! `FOR UPDATE SKIP LOCKED` keeps them from claiming the same row.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;

use super::{
    attach_signal_handlers, handle_interrupts, in_transaction, record, report_activity, run, task,
    wait,
};
use crate::api::{prepared, StatementCache};
use crate::claim_notes::{self, NoteFile, Noted, WalPosition};
use crate::gucs;
use crate::shmem::shared;

/// Work of several runs is committed together, but a slow one never holds
/// the others' commit back longer than this.
const COMMIT_AFTER: Duration = Duration::from_millis(20);
/// Shortest wait when work is due but was locked by another executor.
const MIN_WAIT: Duration = Duration::from_millis(5);
/// How long an executor may sit in one call of user code before idle
/// executors take over the work it claimed and has not started: "a moment"
/// for whoever waits behind it.
const TAKE_OVER_AFTER_MS: i64 = 100;
/// How often cached plans are thrown away. Plans made while the tables were
/// small (a fresh install) scan them whole; PostgreSQL replans only when
/// statistics change, which autovacuum may not do for a long while.
const REPLAN_EVERY: Duration = Duration::from_secs(2);

thread_local! {
    static CLAIM: StatementCache = const { StatementCache::new() };
    static NEXT_DUE: StatementCache = const { StatementCache::new() };
    static REPLAY_CLAIMS: StatementCache = const { StatementCache::new() };
    static TAKE_OVER: StatementCache = const { StatementCache::new() };
}

/// A claimed queue row: a run (`step` empty) or a parallel step of one.
pub struct Claimed {
    pub run: pgrx::Uuid,
    pub step: String,
    claims: i32,
    /// Its place in the batch this executor published (shmem).
    batch_index: usize,
    /// A run's row: the run, as the claim read it.
    run_read: Option<run::ClaimedRun>,
}

impl Claimed {
    /// The previous holder stopped without recording an outcome.
    pub fn interrupted(&self) -> bool {
        self.claims > 1
    }
}

/// What claiming does to the queue rows `picked` selects and to their runs;
/// `$2` is the claiming executor's pid (0 when the launcher replays claims a
/// crash lost, and releases them with the others in flight). Yields the
/// claimed rows, oldest due first, with what advancing their runs needs.
/// A claim counts (`claims + 1`) and starts a new attempt of a run it finds
/// interrupted; taking over another executor's claim (`$taken_over`) does
/// neither, since that claim already did.
macro_rules! claim_sql {
    ($picked:literal) => {
        claim_sql!($picked, "1", "(c.claims > 1)")
    };
    ($picked:literal, taken_over) => {
        claim_sql!($picked, "0", "false")
    };
    ($picked:literal, $count:literal, $new_attempt:literal) => {
        concat!(
            "WITH picked AS (",
            $picked,
            "), claimed AS (
                UPDATE jobs.queue q SET claimed_by = $2, claims = q.claims + ",
            $count,
            "
                FROM picked WHERE (q.run_id, q.step_id) = (picked.run_id, picked.step_id)
                RETURNING q.run_id, q.step_id, q.claims, q.due_at, q.cancelled
             ), started AS (
                UPDATE jobs.runs r SET status = 'running', started_at = coalesce(r.started_at, now()),
                       attempt = r.attempt + ",
            $new_attempt,
            "::int
                FROM claimed c WHERE r.id = c.run_id AND c.step_id = ''
             ) ",
            run::claimed_runs_select!($new_attempt)
        )
    };
}

/// A claim committed without waiting for its WAL flush, noted until it is flushed.
struct PendingClaim {
    commit_lsn: pg_sys::XLogRecPtr,
}

impl PendingClaim {
    fn flushed(&self) -> bool {
        unsafe { pg_sys::GetFlushRecPtr(std::ptr::null_mut()) >= self.commit_lsn }
    }
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
    super::set_slot(slot_index);
    unsafe { pg_sys::before_shmem_exit(Some(vacate_slot), arg) };
    super::use_own_settings();
    let mut notes = NoteFile::open(claim_notes::directory(), slot_index)
        .map_err(|e| {
            warning!("pg_jobs: cannot note claims ({e}); every claim waits for its WAL flush")
        })
        .ok();

    // Claimed work waits for whatever runs before it in the same batch, so
    // batches grow only while the queue is deep and the work is quick, and go
    // back to one at the first slow round.
    let mut batch = 1;
    let mut planned_at = Instant::now();
    loop {
        handle_interrupts();
        if planned_at.elapsed() >= REPLAN_EVERY {
            unsafe { pg_sys::ResetPlanCache() };
            planned_at = Instant::now();
        }
        // Idle before looking: a commit after this point sees it and wakes it.
        slot.set_idle(true);
        report_activity(pg_sys::BackendState::STATE_IDLE, "waiting for work", None);
        let (mut claimed, next_due) =
            in_transaction(|| claim(batch, notes.is_some())).unwrap_or_else(|| extension_gone());
        let mut pending = None;
        if claimed.is_empty() {
            let (taken, next_look) = take_over_stuck_work(slot_index);
            if taken.is_empty() {
                batch = 1;
                let poll = Duration::from_millis(gucs::POLL_INTERVAL_MS.get() as u64);
                let timeout = [next_due, next_look].into_iter().flatten().min();
                wait(timeout.map_or(poll, |due| due.clamp(MIN_WAIT, poll)));
                continue;
            }
            claimed = taken;
        } else {
            pending = note(&mut notes, &claimed);
        }
        slot.set_idle(false);
        publish(slot, &claimed);
        let full = claimed.len() == batch;
        let quick = execute(claimed, pending, &mut notes);
        slot.clear_batch();
        batch = if full && quick {
            (batch * 2).min(gucs::BATCH_SIZE.get() as usize)
        } else {
            1
        };
    }
}

/// The extension was dropped: the executor stops, quietly; the launcher
/// starts executors again after a CREATE EXTENSION.
fn extension_gone() -> ! {
    unsafe { pg_sys::proc_exit(0) }
}

/// Makes the claimed items visible to other executors, none started yet.
fn publish(slot: &crate::shmem::WorkerSlot, claimed: &[Claimed]) {
    let items: Vec<crate::shmem::Item> = claimed
        .iter()
        .map(|c| crate::shmem::Item {
            run: *c.run.as_bytes(),
            step_hash: crate::shmem::step_hash(&c.step),
        })
        .collect();
    slot.publish_batch(&items);
}

/// Takes over the work another executor claimed and has not started, when
/// that executor has been in one call of user code for longer than
/// `TAKE_OVER_AFTER_MS` (a run waiting on a lock, a slow step): nothing
/// waits behind a stuck run while this executor is free. Returns the work
/// taken, or how soon to look again.
fn take_over_stuck_work(own_slot: usize) -> (Vec<Claimed>, Option<Duration>) {
    let now = crate::shmem::now_ms();
    let mut next_look: Option<Duration> = None;
    for (index, slot) in shared().workers.iter().enumerate() {
        let victim = slot.pid.load(std::sync::atomic::Ordering::SeqCst);
        if index == own_slot || victim == 0 {
            continue;
        }
        let Some(since) = slot.stuck_since_ms() else {
            continue;
        };
        let stuck_for = now - since;
        if stuck_for < TAKE_OVER_AFTER_MS {
            let remaining = Duration::from_millis((TAKE_OVER_AFTER_MS - stuck_for) as u64);
            next_look = Some(next_look.map_or(remaining, |n| n.min(remaining)));
            continue;
        }
        let items = slot.steal_unstarted(gucs::BATCH_SIZE.get() as usize);
        if items.is_empty() {
            continue;
        }
        let taken =
            in_transaction(|| take_over(victim, &items)).unwrap_or_else(|| extension_gone());
        if !taken.is_empty() {
            log!(
                "pg_jobs: executor {index} has been in one call for {stuck_for} ms; another took over {} item(s) it had not started",
                taken.len()
            );
            return (taken, None);
        }
    }
    (Vec::new(), next_look)
}

/// Claims for this executor the `items` that executor `victim` claimed and
/// marked stolen; committed at once (synchronously: no note covers it).
fn take_over(victim: i32, items: &[crate::shmem::Item]) -> Vec<Claimed> {
    let runs: Vec<pgrx::Uuid> = items
        .iter()
        .map(|item| pgrx::Uuid::from_bytes(item.run))
        .collect();
    let candidates: Vec<(pgrx::Uuid, String)> = Spi::connect(|client| {
        client
            .select(
                "SELECT run_id, step_id FROM jobs.queue WHERE claimed_by = $1 AND run_id = ANY ($2)",
                None,
                &[victim.into(), runs.into()],
            )
            .expect("finding work to take over")
            .map(|row| {
                (
                    row.get(1).ok().flatten().expect("run_id"),
                    row.get(2).ok().flatten().expect("step_id"),
                )
            })
            .collect()
    });
    let (runs, steps): (Vec<pgrx::Uuid>, Vec<String>) = candidates
        .into_iter()
        .filter(|(run, step)| {
            let item = crate::shmem::Item {
                run: *run.as_bytes(),
                step_hash: crate::shmem::step_hash(step),
            };
            items.contains(&item)
        })
        .unzip();
    if runs.is_empty() {
        return Vec::new();
    }
    Spi::connect_mut(|client| {
        let take = prepared(
            &TAKE_OVER,
            client,
            claim_sql!(
                "SELECT q.run_id, q.step_id
                 FROM unnest($1::uuid[], $3::text[]) AS t (run_id, step_id)
                 JOIN jobs.queue q ON (q.run_id, q.step_id) = (t.run_id, t.step_id) AND q.claimed_by = $4
                 FOR UPDATE OF q SKIP LOCKED",
                taken_over
            ),
            &[
                UUIDARRAYOID.value(),
                INT4OID.value(),
                TEXTARRAYOID.value(),
                INT4OID.value(),
            ],
        );
        claimed_rows(
            client
                .update(
                    take,
                    None,
                    &[
                        runs.into(),
                        unsafe { pg_sys::MyProcPid }.into(),
                        steps.into(),
                        victim.into(),
                    ],
                )
                .expect("taking over work"),
        )
    })
}

/// Claims up to `limit` due rows; when there are none, says how soon the next
/// one is due. With `noting`, the claim commits without waiting for its WAL
/// flush (`note` covers it until then).
fn claim(limit: usize, noting: bool) -> (Vec<Claimed>, Option<Duration>) {
    if noting {
        gucs::set_for_transaction(c"synchronous_commit", c"off");
    }
    let claimed = Spi::connect_mut(|client| {
        let claim = prepared(
            &CLAIM,
            client,
            claim_sql!(
                "SELECT run_id, step_id FROM jobs.queue
                 WHERE claimed_by IS NULL AND NOT held AND due_at <= now()
                 ORDER BY due_at LIMIT $1
                 FOR UPDATE SKIP LOCKED"
            ),
            &[INT4OID.value(), INT4OID.value()],
        );
        claimed_rows(
            client
                .update(
                    claim,
                    None,
                    &[(limit as i32).into(), unsafe { pg_sys::MyProcPid }.into()],
                )
                .expect("claiming work"),
        )
    });
    if claimed.is_empty() {
        return (claimed, next_due());
    }
    record_interrupted(&claimed);
    (claimed, None)
}

fn claimed_rows(rows: pgrx::spi::SpiTupleTable) -> Vec<Claimed> {
    rows.enumerate()
        .map(|(batch_index, row)| {
            let run = row.get(1).ok().flatten().expect("run_id");
            let step: String = row.get(2).ok().flatten().expect("step_id");
            let claims: i32 = row.get(3).ok().flatten().expect("claims");
            let run_read = if step.is_empty() {
                run::claimed_run(&row, run, claims > 1, batch_index)
            } else {
                None
            };
            Claimed {
                run,
                step,
                claims,
                batch_index,
                run_read,
            }
        })
        .collect()
}

/// The interrupted attempts of claimed runs are recorded with the claim, before
/// any user code: code that crashes the server every time leaves one row per crash.
fn record_interrupted(claimed: &[Claimed]) {
    let runs: Vec<pgrx::Uuid> = claimed
        .iter()
        .filter(|c| c.interrupted() && c.step.is_empty())
        .map(|c| c.run)
        .collect();
    if !runs.is_empty() {
        record::interrupted_attempts(runs);
    }
}

/// How soon the next unclaimed work is due, if there is any.
fn next_due() -> Option<Duration> {
    Spi::connect_mut(|client| {
        let next = prepared(
            &NEXT_DUE,
            client,
            "SELECT (extract(epoch FROM min(due_at) - clock_timestamp()) * 1000)::int8
             FROM jobs.queue WHERE claimed_by IS NULL AND NOT held AND due_at < 'infinity'",
            &[],
        );
        let millis: Option<i64> = client
            .select(next, None, &[])
            .expect("finding the next due work")
            .first()
            .get_one()
            .ok()
            .flatten();
        millis.map(|ms| Duration::from_millis(ms.max(0) as u64))
    })
}

/// Makes the claim just committed safe to run user code under: noted in the
/// slot's file, or, when it cannot be, flushed.
fn note(notes: &mut Option<NoteFile>, claimed: &[Claimed]) -> Option<PendingClaim> {
    let commit_lsn = unsafe { pg_sys::XactLastCommitEnd };
    let noted: Vec<Noted> = claimed
        .iter()
        .map(|c| Noted {
            run: c.run.to_string(),
            step: c.step.clone(),
            claims: c.claims,
        })
        .collect();
    let claim = WalPosition {
        timeline: unsafe { pg_sys::GetWALInsertionTimeLine() },
        end: commit_lsn,
    };
    match notes.as_mut().map(|file| file.write(claim, &noted)) {
        Some(Ok(())) => Some(PendingClaim { commit_lsn }),
        Some(Err(e)) => {
            warning!("pg_jobs: cannot note a claim ({e}); flushing it instead");
            unsafe { pg_sys::XLogFlush(commit_lsn) };
            None
        }
        None => None,
    }
}

/// Claims a crash lost from the WAL but an executor had noted: applied again,
/// so that the attempt they started counts as interrupted. Run by the
/// launcher when it starts (after recovery and its checkpoint), before it
/// releases all claims.
pub fn replay_noted_claims() -> i64 {
    let (timeline, redo) = unsafe { (pg_sys::GetWALInsertionTimeLine(), pg_sys::GetRedoRecPtr()) };
    let (noted, problems) = claim_notes::read_lost(claim_notes::directory(), timeline, redo);
    for problem in problems {
        warning!("pg_jobs: skipping an unreadable claim note: {problem}");
    }
    if noted.is_empty() {
        return 0;
    }
    let runs: Vec<pgrx::Uuid> = noted
        .iter()
        .filter_map(|n| uuid::Uuid::parse_str(&n.run).ok())
        .map(|id| pgrx::Uuid::from_bytes(*id.as_bytes()))
        .collect();
    if runs.len() != noted.len() {
        warning!("pg_jobs: skipping claim notes with malformed run ids");
        return 0;
    }
    let steps: Vec<String> = noted.iter().map(|n| n.step.clone()).collect();
    let claims: Vec<i32> = noted.iter().map(|n| n.claims).collect();
    let replayed = Spi::connect_mut(|client| {
        let replay = prepared(
            &REPLAY_CLAIMS,
            client,
            claim_sql!(
                "SELECT q.run_id, q.step_id
                 FROM unnest($1::uuid[], $3::text[], $4::int[]) AS n (run_id, step_id, claims)
                 JOIN jobs.queue q ON (q.run_id, q.step_id) = (n.run_id, n.step_id)
                                  AND q.claims = n.claims - 1
                 FOR UPDATE OF q"
            ),
            &[
                UUIDARRAYOID.value(),
                INT4OID.value(),
                TEXTARRAYOID.value(),
                INT4ARRAYOID.value(),
            ],
        );
        claimed_rows(
            client
                .update(
                    replay,
                    None,
                    &[runs.into(), 0i32.into(), steps.into(), claims.into()],
                )
                .expect("replaying noted claims"),
        )
    });
    record_interrupted(&replayed);
    replayed.len() as i64
}

/// Advances the claimed work round by round. Each round is one transaction:
/// every run takes one step (or finishes, or parks), so a step always commits
/// before its run's next step starts, and the steps of many runs share a commit.
/// A run is loaded once and carried from round to round until it parks.
/// Returns whether every round was quick. The note of a `pending` claim is
/// cleared once a round's commit has flushed the claim, or at the end.
fn execute(
    claimed: Vec<Claimed>,
    mut pending: Option<PendingClaim>,
    notes: &mut Option<NoteFile>,
) -> bool {
    let (tasks, runs_read): (Vec<Claimed>, Vec<Claimed>) =
        claimed.into_iter().partition(|c| !c.step.is_empty());
    let mut tasks: VecDeque<Claimed> = tasks.into();
    let mut unloaded: Vec<run::ClaimedRun> =
        runs_read.into_iter().filter_map(|c| c.run_read).collect();
    let mut runs: Vec<run::LoadedRun> = Vec::new();
    let mut taken_over = Vec::new();
    let mut quick = true;
    while !unloaded.is_empty() || !runs.is_empty() || !tasks.is_empty() {
        let started = Instant::now();
        in_transaction(|| {
            round(
                &mut tasks,
                &mut unloaded,
                &mut runs,
                &mut taken_over,
                started,
            );
            record::write_finished();
        })
        .unwrap_or_else(|| extension_gone());
        quick &= started.elapsed() < COMMIT_AFTER;
        if pending.as_ref().is_some_and(PendingClaim::flushed) {
            pending = None;
            clear(notes);
        }
    }
    if !taken_over.is_empty() {
        // Items another executor marked as its own but could not claim (it
        // failed, or they were locked) would otherwise stay claimed by this one.
        in_transaction(|| record::release_claimed(taken_over)).unwrap_or_else(|| extension_gone());
    }
    if pending.is_some() {
        // Unflushed still (nothing was written, or synchronous_commit is off),
        // but no user code of this claim runs any more.
        clear(notes);
    }
    quick
}

fn clear(notes: &mut Option<NoteFile>) {
    if let Some(Err(e)) = notes.as_mut().map(NoteFile::clear) {
        // A stale note could make the launcher count an attempt twice after a crash.
        panic!("pg_jobs: clearing the claim note: {e}");
    }
}

/// One round: parallel steps first, then each run one step further, until
/// the round has taken `COMMIT_AFTER` or must commit now. Runs not reached
/// wait for the next round.
fn round(
    tasks: &mut VecDeque<Claimed>,
    unloaded: &mut Vec<run::ClaimedRun>,
    runs: &mut Vec<run::LoadedRun>,
    taken_over: &mut Vec<(pgrx::Uuid, String)>,
    started: Instant,
) {
    let slot = super::slot().expect("an executor has a slot");
    while let Some(claimed) = tasks.pop_front() {
        if slot.start(claimed.batch_index) {
            task::execute(&claimed);
        } else {
            taken_over.push((claimed.run, claimed.step));
        }
        if started.elapsed() >= COMMIT_AFTER {
            return;
        }
    }
    run::check_cancellations(runs);
    runs.extend(run::load(std::mem::take(unloaded)));
    let mut next_round = Vec::new();
    let mut rest = std::mem::take(runs).into_iter();
    for mut loaded in rest.by_ref() {
        if !slot.start(loaded.batch_index) {
            // Taken over by another executor while this one was stuck.
            taken_over.push((loaded.id, String::new()));
            continue;
        }
        if run::advance(&mut loaded) == run::Progress::Continue {
            next_round.push(loaded);
        }
        if run::must_commit_now() || started.elapsed() >= COMMIT_AFTER {
            break;
        }
    }
    next_round.extend(rest);
    *runs = next_round;
}
