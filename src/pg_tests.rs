//! `#[pg_test]`: the SQL API inside one backend (definitions and bad input).
//! Behaviour with real workers is tested end to end in `pg_test/`.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// Runs `sql`; returns "ok" or "SQLSTATE: message".
    fn attempt(sql: &str) -> String {
        if Spi::get_one::<bool>("SELECT to_regprocedure('pg_temp.attempt(text)') IS NULL").unwrap()
            == Some(true)
        {
            Spi::run(
                "CREATE FUNCTION pg_temp.attempt(sql text) RETURNS text LANGUAGE plpgsql AS $$
                 BEGIN EXECUTE sql; RETURN 'ok';
                 EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$",
            )
            .unwrap();
        }
        Spi::get_one_with_args::<String>("SELECT pg_temp.attempt($1)", &[sql.into()])
            .unwrap()
            .unwrap()
    }

    fn count(sql: &str) -> i64 {
        Spi::get_one::<i64>(sql).unwrap().unwrap()
    }

    fn stored() -> (i64, i64, i64) {
        (
            count("SELECT count(*) FROM jobs.events"),
            count("SELECT count(*) FROM jobs.runs"),
            count("SELECT count(*) FROM jobs.queue"),
        )
    }

    fn expect_error(sql: &str, sqlstate: &str, words: &[&str]) {
        let before = stored();
        let functions = count("SELECT count(*) FROM jobs.functions");
        let got = attempt(sql);
        assert!(
            got.starts_with(&format!("{sqlstate}: ")),
            "{sql}\n  expected SQLSTATE {sqlstate}, got: {got}"
        );
        for word in words {
            assert!(
                got.contains(word),
                "{sql}\n  expected the error to mention {word:?}, got: {got}"
            );
        }
        assert_eq!(stored(), before, "{sql} stored something");
        assert_eq!(
            count("SELECT count(*) FROM jobs.functions"),
            functions,
            "{sql} changed functions"
        );
    }

    fn setup_handler() {
        Spi::run(
            "CREATE FUNCTION public.handler(ctx jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT ctx'",
        )
        .unwrap();
    }

    #[pg_test]
    fn send_stores_the_event_and_starts_nothing_without_subscribers() {
        let id = Spi::get_one::<pgrx::Uuid>(
            "SELECT jobs.send('app/hello.world', '{\"name\": \"Ada\"}')",
        )
        .unwrap()
        .unwrap();
        let name = Spi::get_one_with_args::<String>(
            "SELECT data->>'name' FROM jobs.events WHERE id = $1",
            &[id.into()],
        );
        assert_eq!(name.unwrap().as_deref(), Some("Ada"));
        assert_eq!(stored(), (1, 0, 0));
        Spi::run("SELECT jobs.send('app/no.data')").unwrap();
        assert_eq!(
            count("SELECT count(*) FROM jobs.events WHERE data = '{}'"),
            1
        );
    }

    #[pg_test]
    fn send_fans_out_by_name_and_wildcard_and_filters_with_if() {
        setup_handler();
        Spi::run(
            "SELECT jobs.create_function('exact', 'handler(jsonb)', '{\"event\": \"app/user.created\"}');
             SELECT jobs.create_function('wild', 'handler(jsonb)', '{\"event\": \"app/user.*\"}');
             SELECT jobs.create_function('all-app', 'handler(jsonb)', '{\"event\": [\"app/*\", \"app/user.*\"]}');
             SELECT jobs.create_function('vip', 'handler(jsonb)',
                 '{\"event\": \"app/user.created\", \"if\": \"event.data.plan == ''pro'' && event.data.seats >= 5\"}');
             SELECT jobs.create_function('other', 'handler(jsonb)', '{\"event\": \"app/order.created\"}');",
        )
        .unwrap();
        Spi::run("SELECT jobs.send('app/user.created', '{\"plan\": \"free\", \"seats\": 9}')")
            .unwrap();
        let started = |fid: &str| {
            count(&format!(
                "SELECT count(*) FROM jobs.runs WHERE function_id = '{fid}'"
            ))
        };
        assert_eq!(
            (
                started("exact"),
                started("wild"),
                started("all-app"),
                started("vip"),
                started("other")
            ),
            (1, 1, 1, 0, 0)
        );
        Spi::run("SELECT jobs.send('app/user.created', '{\"plan\": \"pro\", \"seats\": 5}')")
            .unwrap();
        assert_eq!(started("vip"), 1);
        assert_eq!(
            count("SELECT count(*) FROM jobs.queue"),
            count("SELECT count(*) FROM jobs.runs")
        );
        assert_eq!(
            count("SELECT count(*) FROM jobs.runs WHERE status = 'queued' AND attempt = 0"),
            7
        );
    }

    #[pg_test]
    fn batch_send_is_all_or_nothing() {
        let ids = Spi::get_one::<Vec<pgrx::Uuid>>(
            "SELECT jobs.send('[{\"name\": \"app/a\", \"data\": {\"n\": 1}}, {\"name\": \"app/b\", \"id\": \"k1\", \"ts\": \"2030-01-01T00:00:00Z\"}]'::jsonb)",
        )
        .unwrap()
        .unwrap();
        assert_eq!(ids.len(), 2);
        assert_eq!(count("SELECT count(*) FROM jobs.events WHERE ts = '2030-01-01T00:00:00Z' AND dedup_id = 'k1'"), 1);
        expect_error(
            "SELECT jobs.send('[{\"name\": \"app/ok\"}, {\"name\": \"jobs/x\"}]'::jsonb)",
            "22023",
            &["events[1].name", "jobs/"],
        );
        expect_error(
            "SELECT jobs.send('[{\"name\": \"app/ok\"}, {\"data\": {}}]'::jsonb)",
            "22004",
            &["events[1].name"],
        );
        expect_error(
            "SELECT jobs.send('[{\"name\": \"app/ok\", \"data\": [1]}]'::jsonb)",
            "22023",
            &["events[0].data"],
        );
        expect_error(
            "SELECT jobs.send('[{\"name\": \"app/ok\", \"colour\": 1}]'::jsonb)",
            "22023",
            &["events[0].colour"],
        );
        expect_error(
            "SELECT jobs.send('[{\"name\": \"app/ok\", \"ts\": \"yesterday\"}]'::jsonb)",
            "22023",
            &["events[0].ts"],
        );
        expect_error("SELECT jobs.send('\"app/x\"'::jsonb)", "22023", &["array"]);
    }

    #[pg_test]
    fn bad_events_are_refused_and_store_nothing() {
        expect_error("SELECT jobs.send('')", "22023", &["name \"\"", "empty"]);
        expect_error(
            &format!("SELECT jobs.send('{}')", "x".repeat(257)),
            "22023",
            &["256"],
        );
        expect_error(
            "SELECT jobs.send('jobs/function.failed')",
            "22023",
            &["jobs/function.failed", "reserved"],
        );
        expect_error("SELECT jobs.send(NULL::text)", "22004", &["name"]);
        expect_error(
            "SELECT jobs.send('app/x', '[1, 2]')",
            "22023",
            &["data", "app/x", "object"],
        );
        expect_error(
            "SELECT jobs.send('app/x', '42')",
            "22023",
            &["data", "object"],
        );
        expect_error("SELECT jobs.send('app/x', NULL)", "22004", &["data"]);
        expect_error("SELECT jobs.send('app/x', '{}', '')", "22023", &["id"]);
        expect_error(
            "SELECT jobs.send('[{\"name\": \"app/a\"}]')",
            "22023",
            &["jsonb"],
        );
        Spi::run("SET LOCAL jobs.max_event_size = '1kB'").unwrap();
        expect_error(
            &format!(
                "SELECT jobs.send('app/big', jsonb_build_object('blob', '{}'))",
                "x".repeat(2000)
            ),
            "54000",
            &["app/big", "jobs.max_event_size", "1 kB"],
        );
        Spi::run(&format!(
            "SELECT jobs.send('app/small', jsonb_build_object('blob', '{}'))",
            "x".repeat(500)
        ))
        .unwrap();
    }

    #[pg_test]
    fn duplicate_ids_are_recorded_but_start_nothing() {
        setup_handler();
        Spi::run(
            "SELECT jobs.create_function('f', 'handler(jsonb)', '{\"event\": \"app/order.paid\"}')",
        )
        .unwrap();
        let first =
            Spi::get_one::<pgrx::Uuid>("SELECT jobs.send('app/order.paid', '{}', 'order-1')")
                .unwrap()
                .unwrap();
        Spi::run("SELECT jobs.send('app/order.paid', '{}', 'order-1')").unwrap();
        assert_eq!(count("SELECT count(*) FROM jobs.events"), 2);
        assert_eq!(count("SELECT count(*) FROM jobs.runs"), 1);
        let duplicate_of = Spi::get_one::<pgrx::Uuid>(
            "SELECT duplicate_of FROM jobs.events WHERE duplicate_of IS NOT NULL",
        )
        .unwrap();
        assert_eq!(duplicate_of, Some(first));
        // Past the 24-hour window the id starts runs again.
        Spi::run("UPDATE jobs.dedup_ids SET seen_at = seen_at - interval '25 hours'").unwrap();
        Spi::run("SELECT jobs.send('app/order.paid', '{}', 'order-1')").unwrap();
        assert_eq!(count("SELECT count(*) FROM jobs.runs"), 2);
    }

    #[pg_test]
    fn future_ts_delays_the_run() {
        setup_handler();
        Spi::run(
            "SELECT jobs.create_function('f', 'handler(jsonb)', '{\"event\": \"app/later\"}')",
        )
        .unwrap();
        Spi::run("SELECT jobs.send('app/later', '{}', NULL, now() + interval '1 hour')").unwrap();
        assert_eq!(
            count("SELECT count(*) FROM jobs.queue WHERE due_at = now() + interval '1 hour'"),
            1
        );
    }

    #[pg_test]
    fn bad_definitions_are_refused_and_change_nothing() {
        setup_handler();
        Spi::run("CREATE FUNCTION public.wrong(x text) RETURNS text LANGUAGE sql AS 'SELECT x'")
            .unwrap();
        Spi::run(
            "CREATE FUNCTION public.many(ctx jsonb) RETURNS SETOF int LANGUAGE sql AS 'SELECT 1'",
        )
        .unwrap();
        expect_error(
            "SELECT jobs.create_function('f', 'nope(jsonb)')",
            "42883",
            &["nope"],
        );
        expect_error(
            "SELECT jobs.create_function('f', 'wrong(text)')",
            "42P13",
            &["public.wrong(text)", "jsonb"],
        );
        expect_error(
            "SELECT jobs.create_function('f', 'many(jsonb)')",
            "42P13",
            &["public.many(jsonb)"],
        );
        expect_error(
            "SELECT jobs.create_function('', 'handler(jsonb)')",
            "22023",
            &["function id"],
        );
        expect_error(
            "SELECT jobs.create_function('f', 'handler(jsonb)', '{\"retires\": 3}')",
            "22023",
            &["\"retires\"", "unknown key"],
        );
        expect_error(
            "SELECT jobs.create_function('f', 'handler(jsonb)', '{\"retries\": 99}')",
            "22023",
            &["\"retries\"", "99"],
        );
        expect_error(
            "SELECT jobs.create_function('f', 'handler(jsonb)', '{\"retries\": {\"attempts\": 3, \"backoff\": {\"type\": \"sometimes\"}}}')",
            "22023",
            &["retries.backoff.type", "sometimes"],
        );
        expect_error(
            "SELECT jobs.create_function('f', 'handler(jsonb)', '{\"max_runtime\": \"ages\"}')",
            "22023",
            &["max_runtime", "ages"],
        );
        expect_error(
            "SELECT jobs.create_function('f', 'handler(jsonb)', '{\"event\": \"a/b\", \"if\": \"event.data.x > 1 && usr.id == 2\"}')",
            "22023",
            &["\"if\"", "usr", "position 21"],
        );
        expect_error(
            "SELECT jobs.create_function('f', 'handler(jsonb)', '{\"event\": \"app/user*\"}')",
            "22023",
            &["\"event\"", "app/user*"],
        );
        expect_error(
            "SELECT jobs.create_function('f', 'handler(jsonb)', '{\"debounce\": {\"period\": \"5s\"}}')",
            "0A000",
            &["\"debounce\"", "not supported yet"],
        );
        expect_error(
            "SELECT jobs.create_function('f', 'handler(jsonb)', '{\"concurrency\": 5}')",
            "0A000",
            &["concurrency"],
        );
        assert_eq!(count("SELECT count(*) FROM jobs.functions"), 0);
    }

    #[pg_test]
    fn create_function_upserts_by_id() {
        setup_handler();
        Spi::run("SELECT jobs.create_function('f', 'handler(jsonb)', '{\"event\": \"app/a\", \"retries\": 2}')").unwrap();
        Spi::run("SELECT jobs.create_function('f', 'handler(jsonb)', '{\"event\": [\"app/b\", \"app/c.*\"], \"maxRuntime\": \"30s\"}')").unwrap();
        assert_eq!(count("SELECT count(*) FROM jobs.functions"), 1);
        assert_eq!(count("SELECT max_attempts FROM jobs.functions"), 5);
        assert_eq!(
            count("SELECT extract(epoch FROM max_runtime)::int8 FROM jobs.functions"),
            30
        );
        assert_eq!(
            count("SELECT count(*) FROM jobs.triggers WHERE function_id = 'f'"),
            2
        );
        // Again with the same events and one more (a migration run twice).
        Spi::run("SELECT jobs.create_function('f', 'handler(jsonb)', '{\"event\": [\"app/b\", \"app/c.*\", \"app/d\"]}')").unwrap();
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT string_agg(event || CASE WHEN wildcard THEN '*' ELSE '' END, ',' ORDER BY event) FROM jobs.triggers"
            )
            .unwrap()
            .as_deref(),
            Some("app/b,app/c.*,app/d")
        );
        assert_eq!(
            Spi::get_one::<String>("SELECT handler FROM jobs.functions")
                .unwrap()
                .as_deref(),
            Some("public.handler(jsonb)")
        );
    }

    #[pg_test]
    fn unknown_function_ids_are_errors() {
        for call in [
            "pause_function",
            "resume_function",
            "delete_function",
            "invoke_function",
        ] {
            expect_error(
                &format!("SELECT jobs.{call}('ghost')"),
                "42704",
                &["\"ghost\"", "does not exist"],
            );
        }
    }

    #[pg_test]
    fn pause_holds_runs_and_resume_releases_them() {
        setup_handler();
        Spi::run("SELECT jobs.create_function('f', 'handler(jsonb)', '{\"event\": \"app/p\"}')")
            .unwrap();
        Spi::run(
            "SELECT jobs.send('app/p'); SELECT jobs.pause_function('f'); SELECT jobs.send('app/p')",
        )
        .unwrap();
        assert_eq!(count("SELECT count(*) FROM jobs.queue WHERE held"), 2);
        Spi::run("SELECT jobs.resume_function('f')").unwrap();
        assert_eq!(count("SELECT count(*) FROM jobs.queue WHERE NOT held"), 2);
    }

    #[pg_test]
    fn invoke_starts_one_run_even_without_triggers() {
        setup_handler();
        Spi::run("SELECT jobs.create_function('f', 'handler(jsonb)')").unwrap();
        let run = Spi::get_one::<pgrx::Uuid>("SELECT jobs.invoke_function('f', '{\"x\": 1}')")
            .unwrap()
            .unwrap();
        let event = Spi::get_one_with_args::<String>(
            "SELECT e.name FROM jobs.runs r JOIN jobs.events e ON e.id = r.event_id WHERE r.id = $1",
            &[run.into()],
        );
        assert_eq!(event.unwrap().as_deref(), Some("jobs/function.invoked"));
        expect_error(
            "SELECT jobs.invoke_function('f', '[]')",
            "22023",
            &["\"f\"", "object"],
        );
    }

    #[pg_test]
    fn delete_cancels_queued_runs() {
        setup_handler();
        Spi::run("SELECT jobs.create_function('f', 'handler(jsonb)', '{\"event\": \"app/d\"}'); SELECT jobs.send('app/d')").unwrap();
        Spi::run("SELECT jobs.delete_function('f')").unwrap();
        // The executors finish the cancellation (there are none in this database).
        assert_eq!(
            count(
                "SELECT count(*) FROM jobs.queue WHERE cancelled->>'message' = 'function deleted'"
            ),
            1
        );
        assert_eq!(count("SELECT count(*) FROM jobs.triggers"), 0);
    }

    #[pg_test]
    fn other_roles_cannot_redefine_a_function() {
        setup_handler();
        Spi::run("SELECT jobs.create_function('f', 'handler(jsonb)', '{\"event\": \"app/x\"}')")
            .unwrap();
        attempt("SELECT 1");
        Spi::run(
            "CREATE ROLE jobs_intruder;
             GRANT USAGE ON SCHEMA jobs TO jobs_intruder;
             GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA jobs TO jobs_intruder;
             GRANT EXECUTE ON FUNCTION public.handler(jsonb) TO jobs_intruder;
             SET LOCAL ROLE jobs_intruder",
        )
        .unwrap();
        for call in [
            "pause_function('f')",
            "delete_function('f')",
            "create_function('f', 'public.handler(jsonb)')",
        ] {
            let got = attempt(&format!("SELECT jobs.{call}"));
            assert!(
                got.starts_with("42501: ") && got.contains("\"f\""),
                "{call}: {got}"
            );
        }
        // The role may still send events (it was granted jobs.send).
        assert_eq!(attempt("SELECT jobs.send('app/x')"), "ok");
        Spi::run("RESET ROLE").unwrap();
        assert_eq!(count("SELECT count(*) FROM jobs.functions WHERE NOT paused AND config = '{\"event\": \"app/x\"}'"), 1);
        assert_eq!(
            count("SELECT count(*) FROM jobs.runs WHERE function_id = 'f'"),
            1
        );
    }

    #[pg_test]
    fn step_functions_work_only_inside_handlers() {
        for (call, name) in [
            ("jobs.step('a', 'SELECT 1')", "jobs.step"),
            ("jobs.sleep('a', '1s')", "jobs.sleep"),
            ("jobs.sleep_until('a', now())", "jobs.sleep_until"),
            (
                "jobs.parallel(jobs.plan('a', 'SELECT 1'), jobs.plan('b', 'SELECT 2'))",
                "jobs.parallel",
            ),
        ] {
            expect_error(&format!("SELECT {call}"), "55000", &[name, "handler"]);
        }
        expect_error("SELECT jobs.step(NULL, 'SELECT 1')", "22004", &["id"]);
        expect_error(
            "SELECT jobs.non_retriable('bad input')",
            "JB002",
            &["bad input"],
        );
        expect_error("SELECT jobs.retry_after('busy', '30s')", "JB003", &["busy"]);
    }

    #[pg_test]
    fn bad_waits_invokes_and_cancellations_are_refused() {
        setup_handler();
        expect_error(
            "SELECT jobs.wait_for_event('w', 'app/x', NULL)",
            "22004",
            &["timeout"],
        );
        expect_error(
            "SELECT jobs.wait_for_event('w', 'app/x', '0s')",
            "22023",
            &["timeout", "longer than zero"],
        );
        expect_error(
            "SELECT jobs.wait_for_event('w', '', '1h')",
            "22023",
            &["event"],
        );
        expect_error(
            "SELECT jobs.wait_for_event('w', 'app/x', '1h', match => 'data..id')",
            "22023",
            &["match", "data..id"],
        );
        expect_error(
            "SELECT jobs.wait_for_event('w', 'app/x', '1h', condition => 'async.data.x == evnt.data.x')",
            "22023",
            &["condition", "evnt", "position 17"],
        );
        expect_error(
            "SELECT jobs.wait_for_event('w', 'app/x', '1h')",
            "55000",
            &["jobs.wait_for_event", "handler"],
        );
        expect_error(
            "SELECT jobs.invoke('i', 'f', '[1]')",
            "22023",
            &["jobs.invoke", "object"],
        );
        expect_error(
            "SELECT jobs.invoke('i', 'f')",
            "55000",
            &["jobs.invoke", "handler"],
        );
        expect_error(
            "SELECT jobs.create_function('f', 'handler(jsonb)', '{\"cancel_on\": {\"event\": \"app/x\", \"match\": \"data id\"}}')",
            "22023",
            &["cancel_on[0].match"],
        );
        expect_error(
            "SELECT jobs.create_function('f', 'handler(jsonb)', '{\"cancel_on\": [{\"event\": \"app/x\", \"if\": \"event.x ==\"}]}')",
            "22023",
            &["cancel_on[0].if", "end of the expression"],
        );
        expect_error("SELECT jobs.create_function('f', 'handler(jsonb)', '{\"on_failure\": \"nope(jsonb)\"}')", "42883", &["on_failure", "nope(jsonb)"]);
        expect_error(
            "SELECT jobs.cancel_run(gen_random_uuid())",
            "42704",
            &["does not exist"],
        );
        assert_eq!(count("SELECT count(*) FROM jobs.functions"), 0);
    }

    #[pg_test]
    fn on_failure_defines_a_failure_function_that_follows_its_function() {
        setup_handler();
        Spi::run("SELECT jobs.create_function('f', 'handler(jsonb)', '{\"onFailure\": \"handler(jsonb)\", \"cancel_on\": {\"event\": \"app/stop\", \"match\": \"data.id\"}}')").unwrap();
        assert_eq!(
            count(
                "SELECT count(*) FROM jobs.functions WHERE id = 'f-failure' AND failure_of = 'f'"
            ),
            1
        );
        assert_eq!(count("SELECT count(*) FROM jobs.triggers WHERE function_id = 'f-failure' AND event = 'jobs/function.failed'"), 1);
        assert_eq!(count("SELECT count(*) FROM jobs.wait_paths WHERE event = 'app/stop' AND match_path = '{data,id}'"), 1);
        Spi::run("SELECT jobs.create_function('f', 'handler(jsonb)')").unwrap();
        assert_eq!(
            count("SELECT count(*) FROM jobs.functions WHERE id = 'f-failure'"),
            0
        );
        Spi::run("SELECT jobs.create_function('g-failure', 'handler(jsonb)')").unwrap();
        expect_error("SELECT jobs.create_function('g', 'handler(jsonb)', '{\"on_failure\": \"handler(jsonb)\"}')", "42710", &["g-failure"]);
    }

    #[pg_test]
    fn schedules_follow_the_definition() {
        setup_handler();
        Spi::run(
            "SELECT jobs.create_function('tokyo', 'handler(jsonb)', '{\"cron\": [\"0 9 * * *\", \"TZ=Europe/Berlin 30 2 * * *\"], \"timezone\": \"Asia/Tokyo\"}')",
        )
        .unwrap();
        assert_eq!(
            count("SELECT count(*) FROM jobs.schedules WHERE function_id = 'tokyo' AND next_fire_at > now() AND next_fire_at <= now() + interval '1 day'"),
            2
        );
        // 09:00 in Tokyo is 00:00 UTC.
        assert_eq!(
            count("SELECT count(*) FROM jobs.schedules WHERE expression = '0 9 * * *' AND timezone = 'Asia/Tokyo'
                   AND extract(hour FROM next_fire_at AT TIME ZONE 'UTC') = 0 AND extract(minute FROM next_fire_at) = 0"),
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM jobs.schedules WHERE timezone = 'Europe/Berlin'"),
            1
        );
        Spi::run("UPDATE jobs.cron_schedules SET next_fire_at = '2099-01-01' WHERE expression = '0 9 * * *'").unwrap();
        Spi::run("SELECT jobs.create_function('tokyo', 'handler(jsonb)', '{\"cron\": [\"0 9 * * *\", \"@hourly\"], \"timezone\": \"Asia/Tokyo\"}')").unwrap();
        assert_eq!(
            count("SELECT count(*) FROM jobs.schedules WHERE function_id = 'tokyo' AND (expression = '0 9 * * *' AND next_fire_at = '2099-01-01' OR expression = '@hourly')"),
            2,
            "an unchanged expression keeps its next fire time; a removed one goes"
        );
        Spi::run("SELECT jobs.delete_function('tokyo')").unwrap();
        assert_eq!(count("SELECT count(*) FROM jobs.schedules"), 0);
        // @reboot has no instant of its own: due never, fired by the launcher at start.
        Spi::run("SELECT jobs.create_function('on-start', 'handler(jsonb)', '{\"cron\": [\"@reboot\", \"0 3 * * *\"]}')").unwrap();
        assert_eq!(
            count("SELECT count(*) FROM jobs.schedules WHERE function_id = 'on-start' AND (expression = '@reboot' AND next_fire_at = 'infinity' OR expression = '0 3 * * *' AND next_fire_at <= now() + interval '1 day')"),
            2
        );
        Spi::run("SELECT jobs.delete_function('on-start')").unwrap();
    }

    #[pg_test]
    fn bad_schedules_are_refused_and_change_nothing() {
        setup_handler();
        expect_error(
            "SELECT jobs.create_function('f', 'handler(jsonb)', '{\"cron\": \"0 25 * * *\"}')",
            "22023",
            &["\"cron\"", "0 25 * * *", "hour 25"],
        );
        expect_error("SELECT jobs.create_function('f', 'handler(jsonb)', '{\"cron\": \"0 9 * * *\", \"timezone\": \"Asia/Tokio\"}')", "22023", &["timezone", "Asia/Tokio"]);
        expect_error("SELECT jobs.create_function('f', 'handler(jsonb)', '{\"cron\": \"TZ=Nowhere 0 9 * * *\"}')", "22023", &["Nowhere"]);
        expect_error(
            "SELECT jobs.create_function('f', 'handler(jsonb)', '{\"cron\": \"@fortnightly\"}')",
            "22023",
            &["@fortnightly", "descriptor"],
        );
        expect_error(
            "SELECT jobs.create_function('f', 'handler(jsonb)', '{\"cron\": [\"0 9 * * *\", \"*/60 * * * *\"]}')",
            "22023",
            &["\"cron\"", "*/60 * * * *", "minute step must be a number from 1 to 59"],
        );
        expect_error(
            "SELECT jobs.create_function('f', 'handler(jsonb)', '{\"cron\": \"0 0 31 2 *\"}')",
            "22023",
            &["0 0 31 2 *", "never fires"],
        );
        expect_error(
            "SELECT jobs.create_function('f', 'handler(jsonb)', '{\"timezone\": \"UTC\"}')",
            "22023",
            &["timezone", "cron"],
        );
        assert_eq!(count("SELECT count(*) FROM jobs.schedules"), 0);
    }

    #[pg_test]
    fn event_schemas_refuse_bad_data_and_store_nothing() {
        setup_handler();
        Spi::run(
            "SELECT jobs.define_event('app/user.created', '{\"type\": \"object\", \"required\": [\"userId\", \"email\"],
               \"properties\": {\"userId\": {\"type\": \"string\"}, \"email\": {\"type\": \"string\", \"format\": \"email\"}}}')",
        )
        .unwrap();
        Spi::run("SELECT jobs.send('app/user.created', '{\"userId\": \"u1\", \"email\": \"ada@example.com\"}')").unwrap();
        expect_error(
            "SELECT jobs.send('app/user.created', '{\"userId\": 42, \"email\": \"not-an-email\"}')",
            "22023",
            &[
                "app/user.created",
                "does not match its schema",
                "data/email",
                "format",
                "data/userId",
                "type",
            ],
        );
        expect_error(
            "SELECT jobs.send('[{\"name\": \"app/other\"}, {\"name\": \"app/user.created\", \"data\": {\"userId\": \"u2\"}}]'::jsonb)",
            "22023",
            &["events[1].data", "\"email\" is a required property"],
        );
        expect_error(
            "SELECT jobs.define_event('app/x', '{\"type\": \"objekt\"}')",
            "22023",
            &["app/x", "not a valid JSON Schema"],
        );
        expect_error(
            "SELECT jobs.define_event('jobs/x', '{}')",
            "22023",
            &["reserved"],
        );
        expect_error(
            "SELECT jobs.define_event('app/x', '[]')",
            "22023",
            &["JSON Schema object"],
        );
        Spi::run("SELECT jobs.define_event('app/user.created', NULL)").unwrap();
        Spi::run("SELECT jobs.send('app/user.created', '{\"anything\": true}')").unwrap();
        assert_eq!(
            count("SELECT count(*) FROM jobs.events WHERE name = 'app/user.created'"),
            2
        );
    }

    #[pg_test]
    fn explain_event_says_why_each_function_did_or_did_not_run() {
        setup_handler();
        Spi::run(
            "SELECT jobs.create_function('exact', 'handler(jsonb)', '{\"event\": \"app/order.placed\"}');
             SELECT jobs.create_function('wild', 'handler(jsonb)', '{\"event\": \"app/order.*\"}');
             SELECT jobs.create_function('other', 'handler(jsonb)', '{\"event\": [\"app/user.created\", \"app/user.deleted\"]}');
             SELECT jobs.create_function('big', 'handler(jsonb)', '{\"event\": \"app/order.placed\", \"if\": \"event.data.total > 100\"}');
             SELECT jobs.create_function('invoked-only', 'handler(jsonb)');
             SELECT jobs.create_function('held', 'handler(jsonb)', '{\"event\": \"app/order.placed\"}');
             SELECT jobs.pause_function('held');",
        )
        .unwrap();
        let event = Spi::get_one::<pgrx::Uuid>(
            "SELECT jobs.send('app/order.placed', '{\"total\": 20}', 'order-1')",
        )
        .unwrap()
        .unwrap();
        let reasons = |event: pgrx::Uuid| -> Vec<(String, bool, String)> {
            Spi::connect(|c| {
                c.select(
                    "SELECT function_id, matched, reason FROM jobs.explain_event($1)",
                    None,
                    &[event.into()],
                )
                .unwrap()
                .map(|r| {
                    (
                        r.get(1).unwrap().unwrap(),
                        r.get(2).unwrap().unwrap(),
                        r.get(3).unwrap().unwrap(),
                    )
                })
                .collect()
            })
        };
        let got = reasons(event);
        let find = |id: &str| got.iter().find(|r| r.0 == id).cloned().unwrap();
        assert_eq!(find("exact"), ("exact".into(), true, "started".into()));
        assert_eq!(find("wild"), ("wild".into(), true, "started".into()));
        assert_eq!(find("held").2, "started; held while the function is paused");
        assert_eq!(
            find("big"),
            (
                "big".into(),
                false,
                "its if filter is false: event.data.total > 100".into()
            )
        );
        assert_eq!(
            find("other").2,
            "listens to app/user.created, app/user.deleted, not to app/order.placed"
        );
        assert_eq!(
            find("invoked-only").2,
            "no event trigger (it runs when invoked or on its schedule)"
        );
        let again = Spi::get_one::<pgrx::Uuid>(
            "SELECT jobs.send('app/order.placed', '{\"total\": 20}', 'order-1')",
        )
        .unwrap()
        .unwrap();
        assert!(reasons(again)
            .iter()
            .all(|r| !r.1 && r.2.starts_with("deduplicated: event ")));
        expect_error(
            "SELECT * FROM jobs.explain_event(gen_random_uuid())",
            "42704",
            &["does not exist"],
        );
    }
}
