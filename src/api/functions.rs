//! Defining functions: `jobs.create_function` and the calls that pause, resume,
//! delete and invoke them.

use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};

use super::events::{start_run, Origin, Started};
use super::types::{JsonbDatum, RegProcedure};
use super::{as_catalog_owner, current_role};
use crate::config::{self, FunctionConfig};
use crate::errors::{self, invalid, raise, warn_not_preloaded};
use crate::{event_name, shmem};

pub(crate) fn check_id(id: Option<&str>) -> &str {
    let Some(id) = id else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "function id must not be null",
        )
    };
    if id.trim().is_empty()
        || id.chars().count() > event_name::MAX_LEN
        || id.chars().any(char::is_control)
    {
        invalid(format!(
            "function id \"{id}\" must be 1 to {} printable characters",
            event_name::MAX_LEN
        ))
    }
    id
}

/// A handler as `create_function` checked it.
struct Handler {
    /// Schema-qualified signature, as stored.
    signature: String,
    /// Its owner now: the code that will run is that role's.
    owner: pg_sys::Oid,
}

/// The handler's schema-qualified signature and owner, after checking that
/// it can be one and that the caller may run it.
fn check_handler(handler: Option<RegProcedure>) -> Handler {
    let Some(RegProcedure(oid)) = handler else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "handler must not be null",
        )
    };
    let row = Spi::get_three_with_args::<String, bool, bool>(
        "SELECT format('%I.%I(%s)', n.nspname, p.proname, pg_catalog.oidvectortypes(p.proargtypes)),
                p.pronargs = 1 AND p.proargtypes[0] = 'pg_catalog.jsonb'::pg_catalog.regtype
                    AND p.prokind = 'f' AND NOT p.proretset,
                pg_catalog.has_function_privilege($2, p.oid, 'EXECUTE')
         FROM (SELECT $1::pg_catalog.oid AS oid) h
         LEFT JOIN pg_catalog.pg_proc p ON p.oid = h.oid
         LEFT JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace",
        &[oid.into(), current_role().into()],
    )
    .unwrap_or_else(|e| panic!("looking up the handler: {e}"));
    let (Some(signature), Some(shape_ok), Some(may_execute)) = row else {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_FUNCTION,
            format!("handler with oid {oid} does not exist"),
        )
    };
    if !shape_ok {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_FUNCTION_DEFINITION,
            format!("handler {signature} must be a function that takes one jsonb argument (ctx jsonb) and returns one value"),
        )
    }
    if !may_execute {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("handler {signature}: permission denied to execute it, and it would run with your rights"),
        )
    }
    let owner = Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT proowner FROM pg_catalog.pg_proc WHERE oid = $1",
        &[oid.into()],
    )
    .unwrap_or_else(|e| panic!("looking up the handler's owner: {e}"))
    .expect("the handler exists");
    Handler { signature, owner }
}

/// Locks function `id` and refuses to go on unless the caller is a member of
/// its owner. The lock makes the check and the change that follows one.
pub(crate) fn check_may_change(id: &str, caller: pg_sys::Oid) {
    let owned = Spi::get_one_with_args::<bool>(
        "SELECT (SELECT pg_catalog.pg_has_role($2, owner, 'MEMBER') FROM jobs.functions WHERE id = $1 FOR UPDATE)",
        &[id.into(), caller.into()],
    )
    .unwrap_or_else(|e| panic!("looking up function {id}: {e}"));
    match owned {
        None => errors::unknown_function(id),
        Some(false) => another_roles(id),
        Some(true) => {}
    }
}

pub(crate) fn another_roles(id: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!(
            "function id \"{id}\" belongs to another role; only members of that role may change it"
        ),
    )
}

pub(crate) fn exists(id: &str) -> bool {
    Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM jobs.functions WHERE id = $1)",
        &[id.into()],
    )
    .unwrap_or_else(|e| panic!("looking up function {id}: {e}"))
        == Some(true)
}

/// The `config` argument as JSON; documents nested too deeply are refused
/// rather than parsed.
fn config_value(config: Option<JsonbDatum>) -> serde_json::Value {
    match config {
        None => serde_json::json!({}),
        Some(datum) => datum
            .to_value()
            .unwrap_or_else(|_| errors::too_deep("config")),
    }
}

// No `SET search_path` here, unlike the other entry points: an `on_failure`
// handler name is resolved with the caller's search_path, as `handler` is.
// The catalog writes pin it themselves (as_catalog_owner).
#[pg_extern(volatile, parallel_unsafe)]
fn create_function(
    id: Option<&str>,
    handler: Option<RegProcedure>,
    config: default!(Option<JsonbDatum>, "'{}'"),
) {
    warn_not_preloaded();
    let id = check_id(id);
    let handler = check_handler(handler);
    let config = config_value(config);
    let parsed: FunctionConfig = config::parse(&config).unwrap_or_else(|e| errors::config(e));
    let invokers = resolve_invokers(&parsed.invokers);
    let on_failure = parsed.on_failure.as_deref().map(resolve_on_failure);
    as_catalog_owner(|owner| {
        let definition = Definition {
            id,
            handler: &handler,
            config: &config,
            owner,
            parsed: &parsed,
            invokers: &invokers,
            failure_of: None,
        };
        if !store_function(&definition) {
            another_roles(id)
        }
        // Work waiting for a concurrency slot is looked at again, under the
        // limits just defined.
        let unblocked = Spi::get_one_with_args::<i64>(
            "WITH unblocked AS (UPDATE jobs.queue SET blocked_on = NULL
                                WHERE function_id = $1 AND blocked_on IS NOT NULL RETURNING 1)
             SELECT count(*) FROM unblocked",
            &[id.into()],
        )
        .unwrap_or_else(|e| panic!("unblocking the work of {id}: {e}"))
        .unwrap_or(0);
        shmem::wake_workers_at_commit(unblocked as usize);
        let failure_id = format!("{id}-failure");
        match on_failure {
            Some(failure_handler) => {
                let failure_config = serde_json::json!({
                    "event": "jobs/function.failed",
                    "if": format!("event.data.function_id == {}", serde_json::Value::String(id.to_string())),
                });
                let failure_parsed =
                    config::parse(&failure_config).expect("the failure function's config is valid");
                let stored = store_function(&Definition {
                    id: &failure_id,
                    handler: &failure_handler,
                    config: &failure_config,
                    parsed: &failure_parsed,
                    invokers: &[],
                    failure_of: Some(id),
                    ..definition
                });
                if !stored {
                    raise(
                        PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
                        format!("config key \"on_failure\": its function would be \"{failure_id}\", which is another function's id"),
                    )
                }
            }
            None => delete_failure_function(id),
        }
        shmem::owners_changed_at_commit();
    });
}

/// `on_failure` names a handler as `handler` does, resolved with the caller's search_path.
fn resolve_on_failure(name: &str) -> Handler {
    let oid = Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT pg_catalog.to_regprocedure($1)::pg_catalog.oid",
        &[name.into()],
    )
    .unwrap_or_else(|e| panic!("looking up the on_failure handler: {e}"));
    match oid {
        Some(oid) => check_handler(Some(RegProcedure(oid))),
        None => raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_FUNCTION,
            format!("config key \"on_failure\" = \"{name}\": no such function (give its arguments: \"{name}(jsonb)\")"),
        ),
    }
}

/// The roles of the `invokers` config key; `public` (any case) stands for
/// every role and is stored as role 0.
fn resolve_invokers(names: &[String]) -> Vec<pg_sys::Oid> {
    names
        .iter()
        .map(|name| {
            if name.eq_ignore_ascii_case("public") {
                return pg_sys::Oid::INVALID;
            }
            Spi::get_one_with_args::<pg_sys::Oid>(
                "SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1",
                &[name.as_str().into()],
            )
            .unwrap_or_else(|e| panic!("looking up role {name}: {e}"))
            .unwrap_or_else(|| {
                raise(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                    format!("config key \"invokers\": role \"{name}\" does not exist"),
                )
            })
        })
        .collect()
}

/// A function to store, as `create_function` checked it.
#[derive(Clone, Copy)]
struct Definition<'a> {
    id: &'a str,
    handler: &'a Handler,
    config: &'a serde_json::Value,
    /// The caller, who becomes the owner.
    owner: pg_sys::Oid,
    parsed: &'a FunctionConfig,
    invokers: &'a [pg_sys::Oid],
    /// Set for the function made for another's on_failure.
    failure_of: Option<&'a str>,
}

/// Inserts or replaces a function and its triggers. Returns false, changing
/// nothing, when the id is taken by a function the caller may not change
/// (or, for an on_failure function, by any function but that one). The check
/// is part of the upsert, so a concurrent definition of the same id cannot
/// slip in between.
fn store_function(definition: &Definition) -> bool {
    let Definition {
        id,
        handler,
        config,
        owner,
        parsed,
        invokers,
        failure_of,
    } = *definition;
    let (names, wildcards): (Vec<String>, Vec<bool>) = parsed
        .triggers
        .iter()
        .map(|t| (t.name.clone(), t.wildcard))
        .unzip();
    let cancel_on = (!parsed.cancel_on.is_empty()).then(|| {
        JsonB(serde_json::Value::Array(
            parsed.cancel_on.iter().map(|c| c.to_json()).collect(),
        ))
    });
    let cancel_paths: Vec<(String, Vec<String>)> = parsed
        .cancel_on
        .iter()
        .map(|c| (c.event.clone(), c.match_path.clone().unwrap_or_default()))
        .collect();
    let stored = Spi::get_one_with_args::<bool>(
        "WITH defined AS (
            INSERT INTO jobs.functions AS f
                (id, handler, handler_owner, config, owner, invokers, max_attempts, backoff, max_runtime,
                 filter, cancel_on, failure_of, flow, retention, keep)
            VALUES ($1, $2, $3, $4, $5, $6::oid[]::regrole[], $7, $8, $9 * interval '1 millisecond', $10, $11, $12, $13,
                    $14 * interval '1 millisecond', CASE WHEN $15 THEN 'failures' ELSE 'all' END)
            ON CONFLICT (id) DO UPDATE SET
                handler = excluded.handler, handler_owner = excluded.handler_owner, config = excluded.config,
                owner = excluded.owner, invokers = excluded.invokers,
                max_attempts = excluded.max_attempts, backoff = excluded.backoff,
                max_runtime = excluded.max_runtime, filter = excluded.filter,
                cancel_on = excluded.cancel_on, failure_of = excluded.failure_of, flow = excluded.flow,
                retention = excluded.retention, keep = excluded.keep, updated_at = now()
            WHERE CASE WHEN excluded.failure_of IS NULL
                       THEN pg_catalog.pg_has_role(excluded.owner, f.owner, 'MEMBER')
                       ELSE f.failure_of = excluded.failure_of END
            RETURNING 1
         )
         SELECT EXISTS (SELECT FROM defined)",
        &[
            id.into(),
            handler.signature.as_str().into(),
            handler.owner.into(),
            JsonB(config.clone()).into(),
            owner.into(),
            invokers.to_vec().into(),
            (parsed.max_attempts as i32).into(),
            JsonB(parsed.backoff.to_json()).into(),
            parsed.max_runtime.map(|d| d.as_millis() as f64).into(),
            parsed.filter.as_deref().into(),
            cancel_on.into(),
            failure_of.into(),
            (!parsed.flow.is_empty())
                .then(|| JsonB(serde_json::to_value(&parsed.flow).expect("flow serializes")))
                .into(),
            parsed.retention.map(|d| d.as_millis() as f64).into(),
            parsed.keep_failures_only.into(),
        ],
    )
    .unwrap_or_else(|e| panic!("storing function {id}: {e}"));
    if stored != Some(true) {
        return false;
    }
    Spi::run_with_args(
        "WITH old_triggers AS (
            -- Only the triggers that go: the insert below cannot see this
            -- statement's deletions, so the ones that stay must not collide.
            DELETE FROM jobs.triggers
            WHERE function_id = $1
              AND (event, wildcard) NOT IN (SELECT * FROM unnest($2::text[], $3::bool[]))
         )
         INSERT INTO jobs.triggers (event, wildcard, function_id)
         SELECT event, wildcard, $1 FROM unnest($2::text[], $3::bool[]) AS t (event, wildcard)
         ON CONFLICT DO NOTHING",
        &[id.into(), names.into(), wildcards.into()],
    )
    .unwrap_or_else(|e| panic!("storing the triggers of {id}: {e}"));
    store_schedules(id, &parsed.crons);
    for (event, path) in cancel_paths {
        Spi::run_with_args(
            "INSERT INTO jobs.wait_paths (event, match_path) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[event.as_str().into(), path.into()],
        )
        .unwrap_or_else(|e| panic!("storing cancel_on of {id}: {e}"));
    }
    true
}

/// Keeps the function's schedules in step with its config: an unchanged
/// expression keeps its next fire time, a new one fires from now on. One
/// without a next instant (@reboot) is due never ('infinity').
fn store_schedules(id: &str, crons: &[crate::cron::Cron]) {
    let now = crate::pgtime::now();
    let expressions: Vec<&str> = crons.iter().map(|c| c.expression.as_str()).collect();
    let zones: Vec<&str> = crons.iter().map(|c| c.zone.name()).collect();
    let next: Vec<Option<TimestampWithTimeZone>> = crons
        .iter()
        .map(|c| c.next_after(now).and_then(crate::pgtime::to_pg))
        .collect();
    Spi::run_with_args(
        "WITH gone AS (
            DELETE FROM jobs.cron_schedules s
            WHERE s.function_id = $1 AND s.expression <> ALL ($2::text[])
         )
         INSERT INTO jobs.cron_schedules (function_id, expression, timezone, next_fire_at)
         SELECT $1, e, z, coalesce(n, 'infinity') FROM unnest($2::text[], $3::text[], $4::timestamptz[]) AS t (e, z, n)
         ON CONFLICT (function_id, expression) DO UPDATE SET
             timezone = excluded.timezone, next_fire_at = excluded.next_fire_at,
             last_fired_at = NULL, last_run_id = NULL
         WHERE jobs.cron_schedules.timezone <> excluded.timezone",
        &[id.into(), expressions.into(), zones.into(), next.into()],
    )
    .unwrap_or_else(|e| panic!("storing the schedules of {id}: {e}"));
}

/// The function made for `id`'s on_failure goes with it (its history stays).
fn delete_failure_function(id: &str) {
    Spi::run_with_args(
        "DELETE FROM jobs.functions WHERE failure_of = $1",
        &[id.into()],
    )
    .unwrap_or_else(|e| panic!("deleting the on_failure function of {id}: {e}"));
}

#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn delete_function(id: Option<&str>) {
    let id = check_id(id);
    as_catalog_owner(|caller| {
        check_may_change(id, caller);
        delete(id);
    });
}

/// Deletes function `id` (and its on_failure function); its unfinished runs
/// are cancelled by the executors (after the step they may be running), which
/// tell whoever waits for them. Runs as the catalog owner.
pub fn delete(id: &str) {
    delete_failure_function(id);
    let flagged = Spi::get_one_with_args::<i64>(
        "WITH gone AS (DELETE FROM jobs.functions WHERE id = $1),
              flagged AS (UPDATE jobs.queue SET due_at = now(), held = false, blocked_on = NULL,
                                 cancelled = coalesce(cancelled, '{\"message\": \"function deleted\"}')
                          WHERE function_id = $1 AND step_id = '' RETURNING 1)
         SELECT count(*) FROM flagged",
        &[id.into()],
    )
    .unwrap_or_else(|e| panic!("deleting function {id}: {e}"))
    .unwrap_or(0);
    shmem::wake_workers_at_commit(flagged as usize);
    shmem::owners_changed_at_commit();
}

#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn pause_function(id: Option<&str>) {
    set_paused(check_id(id), true);
}

#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn resume_function(id: Option<&str>) {
    set_paused(check_id(id), false);
}

fn set_paused(id: &str, paused: bool) {
    as_catalog_owner(|caller| {
        check_may_change(id, caller);
        let released = Spi::get_one_with_args::<i64>(
            "WITH f AS (UPDATE jobs.functions SET paused = $2, updated_at = now() WHERE id = $1),
                  q AS (UPDATE jobs.queue SET held = $2 WHERE function_id = $1 AND held <> $2 RETURNING 1)
             SELECT count(*) FROM q",
            &[id.into(), paused.into()],
        )
        .unwrap_or_else(|e| panic!("pausing function {id}: {e}"))
        .unwrap_or(0);
        if !paused {
            shmem::wake_workers_at_commit(released as usize);
        }
    });
}

#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn invoke_function(id: Option<&str>, data: default!(Option<JsonbDatum>, "'{}'")) -> pgrx::Uuid {
    warn_not_preloaded();
    let id = check_id(id);
    let data = match data {
        Some(object) if object.is_object() => object,
        Some(_) | None => invalid(format!("data for function \"{id}\" must be a JSON object")),
    };
    as_catalog_owner(|caller| {
        let run = start_run(
            id,
            "jobs/function.invoked",
            data,
            Origin::invoked_by(caller),
        );
        match run {
            Started::Run(run) => run,
            Started::NoSuchFunction => errors::unknown_function(id),
            Started::NotAllowed => raise(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("function id \"{id}\" belongs to another role, which does not let you invoke it (config key \"invokers\")"),
            ),
        }
    })
}

/// Cancels a run: at once if it waits in the queue (queued, sleeping, waiting),
/// after the step it is running otherwise.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn cancel_run(run_id: Option<pgrx::Uuid>) {
    let Some(run_id) = run_id else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "run_id must not be null",
        )
    };
    as_catalog_owner(|caller| {
        let found = Spi::get_two_with_args::<String, String>(
            "SELECT r.function_id, r.status FROM (SELECT 1) one LEFT JOIN jobs.runs r ON r.id = $1",
            &[run_id.into()],
        )
        .unwrap_or_else(|e| panic!("looking up run {run_id}: {e}"));
        let (Some(function_id), Some(status)) = found else {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                format!("run {run_id} does not exist"),
            )
        };
        if exists(&function_id) {
            check_may_change(&function_id, caller);
        }
        let flagged = Spi::get_one_with_args::<bool>(
            "WITH flagged AS (
                UPDATE jobs.queue SET due_at = now(), held = false, blocked_on = NULL,
                       cancelled = jsonb_build_object('message', 'cancelled by jobs.cancel_run', 'by', $2::regrole::text)
                WHERE run_id = $1 AND step_id = '' AND cancelled IS NULL
                RETURNING 1)
             SELECT EXISTS (SELECT FROM flagged)",
            &[run_id.into(), caller.into()],
        )
        .unwrap_or_else(|e| panic!("cancelling run {run_id}: {e}"));
        if flagged != Some(true) {
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("run {run_id} is {status}: there is nothing left to cancel"),
            )
        }
        shmem::wake_workers_at_commit(1);
        interrupt_executing(&[run_id]);
    });
}

/// Executors running code of `runs` (a handler, a step, a parallel step) are
/// interrupted once the cancellation commits.
pub fn interrupt_executing(runs: &[pgrx::Uuid]) {
    let holders: Vec<(pgrx::Uuid, i32)> = Spi::connect(|client| {
        client
            .select(
                "SELECT DISTINCT run_id, claimed_by FROM jobs.queue WHERE run_id = ANY ($1) AND claimed_by > 0",
                None,
                &[runs.to_vec().into()],
            )
            .unwrap_or_else(|e| panic!("finding who executes runs being cancelled: {e}"))
            .filter_map(|row| Some((row.get(1).ok().flatten()?, row.get(2).ok().flatten()?)))
            .collect()
    });
    for (run, pid) in holders {
        shmem::interrupt_at_commit(*run.as_bytes(), pid);
    }
}
