//! Without shared_preload_libraries the API works, says that nothing will run, and nothing runs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pg_jobs_e2e::*;

#[test]
fn the_api_works_with_a_warning_and_nothing_runs() {
    let cluster = Cluster::start("not_preloaded", &[]);
    let warnings = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = warnings.clone();
    let mut c = postgres::Config::new()
        .host("127.0.0.1")
        .port(cluster.port)
        .user("postgres")
        .dbname("postgres")
        .notice_callback(move |notice| seen.lock().unwrap().push(notice.message().to_string()))
        .connect(NoTls)
        .unwrap();
    c.batch_execute("CREATE EXTENSION pg_jobs").unwrap();
    assert!(
        warnings
            .lock()
            .unwrap()
            .iter()
            .any(|w| w.contains("not in shared_preload_libraries")),
        "{:?}",
        warnings.lock().unwrap()
    );
    warnings.lock().unwrap().clear();
    c.batch_execute(
        "CREATE FUNCTION noop(ctx jsonb) RETURNS void LANGUAGE sql AS '';
         SELECT jobs.create_function('noop', 'noop(jsonb)', '{\"event\": \"test/noop\"}');
         SELECT jobs.send('test/noop');",
    )
    .unwrap();
    assert_eq!(
        warnings
            .lock()
            .unwrap()
            .iter()
            .filter(|w| w.contains("nothing will run"))
            .count(),
        2,
        "create_function and send each warn"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(statuses(&mut c, "noop"), ["queued"]);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'pg_jobs%'"
        ),
        0
    );
}
