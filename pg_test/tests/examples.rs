//! Every example of the guide (examples/*.sql) runs on a fresh database and
//! does what the guide says, failure and timeout paths included.

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use pg_jobs_e2e::http_server::{HttpServer, Reply, Request};
use pg_jobs_e2e::*;

/// The services the examples call (Resend, service A and B, the uploads).
fn services() -> &'static HttpServer {
    static SERVER: OnceLock<HttpServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        HttpServer::start(|request: &Request| match request.path.as_str() {
            "/resend/emails" => {
                Reply::json(200, r#"{"id": "4ef9a417-02e9-4d39-ad75-9611e0fcc33c"}"#)
            }
            "/uploads/img-42.jpg" => Reply {
                status: 200,
                headers: vec![("Content-Type".into(), "image/jpeg".into())],
                body: "x".repeat(3000),
            },
            _ => Reply::json(200, r#"{"ok": true}"#),
        })
    })
}

/// A fresh database for each example: no functions, no history, an empty
/// public schema whose app_settings point the examples' services at `services()`.
fn fresh(example: &str) -> (Client, MutexGuard<'static, ()>) {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let cluster = CLUSTER.get_or_init(|| {
        Cluster::with_pg_jobs("examples", 3, &["jobs.fetch_allowed_hosts = '127.0.0.1:*'"])
    });
    let mut c = cluster.connect();
    c.batch_execute("SELECT jobs.delete_function(id) FROM jobs.functions WHERE failure_of IS NULL")
        .unwrap();
    wait_until(
        "the previous example's runs are gone",
        Duration::from_secs(30),
        || count(&mut c, "SELECT count(*) FROM jobs.queue") == 0,
    );
    c.batch_execute(
        "TRUNCATE jobs.events, jobs.runs, jobs.steps, jobs.attempt_errors, jobs.dedup_ids, jobs.cron_fires,
                  jobs.waits, jobs.wait_paths, jobs.event_schemas;
         DROP SCHEMA public CASCADE; CREATE SCHEMA public;",
    )
    .unwrap();
    c.batch_execute("CREATE TABLE app_settings (name text PRIMARY KEY, value text NOT NULL)")
        .unwrap();
    c.execute(
        "INSERT INTO app_settings VALUES ('resend_url', $1 || '/resend'), ('service_a_url', $1 || '/service-a'),
                                         ('service_b_url', $1 || '/service-b'), ('uploads_url', $1 || '/uploads')",
        &[&services().url("")],
    )
    .unwrap();
    let path = format!("{}/../examples/{example}.sql", env!("CARGO_MANIFEST_DIR"));
    let sql = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    c.batch_execute(&sql)
        .unwrap_or_else(|e| panic!("examples/{example}.sql: {e}"));
    (c, turn)
}

fn text(c: &mut Client, sql: &str) -> String {
    c.query_one(sql, &[]).unwrap().get(0)
}

/// Time passes: the function's sleeping or waiting runs are due now.
fn fast_forward(c: &mut Client, function_id: &str) {
    c.execute(
        "UPDATE jobs.waits SET expires_at = now() WHERE run_id IN (SELECT id FROM jobs.runs WHERE function_id = $1)",
        &[&function_id],
    )
    .unwrap();
    c.execute(
        "UPDATE jobs.queue SET due_at = now() WHERE function_id = $1 AND step_id = ''",
        &[&function_id],
    )
    .unwrap();
}

fn wait_status(c: &mut Client, function_id: &str, status: &str) {
    wait_until(
        &format!("{function_id} is {status}"),
        Duration::from_secs(30),
        || statuses(c, function_id).last().map(String::as_str) == Some(status),
    );
}

fn step_ids(c: &mut Client, function_id: &str) -> Vec<String> {
    c.query(
        "SELECT s.id FROM jobs.steps s JOIN jobs.runs r ON r.id = s.run_id WHERE r.function_id = $1 ORDER BY s.started_at",
        &[&function_id],
    )
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect()
}

#[test]
fn hello() {
    let (mut c, _turn) = fresh("hello");
    assert_eq!(wait_for_runs(&mut c, "hello-world", 1), ["completed"]);
    assert_eq!(
        text(&mut c, "SELECT output->>'message' FROM jobs.runs"),
        "Hello, Ada!"
    );
}

#[test]
fn send_events() {
    let (mut c, _turn) = fresh("send_events");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.events WHERE name = 'app/hello.world'"
        ),
        7
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.events WHERE duplicate_of IS NOT NULL"
        ),
        1
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.events WHERE ts > now() + interval '50 minutes'"
        ),
        1
    );
}

#[test]
fn user_onboarding() {
    let (mut c, _turn) = fresh("user_onboarding");
    assert_eq!(wait_for_runs(&mut c, "user-onboarding", 1), ["completed"]);
    assert_eq!(
        text(&mut c, "SELECT output::text FROM jobs.runs"),
        r#"{"success": true, "profileId": 1}"#
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM outbox_emails WHERE to_address = 'ada@example.com' AND subject = 'Welcome!'"), 1);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM slack_messages WHERE text = 'New user signed up: Ada'"
        ),
        1
    );
    assert_eq!(
        step_ids(&mut c, "user-onboarding"),
        [
            "send-welcome-email",
            "create-user-profile",
            "send-slack-notification"
        ]
    );
}

#[test]
fn parallel_processing() {
    let (mut c, _turn) = fresh("parallel_processing");
    assert_eq!(
        wait_for_runs(&mut c, "parallel-processing", 1),
        ["completed"]
    );
    assert_eq!(
        text(&mut c, "SELECT thumbnail || ' ' || webp || ' ' || (metadata->>'width') FROM images WHERE id = 'img-1'"),
        "https://cdn.example.com/photos/cat.jpg?w=150 https://cdn.example.com/photos/cat.webp 1920"
    );
}

#[test]
fn delayed_notification() {
    let (mut c, _turn) = fresh("delayed_notification");
    wait_status(&mut c, "delayed-notification", "sleeping");
    assert_eq!(count(&mut c, "SELECT count(*) FROM outbox_emails"), 0);
    fast_forward(&mut c, "delayed-notification");
    assert_eq!(
        wait_for_runs(&mut c, "delayed-notification", 1),
        ["completed"]
    );
    assert_eq!(
        text(
            &mut c,
            "SELECT subject FROM outbox_emails WHERE to_address = 'grace@example.com'"
        ),
        "Your trial is ending soon!"
    );
}

#[test]
fn payment_flow() {
    let (mut c, _turn) = fresh("payment_flow");
    assert_eq!(wait_for_runs(&mut c, "payment-flow", 1), ["completed"]);
    assert_eq!(
        text(&mut c, "SELECT output #>> '{}' FROM jobs.runs"),
        "paid"
    );
    assert_eq!(
        text(
            &mut c,
            "SELECT (payment->>'amount') || ' ' || user_id FROM receipts"
        ),
        "4200 u-1"
    );
    // Without its event the wait times out after an hour (fast-forwarded here).
    c.batch_execute("SELECT jobs.send('app/payment.initiated', '{\"paymentId\": \"pay-2\", \"userId\": \"u-2\"}')").unwrap();
    wait_until("pay-2 waits", Duration::from_secs(30), || {
        statuses(&mut c, "payment-flow") == ["completed", "waiting"]
    });
    fast_forward(&mut c, "payment-flow");
    assert_eq!(
        wait_for_runs(&mut c, "payment-flow", 2),
        ["completed", "completed"]
    );
    assert_eq!(
        text(&mut c, "SELECT status FROM payments WHERE id = 'pay-2'"),
        "cancelled"
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM receipts"), 1);
}

#[test]
fn daily_report() {
    let (mut c, _turn) = fresh("daily_report");
    assert_eq!(
        text(&mut c, "SELECT to_char(next_fire_at AT TIME ZONE 'UTC', 'HH24:MI') FROM jobs.schedules WHERE function_id = 'daily-report'"),
        "09:00"
    );
    c.batch_execute(
        "INSERT INTO orders (total, placed_at) VALUES (10, date_trunc('day', now()) - interval '2 hours'), (32.5, date_trunc('day', now()) - interval '20 hours');
         SELECT jobs.invoke_function('daily-report');",
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "daily-report", 1), ["completed"]);
    assert_eq!(
        text(&mut c, "SELECT (body::jsonb->>'orders') || ' ' || (body::jsonb->>'revenue') FROM outbox_emails WHERE subject = 'Daily Report'"),
        "2 42.5"
    );
}

#[test]
fn multi_schedule() {
    let (mut c, _turn) = fresh("multi_schedule");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.schedules WHERE function_id = 'multi-schedule'"
        ),
        2
    );
    // What each schedule's run gets, invoked by hand instead of at 9:00 and 17:00.
    c.batch_execute(
        "SELECT jobs.invoke_function('multi-schedule', '{\"cron\": \"0 9 * * *\", \"scheduled_at\": \"2026-12-01T09:00:00Z\"}');
         SELECT jobs.invoke_function('multi-schedule', '{\"cron\": \"0 17 * * *\", \"scheduled_at\": \"2026-12-01T17:00:00Z\"}');",
    )
    .unwrap();
    assert_eq!(
        wait_for_runs(&mut c, "multi-schedule", 2),
        ["completed", "completed"]
    );
    assert_eq!(
        text(&mut c, "SELECT string_agg(task || '@' || to_char(scheduled_at AT TIME ZONE 'UTC', 'HH24'), ',' ORDER BY scheduled_at) FROM shift_tasks"),
        "morning@09,evening@17"
    );
}

#[test]
fn tokyo_schedule() {
    let (mut c, _turn) = fresh("tokyo_schedule");
    assert_eq!(
        text(&mut c, "SELECT to_char(next_fire_at AT TIME ZONE 'Asia/Tokyo', 'HH24:MI') || ' ' || to_char(next_fire_at AT TIME ZONE 'UTC', 'HH24:MI') FROM jobs.schedules"),
        "09:00 00:00"
    );
    assert_eq!(
        text(&mut c, "SELECT timezone FROM jobs.schedules"),
        "Asia/Tokyo"
    );
}

#[test]
fn reliable_job() {
    let (mut c, _turn) = fresh("reliable_job");
    assert_eq!(wait_for_runs(&mut c, "reliable-job", 1), ["completed"]);
    assert_eq!(
        text(&mut c, "SELECT output::text FROM jobs.runs"),
        r#"{"items": [1, 2, 3]}"#
    );
    assert_eq!(
        count(&mut c, "SELECT max_attempts::int8 FROM jobs.functions"),
        4
    );
}

#[test]
fn custom_retry() {
    let (mut c, _turn) = fresh("custom_retry");
    assert_eq!(wait_for_runs(&mut c, "custom-retry", 1), ["completed"]);
    let gaps: Vec<f64> = c
        .query(
            "SELECT extract(epoch FROM t - lag(t) OVER (ORDER BY t))::float8 FROM (
                SELECT failed_at AS t FROM jobs.attempt_errors UNION ALL SELECT ended_at FROM jobs.steps) x
             ORDER BY t OFFSET 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(gaps.len(), 2, "{gaps:?}");
    assert!(
        gaps[0] >= 2.0 && gaps[0] < 3.5 && gaps[1] >= 4.0 && gaps[1] < 5.5,
        "base 2 s, doubling: {gaps:?}"
    );
    assert_eq!(
        text(&mut c, "SELECT result FROM heavy_results"),
        "computed t-1"
    );
}

#[test]
fn error_handling() {
    let (mut c, _turn) = fresh("error_handling");
    assert_eq!(
        wait_for_runs(&mut c, "error-handling", 2),
        ["completed", "failed"]
    );
    assert_eq!(
        text(
            &mut c,
            "SELECT result->>'doubled' FROM processed_data WHERE id = 'd-1'"
        ),
        "42"
    );
    assert_eq!(
        text(&mut c, "SELECT message FROM error_log"),
        "cannot process a negative value: -1"
    );
    assert!(text(&mut c, "SELECT detail FROM error_log")
        .contains("step \"risky-operation\" failed after 3 attempt(s)"));
    assert_eq!(count(&mut c, "SELECT count(*) FROM admin_notifications"), 1);
    assert_eq!(
        text(
            &mut c,
            "SELECT error->>'sqlstate' FROM jobs.runs WHERE status = 'failed'"
        ),
        "JB001"
    );
}

#[test]
fn email_queue() {
    let (mut c, _turn) = fresh("email_queue");
    assert_eq!(wait_for_runs(&mut c, "send-email", 1), ["completed"]);
    let sent = services().requests_to("/resend/emails");
    let run = text(&mut c, "SELECT id::text FROM jobs.runs");
    let this_run: Vec<_> = sent
        .iter()
        .filter(|r| r.header("idempotency-key") == Some(&format!("{run}:send-email")))
        .collect();
    assert_eq!(this_run.len(), 1, "one email for one run");
    assert_eq!(this_run[0].method, "POST");
    assert_eq!(
        this_run[0].header("authorization"),
        Some("Bearer re_123456789")
    );
    assert!(
        this_run[0].body.contains(r#""to":"ada@example.com""#),
        "{}",
        this_run[0].body
    );
    assert_eq!(
        text(&mut c, "SELECT (r.output->>'messageId' = '4ef9a417-02e9-4d39-ad75-9611e0fcc33c' AND l.message_id = r.output->>'messageId')::text FROM jobs.runs r, email_log l"),
        "true"
    );
}

#[test]
fn image_pipeline() {
    let (mut c, _turn) = fresh("image_pipeline");
    assert_eq!(wait_for_runs(&mut c, "image-processing", 1), ["completed"]);
    assert!(!services().requests_to("/uploads/img-42.jpg").is_empty());
    assert_eq!(
        text(
            &mut c,
            "SELECT string_agg(key, ',' ORDER BY key) FROM s3_objects"
        ),
        "large/img-42.jpg,medium/img-42.jpg,thumbnails/img-42.jpg"
    );
    assert_eq!(
        text(
            &mut c,
            "SELECT processed || ' ' || thumbnail_url FROM pipeline_images WHERE id = 'img-42'"
        ),
        "true https://cdn.example.com/thumbnails/img-42.jpg"
    );
    assert_eq!(
        text(
            &mut c,
            "SELECT output->'sizes'->'thumbnail'->>'size' FROM jobs.runs"
        ),
        "2250"
    );
}

#[test]
fn trial_ending_reminder() {
    let (mut c, _turn) = fresh("trial_ending_reminder");
    // A second user subscribes during the trial.
    c.batch_execute(
        "INSERT INTO app_users (id, email) VALUES (9, 'alan@example.com');
         SELECT jobs.send('app/trial.started', '{\"userId\": 9, \"email\": \"alan@example.com\"}');",
    )
    .unwrap();
    for (sleep, emails) in [
        ("wait-7-days", 2),
        ("wait-2-more-days", 4),
        ("wait-until-end", 5),
    ] {
        wait_until(
            &format!("both runs sleep at {sleep}"),
            Duration::from_secs(30),
            || {
                count(&mut c, &format!("SELECT count(*) FROM jobs.steps WHERE id = '{sleep}' AND status = 'sleeping'")) == 2
            },
        );
        if sleep == "wait-until-end" {
            c.batch_execute("UPDATE app_users SET subscription_id = 'sub_9' WHERE id = 9")
                .unwrap();
        }
        fast_forward(&mut c, "trial-ending-reminder");
        wait_until(&format!("{emails} emails"), Duration::from_secs(30), || {
            count(&mut c, "SELECT count(*) FROM outbox_emails") == emails
        });
    }
    assert_eq!(
        wait_for_runs(&mut c, "trial-ending-reminder", 2),
        ["completed", "completed"]
    );
    assert_eq!(
        text(
            &mut c,
            "SELECT string_agg(id || ':' || account_status, ',' ORDER BY id) FROM app_users"
        ),
        "7:restricted,9:trial"
    );
    assert_eq!(
        text(&mut c, "SELECT string_agg(template, ',' ORDER BY id) FROM outbox_emails WHERE to_address = 'grace@example.com'"),
        "trial-reminder-3days,trial-reminder-1day,trial-ended"
    );
}

#[test]
fn subscription_canceled() {
    let (mut c, _turn) = fresh("subscription_canceled");
    wait_status(&mut c, "subscription-canceled", "sleeping");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM outbox_emails WHERE template = 'subscription-canceled'"
        ),
        1
    );
    c.batch_execute("SELECT jobs.send('app/subscription.renewed', '{\"userId\": 8}')")
        .unwrap();
    wait_status(&mut c, "subscription-canceled", "cancelled");
    // Another user lets the subscription run out.
    c.batch_execute(
        "INSERT INTO app_users (id, email, account_status, subscription_id) VALUES (10, 'barbara@example.com', 'active', 'sub_10');
         SELECT jobs.send('app/subscription.canceled', jsonb_build_object('userId', 10, 'cancelsAt', now() + interval '1 second'));",
    )
    .unwrap();
    assert_eq!(
        wait_for_runs(&mut c, "subscription-canceled", 2),
        ["cancelled", "completed"]
    );
    assert_eq!(
        text(&mut c, "SELECT string_agg(id || ':' || account_status || ':' || coalesce(subscription_id, '-'), ',' ORDER BY id) FROM app_users"),
        "8:active:sub_8,10:restricted:-"
    );
}

#[test]
fn data_sync() {
    let (mut c, _turn) = fresh("data_sync");
    assert_eq!(
        wait_for_runs(&mut c, "sync-to-external", 2),
        ["completed", "failed"]
    );
    let mut synced: Vec<String> = services()
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.body.contains(r#""id":501"#))
        .map(|r| r.path)
        .collect();
    synced.sort();
    assert_eq!(synced, ["/service-a/sync", "/service-b/sync"]);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM sync_log WHERE entity_type = 'order' AND entity_id = 501"
        ),
        1
    );
    let failed = c
        .query_one(
            "SELECT s.attempts, s.error->>'sqlstate', s.error->>'message' FROM jobs.steps s JOIN jobs.runs r ON r.id = s.run_id
             WHERE r.status = 'failed' AND s.id = 'fetch-data'",
            &[],
        )
        .unwrap();
    assert_eq!(
        (
            failed.get::<_, i32>(0),
            failed.get::<_, String>(1),
            failed.get::<_, String>(2)
        ),
        (
            1,
            "JB002".to_string(),
            "Unknown entity type: invoice".to_string()
        ),
        "an unknown entity type is not retried"
    );
}

#[test]
fn full_sync() {
    let (mut c, _turn) = fresh("full_sync");
    assert_eq!(wait_for_runs(&mut c, "full-sync", 1), ["completed"]);
    assert_eq!(
        text(&mut c, "SELECT output::text FROM jobs.runs"),
        r#"{"syncedCount": 2}"#
    );
    assert_eq!(
        text(&mut c, "SELECT string_agg(data->>'entityId', ',' ORDER BY data->>'entityId') FROM jobs.events WHERE name = 'app/data.updated'"),
        "501,502"
    );
    assert_eq!(
        text(&mut c, "SELECT expression FROM jobs.schedules"),
        "0 2 * * *"
    );
}

#[test]
fn data_validation() {
    let (mut c, _turn) = fresh("data_validation");
    assert_eq!(
        wait_for_runs(&mut c, "validated-function", 1),
        ["completed"]
    );
    assert_eq!(
        text(
            &mut c,
            "SELECT user_id || ' ' || email FROM processed_users"
        ),
        "u-1 ada@example.com"
    );
    let refused = c
        .batch_execute(
            "SELECT jobs.send('app/user.created', '{\"userId\": 1, \"email\": \"not-an-email\"}')",
        )
        .unwrap_err();
    let db = refused.as_db_error().unwrap();
    assert_eq!(db.code().code(), "22023");
    assert!(
        db.message().contains("data/email") && db.message().contains("data/userId"),
        "{}",
        db.message()
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM jobs.events"), 1);
}

#[test]
fn idempotent_job() {
    let (mut c, _turn) = fresh("idempotent_job");
    assert_eq!(wait_for_runs(&mut c, "idempotent-job", 1), ["completed"]);
    c.batch_execute(
        "SELECT jobs.send('app/process.request', '{\"requestId\": \"req-1\", \"amount\": 100}')",
    )
    .unwrap();
    assert_eq!(
        wait_for_runs(&mut c, "idempotent-job", 2),
        ["completed", "completed"]
    );
    let outputs: Vec<String> = c
        .query(
            "SELECT output::text FROM jobs.runs ORDER BY created_at",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        outputs,
        [r#"{"total": 110.0}"#, r#"{"message": "Already processed"}"#]
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM process_log"), 1);
}

#[test]
fn long_running() {
    let (mut c, _turn) = fresh("long_running");
    assert_eq!(wait_for_runs(&mut c, "long-running-job", 1), ["completed"]);
    assert_eq!(
        count(&mut c, "SELECT rows_scanned FROM reports WHERE id = 'r-1'"),
        1_000_000
    );
    assert_eq!(
        text(&mut c, "SELECT max_runtime::text FROM jobs.functions"),
        "00:05:00"
    );

    // The timeout path: an attempt past max_runtime is cancelled and counts as failed.
    c.batch_execute(
        "SELECT jobs.create_function('long-running-job', 'long_running_job(jsonb)',
                                     '{\"event\": \"app/heavy.task\", \"maxRuntime\": \"200ms\", \"retries\": 0}');
         SELECT jobs.send('app/heavy.task', '{\"reportId\": \"r-2\", \"rows\": 1000000000}');",
    )
    .unwrap();
    assert_eq!(
        wait_for_runs(&mut c, "long-running-job", 2),
        ["completed", "failed"]
    );
    assert_eq!(
        text(
            &mut c,
            "SELECT s.error->>'sqlstate' FROM jobs.steps s JOIN jobs.runs r ON r.id = s.run_id
             WHERE r.status = 'failed'"
        ),
        "57014",
        "the step was cancelled at max_runtime"
    );
    assert_eq!(
        text(
            &mut c,
            "SELECT error->>'sqlstate' FROM jobs.runs WHERE status = 'failed'"
        ),
        "JB001",
        "and the handler got the step's failure"
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM reports WHERE id = 'r-2'"),
        0
    );
}

#[test]
fn small_steps() {
    let (mut c, _turn) = fresh("small_steps");
    assert_eq!(wait_for_runs(&mut c, "small-steps", 1), ["completed"]);
    assert_eq!(
        count(&mut c, "SELECT last_value FROM emails_sent"),
        1,
        "the retry ran update-database only"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.attempt_errors WHERE step_id = 'update-database'"
        ),
        1
    );

    // The bad way, as the file's comment shows it.
    c.batch_execute(
        "SELECT jobs.delete_function('small-steps');
         SELECT setval('account_update_calls', 1, false);
         SELECT jobs.create_function('one-big-step', 'one_big_step(jsonb)',
             '{\"event\": \"app/account.updated\", \"retries\": {\"attempts\": 3, \"backoff\": {\"type\": \"fixed\", \"base\": \"1s\"}}}');
         SELECT jobs.send('app/account.updated', '{\"accountId\": 2}');",
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "one-big-step", 1), ["completed"]);
    assert_eq!(
        count(&mut c, "SELECT last_value FROM emails_sent"),
        3,
        "its retry sent the email again"
    );
    assert_eq!(
        count(&mut c, "SELECT sum(updates) FROM accounts"),
        2,
        "each account updated once"
    );
}

#[test]
fn safe_operation() {
    let (mut c, _turn) = fresh("safe_operation");
    assert_eq!(
        wait_for_runs(&mut c, "safe-operation", 2),
        ["completed", "completed"]
    );
    let outcomes: Vec<String> = c
        .query("SELECT outcome FROM operation_log ORDER BY logged_at", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(outcomes.len(), 2);
    assert!(
        outcomes.contains(&r#"{"processed": "a"}"#.to_string())
            && outcomes.contains(&"skipped".to_string()),
        "{outcomes:?}"
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM jobs.attempt_errors"),
        0,
        "the caught error was not retried"
    );
}
