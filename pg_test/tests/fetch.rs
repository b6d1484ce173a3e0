//! jobs.fetch end to end: the requests a local HTTP server receives, what the
//! history keeps of them, retries, failures, secrets between two roles, and a
//! request made again after the fetcher is killed.

use std::sync::OnceLock;
use std::time::Duration;

use pg_jobs_e2e::http_server::{HttpServer, Reply, Request};
use pg_jobs_e2e::*;

const FETCH_SIGNATURE: &str = "jobs.fetch(text, text, text, jsonb, jsonb, interval, integer[])";

/// Answers `/echo...` with what it received, and anything else with `{"ok": true}`.
fn server() -> &'static HttpServer {
    static SERVER: OnceLock<HttpServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        HttpServer::start(|request: &Request| {
            if request.path.starts_with("/emails") {
                let id = format!("msg_{}", request.header("idempotency-key").unwrap_or(""));
                return Reply::json(200, &format!(r#"{{"id": {id:?}}}"#));
            }
            if request.path.starts_with("/echo") {
                let auth = request.header("authorization").unwrap_or("");
                return Reply::json(200, &format!(r#"{{"auth": {auth:?}}}"#))
                    .header("X-Auth", auth);
            }
            Reply::json(200, r#"{"ok": true}"#)
        })
    })
}

fn start(name: &str) -> Cluster {
    let cluster = Cluster::with_pg_jobs(name, 2, &["jobs.fetch_allowed_hosts = '127.0.0.1:*'"]);
    cluster
        .connect()
        .batch_execute(
            "CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; CREATE ROLE carol LOGIN;
             GRANT EXECUTE ON FUNCTION jobs.send(text, jsonb, text, timestamptz),
                 jobs.create_function(text, regprocedure, jsonb),
                 jobs.set_secret(text, text), jobs.delete_secret(text) TO alice, bob, carol;
             GRANT EXECUTE ON FUNCTION jobs.fetch(text, text, text, jsonb, jsonb, interval, integer[]),
                 jobs.plan_fetch(text, text, text, jsonb, jsonb, interval, integer[]) TO alice, bob;
             GRANT SELECT ON ALL TABLES IN SCHEMA jobs TO alice, bob, carol;
             GRANT CREATE ON SCHEMA public TO alice, bob, carol;",
        )
        .unwrap();
    cluster
}

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| start("fetch"))
}

/// Defines, as `role`, function `id` whose handler runs `body` (PL/pgSQL
/// returning jsonb; `URL` stands for the test server's address), triggered by
/// event `test/<id>`.
fn define(role: &str, id: &str, config: &str, body: &str) -> Client {
    let mut c = cluster().connect_as(role, "postgres");
    let handler = id.replace('-', "_");
    let body = body.replace("URL", &server().url(""));
    c.batch_execute(&format!(
        "CREATE FUNCTION {handler}(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $fn$ {body} $fn$;
         SELECT jobs.create_function('{id}', '{handler}(jsonb)', '{{\"event\": \"test/{id}\"}}'::jsonb || '{config}');"
    ))
    .unwrap();
    c
}

fn send(c: &mut Client, id: &str, data: &str) {
    c.execute(&format!("SELECT jobs.send('test/{id}', '{data}')"), &[])
        .unwrap();
}

fn one_text(c: &mut Client, sql: &str) -> String {
    c.query_one(sql, &[]).unwrap().get(0)
}

fn run_id(c: &mut Client, function_id: &str) -> String {
    c.query_one(
        "SELECT id::text FROM jobs.runs WHERE function_id = $1",
        &[&function_id],
    )
    .unwrap()
    .get(0)
}

#[test]
fn one_email_per_run_with_the_secret_sent_and_only_its_placeholder_kept() {
    let mut c = define(
        "alice",
        "send-email",
        "{}",
        r#"DECLARE sent jsonb; echo jsonb;
           BEGIN
             sent := jobs.fetch('send', 'URL/emails', 'POST',
                 '{"Authorization": "Bearer {{secret.RESEND_KEY}}"}',
                 jsonb_build_object('to', ctx->'event'->'data'->>'to', 'subject', 'Your invoice'));
             echo := jobs.fetch('echo', 'URL/echo', headers => '{"Authorization": "Bearer {{secret.RESEND_KEY}}"}');
             RETURN jsonb_build_object('messageId', sent->'body'->'id', 'echo', echo);
           END"#,
    );
    c.batch_execute("SELECT jobs.set_secret('RESEND_KEY', 're_alice_live_42')")
        .unwrap();
    send(&mut c, "send-email", r#"{"to": "ada@example.com"}"#);
    assert_eq!(wait_for_runs(&mut c, "send-email", 1), ["completed"]);
    let run = run_id(&mut c, "send-email");

    let emails = server().requests_to("/emails");
    let email = emails
        .iter()
        .find(|r| r.header("idempotency-key") == Some(&format!("{run}:send")))
        .expect("the email was sent with the run's Idempotency-Key");
    assert_eq!(
        emails
            .iter()
            .filter(|r| r.header("idempotency-key") == email.header("idempotency-key"))
            .count(),
        1,
        "one email for one run"
    );
    assert_eq!(email.method, "POST");
    assert_eq!(
        email.header("authorization"),
        Some("Bearer re_alice_live_42")
    );
    assert_eq!(email.header("content-type"), Some("application/json"));
    assert!(
        email.body.contains(r#""to":"ada@example.com""#)
            && email.body.contains(r#""subject":"Your invoice""#),
        "{}",
        email.body
    );

    assert_eq!(
        one_text(
            &mut c,
            "SELECT output->>'messageId' FROM jobs.runs WHERE function_id = 'send-email'"
        ),
        format!("msg_{run}:send")
    );
    // The server echoed the value back; the history shows the placeholder.
    assert_eq!(
        one_text(
            &mut c,
            &format!("SELECT output->'body'->>'auth' || ' ' || (output->'headers'->>'x-auth') || ' ' || (output->>'status')
                      FROM jobs.steps WHERE run_id = '{run}' AND id = 'echo'")
        ),
        "Bearer {{secret.RESEND_KEY}} Bearer {{secret.RESEND_KEY}} 200"
    );
    let mut admin = cluster().connect();
    for table in [
        "jobs.steps",
        "jobs.runs",
        "jobs.attempt_errors",
        "jobs.fetches",
        "jobs.events",
    ] {
        assert_eq!(
            count(
                &mut admin,
                &format!("SELECT count(*) FROM {table} t WHERE t::text LIKE '%re_alice_live_42%'")
            ),
            0,
            "{table} shows the secret"
        );
    }
    assert_eq!(
        one_text(
            &mut c,
            &format!("SELECT string_agg(kind || ':' || status || ':' || attempts, ',' ORDER BY id) FROM jobs.steps WHERE run_id = '{run}'")
        ),
        "fetch:completed:1,fetch:completed:1"
    );
}

#[test]
fn a_503_is_retried_with_the_same_idempotency_key() {
    server().reply_next("/flaky", 1, Reply::text(503, "busy"));
    let mut c = define(
        "alice",
        "flaky",
        r#"{"retries": {"attempts": 3, "backoff": {"type": "fixed", "base": "100ms"}}}"#,
        "BEGIN RETURN jobs.fetch('call', 'URL/flaky'); END",
    );
    send(&mut c, "flaky", "{}");
    assert_eq!(wait_for_runs(&mut c, "flaky", 1), ["completed"]);
    let requests = server().requests_to("/flaky");
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].header("idempotency-key"),
        requests[1].header("idempotency-key")
    );
    let run = run_id(&mut c, "flaky");
    assert_eq!(
        one_text(
            &mut c,
            &format!("SELECT status || ':' || attempts || ':' || (output->'body'->>'ok') FROM jobs.steps WHERE run_id = '{run}'")
        ),
        "completed:2:true"
    );
    let failed_attempt = c
        .query_one(
            &format!("SELECT sqlstate, message, detail FROM jobs.attempt_errors WHERE run_id = '{run}' AND step_id = 'call'"),
            &[],
        )
        .unwrap();
    assert_eq!(failed_attempt.get::<_, String>(0), "JB012");
    let message: String = failed_attempt.get(1);
    assert!(
        message.contains("503") && message.contains("busy"),
        "{message}"
    );
    assert_eq!(
        failed_attempt.get::<_, Option<String>>(2).as_deref(),
        Some("HTTP status 503")
    );
}

#[test]
fn retry_after_is_honoured_over_the_backoff() {
    server().reply_next(
        "/limited",
        1,
        Reply::text(429, "slow down").header("Retry-After", "2"),
    );
    let mut c = define(
        "alice",
        "limited",
        r#"{"retries": {"attempts": 3, "backoff": {"type": "fixed", "base": "50ms"}}}"#,
        "BEGIN RETURN jobs.fetch('call', 'URL/limited'); END",
    );
    send(&mut c, "limited", "{}");
    assert_eq!(wait_for_runs(&mut c, "limited", 1), ["completed"]);
    let requests = server().requests_to("/limited");
    assert_eq!(requests.len(), 2);
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited >= Duration::from_millis(1900),
        "the retry came after {waited:?}, not after Retry-After's 2 s"
    );
}

#[test]
fn a_404_fails_the_step_at_once() {
    server().reply_next("/missing", 1, Reply::text(404, "no such invoice"));
    let mut c = define(
        "alice",
        "missing",
        r#"{"retries": 3}"#,
        "BEGIN RETURN jobs.fetch('call', 'URL/missing'); END",
    );
    send(&mut c, "missing", "{}");
    assert_eq!(wait_for_runs(&mut c, "missing", 1), ["failed"]);
    assert_eq!(server().requests_to("/missing").len(), 1);
    let run = run_id(&mut c, "missing");
    let step = c
        .query_one(
            &format!("SELECT status, attempts, error->>'sqlstate', error->>'message' FROM jobs.steps WHERE run_id = '{run}'"),
            &[],
        )
        .unwrap();
    assert_eq!(
        (
            step.get::<_, String>(0),
            step.get::<_, i32>(1),
            step.get::<_, String>(2)
        ),
        ("failed".to_string(), 1, "JB013".to_string())
    );
    let message: String = step.get(3);
    assert!(
        message.contains("404") && message.contains("no such invoice"),
        "{message}"
    );
    assert_eq!(
        one_text(
            &mut c,
            &format!("SELECT error->>'sqlstate' FROM jobs.runs WHERE id = '{run}'")
        ),
        "JB001"
    );
}

#[test]
fn accepted_statuses_are_values() {
    server().reply_next("/conflict", 1, Reply::json(409, r#"{"exists": true}"#));
    let mut c = define(
        "alice",
        "conflict",
        "{}",
        "BEGIN RETURN jobs.fetch('call', 'URL/conflict', accept => '{409}'); END",
    );
    send(&mut c, "conflict", "{}");
    assert_eq!(wait_for_runs(&mut c, "conflict", 1), ["completed"]);
    assert_eq!(
        one_text(&mut c, "SELECT (output->>'status') || ' ' || (output->'body'->>'exists') FROM jobs.runs WHERE function_id = 'conflict'"),
        "409 true"
    );
}

#[test]
fn a_host_not_allowed_fails_naming_the_setting() {
    let port = server().port();
    let mut c = define(
        "alice",
        "elsewhere",
        r#"{"retries": 3}"#,
        &format!("BEGIN RETURN jobs.fetch('call', 'http://localhost:{port}/not-allowed'); END"),
    );
    send(&mut c, "elsewhere", "{}");
    assert_eq!(wait_for_runs(&mut c, "elsewhere", 1), ["failed"]);
    assert!(server().requests_to("/not-allowed").is_empty());
    let step = c
        .query_one(
            "SELECT s.attempts, s.error->>'sqlstate', s.error->>'message' FROM jobs.steps s
             JOIN jobs.runs r ON r.id = s.run_id WHERE r.function_id = 'elsewhere'",
            &[],
        )
        .unwrap();
    assert_eq!(step.get::<_, i32>(0), 1);
    assert_eq!(step.get::<_, String>(1), "JB015");
    let message: String = step.get(2);
    assert!(
        message.contains("jobs.fetch_allowed_hosts")
            && message.contains(&format!("localhost:{port}")),
        "{message}"
    );
}

#[test]
fn parallel_runs_fetches_and_steps_together() {
    let mut c = define(
        "alice",
        "uploads",
        "{}",
        "BEGIN RETURN jobs.parallel(
             jobs.plan_fetch('thumbnail', 'URL/upload/thumbnail', 'PUT', body => '{\"w\": 150}'),
             jobs.plan_fetch('medium', 'URL/upload/medium', 'PUT', body => '{\"w\": 800}'),
             jobs.plan('note', 'SELECT 42')); END",
    );
    send(&mut c, "uploads", "{}");
    assert_eq!(wait_for_runs(&mut c, "uploads", 1), ["completed"]);
    assert_eq!(
        one_text(&mut c, "SELECT (output->0->>'status') || (output->1->'body'->>'ok') || (output->>2) FROM jobs.runs WHERE function_id = 'uploads'"),
        "200true42"
    );
    let puts: Vec<String> = server()
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/upload/") && r.method == "PUT")
        .map(|r| r.body)
        .collect();
    assert_eq!(puts.len(), 2);
    assert!(puts.contains(&r#"{"w":150}"#.to_string()), "{puts:?}");
}

#[test]
fn another_role_can_neither_read_nor_use_a_secret() {
    let mut alice = cluster().connect_as("alice", "postgres");
    alice
        .batch_execute("SELECT jobs.set_secret('SHARED_NAME', 'alice-only-value')")
        .unwrap();
    let mut bob = define(
        "bob",
        "bob-steals",
        r#"{"retries": 2}"#,
        r#"BEGIN RETURN jobs.fetch('call', 'URL/echo/bob', headers => '{"Authorization": "{{secret.SHARED_NAME}}"}'); END"#,
    );
    for sql in [
        "SELECT count(*) FROM jobs.secrets",
        "SELECT count(*) FROM jobs.secrets WHERE value = 'alice-only-value'",
    ] {
        assert_eq!(count(&mut bob, sql), 0, "{sql}");
    }
    assert_eq!(
        count(
            &mut alice,
            "SELECT count(*) FROM jobs.secrets WHERE name = 'SHARED_NAME'"
        ),
        1
    );
    // Bob's deleting the name deletes nothing of Alice's.
    assert!(!bob
        .query_one("SELECT jobs.delete_secret('SHARED_NAME')", &[])
        .unwrap()
        .get::<_, bool>(0));
    send(&mut bob, "bob-steals", "{}");
    assert_eq!(wait_for_runs(&mut bob, "bob-steals", 1), ["failed"]);
    assert!(server().requests_to("/echo/bob").is_empty());
    let error = one_text(
        &mut bob,
        "SELECT s.error->>'sqlstate' || ' ' || (s.error->>'message') FROM jobs.steps s
         JOIN jobs.runs r ON r.id = s.run_id WHERE r.function_id = 'bob-steals'",
    );
    assert!(
        error.starts_with("JB017 ") && error.contains("SHARED_NAME"),
        "{error}"
    );
    assert!(!error.contains("alice-only-value"));
    // Once Bob sets his own, his requests use it.
    bob.batch_execute("SELECT jobs.set_secret('SHARED_NAME', 'bob-value')")
        .unwrap();
    send(&mut bob, "bob-steals", "{}");
    assert_eq!(
        wait_for_runs(&mut bob, "bob-steals", 2),
        ["failed", "completed"]
    );
    let sent: Vec<String> = server()
        .requests_to("/echo/bob")
        .iter()
        .filter_map(|r| r.header("authorization").map(str::to_string))
        .collect();
    assert_eq!(sent, ["bob-value"]);
    assert_eq!(
        count(
            &mut alice,
            "SELECT count(*) FROM jobs.secrets WHERE value = 'alice-only-value'"
        ),
        1
    );
}

#[test]
fn fetching_is_a_privilege_checked_when_the_request_is_made() {
    let mut admin = cluster().connect();
    for function in [
        FETCH_SIGNATURE,
        "jobs.plan_fetch(text, text, text, jsonb, jsonb, interval, integer[])",
    ] {
        assert!(
            !admin
                .query_one(
                    &format!("SELECT has_function_privilege('public', '{function}', 'EXECUTE')"),
                    &[]
                )
                .unwrap()
                .get::<_, bool>(0),
            "{function} is granted to PUBLIC"
        );
    }
    // Carol was not granted jobs.fetch; going around it (the internal
    // function returns the step's outcome instead of raising it) plans a
    // request that the fetcher refuses.
    let mut carol = define(
        "carol",
        "carol-fetch",
        r#"{"retries": 2}"#,
        "BEGIN RETURN jobs._fetch('call', jobs._fetch_spec('URL/carol', 'GET', '{}', NULL, '1s', NULL)); END",
    );
    send(&mut carol, "carol-fetch", "{}");
    assert_eq!(wait_for_runs(&mut carol, "carol-fetch", 1), ["completed"]);
    assert!(server().requests_to("/carol").is_empty());
    let error = one_text(
        &mut carol,
        "SELECT s.status || ' ' || s.attempts || ' ' || (s.error->>'sqlstate') || ' ' || (s.error->>'hint') FROM jobs.steps s
         JOIN jobs.runs r ON r.id = s.run_id WHERE r.function_id = 'carol-fetch'",
    );
    assert_eq!(
        error,
        format!("failed 1 42501 A superuser grants it: GRANT EXECUTE ON FUNCTION {FETCH_SIGNATURE} TO carol;")
    );
    assert_eq!(
        sqlstate(carol.execute("SELECT jobs.fetch('x', 'http://127.0.0.1/')", &[])),
        "42501"
    );
}

#[test]
fn bad_requests_are_errors_naming_the_field() {
    let mut c = cluster().connect_as("alice", "postgres");
    for (sql, code, text) in [
        (
            "SELECT jobs.fetch('x', 'ftp://h/')",
            "22023",
            "must use http or https",
        ),
        (
            "SELECT jobs.fetch('x', 'http://h/', 'GE T')",
            "22023",
            "fetch method \"GE T\"",
        ),
        (
            "SELECT jobs.fetch('x', 'http://h/', timeout => '2 hours')",
            "22023",
            "fetch timeout 7200 s is out of range",
        ),
        (
            "SELECT jobs.fetch('x', 'http://h/', accept => '{99}')",
            "22023",
            "fetch accept[1] is 99",
        ),
        (
            "SELECT jobs.fetch('x', 'http://h/', headers => '{\"Host\": \"a\"}')",
            "22023",
            "is set by pg_jobs",
        ),
        (
            "SELECT jobs.fetch('x', 'http://h/')",
            "55000",
            "can only be called by a handler",
        ),
        (
            "SELECT jobs.set_secret('a b', 'v')",
            "22023",
            "secret name \"a b\"",
        ),
        ("SELECT jobs.set_secret('K', '')", "22023", "must be 1 to"),
    ] {
        let result = c.execute(sql, &[]);
        let message = error_message(c.execute(sql, &[]));
        assert_eq!(sqlstate(result), code, "{sql}: {message}");
        assert!(message.contains(text), "{sql}: {message}");
    }
}

#[test]
fn a_request_in_flight_when_the_fetcher_is_killed_is_made_again_with_the_same_key() {
    let cluster = start("fetch_crash");
    server().hold_next("/slow", Duration::from_secs(120));
    let mut c = cluster.connect_as("alice", "postgres");
    c.batch_execute(&format!(
        "CREATE FUNCTION slow(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
         BEGIN RETURN jobs.fetch('call', '{}'); END $$;
         SELECT jobs.create_function('slow', 'slow(jsonb)', '{{\"event\": \"test/slow\"}}');
         SELECT jobs.send('test/slow');",
        server().url("/slow")
    ))
    .unwrap();
    wait_until("the request arrives", Duration::from_secs(30), || {
        !server().requests_to("/slow").is_empty()
    });
    let mut admin = cluster.connect();
    let fetcher: i32 = admin
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_jobs fetcher'",
            &[],
        )
        .unwrap()
        .get(0);
    kill_9(fetcher);
    let mut c = cluster.connect_as("alice", "postgres");
    wait_until(
        "the run completes after the restart",
        Duration::from_secs(60),
        || match c.query(
            "SELECT status FROM jobs.runs WHERE function_id = 'slow'",
            &[],
        ) {
            Ok(rows) => rows.first().map(|r| r.get::<_, String>(0)).as_deref() == Some("completed"),
            Err(_) => {
                c = cluster.connect_as("alice", "postgres");
                false
            }
        },
    );
    let requests = server().requests_to("/slow");
    assert_eq!(requests.len(), 2);
    let run = run_id(&mut c, "slow");
    for request in &requests {
        assert_eq!(
            request.header("idempotency-key"),
            Some(format!("{run}:call").as_str())
        );
    }
}
