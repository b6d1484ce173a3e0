//! The launcher's retention passes: finished runs past their retention go,
//! with their steps and errors, then the events no run needs any more. Each
//! batch is a short transaction over an index range of UUIDv7 ids (oldest
//! first), touching only finished rows, which nothing else writes.

use std::time::{Duration, Instant};

use pgrx::prelude::*;

use super::{in_transaction, record};
use crate::gucs;
use crate::retention::{self, Scan, BATCH};

/// How often a pass starts looking for expired history.
const PASS_INTERVAL: Duration = Duration::from_secs(10);

pub struct Retention {
    /// What is left of the current pass, last scan first.
    scans: Vec<Scan>,
    /// The last id the current scan looked at.
    cursor: Option<pgrx::Uuid>,
    next_batch: Instant,
    next_pass: Instant,
    pass_started: Instant,
    /// `jobs.retention` when the pass was planned: a reload that changes it
    /// starts a new pass under the new value.
    planned_with: i32,
}

impl Retention {
    pub fn new() -> Retention {
        let now = Instant::now();
        Retention {
            scans: Vec::new(),
            cursor: None,
            next_batch: now,
            next_pass: now,
            pass_started: now,
            planned_with: gucs::RETENTION_S.get(),
        }
    }

    /// Runs the batch that is due, if one is; returns when to be called again.
    pub fn tick(&mut self) -> Instant {
        let now = Instant::now();
        if gucs::RETENTION_S.get() != self.planned_with {
            self.planned_with = gucs::RETENTION_S.get();
            self.scans.clear();
            self.next_pass = now;
        }
        if self.scans.is_empty() {
            if now < self.next_pass {
                return self.next_pass;
            }
            self.pass_started = now;
            self.next_pass = now + PASS_INTERVAL;
            self.scans = in_transaction(plan).unwrap_or_default();
            self.scans.reverse();
            self.cursor = None;
        }
        if now < self.next_batch {
            return self.next_batch;
        }
        let Some(scan) = self.scans.last() else {
            return self.next_pass;
        };
        let started = Instant::now();
        let (last, scanned) = in_transaction(|| batch(scan, self.cursor)).unwrap_or((None, 0));
        if scanned < BATCH {
            self.scans.pop();
            self.cursor = None;
            if self.scans.is_empty() {
                // A pass rescans what it kept (runs of functions that keep
                // theirs longer, old unfinished runs): passes take at most
                // half the time.
                let took = started.duration_since(self.pass_started);
                self.next_pass = self.next_pass.max(Instant::now() + took);
            }
        } else {
            self.cursor = last;
        }
        self.next_batch = Instant::now() + retention::pause_after(started.elapsed());
        if self.scans.is_empty() {
            self.next_pass
        } else {
            self.next_batch
        }
    }
}

fn plan() -> Vec<Scan> {
    let overrides: Vec<(String, i64)> = Spi::connect(|client| {
        client
            .select(
                "SELECT id, (extract(epoch FROM retention))::int8 FROM jobs.functions WHERE retention IS NOT NULL",
                None,
                &[],
            )
            .expect("reading the functions' retention")
            .filter_map(|row| Some((row.get(1).ok().flatten()?, row.get(2).ok().flatten()?)))
            .collect()
    });
    retention::plan(gucs::RETENTION_S.get() as i64, overrides)
}

/// One batch of `scan` after `cursor`: the last id it looked at, and how
/// many rows it looked at.
fn batch(scan: &Scan, cursor: Option<pgrx::Uuid>) -> (Option<pgrx::Uuid>, i64) {
    let after = cursor.unwrap_or_else(|| pgrx::Uuid::from_bytes([0; 16]));
    let (sql, keep_secs, function_id) = match scan {
        Scan::FunctionRuns {
            function_id,
            keep_secs,
        } => (RUNS_OF_FUNCTION, *keep_secs, Some(function_id.as_str())),
        Scan::AllRuns { keep_secs } => (ALL_RUNS, *keep_secs, None),
        Scan::Events { keep_secs } => return events_batch(after, *keep_secs),
    };
    let rows: Vec<(pgrx::Uuid, bool)> = Spi::connect(|client| {
        client
            .select(
                sql,
                None,
                &[
                    after.into(),
                    keep_secs.into(),
                    BATCH.into(),
                    function_id.into(),
                ],
            )
            .expect("finding expired runs")
            .filter_map(|row| Some((row.get(1).ok().flatten()?, row.get(2).ok().flatten()?)))
            .collect()
    });
    let last = rows.last().map(|(id, _)| *id);
    let scanned = rows.len() as i64;
    let expired: Vec<pgrx::Uuid> = rows
        .into_iter()
        .filter(|(_, e)| *e)
        .map(|(id, _)| id)
        .collect();
    if !expired.is_empty() {
        record::forget_runs(expired);
    }
    (last, scanned)
}

/// Runs after $1 in id order, up to those created $2 seconds ago (ids are
/// UUIDv7; a second of margin for the clock), each with whether it is
/// finished past its function's retention and no replay still needs it.
/// Unfinished runs are never removed, however old.
macro_rules! expired_runs {
    ($function_filter:literal) => {
        concat!(
            "SELECT s.id,
                    s.status IN ('completed', 'failed', 'cancelled')
                    AND s.ended_at < now() - coalesce(f.retention, $2 * interval '1 second')
                    AND NOT EXISTS (SELECT FROM jobs.replay_items i WHERE i.source_run_id = s.id AND i.run_id IS NULL)
             FROM (SELECT r.id, r.function_id, r.status, r.ended_at FROM jobs.runs r
                   WHERE r.id > $1 AND r.id < jobs._first_id_at(now() - ($2 - 1) * interval '1 second')",
            $function_filter,
            "
                   ORDER BY r.id LIMIT $3) s
             LEFT JOIN jobs.functions f ON f.id = s.function_id
             ORDER BY s.id"
        )
    };
}

const ALL_RUNS: &str = expired_runs!(" AND $4::text IS NULL");
const RUNS_OF_FUNCTION: &str = expired_runs!(" AND r.function_id = $4");

/// Events after `after` older than `keep_secs` that nothing needs: no run
/// (nor batch) started for them, no replay about to start one.
fn events_batch(after: pgrx::Uuid, keep_secs: i64) -> (Option<pgrx::Uuid>, i64) {
    Spi::connect_mut(|client| {
        let row = client
            .update(
                "WITH scanned AS (
                    SELECT e.id FROM jobs.events e
                    WHERE e.id > $1 AND e.id < jobs._first_id_at(now() - $2 * interval '1 second')
                    ORDER BY e.id LIMIT $3
                 ), unneeded AS (
                    SELECT s.id FROM scanned s
                    WHERE NOT EXISTS (SELECT FROM jobs.runs r WHERE r.event_id = s.id)
                      AND NOT EXISTS (SELECT FROM jobs.batch_events b WHERE b.event_id = s.id)
                      AND NOT EXISTS (SELECT FROM jobs.replay_items i WHERE i.event_id = s.id AND i.run_id IS NULL)
                 ), gone AS (
                    DELETE FROM jobs.events e WHERE e.id = ANY (ARRAY(SELECT id FROM unneeded))
                 ), skips AS (
                    DELETE FROM jobs.skips k WHERE k.event_id = ANY (ARRAY(SELECT id FROM unneeded))
                 )
                 SELECT (SELECT id FROM scanned ORDER BY id DESC LIMIT 1), (SELECT count(*) FROM scanned)",
                None,
                &[after.into(), keep_secs.into(), BATCH.into()],
            )
            .expect("removing events no run needs")
            .first();
        (
            row.get::<pgrx::Uuid>(1).ok().flatten(),
            row.get::<i64>(2).ok().flatten().unwrap_or(0),
        )
    })
}

/// Replays that ended longer ago than the retention go with their items.
pub fn forget_replays() {
    let keep_secs = gucs::RETENTION_S.get() as i64;
    if keep_secs == 0 {
        return;
    }
    Spi::run_with_args(
        "WITH old AS (SELECT id FROM jobs.replay_requests WHERE ended_at < now() - $1 * interval '1 second'),
              items AS (DELETE FROM jobs.replay_items WHERE replay_id IN (SELECT id FROM old))
         DELETE FROM jobs.replay_requests WHERE id IN (SELECT id FROM old)",
        &[keep_secs.into()],
    )
    .expect("forgetting old replays");
}
