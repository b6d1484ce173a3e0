//! Every error pg_jobs raises on bad input: an SQLSTATE and a message that names
//! the field and the value.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

use crate::config::{ConfigError, ErrorKind};

/// SQLSTATEs of pg_jobs' own (raised by the SQL wrappers in sql/100_steps.sql).
/// A step ran out of attempts; raised inside the handler at that step.
pub const STEP_FAILED: &str = "JB001";
/// `jobs.non_retriable`: fail now, no retry.
pub const NON_RETRIABLE: &str = "JB002";
/// `jobs.retry_after`: retry after the delay in the error's detail.
pub const RETRY_AFTER: &str = "JB003";

pub fn raise(code: PgSqlErrorCode, message: impl Into<String>) -> ! {
    ErrorReport::new(code, message.into(), "").report(PgLogLevel::ERROR);
    unreachable!("ERROR returns control to PostgreSQL")
}

/// 22023: a value the caller passed is not acceptable.
pub fn invalid(message: impl Into<String>) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message)
}

/// Deepest JSON pg_jobs reads (serde_json's limit; its parser recurses).
pub const MAX_JSON_DEPTH: usize = 128;

/// 54001: a JSON argument nests deeper than pg_jobs reads.
pub fn too_deep(field: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_STATEMENT_TOO_COMPLEX,
        format!("{field} nests deeper than {MAX_JSON_DEPTH} levels, which pg_jobs does not read"),
    )
}

/// 42704: no pg_jobs function has this id.
pub fn unknown_function(id: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
        format!("function id \"{id}\" does not exist"),
    )
}

/// 22023 for a bad config, 0A000 for a key of the contract this version does not implement yet.
pub fn config(error: ConfigError) -> ! {
    let code = match error.kind {
        ErrorKind::Invalid => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        ErrorKind::NotSupportedYet => PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
    };
    raise(code, error.to_string())
}

pub fn warn_not_preloaded() {
    if !crate::preloaded() {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_WARNING,
            "pg_jobs is not in shared_preload_libraries: nothing will run until it is",
            "",
        )
        .set_hint(
            "Add pg_jobs to shared_preload_libraries in postgresql.conf and restart the server.",
        )
        .report(PgLogLevel::WARNING);
    }
}
