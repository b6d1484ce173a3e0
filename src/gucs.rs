//! Settings, all under the reserved `jobs.` prefix.

use std::ffi::{CStr, CString};

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;

/// Upper bound of `jobs.workers`; shared memory holds this many executor slots.
pub const MAX_WORKERS: usize = 64;

pub static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));
pub static WORKERS: GucSetting<i32> = GucSetting::<i32>::new(2);
pub static POLL_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);
pub static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(16);
pub static MAX_EVENT_SIZE_KB: GucSetting<i32> = GucSetting::<i32>::new(512);
/// How long finished runs are kept, in seconds (0: for ever): 30 days.
pub static RETENTION_S: GucSetting<i32> = GucSetting::<i32>::new(30 * 86_400);
/// Default bound of one attempt where a function sets no `max_runtime`: 15 minutes.
pub static MAX_RUNTIME_MS: GucSetting<i32> = GucSetting::<i32>::new(15 * 60 * 1000);

/// Host patterns jobs.fetch may send requests to (src/fetch/hosts.rs); none by default.
pub static FETCH_ALLOWED_HOSTS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
pub static FETCH_MAX_RESPONSE_SIZE_KB: GucSetting<i32> =
    GucSetting::<i32>::new((crate::fetch::DEFAULT_MAX_RESPONSE_SIZE / 1024) as i32);
pub static FETCH_MAX_IN_FLIGHT: GucSetting<i32> = GucSetting::<i32>::new(256);

/// Sets a PostgreSQL setting until the GUC nest level `NewGUCNestLevel`
/// opened last is closed (`AtEOXact_GUC`), or its (sub)transaction aborts.
pub fn set_in_nest_level(name: &CStr, value: &CStr) {
    set(name, value, pg_sys::GucAction::GUC_ACTION_SAVE);
}

/// Sets a PostgreSQL setting for the session, once the current transaction commits.
pub fn set_for_session(name: &CStr, value: &CStr) {
    set(name, value, pg_sys::GucAction::GUC_ACTION_SET);
}

/// Sets a PostgreSQL setting until the end of the current transaction.
pub fn set_for_transaction(name: &CStr, value: &CStr) {
    set(name, value, pg_sys::GucAction::GUC_ACTION_LOCAL);
}

fn set(name: &CStr, value: &CStr, action: pg_sys::GucAction::Type) {
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            action,
            true,
            0,
            false,
        );
    }
}

/// Gives a setting back its configured value (postgresql.conf, ALTER
/// DATABASE) in the current GUC nest level.
pub fn reset_in_nest_level(name: &CStr) {
    let configured = unsafe { CStr::from_ptr(pg_sys::GetConfigOptionResetString(name.as_ptr())) };
    set_in_nest_level(name, configured);
}

/// pg_jobs' own statements run with these settings, user code never does:
/// - a fixed `search_path`, so that nothing a user creates can stand in for
///   what they name;
/// - no sequential scans where an index serves, and plans made once per
///   session. The statements look rows up by key in tables that grow and
///   shrink by thousands of rows a second, faster than autovacuum's statistics
///   follow: planned from a table that was empty when last analyzed, a lookup
///   of a few runs' steps scanned all of them in every round; and planning
///   afresh for each call's values, which PostgreSQL does when the statistics
///   make a generic plan look dearer, cost more than running the statement.
/// - no JIT: a statement planned with a disabled sequential scan looks
///   costly enough to be compiled at every execution.
pub const OWN_STATEMENT_SETTINGS: [(&CStr, &CStr); 4] = [
    (c"search_path", c"pg_catalog, pg_temp"),
    (c"enable_seqscan", c"off"),
    (c"plan_cache_mode", c"force_generic_plan"),
    (c"jit", c"off"),
];

/// `preloading`: called from shared_preload_libraries, the only time a
/// postmaster-level setting may be defined.
pub fn define(preloading: bool) {
    if preloading {
        GucRegistry::define_string_guc(
            c"jobs.database",
            c"Database in which pg_jobs runs functions.",
            c"The launcher connects to this database; CREATE EXTENSION pg_jobs there.",
            &DATABASE,
            GucContext::Postmaster,
            GucFlags::default(),
        );
    }
    GucRegistry::define_int_guc(
        c"jobs.workers",
        c"Number of executors that run functions.",
        c"Each executor is a background worker; they count against max_worker_processes.",
        &WORKERS,
        0,
        MAX_WORKERS as i32,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"jobs.poll_interval",
        c"Longest time an idle executor waits before looking for work.",
        c"Executors are woken at commit and at timer due times; this is only a backstop.",
        &POLL_INTERVAL_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"jobs.batch_size",
        c"Most runs an executor claims at once.",
        c"Claimed runs are executed one after another and committed together.",
        &BATCH_SIZE,
        1,
        crate::shmem::MAX_BATCH as i32,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"jobs.max_event_size",
        c"Largest event (name and data) jobs.send accepts.",
        c"",
        &MAX_EVENT_SIZE_KB,
        1,
        1024 * 1024,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"jobs.max_runtime",
        c"Longest an attempt of a function without max_runtime may run.",
        c"A step or handler call running longer is cancelled and counts as a failed attempt; 0 means no limit.",
        &MAX_RUNTIME_MS,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    // Outbound requests are a server capability: only postgresql.conf (or
    // ALTER SYSTEM) says where they may go, and the fetcher reads it there.
    GucRegistry::define_string_guc(
        c"jobs.fetch_allowed_hosts",
        c"Hosts jobs.fetch may send requests to.",
        c"Patterns separated by commas: api.example.com, *.example.com, localhost:8080, 127.0.0.1:*, *. Empty allows none.",
        &FETCH_ALLOWED_HOSTS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"jobs.fetch_max_response_size",
        c"Largest response body jobs.fetch reads.",
        c"A larger body (after decompression) fails the attempt.",
        &FETCH_MAX_RESPONSE_SIZE_KB,
        1,
        1024 * 1024,
        GucContext::Sighup,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"jobs.fetch_max_in_flight",
        c"Most jobs.fetch requests the fetcher has in flight at once.",
        c"Further requests wait for one to end; each may hold up to jobs.fetch_max_response_size in memory.",
        &FETCH_MAX_IN_FLIGHT,
        1,
        10_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"jobs.retention",
        c"How long finished runs, and events no run needs, are kept.",
        c"A function's config key \"retention\" overrides it; 0 keeps them for ever.",
        &RETENTION_S,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    #[cfg(not(any(feature = "pg13", feature = "pg14")))]
    unsafe {
        pgrx::pg_sys::MarkGUCPrefixReserved(c"jobs".as_ptr());
    }
    #[cfg(any(feature = "pg13", feature = "pg14"))]
    unsafe {
        pgrx::pg_sys::EmitWarningsOnPlaceholders(c"jobs".as_ptr());
    }
}

pub fn database() -> String {
    DATABASE
        .get()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "postgres".into())
}

pub fn max_event_size_bytes() -> usize {
    MAX_EVENT_SIZE_KB.get() as usize * 1024
}

/// `jobs.max_runtime`, unless it is 0 (no limit).
pub fn default_max_runtime() -> Option<std::time::Duration> {
    let ms = MAX_RUNTIME_MS.get();
    (ms > 0).then(|| std::time::Duration::from_millis(ms as u64))
}

/// `jobs.fetch_allowed_hosts` as written.
pub fn fetch_allowed_hosts() -> String {
    FETCH_ALLOWED_HOSTS
        .get()
        .map(|hosts| hosts.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn fetch_max_response_size() -> usize {
    FETCH_MAX_RESPONSE_SIZE_KB.get() as usize * 1024
}
