//! Upgrade from the released 0.1.0: a server runs 0.1.0's library with runs
//! in every state, stops, gets this version's library, starts (its workers
//! wait for the extension's update), and `ALTER EXTENSION pg_jobs UPDATE`
//! keeps every row, makes the catalog a fresh install's, and the runs go on.
//!
//! The server runs from a private copy of the PostgreSQL installation
//! (PostgreSQL finds its libraries and extension files relative to its own
//! program), so that the system one, which other tests use, keeps this
//! version's build (`make install`) throughout. 0.1.0's package comes from
//! `scripts/released.sh 0.1.0` (`make e2e-test` runs it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pg_jobs_e2e::*;

const RELEASED: &str = "0.1.0";

fn pg_config(what: &str) -> PathBuf {
    let pg_config = std::env::var("PG_CONFIG")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".into());
    let out = Command::new(&pg_config)
        .arg(what)
        .output()
        .expect("running pg_config");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

/// This version, as Cargo.toml gives it (and so the library's and the control file's).
fn current_version() -> String {
    let manifest = std::fs::read_to_string(workspace().join("Cargo.toml")).unwrap();
    let package = &manifest[manifest.find("[package]").expect("[package]")..];
    let line = package
        .lines()
        .find(|l| l.starts_with("version"))
        .expect("version");
    line.split('"').nth(1).unwrap().to_string()
}

/// A copy of the system PostgreSQL whose pg_jobs files are its own: the
/// programs are copied (PostgreSQL resolves symbolic links to find its
/// directories), every other library and extension file is a link.
struct Installation {
    bin_dir: PathBuf,
    pkglib_dir: PathBuf,
    extension_dir: PathBuf,
}

fn is_pg_jobs(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with("pg_jobs")
}

fn link_all_but_pg_jobs(from: &Path, to: &Path, except: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if !is_pg_jobs(&name) && !except.iter().any(|e| name == *e) {
            std::os::unix::fs::symlink(entry.path(), to.join(&name)).unwrap();
        }
    }
}

impl Installation {
    fn new(name: &str) -> Installation {
        let root = clusters_dir().join(name);
        let _ = std::fs::remove_dir_all(&root);
        let within = |dir: &Path| root.join(dir.strip_prefix("/").unwrap());
        let (bin_dir, pkglib_dir, share_dir) = (
            pg_config("--bindir"),
            pg_config("--pkglibdir"),
            pg_config("--sharedir"),
        );
        let installation = Installation {
            bin_dir: within(&bin_dir),
            pkglib_dir: within(&pkglib_dir),
            extension_dir: within(&share_dir).join("extension"),
        };
        std::fs::create_dir_all(&installation.bin_dir).unwrap();
        for program in ["postgres", "pg_ctl", "initdb"] {
            std::fs::copy(bin_dir.join(program), installation.bin_dir.join(program)).unwrap();
        }
        link_all_but_pg_jobs(&pkglib_dir, &installation.pkglib_dir, &[]);
        link_all_but_pg_jobs(&share_dir, &within(&share_dir), &["extension"]);
        link_all_but_pg_jobs(
            &share_dir.join("extension"),
            &installation.extension_dir,
            &[],
        );
        std::fs::set_permissions(
            clusters_dir(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        installation
    }

    /// Installs the pg_jobs library and extension files found in these
    /// directories, over those there, as `make install` would.
    fn install_pg_jobs(&self, pkglib_dir: &Path, extension_dir: &Path) {
        std::fs::copy(
            pkglib_dir.join("pg_jobs.so"),
            self.pkglib_dir.join("pg_jobs.so"),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", pkglib_dir.join("pg_jobs.so").display()));
        for entry in std::fs::read_dir(extension_dir).unwrap() {
            let entry = entry.unwrap();
            if is_pg_jobs(&entry.file_name()) {
                std::fs::copy(entry.path(), self.extension_dir.join(entry.file_name())).unwrap();
            }
        }
    }
}

/// The released package, built by `scripts/released.sh`.
fn released_package() -> PathBuf {
    let package = workspace()
        .join("target/released")
        .join(RELEASED)
        .join("package");
    assert!(
        workspace()
            .join("target/released")
            .join(RELEASED)
            .join("built")
            .exists(),
        "{RELEASED}'s package is missing: run scripts/released.sh {RELEASED} (make e2e-test does)"
    );
    package
}

fn within(package: &Path, dir: &Path) -> PathBuf {
    package.join(dir.strip_prefix("/").unwrap())
}

/// Handlers and the functions of every state, written with 0.1.0's API.
const SETUP: &str = r#"
CREATE SCHEMA app;
CREATE TABLE app.gate (open bool NOT NULL);
INSERT INTO app.gate VALUES (false);
CREATE FUNCTION app.check_gate() RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    IF NOT (SELECT open FROM app.gate) THEN
        RAISE EXCEPTION 'the gate is closed';
    END IF;
    RETURN 'through';
END $$;
CREATE FUNCTION app.quick(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    RETURN jsonb_build_object(
        'first', jobs.step('first', 'SELECT $1->''n''', ctx->'event'->'data'),
        'both', jobs.parallel(jobs.plan('a', 'SELECT 1'), jobs.plan('b', 'SELECT 2')));
END $$;
CREATE FUNCTION app.fails(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'broken on purpose';
END $$;
CREATE FUNCTION app.noted(ctx jsonb) RETURNS text LANGUAGE sql AS $$ SELECT 'noted' $$;
CREATE FUNCTION app.flaky(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    RETURN jobs.step('flaky', 'SELECT app.check_gate()');
END $$;
CREATE FUNCTION app.napper(ctx jsonb) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM jobs.step('before', 'SELECT 1');
    PERFORM jobs.sleep_until('nap', (ctx->'event'->'data'->>'until')::timestamptz);
    PERFORM jobs.step('after', 'SELECT 2');
    RETURN 'woke';
END $$;
CREATE FUNCTION app.waiter(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    RETURN jobs.wait_for_event('approval', 'upgrade/approved', '7 days',
                               match => 'data.id',
                               condition => 'async.data.ok == true && (async.data[''by''] != "bot" || async.data.n > 4)')->'data';
END $$;
CREATE FUNCTION app.parent(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    RETURN jsonb_build_object('child', jobs.invoke('child', 'upgrade-child', jsonb_build_object('x', 2)));
END $$;
CREATE FUNCTION app.child(ctx jsonb) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    PERFORM jobs.wait_for_event('go', 'upgrade/go', '7 days');
    RETURN (ctx->'event'->'data'->>'x')::int * 21;
END $$;

SELECT jobs.define_event('upgrade/order', '{"type": "object", "required": ["id"]}');
SELECT jobs.create_function('upgrade-completed', 'app.quick(jsonb)', '{"event": "upgrade/quick"}');
SELECT jobs.create_function('upgrade-order', 'app.quick(jsonb)', '{"event": "upgrade/order"}');
SELECT jobs.create_function('upgrade-filtered', 'app.quick(jsonb)',
    '{"event": "upgrade/vip", "if": "event.data.vip == true && event.data[\"n\"] != 3"}');
SELECT jobs.create_function('upgrade-held', 'app.quick(jsonb)', '{"event": "upgrade/held"}');
SELECT jobs.create_function('upgrade-queued', 'app.quick(jsonb)', '{"event": "upgrade/queued"}');
SELECT jobs.create_function('upgrade-failed', 'app.fails(jsonb)',
    '{"event": "upgrade/fail", "retries": 0, "on_failure": "app.noted(jsonb)"}');
SELECT jobs.create_function('upgrade-retrying', 'app.flaky(jsonb)',
    '{"event": "upgrade/flaky", "retries": {"attempts": 21, "backoff": {"type": "fixed", "base": "1s"}}}');
SELECT jobs.create_function('upgrade-long-sleep', 'app.napper(jsonb)', '{"event": "upgrade/long"}');
SELECT jobs.create_function('upgrade-short-sleep', 'app.napper(jsonb)', '{"event": "upgrade/short"}');
SELECT jobs.create_function('upgrade-cancelled', 'app.napper(jsonb)', '{"event": "upgrade/cancelled"}');
SELECT jobs.create_function('upgrade-cancel-on', 'app.napper(jsonb)', '{"event": "upgrade/subscribed",
    "cancel_on": [{"event": "upgrade/renewed", "match": "data.user", "if": "async.data.really == true"},
                  {"event": "upgrade/deleted", "timeout": "30d"}]}');
SELECT jobs.create_function('upgrade-waiting', 'app.waiter(jsonb)', '{"event": "upgrade/order.placed"}');
SELECT jobs.create_function('upgrade-parent', 'app.parent(jsonb)', '{"event": "upgrade/parent"}');
SELECT jobs.create_function('upgrade-child', 'app.child(jsonb)', '{}');
SELECT jobs.create_function('upgrade-cron', 'app.quick(jsonb)',
    '{"cron": ["0 3 1 1 *", "TZ=Europe/Paris 30 4 * * 1"], "timezone": "Asia/Tokyo"}');
"#;

/// Every row of pg_jobs' tables as jsonb, and those of a snapshot of them
/// that no row of their table contains any more (leaving out the columns in
/// `converted`) or whose table's row count changed.
const SNAPSHOTS: &str = "
CREATE FUNCTION app.jobs_rows() RETURNS TABLE (tbl text, content jsonb) LANGUAGE plpgsql AS $$
DECLARE
    t text;
BEGIN
    FOR t IN SELECT relname FROM pg_class WHERE relnamespace = 'jobs'::regnamespace AND relkind = 'r' LOOP
        RETURN QUERY EXECUTE format('SELECT %L::text, to_jsonb(t) FROM jobs.%I t', t, t);
    END LOOP;
END $$;
CREATE TABLE app.snapshot AS SELECT * FROM app.jobs_rows();
CREATE FUNCTION app.lost(converted text[]) RETURNS SETOF text LANGUAGE sql AS $$
    WITH now AS (SELECT * FROM app.jobs_rows())
    SELECT s.tbl || ' ' || s.content::text
    FROM app.snapshot s
    WHERE NOT EXISTS (SELECT FROM now n WHERE n.tbl = s.tbl AND n.content @> (s.content - converted))
    UNION ALL
    SELECT 'the number of rows of ' || tbl
    FROM (SELECT tbl, count(*) FROM app.snapshot GROUP BY tbl) a
    FULL JOIN (SELECT tbl, count(*) FROM now GROUP BY tbl) b USING (tbl)
    WHERE a.count IS DISTINCT FROM b.count
$$;";

fn rows(client: &mut Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

fn one(client: &mut Client, sql: &str) -> String {
    client.query_one(sql, &[]).unwrap().get(0)
}

fn status_of(client: &mut Client, function_id: &str) -> String {
    statuses(client, function_id).join(",")
}

fn wait_for_status(client: &mut Client, function_id: &str, status: &str) {
    wait_until(
        &format!("{function_id} is {status}"),
        Duration::from_secs(60),
        || status_of(client, function_id) == status,
    );
}

fn wait_for_step(client: &mut Client, function_id: &str, step: &str, status: &str) {
    wait_until(
        &format!("step {step} of {function_id} is {status}"),
        Duration::from_secs(60),
        || {
            count(
                client,
                &format!(
                    "SELECT count(*) FROM jobs.steps s JOIN jobs.runs r ON r.id = s.run_id
                     WHERE r.function_id = '{function_id}' AND s.id = '{step}' AND s.status = '{status}'"
                ),
            ) == 1
        },
    );
}

/// Starts runs in every state 0.1.0 knows, with 0.1.0's workers.
fn make_runs(cluster: &Cluster) {
    let mut c = cluster.connect();
    c.batch_execute(SETUP).unwrap();
    c.batch_execute(
        "SELECT jobs.send('upgrade/quick', '{\"n\": 1}', id => 'once');
         SELECT jobs.send('upgrade/quick', '{\"n\": 1}', id => 'once');
         SELECT jobs.send('upgrade/order', '{\"id\": 7, \"n\": 2}');
         SELECT jobs.send('upgrade/vip', '{\"vip\": true, \"n\": 1}');
         SELECT jobs.send('upgrade/vip', '{\"vip\": false, \"n\": 2}');
         SELECT jobs.send('upgrade/fail');
         SELECT jobs.send('upgrade/flaky');
         SELECT jobs.send('upgrade/long', jsonb_build_object('until', now() + interval '30 days'));
         SELECT jobs.send('upgrade/cancelled', jsonb_build_object('until', now() + interval '30 days'));
         SELECT jobs.send('upgrade/subscribed', jsonb_build_object('user', 'ada', 'until', now() + interval '30 days'));
         SELECT jobs.send('upgrade/order.placed', '{\"id\": 42}');
         SELECT jobs.send('upgrade/parent');
         SELECT jobs.pause_function('upgrade-held');
         SELECT jobs.send('upgrade/held', '{\"n\": 3}');",
    )
    .unwrap();
    for (function_id, status) in [
        ("upgrade-completed", "completed"),
        ("upgrade-order", "completed"),
        ("upgrade-filtered", "completed"),
        ("upgrade-failed", "failed"),
        ("upgrade-failed-failure", "completed"),
        ("upgrade-long-sleep", "sleeping"),
        ("upgrade-cancelled", "sleeping"),
        ("upgrade-cancel-on", "sleeping"),
        ("upgrade-waiting", "waiting"),
        ("upgrade-parent", "waiting"),
        ("upgrade-child", "waiting"),
        ("upgrade-held", "queued"),
    ] {
        wait_for_status(&mut c, function_id, status);
    }
    c.batch_execute(
        "SELECT jobs.cancel_run(id) FROM jobs.runs WHERE function_id = 'upgrade-cancelled'",
    )
    .unwrap();
    wait_for_status(&mut c, "upgrade-cancelled", "cancelled");
    wait_for_step(&mut c, "upgrade-retrying", "flaky", "retrying");

    // A sleep that ends while the new library waits for the update; the
    // executors then stop, so that a run stays queued without being held.
    c.batch_execute(
        "SELECT jobs.send('upgrade/short', jsonb_build_object('until', clock_timestamp() + interval '6 seconds'))",
    )
    .unwrap();
    wait_for_status(&mut c, "upgrade-short-sleep", "sleeping");
    c.batch_execute("ALTER SYSTEM SET jobs.workers = 0")
        .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    cluster.wait_for_executors(0);
    c.batch_execute("SELECT jobs.send('upgrade/queued', '{\"n\": 4}')")
        .unwrap();
    c.batch_execute("ALTER SYSTEM SET jobs.workers = 2")
        .unwrap();
    wait_for_status(&mut c, "upgrade-queued", "queued");
    let short_sleep_ends: bool = c
        .query_one(
            "SELECT (data->>'until')::timestamptz > clock_timestamp() FROM jobs.events WHERE name = 'upgrade/short'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        short_sleep_ends,
        "the short sleep ended before the server stopped"
    );
}

/// Schema-only dump of the extension's objects in `database`. A plain dump
/// has only `CREATE EXTENSION` for them; `--binary-upgrade` (pg_upgrade's
/// mode) writes each member object, in a deterministic order. Left out, as
/// what must differ between two databases: the oids it assigns (lines
/// `binary_upgrade_set_next_…`; the config tables' oids in
/// `binary_upgrade_create_empty_extension` become their names), each table's relfrozenxid, pg_dump's random `\restrict` keys, and
/// `binary_upgrade_set_missing_value`: the value that a column added with a
/// default has in the rows that existed before (a storage detail of ADD
/// COLUMN on a table with rows, invisible to queries). Column order is not
/// normalised: a fresh install declares columns in the order the upgrade
/// adds them.
fn schema_dump(cluster: &Cluster, database: &str) -> String {
    let out = Command::new(bin_dir().join("pg_dump"))
        .args([
            "--schema-only",
            "--binary-upgrade",
            "--no-owner",
            "--exclude-schema=app",
        ])
        .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
        .arg(cluster.port.to_string())
        .arg(database)
        .output()
        .expect("running pg_dump");
    assert!(
        out.status.success(),
        "pg_dump {database}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let relations: Vec<(String, String)> = cluster
        .connect_as("postgres", database)
        .query(
            "SELECT oid::text, oid::regclass::text FROM pg_class WHERE relnamespace = 'jobs'::regnamespace",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let dump = normalise_dump(&String::from_utf8(out.stdout).unwrap(), &relations);
    std::fs::write(
        cluster.data_dir.join(format!("{database}.schema.sql")),
        &dump,
    )
    .unwrap();
    dump
}

fn normalise_dump(dump: &str, relations: &[(String, String)]) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut in_relfrozenxid = false;
    for line in dump.lines() {
        if line == "UPDATE pg_catalog.pg_class" {
            in_relfrozenxid = true;
        }
        if in_relfrozenxid {
            in_relfrozenxid = !line.ends_with(';');
            continue;
        }
        if line.starts_with("--")
            || line.trim().is_empty()
            || line.starts_with("SELECT pg_catalog.binary_upgrade_set_next_")
            || line.starts_with("SELECT pg_catalog.binary_upgrade_set_missing_value(")
            || line.starts_with("\\restrict ")
            || line.starts_with("\\unrestrict ")
        {
            continue;
        }
        if line.contains("binary_upgrade_create_empty_extension") {
            lines.push(name_oids(line, relations));
        } else {
            lines.push(line.to_string());
        }
    }
    lines.join("\n")
}

/// The oids in `line` replaced by the names of the relations they are
/// (in `database`), so that the config tables' list compares across databases.
fn name_oids(line: &str, relations: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut digits = String::new();
    for ch in line.chars().chain(std::iter::once(' ')) {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        if !digits.is_empty() {
            match relations.iter().find(|(oid, _)| *oid == digits) {
                Some((_, name)) => out.push_str(name),
                None => out.push_str(&digits),
            }
            digits.clear();
        }
        out.push(ch);
    }
    out.pop();
    out
}

/// The lines of `a` not in `b` and those of `b` not in `a`, for the message.
fn line_diff(a: &str, b: &str) -> String {
    let (a_lines, b_lines): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut out = String::new();
    for line in &a_lines {
        if !b_lines.contains(line) {
            out.push_str(&format!("- {line}\n"));
        }
    }
    for line in &b_lines {
        if !a_lines.contains(line) {
            out.push_str(&format!("+ {line}\n"));
        }
    }
    out
}

#[test]
fn update_from_0_1_0_keeps_every_run_and_gives_a_fresh_catalog() {
    let current = current_version();
    let package = released_package();
    let installation = Installation::new("upgrade-installation");
    installation.install_pg_jobs(
        &within(&package, &pg_config("--pkglibdir")),
        &within(&package, &pg_config("--sharedir")).join("extension"),
    );
    let cluster = Cluster::start_in(
        installation.bin_dir.clone(),
        "upgrade",
        &[
            "shared_preload_libraries = 'pg_jobs'",
            "jobs.workers = 2",
            "jobs.poll_interval = 200",
        ],
    );
    let mut c = cluster.connect();
    c.batch_execute("CREATE EXTENSION pg_jobs").unwrap();
    assert_eq!(
        one(
            &mut c,
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_jobs'"
        ),
        RELEASED
    );
    cluster.wait_for_executors(2);
    make_runs(&cluster);
    drop(c);
    cluster.stop();

    // This version's library, as `make install` put it into the system.
    installation.install_pg_jobs(
        &pg_config("--pkglibdir"),
        &pg_config("--sharedir").join("extension"),
    );
    let log_before = cluster.log().len();
    cluster.start_server();
    let mut c = cluster.connect();
    let waiting = "nothing runs until ALTER EXTENSION pg_jobs UPDATE";
    wait_until(
        "the launcher says it waits for the update",
        Duration::from_secs(30),
        || cluster.log()[log_before..].contains(waiting),
    );
    c.batch_execute(SNAPSHOTS).unwrap();
    // Past the end of the short sleep, and a few launcher rounds.
    wait_until("the short sleep is due", Duration::from_secs(30), || {
        one(
            &mut c,
            "SELECT ((data->>'until')::timestamptz + interval '1 second' < clock_timestamp())::text
                 FROM jobs.events WHERE name = 'upgrade/short'",
        ) == "true"
    });
    assert_eq!(cluster.executor_pids(&mut c), Vec::<i32>::new());
    assert_eq!(
        rows(&mut c, "SELECT app.lost('{}')"),
        Vec::<String>::new(),
        "nothing changed before the update"
    );
    assert_eq!(status_of(&mut c, "upgrade-short-sleep"), "sleeping");
    assert_eq!(
        cluster.log()[log_before..].matches(waiting).count(),
        1,
        "{}",
        cluster.log()
    );

    // The update, and the comparison with what was there, in one transaction:
    // the workers start only once it commits.
    c.batch_execute("BEGIN; ALTER EXTENSION pg_jobs UPDATE")
        .unwrap();
    assert_eq!(
        one(
            &mut c,
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_jobs'"
        ),
        current
    );
    // The columns whose expressions the update rewrites (from SQL/JSON path to
    // CEL) are checked by what they still do, below.
    assert_eq!(
        rows(&mut c, "SELECT app.lost('{filter,cancel_on,condition}')"),
        Vec::<String>::new(),
        "every row is kept"
    );
    c.batch_execute("COMMIT").unwrap();
    cluster.wait_for_executors(2);
    assert!(
        cluster.log()[log_before..].contains(&format!("is version {current} now; starting")),
        "{}",
        cluster.log()
    );

    // The runs go on.
    for function_id in ["upgrade-short-sleep", "upgrade-queued"] {
        assert_eq!(
            wait_for_runs(&mut c, function_id, 1),
            ["completed"],
            "{function_id}"
        );
    }
    c.batch_execute("SELECT jobs.resume_function('upgrade-held')")
        .unwrap();
    assert_eq!(wait_for_runs(&mut c, "upgrade-held", 1), ["completed"]);
    c.batch_execute("UPDATE app.gate SET open = true").unwrap();
    assert_eq!(wait_for_runs(&mut c, "upgrade-retrying", 1), ["completed"]);
    assert_eq!(
        one(
            &mut c,
            "SELECT output::text FROM jobs.runs WHERE function_id = 'upgrade-retrying'"
        ),
        "\"through\""
    );

    // The wait's condition, converted, still tells events apart.
    c.batch_execute(
        "SELECT jobs.send('upgrade/approved', '{\"id\": 42, \"ok\": false}');
         SELECT jobs.send('upgrade/approved', '{\"id\": 42, \"ok\": true, \"n\": 4, \"by\": \"bot\"}');
         SELECT jobs.send('upgrade/approved', '{\"id\": 41, \"ok\": true}')",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status_of(&mut c, "upgrade-waiting"), "waiting");
    c.batch_execute("SELECT jobs.send('upgrade/approved', '{\"id\": 42, \"ok\": true, \"n\": 5, \"by\": \"bot\"}')")
        .unwrap();
    assert_eq!(wait_for_runs(&mut c, "upgrade-waiting", 1), ["completed"]);
    assert_eq!(
        one(
            &mut c,
            "SELECT output->>'n' FROM jobs.runs WHERE function_id = 'upgrade-waiting'"
        ),
        "5"
    );

    // The child finishes, then its parent.
    c.batch_execute("SELECT jobs.send('upgrade/go')").unwrap();
    assert_eq!(wait_for_runs(&mut c, "upgrade-child", 1), ["completed"]);
    assert_eq!(wait_for_runs(&mut c, "upgrade-parent", 1), ["completed"]);
    assert_eq!(
        one(
            &mut c,
            "SELECT output::text FROM jobs.runs WHERE function_id = 'upgrade-parent'"
        ),
        "{\"child\": 42}"
    );

    // cancel_on, converted: its `if` still decides.
    c.batch_execute(
        "SELECT jobs.send('upgrade/renewed', '{\"user\": \"ada\", \"really\": false}')",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status_of(&mut c, "upgrade-cancel-on"), "sleeping");
    c.batch_execute("SELECT jobs.send('upgrade/renewed', '{\"user\": \"ada\", \"really\": true}')")
        .unwrap();
    assert_eq!(wait_for_runs(&mut c, "upgrade-cancel-on", 1), ["cancelled"]);

    // The filter, converted, still filters; the event schema still applies;
    // the dedup id is still known.
    c.batch_execute(
        "SELECT jobs.send('upgrade/vip', '{\"vip\": true, \"n\": 3}');
         SELECT jobs.send('upgrade/vip', '{\"vip\": true, \"n\": 4}');
         SELECT jobs.send('upgrade/quick', '{\"n\": 1}', id => 'once');",
    )
    .unwrap();
    assert_eq!(
        wait_for_runs(&mut c, "upgrade-filtered", 2),
        ["completed", "completed"]
    );
    assert_eq!(
        sqlstate(c.batch_execute("SELECT jobs.send('upgrade/order', '{\"n\": 1}')")),
        "22023"
    );
    assert_eq!(wait_for_runs(&mut c, "upgrade-completed", 1), ["completed"]);

    // What did not have to move did not.
    assert_eq!(status_of(&mut c, "upgrade-long-sleep"), "sleeping");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM jobs.schedules WHERE function_id = 'upgrade-cron'"
        ),
        2
    );

    // Each function's definition is what this version makes of its config.
    c.batch_execute(
        "BEGIN;
         CREATE TABLE app.redefined AS SELECT id, handler, config FROM jobs.functions WHERE failure_of IS NULL;
         SELECT jobs.create_function(id || '-again', handler::regprocedure, config) FROM app.redefined;",
    )
    .unwrap();
    let different = rows(
        &mut c,
        "SELECT f.id || ': ' || (to_jsonb(f) - ARRAY['id', 'paused', 'created_at', 'updated_at'])::text
                || ' <> ' || (to_jsonb(g) - ARRAY['id', 'paused', 'created_at', 'updated_at'])::text
         FROM jobs.functions f JOIN jobs.functions g ON g.id = f.id || '-again'
         WHERE (to_jsonb(f) - ARRAY['id', 'paused', 'created_at', 'updated_at'])
               IS DISTINCT FROM (to_jsonb(g) - ARRAY['id', 'paused', 'created_at', 'updated_at'])",
    );
    assert_eq!(different, Vec::<String>::new());
    c.batch_execute("ROLLBACK").unwrap();

    // The catalog is a fresh install's.
    c.batch_execute("CREATE DATABASE fresh").unwrap();
    cluster
        .connect_as("postgres", "fresh")
        .batch_execute("CREATE EXTENSION pg_jobs")
        .unwrap();
    let (upgraded, fresh) = (
        schema_dump(&cluster, "postgres"),
        schema_dump(&cluster, "fresh"),
    );
    assert!(
        upgraded == fresh,
        "the upgraded catalog differs from a fresh install (- upgraded, + fresh; both dumps are in {}):\n{}",
        cluster.data_dir.display(),
        line_diff(&upgraded, &fresh)
    );
    assert!(!cluster.log().contains("PANIC"), "{}", cluster.log());
}
