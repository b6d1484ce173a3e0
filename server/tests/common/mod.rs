//! What the server's tests share: a `pg-jobs serve` process against a harness
//! cluster, plain HTTP without following redirects, and two ordinary roles.
#![allow(dead_code)] // each test binary uses part of it

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pg_jobs_e2e::Cluster;

/// A `pg-jobs serve` process (the binary of this crate), killed on drop.
pub struct Server {
    child: Child,
    pub url: String,
}

impl Server {
    /// Serves as `role` on a port the server picks; returns once it listens.
    pub fn start(cluster: &Cluster, role: &str) -> Server {
        let database_url = format!("postgresql://{role}@127.0.0.1:{}/postgres", cluster.port);
        let mut child = Command::new(env!("CARGO_BIN_EXE_pg-jobs"))
            .args([
                "serve",
                "--database-url",
                &database_url,
                "--listen",
                "127.0.0.1:0",
            ])
            .env_remove("DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting pg-jobs serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("pg-jobs serve did not say where it listens: {line:?}"))
            .trim_end_matches('/')
            .to_string();
        assert!(
            !line.contains(&database_url),
            "the database URL must not be printed: {line}"
        );
        Server { child, url }
    }

    pub fn get(&self, path: &str) -> Reply {
        request(ureq_agent().get(format!("{}{path}", self.url)).call())
    }

    /// A form POST as a browser on this page would send it.
    pub fn post(&self, path: &str, form: &[(&str, &str)]) -> Reply {
        request(
            ureq_agent()
                .post(format!("{}{path}", self.url))
                .send_form(form.iter().copied()),
        )
    }

    /// The CSRF token the pages of this server carry.
    pub fn csrf(&self) -> String {
        let page = self.get("/send");
        let marker = "name=\"csrf\" value=\"";
        let start = page.body.find(marker).expect("a csrf field") + marker.len();
        page.body[start..start + 64].to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Reply {
    pub status: u16,
    pub body: String,
    pub location: Option<String>,
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn ureq_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn request(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut response = result.expect("HTTP request");
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect::<Vec<_>>();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Reply {
        status: response.status().as_u16(),
        body: response.body_mut().read_to_string().unwrap_or_default(),
        location,
        headers,
    }
}

/// A raw request with headers a browser would set, for the Host and Origin checks.
pub fn get_with_host(url: &str, host: &str) -> u16 {
    ureq_agent()
        .get(url)
        .header("Host", host)
        .call()
        .map(|r| r.status().as_u16())
        .expect("HTTP request")
}

pub fn post_with_origin(url: &str, origin: &str, form: &[(&str, &str)]) -> u16 {
    ureq_agent()
        .post(url)
        .header("Origin", origin)
        .send_form(form.iter().copied())
        .map(|r| r.status().as_u16())
        .expect("HTTP request")
}

/// Two ordinary roles that define functions, with the grants the README's
/// "Security" section lists, each with a function of its own.
pub fn create_owner_roles(cluster: &Cluster) {
    cluster
        .connect()
        .batch_execute(
            "CREATE ROLE alice LOGIN NOSUPERUSER; CREATE ROLE bob LOGIN NOSUPERUSER;
             GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA jobs TO alice, bob;
             GRANT SELECT ON ALL TABLES IN SCHEMA jobs TO alice, bob;
             CREATE SCHEMA alice AUTHORIZATION alice; CREATE SCHEMA bob AUTHORIZATION bob;
             SET ROLE alice;
             CREATE FUNCTION alice.work(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
             BEGIN RETURN jobs.step('greet', $s$ SELECT jsonb_build_object('hello', $1->>'who') $s$, ctx->'event'->'data'); END $$;
             SELECT jobs.create_function('alice-fn', 'alice.work(jsonb)', '{\"event\": \"shared/ping\"}');
             RESET ROLE; SET ROLE bob;
             CREATE FUNCTION bob.work(ctx jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT ctx->'event'->'data' $$;
             SELECT jobs.create_function('bob-fn', 'bob.work(jsonb)', '{\"event\": \"shared/ping\"}');
             RESET ROLE;",
        )
        .unwrap();
}

/// Waits for `condition`, polling every 50 ms, up to 30 s.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
