//! pg_jobs: Inngest-style event-driven durable functions inside PostgreSQL.

use pgrx::prelude::*;

mod api;
mod backoff;
mod claim_notes;
mod config;
mod cron;
mod duration;
mod errors;
mod event_name;
mod expr;
mod fetch;
mod flow;
mod gucs;
mod owners;
mod pgtime;
mod replay;
mod retention;
mod shmem;
mod stack;
mod worker;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/001_catalog.sql", name = "catalog", bootstrap);
extension_sql_file!(
    "../sql/100_steps.sql",
    name = "steps",
    requires = [
        api::steps::step_internal,
        api::steps::parallel_internal,
        api::steps::wait_for_event_internal,
        api::steps::invoke_internal,
        api::fetch::fetch_internal
    ]
);
extension_sql_file!(
    "../sql/200_operations.sql",
    name = "operations",
    requires = [api::explain::workers, api::operations::cancel_runs]
);
extension_sql_file!("../sql/900_security.sql", name = "security", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // pg_upgrade loads every library in binary-upgrade mode; start nothing then.
    if unsafe { pg_sys::IsBinaryUpgrade } {
        return;
    }
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    gucs::define(preloading);
    owners::install_hook();
    if !preloading {
        // Loaded by CREATE EXTENSION or a first call in one session: the API
        // works, but there are no workers; every entry point says so.
        return;
    }
    shmem::init();
    shmem::register_commit_hook();
    worker::launcher::register();
    worker::fetcher::register();
}

/// Whether this server loaded pg_jobs at start, so that workers run functions.
pub(crate) fn preloaded() -> bool {
    shmem::is_initialized()
}

#[cfg(feature = "pg_test")]
mod pg_tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'pg_jobs'"]
    }
}
