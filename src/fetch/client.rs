//! The HTTP client: one OS thread running a single-threaded tokio runtime
//! with one reqwest client, so that hundreds of requests are in flight at once
//! while the owner's thread (the fetcher worker's main thread, which alone
//! talks to the database) only submits and collects.
//!
//! - One way in: [`Client::submit`] returns at once; each request ends in one
//!   [`Completion`], collected with [`Client::try_recv`]. After each completion the owner's [`Waker`]
//!   runs (on the client's thread: it must only signal, see [`Waker`]).
//! - Each request holds up to the size limit in memory until it completes:
//!   the owner bounds that by capping [`Client::in_flight`].
//! - The thread and every thread it starts (tokio's blocking pool, used for
//!   DNS lookups) block all Unix signals: PostgreSQL's handlers must run on
//!   the process's main thread only.
//! - Redirects are followed here, not by reqwest, so that every hop is
//!   checked against the allowed hosts; credentials (Authorization, Cookie,
//!   Proxy-Authorization) are not sent on to another origin.
//! - The timeout covers the whole exchange: connecting, every redirect and
//!   reading the body. The body is read in chunks and given up as soon as it
//!   passes the size limit (counted after gzip decompression).
//! - HTTPS: rustls with the ring provider, certificates checked against the
//!   system's CA store (rustls-platform-verifier). No proxy from the
//!   environment is used: the allowed-hosts check is the whole story.
//! - Dropping the client stops the thread; requests
//!   still in flight are abandoned without a completion.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use http::header::{
    AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, COOKIE, LOCATION, PROXY_AUTHORIZATION,
};
use tokio::sync::mpsc;

use super::hosts::{follow, is_redirect, MAX_REDIRECTS};
use super::outcome::{classify, status_text, Failure, FailureKind, Outcome};
use super::request::PreparedRequest;

/// Called on the client's thread after each completion is queued. It must not
/// call into PostgreSQL: pgrx panics on any call from a thread other than the
/// main one. `libc::kill(libc::getpid(), libc::SIGUSR1)` wakes a background
/// worker (its SIGUSR1 handler sets `MyLatch`); the signal reaches the main
/// thread because this one blocks it.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// The name of the size setting, in the failure it causes.
const MAX_SIZE_SETTING: &str = "jobs.fetch_max_response_size";
const THREAD_NAME: &str = "pg_jobs fetch";

#[derive(Debug)]
pub struct Completion<Id> {
    pub id: Id,
    pub outcome: Outcome,
}

/// The client's thread is gone; nothing more can be submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientStopped;

impl fmt::Display for ClientStopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the pg_jobs fetch client has stopped")
    }
}

impl std::error::Error for ClientStopped {}

struct Job<Id> {
    id: Id,
    request: PreparedRequest,
}

/// The handle; `Id` is whatever the owner uses to find the task again.
pub struct Client<Id> {
    submissions: Option<mpsc::UnboundedSender<Job<Id>>>,
    completions: std_mpsc::Receiver<Completion<Id>>,
    in_flight: Cell<usize>,
    thread: Option<JoinHandle<()>>,
}

impl<Id: Send + 'static> Client<Id> {
    /// Starts the thread and builds the HTTP client on it; an error says
    /// what failed (a thread that cannot start, TLS that cannot be set up).
    pub fn start(waker: Waker) -> Result<Client<Id>, String> {
        let (submit, submissions) = mpsc::unbounded_channel();
        let (complete, completions) = std_mpsc::channel();
        let (ready, started) = std_mpsc::channel();
        let thread = spawn_with_signals_blocked(THREAD_NAME, move || {
            serve(submissions, complete, waker, ready)
        })
        .map_err(|e| format!("could not start the fetch client's thread: {e}"))?;
        let startup = started
            .recv()
            .unwrap_or_else(|_| Err("the fetch client's thread ended while starting".into()));
        if let Err(message) = startup {
            let _ = thread.join();
            return Err(message);
        }
        Ok(Client {
            submissions: Some(submit),
            completions,
            in_flight: Cell::new(0),
            thread: Some(thread),
        })
    }

    /// Hands a request to the client's thread; returns at once.
    pub fn submit(&self, id: Id, request: PreparedRequest) -> Result<(), ClientStopped> {
        let sender = self.submissions.as_ref().ok_or(ClientStopped)?;
        sender
            .send(Job { id, request })
            .map_err(|_| ClientStopped)?;
        self.in_flight.set(self.in_flight.get() + 1);
        Ok(())
    }

    /// A finished request, if there is one; never blocks.
    pub fn try_recv(&self) -> Option<Completion<Id>> {
        let completion = self.completions.try_recv().ok()?;
        self.in_flight.set(self.in_flight.get() - 1);
        Some(completion)
    }

    /// Waits up to `timeout` for a finished request (the tests wait; the
    /// fetcher waits on its latch instead).
    #[cfg(test)]
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Completion<Id>> {
        let completion = self.completions.recv_timeout(timeout).ok()?;
        self.in_flight.set(self.in_flight.get() - 1);
        Some(completion)
    }

    /// Submitted and not yet received: what the owner may cap its claims by.
    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }
}

impl<Id> Drop for Client<Id> {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop; the runtime then drops
        // every task still in flight.
        self.submissions.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Spawns a thread with every signal blocked, restoring the caller's mask
/// afterwards. Threads inherit the mask of the thread that creates them, so
/// the threads this one starts block signals too.
fn spawn_with_signals_blocked<F>(name: &str, body: F) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    // SAFETY: sigfillset and pthread_sigmask only read and write the local
    // sigset_t values passed to them.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous);
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let spawned = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(body);
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        spawned
    }
}

fn build_http_client() -> Result<reqwest::Client, String> {
    // reqwest's rustls-no-provider feature takes the process's default
    // provider; ring builds without cmake and faster than aws-lc-rs. An
    // error means a provider is installed already, which reqwest then uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("could not set up the fetch client: {}", error_chain(e)))
}

fn serve<Id: Send + 'static>(
    mut submissions: mpsc::UnboundedReceiver<Job<Id>>,
    completions: std_mpsc::Sender<Completion<Id>>,
    waker: Waker,
    ready: std_mpsc::Sender<Result<(), String>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(format!(
                "could not start the fetch client's runtime: {e}"
            )));
            return;
        }
    };
    let http = {
        let _context = runtime.enter();
        match build_http_client() {
            Ok(http) => http,
            Err(message) => {
                let _ = ready.send(Err(message));
                return;
            }
        }
    };
    let _ = ready.send(Ok(()));
    runtime.block_on(async {
        while let Some(Job { id, request }) = submissions.recv().await {
            let http = http.clone();
            let completions = completions.clone();
            let waker = waker.clone();
            tokio::spawn(async move {
                let display = request.display.clone();
                // A panic ends the inner task only; its request still
                // completes, as a failure.
                let outcome = tokio::spawn(perform(http, request))
                    .await
                    .unwrap_or_else(|e| {
                        Outcome::Failed(Failure::new(
                            FailureKind::Internal,
                            format!("{display}: the fetch client failed: {e}"),
                        ))
                    });
                if completions.send(Completion { id, outcome }).is_ok() {
                    waker();
                }
            });
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
}

async fn perform(http: reqwest::Client, request: PreparedRequest) -> Outcome {
    match tokio::time::timeout(request.timeout, exchange(&http, &request)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Failed(Failure::new(
            FailureKind::Timeout,
            format!(
                "{} timed out after {}s",
                request.display,
                request.timeout.as_secs_f64()
            ),
        )),
    }
}

/// The request, its redirects and the body.
async fn exchange(http: &reqwest::Client, request: &PreparedRequest) -> Outcome {
    let redact = |text: &str| request.redactor.redact(text).into_owned();
    let failed = |kind, message: String| Outcome::Failed(Failure::new(kind, redact(&message)));
    let mut method = request.method.clone();
    let mut url = request.url.clone();
    let mut headers = request.headers.clone();
    let mut body = request.body.clone();
    let mut label = request.display.clone();
    let mut redirects = 0;
    loop {
        if let Err(refusal) = request.policy.allowed_hosts.check(&url) {
            let message = if redirects == 0 {
                format!("{label}: {refusal}")
            } else {
                format!("{} was redirected to {url}: {refusal}", request.display)
            };
            return failed(FailureKind::HostNotAllowed, message);
        }
        let mut builder = http
            .request(method.clone(), url.clone())
            .headers(headers.clone());
        if let Some(body) = &body {
            builder = builder.body(body.clone());
        }
        let response = match builder.send().await {
            Ok(response) => response,
            Err(e) => {
                return failed(
                    error_kind(&e),
                    format!("{label} failed: {}", error_chain(e)),
                )
            }
        };
        let status = response.status().as_u16();
        if is_redirect(status) && !request.accept.contains(&status) {
            if redirects == MAX_REDIRECTS {
                return failed(
                    FailureKind::Redirect,
                    format!(
                        "{} was redirected more than {MAX_REDIRECTS} times",
                        request.display
                    ),
                );
            }
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok());
            let next = match follow(status, &method, location, &url) {
                Ok(next) => next,
                Err(why) => return failed(FailureKind::Redirect, format!("{label} {why}")),
            };
            if !next.keep_body {
                body = None;
                headers.remove(CONTENT_TYPE);
                headers.remove(CONTENT_ENCODING);
            }
            if !next.same_origin {
                headers.remove(AUTHORIZATION);
                headers.remove(COOKIE);
                headers.remove(PROXY_AUTHORIZATION);
            }
            method = next.method;
            url = next.url;
            redirects += 1;
            label = format!("{} (redirected to {method} {url})", request.display);
            continue;
        }
        let response_headers = response.headers().clone();
        let body = match read_limited(response, request.policy.max_response_size).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => {
                let message = format!(
                    "{label} answered {} with a body larger than {MAX_SIZE_SETTING} ({} bytes)",
                    status_text(status),
                    request.policy.max_response_size
                );
                let mut failure = Failure::new(FailureKind::TooLarge, redact(&message));
                failure.status = Some(status);
                return Outcome::Failed(failure);
            }
            Err(BodyError::Read(e)) => {
                return failed(
                    error_kind(&e),
                    format!(
                        "{label} answered {} but reading its body failed: {}",
                        status_text(status),
                        error_chain(e)
                    ),
                )
            }
        };
        let outcome = classify(
            &label,
            status,
            &response_headers,
            &body,
            &request.accept,
            &request.redactor,
            SystemTime::now(),
        );
        // The label may hold a redirect target from the server.
        return match outcome {
            Outcome::Failed(mut failure) => {
                failure.message = redact(&failure.message);
                Outcome::Failed(failure)
            }
            value => value,
        };
    }
}

enum BodyError {
    TooLarge,
    Read(reqwest::Error),
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    let announced = response.content_length();
    if announced.is_some_and(|length| length > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::with_capacity(announced.map_or(8192, |length| length as usize));
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Read)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn error_kind(error: &reqwest::Error) -> FailureKind {
    if error.is_timeout() {
        FailureKind::Timeout
    } else if error.is_builder() {
        FailureKind::Internal
    } else {
        FailureKind::Network
    }
}

/// `error sending request: client error (Connect): tcp connect error:
/// Connection refused (os error 111)`: the error and its causes, without the
/// URL (the substituted one holds secrets; the label shows the spec's).
fn error_chain(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut parts = vec![error.to_string()];
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use serde_json::{json, Value};

    use super::*;
    use crate::fetch::test_server::{Reply, TestServer, TEST_CA};
    use crate::fetch::{prepare, AllowedHosts, FetchSpec, Policy, Secrets};

    const WAIT: Duration = Duration::from_secs(20);

    struct Harness {
        client: Client<u32>,
        wakes: Arc<AtomicUsize>,
    }

    impl Harness {
        fn new() -> Harness {
            let wakes = Arc::new(AtomicUsize::new(0));
            let counter = wakes.clone();
            let client = Client::start(Arc::new(move || {
                counter.fetch_add(1, Ordering::SeqCst);
            }))
            .unwrap();
            Harness { client, wakes }
        }

        fn submit(&self, id: u32, spec: Value, hosts: &str, max_size: usize) {
            let spec = FetchSpec::from_json(&spec).unwrap();
            let secrets: Secrets = [("KEY".to_owned(), "sk-live-42".to_owned())].into();
            let policy = Arc::new(Policy {
                allowed_hosts: AllowedHosts::parse(hosts).unwrap(),
                max_response_size: max_size,
            });
            let request = prepare(&spec, &secrets, "run-7:send", policy).unwrap();
            self.client.submit(id, request).unwrap();
        }

        fn fetch(&self, spec: Value, hosts: &str) -> Outcome {
            self.fetch_limited(spec, hosts, 1024 * 1024)
        }

        fn fetch_limited(&self, spec: Value, hosts: &str, max_size: usize) -> Outcome {
            self.submit(1, spec, hosts, max_size);
            let completion = self.client.recv_timeout(WAIT).expect("a completion");
            assert_eq!(completion.id, 1);
            assert_eq!(self.client.in_flight(), 0);
            completion.outcome
        }
    }

    /// The waker runs just after a completion is queued, so the owner may
    /// see the completion first.
    fn wakes_reach(wakes: &AtomicUsize, count: usize) -> bool {
        let deadline = Instant::now() + WAIT;
        while wakes.load(Ordering::SeqCst) < count && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        wakes.load(Ordering::SeqCst) == count
    }

    fn value(outcome: Outcome) -> Value {
        match outcome {
            Outcome::Value(value) => value,
            Outcome::Failed(failure) => panic!("expected a value, got {failure:?}"),
        }
    }

    fn failure(outcome: Outcome) -> Failure {
        match outcome {
            Outcome::Failed(failure) => failure,
            Outcome::Value(value) => panic!("expected a failure, got {value}"),
        }
    }

    #[test]
    fn a_json_answer_is_the_value_and_the_request_is_as_prepared() {
        let server = TestServer::start(|request| {
            Reply::json(
                200,
                &json!({"got": request.header("authorization"), "id": "e_1"}),
            )
            .header("X-Echo", request.header("authorization").unwrap_or(""))
        });
        let harness = Harness::new();
        let outcome = harness.fetch(
            json!({"url": server.url("/emails?k={{secret.KEY}}"), "method": "POST",
                   "headers": {"Authorization": "Bearer {{secret.KEY}}"},
                   "body": {"to": "a@example.com"}}),
            &server.host_port(),
        );
        let value = value(outcome);
        assert_eq!(value["status"], json!(200));
        assert_eq!(
            value["body"],
            json!({"got": "Bearer {{secret.KEY}}", "id": "e_1"})
        );
        assert_eq!(value["headers"]["x-echo"], json!("Bearer {{secret.KEY}}"));
        assert_eq!(value["headers"]["content-type"], json!("application/json"));
        assert!(!value.to_string().contains("sk-live-42"));
        assert!(wakes_reach(&harness.wakes, 1));

        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        let sent = &requests[0];
        assert_eq!(sent.method, "POST");
        assert_eq!(sent.path, "/emails?k=sk-live-42");
        assert_eq!(sent.header("authorization"), Some("Bearer sk-live-42"));
        assert_eq!(sent.header("idempotency-key"), Some("run-7:send"));
        assert_eq!(sent.header("content-type"), Some("application/json"));
        assert!(sent.header("user-agent").unwrap().starts_with("pg_jobs/"));
        assert_eq!(
            serde_json::from_slice::<Value>(&sent.body).unwrap(),
            json!({"to": "a@example.com"})
        );
    }

    #[test]
    fn statuses_are_classified() {
        let server = TestServer::start(|request| match request.path.as_str() {
            "/500" => Reply::new(500, "boom"),
            "/429" => Reply::new(429, "slow down").header("Retry-After", "7"),
            "/404" => Reply::json(404, &json!({"error": "no such thing"})),
            "/409" => Reply::new(409, "exists"),
            _ => Reply::new(204, ""),
        });
        let harness = Harness::new();
        let hosts = server.host_port();
        let fetch = |path: &str, accept: Value| {
            harness.fetch(json!({"url": server.url(path), "accept": accept}), &hosts)
        };

        let failed = failure(fetch("/500", json!(null)));
        assert_eq!(failed.kind, FailureKind::RetriableStatus);
        assert_eq!(failed.retry_after, None);
        assert_eq!(failed.status, Some(500));
        assert_eq!(
            failed.message,
            format!(
                "GET {} answered 500 Internal Server Error: boom",
                server.url("/500")
            )
        );

        let failed = failure(fetch("/429", json!(null)));
        assert_eq!(failed.kind, FailureKind::RetriableStatus);
        assert_eq!(failed.retry_after, Some(Duration::from_secs(7)));

        let failed = failure(fetch("/404", json!(null)));
        assert_eq!(failed.kind, FailureKind::Status);
        assert!(!failed.retriable());
        assert!(
            failed
                .message
                .ends_with(r#"answered 404 Not Found: {"error":"no such thing"}"#),
            "{}",
            failed.message
        );

        assert_eq!(value(fetch("/409", json!([409])))["body"], json!("exists"));
        assert_eq!(value(fetch("/", json!(null)))["status"], json!(204));
    }

    #[test]
    fn redirects_are_followed_to_allowed_hosts_only() {
        let other = TestServer::start(|request| {
            Reply::json(
                200,
                &json!({"authorization": request.header("authorization"),
                        "key": request.header("idempotency-key")}),
            )
        });
        let other_url = other.url("/landed");
        let server = TestServer::start(move |request| match request.path.as_str() {
            "/see-other" => Reply::new(303, "").header("Location", "/final"),
            "/found" => Reply::new(302, "").header("Location", "/final"),
            "/temporary" => Reply::new(307, "").header("Location", "/final"),
            "/elsewhere" => Reply::new(302, "").header("Location", &other_url),
            "/refused" => Reply::new(302, "").header("Location", "http://refused.invalid:81/x"),
            "/no-location" => Reply::new(301, ""),
            "/loop" => Reply::new(302, "").header("Location", "/loop"),
            _ => Reply::json(
                200,
                &json!({"method": request.method,
                        "body": String::from_utf8_lossy(&request.body),
                        "type": request.header("content-type")}),
            ),
        });
        let harness = Harness::new();
        let hosts = format!("{} {}", server.host_port(), other.host_port());
        let post = |path: &str| {
            harness.fetch(
                json!({"url": server.url(path), "method": "POST", "body": {"a": 1},
                       "headers": {"Authorization": "Bearer {{secret.KEY}}"}}),
                &hosts,
            )
        };

        let body = |outcome| value(outcome)["body"].clone();
        assert_eq!(
            body(post("/see-other")),
            json!({"method": "GET", "body": "", "type": null})
        );
        assert_eq!(
            body(post("/found")),
            json!({"method": "GET", "body": "", "type": null})
        );
        assert_eq!(
            body(post("/temporary")),
            json!({"method": "POST", "body": "{\"a\":1}", "type": "application/json"})
        );
        // Another origin: the credentials stay behind, the key goes on.
        assert_eq!(
            body(post("/elsewhere")),
            json!({"authorization": null, "key": "run-7:send"})
        );
        assert_eq!(
            server
                .requests()
                .iter()
                .filter(|r| r.path == "/final")
                .count(),
            3
        );

        let refused = failure(post("/refused"));
        assert_eq!(refused.kind, FailureKind::HostNotAllowed);
        assert_eq!(
            refused.message,
            format!(
                "POST {} was redirected to http://refused.invalid:81/x: \
                 jobs.fetch_allowed_hosts does not allow refused.invalid:81; a superuser must add it",
                server.url("/refused")
            )
        );

        let missing = failure(post("/no-location"));
        assert_eq!(missing.kind, FailureKind::Redirect);
        assert!(missing
            .message
            .ends_with("answered 301 without a usable Location header"));

        let looping = failure(post("/loop"));
        assert_eq!(looping.kind, FailureKind::Redirect);
        assert!(looping
            .message
            .ends_with("was redirected more than 5 times"));
        let loops = server
            .requests()
            .iter()
            .filter(|r| r.path == "/loop")
            .count();
        assert_eq!(loops, MAX_REDIRECTS + 1);

        let accepted = harness.fetch(
            json!({"url": server.url("/found"), "accept": [302]}),
            &hosts,
        );
        assert_eq!(value(accepted)["headers"]["location"], json!("/final"));
    }

    #[test]
    fn a_slow_answer_times_out() {
        let server = TestServer::start(|_| Reply::new(200, "late").delay(Duration::from_secs(3)));
        let harness = Harness::new();
        let failed = failure(harness.fetch(
            json!({"url": server.url("/slow"), "timeout": 0.2}),
            &server.host_port(),
        ));
        assert_eq!(failed.kind, FailureKind::Timeout);
        assert!(failed.retriable());
        assert_eq!(
            failed.message,
            format!("GET {} timed out after 0.2s", server.url("/slow"))
        );
    }

    #[test]
    fn bodies_past_the_limit_fail() {
        let mut gzipped = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gzipped.write_all(&[b'a'; 100_000]).unwrap();
        let gzipped = gzipped.finish().unwrap();
        assert!(gzipped.len() < 1000);
        let server = TestServer::start(move |request| match request.path.as_str() {
            "/announced" => Reply::new(200, vec![b'x'; 5000]),
            "/streamed" => Reply::new(200, vec![b'x'; 5000]).without_length(),
            "/gzip" => Reply::new(200, gzipped.clone()).header("Content-Encoding", "gzip"),
            _ => Reply::new(200, vec![b'x'; 1000]).without_length(),
        });
        let harness = Harness::new();
        let fetch = |path: &str| {
            harness.fetch_limited(json!({"url": server.url(path)}), &server.host_port(), 1000)
        };
        for path in ["/announced", "/streamed", "/gzip"] {
            let failed = failure(fetch(path));
            assert_eq!(failed.kind, FailureKind::TooLarge, "{path}");
            assert_eq!(failed.sqlstate(), "JB014");
            assert_eq!(
                failed.message,
                format!(
                    "GET {} answered 200 OK with a body larger than jobs.fetch_max_response_size (1000 bytes)",
                    server.url(path)
                )
            );
        }
        assert_eq!(
            value(fetch("/at-the-limit"))["body"]
                .as_str()
                .unwrap()
                .len(),
            1000
        );
        assert_eq!(server.requests()[2].header("accept-encoding"), Some("gzip"));
    }

    #[test]
    fn network_errors_are_retriable_and_show_no_secret() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let harness = Harness::new();
        let failed = failure(harness.fetch(
            json!({"url": format!("http://127.0.0.1:{port}/x?k={{{{secret.KEY}}}}")}),
            &format!("127.0.0.1:{port}"),
        ));
        assert_eq!(failed.kind, FailureKind::Network);
        assert!(failed.retriable());
        assert!(
            failed.message.starts_with(&format!(
                "GET http://127.0.0.1:{port}/x?k={{{{secret.KEY}}}} failed: "
            )),
            "{}",
            failed.message
        );
        assert!(failed.message.contains("onnect"), "{}", failed.message);
        assert!(!failed.message.contains("sk-live-42"));
    }

    #[test]
    fn https_goes_through_rustls() {
        // A plain HTTP server cannot complete a TLS handshake: the attempt
        // fails as a network error, it does not panic nor send clear text.
        let server = TestServer::start(|_| Reply::new(200, "not tls"));
        let harness = Harness::new();
        let failed = failure(harness.fetch(
            json!({"url": format!("https://{}/", server.host_port())}),
            &server.host_port(),
        ));
        assert_eq!(failed.kind, FailureKind::Network, "{}", failed.message);
        assert!(server.requests().is_empty());
    }

    #[test]
    fn https_certificates_are_checked_against_the_system_store() {
        let server = TestServer::start_tls(|_| Reply::new(200, "secure"));
        let harness = Harness::new();
        let failed =
            failure(harness.fetch(json!({"url": server.https_url("/")}), &server.host_port()));
        assert_eq!(failed.kind, FailureKind::Network, "{}", failed.message);
        assert!(
            failed
                .message
                .contains("invalid peer certificate: UnknownIssuer"),
            "{}",
            failed.message
        );
        assert!(server.requests().is_empty());
    }

    /// The child test below, in a process of its own whose system store is
    /// the test CA: rustls-native-certs reads `SSL_CERT_FILE` in place of the
    /// system's files, as OpenSSL does, and the environment is the process's.
    #[test]
    fn https_works_with_a_certificate_the_system_trusts() {
        let ca = std::env::temp_dir().join(format!("pg_jobs-fetch-ca-{}.pem", std::process::id()));
        std::fs::write(&ca, TEST_CA).unwrap();
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "--nocapture"])
            .arg("fetch::client::tests::https_child_trusting_the_test_ca")
            .env("SSL_CERT_FILE", &ca)
            .env_remove("SSL_CERT_DIR")
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&ca);
        let stdout = String::from_utf8_lossy(&child.stdout);
        assert!(
            child.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&child.stderr)
        );
    }

    #[test]
    #[ignore = "run by https_works_with_a_certificate_the_system_trusts, with SSL_CERT_FILE set"]
    fn https_child_trusting_the_test_ca() {
        assert!(
            std::env::var_os("SSL_CERT_FILE").is_some(),
            "SSL_CERT_FILE is not set"
        );
        let server = TestServer::start_tls(|request| {
            Reply::json(200, &json!({"key": request.header("idempotency-key")}))
        });
        let harness = Harness::new();
        let value = value(harness.fetch(
            json!({"url": server.https_url("/tls")}),
            &server.host_port(),
        ));
        assert_eq!(value["body"], json!({"key": "run-7:send"}));
        assert_eq!(server.requests()[0].path, "/tls");
    }

    #[test]
    fn hundreds_of_requests_are_in_flight_at_once() {
        let server = TestServer::start(|_| Reply::new(200, "ok").delay(Duration::from_millis(100)));
        let harness = Harness::new();
        let hosts = server.host_port();
        for id in 0..200 {
            harness.submit(
                id,
                json!({"url": server.url(&format!("/{id}"))}),
                &hosts,
                1024,
            );
        }
        assert_eq!(harness.client.in_flight(), 200);
        let mut seen = [false; 200];
        while harness.client.in_flight() > 0 {
            let completion = harness.client.recv_timeout(WAIT).expect("a completion");
            assert_eq!(value(completion.outcome)["body"], json!("ok"));
            seen[completion.id as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert!(harness.client.try_recv().is_none());
        assert!(wakes_reach(&harness.wakes, 200));
        let overlap = server.max_concurrent();
        assert!(overlap >= 50, "only {overlap} requests overlapped");
    }

    #[test]
    fn shutting_down_abandons_requests_in_flight() {
        let server = TestServer::start(|_| Reply::new(200, "late").delay(Duration::from_secs(60)));
        let harness = Harness::new();
        harness.submit(
            1,
            json!({"url": server.url("/"), "timeout": 120}),
            &server.host_port(),
            1024,
        );
        while server.requests().is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let started = Instant::now();
        drop(harness);
        // Not a speed check: waiting for the request would take a minute.
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn the_thread_blocks_every_signal_and_the_caller_keeps_its_mask() {
        fn blocked(signal: libc::c_int) -> bool {
            // SAFETY: reads the calling thread's mask into a local set.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
                libc::sigismember(&set, signal) == 1
            }
        }
        let signals = [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGQUIT,
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGALRM,
            libc::SIGCHLD,
            libc::SIGPIPE,
        ];
        let before: Vec<bool> = signals.iter().map(|&s| blocked(s)).collect();
        assert!(
            before.iter().any(|b| !b),
            "the test thread blocks everything already"
        );
        let (tell, told) = std_mpsc::channel();
        let thread = spawn_with_signals_blocked("mask test", move || {
            let inner = std::thread::spawn(move || signals.iter().all(|&s| blocked(s)));
            let mine = signals.iter().all(|&s| blocked(s));
            tell.send((mine, inner.join().unwrap())).unwrap();
        })
        .unwrap();
        thread.join().unwrap();
        assert_eq!(told.recv().unwrap(), (true, true));
        let after: Vec<bool> = signals.iter().map(|&s| blocked(s)).collect();
        assert_eq!(before, after);
    }

    #[test]
    fn submitting_after_the_thread_is_gone_is_an_error() {
        let mut harness = Harness::new();
        harness.client.submissions.take();
        let spec = FetchSpec::from_json(&json!({"url": "http://h/"})).unwrap();
        let policy = Arc::new(Policy {
            allowed_hosts: AllowedHosts::parse("h").unwrap(),
            max_response_size: 10,
        });
        let request = prepare(&spec, &Secrets::new(), "k", policy).unwrap();
        assert_eq!(harness.client.submit(1, request), Err(ClientStopped));
        assert_eq!(harness.client.in_flight(), 0);
    }
}
