//! The dashboard's handlers over HTTP, against a real cluster: what each role
//! sees, the actions, CSRF, escaping, pagination.

mod common;

use std::sync::OnceLock;

use common::*;
use pg_jobs_e2e::*;

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = Cluster::with_pg_jobs("server_dashboard", 2, &[]);
        create_owner_roles(&cluster);
        cluster
            .connect()
            .batch_execute(
                "CREATE FUNCTION echo(ctx jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT ctx->'event'->'data' $$;
                 CREATE FUNCTION napper(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
                 BEGIN PERFORM jobs.sleep('nap', '1 day'); END $$;",
            )
            .unwrap();
        cluster
    })
}

fn run_status(client: &mut Client, id: &str) -> String {
    client
        .query_one(
            "SELECT status FROM jobs.runs WHERE id = $1::text::uuid",
            &[&id],
        )
        .unwrap()
        .get(0)
}

#[test]
fn each_role_sees_its_own_functions_and_runs() {
    let cluster = cluster();
    let mut c = cluster.connect();
    let event: String = c
        .query_one(
            "SELECT jobs.send('shared/ping', '{\"who\": \"both\"}')::text",
            &[],
        )
        .unwrap()
        .get(0);
    wait_for_runs(&mut c, "alice-fn", 1);
    wait_for_runs(&mut c, "bob-fn", 1);
    let alice_run: String = c
        .query_one(
            "SELECT id::text FROM jobs.runs WHERE function_id = 'alice-fn'",
            &[],
        )
        .unwrap()
        .get(0);
    let bob_run: String = c
        .query_one(
            "SELECT id::text FROM jobs.runs WHERE function_id = 'bob-fn'",
            &[],
        )
        .unwrap()
        .get(0);

    let alice = Server::start(cluster, "alice");
    let bob = Server::start(cluster, "bob");
    let functions = alice.get("/functions");
    assert_eq!(functions.status, 200);
    assert!(functions.body.contains("alice-fn") && !functions.body.contains("bob-fn"));
    assert!(functions.body.contains("alice @ postgres"));
    let runs = alice.get("/runs");
    assert!(runs.body.contains(&alice_run) && !runs.body.contains(&bob_run));
    let runs = bob.get("/runs");
    assert!(runs.body.contains(&bob_run) && !runs.body.contains(&alice_run));
    assert_eq!(alice.get(&format!("/runs/{bob_run}")).status, 404);
    let page = alice.get(&format!("/runs/{alice_run}"));
    assert_eq!(page.status, 200);
    assert!(page.body.contains("data-step=\"greet\""), "{}", page.body);
    assert!(page.body.contains("&quot;hello&quot;: &quot;both&quot;"));

    // Events are not filtered; what each function made of one is the role's own.
    let explained = bob.get(&format!("/events/{event}"));
    assert_eq!(explained.status, 200);
    assert!(explained.body.contains("data-function=\"bob-fn\""));
    assert!(!explained.body.contains("data-function=\"alice-fn\""));
    assert!(explained.body.contains("started"));

    // bob may not pause alice's function: PostgreSQL says so, nothing changes.
    let refused = bob.post(
        "/functions/alice-fn/pause",
        &[("csrf", &bob.csrf()), ("back", "/functions")],
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("42501"));
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.functions WHERE id = 'alice-fn' AND paused"
        ),
        0
    );
}

#[test]
fn send_event_form_calls_jobs_send_and_reports_its_errors() {
    let cluster = cluster();
    let mut c = cluster.connect();
    c.batch_execute(
        "SELECT jobs.create_function('form-echo', 'echo(jsonb)', '{\"event\": \"form/echo\"}');
         SELECT jobs.define_event('form/strict', '{\"type\": \"object\", \"required\": [\"userId\"],
             \"properties\": {\"userId\": {\"type\": \"string\"}}}');",
    )
    .unwrap();
    let server = Server::start(cluster, "postgres");
    let token = server.csrf();

    let sent = server.post(
        "/send",
        &[
            ("csrf", &token),
            ("name", "form/echo"),
            ("data", "{\"n\": 7}"),
        ],
    );
    assert_eq!(sent.status, 303, "{}", sent.body);
    let location = sent.location.unwrap();
    let event_id = location.strip_prefix("/events/").unwrap().to_string();
    assert_eq!(wait_for_runs(&mut c, "form-echo", 1), ["completed"]);
    let page = server.get(&location);
    assert!(page.body.contains("form-echo") && page.body.contains("started"));
    let output: serde_json::Value = c
        .query_one(
            "SELECT output FROM jobs.runs r WHERE r.event_id = $1::text::uuid",
            &[&event_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(output, serde_json::json!({"n": 7}));

    // Only the names posted here: the other tests send events on the same cluster meanwhile.
    let posted = "SELECT count(*) FROM jobs.events WHERE name IN ('form/echo', 'form/strict', 'jobs/function.finished')";
    let events_before = count(&mut c, posted);
    let not_json = server.post(
        "/send",
        &[("csrf", &token), ("name", "form/echo"), ("data", "{n: 7")],
    );
    assert_eq!(not_json.status, 400);
    assert!(not_json.body.contains("22P02"), "{}", not_json.body);
    assert!(
        not_json.body.contains("{n: 7"),
        "the form keeps what was typed"
    );
    let breaks_schema = server.post(
        "/send",
        &[
            ("csrf", &token),
            ("name", "form/strict"),
            ("data", "{\"userId\": 42}"),
        ],
    );
    assert_eq!(breaks_schema.status, 400);
    assert!(breaks_schema.body.contains("22023"));
    assert!(breaks_schema.body.contains("does not match its schema"));
    assert!(breaks_schema.body.contains("data-schema=\"form/strict\""));
    let reserved = server.post(
        "/send",
        &[
            ("csrf", &token),
            ("name", "jobs/function.finished"),
            ("data", "{}"),
        ],
    );
    assert_eq!(reserved.status, 400);
    assert_eq!(count(&mut c, posted), events_before);
}

#[test]
fn posts_need_the_token_and_this_origin() {
    let cluster = cluster();
    let mut c = cluster.connect();
    c.batch_execute(
        "SELECT jobs.create_function('csrf-target', 'echo(jsonb)', '{\"event\": \"csrf/x\"}')",
    )
    .unwrap();
    let server = Server::start(cluster, "postgres");
    let paused = |c: &mut Client| {
        count(
            c,
            "SELECT count(*) FROM jobs.functions WHERE id = 'csrf-target' AND paused",
        )
    };

    assert_eq!(server.post("/functions/csrf-target/pause", &[]).status, 403);
    assert_eq!(
        server
            .post(
                "/functions/csrf-target/pause",
                &[("csrf", "0".repeat(64).as_str())]
            )
            .status,
        403
    );
    assert_eq!(
        server
            .post("/send", &[("name", "csrf/x"), ("data", "{}")])
            .status,
        403
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.events WHERE name = 'csrf/x'"
        ),
        0
    );
    let token = server.csrf();
    let url = format!("{}/functions/csrf-target/pause", server.url);
    assert_eq!(
        post_with_origin(&url, "http://evil.example", &[("csrf", &token)]),
        403
    );
    assert_eq!(paused(&mut c), 0);

    // A name that resolves to 127.0.0.1 but is not ours (DNS rebinding).
    assert_eq!(
        get_with_host(&format!("{}/functions", server.url), "evil.example:8288"),
        421
    );

    let done = server.post(
        "/functions/csrf-target/pause",
        &[("csrf", &token), ("back", "/functions")],
    );
    assert_eq!(
        (done.status, done.location.as_deref()),
        (303, Some("/functions"))
    );
    assert_eq!(paused(&mut c), 1);
    let page = server.get("/functions/csrf-target");
    assert!(page.body.contains(">Resume<"));
    let back = server.post(
        "/functions/csrf-target/resume",
        &[("csrf", &token), ("back", "https://evil.example/")],
    );
    assert_eq!(back.location.as_deref(), Some("/functions/csrf-target"));
    assert_eq!(paused(&mut c), 0);
}

#[test]
fn invoke_and_cancel() {
    let cluster = cluster();
    let mut c = cluster.connect();
    c.batch_execute(
        "SELECT jobs.create_function('invoke-me', 'echo(jsonb)', '{}');
         SELECT jobs.create_function('nap-fn', 'napper(jsonb)', '{\"event\": \"nap/start\"}');",
    )
    .unwrap();
    let server = Server::start(cluster, "postgres");
    let token = server.csrf();

    let invoked = server.post(
        "/functions/invoke-me/invoke",
        &[("csrf", &token), ("data", "{\"x\": [1, 2]}")],
    );
    assert_eq!(invoked.status, 303, "{}", invoked.body);
    let run = invoked.location.unwrap();
    assert_eq!(wait_for_runs(&mut c, "invoke-me", 1), ["completed"]);
    let page = server.get(&run);
    assert!(page.body.contains("jobs/function.invoked"));
    let bad = server.post(
        "/functions/invoke-me/invoke",
        &[("csrf", &token), ("data", "[1]")],
    );
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("22023") && bad.body.contains("must be a JSON object"));

    c.batch_execute("SELECT jobs.send('nap/start')").unwrap();
    let run_id: String = c
        .query_one(
            "SELECT id::text FROM jobs.runs WHERE function_id = 'nap-fn'",
            &[],
        )
        .unwrap()
        .get(0);
    eventually("the run sleeps", || {
        run_status(&mut c, &run_id) == "sleeping"
    });
    let page = server.get(&format!("/runs/{run_id}"));
    assert!(page.body.contains("data-live") && page.body.contains(">Cancel<"));
    assert!(page.body.contains("data-kind=\"sleep\""));
    let cancelled = server.post(&format!("/runs/{run_id}/cancel"), &[("csrf", &token)]);
    assert_eq!(cancelled.status, 303);
    eventually("the run is cancelled", || {
        run_status(&mut c, &run_id) == "cancelled"
    });
    let page = server.get(&format!("/runs/{run_id}"));
    assert!(!page.body.contains("data-live") && !page.body.contains(">Cancel<"));
    let again = server.post(&format!("/runs/{run_id}/cancel"), &[("csrf", &token)]);
    assert_eq!(again.status, 400);
    assert!(again.body.contains("55000"));
}

#[test]
fn runs_list_pages_and_filters() {
    let cluster = cluster();
    let mut c = cluster.connect();
    c.batch_execute(
        "SELECT jobs.create_function('many', 'echo(jsonb)', '{\"event\": \"many/x\"}');
         SELECT jobs.send('many/x', jsonb_build_object('i', i)) FROM generate_series(1, 120) i;",
    )
    .unwrap();
    wait_for_runs(&mut c, "many", 120);
    let server = Server::start(cluster, "postgres");
    let ids = |body: &str| -> Vec<String> {
        body.split("data-run=\"")
            .skip(1)
            .map(|s| s[..36].to_string())
            .collect()
    };

    let mut seen = Vec::new();
    let mut next = Some("/runs?function=many".to_string());
    while let Some(path) = next {
        let page = server.get(&path);
        assert_eq!(page.status, 200);
        let page_ids = ids(&page.body);
        assert!(page_ids.len() <= 50);
        seen.extend(page_ids);
        next = page
            .body
            .split("href=\"")
            .filter_map(|s| s.split('"').next())
            .find(|href| href.contains("before="))
            .map(|href| href.replace("&amp;", "&"));
    }
    let expected: Vec<String> = c
        .query(
            "SELECT id::text FROM jobs.runs WHERE function_id = 'many' ORDER BY id DESC",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        seen, expected,
        "three pages, newest first, no gaps or repeats"
    );

    let completed = server.get("/runs?function=many&status=completed");
    assert_eq!(ids(&completed.body).len(), 50);
    assert!(server
        .get("/runs?function=many&status=failed")
        .body
        .contains("No runs match."));
    let future = server.get("/runs?function=many&from=2999-01-01T00:00");
    assert!(future.body.contains("No runs match."));
    let past = server.get("/runs?function=many&to=2000-01-01");
    assert!(past.body.contains("No runs match."));
    let all = server.get("/runs?function=many&from=2000-01-01&to=2999-01-01T00:00:00");
    assert_eq!(ids(&all.body).len(), 50);
    let bad = server.get("/runs?from=yesterday");
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("from = &quot;yesterday&quot;"));
    assert_eq!(server.get("/runs?status=done").status, 400);

    // An unfinished status is found through the queue, not the history.
    c.batch_execute(
        "SELECT jobs.create_function('dozing', 'napper(jsonb)', '{\"event\": \"many/doze\"}');
         SELECT jobs.send('many/doze') FROM generate_series(1, 3);",
    )
    .unwrap();
    eventually("three runs sleep", || {
        c.query_one(
            "SELECT count(*) FROM jobs.runs WHERE function_id = 'dozing' AND status = 'sleeping'",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
            == 3
    });
    let sleeping: Vec<String> = c
        .query(
            "SELECT id::text FROM jobs.runs WHERE function_id = 'dozing' ORDER BY id DESC",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(sleeping.len(), 3);
    assert_eq!(
        ids(&server.get("/runs?function=dozing&status=sleeping").body),
        sleeping
    );
    assert!(server
        .get("/runs?function=dozing&status=queued")
        .body
        .contains("No runs match."));
    c.batch_execute("SELECT jobs.delete_function('dozing')")
        .unwrap();
}

#[test]
fn values_from_the_database_are_escaped() {
    let cluster = cluster();
    let mut c = cluster.connect();
    let name = "xss/<script>alert(1)</script>\"><img src=x onerror=alert(2)>";
    c.execute(
        "SELECT jobs.send($1, jsonb_build_object('html', $2::text))",
        &[&name, &"</code><script>alert(3)</script>"],
    )
    .unwrap();
    let server = Server::start(cluster, "postgres");
    let page = server.get("/events");
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("<script>alert"), "{}", page.body);
    assert!(!page.body.contains("<img"));
    assert!(page
        .body
        .contains("xss/&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert!(page
        .header("server-timing")
        .unwrap()
        .starts_with("app;dur="));
}

#[test]
fn workers_and_unknown_ids() {
    let server = Server::start(cluster(), "postgres");
    let workers = server.get("/workers");
    assert_eq!(workers.status, 200);
    assert_eq!(workers.body.matches("data-kind=\"executor\"").count(), 2);
    assert_eq!(workers.body.matches("data-kind=\"launcher\"").count(), 1);
    assert_eq!(server.get("/runs/not-a-uuid").status, 400);
    assert_eq!(
        server
            .get("/runs/0190a8a0-0000-7000-8000-000000000000")
            .status,
        404
    );
    assert_eq!(server.get("/functions/no%2Fsuch").status, 404);
    assert_eq!(server.get("/").location.as_deref(), Some("/functions"));
}

#[test]
fn rerun_and_rerun_from_a_step() {
    let cluster = cluster();
    let mut c = cluster.connect();
    c.batch_execute(
        "CREATE FUNCTION two_steps(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM jobs.step('first', 'SELECT 1');
             RETURN jobs.step('second', 'SELECT $1', ctx->'event'->'data');
         END $$;
         SELECT jobs.create_function('rerun-me', 'two_steps(jsonb)', '{\"event\": \"rerun/x\"}');
         SELECT jobs.send('rerun/x', '{\"v\": 1}');",
    )
    .unwrap();
    wait_for_runs(&mut c, "rerun-me", 1);
    let run_id: String = c
        .query_one(
            "SELECT id::text FROM jobs.runs WHERE function_id = 'rerun-me'",
            &[],
        )
        .unwrap()
        .get(0);
    let server = Server::start(cluster, "postgres");
    let page = server.get(&format!("/runs/{run_id}"));
    assert!(page.body.contains(">Rerun<"), "{}", page.body);
    assert_eq!(page.body.matches(">Rerun from this step<").count(), 2);
    let token = server.csrf();
    let rerun = server.post(&format!("/runs/{run_id}/rerun"), &[("csrf", &token)]);
    assert_eq!(rerun.status, 303, "{}", rerun.body);
    let from_step = server.post(
        &format!("/runs/{run_id}/rerun"),
        &[("csrf", &token), ("from_step", "second")],
    );
    assert_eq!(from_step.status, 303, "{}", from_step.body);
    let new_run = from_step
        .location
        .as_deref()
        .and_then(|l| l.strip_prefix("/runs/"))
        .expect("redirected to the new run")
        .to_string();
    assert_ne!(new_run, run_id);
    wait_for_runs(&mut c, "rerun-me", 3);
    let row = c
        .query_one(
            "SELECT rerun_of::text, rerun_step, (SELECT count(*) FROM jobs.steps WHERE run_id = r.id AND id = 'first')
             FROM jobs.runs r WHERE id = $1::text::uuid",
            &[&new_run],
        )
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0), Some(run_id));
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("second"));
    assert_eq!(
        row.get::<_, i64>(2),
        1,
        "the first step was copied, not run again"
    );
    // Without the token, nothing is rerun.
    assert_eq!(
        server
            .post(
                &format!("/runs/{new_run}/rerun"),
                &[("from_step", "second")]
            )
            .status,
        403
    );
}
