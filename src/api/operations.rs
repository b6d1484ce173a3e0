//! Operating runs (README, "Operations"): `jobs.rerun`, `jobs.replay` and
//! `jobs.cancel_replay`, `jobs.cancel_runs`. Each acts only on functions the
//! caller may change (a member of their owner), as the catalog owner.

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use super::as_catalog_owner;
use super::events::{self, NewEvent, Origin, Rerun, Started};
use super::functions::{check_id, check_may_change, exists, interrupt_executing};
use super::types::JsonbDatum;
use crate::errors::{invalid, raise, unknown_function};
use crate::{expr, shmem};

/// What jobs.replay may repeat: runs in these statuses, and `skipped`, the
/// events a rate limit kept from starting a run.
const REPLAYABLE: [&str; 8] = [
    "queued",
    "running",
    "sleeping",
    "waiting",
    "completed",
    "failed",
    "cancelled",
    "skipped",
];

fn not_null<T>(field: &str, value: Option<T>) -> T {
    value.unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{field} must not be null"),
        )
    })
}

/// A run as jobs.rerun and jobs.replay repeat it.
struct SourceRun {
    function_id: String,
    event_id: pgrx::Uuid,
    from_system_event: bool,
}

fn source_run(run_id: pgrx::Uuid) -> Option<SourceRun> {
    let row = Spi::get_three_with_args::<String, pgrx::Uuid, bool>(
        "SELECT r.function_id, r.event_id, r.from_system_event
         FROM (SELECT 1) one LEFT JOIN jobs.runs r ON r.id = $1",
        &[run_id.into()],
    )
    .unwrap_or_else(|e| panic!("looking up run {run_id}: {e}"));
    match row {
        (Some(function_id), Some(event_id), Some(from_system_event)) => Some(SourceRun {
            function_id,
            event_id,
            from_system_event,
        }),
        _ => None,
    }
}

fn unknown_run(run_id: pgrx::Uuid) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
        format!("run {run_id} does not exist"),
    )
}

/// A new run of the same function with the same event(s); from `from_step`
/// on, with the steps completed before it copied as done, and `input` in
/// place of that step's args.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn rerun(
    run_id: Option<pgrx::Uuid>,
    from_step: default!(Option<&str>, "NULL"),
    input: default!(Option<JsonbDatum>, "NULL"),
) -> pgrx::Uuid {
    let run_id = not_null("run_id", run_id);
    if input.is_some() && from_step.is_none() {
        invalid("jobs.rerun: input replaces the args of from_step, so it needs from_step")
    }
    as_catalog_owner(|caller| {
        let source = source_run(run_id).unwrap_or_else(|| unknown_run(run_id));
        check_may_change(&source.function_id, caller);
        if let Some(step) = from_step {
            check_restart_step(run_id, step, input.is_some());
        }
        let rerun = Rerun {
            of: Some(run_id),
            step: from_step,
            input,
            replay: None,
        };
        start_copy(
            &source.function_id,
            source.event_id,
            source.from_system_event,
            rerun,
        )
        .unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                format!("the event of run {run_id} is no longer stored (jobs.retention)"),
            )
        })
    })
}

fn check_restart_step(run_id: pgrx::Uuid, step: &str, with_input: bool) {
    let kind = Spi::get_one_with_args::<String>(
        "SELECT (SELECT kind FROM jobs.steps WHERE run_id = $1 AND id = $2)",
        &[run_id.into(), step.into()],
    )
    .unwrap_or_else(|e| panic!("looking up step {step} of run {run_id}: {e}"));
    match kind.as_deref() {
        None => invalid(format!(
            "from_step \"{step}\" is not a step of run {run_id} (see jobs.steps)"
        )),
        Some(kind) if with_input && kind != "run" => invalid(format!(
            "input replaces the args of a step that runs SQL; from_step \"{step}\" is a {kind} step"
        )),
        Some(_) => {}
    }
}

/// Starts the run `rerun` describes for event `event_id` of `function_id`,
/// with the batch and, from `rerun.step` on, the steps of the run it
/// repeats. `None` when the event is no longer stored.
fn start_copy(
    function_id: &str,
    event_id: pgrx::Uuid,
    from_system_event: bool,
    rerun: Rerun,
) -> Option<pgrx::Uuid> {
    let (source, step) = (rerun.of, rerun.step.map(str::to_string));
    let event = stored_event(event_id)?;
    let origin = Origin {
        from_system_event,
        rerun: Some(rerun),
        ..Origin::default()
    };
    let Started::Run(run) = events::start_rerun(function_id, event_id, event, origin) else {
        unknown_function(function_id)
    };
    if let Some(source) = source {
        Spi::run_with_args(
            "WITH batch AS (
                INSERT INTO jobs.batch_events (run_id, position, event_id)
                SELECT $2, position, event_id FROM jobs.batch_events WHERE run_id = $1
             )
             INSERT INTO jobs.steps (run_id, id, name, kind, status, attempts, output, started_at, ended_at)
             SELECT $2, s.id, s.name, s.kind, s.status, s.attempts, s.output, s.started_at, s.ended_at
             FROM jobs.steps restart JOIN jobs.steps s ON s.run_id = restart.run_id
             WHERE restart.run_id = $1 AND restart.id = $3
               AND s.status = 'completed' AND s.started_at < restart.started_at",
            &[source.into(), run.into(), step.into()],
        )
        .unwrap_or_else(|e| panic!("copying run {source} into {run}: {e}"));
    }
    Some(run)
}

/// The stored event as jobs.send recorded it, to start a run with.
fn stored_event(event_id: pgrx::Uuid) -> Option<NewEvent> {
    let (name, data, ts, owner) = Spi::connect(|client| {
        let row = client
            .select(
                "SELECT name, data::text, ts, owner::oid FROM jobs.events WHERE id = $1",
                None,
                &[event_id.into()],
            )
            .unwrap_or_else(|e| panic!("looking up event {event_id}: {e}"));
        if row.is_empty() {
            return None;
        }
        let row = row.first();
        Some((
            row.get::<String>(1).ok().flatten()?,
            row.get::<String>(2).ok().flatten()?,
            row.get::<TimestampWithTimeZone>(3).ok().flatten(),
            row.get::<pg_sys::Oid>(4).ok().flatten(),
        ))
    })?;
    Some(NewEvent {
        name,
        // Parsed in the caller's memory context, which outlives the insert.
        data: JsonbDatum::parse(&data).0,
        dedup_id: None,
        ts,
        owner,
    })
}

/// One new run for each run of `function_id` created in [from, to] in one
/// of `statuses` (and, for `skipped`, each event a rate limit skipped then),
/// started a few at a time by the launcher. Returns the replay's id (jobs.replays).
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn replay(
    function_id: Option<&str>,
    from: Option<TimestampWithTimeZone>,
    to: Option<TimestampWithTimeZone>,
    statuses: default!(Option<Vec<Option<String>>>, "'{failed}'"),
) -> pgrx::Uuid {
    let function_id = check_id(function_id);
    let (from, to) = (not_null("from", from), not_null("to", to));
    if from > to {
        invalid(format!("from ({from}) is after to ({to})"))
    }
    let statuses: Vec<String> = not_null("statuses", statuses)
        .into_iter()
        .map(|status| match status {
            Some(s) if REPLAYABLE.contains(&s.as_str()) => s,
            other => invalid(format!(
                "statuses: {} is not one of {}",
                other.map_or("NULL".into(), |s| format!("\"{s}\"")),
                REPLAYABLE.join(", ")
            )),
        })
        .collect();
    if statuses.is_empty() {
        invalid("statuses must name at least one status")
    }
    as_catalog_owner(|caller| {
        check_may_change(function_id, caller);
        let id = events::new_id();
        let total = Spi::get_one_with_args::<i64>(
            "WITH items AS (
                INSERT INTO jobs.replay_items (replay_id, position, source_run_id, event_id)
                SELECT $1, row_number() OVER (ORDER BY at, source_run_id, event_id), source_run_id, event_id
                FROM (SELECT r.id AS source_run_id, NULL::uuid AS event_id, r.created_at AS at
                      FROM jobs.runs r
                      WHERE r.function_id = $2
                        AND r.id >= jobs._first_id_at($3 - interval '1 second')
                        AND r.id < jobs._first_id_at($4 + interval '1 second')
                        AND r.created_at BETWEEN $3 AND $4 AND r.status = ANY ($5)
                      UNION ALL
                      SELECT NULL, s.event_id, s.at
                      FROM jobs.skips s
                      WHERE 'skipped' = ANY ($5) AND s.function_id = $2 AND s.at BETWEEN $3 AND $4
                        AND s.reason LIKE 'rate limited%') x
                RETURNING 1
             ), request AS (
                INSERT INTO jobs.replay_requests (id, function_id, window_from, window_to, statuses, created_by, total)
                SELECT $1, $2, $3, $4, $5, $6, count(*) FROM items
                RETURNING total
             )
             SELECT total FROM request",
            &[
                id.into(),
                function_id.into(),
                from.into(),
                to.into(),
                statuses.into(),
                caller.into(),
            ],
        )
        .unwrap_or_else(|e| panic!("replaying {function_id}: {e}"))
        .unwrap_or(0);
        if total == 0 {
            notice!(
                "jobs.replay: no run of {function_id} in that window has one of those statuses"
            );
        }
        id
    })
}

/// Stops a replay: no more of its runs start (those started go on; see
/// jobs.cancel_runs).
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn cancel_replay(replay_id: Option<pgrx::Uuid>) {
    let replay_id = not_null("replay_id", replay_id);
    as_catalog_owner(|caller| {
        let (function_id, creator_member, ended) = Spi::get_three_with_args::<String, bool, bool>(
            "SELECT q.function_id, pg_has_role($2, q.created_by, 'MEMBER'),
                    q.ended_at IS NOT NULL OR q.cancelled_at IS NOT NULL
             FROM (SELECT 1) one LEFT JOIN jobs.replay_requests q ON q.id = $1",
            &[replay_id.into(), caller.into()],
        )
        .unwrap_or_else(|e| panic!("looking up replay {replay_id}: {e}"));
        let Some(function_id) = function_id else {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                format!("replay {replay_id} does not exist"),
            )
        };
        if exists(&function_id) {
            check_may_change(&function_id, caller);
        } else if creator_member != Some(true) {
            raise(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("replay {replay_id} belongs to another role"),
            )
        }
        if ended == Some(true) {
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("replay {replay_id} has already ended or been cancelled"),
            )
        }
        Spi::run_with_args(
            "UPDATE jobs.replay_requests SET cancelled_at = now() WHERE id = $1",
            &[replay_id.into()],
        )
        .unwrap_or_else(|e| panic!("cancelling replay {replay_id}: {e}"));
    })
}

/// Cancels the unfinished runs of `function_id` created in [from, to] (either
/// end open when NULL) whose event matches the CEL expression `if`, as
/// jobs.cancel_run does; returns how many. jobs.cancel_runs (in
/// sql/200_operations.sql) calls it: pgrx cannot name an argument `if`.
#[pg_extern(name = "_cancel_runs", volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn cancel_runs(
    function_id: Option<&str>,
    from: default!(Option<TimestampWithTimeZone>, "NULL"),
    to: default!(Option<TimestampWithTimeZone>, "NULL"),
    condition: default!(Option<&str>, "NULL"),
) -> i64 {
    let function_id = check_id(function_id);
    if let (Some(from), Some(to)) = (from, to) {
        if from > to {
            invalid(format!("from ({from}) is after to ({to})"))
        }
    }
    if let Some(source) = condition {
        if let Err(e) = expr::compile(source, expr::EVENT) {
            invalid(format!("if: {e}"))
        }
    }
    as_catalog_owner(|caller| {
        check_may_change(function_id, caller);
        let cancelled: Vec<pgrx::Uuid> = Spi::connect_mut(|client| {
            client
                .update(
                    "WITH target AS (
                        SELECT q.run_id
                        FROM jobs.queue q JOIN jobs.runs r ON r.id = q.run_id JOIN jobs.events e ON e.id = r.event_id
                        WHERE q.function_id = $1 AND q.step_id = '' AND q.cancelled IS NULL
                          AND ($2::timestamptz IS NULL OR r.created_at >= $2)
                          AND ($3::timestamptz IS NULL OR r.created_at <= $3)
                          AND ($4::text IS NULL OR jobs._expr_true($4, jsonb_build_object('event',
                                jsonb_build_object('id', e.id, 'name', e.name, 'data', e.data, 'ts', e.ts))))
                     )
                     UPDATE jobs.queue q SET due_at = now(), held = false, blocked_on = NULL,
                            cancelled = jsonb_build_object('message', 'cancelled by jobs.cancel_runs',
                                                           'by', $5::regrole::text)
                     FROM target t
                     WHERE q.run_id = t.run_id AND q.step_id = ''
                     RETURNING q.run_id",
                    None,
                    &[
                        function_id.into(),
                        from.into(),
                        to.into(),
                        condition.into(),
                        caller.into(),
                    ],
                )
                .unwrap_or_else(|e| panic!("cancelling runs of {function_id}: {e}"))
                .filter_map(|row| row.get::<pgrx::Uuid>(1).ok().flatten())
                .collect()
        });
        shmem::wake_workers_at_commit(cancelled.len());
        interrupt_executing(&cancelled);
        cancelled.len() as i64
    })
}

/// An item of a replay: a run to repeat, or an event a rate limit skipped.
pub struct ReplayItem {
    pub replay: pgrx::Uuid,
    pub position: i64,
    pub function_id: String,
    pub source_run_id: Option<pgrx::Uuid>,
    pub event_id: Option<pgrx::Uuid>,
}

/// Starts the run of a replay's item (worker/replays.rs); `None` when what
/// it repeats is gone (its function, run or event).
pub fn start_replay_item(item: &ReplayItem) -> Option<pgrx::Uuid> {
    if !exists(&item.function_id) {
        return None;
    }
    let rerun = Rerun {
        of: item.source_run_id,
        replay: Some(item.replay),
        ..Rerun::default()
    };
    match (item.source_run_id, item.event_id) {
        (Some(run), _) => {
            let source = source_run(run)?;
            start_copy(
                &item.function_id,
                source.event_id,
                source.from_system_event,
                rerun,
            )
        }
        (None, Some(event)) => start_copy(&item.function_id, event, false, rerun),
        (None, None) => None,
    }
}
