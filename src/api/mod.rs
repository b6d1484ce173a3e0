//! The SQL API: every function a user calls lives under this module.

pub mod events;
pub mod explain;
pub mod expressions;
pub mod fetch;
pub mod flow;
pub mod functions;
pub mod operations;
pub mod schemas;
pub mod steps;
pub mod types;

use std::cell::OnceCell;
use std::thread::LocalKey;

use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::PgOid;

/// Runs `f` with the rights of the bootstrap superuser, who owns the catalog;
/// `f` gets the calling role, since inside it `current_user` is the superuser.
/// The statements run with pg_jobs' own settings meanwhile
/// (`gucs::OWN_STATEMENT_SETTINGS`).
///
/// API functions are SECURITY INVOKER, so that they know their caller, and
/// declare `SET search_path = pg_catalog, pg_temp`, so that nothing the caller
/// defines can stand in for what the statements below name. Only fixed
/// statements with bound parameters run inside.
pub fn as_catalog_owner<R>(f: impl FnOnce(pg_sys::Oid) -> R) -> R {
    let (mut user, mut context) = (pg_sys::Oid::INVALID, 0);
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID),
            context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    let nest_level = unsafe { pg_sys::NewGUCNestLevel() };
    for (name, value) in crate::gucs::OWN_STATEMENT_SETTINGS {
        crate::gucs::set_in_nest_level(name, value);
    }
    // On error the (sub)transaction abort restores the caller's identity and settings.
    let result = f(user);
    unsafe {
        pg_sys::AtEOXact_GUC(true, nest_level);
        pg_sys::SetUserIdAndSecContext(user, context);
    }
    result
}

/// The role calling the API.
pub fn current_role() -> pg_sys::Oid {
    unsafe { pg_sys::GetUserId() }
}

pub type StatementCache = OnceCell<&'static OwnedPreparedStatement>;

/// Prepares `sql` once per session and keeps the plan: these statements sit on
/// hot paths (send, claim), where parsing and planning every call would cost
/// more than the work itself.
pub fn prepared(
    cache: &'static LocalKey<StatementCache>,
    client: &SpiClient<'_>,
    sql: &str,
    types: &[pg_sys::Oid],
) -> &'static OwnedPreparedStatement {
    cache.with(|cell| {
        *cell.get_or_init(|| {
            let args: Vec<PgOid> = types.iter().map(|oid| PgOid::from(*oid)).collect();
            let statement = client
                .prepare_mut(sql, &args)
                .unwrap_or_else(|e| panic!("preparing a pg_jobs statement: {e}"));
            Box::leak(Box::new(statement.keep()))
        })
    })
}
