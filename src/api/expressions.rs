//! Evaluating the CEL expressions stored in the catalog (`if` filters, wait
//! conditions, `cancel_on` filters) from pg_jobs' own SQL statements.

use pgrx::prelude::*;

use super::types::JsonbDatum;
use crate::expr;

/// Whether `expression` is true with the top-level fields of `variables`
/// (`{"event": ..., "async": ...}`) bound. Errors are false, as in Inngest.
#[pg_extern(name = "_expr_true", immutable, parallel_safe, strict)]
fn expr_true(expression: &str, variables: JsonbDatum) -> bool {
    let Ok(serde_json::Value::Object(fields)) = variables.to_value() else {
        return false;
    };
    let Ok(compiled) = expr::cached(expression, expr::EVENT_AND_ASYNC) else {
        return false;
    };
    let bound: Vec<(&str, &serde_json::Value)> = fields
        .iter()
        .map(|(name, value)| (name.as_str(), value))
        .collect();
    compiled.is_true(&bound)
}
