//! What a handler calls: `jobs.step`, `jobs.sleep`, `jobs.parallel` and their
//! siblings (the SQL wrappers are in sql/100_steps.sql). Each one either
//! returns what the run's history already holds, or stops the invocation so
//! that the executor does the work in its own transaction (README, "Steps").

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use serde_json::json;

use super::types::JsonbDatum;

use crate::errors::{invalid, raise};
use crate::replay::{self, Memo, Operation, PlannedInvoke, PlannedStep, PlannedWait, Replay};

/// Every step call starts here: inside a handler pg_jobs runs, by the role
/// the handler runs as.
pub(super) fn in_handler<R>(function: &str, f: impl FnOnce(&mut Replay) -> R) -> R {
    replay::with_current(|replay| {
        if replay.owner() != unsafe { pg_sys::GetUserId() }.to_u32() {
            raise(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("{function} was called by another role than the one the handler runs as"),
            )
        }
        f(replay)
    })
    .unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("{function} can only be called by a handler that pg_jobs runs"),
        )
    })
}

/// Ends the invocation here. The executor knows why from the replay state;
/// the error only unwinds the handler. Its SQLSTATE, query_canceled, is one
/// that PL/pgSQL's `WHEN OTHERS` does not catch.
pub(super) fn stop(id: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
        format!("pg_jobs: the run continues at step \"{id}\" in its own transaction"),
    )
}

pub(super) fn required<'a>(function: &str, field: &str, value: Option<&'a str>) -> &'a str {
    match value {
        Some(v) if !v.trim().is_empty() => v,
        Some(_) => invalid(format!("{function}: {field} must not be empty")),
        None => raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{function}: {field} must not be null"),
        ),
    }
}

/// `{"output": ...}` or `{"error": {...}}` as JSON text: the SQL wrapper
/// casts it to jsonb and raises the error with SQLSTATE JB001, which pgrx
/// cannot raise itself. Outputs are kept as the text PostgreSQL printed, never
/// parsed here, whatever their depth.
fn envelope(memo: &Memo) -> Option<String> {
    match memo {
        Memo::Completed(output) => Some(format!(
            "{{\"output\": {}}}",
            output.as_deref().unwrap_or("null")
        )),
        Memo::Failed(error) => Some(
            json!({"error": {
                "sqlstate": error.sqlstate, "message": error.message, "attempts": error.attempts,
            }})
            .to_string(),
        ),
        Memo::Pending { .. } => None,
    }
}

/// What a step of the handler will do: run SQL, or make a fetch's request.
pub(super) enum Work {
    Sql { sql: String, args: Option<String> },
    Fetch(String),
}

pub(super) fn planned(
    replay: &mut Replay,
    name: &str,
    work: Work,
) -> (PlannedStep, Option<String>) {
    let id = replay.next_id(name);
    let done = replay.memo(&id).and_then(envelope);
    let (sql, args, fetch) = match work {
        Work::Sql { sql, args } => (sql, args, None),
        Work::Fetch(spec) => (String::new(), None, Some(spec)),
    };
    let step = PlannedStep {
        attempts: replay.attempts(&id),
        args: replay.args_for(&id, args),
        id,
        name: name.to_string(),
        sql,
        fetch,
    };
    (step, done)
}

#[pg_extern(name = "_step", volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn step_internal(id: Option<&str>, sql: Option<&str>, args: Option<JsonbDatum>) -> String {
    let name = required("jobs.step", "id", id);
    let sql = required("jobs.step", "sql", sql);
    in_handler("jobs.step", |replay| {
        let work = Work::Sql {
            sql: sql.to_string(),
            args: args.map(|a| a.to_text()),
        };
        let (step, done) = planned(replay, name, work);
        match done {
            Some(envelope) if !replay.has_yielded() => envelope,
            _ => {
                let id = step.id.clone();
                replay.yield_operation(Operation::Run(step));
                stop(&id)
            }
        }
    })
}

#[pg_extern(name = "_parallel", volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn parallel_internal(
    ids: Vec<Option<String>>,
    sqls: Vec<Option<String>>,
    args: Vec<Option<String>>,
) -> String {
    if ids.is_empty() {
        invalid("jobs.parallel needs at least one step from jobs.plan")
    }
    in_handler("jobs.parallel", |replay| {
        let mut outputs = Vec::new();
        let mut not_done = Vec::new();
        let mut failed = None;
        for ((id, sql), args) in ids.iter().zip(&sqls).zip(args) {
            let name = required("jobs.plan", "id", id.as_deref());
            let work = match sql {
                None => match super::fetch::planned_fetch(args.as_deref()) {
                    Some(spec) => Work::Fetch(spec),
                    None => raise(
                        PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                        "jobs.plan: sql must not be null",
                    ),
                },
                Some(sql) => Work::Sql {
                    sql: required("jobs.plan", "sql", Some(sql)).to_string(),
                    args,
                },
            };
            let (step, done) = planned(replay, name, work);
            match replay.memo(&step.id) {
                Some(Memo::Completed(output)) => {
                    outputs.push(output.clone().unwrap_or_else(|| "null".into()))
                }
                Some(Memo::Failed(_)) => {
                    if failed.is_none() {
                        failed = done;
                    }
                }
                _ => not_done.push(step),
            }
        }
        if replay.has_yielded() || !not_done.is_empty() {
            let first = not_done
                .first()
                .map_or_else(|| "parallel".to_string(), |s| s.id.clone());
            replay.yield_operation(Operation::Parallel(not_done));
            stop(&first)
        }
        failed.unwrap_or_else(|| format!("{{\"output\": [{}]}}", outputs.join(", ")))
    })
}

fn sleep_until_millis(id: Option<&str>, function: &str, until_ms: impl FnOnce() -> i64) {
    let name = required(function, "id", id);
    in_handler(function, |replay| {
        let id = replay.next_id(name);
        if matches!(replay.memo(&id), Some(Memo::Completed(_))) && !replay.has_yielded() {
            return;
        }
        replay.yield_operation(Operation::Sleep {
            id: id.clone(),
            name: name.to_string(),
            until_ms: until_ms(),
        });
        stop(&id)
    })
}

fn unix_millis(ts: TimestampWithTimeZone) -> i64 {
    crate::pgtime::from_pg(ts).map_or(i64::MAX, |t| t.timestamp_millis())
}

#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn sleep(id: Option<&str>, duration: Option<pgrx::datum::Interval>) {
    let Some(duration) = duration else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "jobs.sleep: duration must not be null",
        )
    };
    let until = Spi::get_one_with_args::<TimestampWithTimeZone>(
        "SELECT clock_timestamp() + $1",
        &[duration.into()],
    )
    .expect("adding an interval to the time")
    .expect("a sum of non-null values");
    sleep_until_millis(id, "jobs.sleep", || unix_millis(until));
}

#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn sleep_until(id: Option<&str>, until: Option<TimestampWithTimeZone>) {
    let Some(until) = until else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "jobs.sleep_until: until must not be null",
        )
    };
    sleep_until_millis(id, "jobs.sleep_until", || unix_millis(until));
}

fn interval_millis(
    function: &str,
    field: &str,
    interval: Option<pgrx::datum::Interval>,
) -> Option<i64> {
    let interval = interval?;
    let millis = (interval.as_micros() / 1000).clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    if millis <= 0 {
        invalid(format!("{function}: {field} must be longer than zero"))
    }
    Some(millis)
}

#[pg_extern(name = "_wait_for_event", volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn wait_for_event_internal(
    id: Option<&str>,
    event: Option<&str>,
    timeout: Option<pgrx::datum::Interval>,
    match_path: Option<&str>,
    condition: Option<&str>,
) -> Option<String> {
    const FUNCTION: &str = "jobs.wait_for_event";
    let name = required(FUNCTION, "id", id);
    let event = required(FUNCTION, "event", event);
    if let Err(why) = crate::event_name::check_name(event) {
        invalid(format!("{FUNCTION}: event \"{event}\" {why}"))
    }
    let Some(timeout_ms) = interval_millis(FUNCTION, "timeout", timeout) else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{FUNCTION}: timeout must not be null"),
        )
    };
    let match_path = match_path.map(|path| {
        crate::expr::match_path(path)
            .unwrap_or_else(|e| invalid(format!("{FUNCTION}: match \"{path}\": {e}")))
    });
    if let Some(source) = condition {
        if let Err(e) = crate::expr::compile(source, crate::expr::EVENT_AND_ASYNC) {
            invalid(format!(
                "{FUNCTION}: condition \"{}\": {e}",
                crate::config::shown(source)
            ))
        }
    }
    let condition = condition.map(str::to_string);
    in_handler(FUNCTION, |replay| {
        let id = replay.next_id(name);
        if let (Some(Memo::Completed(output)), false) = (replay.memo(&id), replay.has_yielded()) {
            return output.clone();
        }
        replay.yield_operation(Operation::Wait(PlannedWait {
            id: id.clone(),
            name: name.to_string(),
            event: event.to_string(),
            timeout_ms,
            match_path,
            condition,
        }));
        stop(&id)
    })
}

#[pg_extern(name = "_invoke", volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn invoke_internal(
    id: Option<&str>,
    function_id: Option<&str>,
    data: Option<JsonbDatum>,
    timeout: Option<pgrx::datum::Interval>,
) -> String {
    const FUNCTION: &str = "jobs.invoke";
    let name = required(FUNCTION, "id", id);
    let function_id = required(FUNCTION, "function_id", function_id);
    let data = match data {
        None => "{}".to_string(),
        Some(object) if object.is_object() => object.to_text(),
        Some(_) => invalid(format!(
            "{FUNCTION}: data for \"{function_id}\" must be a JSON object"
        )),
    };
    let timeout_ms = interval_millis(FUNCTION, "timeout", timeout);
    in_handler(FUNCTION, |replay| {
        let id = replay.next_id(name);
        match replay.memo(&id).and_then(envelope) {
            Some(done) if !replay.has_yielded() => done,
            _ => {
                replay.yield_operation(Operation::Invoke(PlannedInvoke {
                    id: id.clone(),
                    name: name.to_string(),
                    function_id: function_id.to_string(),
                    data,
                    timeout_ms,
                }));
                stop(&id)
            }
        }
    })
}
