//! Flow control at send time, in the sender's transaction: what an event
//! does to each function it matches (src/flow/mod.rs has the config). The
//! event-level keys (`rate_limit`, `idempotency`, `singleton`, `debounce`,
//! `batch_events`) may start no run, or add the event to a run that exists;
//! the run-level ones (`concurrency`, `throttle`, `priority`, `timeouts`)
//! say where a new run goes in the queue, and apply to invoked and
//! scheduled runs too.

use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use serde_json::Value;

use super::events::Target;
use super::{prepared, StatementCache};
use crate::flow::{self, gcra::Gcra, Flow, SingletonMode};
use crate::shmem;

/// Where flow control puts a new run in the queue.
#[derive(Debug, Default, Clone)]
pub struct Placement {
    /// Concurrency keys and their limits (at most two).
    pub keys: Vec<(String, i32)>,
    pub throttle_key: Option<String>,
    /// Milliseconds the run's due time moves: priority (negative is ahead),
    /// debounce and batch waits (positive).
    pub shift_ms: i64,
    pub start_within_ms: Option<u64>,
    pub finish_within_ms: Option<u64>,
}

thread_local! {
    static SKIP: StatementCache = const { StatementCache::new() };
    static IDEMPOTENCY: StatementCache = const { StatementCache::new() };
    static SINGLETON: StatementCache = const { StatementCache::new() };
    static SINGLETON_CANCEL: StatementCache = const { StatementCache::new() };
    static DEBOUNCE_INTO: StatementCache = const { StatementCache::new() };
    static DEBOUNCE_NEW: StatementCache = const { StatementCache::new() };
    static BATCH_INTO: StatementCache = const { StatementCache::new() };
    static BATCH_NEW: StatementCache = const { StatementCache::new() };
}

/// The run-level placement of a new run of a function with `flow`.
pub fn placement(function_id: &str, flow: &Flow, event: &Value) -> Placement {
    let keys = flow
        .concurrency
        .iter()
        .map(|limit| {
            (
                flow::concurrency_key(function_id, limit, event),
                limit.limit as i32,
            )
        })
        .collect();
    let throttle_key = flow.throttle.as_ref().map(|throttle| {
        let value = throttle
            .key
            .as_deref()
            .map(|k| flow::key_value(k, event))
            .unwrap_or_default();
        format!("{function_id}:{value}")
    });
    let shift_ms = flow
        .priority
        .as_deref()
        .map_or(0, |p| -flow::priority_seconds(p, event) * 1000);
    Placement {
        keys,
        throttle_key,
        shift_ms,
        start_within_ms: flow.start_timeout_ms,
        finish_within_ms: flow.finish_timeout_ms,
    }
}

/// What happened to an event at a function, when it started no new run.
enum Outcome {
    /// A new run starts, placed so.
    Start(Placement),
    /// The event started nothing, for this reason (`jobs.skips`).
    Skipped(String),
    /// The event went into a run that exists (a debounce or a batch).
    Joined,
}

/// Applies the event-level flow control of each target, in the sender's
/// transaction; returns the targets that start a new run, placed. `event` is
/// the event as handlers see it.
pub fn at_send(
    client: &mut SpiClient<'_>,
    event_id: pgrx::Uuid,
    event: &Value,
    targets: Vec<Target>,
) -> Vec<Target> {
    let mut starting = Vec::with_capacity(targets.len());
    for mut target in targets {
        let Some(flow) = target.flow.clone() else {
            starting.push(target);
            continue;
        };
        match decide(client, event_id, event, &target, &flow) {
            Outcome::Start(placement) => {
                target.placement = placement;
                starting.push(target);
            }
            Outcome::Skipped(reason) => skip(client, event_id, &target.function, &reason),
            Outcome::Joined => {}
        }
    }
    starting
}

fn decide(
    client: &mut SpiClient<'_>,
    event_id: pgrx::Uuid,
    event: &Value,
    target: &Target,
    flow: &Flow,
) -> Outcome {
    let function = target.function.as_str();
    let key_of = |source: &Option<String>| {
        source
            .as_deref()
            .map(|k| flow::key_value(k, event))
            .unwrap_or_default()
    };
    if let Some(limit) = &flow.rate_limit {
        let key = key_of(&limit.key);
        let gcra = Gcra::rate_limit(limit.limit, limit.period_ms);
        let hash = shmem::hash64(&format!("{function}\u{0}{key}"));
        if shmem::is_initialized() && !shmem::shared().rate_admit(hash, &gcra) {
            return Outcome::Skipped(format!(
                "rate limited: more than {} run(s) per {} for key \"{key}\"",
                limit.limit,
                crate::duration::format(std::time::Duration::from_millis(limit.period_ms))
            ));
        }
    }
    if let Some(source) = &flow.idempotency {
        let key = flow::key_value(source, event);
        if let Some(first) = idempotent_duplicate(client, function, &key, event_id) {
            return Outcome::Skipped(format!(
                "idempotency: key \"{key}\" was seen within 24 hours, by event {first}"
            ));
        }
    }
    let mut placement = placement(function, flow, event);
    if let Some(singleton) = &flow.singleton {
        let key = key_of(&singleton.key);
        if let Some(reason) = singleton_taken(client, function, &key, target.run, singleton.mode) {
            return Outcome::Skipped(reason);
        }
    }
    if let Some(debounce) = &flow.debounce {
        let key = key_of(&debounce.key);
        if debounce_into(client, function, &key, event_id, debounce) {
            return Outcome::Joined;
        }
        debounce_new(client, function, &key, target.run);
        placement.shift_ms = debounce.period_ms as i64;
    }
    if let Some(batch) = &flow.batch {
        if flow::batches(batch.condition.as_deref(), event) {
            let key = key_of(&batch.key);
            if batch_into(client, function, &key, event_id, batch.max_size) {
                return Outcome::Joined;
            }
            batch_new(client, function, &key, target.run, event_id, batch.max_size);
            if batch.max_size > 1 {
                placement.shift_ms = batch.timeout_ms as i64;
            }
        }
    }
    Outcome::Start(placement)
}

fn skip(client: &mut SpiClient<'_>, event_id: pgrx::Uuid, function: &str, reason: &str) {
    let statement = prepared(
        &SKIP,
        client,
        "INSERT INTO jobs.skips (event_id, function_id, reason) VALUES ($1, $2, $3)
         ON CONFLICT (event_id, function_id) DO UPDATE SET reason = excluded.reason",
        &[UUIDOID.value(), TEXTOID.value(), TEXTOID.value()],
    );
    client
        .update(
            statement,
            None,
            &[event_id.into(), function.into(), reason.into()],
        )
        .expect("recording a skipped event");
}

/// The event that claimed `key` in the last 24 hours, if one did; claims it otherwise.
fn idempotent_duplicate(
    client: &mut SpiClient<'_>,
    function: &str,
    key: &str,
    event_id: pgrx::Uuid,
) -> Option<pgrx::Uuid> {
    let statement = prepared(
        &IDEMPOTENCY,
        client,
        "WITH claimed AS (
            INSERT INTO jobs.idempotency_keys AS k (function_id, key, event_id, seen_at)
            VALUES ($1, $2, $3, clock_timestamp())
            ON CONFLICT (function_id, key) DO UPDATE SET event_id = excluded.event_id, seen_at = excluded.seen_at
            WHERE k.seen_at < excluded.seen_at - interval '24 hours'
            RETURNING 1)
         SELECT CASE WHEN EXISTS (SELECT FROM claimed) THEN NULL
                     ELSE (SELECT event_id FROM jobs.idempotency_keys WHERE function_id = $1 AND key = $2) END",
        &[TEXTOID.value(), TEXTOID.value(), UUIDOID.value()],
    );
    client
        .update(
            statement,
            None,
            &[function.into(), key.into(), event_id.into()],
        )
        .expect("claiming an idempotency key")
        .first()
        .get_one::<pgrx::Uuid>()
        .ok()
        .flatten()
}

/// Singleton: the reason the new run does not start, when an unfinished run
/// of the key is there and the mode skips; with `cancel`, that run is
/// cancelled (its code interrupted) and `run` takes its place.
fn singleton_taken(
    client: &mut SpiClient<'_>,
    function: &str,
    key: &str,
    run: pgrx::Uuid,
    mode: SingletonMode,
) -> Option<String> {
    let statement = prepared(
        &SINGLETON,
        client,
        "WITH current AS (
            SELECT s.run_id FROM jobs.singletons s WHERE s.function_id = $1 AND s.key = $2 FOR UPDATE
         ), taken AS (
            INSERT INTO jobs.singletons AS s (function_id, key, run_id) VALUES ($1, $2, $3)
            ON CONFLICT (function_id, key) DO UPDATE SET run_id = excluded.run_id
            WHERE $4
            RETURNING 1
         )
         SELECT (SELECT run_id FROM current)",
        &[TEXTOID.value(), TEXTOID.value(), UUIDOID.value(), BOOLOID.value()],
    );
    let replace = mode == SingletonMode::Cancel;
    let current: Option<pgrx::Uuid> = client
        .update(
            statement,
            None,
            &[function.into(), key.into(), run.into(), replace.into()],
        )
        .expect("taking a singleton key")
        .first()
        .get_one()
        .ok()
        .flatten();
    let current = current?;
    match mode {
        SingletonMode::Skip => Some(format!(
            "singleton: run {current} of key \"{key}\" is unfinished"
        )),
        SingletonMode::Cancel => {
            let statement = prepared(
                &SINGLETON_CANCEL,
                client,
                "UPDATE jobs.queue SET due_at = now(), held = false, blocked_on = NULL,
                        cancelled = jsonb_build_object('message', 'cancelled by singleton: run ' || $2 || ' replaced it')
                 WHERE run_id = $1 AND step_id = '' AND cancelled IS NULL",
                &[UUIDOID.value(), TEXTOID.value()],
            );
            client
                .update(statement, None, &[current.into(), run.to_string().into()])
                .expect("cancelling the singleton's run");
            super::functions::interrupt_executing(&[current]);
            shmem::wake_workers_at_commit(1);
            None
        }
    }
}

/// Debounce: moves the key's pending run to this event and pushes it back;
/// false when there is no pending run (none, or it has started).
fn debounce_into(
    client: &mut SpiClient<'_>,
    function: &str,
    key: &str,
    event_id: pgrx::Uuid,
    debounce: &flow::Debounce,
) -> bool {
    let statement = prepared(
        &DEBOUNCE_INTO,
        client,
        "WITH pending AS (
            SELECT d.run_id, d.first_at FROM jobs.debounces d
            WHERE d.function_id = $1 AND d.key = $2 FOR UPDATE
         ), pushed AS (
            UPDATE jobs.queue q SET due_at = least(clock_timestamp() + $4 * interval '1 millisecond',
                                                  p.first_at + $5 * interval '1 millisecond')
                                            -- least() ignores the NULL of no timeout
            FROM pending p, jobs.runs r
            WHERE q.run_id = p.run_id AND q.step_id = '' AND q.claimed_by IS NULL
              AND r.id = p.run_id AND r.started_at IS NULL
            RETURNING q.run_id
         ), moved AS (
            UPDATE jobs.runs r SET event_id = $3 FROM pushed p WHERE r.id = p.run_id
            RETURNING (SELECT r2.event_id FROM jobs.runs r2 WHERE r2.id = r.id) AS before
         )
         INSERT INTO jobs.skips (event_id, function_id, reason)
         SELECT before, $1, 'debounced: a later event, ' || $3 || ', took its place' FROM moved
         ON CONFLICT (event_id, function_id) DO UPDATE SET reason = excluded.reason
         RETURNING 1",
        &[
            TEXTOID.value(),
            TEXTOID.value(),
            UUIDOID.value(),
            FLOAT8OID.value(),
            FLOAT8OID.value(),
        ],
    );
    // Without a timeout, events may push the start back without end.
    let timeout = debounce.timeout_ms.map(|ms| ms as f64);
    !client
        .update(
            statement,
            None,
            &[
                function.into(),
                key.into(),
                event_id.into(),
                (debounce.period_ms as f64).into(),
                timeout.into(),
            ],
        )
        .expect("debouncing an event")
        .is_empty()
}

fn debounce_new(client: &mut SpiClient<'_>, function: &str, key: &str, run: pgrx::Uuid) {
    let statement = prepared(
        &DEBOUNCE_NEW,
        client,
        "INSERT INTO jobs.debounces (function_id, key, run_id, first_at) VALUES ($1, $2, $3, clock_timestamp())
         ON CONFLICT (function_id, key) DO UPDATE SET run_id = excluded.run_id, first_at = excluded.first_at",
        &[TEXTOID.value(), TEXTOID.value(), UUIDOID.value()],
    );
    client
        .update(statement, None, &[function.into(), key.into(), run.into()])
        .expect("starting a debounce");
}

/// Batch: adds the event to the key's open batch, which starts at once when
/// that fills it; false when there is no open batch (none, or its run started).
fn batch_into(
    client: &mut SpiClient<'_>,
    function: &str,
    key: &str,
    event_id: pgrx::Uuid,
    max_size: u32,
) -> bool {
    let statement = prepared(
        &BATCH_INTO,
        client,
        "WITH open AS (
            SELECT b.run_id, b.size FROM jobs.batches b
            WHERE b.function_id = $1 AND b.key = $2 FOR UPDATE
         ), pending AS (
            UPDATE jobs.queue q SET due_at = CASE WHEN o.size + 1 >= $4 THEN now() ELSE q.due_at END
            FROM open o, jobs.runs r
            WHERE q.run_id = o.run_id AND q.step_id = '' AND q.claimed_by IS NULL
              AND r.id = o.run_id AND r.started_at IS NULL
            RETURNING o.run_id, o.size
         ), added AS (
            INSERT INTO jobs.batch_events (run_id, position, event_id)
            SELECT run_id, size, $3 FROM pending
            RETURNING run_id, position
         ), grown AS (
            UPDATE jobs.batches b SET size = a.position + 1 FROM added a
            WHERE b.function_id = $1 AND b.key = $2 AND a.position + 1 < $4
         ), full_batch AS (
            DELETE FROM jobs.batches b USING added a
            WHERE b.function_id = $1 AND b.key = $2 AND a.position + 1 >= $4
         )
         SELECT count(*) FROM added",
        &[
            TEXTOID.value(),
            TEXTOID.value(),
            UUIDOID.value(),
            INT4OID.value(),
        ],
    );
    let added = client
        .update(
            statement,
            None,
            &[
                function.into(),
                key.into(),
                event_id.into(),
                (max_size as i32).into(),
            ],
        )
        .expect("adding an event to a batch")
        .first()
        .get_one::<i64>()
        .ok()
        .flatten()
        .unwrap_or(0);
    if added > 0 {
        shmem::wake_workers_at_commit(1);
    }
    added > 0
}

fn batch_new(
    client: &mut SpiClient<'_>,
    function: &str,
    key: &str,
    run: pgrx::Uuid,
    event_id: pgrx::Uuid,
    max_size: u32,
) {
    let statement = prepared(
        &BATCH_NEW,
        client,
        "WITH first AS (
            INSERT INTO jobs.batch_events (run_id, position, event_id) VALUES ($3, 0, $4)
         )
         INSERT INTO jobs.batches (function_id, key, run_id, size)
         SELECT $1, $2, $3, 1 WHERE $5 > 1
         ON CONFLICT (function_id, key) DO UPDATE SET run_id = excluded.run_id, size = 1",
        &[
            TEXTOID.value(),
            TEXTOID.value(),
            UUIDOID.value(),
            UUIDOID.value(),
            INT4OID.value(),
        ],
    );
    client
        .update(
            statement,
            None,
            &[
                function.into(),
                key.into(),
                run.into(),
                event_id.into(),
                (max_size as i32).into(),
            ],
        )
        .expect("starting a batch");
}

/// The event as flow control's expressions see it (`{"id", "name", "data"}`);
/// data nested deeper than expressions read is null (keys are then "").
pub fn event_document(id: pgrx::Uuid, name: &str, data: pg_sys::Datum) -> Value {
    let data = super::types::JsonbDatum(data)
        .to_value()
        .unwrap_or(Value::Null);
    serde_json::json!({"id": id.to_string(), "name": name, "data": data})
}
