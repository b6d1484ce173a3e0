-- pg_jobs catalog: definitions, events, runs and the queue the executors claim from.
-- Column meanings are part of the public contract (see README, "History").

CREATE TABLE jobs.functions (
    id          text PRIMARY KEY CHECK (id <> '' AND length(id) <= 256),
    -- Schema-qualified signature, e.g. 'public.hello(jsonb)'; kept as text (not
    -- regprocedure) so that pg_upgrade accepts the table.
    handler     text NOT NULL,
    config      jsonb NOT NULL DEFAULT '{}',
    -- Role whose privileges the handler runs with: the one that defined the function.
    owner       regrole NOT NULL,
    paused      boolean NOT NULL DEFAULT false,
    -- Derived from config by create_function, so that the executor does not parse it.
    max_attempts int NOT NULL,
    backoff     jsonb NOT NULL,
    max_runtime interval,
    -- The `if` filter (CEL), checked.
    filter      text,
    -- cancel_on, checked: [{"event", "match_path", "condition", "timeout_ms"}].
    cancel_on   jsonb,
    -- Set on the function create_function made for another's on_failure.
    failure_of  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- Owner of the handler when the function was defined: a handler that
    -- another role re-created under the same name never runs.
    handler_owner regrole NOT NULL,
    -- Roles besides the owner's members that may invoke it (config key
    -- "invokers"; '-', role 0, stands for PUBLIC).
    invokers    regrole[] NOT NULL DEFAULT '{}',
    -- Flow control (concurrency, throttle, ...), checked: see src/flow/mod.rs.
    flow        jsonb,
    -- How long its finished runs are kept (config key "retention"; NULL: the
    -- jobs.retention setting), and whether completed ones are kept at all
    -- (config key "keep": 'failures' removes them once they finish).
    retention   interval,
    keep        text NOT NULL DEFAULT 'all' CHECK (keep IN ('all', 'failures'))
);

-- Event triggers of each function: an exact name, or the prefix of a wildcard
-- ('app/user.' for 'app/user.*'). jobs.send looks up the name and its prefixes.
CREATE TABLE jobs.triggers (
    event       text NOT NULL,
    wildcard    boolean NOT NULL,
    function_id text NOT NULL REFERENCES jobs.functions (id) ON DELETE CASCADE,
    PRIMARY KEY (event, wildcard, function_id)
);
CREATE INDEX triggers_function_id ON jobs.triggers (function_id);

CREATE TABLE jobs.events (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    data        jsonb NOT NULL,
    ts          timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The sender's deduplication id (jobs.send's id argument).
    dedup_id    text,
    -- Set when dedup_id was already seen within 24 hours: recorded, started nothing.
    duplicate_of uuid,
    -- For pg_jobs' own events about a run (jobs/function.*): the owner of its
    -- function. Only that owner's functions receive them, and row-level
    -- security shows them only to its members.
    owner       regrole
);
CREATE INDEX events_name_received_at ON jobs.events (name, received_at);

-- JSON Schemas that the data of events must match (jobs.define_event).
CREATE TABLE jobs.event_schemas (
    name        text PRIMARY KEY,
    schema      jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Deduplication ids seen in the last 24 hours.
CREATE TABLE jobs.dedup_ids (
    dedup_id    text PRIMARY KEY,
    event_id    uuid NOT NULL,
    seen_at     timestamptz NOT NULL
);
CREATE INDEX dedup_ids_seen_at ON jobs.dedup_ids (seen_at);

CREATE TABLE jobs.runs (
    id          uuid PRIMARY KEY,
    function_id text NOT NULL,
    event_id    uuid NOT NULL,
    status      text NOT NULL DEFAULT 'queued' CHECK (status IN
                ('queued', 'running', 'sleeping', 'waiting', 'completed', 'failed', 'cancelled')),
    -- 0-based number of the current (or last) attempt.
    attempt     int NOT NULL DEFAULT 0,
    output      jsonb,
    -- {"sqlstate", "message", "detail", "hint"} of the last failed attempt.
    error       jsonb,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at  timestamptz,
    ended_at    timestamptz,
    -- For a run started by jobs.invoke: the run and step waiting for it.
    parent_run_id  uuid,
    parent_step_id text,
    -- Started, directly or through jobs.invoke and events its code sent, by a
    -- jobs/function.* event: its own end sends no jobs/function.* event, so
    -- that such events cannot start each other in a loop.
    from_system_event boolean NOT NULL DEFAULT false,
    -- For a run started by jobs.rerun or jobs.replay: the run it repeats, the
    -- step it restarts at (the steps before it were copied as done), the args
    -- that replace that step's, and the replay that started it.
    rerun_of    uuid,
    rerun_step  text,
    rerun_input jsonb,
    replay_id   uuid
);
-- Runs by function, newest first (the dashboard's runs list, replays and
-- bulk cancels): by id, which is UUIDv7 and so in creation order. No index
-- has status or ended_at: finishing a run must stay a HOT update.
CREATE INDEX runs_function_id_id ON jobs.runs (function_id, id);
CREATE INDEX runs_event_id ON jobs.runs (event_id);

-- Steps of each run, in the order they started: the run's timeline.
CREATE TABLE jobs.steps (
    run_id      uuid NOT NULL,
    -- The id the handler gave, numbered when repeated: 'send', 'send:1', ...
    id          text NOT NULL,
    -- The id as the handler gave it ('send' for 'send:1').
    name        text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('run', 'sleep', 'wait', 'invoke', 'fetch')),
    status      text NOT NULL CHECK (status IN
                ('queued', 'retrying', 'sleeping', 'waiting', 'completed', 'failed')),
    -- Attempts made (failed or not).
    attempts    int NOT NULL DEFAULT 0,
    output      jsonb,
    -- {"sqlstate", "message", "detail", "hint"} of the last failed attempt.
    error       jsonb,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended_at    timestamptz,
    PRIMARY KEY (run_id, id)
);

-- One row per failed attempt, of a step or of the handler itself (step_id '').
CREATE TABLE jobs.attempt_errors (
    run_id      uuid NOT NULL,
    step_id     text NOT NULL DEFAULT '',
    attempt     int NOT NULL,
    sqlstate    text NOT NULL,
    message     text NOT NULL,
    detail      text,
    hint        text,
    failed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (run_id, step_id, attempt)
);

-- Work that is not finished: one row per unfinished run (step_id ''), and one
-- per step planned by jobs.parallel while it waits for an executor. Executors
-- claim from here, never from jobs.runs, so the hot path stays small however
-- long the history grows.
CREATE TABLE jobs.queue (
    run_id      uuid NOT NULL,
    step_id     text NOT NULL DEFAULT '',
    function_id text NOT NULL,
    -- When the work may next execute (event ts, retry backoff, sleep end;
    -- 'infinity' while the run waits for its parallel steps).
    due_at      timestamptz NOT NULL,
    -- The function is paused: the work waits for jobs.resume_function.
    held        boolean NOT NULL DEFAULT false,
    -- Executor process holding the work; NULL when it is free to claim.
    claimed_by  int,
    -- Claims without a recorded outcome since: above 1 at claim time means the
    -- previous holder stopped mid-attempt (crash, restart, termination).
    claims      int NOT NULL DEFAULT 0,
    -- A parallel step's SQL and $1.
    sql         text,
    args        jsonb,
    -- A run's parallel steps not finished yet.
    pending_steps int NOT NULL DEFAULT 0,
    -- Set when the run is to be cancelled ({"message", ...}); the executor
    -- cancels it at its next round, after any step it is running.
    cancelled   jsonb,
    -- Concurrency: the keys whose slots the work takes while it is claimed
    -- (a key's slots are the executors holding claimed rows that name it),
    -- with their limits.
    ckey1       text,
    lim1        int,
    ckey2       text,
    lim2        int,
    -- The key the work waits for a slot of; such work leaves the runnable
    -- index until a slot of that key frees.
    blocked_on  text,
    -- Throttle: the key of a run not started yet that must reserve its start.
    throttle_key text,
    -- timeouts.start: cancelled if not started by then (the time allowed
    -- from the send, again if a first claim is given back); timeouts.finish:
    -- the time allowed once started, and the deadline it gives at the first claim.
    start_by    timestamptz,
    start_within interval,
    finish_within interval,
    finish_by   timestamptz,
    -- The claim must decide about this work (concurrency slots, throttle).
    admit       boolean GENERATED ALWAYS AS (ckey1 IS NOT NULL OR throttle_key IS NOT NULL) STORED,
    PRIMARY KEY (run_id, step_id)
) WITH (fillfactor = 70);
CREATE INDEX queue_runnable ON jobs.queue (due_at) WHERE claimed_by IS NULL AND NOT held AND NOT admit;
CREATE INDEX queue_admittable ON jobs.queue (due_at)
    WHERE claimed_by IS NULL AND NOT held AND admit AND blocked_on IS NULL;
CREATE INDEX queue_function_id ON jobs.queue (function_id);
CREATE INDEX queue_slots1 ON jobs.queue (ckey1) WHERE claimed_by IS NOT NULL AND ckey1 IS NOT NULL;
CREATE INDEX queue_slots2 ON jobs.queue (ckey2) WHERE claimed_by IS NOT NULL AND ckey2 IS NOT NULL;
CREATE INDEX queue_blocked ON jobs.queue (blocked_on, due_at) WHERE blocked_on IS NOT NULL;
CREATE INDEX queue_waiting_for_slot ON jobs.queue (ckey1)
    WHERE claimed_by IS NULL AND blocked_on IS NULL AND ckey1 IS NOT NULL;
CREATE INDEX queue_start_by ON jobs.queue (start_by) WHERE start_by IS NOT NULL;
CREATE INDEX queue_finish_by ON jobs.queue (finish_by) WHERE finish_by IS NOT NULL;

-- HTTP requests of jobs.fetch and jobs.plan_fetch not made yet, in flight
-- (claimed by the fetcher) or waiting for a retry. Each counts in its run's
-- pending_steps, like a parallel step; the fetcher makes the run due when
-- it ends. `spec` holds {{secret.NAME}} placeholders, never their values.
CREATE TABLE jobs.fetches (
    run_id      uuid NOT NULL,
    step_id     text NOT NULL,
    function_id text NOT NULL,
    spec        jsonb NOT NULL,
    due_at      timestamptz NOT NULL,
    -- The fetcher process that made the request and waits for its answer.
    claimed_by  int,
    PRIMARY KEY (run_id, step_id)
);
CREATE INDEX fetches_due ON jobs.fetches (due_at) WHERE claimed_by IS NULL;

-- Secrets for {{secret.NAME}} in fetch requests, by the role that set them
-- (jobs.set_secret); a request uses its function owner's only.
CREATE TABLE jobs.secrets (
    owner       regrole NOT NULL,
    name        text NOT NULL,
    value       text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, name)
);

-- What runs wait for: an event for jobs.wait_for_event (kind 'event'), or one
-- that cancels them (kind 'cancel', from cancel_on). jobs.send looks a new
-- event up here by name and match value, in the sender's transaction.
CREATE TABLE jobs.waits (
    run_id      uuid NOT NULL,
    step_id     text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('event', 'cancel')),
    event       text NOT NULL,
    -- Path in the new event (e.g. {data,paymentId}) whose value must equal
    -- match_value, the triggering event's value at that path; '{}' and 'true'
    -- when any event of the name will do (so that every lookup is by index).
    match_path  text[] NOT NULL,
    match_value jsonb NOT NULL,
    -- A CEL predicate over event (the trigger) and async (the new event).
    condition   text,
    trigger     jsonb,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at  timestamptz,
    PRIMARY KEY (run_id, step_id)
);
CREATE INDEX waits_match ON jobs.waits (event, match_path, match_value);

-- The match paths waited on for each event name ('{}' for no match), so that
-- a send computes only the keys somebody waits for, and knows at once
-- whether anybody waits for its name.
CREATE TABLE jobs.wait_paths (
    event       text NOT NULL,
    match_path  text[] NOT NULL,
    PRIMARY KEY (event, match_path)
);

-- Cron schedules of functions (config key "cron"); the launcher fires them.
CREATE TABLE jobs.cron_schedules (
    function_id   text NOT NULL REFERENCES jobs.functions (id) ON DELETE CASCADE,
    -- As written, TZ= prefix included.
    expression    text NOT NULL,
    -- The zone the expression is read in.
    timezone      text NOT NULL,
    next_fire_at  timestamptz NOT NULL,
    last_fired_at timestamptz,
    last_run_id   uuid,
    PRIMARY KEY (function_id, expression)
);
CREATE INDEX cron_schedules_next_fire_at ON jobs.cron_schedules (next_fire_at);

-- The instants each function was started for: one run per instant, whatever
-- happens (crash, restart, two expressions falling on the same instant).
CREATE TABLE jobs.cron_fires (
    function_id  text NOT NULL,
    scheduled_at timestamptz NOT NULL,
    run_id       uuid,
    PRIMARY KEY (function_id, scheduled_at)
);

-- What will run when.
CREATE VIEW jobs.schedules WITH (security_invoker = true) AS
SELECT function_id, expression, timezone, next_fire_at, last_fired_at, last_run_id
FROM jobs.cron_schedules;

SELECT pg_catalog.pg_extension_config_dump('jobs.functions', '');
SELECT pg_catalog.pg_extension_config_dump('jobs.triggers', '');
SELECT pg_catalog.pg_extension_config_dump('jobs.cron_schedules', '');
SELECT pg_catalog.pg_extension_config_dump('jobs.event_schemas', '');
SELECT pg_catalog.pg_extension_config_dump('jobs.secrets', '');

-- Flow-control state, changed in the transactions of the runs it governs, so
-- that it cannot leak or drift on a crash.

-- Throttle: each key's theoretical arrival time (GCRA), in µs since 1970.
CREATE TABLE jobs.throttles (
    key         text PRIMARY KEY,
    tat_us      bigint NOT NULL
);

-- Debounce: the run each key's events push back, until it starts.
CREATE TABLE jobs.debounces (
    function_id text NOT NULL,
    key         text NOT NULL,
    run_id      uuid NOT NULL,
    first_at    timestamptz NOT NULL,
    PRIMARY KEY (function_id, key)
);
CREATE INDEX debounces_run_id ON jobs.debounces (run_id);

-- Batches: the open batch of each key, and the events of each batch run.
CREATE TABLE jobs.batches (
    function_id text NOT NULL,
    key         text NOT NULL,
    run_id      uuid NOT NULL,
    size        int NOT NULL,
    PRIMARY KEY (function_id, key)
);
CREATE INDEX batches_run_id ON jobs.batches (run_id);
CREATE TABLE jobs.batch_events (
    run_id      uuid NOT NULL,
    position    int NOT NULL,
    event_id    uuid NOT NULL,
    PRIMARY KEY (run_id, position)
);
CREATE INDEX batch_events_event_id ON jobs.batch_events (event_id);

-- Singleton: the unfinished run of each key.
CREATE TABLE jobs.singletons (
    function_id text NOT NULL,
    key         text NOT NULL,
    run_id      uuid NOT NULL,
    PRIMARY KEY (function_id, key)
);
CREATE INDEX singletons_run_id ON jobs.singletons (run_id);

-- Idempotency: the key values seen in the last 24 hours.
CREATE TABLE jobs.idempotency_keys (
    function_id text NOT NULL,
    key         text NOT NULL,
    event_id    uuid NOT NULL,
    seen_at     timestamptz NOT NULL,
    PRIMARY KEY (function_id, key)
);
CREATE INDEX idempotency_keys_seen_at ON jobs.idempotency_keys (seen_at);

-- Events that matched a function and started nothing because of its flow
-- control (rate limited, idempotent, singleton, debounced into a later one).
CREATE TABLE jobs.skips (
    event_id    uuid NOT NULL,
    function_id text NOT NULL,
    reason      text NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (event_id, function_id)
);
CREATE INDEX skips_function_id_at ON jobs.skips (function_id, at);

-- Replays (jobs.replay): what each one repeats, in order, and how far it got.
-- The launcher starts the items a few at a time (README, "Operations").
CREATE TABLE jobs.replay_requests (
    id          uuid PRIMARY KEY,
    function_id text NOT NULL,
    window_from timestamptz NOT NULL,
    window_to   timestamptz NOT NULL,
    statuses    text[] NOT NULL,
    created_by  regrole NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    total       bigint NOT NULL,
    started     bigint NOT NULL DEFAULT 0,
    finished    bigint NOT NULL DEFAULT 0,
    cancelled_at timestamptz,
    ended_at    timestamptz
);
CREATE INDEX replay_requests_active ON jobs.replay_requests (created_at) WHERE ended_at IS NULL;
-- One row per run to repeat (source_run_id) or skipped event to run at last
-- (event_id); run_id is the run started for it.
CREATE TABLE jobs.replay_items (
    replay_id   uuid NOT NULL,
    position    bigint NOT NULL,
    source_run_id uuid,
    event_id    uuid,
    run_id      uuid,
    done        boolean NOT NULL DEFAULT false,
    PRIMARY KEY (replay_id, position)
);
CREATE INDEX replay_items_pending ON jobs.replay_items (replay_id, position) WHERE run_id IS NULL;
CREATE INDEX replay_items_in_flight ON jobs.replay_items (replay_id) WHERE run_id IS NOT NULL AND NOT done;
-- What retention must keep while a replay still needs it.
CREATE INDEX replay_items_source_run_id ON jobs.replay_items (source_run_id) WHERE run_id IS NULL;
CREATE INDEX replay_items_event_id ON jobs.replay_items (event_id) WHERE run_id IS NULL;

CREATE VIEW jobs.replays WITH (security_invoker = true) AS
SELECT id, function_id, window_from, window_to, statuses, created_by, created_at,
       total, started, finished,
       CASE WHEN cancelled_at IS NOT NULL THEN 'cancelled'
            WHEN ended_at IS NOT NULL THEN 'finished' ELSE 'running' END AS status,
       cancelled_at, ended_at
FROM jobs.replay_requests;
