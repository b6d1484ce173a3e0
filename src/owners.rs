//! A role that owns pg_jobs functions is treated like one that owns objects:
//! `DROP ROLE` refuses while it owns functions (naming them), `REASSIGN OWNED`
//! moves them to the new role, `DROP OWNED` deletes them. PostgreSQL keeps
//! such dependencies in pg_shdepend, which has no place for rows of an
//! extension's table, so pg_jobs hooks the three statements.
//!
//! `DROP ROLE` may run in any database. In one where pg_jobs is installed the
//! hook reads jobs.functions; elsewhere it asks the registry the launcher
//! keeps in shared memory of the owners in `jobs.database`.

use std::ffi::CStr;
use std::time::{Duration, Instant};

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::shmem::{self, Ownership};

static mut PREVIOUS_HOOK: pg_sys::ProcessUtility_hook_type = None;

/// Most function ids named in `DROP ROLE`'s refusal.
const NAMED: i64 = 10;

pub fn install_hook() {
    unsafe {
        PREVIOUS_HOOK = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

#[allow(clippy::too_many_arguments)]
#[pg_guard]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    let statement = unsafe { (*pstmt).utilityStmt };
    let tag = unsafe { (*statement).type_ };
    if tag == pg_sys::NodeTag::T_DropRoleStmt {
        let drop = statement as *mut pg_sys::DropRoleStmt;
        for role in unsafe { role_oids((*drop).roles) } {
            refuse_if_owner(role);
        }
    }
    unsafe {
        match PREVIOUS_HOOK {
            Some(previous) => previous(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
            None => pg_sys::standard_ProcessUtility(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
        }
    }
    // PostgreSQL's own work for the current database is done; pg_jobs' follows.
    if tag == pg_sys::NodeTag::T_ReassignOwnedStmt && installed_here() {
        let reassign = statement as *mut pg_sys::ReassignOwnedStmt;
        let from = unsafe { role_oids((*reassign).roles) };
        let to = unsafe { pg_sys::get_rolespec_oid((*reassign).newrole, false) };
        reassign_functions(&from, to);
    } else if tag == pg_sys::NodeTag::T_DropOwnedStmt && installed_here() {
        let drop = statement as *mut pg_sys::DropOwnedStmt;
        drop_functions(&unsafe { role_oids((*drop).roles) });
    }
}

/// The roles a statement names (that exist).
unsafe fn role_oids(list: *mut pg_sys::List) -> Vec<pg_sys::Oid> {
    if list.is_null() {
        return Vec::new();
    }
    let length = unsafe { (*list).length } as usize;
    (0..length)
        .map(|i| unsafe {
            let spec = (*(*list).elements.add(i)).ptr_value as *const pg_sys::RoleSpec;
            pg_sys::get_rolespec_oid(spec, true)
        })
        .filter(|oid| *oid != pg_sys::Oid::INVALID)
        .collect()
}

fn installed_here() -> bool {
    let extension = unsafe { pg_sys::get_extension_oid(c"pg_jobs".as_ptr(), true) };
    extension != pg_sys::Oid::INVALID
}

fn role_name(role: pg_sys::Oid) -> String {
    let name = unsafe { pg_sys::GetUserNameFromId(role, true) };
    if name.is_null() {
        return role.to_u32().to_string();
    }
    unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned()
}

fn refuse_if_owner(role: pg_sys::Oid) {
    let name = role_name(role);
    if installed_here() {
        let (count, ids) = crate::api::as_catalog_owner(|_| {
            Spi::get_two_with_args::<i64, String>(
                "SELECT (SELECT count(*) FROM jobs.functions WHERE owner = $1),
                        (SELECT string_agg(id, ', ' ORDER BY id)
                         FROM (SELECT id FROM jobs.functions WHERE owner = $1 ORDER BY id LIMIT $2) f)",
                &[role.into(), NAMED.into()],
            )
            .unwrap_or_else(|e| panic!("looking up the functions of role {name}: {e}"))
        });
        let count = count.unwrap_or(0);
        if count > 0 {
            let more = if count > NAMED { ", …" } else { "" };
            refuse(
                &name,
                format!(
                    "owner of {count} pg_jobs function(s): {}{more}",
                    ids.unwrap_or_default()
                ),
                "in this database",
            );
        }
        return;
    }
    if !shmem::is_initialized() {
        return;
    }
    let database = crate::gucs::database();
    match registry_ownership(role) {
        Ownership::None => {}
        Ownership::Functions(count) => refuse(
            &name,
            format!("owner of {count} pg_jobs function(s) in database \"{database}\""),
            &format!("in database \"{database}\""),
        ),
        Ownership::Unknown => refuse(
            &name,
            format!("pg_jobs cannot tell from here whether it owns functions in database \"{database}\""),
            &format!("in database \"{database}\""),
        ),
    }
}

/// The registry's answer, once it has caught up with changes just committed
/// (the launcher refreshes it within milliseconds of a commit).
fn registry_ownership(role: pg_sys::Oid) -> Ownership {
    let shared = shmem::shared();
    let deadline = Instant::now() + Duration::from_secs(2);
    while shared.owners_stale() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    shared.ownership(role.to_u32())
}

fn refuse(role: &str, detail: String, place: &str) -> ! {
    pgrx::pg_sys::panic::ErrorReport::new(
        PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
        format!("role \"{role}\" cannot be dropped because some objects depend on it"),
        "",
    )
    .set_detail(detail)
    .set_hint(format!(
        "Run REASSIGN OWNED BY {role} TO another role, or DROP OWNED BY {role}, {place} first."
    ))
    .report(PgLogLevel::ERROR);
    unreachable!("ERROR returns control to PostgreSQL")
}

fn reassign_functions(from: &[pg_sys::Oid], to: pg_sys::Oid) {
    crate::api::as_catalog_owner(|_| {
        // The handlers in this database moved to `to` as well, so the
        // ownership recorded for them follows.
        Spi::run_with_args(
            "WITH functions AS (UPDATE jobs.functions SET owner = $2, updated_at = now() WHERE owner = ANY ($1))
             UPDATE jobs.functions SET handler_owner = $2 WHERE handler_owner = ANY ($1)",
            &[from.to_vec().into(), to.into()],
        )
        .unwrap_or_else(|e| panic!("reassigning pg_jobs functions: {e}"));
    });
    shmem::owners_changed_at_commit();
}

fn drop_functions(roles: &[pg_sys::Oid]) {
    let ids: Vec<String> = crate::api::as_catalog_owner(|_| {
        Spi::connect(|client| {
            client
                .select(
                    "SELECT id FROM jobs.functions WHERE owner = ANY ($1) AND failure_of IS NULL",
                    None,
                    &[roles.to_vec().into()],
                )
                .unwrap_or_else(|e| panic!("finding pg_jobs functions to drop: {e}"))
                .map(|row| row.get::<String>(1).ok().flatten().unwrap_or_default())
                .collect()
        })
    });
    for id in ids {
        crate::api::functions::delete(&id);
    }
    shmem::owners_changed_at_commit();
}

/// Refreshes the registry of owners from jobs.functions (the launcher, in
/// `jobs.database`).
pub fn refresh_registry() {
    let shared = shmem::shared();
    shared.take_owners_stale();
    let owners: Vec<(u32, u32)> = Spi::connect(|client| {
        client
            .select(
                "SELECT owner::oid, count(*)::int4 FROM jobs.functions GROUP BY owner",
                None,
                &[],
            )
            .expect("counting the functions of each owner")
            .map(|row| {
                let role: pg_sys::Oid = row.get(1).ok().flatten().expect("owner");
                let count: i32 = row.get(2).ok().flatten().expect("count");
                (role.to_u32(), count as u32)
            })
            .collect()
    });
    shared.fill_owners(&owners);
}
