//! Runs that talk to each other: waits for events, cancel_on, invoke, system events, on_failure.

use std::sync::OnceLock;
use std::time::Duration;

use pg_jobs_e2e::*;

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = Cluster::with_pg_jobs("events", 3, &[]);
        cluster
            .connect()
            .batch_execute(
                r#"
                CREATE TABLE payments (id text PRIMARY KEY, status text);
                CREATE TABLE receipts (user_id text, payment jsonb);
                -- The guide's payment flow.
                CREATE FUNCTION payment_flow(ctx jsonb) RETURNS text LANGUAGE plpgsql AS $$
                DECLARE
                    payment_event jsonb;
                BEGIN
                    PERFORM jobs.step('process-payment',
                        $q$INSERT INTO payments VALUES ($1->>'paymentId', 'processing')$q$, ctx->'event'->'data');
                    payment_event := jobs.wait_for_event('wait-for-payment', 'app/payment.completed',
                        (ctx->'event'->'data'->>'timeout')::interval, match => 'data.paymentId');
                    IF payment_event IS NOT NULL THEN
                        PERFORM jobs.step('send-receipt',
                            $q$INSERT INTO receipts VALUES ($1->>'userId', $1->'payment')$q$,
                            jsonb_build_object('userId', ctx->'event'->'data'->>'userId', 'payment', payment_event->'data'));
                        RETURN 'paid with ' || (payment_event->>'id');
                    END IF;
                    PERFORM jobs.step('handle-timeout',
                        $q$UPDATE payments SET status = 'cancelled' WHERE id = $1->>'paymentId'$q$, ctx->'event'->'data');
                    RETURN 'timed out';
                END $$;
                SELECT jobs.create_function('payment-flow', 'payment_flow(jsonb)', '{"event": "app/payment.initiated"}');
                "#,
            )
            .unwrap();
        cluster
    })
}

fn output_of(c: &mut Client, sql: &str) -> String {
    c.query_one(sql, &[]).unwrap().get(0)
}

fn run_status(c: &mut Client, run_filter: &str) -> String {
    output_of(
        c,
        &format!("SELECT status FROM jobs.runs WHERE {run_filter}"),
    )
}

/// Waits until the payment-flow run for `payment` is waiting for its event.
fn wait_until_waiting(c: &mut Client, payment: &str) {
    let filter = format!(
        "id = (SELECT r.id FROM jobs.runs r JOIN jobs.events e ON e.id = r.event_id
               WHERE r.function_id = 'payment-flow' AND e.data->>'paymentId' = '{payment}')"
    );
    wait_until(
        "the run waits for its event",
        Duration::from_secs(20),
        || run_status(c, &filter) == "waiting",
    );
}

fn payment_outputs(c: &mut Client, payment: &str) -> Vec<(String, Option<String>)> {
    let rows = c
        .query(
            "SELECT r.status, r.output #>> '{}' FROM jobs.runs r JOIN jobs.events e ON e.id = r.event_id
             WHERE r.function_id = 'payment-flow' AND e.data->>'paymentId' = $1 ORDER BY r.created_at",
            &[&payment],
        )
        .unwrap();
    rows.iter().map(|row| (row.get(0), row.get(1))).collect()
}

fn wait_for_payment(c: &mut Client, payment: &str, runs: usize) -> Vec<(String, Option<String>)> {
    let mut last = Vec::new();
    wait_until(
        &format!("the payment flow of {payment} finishes"),
        Duration::from_secs(30),
        || {
            last = payment_outputs(c, payment);
            last.len() == runs
                && last
                    .iter()
                    .all(|(status, _)| status == "completed" || status == "failed")
        },
    );
    last
}

#[test]
fn the_payment_completes_when_its_event_arrives() {
    let mut c = cluster().connect();
    c.batch_execute("SELECT jobs.send('app/payment.initiated', '{\"paymentId\": \"p1\", \"userId\": \"u1\", \"timeout\": \"1 hour\"}')")
        .unwrap();
    wait_until_waiting(&mut c, "p1");
    // Another payment's completion does not match.
    c.batch_execute(
        "SELECT jobs.send('app/payment.completed', '{\"paymentId\": \"other\", \"amount\": 1}')",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(payment_outputs(&mut c, "p1")[0].0, "waiting");
    let completed: String = output_of(&mut c, "SELECT jobs.send('app/payment.completed', '{\"paymentId\": \"p1\", \"amount\": 42}')::text");
    let outputs = wait_for_payment(&mut c, "p1", 1);
    assert_eq!(
        outputs[0],
        (
            "completed".to_string(),
            Some(format!("paid with {completed}"))
        )
    );
    assert_eq!(
        output_of(
            &mut c,
            "SELECT payment->>'amount' FROM receipts WHERE user_id = 'u1'"
        ),
        "42"
    );
    let waited = c
        .query_one(
            "SELECT s.status, s.output->'data'->>'paymentId' FROM jobs.steps s JOIN jobs.runs r ON r.id = s.run_id
             JOIN jobs.events e ON e.id = r.event_id
             WHERE e.data->>'paymentId' = 'p1' AND s.id = 'wait-for-payment'",
            &[],
        )
        .unwrap();
    assert_eq!(
        (waited.get::<_, String>(0), waited.get::<_, String>(1)),
        ("completed".into(), "p1".into())
    );
}

#[test]
fn without_its_event_the_payment_times_out_and_is_cancelled() {
    let mut c = cluster().connect();
    c.batch_execute("SELECT jobs.send('app/payment.initiated', '{\"paymentId\": \"p2\", \"userId\": \"u2\", \"timeout\": \"1.5 seconds\"}')")
        .unwrap();
    let outputs = wait_for_payment(&mut c, "p2", 1);
    assert_eq!(
        outputs[0],
        ("completed".to_string(), Some("timed out".to_string()))
    );
    assert_eq!(
        output_of(&mut c, "SELECT status FROM payments WHERE id = 'p2'"),
        "cancelled"
    );
    let waited: f64 = c
        .query_one(
            "SELECT extract(epoch FROM s.ended_at - s.started_at)::float8 FROM jobs.steps s JOIN jobs.runs r ON r.id = s.run_id
             JOIN jobs.events e ON e.id = r.event_id WHERE e.data->>'paymentId' = 'p2' AND s.id = 'wait-for-payment'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(waited >= 1.5, "waited {waited} s");
    assert_eq!(count(&mut c, "SELECT count(*) FROM jobs.waits WHERE step_id = 'wait-for-payment' AND match_value = '\"p2\"'"), 0);
}

#[test]
fn an_event_sent_before_the_run_reaches_its_wait_still_counts() {
    let mut c = cluster().connect();
    // In the very transaction that starts the run...
    let mut tx = c.transaction().unwrap();
    tx.batch_execute(
        "SELECT jobs.send('app/payment.initiated', '{\"paymentId\": \"p3\", \"userId\": \"u3\", \"timeout\": \"1 hour\"}');
         SELECT jobs.send('app/payment.completed', '{\"paymentId\": \"p3\", \"amount\": 3}');",
    )
    .unwrap();
    tx.commit().unwrap();
    // ...and right after it.
    c.batch_execute("SELECT jobs.send('app/payment.initiated', '{\"paymentId\": \"p4\", \"userId\": \"u4\", \"timeout\": \"1 hour\"}')")
        .unwrap();
    c.batch_execute(
        "SELECT jobs.send('app/payment.completed', '{\"paymentId\": \"p4\", \"amount\": 4}')",
    )
    .unwrap();
    for payment in ["p3", "p4"] {
        let outputs = wait_for_payment(&mut c, payment, 1);
        assert!(
            outputs[0]
                .1
                .as_deref()
                .unwrap_or_default()
                .starts_with("paid with"),
            "{payment}: {outputs:?}"
        );
    }
}

#[test]
fn two_runs_waiting_for_the_same_key_are_both_resumed_and_an_event_serves_a_wait_once() {
    let mut c = cluster().connect();
    c.batch_execute(
        r#"
        CREATE FUNCTION twice(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
        DECLARE
            first jsonb := jobs.wait_for_event('first', 'test/ping', '1 hour', match => 'data.key');
            second jsonb := jobs.wait_for_event('second', 'test/ping', '1 hour', match => 'data.key');
        BEGIN
            RETURN jsonb_build_array(first->'data'->'n', second->'data'->'n');
        END $$;
        SELECT jobs.create_function('twice', 'twice(jsonb)', '{"event": "test/twice"}');
        SELECT jobs.send('test/twice', '{"key": "k"}');
        SELECT jobs.send('test/twice', '{"key": "k"}');
        "#,
    )
    .unwrap();
    wait_until("both runs wait", Duration::from_secs(20), || {
        statuses(&mut c, "twice") == ["waiting", "waiting"]
    });
    c.batch_execute("SELECT jobs.send('test/ping', '{\"key\": \"k\", \"n\": 1}')")
        .unwrap();
    wait_until("both runs wait again", Duration::from_secs(20), || {
        count(&mut c, "SELECT count(*) FROM jobs.steps s JOIN jobs.runs r ON r.id = s.run_id WHERE r.function_id = 'twice' AND s.id = 'second' AND s.status = 'waiting'") == 2
    });
    c.batch_execute("SELECT jobs.send('test/ping', '{\"key\": \"k\", \"n\": 2}')")
        .unwrap();
    assert_eq!(
        wait_for_runs(&mut c, "twice", 2),
        ["completed", "completed"]
    );
    let outputs: Vec<String> = c
        .query(
            "SELECT output::text FROM jobs.runs WHERE function_id = 'twice'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(outputs, ["[1, 2]", "[1, 2]"]);
}

#[test]
fn a_wait_condition_compares_both_events() {
    let mut c = cluster().connect();
    c.batch_execute(
        r#"
        CREATE FUNCTION big_bid(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
        BEGIN
            RETURN jobs.wait_for_event('bid', 'test/bid', '1 hour',
                condition => 'async.data.amount > event.data.reserve && async.data.item == event.data.item')->'data'->'amount';
        END $$;
        SELECT jobs.create_function('big-bid', 'big_bid(jsonb)', '{"event": "test/auction"}');
        SELECT jobs.send('test/auction', '{"item": "vase", "reserve": 100}');
        "#,
    )
    .unwrap();
    wait_until("the run waits", Duration::from_secs(20), || {
        statuses(&mut c, "big-bid") == ["waiting"]
    });
    c.batch_execute(
        "SELECT jobs.send('test/bid', '{\"item\": \"vase\", \"amount\": 50}');
         SELECT jobs.send('test/bid', '{\"item\": \"lamp\", \"amount\": 500}');
         SELECT jobs.send('test/bid', '{\"item\": \"vase\", \"amount\": 150}');",
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "big-bid", 1), ["completed"]);
    assert_eq!(
        output_of(
            &mut c,
            "SELECT output::text FROM jobs.runs WHERE function_id = 'big-bid'"
        ),
        "150"
    );
}

#[test]
fn cancel_on_cancels_a_sleeping_subscription_run_early() {
    let mut c = cluster().connect();
    c.batch_execute(
        r#"
        CREATE TABLE accounts (user_id int PRIMARY KEY, status text);
        INSERT INTO accounts VALUES (7, 'active'), (9, 'active');
        CREATE FUNCTION subscription_canceled(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM jobs.step('send-cancellation-email',
                $q$SELECT 'Subscription canceled: access ends ' || ($1->>'cancelsAt')$q$, ctx->'event'->'data');
            PERFORM jobs.sleep_until('wait-until-expiry', (ctx->'event'->'data'->>'cancelsAt')::timestamptz);
            PERFORM jobs.step('revoke-access',
                $q$UPDATE accounts SET status = 'restricted' WHERE user_id = ($1->>'userId')::int$q$, ctx->'event'->'data');
        END $$;
        SELECT jobs.create_function('subscription-canceled', 'subscription_canceled(jsonb)',
            '{"event": "app/subscription.canceled",
              "cancelOn": [{"event": "app/subscription.renewed", "match": "data.userId"}]}');
        "#,
    )
    .unwrap();
    c.batch_execute(
        "SELECT jobs.send('app/subscription.canceled', jsonb_build_object('userId', 7, 'cancelsAt', now() + interval '1 hour'));
         SELECT jobs.send('app/subscription.canceled', jsonb_build_object('userId', 9, 'cancelsAt', now() + interval '1 second'));",
    )
    .unwrap();
    let user_7 = "function_id = 'subscription-canceled' AND event_id =
                  (SELECT id FROM jobs.events WHERE name = 'app/subscription.canceled' AND data->>'userId' = '7')";
    wait_until("user 7's run sleeps", Duration::from_secs(20), || {
        run_status(&mut c, user_7) == "sleeping"
    });
    c.batch_execute("SELECT jobs.send('app/subscription.renewed', '{\"userId\": 8}')")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        run_status(&mut c, user_7),
        "sleeping",
        "another user's renewal does not cancel"
    );
    c.batch_execute("SELECT jobs.send('app/subscription.renewed', '{\"userId\": 7}')")
        .unwrap();
    assert_eq!(
        wait_for_runs(&mut c, "subscription-canceled", 2),
        ["cancelled", "completed"]
    );
    let reason = output_of(
        &mut c,
        &format!("SELECT error->>'message' FROM jobs.runs WHERE {user_7}"),
    );
    assert_eq!(reason, "cancelled by event app/subscription.renewed");
    assert_eq!(
        output_of(
            &mut c,
            "SELECT string_agg(user_id || ':' || status, ',' ORDER BY user_id) FROM accounts"
        ),
        "7:active,9:restricted"
    );
}

#[test]
fn cancel_run_cancels_by_hand_and_refuses_finished_runs() {
    let mut c = cluster().connect();
    c.batch_execute(
        r#"
        CREATE FUNCTION long_nap(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN PERFORM jobs.sleep('nap', '1 hour'); END $$;
        SELECT jobs.create_function('long-nap', 'long_nap(jsonb)', '{"event": "test/nap"}');
        SELECT jobs.send('test/nap');
        "#,
    )
    .unwrap();
    wait_until("the run sleeps", Duration::from_secs(20), || {
        statuses(&mut c, "long-nap") == ["sleeping"]
    });
    c.batch_execute("SELECT jobs.cancel_run(id) FROM jobs.runs WHERE function_id = 'long-nap'")
        .unwrap();
    assert_eq!(wait_for_runs(&mut c, "long-nap", 1), ["cancelled"]);
    assert_eq!(
        output_of(
            &mut c,
            "SELECT error->>'message' FROM jobs.runs WHERE function_id = 'long-nap'"
        ),
        "cancelled by jobs.cancel_run"
    );
    let again = c
        .batch_execute("SELECT jobs.cancel_run(id) FROM jobs.runs WHERE function_id = 'long-nap'")
        .unwrap_err();
    let db = again.as_db_error().unwrap();
    assert_eq!(db.code().code(), "55000");
    assert!(db.message().contains("is cancelled"), "{}", db.message());
}

#[test]
fn invoke_returns_the_childs_output_and_a_failing_child_fails_the_step_once() {
    let mut c = cluster().connect();
    c.batch_execute(
        r#"
        CREATE FUNCTION compute_price(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
        BEGIN RETURN jobs.step('price', 'SELECT ($1->>''qty'')::int * 10', ctx->'event'->'data'); END $$;
        SELECT jobs.create_function('compute-price', 'compute_price(jsonb)');
        CREATE FUNCTION broken_child(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'child is broken' USING ERRCODE = '22000'; END $$;
        SELECT jobs.create_function('broken-child', 'broken_child(jsonb)',
            '{"retries": {"attempts": 2, "backoff": {"type": "fixed", "base": "10ms"}}}');
        CREATE FUNCTION checkout(ctx jsonb) RETURNS text LANGUAGE plpgsql AS $$
        DECLARE
            price jsonb := jobs.invoke('get-price', 'compute-price', jsonb_build_object('qty', 3), '30 seconds');
        BEGIN
            BEGIN
                PERFORM jobs.invoke('call-broken', 'broken-child');
            EXCEPTION WHEN SQLSTATE 'JB001' THEN
                RETURN 'price ' || price::text || ', child failed: ' || SQLERRM;
            END;
            RETURN 'unreachable';
        END $$;
        SELECT jobs.create_function('checkout', 'checkout(jsonb)', '{"event": "test/checkout"}');
        SELECT jobs.send('test/checkout');
        "#,
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "checkout", 1), ["completed"]);
    assert_eq!(
        output_of(
            &mut c,
            "SELECT output #>> '{}' FROM jobs.runs WHERE function_id = 'checkout'"
        ),
        "price 30, child failed: child is broken"
    );
    assert_eq!(wait_for_runs(&mut c, "broken-child", 1), ["failed"]);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM jobs.attempt_errors e JOIN jobs.runs r ON r.id = e.run_id WHERE r.function_id = 'broken-child'"),
        2,
        "the child's own retries, not compounded"
    );
    let step = c
        .query_one(
            "SELECT s.status, s.attempts, s.kind FROM jobs.steps s JOIN jobs.runs r ON r.id = s.run_id
             WHERE r.function_id = 'checkout' AND s.id = 'call-broken'",
            &[],
        )
        .unwrap();
    assert_eq!(
        (
            step.get::<_, String>(0),
            step.get::<_, i32>(1),
            step.get::<_, String>(2)
        ),
        ("failed".into(), 1, "invoke".into())
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM jobs.runs c JOIN jobs.runs p ON p.id = c.parent_run_id WHERE p.function_id = 'checkout'"),
        2
    );
}

#[test]
fn on_failure_and_a_subscriber_of_function_failed_both_run() {
    let mut c = cluster().connect();
    c.batch_execute(
        r#"
        CREATE TABLE failure_notes (via text, function_id text, message text);
        CREATE FUNCTION fragile(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'fragile broke'; END $$;
        CREATE FUNCTION notify_failure(ctx jsonb) RETURNS void LANGUAGE sql AS $$
            INSERT INTO failure_notes VALUES ('on_failure', ctx->'event'->'data'->>'function_id',
                                              ctx->'event'->'data'->'error'->>'message')
        $$;
        CREATE FUNCTION audit_failure(ctx jsonb) RETURNS void LANGUAGE sql AS $$
            INSERT INTO failure_notes VALUES ('subscriber', ctx->'event'->'data'->>'function_id',
                                              ctx->'event'->'data'->'error'->>'message')
        $$;
        CREATE FUNCTION watch_finish(ctx jsonb) RETURNS void LANGUAGE sql AS $$
            INSERT INTO failure_notes VALUES ('finished', ctx->'event'->'data'->>'function_id',
                                              coalesce(ctx->'event'->'data'->'error'->>'message', 'ok'))
        $$;
        SELECT jobs.create_function('fragile', 'fragile(jsonb)',
            '{"event": "test/fragile", "retries": 0, "onFailure": "notify_failure(jsonb)"}');
        SELECT jobs.create_function('audit-failures', 'audit_failure(jsonb)',
            '{"event": "jobs/function.failed", "if": "event.data.function_id == ''fragile''"}');
        SELECT jobs.create_function('watch-finish', 'watch_finish(jsonb)',
            '{"event": "jobs/function.finished", "if": "event.data.function_id == ''fragile''"}');
        SELECT jobs.send('test/fragile');
        "#,
    )
    .unwrap();
    assert_eq!(wait_for_runs(&mut c, "fragile", 1), ["failed"]);
    assert_eq!(wait_for_runs(&mut c, "fragile-failure", 1), ["completed"]);
    assert_eq!(wait_for_runs(&mut c, "audit-failures", 1), ["completed"]);
    assert_eq!(wait_for_runs(&mut c, "watch-finish", 1), ["completed"]);
    assert_eq!(
        output_of(&mut c, "SELECT string_agg(via || ':' || function_id || ':' || message, ', ' ORDER BY via) FROM failure_notes"),
        "finished:fragile:fragile broke, on_failure:fragile:fragile broke, subscriber:fragile:fragile broke"
    );
    // The failure function goes with its function.
    c.batch_execute("SELECT jobs.delete_function('fragile')")
        .unwrap();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.functions WHERE id LIKE 'fragile%'"
        ),
        0
    );
}

#[test]
fn a_send_that_matches_none_of_100000_waits_reads_the_index_not_the_table() {
    let mut c = cluster().connect();
    c.batch_execute(
        "INSERT INTO jobs.waits (run_id, step_id, kind, event, match_path, match_value)
         SELECT gen_random_uuid(), 'w', 'event', 'scale/awaited', '{data,key}', to_jsonb('key-' || i)
         FROM generate_series(1, 100000) i;
         INSERT INTO jobs.wait_paths VALUES ('scale/awaited', '{data,key}');
         ANALYZE jobs.waits;",
    )
    .unwrap();
    // (sequential scans, index scans, rows fetched through indexes) of jobs.waits
    let reads = |c: &mut Client| -> (i64, i64, i64) {
        c.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
        let row = c
            .query_one(
                "SELECT seq_scan, coalesce(idx_scan, 0), coalesce(idx_tup_fetch, 0)
                 FROM pg_stat_user_tables WHERE relid = 'jobs.waits'::regclass",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    let before = reads(&mut c);
    let mut tx = c.transaction().unwrap();
    tx.batch_execute("SELECT jobs.send('scale/awaited', '{\"key\": \"nobody\"}'); SELECT pg_stat_force_next_flush();").unwrap();
    tx.commit().unwrap();
    let mut after = before;
    wait_until(
        "the send's statistics are flushed",
        Duration::from_secs(10),
        || {
            after = reads(&mut c);
            after.1 > before.1
        },
    );
    assert_eq!(after.0, before.0, "no sequential scan of jobs.waits");
    assert!(
        after.2 - before.2 <= 2,
        "the send read {} rows of jobs.waits",
        after.2 - before.2
    );
    c.batch_execute("DELETE FROM jobs.waits WHERE event = 'scale/awaited'; DELETE FROM jobs.wait_paths WHERE event = 'scale/awaited';")
        .unwrap();
}
