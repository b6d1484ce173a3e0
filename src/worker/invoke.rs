//! Calling user code: in a subtransaction, as the function's owner, with the
//! session state it changes put back afterwards, bounded by `max_runtime`.

use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::time::Duration;

use pgrx::pg_sys::panic::CaughtError;
use pgrx::pg_sys::PgTryBuilder;
use pgrx::prelude::*;

/// What a failed attempt leaves in `jobs.runs.error` and `jobs.attempt_errors`.
#[derive(Debug, Clone)]
pub struct Failure {
    pub sqlstate: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(sqlstate: &str, message: impl Into<String>) -> Failure {
        Failure {
            sqlstate: sqlstate.into(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "sqlstate": self.sqlstate,
            "message": self.message,
            "detail": self.detail,
            "hint": self.hint,
        })
    }

    /// `sqlstate` is the code PostgreSQL raised, which pgrx's report keeps only
    /// for the codes it knows (user-defined ones would read XX000).
    fn from_caught(error: CaughtError, sqlstate: i32) -> Failure {
        match error {
            CaughtError::PostgresError(report) | CaughtError::ErrorReport(report) => Failure {
                sqlstate: if sqlstate != 0 {
                    unpack_sqlstate(sqlstate)
                } else {
                    format!("{:?}", report.sql_error_code())
                },
                message: report.message().to_string(),
                detail: report.detail().map(str::to_string),
                hint: report.hint().map(str::to_string),
            },
            CaughtError::RustPanic { ereport, .. } => {
                Failure::new("XX000", ereport.message().to_string())
            }
        }
    }
}

fn unpack_sqlstate(code: i32) -> String {
    (0..5)
        .map(|i| char::from(((code >> (6 * i)) & 0x3F) as u8 + b'0'))
        .collect()
}

thread_local! {
    /// SQLSTATE of the last error raised while user code ran.
    static RAISED_SQLSTATE: Cell<i32> = const { Cell::new(0) };
}

/// An error context callback: PostgreSQL calls it while it builds each error
/// report, so the code can be read before the error is turned into a panic.
#[pg_guard]
unsafe extern "C-unwind" fn remember_sqlstate(_arg: *mut std::ffi::c_void) {
    let code = unsafe { pg_sys::geterrcode() };
    RAISED_SQLSTATE.with(|c| c.set(code));
}

/// PostgreSQL's statement timeout, armed by hand: executors run user code
/// through SPI, where `statement_timeout` is never armed.
mod timeout {
    use std::ffi::c_int;

    // `TimeoutId` in utils/timeout.h; its first entries have kept their order since PostgreSQL 9.3.
    pub const STATEMENT_TIMEOUT: c_int = 3;

    extern "C-unwind" {
        pub fn enable_timeout_after(id: c_int, delay_ms: c_int);
        pub fn disable_timeout(id: c_int, keep_indicator: bool);
        pub fn get_timeout_indicator(id: c_int, reset_indicator: bool) -> bool;
    }
}

/// A handler call ready to run: `SELECT to_jsonb(schema.name($1::jsonb))::text`.
pub struct Call {
    pub sql: CString,
    pub owner: pg_sys::Oid,
    pub max_runtime: Option<Duration>,
}

impl Call {
    pub fn new(
        qualified_name: &str,
        returns_void: bool,
        owner: pg_sys::Oid,
        max_runtime: Option<Duration>,
    ) -> Call {
        let call = format!("{qualified_name}($1::pg_catalog.text::pg_catalog.jsonb)");
        let sql = if returns_void {
            format!("SELECT {call}, NULL::pg_catalog.text")
        } else {
            format!("SELECT NULL, pg_catalog.to_jsonb({call})::pg_catalog.text")
        };
        Call {
            sql: CString::new(sql).expect("names have no NUL"),
            owner,
            max_runtime,
        }
    }
}

/// Runs the handler with `ctx`. Everything it did is kept on success and
/// rolled back on failure; either way the worker's own state is as before.
pub fn run(call: &Call, ctx: &str) -> Result<Option<String>, Failure> {
    let ctx = CString::new(ctx).expect("jsonb text has no NUL");
    let outer_context = unsafe { pg_sys::CurrentMemoryContext };
    let outer_owner = unsafe { pg_sys::CurrentResourceOwner };
    unsafe { pg_sys::BeginInternalSubTransaction(std::ptr::null()) };
    RAISED_SQLSTATE.with(|c| c.set(0));
    let mut error_context = pg_sys::ErrorContextCallback {
        previous: unsafe { pg_sys::error_context_stack },
        callback: Some(remember_sqlstate),
        arg: std::ptr::null_mut(),
    };
    unsafe { pg_sys::error_context_stack = &mut error_context };

    let result = PgTryBuilder::new(|| {
        let output = as_owner(call, || unsafe { execute(&call.sql, &ctx) });
        unsafe { pg_sys::ReleaseCurrentSubTransaction() };
        Ok(output)
    })
    .catch_others(|error| {
        unsafe {
            timeout::disable_timeout(timeout::STATEMENT_TIMEOUT, false);
            pg_sys::MemoryContextSwitchTo(outer_context);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        let mut failure = Failure::from_caught(error, RAISED_SQLSTATE.with(Cell::get));
        // Only the max_runtime timer arms the statement timeout in an executor.
        let timed_out =
            failure.sqlstate == "57014" && failure.message.contains("statement timeout");
        if let (true, Some(limit)) = (timed_out, call.max_runtime) {
            failure.message = format!(
                "the attempt ran longer than max_runtime ({})",
                crate::duration::format(limit)
            );
        }
        Err(failure)
    })
    .execute();

    unsafe {
        pg_sys::error_context_stack = error_context.previous;
        pg_sys::MemoryContextSwitchTo(outer_context);
        pg_sys::CurrentResourceOwner = outer_owner;
    }
    result
}

/// Runs `f` with the owner's identity and the database's default search_path,
/// with temporary objects and SET ROLE ruled out (they would outlive the call
/// in this shared session). Settings the handler changes are undone.
fn as_owner<R>(call: &Call, f: impl FnOnce() -> R) -> R {
    let (mut user, mut context) = (pg_sys::Oid::INVALID, 0);
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            call.owner,
            context
                | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION)
                    as i32,
        );
    }
    let nest_level = unsafe { pg_sys::NewGUCNestLevel() };
    unsafe {
        let default_path = pg_sys::GetConfigOptionResetString(c"search_path".as_ptr());
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            default_path,
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        if let Some(limit) = call.max_runtime {
            timeout::enable_timeout_after(
                timeout::STATEMENT_TIMEOUT,
                limit.as_millis().clamp(1, i32::MAX as u128) as i32,
            );
        }
    }
    let result = f();
    unsafe {
        if call.max_runtime.is_some() {
            timeout::disable_timeout(timeout::STATEMENT_TIMEOUT, false);
            // The limit may have expired after the handler returned but before
            // the timer was disarmed: the attempt stands, the pending cancel goes.
            if timeout::get_timeout_indicator(timeout::STATEMENT_TIMEOUT, true) {
                pg_sys::QueryCancelPending = 0;
            }
        }
        pg_sys::AtEOXact_GUC(false, nest_level);
        pg_sys::SetUserIdAndSecContext(user, context);
    }
    result
}

/// One SPI round trip. On error nothing here is cleaned up by hand: the
/// subtransaction abort closes the SPI connection opened inside it.
unsafe fn execute(sql: &CStr, ctx: &CStr) -> Option<String> {
    unsafe {
        pg_sys::SPI_connect();
        let mut arg_types = [pg_sys::TEXTOID];
        let mut values = [pg_sys::Datum::from(pg_sys::cstring_to_text(ctx.as_ptr()))];
        let nulls = [b' ' as std::ffi::c_char];
        let status = pg_sys::SPI_execute_with_args(
            sql.as_ptr(),
            1,
            arg_types.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_ptr(),
            false,
            1,
        );
        if status < 0 {
            error!("pg_jobs could not call the handler (SPI status {status})");
        }
        let table = pg_sys::SPI_tuptable;
        let output = if pg_sys::SPI_processed > 0 && !table.is_null() {
            let text = pg_sys::SPI_getvalue(*(*table).vals, (*table).tupdesc, 2);
            (!text.is_null()).then(|| CStr::from_ptr(text).to_string_lossy().into_owned())
        } else {
            None
        };
        pg_sys::SPI_finish();
        output
    }
}
