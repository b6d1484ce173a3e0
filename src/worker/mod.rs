//! Background workers: one launcher per server and the executors it keeps running.

pub mod executor;
pub mod fetcher;
mod flow;
mod invoke;
pub mod launcher;
mod record;
mod replays;
mod retention;
mod run;
mod task;

use std::time::Duration;

use pgrx::prelude::*;

/// Runs `f` in its own transaction and commits it, if the extension is
/// installed; `None` (and nothing done) otherwise. An error inside ends the
/// worker (it is restarted); errors from user code never get here, they are
/// caught around each invocation.
///
/// The transaction first takes a share lock on the extension itself, which
/// `DROP EXTENSION` must take exclusively before it touches pg_jobs' tables:
/// a drop waits for the transactions under way and then runs alone, and no
/// worker touches a table that is being dropped.
fn in_transaction<R>(f: impl FnOnce() -> R) -> Option<R> {
    in_plain_transaction(|| lock_extension().then(f))
}

fn in_plain_transaction<R>(f: impl FnOnce() -> R) -> R {
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let result = f();
    unsafe {
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
        // Background workers must flush their statistics themselves; autovacuum
        // relies on them to keep the queue small. The call rate-limits itself.
        pg_sys::pgstat_report_stat(false);
    }
    result
}

thread_local! {
    /// The extension's oid when this worker last locked it.
    static EXTENSION: std::cell::Cell<pg_sys::Oid> = const { std::cell::Cell::new(pg_sys::Oid::INVALID) };
}

/// Locks the extension for the transaction; false when it is not installed
/// (or was dropped while this waited for the lock).
fn lock_extension() -> bool {
    let mut extension = EXTENSION.with(std::cell::Cell::get);
    loop {
        if extension == pg_sys::Oid::INVALID {
            extension = unsafe { pg_sys::get_extension_oid(c"pg_jobs".as_ptr(), true) };
            if extension == pg_sys::Oid::INVALID {
                return false;
            }
        }
        unsafe {
            pg_sys::LockDatabaseObject(
                pg_sys::ExtensionRelationId,
                extension,
                0,
                pg_sys::AccessShareLock as pg_sys::LOCKMODE,
            );
        }
        // Taking the lock processed invalidations: a drop that committed
        // before is visible now (one that would come after waits for us).
        let now = unsafe { pg_sys::get_extension_oid(c"pg_jobs".as_ptr(), true) };
        if now == extension {
            EXTENSION.with(|e| e.set(extension));
            return true;
        }
        if now == pg_sys::Oid::INVALID {
            EXTENSION.with(|e| e.set(pg_sys::Oid::INVALID));
            return false;
        }
        // Dropped and created again since last time: lock the new one.
        extension = now;
    }
}

/// Gives the session pg_jobs' own settings (`gucs::OWN_STATEMENT_SETTINGS`);
/// user code gets the configured ones back while it runs (invoke.rs).
fn use_own_settings() {
    in_plain_transaction(|| {
        for (name, value) in crate::gucs::OWN_STATEMENT_SETTINGS {
            crate::gucs::set_for_session(name, value);
        }
    });
}

/// SIGTERM interrupts whatever runs (user code included) at its next interrupt
/// check; SIGHUP asks for a settings reload; SIGINT, from `jobs.cancel_run`,
/// interrupts the user code of the run it names (invoke.rs).
fn attach_signal_handlers() {
    // PostgreSQL's own handlers, as signal handlers (pg_sys wraps them as Rust functions).
    extern "C-unwind" {
        fn die(signal: std::ffi::c_int);
        fn SignalHandlerForConfigReload(signal: std::ffi::c_int);
    }
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(die));
        pg_sys::pqsignal(pg_sys::SIGHUP as i32, Some(SignalHandlerForConfigReload));
        pg_sys::pqsignal(pg_sys::SIGINT as i32, Some(invoke::on_interrupt_signal));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
}

fn handle_interrupts() {
    unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
    pg_sys::check_for_interrupts!();
    unsafe {
        if pg_sys::ConfigReloadPending != 0 {
            pg_sys::ConfigReloadPending = 0;
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
        }
    }
}

/// Sleeps until the latch is set or `timeout` passes; exits if the postmaster dies.
/// Callers reset the latch before they look for work, never after.
/// Waits for the latch or the timeout; returns whether the latch was set.
fn wait(timeout: Duration) -> bool {
    let events = unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout.as_millis().clamp(1, i32::MAX as u128) as i64,
            pg_sys::PG_WAIT_EXTENSION,
        )
    };
    events & pg_sys::WL_LATCH_SET as i32 != 0
}

thread_local! {
    /// The shared-memory slot of this executor, for what jobs.workers shows.
    static SLOT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

fn set_slot(slot: usize) {
    SLOT.with(|s| s.set(Some(slot)));
}

/// Says what the executor does, in pg_stat_activity and in jobs.workers.
fn report_activity(state: pg_sys::BackendState::Type, activity: &str, run: Option<pgrx::Uuid>) {
    let text = std::ffi::CString::new(activity).unwrap_or_default();
    unsafe { pg_sys::pgstat_report_activity(state, text.as_ptr()) };
    if let Some(worker) = slot() {
        worker.set_run(run.map(|id| *id.as_bytes()));
        worker.beat();
    }
}

fn slot() -> Option<&'static crate::shmem::WorkerSlot> {
    SLOT.with(std::cell::Cell::get)
        .map(|slot| &crate::shmem::shared().workers[slot])
}

/// The executor enters or leaves user code (for idle executors that take
/// over the work it has not started while it is stuck there).
fn set_busy(busy: bool) {
    if let Some(slot) = slot() {
        slot.set_busy(busy);
    }
}

/// Whether `jobs.cancel_run` asked to interrupt the run this executor runs.
/// Called from the signal handler: atomics only.
fn cancel_requested() -> bool {
    slot().is_some_and(crate::shmem::WorkerSlot::cancel_requested)
}
