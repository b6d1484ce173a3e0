//! `jobs.send`: record events and start the runs of every function they trigger,
//! inside the caller's transaction.

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{JsonB, PgSqlErrorCode};
use serde_json::Value;

use super::types::JsonbDatum;
use super::{as_catalog_owner, prepared, StatementCache};
use crate::errors::{invalid, raise, warn_not_preloaded};
use crate::{event_name, gucs, shmem};

/// An event that passed validation.
pub struct NewEvent {
    pub name: String,
    pub data: pg_sys::Datum,
    pub dedup_id: Option<String>,
    pub ts: Option<TimestampWithTimeZone>,
    /// For pg_jobs' own events about a run: the owner of its function, the
    /// only role (with its members) whose functions and waits receive it.
    pub owner: Option<pg_sys::Oid>,
}

#[pg_extern(name = "send", volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn send(
    name: Option<&str>,
    data: default!(Option<JsonbDatum>, "'{}'"),
    id: default!(Option<&str>, "NULL"),
    ts: default!(Option<TimestampWithTimeZone>, "NULL"),
) -> pgrx::Uuid {
    warn_not_preloaded();
    let event = check_event("", name, data.as_ref(), id, ts);
    record(vec![event]).remove(0)
}

#[pg_extern(name = "send", volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn send_batch(events: Option<JsonbDatum>) -> Vec<pgrx::Uuid> {
    warn_not_preloaded();
    let items = match events.map(|e| e.to_value()) {
        Some(Ok(Value::Array(items))) => items,
        Some(Ok(object @ Value::Object(_))) => vec![object],
        Some(Err(_)) => crate::errors::too_deep("events"),
        Some(Ok(other)) => invalid(format!(
            "events must be a JSON array of {{\"name\", \"data\"}} objects, got {}",
            json_kind(&other)
        )),
        None => raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "events must not be null",
        ),
    };
    // Check every element before storing any, so that one bad element stores nothing.
    let checked: Vec<NewEvent> = items
        .into_iter()
        .enumerate()
        .map(|(index, item)| check_batch_element(index, item))
        .collect();
    record(checked)
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_batch_element(index: usize, item: Value) -> NewEvent {
    let field = |name: &str| format!("events[{index}].{name}");
    let Value::Object(mut object) = item else {
        invalid(format!(
            "events[{index}] must be an object with \"name\" and \"data\", got {}",
            json_kind(&item)
        ))
    };
    if let Some(key) = object
        .keys()
        .find(|k| !["name", "data", "id", "ts"].contains(&k.as_str()))
    {
        invalid(format!(
            "{} is not an event field (use name, data, id, ts)",
            field(key)
        ));
    }
    let name = match object.remove("name") {
        Some(Value::String(name)) => Some(name),
        None | Some(Value::Null) => None,
        Some(other) => invalid(format!(
            "{} must be a string, got {}",
            field("name"),
            json_kind(&other)
        )),
    };
    let data = match object.remove("data") {
        None => Value::Object(Default::default()),
        Some(data) => data,
    };
    let id = match object.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => invalid(format!(
            "{} must be a string, got {}",
            field("id"),
            json_kind(&other)
        )),
    };
    let ts = match object.remove("ts") {
        None | Some(Value::Null) => None,
        Some(value) => Some(parse_ts(&field("ts"), &value)),
    };
    let data = JsonbDatum(JsonB(data).into_datum().expect("jsonb is never null here"));
    check_event(
        &format!("events[{index}]."),
        name.as_deref(),
        Some(&data),
        id.as_deref(),
        ts,
    )
}

/// An Inngest `ts`: milliseconds since 1970, or an ISO 8601 / RFC 3339 string.
fn parse_ts(field: &str, value: &Value) -> TimestampWithTimeZone {
    let unix_micros = match value {
        Value::Number(n) => n.as_f64().map(|ms| (ms * 1000.0) as i64),
        Value::String(text) => chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.timestamp_micros()),
        _ => None,
    };
    let Some(time) = unix_micros.and_then(chrono::DateTime::from_timestamp_micros) else {
        invalid(format!(
            "{field} = {value} is not a timestamp: use milliseconds since 1970 or an ISO 8601 string such as \"2026-01-31T09:00:00Z\""
        ))
    };
    crate::pgtime::to_pg(time)
        .unwrap_or_else(|| invalid(format!("{field} = {value} is out of range")))
}

fn check_event(
    prefix: &str,
    name: Option<&str>,
    data: Option<&JsonbDatum>,
    id: Option<&str>,
    ts: Option<TimestampWithTimeZone>,
) -> NewEvent {
    let Some(name) = name else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{prefix}name must not be null"),
        )
    };
    if let Err(why) = event_name::check_user_name(name) {
        let shown: String = name.chars().take(80).collect();
        invalid(format!("{prefix}name \"{shown}\" {why}"))
    }
    let Some(data) = data else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{prefix}data of event \"{name}\" must be a JSON object, not null"),
        )
    };
    if !data.is_object() {
        invalid(format!(
            "{prefix}data of event \"{name}\" must be a JSON object such as '{{\"userId\": 42}}'"
        ))
    }
    let size = name.len() + data.size();
    if size > gucs::max_event_size_bytes() {
        raise(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!(
                "{prefix}event \"{name}\" is {} kB, over jobs.max_event_size ({} kB)",
                size.div_ceil(1024),
                gucs::MAX_EVENT_SIZE_KB.get()
            ),
        )
    }
    if let Some(id) = id {
        if id.is_empty() || id.len() > event_name::MAX_LEN {
            invalid(format!(
                "{prefix}id \"{id}\" must be 1 to {} characters",
                event_name::MAX_LEN
            ))
        }
    }
    NewEvent {
        name: name.to_string(),
        data: data.0,
        dedup_id: id.map(str::to_string),
        ts,
        owner: None,
    }
}

thread_local! {
    static CLAIM_DEDUP_ID: StatementCache = const { StatementCache::new() };
    static FIND_DUPLICATE: StatementCache = const { StatementCache::new() };
    static MATCH_FUNCTIONS: StatementCache = const { StatementCache::new() };
    static INSERT_EVENT_AND_RUNS: StatementCache = const { StatementCache::new() };
    static MATCH_WAITS: StatementCache = const { StatementCache::new() };
    static LISTENED: StatementCache = const { StatementCache::new() };
}

thread_local! {
    /// Set while user code of a run that descends from a jobs/function.* event
    /// runs: the runs its events start descend from it too.
    static SENDER_FROM_SYSTEM_EVENT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (user code) as code of a run that does, or does not, descend from
/// a jobs/function.* event.
pub fn as_code_of_run<R>(from_system_event: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SENDER_FROM_SYSTEM_EVENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(SENDER_FROM_SYSTEM_EVENT.with(|c| c.replace(from_system_event)));
    f()
}

/// pg_jobs' events about runs, which could otherwise start each other forever.
fn is_about_a_run(name: &str) -> bool {
    name.starts_with("jobs/function.") && name != "jobs/function.invoked"
}

/// Stores the events and the runs they start, and resumes or cancels the
/// runs waiting for them; returns the event ids.
pub fn record(events: Vec<NewEvent>) -> Vec<pgrx::Uuid> {
    as_catalog_owner(|_| {
        Spi::connect_mut(|client| {
            let mut ids = Vec::with_capacity(events.len());
            let mut runnable = 0;
            for (index, event) in events.iter().enumerate() {
                let prefix = if events.len() > 1 {
                    format!("events[{index}].")
                } else {
                    String::new()
                };
                super::schemas::check(client, &prefix, &event.name, event.data);
            }
            for event in events {
                let id = new_id();
                let duplicate_of = event
                    .dedup_id
                    .as_deref()
                    .and_then(|dedup_id| find_duplicate(client, dedup_id, id));
                let mut targets = match duplicate_of {
                    Some(_) => Vec::new(),
                    None => matching_functions(client, id, &event),
                };
                if targets.iter().any(|t| t.flow.is_some()) {
                    let document = super::flow::event_document(id, &event.name, event.data);
                    targets = super::flow::at_send(client, id, &document, targets);
                }
                runnable += targets.iter().filter(|t| !t.held).count();
                let from_system_event = is_about_a_run(&event.name)
                    || SENDER_FROM_SYSTEM_EVENT.with(std::cell::Cell::get);
                let origin = Origin {
                    from_system_event,
                    ..Origin::default()
                };
                insert_event(client, id, &event, duplicate_of, &targets, &origin);
                if duplicate_of.is_none() {
                    runnable += match_waits(client, id, &event);
                }
                ids.push(id);
            }
            shmem::wake_workers_at_commit(runnable);
            ids
        })
    })
}

/// Claims `dedup_id` for event `id`, or returns the event that claimed it in the last 24 hours.
fn find_duplicate(
    client: &mut SpiClient<'_>,
    dedup_id: &str,
    id: pgrx::Uuid,
) -> Option<pgrx::Uuid> {
    let claim = prepared(
        &CLAIM_DEDUP_ID,
        client,
        "INSERT INTO jobs.dedup_ids AS d (dedup_id, event_id, seen_at)
         VALUES ($1, $2, clock_timestamp())
         ON CONFLICT (dedup_id) DO UPDATE
            SET event_id = excluded.event_id, seen_at = excluded.seen_at
            WHERE d.seen_at < excluded.seen_at - interval '24 hours'
         RETURNING true",
        &[TEXTOID.value(), UUIDOID.value()],
    );
    let claimed = client
        .update(claim, None, &[dedup_id.into(), id.into()])
        .expect("claiming a dedup id")
        .len()
        == 1;
    if claimed {
        return None;
    }
    let find = prepared(
        &FIND_DUPLICATE,
        client,
        "SELECT event_id FROM jobs.dedup_ids WHERE dedup_id = $1",
        &[TEXTOID.value()],
    );
    client
        .select(find, None, &[dedup_id.into()])
        .expect("finding a duplicate event")
        .first()
        .get_one::<pgrx::Uuid>()
        .ok()
        .flatten()
}

/// A run to start.
pub struct Target {
    pub run: pgrx::Uuid,
    pub function: String,
    /// The function is paused: the run waits for jobs.resume_function.
    pub held: bool,
    /// The function's checked cancel_on, as stored in jobs.functions.
    pub cancel_on: Option<String>,
    /// The function's flow control, when it has some.
    pub flow: Option<crate::flow::Flow>,
    /// Where flow control puts the run.
    pub placement: super::flow::Placement,
}

/// A function's stored flow control.
fn stored_flow(text: Option<String>) -> Option<crate::flow::Flow> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

/// The functions `event` triggers: by name or wildcard, and by their `if` filter.
fn matching_functions(client: &SpiClient<'_>, id: pgrx::Uuid, event: &NewEvent) -> Vec<Target> {
    let matching = prepared(
        &MATCH_FUNCTIONS,
        client,
        "SELECT f.id, f.paused, f.cancel_on::text, f.flow::text
         FROM jobs.triggers t JOIN jobs.functions f ON f.id = t.function_id
         WHERE t.event = ANY ($1) AND (t.wildcard OR t.event = $2)
           AND ($6::oid IS NULL OR pg_has_role(f.owner, $6, 'MEMBER'))
           AND (f.filter IS NULL OR jobs._expr_true(f.filter,
                jsonb_build_object('event', jsonb_build_object(
                    'id', $3, 'name', $2, 'data', $4, 'ts', coalesce($5, now())))))
         GROUP BY f.id, f.paused, f.cancel_on::text, f.flow::text",
        &[
            TEXTARRAYOID.value(),
            TEXTOID.value(),
            UUIDOID.value(),
            JSONBOID.value(),
            TIMESTAMPTZOID.value(),
            OIDOID.value(),
        ],
    );
    let mut keys = event_name::wildcard_prefixes(&event.name);
    keys.push(event.name.clone());
    let data = unsafe { DatumWithOid::new(event.data, JSONBOID.value()) };
    client
        .select(
            matching,
            None,
            &[
                keys.into(),
                event.name.as_str().into(),
                id.into(),
                data,
                event.ts.into(),
                event.owner.into(),
            ],
        )
        .expect("matching functions")
        .map(|row| Target {
            run: new_id(),
            function: row
                .get(1)
                .ok()
                .flatten()
                .expect("function id is never null"),
            held: row.get(2).ok().flatten().unwrap_or(false),
            cancel_on: row.get(3).ok().flatten(),
            flow: stored_flow(row.get(4).ok().flatten()),
            placement: Default::default(),
        })
        .collect()
}

/// Where a run comes from, besides its event.
#[derive(Default)]
pub struct Origin<'a> {
    /// The role that asked for it (jobs.invoke_function, jobs.invoke), which
    /// must be allowed to invoke the function; `None` when nobody asked (a
    /// schedule fired).
    pub invoker: Option<pg_sys::Oid>,
    /// The run and step waiting for it (jobs.invoke).
    pub parent: Option<(pgrx::Uuid, &'a str)>,
    /// It descends from a jobs/function.* event (see jobs.runs.from_system_event).
    pub from_system_event: bool,
    /// It repeats a run, or runs a skipped event, whose event is stored already.
    pub rerun: Option<Rerun<'a>>,
}

/// What a run started by jobs.rerun or jobs.replay repeats (see jobs.runs.rerun_of).
#[derive(Default)]
pub struct Rerun<'a> {
    pub of: Option<pgrx::Uuid>,
    pub step: Option<&'a str>,
    pub input: Option<JsonbDatum>,
    pub replay: Option<pgrx::Uuid>,
}

impl Origin<'_> {
    pub fn invoked_by(role: pg_sys::Oid) -> Self {
        Origin {
            invoker: Some(role),
            ..Origin::default()
        }
    }
}

/// Inserts the event (unless `origin` reruns a stored one), a run and a
/// queue entry for each target, and the waits of their cancel_on, in one
/// statement.
pub fn insert_event(
    client: &mut SpiClient<'_>,
    id: pgrx::Uuid,
    event: &NewEvent,
    duplicate_of: Option<pgrx::Uuid>,
    targets: &[Target],
    origin: &Origin,
) {
    let insert = prepared(
        &INSERT_EVENT_AND_RUNS,
        client,
        "WITH event AS (
            INSERT INTO jobs.events (id, name, data, ts, dedup_id, duplicate_of, owner)
            SELECT $1, $2, $3, coalesce($4, now()), $5, $6, $14 WHERE NOT $23
         ), doc AS (
            SELECT jsonb_build_object('id', $1, 'name', $2, 'data', $3, 'ts', coalesce($4, now())) AS doc
         ), runs AS (
            INSERT INTO jobs.runs (id, function_id, event_id, parent_run_id, parent_step_id, from_system_event,
                                   rerun_of, rerun_step, rerun_input, replay_id)
            SELECT run_id, function_id, $1, $11, $12, $13, $24, $25, $26, $27
            FROM unnest($7::uuid[], $8::text[]) AS r (run_id, function_id)
         ), queued AS (
            INSERT INTO jobs.queue (run_id, function_id, due_at, held, ckey1, lim1, ckey2, lim2,
                                    throttle_key, start_by, start_within, finish_within)
            SELECT run_id, function_id,
                   greatest(coalesce($4, now()), now()) + coalesce(shift_ms, 0) * interval '1 millisecond',
                   held, ckey1, lim1, ckey2, lim2, throttle_key,
                   clock_timestamp() + start_ms * interval '1 millisecond', start_ms * interval '1 millisecond',
                   finish_ms * interval '1 millisecond'
            FROM unnest($7::uuid[], $8::text[], $9::bool[], $15::text[], $16::int[], $17::text[], $18::int[],
                        $19::text[], $20::float8[], $21::float8[], $22::float8[])
                 AS r (run_id, function_id, held, ckey1, lim1, ckey2, lim2, throttle_key, shift_ms, start_ms, finish_ms)
         )
         INSERT INTO jobs.waits (run_id, step_id, kind, event, match_path, match_value, condition, trigger, expires_at)
         SELECT r.run_id, 'cancel_on:' || (c.n - 1), 'cancel', c.spec->>'event', m.path,
                CASE WHEN cardinality(m.path) = 0 THEN 'true' ELSE (SELECT doc FROM doc) #> m.path END,
                c.spec->>'condition',
                CASE WHEN c.spec->>'condition' IS NOT NULL THEN (SELECT doc FROM doc) END,
                clock_timestamp() + (c.spec->>'timeout_ms')::float8 * interval '1 millisecond'
         FROM unnest($7::uuid[], $10::jsonb[]) AS r (run_id, specs)
         CROSS JOIN LATERAL jsonb_array_elements(r.specs) WITH ORDINALITY AS c (spec, n)
         CROSS JOIN LATERAL (SELECT CASE WHEN jsonb_typeof(c.spec->'match_path') = 'array'
                THEN ARRAY(SELECT jsonb_array_elements_text(c.spec->'match_path')) ELSE '{}' END AS path) m",
        &[
            UUIDOID.value(),
            TEXTOID.value(),
            JSONBOID.value(),
            TIMESTAMPTZOID.value(),
            TEXTOID.value(),
            UUIDOID.value(),
            UUIDARRAYOID.value(),
            TEXTARRAYOID.value(),
            BOOLARRAYOID.value(),
            JSONBARRAYOID.value(),
            UUIDOID.value(),
            TEXTOID.value(),
            BOOLOID.value(),
            OIDOID.value(),
            TEXTARRAYOID.value(),
            INT4ARRAYOID.value(),
            TEXTARRAYOID.value(),
            INT4ARRAYOID.value(),
            TEXTARRAYOID.value(),
            FLOAT8ARRAYOID.value(),
            FLOAT8ARRAYOID.value(),
            FLOAT8ARRAYOID.value(),
            BOOLOID.value(),
            UUIDOID.value(),
            TEXTOID.value(),
            JSONBOID.value(),
            UUIDOID.value(),
        ],
    );
    let rerun = origin.rerun.as_ref();
    let run_ids: Vec<pgrx::Uuid> = targets.iter().map(|t| t.run).collect();
    let function_ids: Vec<&str> = targets.iter().map(|t| t.function.as_str()).collect();
    let held: Vec<bool> = targets.iter().map(|t| t.held).collect();
    let cancel_on: Vec<Option<JsonB>> = targets
        .iter()
        .map(|t| {
            t.cancel_on
                .as_deref()
                .and_then(|c| serde_json::from_str(c).ok())
                .map(JsonB)
        })
        .collect();
    client
        .update(
            insert,
            None,
            &[
                id.into(),
                event.name.as_str().into(),
                unsafe { DatumWithOid::new(event.data, JSONBOID.value()) },
                event.ts.into(),
                event.dedup_id.as_deref().into(),
                duplicate_of.into(),
                run_ids.into(),
                function_ids.into(),
                held.into(),
                cancel_on.into(),
                origin.parent.map(|p| p.0).into(),
                origin.parent.map(|p| p.1).into(),
                origin.from_system_event.into(),
                event.owner.into(),
                column(targets, |p| p.keys.first().map(|k| k.0.clone())).into(),
                column(targets, |p| p.keys.first().map(|k| k.1)).into(),
                column(targets, |p| p.keys.get(1).map(|k| k.0.clone())).into(),
                column(targets, |p| p.keys.get(1).map(|k| k.1)).into(),
                column(targets, |p| p.throttle_key.clone()).into(),
                column(targets, |p| Some(p.shift_ms as f64)).into(),
                column(targets, |p| p.start_within_ms.map(|ms| ms as f64)).into(),
                column(targets, |p| p.finish_within_ms.map(|ms| ms as f64)).into(),
                rerun.is_some().into(),
                rerun.and_then(|r| r.of).into(),
                rerun.and_then(|r| r.step).into(),
                match rerun.and_then(|r| r.input.as_ref()) {
                    Some(input) => unsafe { DatumWithOid::new(input.0, JSONBOID.value()) },
                    None => DatumWithOid::null_oid(JSONBOID.value()),
                },
                rerun.and_then(|r| r.replay).into(),
            ],
        )
        .expect("recording an event");
}

/// One column of the targets' placements, for the insert.
fn column<T>(
    targets: &[Target],
    field: impl Fn(&super::flow::Placement) -> Option<T>,
) -> Vec<Option<T>> {
    targets.iter().map(|t| field(&t.placement)).collect()
}

/// Resumes the runs waiting for this event (jobs.wait_for_event) and cancels
/// those it cancels (cancel_on), in the sender's transaction; returns how many
/// runs became due. One event satisfies a given wait once: the wait is
/// deleted as it is taken.
fn match_waits(client: &mut SpiClient<'_>, id: pgrx::Uuid, event: &NewEvent) -> usize {
    // Serializes with an executor registering a wait for this name, so that
    // one of the two always sees the other (see worker/run.rs, wait_for_event).
    lock_event_name(&event.name, false);
    let matching = prepared(
        &MATCH_WAITS,
        client,
        "WITH doc AS (
            SELECT e AS e FROM (SELECT jsonb_build_object('id', $1, 'name', $2, 'data', $3, 'ts', ts) AS e
                                FROM jobs.events WHERE id = $1) x
         ), matched AS (
            SELECT w.run_id, w.step_id, w.kind
            FROM jobs.wait_paths p
            JOIN jobs.waits w ON w.event = p.event AND w.match_path = p.match_path
                             AND w.match_value = CASE WHEN cardinality(p.match_path) = 0 THEN 'true'
                                                      ELSE (SELECT e FROM doc) #> p.match_path END
            WHERE p.event = $2
              AND (w.condition IS NULL OR jobs._expr_true(w.condition,
                    jsonb_build_object('event', w.trigger, 'async', (SELECT e FROM doc))))
              AND (w.expires_at IS NULL OR w.expires_at > now())
              AND ($4::oid IS NULL OR EXISTS (
                    SELECT FROM jobs.runs r JOIN jobs.functions f ON f.id = r.function_id
                    WHERE r.id = w.run_id AND pg_has_role(f.owner, $4, 'MEMBER')))
         ), taken AS (
            -- Each statement looks the few matched rows up by key: a join the
            -- planner could turn around would read every queued or waiting row.
            DELETE FROM jobs.waits w USING matched m
            WHERE w.run_id = ANY (ARRAY(SELECT run_id FROM matched WHERE kind = 'event'))
              AND m.kind = 'event' AND w.run_id = m.run_id AND w.step_id = m.step_id
            RETURNING w.run_id, w.step_id
         ), resumed AS (
            UPDATE jobs.steps s SET status = 'completed', output = (SELECT e FROM doc), ended_at = clock_timestamp()
            FROM taken t
            WHERE s.run_id = ANY (ARRAY(SELECT run_id FROM taken))
              AND s.run_id = t.run_id AND s.id = t.step_id AND s.status = 'waiting'
            RETURNING s.run_id
         ), due AS (
            UPDATE jobs.queue q SET due_at = now()
            WHERE q.run_id = ANY (ARRAY(SELECT run_id FROM resumed)) AND q.step_id = ''
            RETURNING 1
         ), cancelled AS (
            UPDATE jobs.queue q SET due_at = now(), held = false, blocked_on = NULL,
                   cancelled = jsonb_build_object('message', 'cancelled by event ' || $2, 'event_id', $1)
            WHERE q.run_id = ANY (ARRAY(SELECT run_id FROM matched WHERE kind = 'cancel'))
              AND q.step_id = '' AND q.cancelled IS NULL
            RETURNING 1
         )
         SELECT (SELECT count(*) FROM due) + (SELECT count(*) FROM cancelled)",
        &[UUIDOID.value(), TEXTOID.value(), JSONBOID.value(), OIDOID.value()],
    );
    let data = unsafe { DatumWithOid::new(event.data, JSONBOID.value()) };
    client
        .update(
            matching,
            None,
            &[
                id.into(),
                event.name.as_str().into(),
                data,
                event.owner.into(),
            ],
        )
        .expect("matching waits")
        .first()
        .get_one::<i64>()
        .ok()
        .flatten()
        .unwrap_or(0) as usize
}

/// An advisory lock on an event name, for the transaction. Senders take it
/// shared; an executor registering a wait takes it exclusive, without waiting
/// (`wait = false`), and returns whether it got it.
pub fn lock_event_name(name: &str, exclusive: bool) -> bool {
    // FNV-1a: stable across processes and releases.
    let hash = name.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    });
    let tag = pg_sys::LOCKTAG {
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: EVENT_NAME_LOCK_SPACE,
        locktag_field3: hash,
        // Advisory locks on two int4 keys use 2 here, like pg_advisory_lock(int, int).
        locktag_field4: 2,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    };
    let mode = if exclusive {
        pg_sys::ExclusiveLock
    } else {
        pg_sys::ShareLock
    } as i32;
    let result = unsafe { pg_sys::LockAcquire(&tag, mode, false, exclusive) };
    result != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
}

/// First key of pg_jobs' advisory locks ("jobs" in ASCII), unlikely to clash with an application's.
const EVENT_NAME_LOCK_SPACE: u32 = 0x6a6f_6273;

/// Sends one of pg_jobs' own events about a run of a function of `owner`
/// (`jobs/function.finished`, ...), if any function or run listens for it:
/// nothing is recorded (or built) otherwise. Only functions and runs of
/// `owner` (its members, superusers) receive it.
pub fn emit(name: &str, owner: pg_sys::Oid, data: impl FnOnce() -> serde_json::Value) -> usize {
    let listened = Spi::connect(|client| {
        let listened = prepared(
            &LISTENED,
            client,
            "SELECT EXISTS (SELECT FROM jobs.triggers WHERE event = ANY ($1) AND (wildcard OR event = $2))
                 OR EXISTS (SELECT FROM jobs.wait_paths WHERE event = $2)",
            &[TEXTARRAYOID.value(), TEXTOID.value()],
        );
        let mut keys = event_name::wildcard_prefixes(name);
        keys.push(name.to_string());
        client.select(listened, None, &[keys.into(), name.into()]).expect("looking for listeners").first().get_one::<bool>()
    })
    .ok()
    .flatten()
        == Some(true);
    if !listened {
        return 0;
    }
    let data = JsonB(data())
        .into_datum()
        .expect("jsonb is never null here");
    record(vec![NewEvent {
        name: name.to_string(),
        data,
        dedup_id: None,
        ts: None,
        owner: Some(owner),
    }])
    .len()
}

/// What `start_run` did.
pub enum Started {
    Run(pgrx::Uuid),
    NoSuchFunction,
    /// `origin.invoker` may not invoke the function.
    NotAllowed,
}

/// Starts a run of `function_id` for an event of pg_jobs' own (`name`,
/// `data`), whatever its triggers: `jobs/function.invoked`, `jobs/scheduled.timer`.
/// `data` is a JSON object.
pub fn start_run(function_id: &str, name: &str, data: JsonbDatum, origin: Origin) -> Started {
    let event = NewEvent {
        name: name.to_string(),
        data: data.0,
        dedup_id: None,
        ts: None,
        // It concerns one function: shown to its owner only (set below).
        owner: None,
    };
    start(function_id, new_id(), event, origin)
}

/// Starts a run of `function_id` for the stored event `event_id` (its name,
/// data, time and owner in `event`); `origin.rerun` says what it repeats.
pub fn start_rerun(
    function_id: &str,
    event_id: pgrx::Uuid,
    event: NewEvent,
    origin: Origin,
) -> Started {
    debug_assert!(origin.rerun.is_some());
    start(function_id, event_id, event, origin)
}

fn start(function_id: &str, event_id: pgrx::Uuid, mut event: NewEvent, origin: Origin) -> Started {
    let found = Spi::connect(|client| {
        let row = client
            .select(
                "SELECT f.paused, f.cancel_on::text, f.flow::text,
                        $2::oid IS NULL OR pg_has_role($2, f.owner, 'MEMBER') OR 0::oid = ANY (f.invokers::oid[])
                            OR EXISTS (SELECT FROM unnest(f.invokers) r WHERE r::oid <> 0 AND pg_has_role($2, r, 'MEMBER')),
                        f.owner::oid
                 FROM (SELECT 1) one LEFT JOIN jobs.functions f ON f.id = $1",
                None,
                &[function_id.into(), origin.invoker.into()],
            )
            .unwrap_or_else(|e| panic!("looking up function {function_id}: {e}"))
            .first();
        (
            row.get::<bool>(1).ok().flatten(),
            row.get::<String>(2).ok().flatten(),
            row.get::<String>(3).ok().flatten(),
            row.get::<bool>(4).ok().flatten(),
            row.get::<pg_sys::Oid>(5).ok().flatten(),
        )
    });
    let (Some(held), cancel_on, flow, Some(allowed), owner) = found else {
        return Started::NoSuchFunction;
    };
    if !allowed {
        return Started::NotAllowed;
    }
    if origin.rerun.is_none() {
        event.owner = owner;
    }
    let flow = stored_flow(flow);
    // Runs that nobody's event started obey the run-level flow control only.
    let placement = flow.as_ref().map_or_else(Default::default, |flow| {
        let document = super::flow::event_document(event_id, &event.name, event.data);
        super::flow::placement(function_id, flow, &document)
    });
    let target = Target {
        run: new_id(),
        function: function_id.to_string(),
        held,
        cancel_on,
        flow,
        placement,
    };
    let run = target.run;
    Spi::connect_mut(|client| insert_event(client, event_id, &event, None, &[target], &origin));
    if !held {
        shmem::wake_workers_at_commit(1);
    }
    Started::Run(run)
}

/// Ids are UUIDv7: time-ordered, so that indexes on them stay compact.
pub fn new_id() -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(*uuid::Uuid::now_v7().as_bytes())
}
