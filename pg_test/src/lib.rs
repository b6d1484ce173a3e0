//! End-to-end harness: starts a throwaway PostgreSQL cluster with pg_jobs
//! preloaded (the extension must be installed, `make install`), and drives it
//! through a real client connection.
//!
//! Each test binary starts its own cluster on a free port, under
//! `$TMPDIR/pg_jobs-e2e/<name>` (the `postgres` OS user must be able to reach
//! it, which a checkout under /root would not allow); its `server.log` stays
//! there after the run. Tests of one binary share the cluster, so they use
//! their own function ids and event names.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use postgres::{Client, NoTls};

pub mod http_server;

pub struct Cluster {
    pub name: String,
    pub data_dir: PathBuf,
    pub port: u16,
    bin_dir: PathBuf,
}

static STARTED: Mutex<Vec<(PathBuf, PathBuf)>> = Mutex::new(Vec::new());

extern "C" fn stop_clusters_at_exit() {
    if let Ok(started) = STARTED.lock() {
        for (bin_dir, data_dir) in started.iter() {
            let _ = pg_ctl(bin_dir, data_dir, &["stop", "-m", "immediate", "-w"]);
        }
    }
}

fn is_root() -> bool {
    unsafe { geteuid() == 0 }
}

extern "C" {
    fn geteuid() -> u32;
    fn atexit(callback: extern "C" fn()) -> i32;
}

/// PostgreSQL refuses to run as root: then every server command runs as
/// `postgres`. Servers get the environment a service manager would give them:
/// no RUST_BACKTRACE, which makes every error raised through Rust code record
/// a stack trace.
fn as_server_user(program: &Path) -> Command {
    let mut command = if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    };
    command
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    command
}

fn pg_ctl(bin_dir: &Path, data_dir: &Path, args: &[&str]) -> std::process::Output {
    as_server_user(&bin_dir.join("pg_ctl"))
        .arg("-D")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("running pg_ctl")
}

/// The bin directory of the PostgreSQL that `PG_CONFIG` names (default: 15's).
pub fn bin_dir() -> PathBuf {
    let pg_config = std::env::var("PG_CONFIG")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".into());
    let out = Command::new(&pg_config)
        .arg("--bindir")
        .output()
        .expect("running pg_config");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where test clusters (and other files the `postgres` OS user reads) go.
pub fn clusters_dir() -> PathBuf {
    std::env::temp_dir().join("pg_jobs-e2e")
}

impl Cluster {
    /// Initializes and starts a cluster. `settings` go to postgresql.conf.
    pub fn start(name: &str, settings: &[&str]) -> Cluster {
        Cluster::start_in(bin_dir(), name, settings)
    }

    /// Like `start`, with the server programs of `bin_dir` (another
    /// installation of the same PostgreSQL, with its own libraries).
    pub fn start_in(bin_dir: PathBuf, name: &str, settings: &[&str]) -> Cluster {
        let data_dir = clusters_dir().join(name);
        if data_dir.join("postmaster.pid").exists() {
            let _ = pg_ctl(&bin_dir, &data_dir, &["stop", "-m", "immediate", "-w"]);
        }
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).unwrap();
        std::fs::set_permissions(
            clusters_dir(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        if is_root() {
            let status = Command::new("chown")
                .arg("postgres:")
                .arg(&data_dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown of {}", data_dir.display());
        }
        let out = as_server_user(&bin_dir.join("initdb"))
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data_dir)
            .output()
            .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let port = free_port();
        let mut conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n\
             max_worker_processes = 16\nlog_min_messages = info\n"
        );
        for setting in settings {
            conf.push_str(setting);
            conf.push('\n');
        }
        let conf_path = data_dir.join("postgresql.auto.conf");
        let mut existing = std::fs::read_to_string(&conf_path).unwrap_or_default();
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).unwrap();

        let cluster = Cluster {
            name: name.into(),
            data_dir,
            port,
            bin_dir,
        };
        STARTED
            .lock()
            .unwrap()
            .push((cluster.bin_dir.clone(), cluster.data_dir.clone()));
        static REGISTERED: OnceLock<()> = OnceLock::new();
        REGISTERED.get_or_init(|| unsafe {
            atexit(stop_clusters_at_exit);
        });
        cluster.start_server();
        cluster
    }

    /// The usual test cluster: pg_jobs preloaded, `workers` executors.
    pub fn with_pg_jobs(name: &str, workers: usize, extra: &[&str]) -> Cluster {
        let workers_setting = format!("jobs.workers = {workers}");
        let mut settings = vec![
            "shared_preload_libraries = 'pg_jobs'",
            workers_setting.as_str(),
        ];
        settings.extend_from_slice(extra);
        let cluster = Cluster::start(name, &settings);
        cluster
            .connect()
            .batch_execute("CREATE EXTENSION pg_jobs")
            .unwrap();
        cluster.wait_for_executors(workers);
        cluster
    }

    pub fn start_server(&self) {
        let log = self.data_dir.join("server.log");
        let out = pg_ctl(
            &self.bin_dir,
            &self.data_dir,
            &["start", "-w", "-t", "60", "-l", log.to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// A clean shutdown (`-m fast`), as a service manager's stop.
    pub fn stop(&self) {
        let out = pg_ctl(&self.bin_dir, &self.data_dir, &["stop", "-m", "fast", "-w"]);
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn stop_immediately(&self) {
        let out = pg_ctl(
            &self.bin_dir,
            &self.data_dir,
            &["stop", "-m", "immediate", "-w"],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default()
    }

    /// A new connection, retried while the server (re)starts.
    pub fn connect(&self) -> Client {
        self.connect_as("postgres", "postgres")
    }

    /// A connection as `user` to `database` (authentication is trust).
    pub fn connect_as(&self, user: &str, database: &str) -> Client {
        let params = format!(
            "host=127.0.0.1 port={} user={user} dbname={database}",
            self.port
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match Client::connect(&params, NoTls) {
                Ok(client) => return client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot connect to {}: {e}\n{}", self.name, self.log()),
            }
        }
    }

    pub fn executor_pids(&self, client: &mut Client) -> Vec<i32> {
        client
            .query("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_jobs executor' ORDER BY pid", &[])
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    pub fn wait_for_executors(&self, count: usize) {
        self.wait_for_new_executors(count, &[]);
    }

    /// Waits until `count` executors run and none of them is one of `gone`
    /// (after a kill, the postmaster restarts them all).
    pub fn wait_for_new_executors(&self, count: usize, gone: &[i32]) {
        let mut client = self.connect();
        wait_until(
            &format!("{count} executors running"),
            Duration::from_secs(30),
            || {
                // After a crash the server restarts under us: reconnect and look again.
                match client.query(
                    "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_jobs executor'",
                    &[],
                ) {
                    Ok(rows) => {
                        rows.len() == count
                            && rows.iter().all(|row| !gone.contains(&row.get::<_, i32>(0)))
                    }
                    Err(_) => {
                        client = self.connect();
                        false
                    }
                }
            },
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = pg_ctl(
            &self.bin_dir,
            &self.data_dir,
            &["stop", "-m", "immediate", "-w"],
        );
    }
}

/// Sends SIGKILL, as the OOM killer would.
pub fn kill_9(pid: i32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -9 {pid}");
}

/// Polls `condition` every 20 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Status of every run of `function_id`, oldest first.
pub fn statuses(client: &mut Client, function_id: &str) -> Vec<String> {
    client
        .query(
            "SELECT status FROM jobs.runs WHERE function_id = $1 ORDER BY created_at, id",
            &[&function_id],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Waits until `function_id` has `count` runs, all in a final state, and returns their statuses.
pub fn wait_for_runs(client: &mut Client, function_id: &str, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = statuses(client, function_id);
        let finished = last
            .iter()
            .filter(|s| ["completed", "failed", "cancelled"].contains(&s.as_str()))
            .count();
        if last.len() == count && finished == count {
            return last;
        }
        if Instant::now() >= deadline {
            let mut by_status = std::collections::BTreeMap::new();
            for status in &last {
                *by_status.entry(status.as_str()).or_insert(0) += 1;
            }
            panic!("{count} runs of {function_id} did not finish: {by_status:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn count(client: &mut Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).unwrap().get(0)
}

/// The SQLSTATE of a failed statement, or "ok".
pub fn sqlstate<T>(result: Result<T, postgres::Error>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => e
            .as_db_error()
            .map(|d| d.code().code().to_string())
            .unwrap_or_else(|| format!("not a database error: {e}")),
    }
}

/// The message of a failed statement.
pub fn error_message<T>(result: Result<T, postgres::Error>) -> String {
    match result {
        Ok(_) => String::new(),
        Err(e) => e
            .as_db_error()
            .map(|d| format!("{} {}", d.message(), d.detail().unwrap_or_default()))
            .unwrap_or_else(|| e.to_string()),
    }
}
