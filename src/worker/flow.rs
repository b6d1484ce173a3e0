//! Flow control at claim time, in the claim's transaction: concurrency slots
//! and throttle reservations (src/flow has the arithmetic), the slots given
//! back when work stops executing, and `timeouts`.
//!
//! A concurrency slot is an executor holding claimed queue rows that name the
//! key (`ckey1`, `ckey2`): an executor runs one step at a time, so the items
//! of a key it claimed together execute one after the other and take one
//! slot between them. Claiming takes it and unclaiming the executor's last
//! such row gives it back, in the same transactions, so that no crash can
//! leak one. Work that finds its key full is marked `blocked_on` the key, which takes it out of every index the
//! claim reads; the first slot of the key given back unblocks it. Claimers and
//! those who give slots back take turns on a lock per key, so that work
//! blocked by one is always seen by the other.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;

use crate::api::{prepared, StatementCache};
use crate::flow::{gcra::Gcra, Throttle};
use crate::shmem;

/// How often executors look for runs past their `timeouts`.
const TIMEOUTS_EVERY: Duration = Duration::from_millis(100);

thread_local! {
    static CANDIDATES: StatementCache = const { StatementCache::new() };
    static HOLDERS: StatementCache = const { StatementCache::new() };
    static BLOCK: StatementCache = const { StatementCache::new() };
    static THROTTLES: StatementCache = const { StatementCache::new() };
    static SAVE_THROTTLES: StatementCache = const { StatementCache::new() };
    static UNBLOCK: StatementCache = const { StatementCache::new() };
    static OVERDUE: StatementCache = const { StatementCache::new() };
    static BLOCK_ALL: StatementCache = const { StatementCache::new() };
    /// Concurrency keys whose slots the current round gave back.
    static RELEASED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    static TIMEOUTS_CHECKED: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    /// Whether any work may need admission, as of a functions epoch and an instant.
    static ADMISSION: std::cell::Cell<Option<(u64, Instant, bool)>> = const { std::cell::Cell::new(None) };
    static ANY_ADMISSION: StatementCache = const { StatementCache::new() };
}

/// How long the answer of `admission_needed` is trusted without a change of
/// function definitions.
const ADMISSION_RECHECK: Duration = Duration::from_secs(2);

/// Whether some work may need admission: a function has concurrency or
/// throttle, or work under flow control is queued. Known from the catalog
/// only when function definitions changed (or every few seconds), so that
/// the claim of a server without flow control costs one statement.
fn admission_needed() -> bool {
    let epoch = shmem::shared().functions_epoch();
    if let Some((seen, at, needed)) = ADMISSION.with(std::cell::Cell::get) {
        if seen == epoch && at.elapsed() < ADMISSION_RECHECK {
            return needed;
        }
    }
    let needed = Spi::connect_mut(|client| {
        let statement = prepared(
            &ANY_ADMISSION,
            client,
            "SELECT EXISTS (SELECT FROM jobs.functions WHERE flow ?| ARRAY['concurrency', 'throttle'])
                 OR EXISTS (SELECT FROM jobs.queue WHERE claimed_by IS NULL AND NOT held AND admit AND blocked_on IS NULL)
                 OR EXISTS (SELECT FROM jobs.queue WHERE blocked_on IS NOT NULL)",
            &[],
        );
        client
            .select(statement, None, &[])
            .expect("looking for flow control")
            .first()
            .get_one::<bool>()
            .ok()
            .flatten()
            .unwrap_or(true)
    });
    ADMISSION.with(|c| c.set(Some((epoch, Instant::now(), needed))));
    needed
}

/// Second key of pg_jobs' advisory locks on flow-control keys ("jobt").
const FLOW_KEY_LOCK_SPACE: u32 = 0x6a6f_6274;

/// Takes the transaction lock of a flow-control key. Keys are always taken
/// in sorted order, so that two executors cannot wait for each other.
fn lock_key(key: &str) {
    let tag = pg_sys::LOCKTAG {
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: FLOW_KEY_LOCK_SPACE,
        locktag_field3: shmem::hash64(key) as u32,
        locktag_field4: 2,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    };
    unsafe { pg_sys::LockAcquire(&tag, pg_sys::ExclusiveLock as i32, false, false) };
}

/// Due work that the claim must decide about.
struct Candidate {
    run: pgrx::Uuid,
    step: String,
    keys: Vec<(String, i32)>,
    throttle_key: Option<String>,
    throttle: Option<Throttle>,
    cancelled: bool,
}

/// What the claim decided.
enum Decision {
    Claim,
    /// Waits for a slot of this key.
    Block(String),
    /// Its start was reserved for this instant (µs since 1970).
    Later(i64),
}

/// Picks up to `limit` due items under flow control, decides about each
/// (cancelled ones go through, to end), and returns those to claim now, as
/// (run, step); the others are blocked on their key or moved to their
/// reserved start.
pub fn admit(limit: usize) -> (Vec<pgrx::Uuid>, Vec<String>) {
    if !admission_needed() {
        return (Vec::new(), Vec::new());
    }
    let candidates = candidates(limit);
    if candidates.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let keys: BTreeSet<String> = candidates
        .iter()
        .flat_map(|c| {
            c.keys
                .iter()
                .map(|(k, _)| k.clone())
                .chain(c.throttle_key.iter().map(|t| format!("throttle:{t}")))
        })
        .collect();
    for key in &keys {
        lock_key(key);
    }
    let mut held = holders(keys.iter().filter(|k| !k.starts_with("throttle:")));
    let mut tats = throttle_tats(&candidates);
    let now = now_us();
    let mut decisions = Vec::with_capacity(candidates.len());
    for candidate in &candidates {
        if candidate.cancelled {
            decisions.push(Decision::Claim);
            continue;
        }
        if let (Some(key), Some(throttle)) = (&candidate.throttle_key, &candidate.throttle) {
            let gcra = Gcra::throttle(throttle.limit, throttle.period_ms, throttle.burst);
            let (start, next) = gcra.reserve(tats.get(key).copied(), now);
            tats.insert(key.clone(), next);
            if start > now {
                decisions.push(Decision::Later(start));
                continue;
            }
        }
        let full = candidate.keys.iter().find(|(key, limit)| {
            let slots = held.get(key).copied().unwrap_or_default();
            !slots.mine && slots.others >= *limit as i64
        });
        match full {
            Some((key, _)) => decisions.push(Decision::Block(key.clone())),
            None => {
                for (key, _) in &candidate.keys {
                    held.entry(key.clone()).or_default().mine = true;
                }
                decisions.push(Decision::Claim);
            }
        }
    }
    save_throttle_tats(&tats);
    let full: BTreeSet<&str> = decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Block(key) => Some(key.as_str()),
            _ => None,
        })
        .collect();
    block_all(full);
    apply(&candidates, &decisions)
}

/// Most items blocked at once behind a full key, besides the candidates.
const BLOCK_AT_ONCE: i32 = 5000;

/// Blocks the due work waiting for a slot of each full key in bulk, rather
/// than a claim's worth at a time: a backlog behind one key leaves the
/// claim's indexes within a few claims.
fn block_all(keys: BTreeSet<&str>) {
    if keys.is_empty() {
        return;
    }
    let keys: Vec<&str> = keys.into_iter().collect();
    Spi::connect_mut(|client| {
        let statement = prepared(
            &BLOCK_ALL,
            client,
            "UPDATE jobs.queue q SET blocked_on = w.key
             FROM unnest($1::text[]) AS w (key)
             CROSS JOIN LATERAL (
                SELECT run_id, step_id FROM jobs.queue
                WHERE ckey1 = w.key AND claimed_by IS NULL AND blocked_on IS NULL AND NOT held
                  AND cancelled IS NULL AND due_at <= now()
                LIMIT $2 FOR UPDATE SKIP LOCKED) waiting
             WHERE (q.run_id, q.step_id) = (waiting.run_id, waiting.step_id)",
            &[TEXTARRAYOID.value(), INT4OID.value()],
        );
        client
            .update(statement, None, &[keys.into(), BLOCK_AT_ONCE.into()])
            .expect("blocking work behind full keys");
    });
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn candidates(limit: usize) -> Vec<Candidate> {
    Spi::connect_mut(|client| {
        let statement = prepared(
            &CANDIDATES,
            client,
            "SELECT q.run_id, q.step_id, q.ckey1, q.lim1, q.ckey2, q.lim2, q.throttle_key,
                    (f.flow->'throttle')::text, q.cancelled IS NOT NULL
             FROM jobs.queue q LEFT JOIN jobs.functions f ON f.id = q.function_id
             WHERE q.claimed_by IS NULL AND NOT q.held AND q.admit AND q.blocked_on IS NULL AND q.due_at <= now()
             ORDER BY q.due_at LIMIT $1
             FOR UPDATE OF q SKIP LOCKED",
            &[INT4OID.value()],
        );
        client
            .update(statement, None, &[(limit as i32).into()])
            .expect("picking work under flow control")
            .map(|row| {
                let mut keys = Vec::new();
                for (key, limit) in [(3, 4), (5, 6)] {
                    if let (Some(k), Some(l)) = (
                        row.get::<String>(key).ok().flatten(),
                        row.get::<i32>(limit).ok().flatten(),
                    ) {
                        keys.push((k, l));
                    }
                }
                Candidate {
                    run: row.get(1).ok().flatten().expect("run_id"),
                    step: row.get(2).ok().flatten().expect("step_id"),
                    keys,
                    throttle_key: row.get(7).ok().flatten(),
                    throttle: row
                        .get::<String>(8)
                        .ok()
                        .flatten()
                        .and_then(|t| serde_json::from_str(&t).ok()),
                    cancelled: row.get(9).ok().flatten().unwrap_or(false),
                }
            })
            .collect()
    })
}

/// The slots of a concurrency key taken.
#[derive(Clone, Copy, Default)]
struct Slots {
    /// Other executors holding claimed rows of the key.
    others: i64,
    /// Whether this executor holds one (claimed now or still in its batch).
    mine: bool,
}

/// The slots taken of each concurrency key.
fn holders<'a>(keys: impl Iterator<Item = &'a String>) -> BTreeMap<String, Slots> {
    let keys: Vec<&str> = keys.map(String::as_str).collect();
    if keys.is_empty() {
        return BTreeMap::new();
    }
    Spi::connect_mut(|client| {
        let statement = prepared(
            &HOLDERS,
            client,
            "SELECT k, count(DISTINCT h.claimed_by) FILTER (WHERE h.claimed_by <> $2),
                    coalesce(bool_or(h.claimed_by = $2), false)
             FROM unnest($1::text[]) AS k
             LEFT JOIN LATERAL (
                SELECT claimed_by FROM jobs.queue WHERE claimed_by IS NOT NULL AND ckey1 = k
                UNION ALL
                SELECT claimed_by FROM jobs.queue WHERE claimed_by IS NOT NULL AND ckey2 = k) h ON true
             GROUP BY k",
            &[TEXTARRAYOID.value(), INT4OID.value()],
        );
        client
            .select(
                statement,
                None,
                &[keys.into(), unsafe { pg_sys::MyProcPid }.into()],
            )
            .expect("counting concurrency slots")
            .map(|row| {
                (
                    row.get::<String>(1).ok().flatten().unwrap_or_default(),
                    Slots {
                        others: row.get::<i64>(2).ok().flatten().unwrap_or(0),
                        mine: row.get::<bool>(3).ok().flatten().unwrap_or(false),
                    },
                )
            })
            .collect()
    })
}

fn throttle_tats(candidates: &[Candidate]) -> BTreeMap<String, i64> {
    let keys: Vec<&str> = candidates
        .iter()
        .filter_map(|c| c.throttle_key.as_deref())
        .collect();
    if keys.is_empty() {
        return BTreeMap::new();
    }
    Spi::connect_mut(|client| {
        let statement = prepared(
            &THROTTLES,
            client,
            "SELECT key, tat_us FROM jobs.throttles WHERE key = ANY ($1)",
            &[TEXTARRAYOID.value()],
        );
        client
            .select(statement, None, &[keys.into()])
            .expect("reading throttle state")
            .map(|row| {
                (
                    row.get::<String>(1).ok().flatten().unwrap_or_default(),
                    row.get::<i64>(2).ok().flatten().unwrap_or(0),
                )
            })
            .collect()
    })
}

fn save_throttle_tats(tats: &BTreeMap<String, i64>) {
    if tats.is_empty() {
        return;
    }
    let (keys, values): (Vec<&str>, Vec<i64>) = tats.iter().map(|(k, v)| (k.as_str(), *v)).unzip();
    Spi::connect_mut(|client| {
        let statement = prepared(
            &SAVE_THROTTLES,
            client,
            "INSERT INTO jobs.throttles (key, tat_us) SELECT * FROM unnest($1::text[], $2::int8[])
             ON CONFLICT (key) DO UPDATE SET tat_us = excluded.tat_us",
            &[TEXTARRAYOID.value(), INT8ARRAYOID.value()],
        );
        client
            .update(statement, None, &[keys.into(), values.into()])
            .expect("saving throttle state");
    });
}

fn apply(candidates: &[Candidate], decisions: &[Decision]) -> (Vec<pgrx::Uuid>, Vec<String>) {
    let (mut claim_runs, mut claim_steps) = (Vec::new(), Vec::new());
    let (mut block_runs, mut block_steps, mut block_keys) = (Vec::new(), Vec::new(), Vec::new());
    let (mut later_runs, mut later_steps, mut later_at) = (Vec::new(), Vec::new(), Vec::new());
    let mut reserved = Vec::new();
    for (candidate, decision) in candidates.iter().zip(decisions) {
        match decision {
            Decision::Claim => {
                claim_runs.push(candidate.run);
                claim_steps.push(candidate.step.clone());
                if candidate.throttle_key.is_some() {
                    reserved.push((candidate.run, candidate.step.clone()));
                }
            }
            Decision::Block(key) => {
                block_runs.push(candidate.run);
                block_steps.push(candidate.step.clone());
                block_keys.push(key.clone());
                if candidate.throttle_key.is_some() {
                    reserved.push((candidate.run, candidate.step.clone()));
                }
            }
            Decision::Later(at) => {
                later_runs.push(candidate.run);
                later_steps.push(candidate.step.clone());
                later_at.push(*at as f64 / 1e6);
            }
        }
    }
    let (reserved_runs, reserved_steps): (Vec<pgrx::Uuid>, Vec<String>) =
        reserved.into_iter().unzip();
    Spi::connect_mut(|client| {
        let statement = prepared(
            &BLOCK,
            client,
            "WITH blocked AS (
                UPDATE jobs.queue q SET blocked_on = b.key
                FROM unnest($1::uuid[], $2::text[], $3::text[]) AS b (run_id, step_id, key)
                WHERE (q.run_id, q.step_id) = (b.run_id, b.step_id)
             ), reserved AS (
                -- A start reserved is one the throttle counted: it is not asked again.
                UPDATE jobs.queue q SET throttle_key = NULL
                FROM unnest($4::uuid[], $5::text[]) AS r (run_id, step_id)
                WHERE (q.run_id, q.step_id) = (r.run_id, r.step_id)
             )
             UPDATE jobs.queue q SET due_at = to_timestamp(l.at), throttle_key = NULL
             FROM unnest($6::uuid[], $7::text[], $8::float8[]) AS l (run_id, step_id, at)
             WHERE (q.run_id, q.step_id) = (l.run_id, l.step_id)",
            &[
                UUIDARRAYOID.value(),
                TEXTARRAYOID.value(),
                TEXTARRAYOID.value(),
                UUIDARRAYOID.value(),
                TEXTARRAYOID.value(),
                UUIDARRAYOID.value(),
                TEXTARRAYOID.value(),
                FLOAT8ARRAYOID.value(),
            ],
        );
        client
            .update(
                statement,
                None,
                &[
                    block_runs.into(),
                    block_steps.into(),
                    block_keys.into(),
                    reserved_runs.into(),
                    reserved_steps.into(),
                    later_runs.into(),
                    later_steps.into(),
                    later_at.into(),
                ],
            )
            .expect("placing work under flow control");
    });
    (claim_runs, claim_steps)
}

/// The work of a claimed item with concurrency keys stopped executing (it
/// ended, parked or was released): when the round commits, one item waiting
/// for each of its keys is unblocked, to be claimed if the key has a slot
/// (blocked again otherwise: its executor may hold others of the key still).
pub fn release(keys: &[String]) {
    if !keys.is_empty() {
        RELEASED.with(|r| r.borrow_mut().extend(keys.iter().cloned()));
    }
}

/// Unblocks, for each slot the round gave back, the oldest work waiting for
/// a slot of its key; the round's commit makes both visible at once.
pub fn unblock_released() {
    let released = RELEASED.with(|r| std::mem::take(&mut *r.borrow_mut()));
    unblock(released);
}

/// Unblocks as many items waiting for each key as `keys` names it.
pub fn unblock(keys: Vec<String>) {
    if keys.is_empty() {
        return;
    }
    let mut counts: BTreeMap<String, i32> = BTreeMap::new();
    for key in keys {
        *counts.entry(key).or_insert(0) += 1;
    }
    for key in counts.keys() {
        lock_key(key);
    }
    let (keys, counts): (Vec<String>, Vec<i32>) = counts.into_iter().unzip();
    let unblocked = Spi::connect_mut(|client| {
        let statement = prepared(
            &UNBLOCK,
            client,
            "WITH freed AS (
                SELECT q.run_id, q.step_id
                FROM unnest($1::text[], $2::int[]) AS w (key, n)
                CROSS JOIN LATERAL (
                    SELECT run_id, step_id FROM jobs.queue
                    WHERE blocked_on = w.key ORDER BY due_at LIMIT w.n
                    FOR UPDATE SKIP LOCKED) q
             ), unblocked AS (
                UPDATE jobs.queue q SET blocked_on = NULL
                FROM freed f WHERE (q.run_id, q.step_id) = (f.run_id, f.step_id)
                RETURNING 1
             )
             SELECT count(*) FROM unblocked",
            &[TEXTARRAYOID.value(), INT4ARRAYOID.value()],
        );
        client
            .update(statement, None, &[keys.into(), counts.into()])
            .expect("unblocking work")
            .first()
            .get_one::<i64>()
            .ok()
            .flatten()
            .unwrap_or(0)
    });
    shmem::wake_workers_at_commit(unblocked as usize);
}

/// Flags the runs past their `timeouts` for cancellation (after any step
/// executing), at most every `TIMEOUTS_EVERY`.
pub fn cancel_overdue() {
    let due = TIMEOUTS_CHECKED.with(|c| {
        let due = c.get().is_none_or(|at| at.elapsed() >= TIMEOUTS_EVERY);
        if due {
            c.set(Some(Instant::now()));
        }
        due
    });
    if !due {
        return;
    }
    let flagged = Spi::connect_mut(|client| {
        let statement = prepared(
            &OVERDUE,
            client,
            "WITH late AS (
                -- A row an executor's open round holds is its to finish; the
                -- next look after that round commits finds it.
                SELECT run_id FROM jobs.queue
                WHERE step_id = '' AND cancelled IS NULL AND (start_by <= now() OR finish_by <= now())
                FOR UPDATE SKIP LOCKED
             ), overdue AS (
                UPDATE jobs.queue q SET due_at = now(), blocked_on = NULL, held = false,
                       cancelled = jsonb_build_object('message', CASE WHEN q.start_by <= now()
                           THEN 'timeouts.start: the run did not start in time'
                           ELSE 'timeouts.finish: the run did not finish in time' END)
                FROM late WHERE q.run_id = late.run_id AND q.step_id = ''
                RETURNING 1)
             SELECT count(*) FROM overdue",
            &[],
        );
        client
            .update(statement, None, &[])
            .expect("finding runs past their timeouts")
            .first()
            .get_one::<i64>()
            .ok()
            .flatten()
            .unwrap_or(0)
    });
    shmem::wake_workers_at_commit(flagged as usize);
}
