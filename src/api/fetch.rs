//! `jobs.fetch`, `jobs.plan_fetch` (SQL wrappers in sql/100_steps.sql) and
//! the secrets their requests use. The request itself is made by the fetcher
//! (worker/fetcher.rs); here it is only checked and planned.

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use serde_json::Value;

use super::steps::{in_handler, planned, required, stop, Work};
use super::types::JsonbDatum;
use crate::errors::{invalid, raise, too_deep};
use crate::fetch::{self, FetchSpec};
use crate::replay::Operation;

/// The spec as the fetcher reads it, checked now so that a bad argument is an
/// error in the handler (22023) rather than a failed step.
fn checked_spec(function: &str, spec: &str) -> String {
    let value = parse(function, spec);
    match FetchSpec::from_json(&value) {
        Ok(spec) => spec.to_json().to_string(),
        Err(e) => invalid(format!("{function}: {}", e.0)),
    }
}

fn parse(function: &str, text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| {
        if e.to_string().contains("recursion limit") {
            too_deep(function)
        }
        invalid(format!("{function}: the request cannot be read: {e}"))
    })
}

/// The spec of a step without sql, which jobs.plan_fetch makes (`args` =
/// {"fetch": spec}), if it is one.
pub(super) fn planned_fetch(args: Option<&str>) -> Option<String> {
    let value = parse("jobs.plan_fetch", args?);
    let spec = value.as_object().filter(|o| o.len() == 1)?.get("fetch")?;
    Some(checked_spec("jobs.plan_fetch", &spec.to_string()))
}

#[pg_extern(name = "_fetch", volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn fetch_internal(id: Option<&str>, spec: Option<JsonbDatum>) -> String {
    const FUNCTION: &str = "jobs.fetch";
    let name = required(FUNCTION, "id", id);
    let Some(spec) = spec else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{FUNCTION}: the request must not be null"),
        )
    };
    let spec = checked_spec(FUNCTION, &spec.to_text());
    in_handler(FUNCTION, |replay| {
        let (step, done) = planned(replay, name, Work::Fetch(spec));
        match done {
            Some(envelope) if !replay.has_yielded() => envelope,
            _ => {
                let id = step.id.clone();
                replay.yield_operation(Operation::Parallel(vec![step]));
                stop(&id)
            }
        }
    })
}

fn checked_name(function: &str, name: Option<&str>) -> String {
    let name = required(function, "name", name);
    fetch::check_secret_name(name).unwrap_or_else(|e| invalid(format!("{function}: {e}")));
    name.to_string()
}

/// Sets a secret of the calling role: `{{secret.NAME}}` in the requests of
/// the functions it owns. Replaces the value if the name is set already.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn set_secret(name: Option<&str>, value: Option<&str>) {
    const FUNCTION: &str = "jobs.set_secret";
    let name = checked_name(FUNCTION, name);
    let Some(value) = value else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{FUNCTION}: value must not be null"),
        )
    };
    if value.is_empty() || value.len() > fetch::MAX_SECRET_LEN {
        invalid(format!(
            "{FUNCTION}: the value of secret \"{name}\" must be 1 to {} bytes long, not {}",
            fetch::MAX_SECRET_LEN,
            value.len()
        ))
    }
    super::as_catalog_owner(|role| {
        Spi::run_with_args(
            "INSERT INTO jobs.secrets (owner, name, value) VALUES ($1::oid::regrole, $2, $3)
             ON CONFLICT (owner, name) DO UPDATE SET value = excluded.value, updated_at = now()",
            &[role.into(), name.as_str().into(), value.into()],
        )
        .expect("setting a secret");
    });
}

/// Deletes a secret of the calling role; false when it had none of that name.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn delete_secret(name: Option<&str>) -> bool {
    let name = checked_name("jobs.delete_secret", name);
    super::as_catalog_owner(|role| {
        Spi::get_one_with_args::<bool>(
            "WITH gone AS (DELETE FROM jobs.secrets WHERE owner = $1::oid::regrole AND name = $2 RETURNING 1)
             SELECT EXISTS (SELECT FROM gone)",
            &[role.into(), name.as_str().into()],
        )
        .expect("deleting a secret")
        .unwrap_or(false)
    })
}
