//! Trust between roles and isolation of faults: no role crashes the server,
//! runs code as another role, takes or fires another's functions or reads
//! their results, and one stuck run stalls nothing else.
//!
//! `alice` and `bob` are ordinary roles with only the grants the README's
//! Security section prescribes to a function definer. The tests take turns:
//! some change the server's settings or drop the extension.

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use pg_jobs_e2e::*;

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = Cluster::with_pg_jobs("trust", 2, &[]);
        cluster.connect().batch_execute(ROLES).unwrap();
        cluster
    })
}

/// What a definer gets (README, Security), and a schema both may create in.
const ROLES: &str = "
    CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; CREATE ROLE carol LOGIN;
    GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA jobs TO alice, bob, carol;
    GRANT SELECT ON ALL TABLES IN SCHEMA jobs TO alice, bob, carol;
    CREATE SCHEMA shared; GRANT USAGE, CREATE ON SCHEMA shared TO alice, bob, carol;
    CREATE SCHEMA alice AUTHORIZATION alice; CREATE SCHEMA bob AUTHORIZATION bob;
    CREATE TABLE shared.seen (function_id text, who text, data jsonb, at timestamptz DEFAULT clock_timestamp());
    GRANT INSERT, SELECT ON shared.seen TO alice, bob, carol;
    CREATE FUNCTION shared.record(ctx jsonb) RETURNS jsonb LANGUAGE sql AS $$
        INSERT INTO shared.seen (function_id, who, data) VALUES (ctx->>'function_id', current_user, ctx->'event')
        RETURNING jsonb_build_object('secret', 'output of ' || (ctx->>'function_id'))
    $$;
    GRANT EXECUTE ON FUNCTION shared.record(jsonb) TO alice, bob, carol;";

fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn as_role(role: &str) -> Client {
    cluster().connect_as(role, "postgres")
}

fn postmaster_started(c: &mut Client) -> String {
    c.query_one("SELECT pg_postmaster_start_time()::text", &[])
        .unwrap()
        .get(0)
}

#[test]
fn deep_expressions_are_refused_and_crash_nothing() {
    let _turn = turn();
    let mut admin = cluster().connect();
    let started = postmaster_started(&mut admin);
    let mut alice = as_role("alice");
    let parens = format!("{}event.data.x{}", "(".repeat(20_000), ")".repeat(20_000));
    let nots = format!("{}event.data.x", "!".repeat(50_000));
    let deep = format!("{}1{}", "[".repeat(1_000), "]".repeat(1_000));
    for source in [&parens, &nots, &deep] {
        let config = serde_json_text(&[("event", "test/deep"), ("if", source)]);
        let result = alice.execute(
            "SELECT jobs.create_function('deep', 'shared.record(jsonb)', $1::text::jsonb)",
            &[&config],
        );
        assert_eq!(sqlstate(result), "22023");
        let wait = alice.execute(
            "SELECT jobs.wait_for_event('w', 'test/deep', '1h', condition => $1)",
            &[source],
        );
        assert_eq!(sqlstate(wait), "22023");
    }
    // Within the length limit but nested too deeply for the parser.
    let nested = format!(
        "{}event.data.x == 1{}",
        "(".repeat(1_000),
        ")".repeat(1_000)
    );
    let config = serde_json_text(&[("event", "test/deep"), ("if", &nested)]);
    let result = alice.execute(
        "SELECT jobs.create_function('deep', 'shared.record(jsonb)', $1::text::jsonb)",
        &[&config],
    );
    let message = error_message(alice.execute(
        "SELECT jobs.create_function('deep', 'shared.record(jsonb)', $1::text::jsonb)",
        &[&config],
    ));
    assert_eq!(sqlstate(result), "22023");
    assert!(message.contains("\"if\""), "{message}");
    // A JSON Schema, event data and config nested past what pg_jobs reads.
    let deep_json = format!("{}{{}}{}", "{\"a\":".repeat(200), "}".repeat(200));
    let schema = admin.execute(
        "SELECT jobs.define_event('test/deep', $1::text::jsonb)",
        &[&deep_json],
    );
    assert_eq!(sqlstate(schema), "54001");
    // Data deeper than expressions read makes their filter false.
    alice
        .batch_execute("SELECT jobs.create_function('deep-filter', 'shared.record(jsonb)', '{\"event\": \"test/deep\", \"if\": \"event.data.a != null\"}')")
        .unwrap();
    admin
        .execute(
            "SELECT jobs.send('test/deep', $1::text::jsonb)",
            &[&deep_json],
        )
        .unwrap();
    admin
        .batch_execute("SELECT jobs.send('test/deep', '{\"a\": 1}')")
        .unwrap();
    assert_eq!(wait_for_runs(&mut admin, "deep-filter", 1), ["completed"]);
    assert_eq!(postmaster_started(&mut admin), started);
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM jobs.functions WHERE id = 'deep'"
        ),
        0
    );
}

/// A JSON object of string fields, escaped.
fn serde_json_text(fields: &[(&str, &str)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}: {}", json_string(k), json_string(v)))
        .collect();
    format!("{{{}}}", body.join(", "))
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[test]
fn a_handler_recreated_by_another_role_never_runs_as_the_owner() {
    let _turn = turn();
    let mut alice = as_role("alice");
    alice
        .batch_execute(
            "CREATE FUNCTION shared.hijackable(ctx jsonb) RETURNS text LANGUAGE sql AS $$ SELECT 'alice''s code' $$;
             SELECT jobs.create_function('hijack', 'shared.hijackable(jsonb)', '{\"event\": \"test/hijack\", \"retries\": 0}');
             DROP FUNCTION shared.hijackable(jsonb);",
        )
        .unwrap();
    let mut bob = as_role("bob");
    bob.batch_execute(
        "CREATE FUNCTION shared.hijackable(ctx jsonb) RETURNS text LANGUAGE sql AS $$
             INSERT INTO shared.seen (function_id, who) VALUES ('hijack', current_user) RETURNING 'bob''s code'
         $$;
         GRANT EXECUTE ON FUNCTION shared.hijackable(jsonb) TO alice;",
    )
    .unwrap();
    let mut admin = cluster().connect();
    admin
        .batch_execute("SELECT jobs.send('test/hijack')")
        .unwrap();
    assert_eq!(wait_for_runs(&mut admin, "hijack", 1), ["failed"]);
    let error: String = admin
        .query_one(
            "SELECT error->>'sqlstate' || ' ' || (error->>'message') FROM jobs.runs WHERE function_id = 'hijack'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(error.starts_with("42501"), "{error}");
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM shared.seen WHERE function_id = 'hijack'"
        ),
        0
    );
    // The owner may adopt the new code by defining the function again.
    alice
        .batch_execute("SELECT jobs.create_function('hijack', 'shared.hijackable(jsonb)', '{\"event\": \"test/hijack\", \"retries\": 0}')")
        .unwrap();
    admin
        .batch_execute("SELECT jobs.send('test/hijack')")
        .unwrap();
    assert_eq!(
        wait_for_runs(&mut admin, "hijack", 2),
        ["failed", "completed"]
    );
    let who: String = admin
        .query_one(
            "SELECT who FROM shared.seen WHERE function_id = 'hijack'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(who, "alice");
}

#[test]
fn a_function_id_cannot_be_taken_while_its_first_definition_commits() {
    let _turn = turn();
    let mut alice = as_role("alice");
    let mut transaction = alice.transaction().unwrap();
    transaction
        .execute(
            "SELECT jobs.create_function('race', 'shared.record(jsonb)')",
            &[],
        )
        .unwrap();
    let contender = std::thread::spawn(|| {
        let mut bob = as_role("bob");
        sqlstate(bob.execute(
            "SELECT jobs.create_function('race', 'shared.record(jsonb)', '{\"event\": \"test/race\"}')",
            &[],
        ))
    });
    // Bob's call waits for Alice's transaction.
    let mut admin = cluster().connect();
    wait_until("bob waits", Duration::from_secs(10), || {
        count(&mut admin, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'bob' AND wait_event_type = 'Lock'") == 1
    });
    transaction.commit().unwrap();
    assert_eq!(contender.join().unwrap(), "42501");
    let row = admin
        .query_one(
            "SELECT owner::text, config::text FROM jobs.functions WHERE id = 'race'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "alice");
    assert_eq!(row.get::<_, String>(1), "{}");
}

#[test]
fn only_the_owner_and_the_invokers_it_names_may_invoke() {
    let _turn = turn();
    let mut alice = as_role("alice");
    alice
        .batch_execute(
            "SELECT jobs.create_function('private', 'shared.record(jsonb)',
                 '{\"event\": \"test/private\", \"on_failure\": \"shared.record(jsonb)\"}');
             SELECT jobs.create_function('open-to-bob', 'shared.record(jsonb)', '{\"invokers\": [\"bob\"]}');",
        )
        .unwrap();
    let mut bob = as_role("bob");
    for id in ["private", "private-failure"] {
        let result = bob.execute("SELECT jobs.invoke_function($1, '{}')", &[&id]);
        assert_eq!(sqlstate(result), "42501", "{id}");
    }
    bob.execute(
        "SELECT jobs.invoke_function('open-to-bob', '{\"n\": 1}')",
        &[],
    )
    .unwrap();
    // From a handler: Bob's function invokes Alice's, as Bob.
    bob.batch_execute(
        "CREATE FUNCTION bob.invoker(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
         BEGIN
             RETURN jobs.invoke('call', ctx->'event'->'data'->>'target', '{}');
         END $$;
         SELECT jobs.create_function('bob-invoker', 'bob.invoker(jsonb)', '{\"event\": \"test/invoke-other\", \"retries\": 0}');",
    )
    .unwrap();
    let mut admin = cluster().connect();
    admin
        .batch_execute(
            "SELECT jobs.send('test/invoke-other', '{\"target\": \"private\"}');
             SELECT jobs.send('test/invoke-other', '{\"target\": \"open-to-bob\"}');",
        )
        .unwrap();
    let statuses = wait_for_runs(&mut admin, "bob-invoker", 2);
    let mut statuses = statuses.clone();
    statuses.sort();
    assert_eq!(statuses, ["completed", "failed"]);
    let refused: String = admin
        .query_one(
            "SELECT s.error->>'sqlstate' FROM jobs.steps s JOIN jobs.runs r ON r.id = s.run_id
             WHERE r.function_id = 'bob-invoker' AND r.status = 'failed'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(refused, "42501");
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM jobs.runs WHERE function_id IN ('private', 'private-failure')"
        ),
        0
    );
    assert_eq!(wait_for_runs(&mut admin, "open-to-bob", 2).len(), 2);
}

#[test]
fn system_events_reach_only_their_owners_functions_and_loop_nowhere() {
    let _turn = turn();
    let mut bob = as_role("bob");
    bob.batch_execute(
        "SELECT jobs.create_function('bob-listener', 'shared.record(jsonb)', '{\"event\": \"jobs/function.*\"}')",
    )
    .unwrap();
    let mut alice = as_role("alice");
    alice
        .batch_execute(
            "SELECT jobs.create_function('alice-secret', 'shared.record(jsonb)', '{\"event\": \"test/secret\"}');
             SELECT jobs.create_function('alice-listener', 'shared.record(jsonb)', '{\"event\": \"jobs/function.finished\"}');",
        )
        .unwrap();
    let mut admin = cluster().connect();
    admin
        .batch_execute("SELECT jobs.send('test/secret')")
        .unwrap();
    assert_eq!(wait_for_runs(&mut admin, "alice-secret", 1), ["completed"]);
    // Alice's listener hears of Alice's run, once; its own end sends nothing.
    assert_eq!(
        wait_for_runs(&mut admin, "alice-listener", 1),
        ["completed"]
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        wait_for_runs(&mut admin, "alice-listener", 1),
        ["completed"]
    );
    // Bob's listener heard nothing of Alice's runs, and Bob cannot read their events.
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM jobs.runs WHERE function_id = 'bob-listener'"
        ),
        0
    );
    let visible: i64 = bob
        .query_one(
            "SELECT count(*) FROM jobs.events WHERE name LIKE 'jobs/function.%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(visible, 0);
    let alice_sees: i64 = alice
        .query_one(
            "SELECT count(*) FROM jobs.events WHERE name = 'jobs/function.finished' AND data->>'function_id' = 'alice-secret'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(alice_sees, 1);
    // A run started by a system event sends none itself, even through an invoke.
    let runs_after_one_event = count(&mut admin, "SELECT count(*) FROM jobs.runs");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        count(&mut admin, "SELECT count(*) FROM jobs.runs"),
        runs_after_one_event
    );
}

#[test]
fn a_run_blocked_on_a_lock_holds_back_nothing_else() {
    let _turn = turn();
    let mut admin = cluster().connect();
    admin
        .batch_execute(
            "CREATE TABLE hol_lock (id int PRIMARY KEY); INSERT INTO hol_lock VALUES (1);
             CREATE TABLE hol_done (n int);
             CREATE FUNCTION hol(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
             BEGIN
                 IF (ctx->'event'->'data'->>'block')::bool THEN
                     PERFORM * FROM hol_lock FOR UPDATE;
                 END IF;
                 INSERT INTO hol_done VALUES ((ctx->'event'->'data'->>'n')::int);
             END $$;
             SELECT jobs.create_function('hol', 'hol(jsonb)', '{\"event\": \"test/hol\"}');",
        )
        .unwrap();
    let mut holder = cluster().connect();
    let mut lock = holder.transaction().unwrap();
    lock.execute("SELECT * FROM hol_lock FOR UPDATE", &[])
        .unwrap();
    admin
        .batch_execute(
            "SELECT jobs.send(jsonb_agg(jsonb_build_object('name', 'test/hol',
                 'data', jsonb_build_object('n', n, 'block', n = 150))))
             FROM generate_series(1, 300) n",
        )
        .unwrap();
    // Everything but the blocked run finishes while the lock is held.
    wait_until(
        "299 runs done behind one blocked run",
        Duration::from_secs(30),
        || count(&mut admin, "SELECT count(*) FROM hol_done") == 299,
    );
    lock.rollback().unwrap();
    assert_eq!(wait_for_runs(&mut admin, "hol", 300).len(), 300);
    assert_eq!(
        count(&mut admin, "SELECT count(DISTINCT n) FROM hol_done"),
        300
    );
}

#[test]
fn cancel_run_interrupts_code_that_is_executing() {
    let _turn = turn();
    let mut alice = as_role("alice");
    alice
        .batch_execute(
            "CREATE FUNCTION alice.forever(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM jobs.step('spin', 'SELECT pg_sleep(600)');
             END $$;
             SELECT jobs.create_function('forever', 'alice.forever(jsonb)', '{\"event\": \"test/forever\"}');
             SELECT jobs.send('test/forever');",
        )
        .unwrap();
    let mut admin = cluster().connect();
    wait_until("the step runs", Duration::from_secs(10), || {
        count(&mut admin, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_jobs executor' AND query LIKE '%step spin%'") == 1
    });
    let run: uuid_text::Id = uuid_text::one(
        &mut admin,
        "SELECT id::text FROM jobs.runs WHERE function_id = 'forever'",
    );
    let started = Instant::now();
    alice
        .execute("SELECT jobs.cancel_run($1::text::uuid)", &[&run.0])
        .unwrap();
    assert_eq!(wait_for_runs(&mut admin, "forever", 1), ["cancelled"]);
    assert!(started.elapsed() < Duration::from_secs(10));
    // The executor goes on with other work.
    admin
        .batch_execute(
            "SELECT jobs.create_function('after-cancel', 'shared.record(jsonb)', '{\"event\": \"test/after-cancel\"}');
             SELECT jobs.send('test/after-cancel');",
        )
        .unwrap();
    assert_eq!(wait_for_runs(&mut admin, "after-cancel", 1), ["completed"]);
    // Bob may not cancel Alice's runs.
    alice
        .batch_execute("SELECT jobs.send('test/forever')")
        .unwrap();
    let second = uuid_text::one(
        &mut admin,
        "SELECT id::text FROM jobs.runs WHERE function_id = 'forever' AND status <> 'cancelled'",
    );
    let mut bob = as_role("bob");
    assert_eq!(
        sqlstate(bob.execute("SELECT jobs.cancel_run($1::text::uuid)", &[&second.0])),
        "42501"
    );
    alice
        .execute("SELECT jobs.cancel_run($1::text::uuid)", &[&second.0])
        .unwrap();
    assert_eq!(
        wait_for_runs(&mut admin, "forever", 2),
        ["cancelled", "cancelled"]
    );
}

mod uuid_text {
    pub struct Id(pub String);

    pub fn one(c: &mut super::Client, sql: &str) -> Id {
        Id(c.query_one(sql, &[]).unwrap().get(0))
    }
}

fn reload(admin: &mut Client, setting: &str) {
    admin
        .batch_execute(&format!(
            "ALTER SYSTEM SET {setting}; SELECT pg_reload_conf()"
        ))
        .unwrap();
}

#[test]
fn jobs_max_runtime_bounds_attempts_of_functions_without_their_own() {
    let _turn = turn();
    let mut admin = cluster().connect();
    reload(&mut admin, "jobs.max_runtime = '500ms'");
    std::thread::sleep(Duration::from_millis(500));
    admin
        .batch_execute(
            "CREATE FUNCTION stuck(ctx jsonb) RETURNS void LANGUAGE sql AS $$ SELECT pg_sleep(600) $$;
             SELECT jobs.create_function('stuck', 'stuck(jsonb)', '{\"event\": \"test/stuck\", \"retries\": 0}');
             SELECT jobs.send('test/stuck');",
        )
        .unwrap();
    assert_eq!(wait_for_runs(&mut admin, "stuck", 1), ["failed"]);
    let error: String = admin
        .query_one(
            "SELECT error->>'sqlstate' FROM jobs.runs WHERE function_id = 'stuck'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(error, "57014");
    admin
        .batch_execute("ALTER SYSTEM RESET jobs.max_runtime; SELECT pg_reload_conf()")
        .unwrap();
}

#[test]
fn too_few_worker_processes_is_said_once_and_shown() {
    let _turn = turn();
    let mut admin = cluster().connect();
    let before = cluster().log().matches("executors could start").count();
    reload(&mut admin, "jobs.workers = 40");
    std::thread::sleep(Duration::from_secs(3));
    let said = cluster().log().matches("executors could start").count() - before;
    assert_eq!(said, 1);
    let not_started = count(
        &mut admin,
        "SELECT count(*) FROM jobs.workers WHERE state LIKE 'not started%' AND pid IS NULL",
    );
    assert!(not_started > 0);
    reload(&mut admin, "jobs.workers = 2");
    cluster().wait_for_executors(2);
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM jobs.workers WHERE state LIKE 'not started%'"
        ),
        0
    );
}

#[test]
fn roles_that_own_functions_are_dropped_as_roles_that_own_objects() {
    let _turn = turn();
    let mut admin = cluster().connect();
    admin
        .batch_execute(
            "CREATE ROLE dave LOGIN; GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA jobs TO dave;
             GRANT SELECT ON ALL TABLES IN SCHEMA jobs TO dave;
             GRANT EXECUTE ON FUNCTION shared.record(jsonb) TO dave;
             CREATE DATABASE elsewhere;",
        )
        .unwrap();
    let mut dave = as_role("dave");
    dave.batch_execute(
        "SELECT jobs.create_function('dave-1', 'shared.record(jsonb)', '{\"event\": \"test/dave\"}');
         SELECT jobs.create_function('dave-2', 'shared.record(jsonb)');",
    )
    .unwrap();
    drop(dave);
    let refused = admin.batch_execute("DROP ROLE dave");
    let message = error_message(admin.batch_execute("DROP ROLE dave"));
    assert_eq!(sqlstate(refused), "2BP01");
    assert!(message.contains("dave-1"), "{message}");
    // From another database, through the registry the launcher keeps.
    let mut other = cluster().connect_as("postgres", "elsewhere");
    assert_eq!(sqlstate(other.batch_execute("DROP ROLE dave")), "2BP01");
    admin
        .batch_execute("REASSIGN OWNED BY dave TO carol")
        .unwrap();
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM jobs.functions WHERE id LIKE 'dave-%' AND owner = 'carol'::regrole"
        ),
        2
    );
    wait_until("the registry follows", Duration::from_secs(5), || {
        sqlstate(other.batch_execute("BEGIN; DROP ROLE dave; ROLLBACK")) == "ok"
    });
    admin.batch_execute("DROP ROLE dave").unwrap();
    admin
        .batch_execute("SELECT jobs.send('test/dave')")
        .unwrap();
    assert_eq!(wait_for_runs(&mut admin, "dave-1", 1), ["completed"]);
    let who: String = admin
        .query_one(
            "SELECT who FROM shared.seen WHERE function_id = 'dave-1'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(who, "carol");
    // DROP OWNED deletes them (carol's other functions, defined by other tests, go too).
    admin
        .batch_execute("CREATE ROLE erin LOGIN; GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA jobs TO erin; GRANT EXECUTE ON FUNCTION shared.record(jsonb) TO erin")
        .unwrap();
    let mut erin = as_role("erin");
    erin.batch_execute("SELECT jobs.create_function('erin-1', 'shared.record(jsonb)')")
        .unwrap();
    drop(erin);
    admin.batch_execute("DROP OWNED BY erin").unwrap();
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM jobs.functions WHERE owner::text = 'erin'"
        ),
        0
    );
    admin.batch_execute("DROP ROLE erin").unwrap();
}

#[test]
fn drop_extension_with_work_queued_succeeds_at_once_and_quietly() {
    let _turn = turn();
    let mut admin = cluster().connect();
    let log_before = cluster().log().len();
    let mut admin = cluster().connect();
    admin
        .batch_execute(
            "CREATE FUNCTION busy(ctx jsonb) RETURNS void LANGUAGE sql AS $$ SELECT pg_sleep(0.002) $$;
             SELECT jobs.create_function('busy', 'busy(jsonb)', '{\"event\": \"test/busy\"}');
             SELECT jobs.send(jsonb_agg(jsonb_build_object('name', 'test/busy'))) FROM generate_series(1, 2000);",
        )
        .unwrap();
    wait_until("the executors are busy", Duration::from_secs(10), || {
        count(
            &mut admin,
            "SELECT count(*) FROM jobs.runs WHERE function_id = 'busy' AND status = 'completed'",
        ) > 10
    });
    admin.batch_execute("DROP EXTENSION pg_jobs").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let log = cluster().log()[log_before..].to_string();
    for noise in ["does not exist", "deadlock", "ERROR", "FATAL"] {
        assert!(
            !log.contains(noise),
            "{noise} in the log after DROP EXTENSION:\n{log}"
        );
    }
    admin.batch_execute("CREATE EXTENSION pg_jobs").unwrap();
    cluster().wait_for_executors(2);
    admin.batch_execute(ROLES_AGAIN).unwrap();
    admin
        .batch_execute(
            "SELECT jobs.create_function('after-drop', 'shared.record(jsonb)', '{\"event\": \"test/after-drop\"}');
             SELECT jobs.send('test/after-drop');",
        )
        .unwrap();
    assert_eq!(wait_for_runs(&mut admin, "after-drop", 1), ["completed"]);
}

/// The grants the new extension's functions need again.
const ROLES_AGAIN: &str = "
    GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA jobs TO alice, bob, carol;
    GRANT SELECT ON ALL TABLES IN SCHEMA jobs TO alice, bob, carol;";
