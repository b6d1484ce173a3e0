//! Troubleshooting, the guide's "the function does not run": what happened to
//! an event, function by function, and whether the workers are up.

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use super::as_catalog_owner;
use crate::errors::raise;
use crate::shmem;

/// For each function (of the caller's, or all for a superuser): whether the
/// event started it, and why not when it did not.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn explain_event(
    event_id: Option<pgrx::Uuid>,
) -> TableIterator<
    'static,
    (
        name!(function_id, String),
        name!(matched, bool),
        name!(reason, String),
        name!(run_ids, Vec<pgrx::Uuid>),
    ),
> {
    let Some(event_id) = event_id else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "event_id must not be null",
        )
    };
    let rows = as_catalog_owner(|caller| {
        let known = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT FROM jobs.events WHERE id = $1)",
            &[event_id.into()],
        )
        .unwrap_or_else(|e| panic!("looking up event {event_id}: {e}"));
        if known != Some(true) {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                format!("event {event_id} does not exist"),
            )
        }
        Spi::connect(|client| {
            client
                .select(
                    "WITH e AS (
                        SELECT id, name, duplicate_of,
                               jsonb_build_object('event', jsonb_build_object('id', id, 'name', name, 'data', data, 'ts', ts)) AS doc
                        FROM jobs.events WHERE id = $1
                     ), f AS (
                        SELECT f.id, f.paused, f.filter, f.config->>'if' AS condition,
                               (SELECT string_agg(t.event || CASE WHEN t.wildcard THEN '*' ELSE '' END, ', ' ORDER BY t.event)
                                FROM jobs.triggers t WHERE t.function_id = f.id) AS listens,
                               EXISTS (SELECT FROM jobs.triggers t WHERE t.function_id = f.id
                                       AND (t.event = e.name OR (t.wildcard AND starts_with(e.name, t.event)))) AS subscribed,
                               coalesce((SELECT array_agg(r.id ORDER BY r.created_at) FROM jobs.runs r
                                         WHERE r.event_id = e.id AND r.function_id = f.id), '{}') AS runs,
                               e.name, e.duplicate_of, e.doc
                        FROM jobs.functions f CROSS JOIN e
                        WHERE pg_has_role($2, f.owner, 'MEMBER')
                     )
                     SELECT id, cardinality(runs) > 0,
                            CASE
                              WHEN cardinality(runs) > 0 AND paused THEN 'started; held while the function is paused'
                              WHEN cardinality(runs) > 0 THEN 'started'
                              WHEN duplicate_of IS NOT NULL THEN
                                'deduplicated: event ' || duplicate_of || ' had the same id within 24 hours'
                              WHEN listens IS NULL THEN 'no event trigger (it runs when invoked or on its schedule)'
                              WHEN NOT subscribed THEN 'listens to ' || listens || ', not to ' || name
                              WHEN filter IS NOT NULL AND NOT jobs._expr_true(filter, doc) THEN
                                'its if filter is false: ' || condition
                              ELSE 'it matches now, but was not defined this way when the event was sent'
                            END,
                            runs
                     FROM f
                     ORDER BY cardinality(runs) > 0 DESC, id",
                    None,
                    &[event_id.into(), caller.into()],
                )
                .unwrap_or_else(|e| panic!("explaining event {event_id}: {e}"))
                .map(|row| {
                    (
                        row.get::<String>(1).ok().flatten().unwrap_or_default(),
                        row.get::<bool>(2).ok().flatten().unwrap_or(false),
                        row.get::<String>(3).ok().flatten().unwrap_or_default(),
                        row.get::<Vec<pgrx::Uuid>>(4).ok().flatten().unwrap_or_default(),
                    )
                })
                .collect::<Vec<_>>()
        })
    });
    TableIterator::new(rows)
}

/// The launcher and the executors, from shared memory: the rows of the
/// `jobs.workers` view.
#[pg_extern(name = "_workers", volatile, parallel_unsafe)]
// pgrx reads the column names from `name!` in the signature itself, so the
// row type cannot move into an alias.
#[allow(clippy::type_complexity)]
fn workers() -> TableIterator<
    'static,
    (
        name!(kind, String),
        name!(slot, Option<i32>),
        name!(pid, Option<i32>),
        name!(state, String),
        name!(run_id, Option<pgrx::Uuid>),
        name!(last_heartbeat, Option<TimestampWithTimeZone>),
    ),
> {
    if !crate::preloaded() {
        return TableIterator::new(Vec::new());
    }
    let heartbeat = |ms: i64| {
        (ms > 0)
            .then(|| chrono::DateTime::from_timestamp_millis(ms))
            .flatten()
            .and_then(crate::pgtime::to_pg)
    };
    let shared = shmem::shared();
    let mut rows = Vec::new();
    if let Some((pid, beat)) = shared.launcher() {
        rows.push((
            "launcher".to_string(),
            None,
            Some(pid),
            "running".to_string(),
            None,
            heartbeat(beat),
        ));
    }
    let (wanted, missing) = shared.workers_shortfall();
    for (slot, worker) in shared.workers.iter().enumerate() {
        match worker.status() {
            Some(status) => {
                let state = if status.run.is_some() {
                    "running"
                } else {
                    "idle"
                };
                rows.push((
                    "executor".to_string(),
                    Some(slot as i32),
                    Some(status.pid),
                    state.to_string(),
                    status.run.map(pgrx::Uuid::from_bytes),
                    heartbeat(status.heartbeat_ms),
                ));
            }
            // The launcher could not start it: too few max_worker_processes.
            None if missing > 0 && slot < wanted => rows.push((
                "executor".to_string(),
                Some(slot as i32),
                None,
                "not started: max_worker_processes is too low".to_string(),
                None,
                None,
            )),
            None => {}
        }
    }
    TableIterator::new(rows)
}
