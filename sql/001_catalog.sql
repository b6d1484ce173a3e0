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
    filter      jsonpath,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
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
    duplicate_of uuid
);
CREATE INDEX events_name_received_at ON jobs.events (name, received_at);

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
    ended_at    timestamptz
);
CREATE INDEX runs_function_id_created_at ON jobs.runs (function_id, created_at);
CREATE INDEX runs_event_id ON jobs.runs (event_id);

-- Steps of each run (durable steps fill this table; see README).
CREATE TABLE jobs.steps (
    run_id      uuid NOT NULL,
    id          text NOT NULL,
    name        text NOT NULL,
    kind        text NOT NULL,
    status      text NOT NULL,
    attempts    int NOT NULL DEFAULT 0,
    output      jsonb,
    error       jsonb,
    started_at  timestamptz,
    ended_at    timestamptz,
    PRIMARY KEY (run_id, id)
);

-- One row per failed attempt, so that a run's retries can be read back.
CREATE TABLE jobs.attempt_errors (
    run_id      uuid NOT NULL,
    attempt     int NOT NULL,
    sqlstate    text NOT NULL,
    message     text NOT NULL,
    detail      text,
    hint        text,
    failed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (run_id, attempt)
);

-- Runs that are not finished. Executors claim from here, never from jobs.runs,
-- so the hot path stays small however long the history grows.
CREATE TABLE jobs.queue (
    run_id      uuid PRIMARY KEY,
    function_id text NOT NULL,
    -- When the run may next execute (event ts, retry backoff).
    due_at      timestamptz NOT NULL,
    -- The function is paused: the run waits for jobs.resume_function.
    held        boolean NOT NULL DEFAULT false,
    -- Executor process holding the run; NULL when it is free to claim.
    claimed_by  int,
    -- Attempts started, including any interrupted by a crash.
    claims      int NOT NULL DEFAULT 0
) WITH (fillfactor = 70);
CREATE INDEX queue_runnable ON jobs.queue (due_at) WHERE claimed_by IS NULL AND NOT held;
CREATE INDEX queue_function_id ON jobs.queue (function_id);

SELECT pg_catalog.pg_extension_config_dump('jobs.functions', '');
SELECT pg_catalog.pg_extension_config_dump('jobs.triggers', '');
