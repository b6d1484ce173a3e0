//! Calling user code: in a subtransaction, as the function's owner, with the
//! session state it changes put back afterwards, bounded by `max_runtime`.

use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// `jobs.cancel_run` interrupted the code: the run ends cancelled.
    pub cancelled: bool,
}

impl Failure {
    pub fn new(sqlstate: &str, message: impl Into<String>) -> Failure {
        Failure {
            sqlstate: sqlstate.into(),
            message: message.into(),
            detail: None,
            hint: None,
            cancelled: false,
        }
    }

    /// The code was interrupted by `jobs.cancel_run`.
    pub fn cancelled() -> Failure {
        Failure {
            cancelled: true,
            ..Failure::new("57014", "interrupted by jobs.cancel_run")
        }
    }

    /// The attempt its executor was running when it stopped (crash, restart, termination).
    pub fn interrupted() -> Failure {
        Failure::new(
            "57P01",
            "the attempt was interrupted: its executor stopped (crash, restart or termination)",
        )
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
                cancelled: false,
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

/// The identity and time limit user code runs with.
pub struct UserContext {
    pub owner: pg_sys::Oid,
    pub max_runtime: Option<Duration>,
    /// The run descends from a jobs/function.* event (jobs.runs.from_system_event).
    pub from_system_event: bool,
}

impl UserContext {
    /// From a function's stored owner and `max_runtime` in milliseconds;
    /// without one, `jobs.max_runtime` bounds each attempt.
    pub fn new(
        owner: Option<pg_sys::Oid>,
        max_runtime_ms: Option<i64>,
        from_system_event: bool,
    ) -> UserContext {
        UserContext {
            owner: owner.unwrap_or(pg_sys::Oid::INVALID),
            max_runtime: max_runtime_ms
                .map(|ms| Duration::from_millis(ms.max(1) as u64))
                .or_else(crate::gucs::default_max_runtime),
            from_system_event,
        }
    }
}

/// Set while user code runs: only then does SIGINT (jobs.cancel_run)
/// interrupt anything. Read by the signal handler.
static IN_USER_CODE: AtomicBool = AtomicBool::new(false);
/// Set by the signal handler when it interrupted user code.
static CANCEL_DELIVERED: AtomicBool = AtomicBool::new(false);

/// SIGINT: `jobs.cancel_run` asks this executor to interrupt the code of the
/// run it is executing. Outside user code, or for another run, nothing
/// happens (the executor checks for cancellations between steps anyway).
pub extern "C-unwind" fn on_interrupt_signal(_signal: std::ffi::c_int) {
    if IN_USER_CODE.load(Ordering::SeqCst) && super::cancel_requested() {
        CANCEL_DELIVERED.store(true, Ordering::SeqCst);
        unsafe {
            pg_sys::QueryCancelPending = 1;
            pg_sys::InterruptPending = 1;
            pg_sys::SetLatch(pg_sys::MyLatch);
        }
    }
}

/// Largest step output (JSON text) kept in the history.
const MAX_STEP_OUTPUT: usize = 4 * 1024 * 1024;

/// The SQL that calls a handler: `SELECT to_jsonb(schema.name($1::jsonb))::text`.
pub fn handler_call(qualified_name: &str, returns_void: bool) -> CString {
    let call = format!("{qualified_name}($1::pg_catalog.text::pg_catalog.jsonb)");
    let sql = if returns_void {
        format!("SELECT {call}, NULL::pg_catalog.text")
    } else {
        format!("SELECT NULL, pg_catalog.to_jsonb({call})::pg_catalog.text")
    };
    CString::new(sql).expect("names have no NUL")
}

/// Calls the handler with `ctx`; returns its value as JSON text.
pub fn call_handler(user: &UserContext, call: &CStr, ctx: &str) -> Result<Option<String>, Failure> {
    let ctx = CString::new(ctx).expect("jsonb text has no NUL");
    in_subtransaction(user, || unsafe {
        let ctx = pg_sys::Datum::from(pg_sys::cstring_to_text(ctx.as_ptr()));
        Ok(query_value(call, pg_sys::TEXTOID, ctx, 2).filter(|text| text != "null"))
    })
}

/// Runs a step's SQL with `$1` = `args`; returns its value as JSON text: one
/// column as that value, several as an object, no row as null.
pub fn run_step(
    user: &UserContext,
    sql: &str,
    args: Option<&str>,
) -> Result<Option<String>, Failure> {
    let sql = CString::new(sql)
        .map_err(|_| Failure::new("22023", "step SQL must not contain a NUL character"))?;
    let args = args.map(|a| CString::new(a).expect("jsonb text has no NUL"));
    in_subtransaction(user, || unsafe {
        let output = step_value(&sql, args.as_deref());
        match output {
            Some(text) if text.len() > MAX_STEP_OUTPUT => Err(Failure::new(
                "54000",
                format!(
                    "the step's output is {} MiB, over the 4 MiB limit",
                    text.len().div_ceil(1024 * 1024)
                ),
            )),
            other => Ok(other),
        }
    })
}

/// Runs `body` in a subtransaction as the function's owner. What it did is
/// kept when it returns `Ok`, rolled back otherwise; either way the worker's
/// own state is as before.
fn in_subtransaction(
    user: &UserContext,
    body: impl FnOnce() -> Result<Option<String>, Failure>,
) -> Result<Option<String>, Failure> {
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

    CANCEL_DELIVERED.store(false, Ordering::SeqCst);
    let body = std::panic::AssertUnwindSafe(body);
    let result = PgTryBuilder::new(|| {
        let body = body;
        let mut result = as_owner(user, body.0);
        if CANCEL_DELIVERED.load(Ordering::SeqCst) {
            // The code caught the interruption and went on: its work goes anyway.
            result = Err(Failure::cancelled());
        }
        unsafe {
            if result.is_ok() {
                pg_sys::ReleaseCurrentSubTransaction();
            } else {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
            }
        }
        result
    })
    .catch_others(|error| {
        unsafe {
            timeout::disable_timeout(timeout::STATEMENT_TIMEOUT, false);
            pg_sys::error_context_stack = error_context.previous;
            pg_sys::MemoryContextSwitchTo(outer_context);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        if CANCEL_DELIVERED.load(Ordering::SeqCst) {
            return Err(Failure::cancelled());
        }
        let mut failure = Failure::from_caught(error, RAISED_SQLSTATE.with(Cell::get));
        // Only the max_runtime timer arms the statement timeout in an executor.
        let timed_out =
            failure.sqlstate == "57014" && failure.message.contains("statement timeout");
        if let (true, Some(limit)) = (timed_out, user.max_runtime) {
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

/// Marks the time user code runs (for SIGINT and for idle executors that
/// would take over what this one has not started), until dropped, by a
/// return or by an error unwinding.
struct InUserCode;

impl InUserCode {
    fn enter() -> InUserCode {
        super::set_busy(true);
        IN_USER_CODE.store(true, Ordering::SeqCst);
        InUserCode
    }
}

impl Drop for InUserCode {
    fn drop(&mut self) {
        IN_USER_CODE.store(false, Ordering::SeqCst);
        super::set_busy(false);
        if CANCEL_DELIVERED.load(Ordering::SeqCst) {
            // Delivered as the code ended: it must not cancel pg_jobs' own work.
            unsafe { pg_sys::QueryCancelPending = 0 };
        }
    }
}

/// Runs `f` with the owner's identity and the configured settings (not the
/// executor's own: `gucs::OWN_STATEMENT_SETTINGS`),
/// with temporary objects and SET ROLE ruled out (they would outlive the call
/// in this shared session). Settings the code changes are undone.
fn as_owner<R>(user: &UserContext, f: impl FnOnce() -> R) -> R {
    let (mut outer_user, mut context) = (pg_sys::Oid::INVALID, 0);
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut outer_user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            user.owner,
            context
                | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION)
                    as i32,
        );
    }
    let nest_level = unsafe { pg_sys::NewGUCNestLevel() };
    for (name, _) in crate::gucs::OWN_STATEMENT_SETTINGS {
        crate::gucs::reset_in_nest_level(name);
    }
    unsafe {
        if let Some(limit) = user.max_runtime {
            timeout::enable_timeout_after(
                timeout::STATEMENT_TIMEOUT,
                limit.as_millis().clamp(1, i32::MAX as u128) as i32,
            );
        }
    }
    let in_user_code = InUserCode::enter();
    let result = crate::api::events::as_code_of_run(user.from_system_event, f);
    drop(in_user_code);
    unsafe {
        if user.max_runtime.is_some() {
            timeout::disable_timeout(timeout::STATEMENT_TIMEOUT, false);
            // The limit may have expired after the code returned but before
            // the timer was disarmed: the attempt stands, the pending cancel goes.
            if timeout::get_timeout_indicator(timeout::STATEMENT_TIMEOUT, true) {
                pg_sys::QueryCancelPending = 0;
            }
        }
        pg_sys::AtEOXact_GUC(false, nest_level);
        pg_sys::SetUserIdAndSecContext(outer_user, context);
    }
    result
}

/// Runs `sql` with one parameter and returns column `column` of its first row
/// as text. Errors propagate; the subtransaction abort closes the SPI
/// connection opened here.
unsafe fn query_value(
    sql: &CStr,
    arg_type: pg_sys::Oid,
    arg: pg_sys::Datum,
    column: i32,
) -> Option<String> {
    unsafe {
        pg_sys::SPI_connect();
        let output = first_value_text(sql, &[(arg_type, Some(arg))], column);
        pg_sys::SPI_finish();
        output
    }
}

/// Executes `sql` in the current SPI connection; column `column` of its first row as text.
unsafe fn first_value_text(
    sql: &CStr,
    args: &[(pg_sys::Oid, Option<pg_sys::Datum>)],
    column: i32,
) -> Option<String> {
    unsafe {
        let table = execute(sql, args, 1)?;
        let text = pg_sys::SPI_getvalue(*(*table).vals, (*table).tupdesc, column);
        (!text.is_null()).then(|| CStr::from_ptr(text).to_string_lossy().into_owned())
    }
}

/// Most plans of user SQL kept at once; beyond, they are all dropped.
const MAX_KEPT_PLANS: usize = 1024;

/// How a statement text with given argument types is run.
#[derive(Clone, Copy)]
enum Plan {
    /// Prepared once and kept: PostgreSQL replans it when what it uses
    /// changes, and checks privileges at each execution.
    Kept(pg_sys::SPIPlanPtr),
    /// Several statements: parsed and planned at each call, one statement
    /// after the other, so that one may use what an earlier one created.
    OneShot,
}

thread_local! {
    /// The plans of handler calls, step SQL and step value conversions: the
    /// same few texts run over and over, and parsing and planning them cost
    /// more than running them.
    static PLANS: std::cell::RefCell<std::collections::HashMap<(CString, Vec<pg_sys::Oid>), Plan>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// The plan for `sql`, prepared on first use (in the current SPI connection).
unsafe fn plan(sql: &CStr, types: &[pg_sys::Oid]) -> Plan {
    let key = (sql.to_owned(), types.to_vec());
    if let Some(plan) = PLANS.with(|plans| plans.borrow().get(&key).copied()) {
        return plan;
    }
    let plan = unsafe {
        let statements = pg_sys::pg_parse_query(sql.as_ptr());
        if statements.is_null() || (*statements).length != 1 {
            Plan::OneShot
        } else {
            let mut types = types.to_vec();
            let prepared =
                pg_sys::SPI_prepare(sql.as_ptr(), types.len() as i32, types.as_mut_ptr());
            if prepared.is_null() {
                let status = pg_sys::SPI_result;
                error!("pg_jobs could not prepare user SQL (SPI status {status})");
            }
            pg_sys::SPI_keepplan(prepared);
            Plan::Kept(prepared)
        }
    };
    PLANS.with(|plans| {
        let mut plans = plans.borrow_mut();
        if plans.len() >= MAX_KEPT_PLANS {
            for (_, old) in plans.drain() {
                if let Plan::Kept(old) = old {
                    unsafe { pg_sys::SPI_freeplan(old) };
                }
            }
        }
        plans.insert(key, plan);
    });
    plan
}

/// Executes `sql`; the result table when it returned a row.
unsafe fn execute(
    sql: &CStr,
    args: &[(pg_sys::Oid, Option<pg_sys::Datum>)],
    limit: i64,
) -> Option<*mut pg_sys::SPITupleTable> {
    unsafe {
        let mut types: Vec<pg_sys::Oid> = args.iter().map(|(t, _)| *t).collect();
        let mut values: Vec<pg_sys::Datum> = args
            .iter()
            .map(|(_, v)| v.unwrap_or(pg_sys::Datum::from(0)))
            .collect();
        let nulls: Vec<std::ffi::c_char> = args
            .iter()
            .map(|(_, v)| if v.is_some() { b' ' } else { b'n' } as std::ffi::c_char)
            .collect();
        let status = match plan(sql, &types) {
            Plan::Kept(plan) => {
                pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), nulls.as_ptr(), false, limit)
            }
            Plan::OneShot => pg_sys::SPI_execute_with_args(
                sql.as_ptr(),
                args.len() as i32,
                types.as_mut_ptr(),
                values.as_mut_ptr(),
                nulls.as_ptr(),
                false,
                limit,
            ),
        };
        if status < 0 {
            error!("pg_jobs could not run user SQL (SPI status {status})");
        }
        let table = pg_sys::SPI_tuptable;
        (pg_sys::SPI_processed > 0 && !table.is_null()).then_some(table)
    }
}

/// A step's value as JSON text, converted by PostgreSQL's own to_jsonb so that
/// every type maps as it does in SQL.
unsafe fn step_value(sql: &CStr, args: Option<&CStr>) -> Option<String> {
    unsafe {
        pg_sys::SPI_connect();
        let args_datum = args.map(|a| {
            pgrx::direct_function_call_as_datum(
                pg_sys::jsonb_in,
                &[Some(pg_sys::Datum::from(a.as_ptr()))],
            )
            .expect("jsonb_in returns a value")
        });
        let output = execute(sql, &[(pg_sys::JSONBOID, args_datum)], 1).and_then(|table| {
            let tuple = *(*table).vals;
            let descriptor = (*table).tupdesc;
            let columns = (*descriptor).natts;
            let mut values = Vec::new();
            let mut names = Vec::new();
            for column in 1..=columns {
                let mut is_null = false;
                let value = pg_sys::SPI_getbinval(tuple, descriptor, column, &mut is_null);
                match pg_sys::SPI_gettypeid(descriptor, column) {
                    // A void function's result (`SELECT perform_something()`) is no value.
                    pg_sys::VOIDOID => values.push((pg_sys::TEXTOID, None)),
                    type_oid => values.push((type_oid, (!is_null).then_some(value))),
                }
                let name = CStr::from_ptr(pg_sys::SPI_fname(descriptor, column))
                    .to_string_lossy()
                    .into_owned();
                names.push(name);
            }
            let conversion = if columns == 1 {
                "SELECT pg_catalog.to_jsonb($1)::pg_catalog.text".to_string()
            } else {
                let pairs: Vec<String> = names
                    .iter()
                    .enumerate()
                    .map(|(i, name)| format!("{}, ${}", pgrx::spi::quote_literal(name), i + 1))
                    .collect();
                format!(
                    "SELECT pg_catalog.jsonb_build_object({})::pg_catalog.text",
                    pairs.join(", ")
                )
            };
            let conversion = CString::new(conversion).expect("column names have no NUL");
            first_value_text(&conversion, &values, 1)
        });
        pg_sys::SPI_finish();
        output.filter(|text| text != "null")
    }
}
