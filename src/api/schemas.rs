//! Event schemas, the SQL twin of validating `event.data` with zod:
//! `jobs.define_event` registers a JSON Schema for an event name, and
//! `jobs.send` refuses data that breaks it, in the sender's transaction.

use std::cell::RefCell;
use std::collections::HashMap;

use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};
use serde_json::Value;

use super::types::JsonbDatum;
use super::{as_catalog_owner, prepared, StatementCache};
use crate::errors::{invalid, raise};
use crate::event_name;

thread_local! {
    static FIND_SCHEMA: StatementCache = const { StatementCache::new() };
    /// Compiled schemas by event name, with the text they were compiled from.
    static COMPILED: RefCell<HashMap<String, (String, jsonschema::Validator)>> = RefCell::new(HashMap::new());
}

/// Errors shown in one message; the rest are counted.
const ERRORS_SHOWN: usize = 3;

fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    crate::stack::deep(|| {
        jsonschema::options()
            .should_validate_formats(true)
            .build(schema)
            .map_err(|e| e.to_string())
    })
}

/// Registers (or, with a NULL schema, removes) the JSON Schema that the data
/// of events named `name` must match.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn define_event(name: Option<&str>, schema: Option<JsonbDatum>) {
    let Some(name) = name else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "event name must not be null",
        )
    };
    if let Err(why) = event_name::check_user_name(name) {
        invalid(format!("event name \"{name}\" {why}"))
    }
    let schema = schema.map(|s| {
        s.to_value()
            .unwrap_or_else(|_| crate::errors::too_deep(&format!("schema for \"{name}\"")))
    });
    if let Some(schema) = &schema {
        if !schema.is_object() {
            invalid(format!("schema for \"{name}\" must be a JSON Schema object such as '{{\"type\": \"object\"}}'"))
        }
        if let Err(why) = compile(schema) {
            invalid(format!(
                "schema for \"{name}\" is not a valid JSON Schema: {why}"
            ))
        }
    }
    as_catalog_owner(|_| {
        Spi::run_with_args(
            "WITH gone AS (DELETE FROM jobs.event_schemas WHERE name = $1 AND $2::jsonb IS NULL)
             INSERT INTO jobs.event_schemas (name, schema)
             SELECT $1, $2 WHERE $2::jsonb IS NOT NULL
             ON CONFLICT (name) DO UPDATE SET schema = excluded.schema, updated_at = now()",
            &[name.into(), schema.map(JsonB).into()],
        )
        .unwrap_or_else(|e| panic!("storing the schema of {name}: {e}"));
    });
}

/// Checks an event's data against the schema of its name, if it has one.
/// `prefix` names the event in a batch (`events[2].`).
pub fn check(client: &pgrx::spi::SpiClient<'_>, prefix: &str, name: &str, data: pg_sys::Datum) {
    let find = prepared(
        &FIND_SCHEMA,
        client,
        "SELECT schema::text FROM jobs.event_schemas WHERE name = $1",
        &[TEXTOID.value()],
    );
    let rows = client
        .select(find, None, &[name.into()])
        .expect("looking up an event schema");
    let Some(text) = (!rows.is_empty())
        .then(|| rows.first().get_one::<String>().ok().flatten())
        .flatten()
    else {
        return;
    };
    let data = JsonbDatum(data).to_value().unwrap_or_else(|_| {
        crate::errors::too_deep(&format!(
            "{prefix}data of event \"{name}\", which has a schema,"
        ))
    });
    let problems: Option<Vec<String>> = COMPILED.with(|compiled| {
        let mut compiled = compiled.borrow_mut();
        let fresh = compiled.get(name).is_none_or(|(source, _)| *source != text);
        if fresh {
            let schema: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let validator = compile(&schema).ok()?;
            compiled.insert(name.to_string(), (text.clone(), validator));
        }
        let (_, validator) = compiled.get(name)?;
        Some(crate::stack::deep(|| {
            validator
                .iter_errors(&data)
                .map(|e| {
                    format!(
                        "data{}: {} (rule {})",
                        e.instance_path(),
                        e,
                        e.schema_path()
                    )
                })
                .collect()
        }))
    });
    let Some(problems) = problems.filter(|p| !p.is_empty()) else {
        return;
    };
    let mut message = format!("{prefix}data of event \"{name}\" does not match its schema: ");
    message.push_str(
        &problems
            .iter()
            .take(ERRORS_SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join("; "),
    );
    if problems.len() > ERRORS_SHOWN {
        message.push_str(&format!("; and {} more", problems.len() - ERRORS_SHOWN));
    }
    invalid(message)
}
