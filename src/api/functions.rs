//! Defining functions: `jobs.create_function` and the calls that pause, resume,
//! delete and invoke them.

use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};

use super::events::{insert_event, new_id, NewEvent};
use super::types::RegProcedure;
use super::{as_catalog_owner, current_role};
use crate::config::{self, FunctionConfig};
use crate::errors::{self, invalid, raise, warn_not_preloaded};
use crate::{event_name, shmem};

fn check_id(id: Option<&str>) -> &str {
    let Some(id) = id else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "function id must not be null",
        )
    };
    if id.trim().is_empty()
        || id.chars().count() > event_name::MAX_LEN
        || id.chars().any(char::is_control)
    {
        invalid(format!(
            "function id \"{id}\" must be 1 to {} printable characters",
            event_name::MAX_LEN
        ))
    }
    id
}

/// The handler's schema-qualified signature, after checking that it can be one.
fn check_handler(handler: Option<RegProcedure>) -> String {
    let Some(RegProcedure(oid)) = handler else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "handler must not be null",
        )
    };
    let row = Spi::get_three_with_args::<String, bool, bool>(
        "SELECT format('%I.%I(%s)', n.nspname, p.proname, pg_catalog.oidvectortypes(p.proargtypes)),
                p.pronargs = 1 AND p.proargtypes[0] = 'pg_catalog.jsonb'::pg_catalog.regtype
                    AND p.prokind = 'f' AND NOT p.proretset,
                pg_catalog.has_function_privilege($2, p.oid, 'EXECUTE')
         FROM (SELECT $1::pg_catalog.oid AS oid) h
         LEFT JOIN pg_catalog.pg_proc p ON p.oid = h.oid
         LEFT JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace",
        &[oid.into(), current_role().into()],
    )
    .unwrap_or_else(|e| panic!("looking up the handler: {e}"));
    let (Some(signature), Some(shape_ok), Some(may_execute)) = row else {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_FUNCTION,
            format!("handler with oid {oid} does not exist"),
        )
    };
    if !shape_ok {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_FUNCTION_DEFINITION,
            format!("handler {signature} must be a function that takes one jsonb argument (ctx jsonb) and returns one value"),
        )
    }
    if !may_execute {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("handler {signature}: permission denied to execute it, and it would run with your rights"),
        )
    }
    signature
}

/// Refuses to change a function another role defined, unless the caller is a member of that role.
fn check_may_change(id: &str, caller: pg_sys::Oid) {
    let owned = Spi::get_one_with_args::<bool>(
        "SELECT (SELECT pg_catalog.pg_has_role($2, owner, 'MEMBER') FROM jobs.functions WHERE id = $1)",
        &[id.into(), caller.into()],
    )
    .unwrap_or_else(|e| panic!("looking up function {id}: {e}"));
    match owned {
        None => errors::unknown_function(id),
        Some(false) => raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("function id \"{id}\" belongs to another role; only members of that role may change it"),
        ),
        Some(true) => {}
    }
}

fn exists(id: &str) -> bool {
    Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM jobs.functions WHERE id = $1)",
        &[id.into()],
    )
    .unwrap_or_else(|e| panic!("looking up function {id}: {e}"))
        == Some(true)
}

#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn create_function(
    id: Option<&str>,
    handler: Option<RegProcedure>,
    config: default!(Option<JsonB>, "'{}'"),
) {
    warn_not_preloaded();
    let id = check_id(id);
    let signature = check_handler(handler);
    let config = config.map(|c| c.0).unwrap_or_else(|| serde_json::json!({}));
    let parsed: FunctionConfig = config::parse(&config).unwrap_or_else(|e| errors::config(e));
    as_catalog_owner(|owner| {
        if exists(id) {
            check_may_change(id, owner);
        }
        let (names, wildcards): (Vec<String>, Vec<bool>) = parsed
            .triggers
            .iter()
            .map(|t| (t.name.clone(), t.wildcard))
            .unzip();
        Spi::run_with_args(
            "WITH defined AS (
                INSERT INTO jobs.functions AS f
                    (id, handler, config, owner, max_attempts, backoff, max_runtime, filter)
                VALUES ($1, $2, $3, $4, $5, $6, $7 * interval '1 millisecond', $8::jsonpath)
                ON CONFLICT (id) DO UPDATE SET
                    handler = excluded.handler, config = excluded.config, owner = excluded.owner,
                    max_attempts = excluded.max_attempts, backoff = excluded.backoff,
                    max_runtime = excluded.max_runtime, filter = excluded.filter, updated_at = now()
                RETURNING id
             ), old_triggers AS (
                DELETE FROM jobs.triggers WHERE function_id = $1
             )
             INSERT INTO jobs.triggers (event, wildcard, function_id)
             SELECT event, wildcard, (SELECT id FROM defined)
             FROM unnest($9::text[], $10::bool[]) AS t (event, wildcard)",
            &[
                id.into(),
                signature.as_str().into(),
                JsonB(config).into(),
                owner.into(),
                (parsed.max_attempts as i32).into(),
                JsonB(parsed.backoff.to_json()).into(),
                parsed.max_runtime.map(|d| d.as_millis() as f64).into(),
                parsed.filter.as_deref().into(),
                names.into(),
                wildcards.into(),
            ],
        )
        .unwrap_or_else(|e| panic!("storing function {id}: {e}"));
    });
}

#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn delete_function(id: Option<&str>) {
    let id = check_id(id);
    as_catalog_owner(|caller| {
        check_may_change(id, caller);
        // Runs not yet claimed are cancelled now; one an executor holds is
        // cancelled when the executor finds its function gone.
        Spi::run_with_args(
            "WITH gone AS (DELETE FROM jobs.functions WHERE id = $1),
                  unclaimed AS (DELETE FROM jobs.queue WHERE function_id = $1 AND claimed_by IS NULL RETURNING run_id)
             UPDATE jobs.runs SET status = 'cancelled', ended_at = clock_timestamp(),
                    error = jsonb_build_object('message', 'function deleted')
             WHERE id IN (SELECT run_id FROM unclaimed)",
            &[id.into()],
        )
        .unwrap_or_else(|e| panic!("deleting function {id}: {e}"));
    });
}

#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn pause_function(id: Option<&str>) {
    set_paused(check_id(id), true);
}

#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn resume_function(id: Option<&str>) {
    set_paused(check_id(id), false);
}

fn set_paused(id: &str, paused: bool) {
    as_catalog_owner(|caller| {
        check_may_change(id, caller);
        let released = Spi::get_one_with_args::<i64>(
            "WITH f AS (UPDATE jobs.functions SET paused = $2, updated_at = now() WHERE id = $1),
                  q AS (UPDATE jobs.queue SET held = $2 WHERE function_id = $1 AND held <> $2 RETURNING 1)
             SELECT count(*) FROM q",
            &[id.into(), paused.into()],
        )
        .unwrap_or_else(|e| panic!("pausing function {id}: {e}"))
        .unwrap_or(0);
        if !paused {
            shmem::wake_workers_at_commit(released as usize);
        }
    });
}

#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn invoke_function(id: Option<&str>, data: default!(Option<JsonB>, "'{}'")) -> pgrx::Uuid {
    warn_not_preloaded();
    let id = check_id(id);
    let data = match data.map(|d| d.0) {
        Some(object @ serde_json::Value::Object(_)) => object,
        Some(_) | None => invalid(format!("data for function \"{id}\" must be a JSON object")),
    };
    as_catalog_owner(|_| {
        let paused = Spi::get_one_with_args::<bool>(
            "SELECT (SELECT paused FROM jobs.functions WHERE id = $1)",
            &[id.into()],
        )
        .unwrap_or_else(|e| panic!("looking up function {id}: {e}"))
        .unwrap_or_else(|| errors::unknown_function(id));
        let event = NewEvent {
            name: "jobs/function.invoked".into(),
            data: JsonB(data).into_datum().expect("jsonb is never null here"),
            dedup_id: None,
            ts: None,
        };
        let run_id = new_id();
        Spi::connect_mut(|client| {
            insert_event(
                client,
                new_id(),
                &event,
                None,
                &[(run_id, id.to_string(), paused)],
            )
        });
        if !paused {
            shmem::wake_workers_at_commit(1);
        }
        run_id
    })
}
