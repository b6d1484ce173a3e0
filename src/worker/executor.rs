//! An executor: claims due work from `jobs.queue` (runs, and steps planned by
//! jobs.parallel), advances it, and records the outcome. Many run at once;
//! `FOR UPDATE SKIP LOCKED` keeps them from claiming the same row.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;

use super::{
    attach_signal_handlers, flow, handle_interrupts, in_transaction, invoke, record,
    report_activity, run, task, wait,
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
    static GIVE_BACK: StatementCache = const { StatementCache::new() };
    static CLAIM_ADMITTED: StatementCache = const { StatementCache::new() };
}

/// A claimed queue row: a run (`step` empty) or a parallel step of one.
pub struct Claimed {
    pub run: pgrx::Uuid,
    pub step: String,
    claims: i32,
    /// Its place in the batch this executor published (shmem).
    batch_index: usize,
    /// The concurrency keys whose slots it holds while claimed.
    keys: Vec<String>,
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
            ", start_by = NULL, finish_by = coalesce(q.finish_by, now() + q.finish_within)
                FROM picked WHERE (q.run_id, q.step_id) = (picked.run_id, picked.step_id)
                RETURNING q.run_id, q.step_id, q.claims, q.due_at, q.cancelled, q.ckey1, q.ckey2
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
            step_hash: crate::shmem::hash64(&c.step),
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
        let (taken, given_back) =
            in_transaction(|| take_over(victim, &items)).unwrap_or_else(|| extension_gone());
        if given_back > 0 {
            log!(
                "pg_jobs: executor {index} has been in one call for {stuck_for} ms; {given_back} item(s) under a concurrency limit it had not started went back to the queue"
            );
        }
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
/// marked stolen; committed at once (synchronously: no note covers it). Items
/// under a concurrency limit go back to the queue instead, unclaimed as if
/// never claimed, since the stuck executor's slot was all they had: the
/// claim admits them again. Returns the items taken and how many went back.
fn take_over(victim: i32, items: &[crate::shmem::Item]) -> (Vec<Claimed>, usize) {
    let runs: Vec<pgrx::Uuid> = items
        .iter()
        .map(|item| pgrx::Uuid::from_bytes(item.run))
        .collect();
    let candidates: Vec<(pgrx::Uuid, String, bool)> = Spi::connect(|client| {
        client
            .select(
                "SELECT run_id, step_id, ckey1 IS NOT NULL OR ckey2 IS NOT NULL
                 FROM jobs.queue WHERE claimed_by = $1 AND run_id = ANY ($2)",
                None,
                &[victim.into(), runs.into()],
            )
            .expect("finding work to take over")
            .map(|row| {
                (
                    row.get(1).ok().flatten().expect("run_id"),
                    row.get(2).ok().flatten().expect("step_id"),
                    row.get(3).ok().flatten().unwrap_or(false),
                )
            })
            .collect()
    });
    let (limited, free): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .filter(|(run, step, _)| {
            let item = crate::shmem::Item {
                run: *run.as_bytes(),
                step_hash: crate::shmem::hash64(step),
            };
            items.contains(&item)
        })
        .partition(|(_, _, limited)| *limited);
    let unflagged = |items: Vec<(pgrx::Uuid, String, bool)>| -> (Vec<pgrx::Uuid>, Vec<String>) {
        items.into_iter().map(|(run, step, _)| (run, step)).unzip()
    };
    let given_back = give_back(victim, unflagged(limited));
    let (runs, steps) = unflagged(free);
    if runs.is_empty() {
        return (Vec::new(), given_back);
    }
    let taken = Spi::connect_mut(|client| {
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
    });
    (taken, given_back)
}

/// Unclaims items `victim` claimed and never started, undoing their claim's
/// count, and wakes executors to claim them. Rows the victim's open round
/// has locked are skipped: it releases them itself when it sees them stolen.
fn give_back(victim: i32, (runs, steps): (Vec<pgrx::Uuid>, Vec<String>)) -> usize {
    if runs.is_empty() {
        return 0;
    }
    let given_back = Spi::connect_mut(|client| {
        let statement = prepared(
            &GIVE_BACK,
            client,
            "WITH picked AS (
                SELECT q.run_id, q.step_id, r.created_at,
                       q.step_id = '' AND q.claims = 1 AND r.attempt = 0
                       AND NOT EXISTS (SELECT FROM jobs.steps s WHERE s.run_id = q.run_id) AS first_claim
                FROM unnest($1::uuid[], $2::text[]) AS g (run_id, step_id)
                JOIN jobs.queue q ON (q.run_id, q.step_id) = (g.run_id, g.step_id) AND q.claimed_by = $3
                JOIN jobs.runs r ON r.id = q.run_id
                FOR UPDATE OF q SKIP LOCKED
             ), given_back AS (
                -- A first claim started the run: undone, it is queued again
                -- and its timeouts count as if it had never been claimed.
                UPDATE jobs.queue q SET claimed_by = NULL, claims = q.claims - 1,
                       start_by = CASE WHEN p.first_claim THEN p.created_at + q.start_within ELSE q.start_by END,
                       finish_by = CASE WHEN p.first_claim THEN NULL ELSE q.finish_by END
                FROM picked p WHERE (q.run_id, q.step_id) = (p.run_id, p.step_id)
                RETURNING q.run_id, q.step_id, q.claims, p.first_claim
             ), run_undone AS (
                -- Or the claim counted a new attempt of a run claimed before.
                UPDATE jobs.runs r
                SET attempt = r.attempt - (g.claims >= 1)::int,
                    status = CASE WHEN g.first_claim THEN 'queued' ELSE r.status END,
                    started_at = CASE WHEN g.first_claim THEN NULL ELSE r.started_at END
                FROM given_back g WHERE r.id = g.run_id AND g.step_id = '')
             SELECT count(*) FROM given_back",
            &[UUIDARRAYOID.value(), TEXTARRAYOID.value(), INT4OID.value()],
        );
        client
            .update(statement, None, &[runs.into(), steps.into(), victim.into()])
            .expect("giving work back to the queue")
            .first()
            .get_one::<i64>()
            .ok()
            .flatten()
            .unwrap_or(0) as usize
    });
    crate::shmem::wake_workers_at_commit(given_back);
    given_back
}

/// Claims up to `limit` due rows; when there are none, says how soon the next
/// one is due. With `noting`, the claim commits without waiting for its WAL
/// flush (`note` covers it until then).
fn claim(limit: usize, noting: bool) -> (Vec<Claimed>, Option<Duration>) {
    if noting {
        gucs::set_for_transaction(c"synchronous_commit", c"off");
    }
    flow::cancel_overdue();
    let mut claimed = Spi::connect_mut(|client| {
        let claim = prepared(
            &CLAIM,
            client,
            claim_sql!(
                "SELECT run_id, step_id FROM jobs.queue
                 WHERE claimed_by IS NULL AND NOT held AND NOT admit AND due_at <= now()
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
    // Work under flow control gets a share of every claim, so that plain work
    // cannot starve it.
    let (runs, steps) = flow::admit(limit.saturating_sub(claimed.len()).max(1));
    if !runs.is_empty() {
        claimed.extend(claim_admitted(runs, steps));
        for (index, item) in claimed.iter_mut().enumerate() {
            item.batch_index = index;
            if let Some(read) = item.run_read.as_mut() {
                read.set_batch_index(index);
            }
        }
    }
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
            let keys: Vec<String> = [21, 22]
                .into_iter()
                .filter_map(|column| row.get::<String>(column).ok().flatten())
                .collect();
            let run_read = if step.is_empty() {
                run::claimed_run(&row, run, claims > 1, batch_index, keys.clone())
            } else {
                None
            };
            Claimed {
                run,
                step,
                claims,
                batch_index,
                keys,
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

/// Claims the items flow control admitted (locked by `flow::admit`).
fn claim_admitted(runs: Vec<pgrx::Uuid>, steps: Vec<String>) -> Vec<Claimed> {
    Spi::connect_mut(|client| {
        let claim = prepared(
            &CLAIM_ADMITTED,
            client,
            claim_sql!(
                "SELECT q.run_id, q.step_id
                 FROM unnest($1::uuid[], $3::text[]) AS a (run_id, step_id)
                 JOIN jobs.queue q ON (q.run_id, q.step_id) = (a.run_id, a.step_id)
                 FOR UPDATE OF q"
            ),
            &[UUIDARRAYOID.value(), INT4OID.value(), TEXTARRAYOID.value()],
        );
        claimed_rows(
            client
                .update(
                    claim,
                    None,
                    &[
                        runs.into(),
                        unsafe { pg_sys::MyProcPid }.into(),
                        steps.into(),
                    ],
                )
                .expect("claiming admitted work"),
        )
    })
}

/// How soon the next unclaimed work is due, if there is any. A timeout to
/// enforce counts as due: a sleeping run past `timeouts.finish` must be
/// cancelled then, not when it wakes.
fn next_due() -> Option<Duration> {
    Spi::connect_mut(|client| {
        let next = prepared(
            &NEXT_DUE,
            client,
            "SELECT (extract(epoch FROM least(
                        (SELECT min(due_at) FROM jobs.queue
                         WHERE claimed_by IS NULL AND NOT held AND NOT admit AND due_at < 'infinity'),
                        (SELECT min(due_at) FROM jobs.queue
                         WHERE claimed_by IS NULL AND NOT held AND admit AND blocked_on IS NULL
                               AND due_at < 'infinity'),
                        (SELECT min(start_by) FROM jobs.queue WHERE start_by IS NOT NULL),
                        (SELECT min(finish_by) FROM jobs.queue
                         WHERE finish_by IS NOT NULL AND cancelled IS NULL))
                     - clock_timestamp()) * 1000)::int8",
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
    let mut work = Work {
        tasks: tasks.into(),
        unloaded: runs_read.into_iter().filter_map(|c| c.run_read).collect(),
        ..Work::default()
    };
    let mut quick = true;
    while work.remains() {
        let started = Instant::now();
        in_transaction(|| {
            match (work.alone_tasks.pop(), work.alone_runs.pop()) {
                (Some(task), _) => alone_task(task),
                (None, Some(run)) => alone_run(run, &mut work.runs),
                (None, None) => round(&mut work, started),
            }
            record::write_finished();
            flow::unblock_released();
        })
        .unwrap_or_else(|| extension_gone());
        quick &= started.elapsed() < COMMIT_AFTER;
        if pending.as_ref().is_some_and(PendingClaim::flushed) {
            pending = None;
            clear(notes);
        }
    }
    let taken_over = work.taken_over;
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

/// What remains of a claim, from round to round.
#[derive(Default)]
struct Work {
    tasks: VecDeque<Claimed>,
    unloaded: Vec<run::ClaimedRun>,
    runs: Vec<run::LoadedRun>,
    /// Items another executor took over while this one was stuck.
    taken_over: Vec<(pgrx::Uuid, String)>,
    /// Items whose code waited for a lock in a round shared with others:
    /// each goes on in a transaction of its own.
    alone_tasks: Vec<Claimed>,
    alone_runs: Vec<run::LoadedRun>,
}

impl Work {
    fn remains(&self) -> bool {
        !(self.unloaded.is_empty()
            && self.runs.is_empty()
            && self.tasks.is_empty()
            && self.alone_tasks.is_empty()
            && self.alone_runs.is_empty())
    }
}

/// One round: parallel steps first, then each run one step further, until
/// the round has taken `COMMIT_AFTER` or must commit now. Runs not reached
/// wait for the next round. Code that waits for a lock once other work of
/// the round is done is rolled back and set aside for a round of its own
/// (invoke.rs), so that nothing done waits for its commit behind a lock.
fn round(work: &mut Work, started: Instant) {
    let slot = super::slot().expect("an executor has a slot");
    let mut shared = false;
    while let Some(claimed) = work.tasks.pop_front() {
        if !slot.start(claimed.batch_index) {
            work.taken_over.push((claimed.run, claimed.step));
            continue;
        }
        invoke::set_shared_round(shared);
        if task::execute(&claimed) {
            flow::release(&claimed.keys);
            shared = true;
        } else {
            work.alone_tasks.push(claimed);
        }
        if started.elapsed() >= COMMIT_AFTER {
            return;
        }
    }
    run::check_cancellations(&mut work.runs);
    work.runs
        .extend(run::load(std::mem::take(&mut work.unloaded)));
    let mut next_round = Vec::new();
    let mut rest = std::mem::take(&mut work.runs).into_iter();
    for mut loaded in rest.by_ref() {
        if !slot.start(loaded.batch_index) {
            // Taken over by another executor while this one was stuck.
            work.taken_over.push((loaded.id, String::new()));
            continue;
        }
        invoke::set_shared_round(shared);
        match run::advance(&mut loaded) {
            run::Progress::Continue => next_round.push(loaded),
            run::Progress::Done => flow::release(&loaded.keys),
            run::Progress::Alone => {
                work.alone_runs.push(loaded);
                continue;
            }
        }
        shared = true;
        if run::must_commit_now() || started.elapsed() >= COMMIT_AFTER {
            break;
        }
    }
    next_round.extend(rest);
    work.runs = next_round;
}

fn alone_task(task: Claimed) {
    invoke::set_shared_round(false);
    task::execute(&task);
    flow::release(&task.keys);
}

fn alone_run(mut loaded: run::LoadedRun, runs: &mut Vec<run::LoadedRun>) {
    invoke::set_shared_round(false);
    run::check_cancellations(std::slice::from_mut(&mut loaded));
    if run::advance(&mut loaded) == run::Progress::Continue {
        runs.push(loaded);
    } else {
        flow::release(&loaded.keys);
    }
}
