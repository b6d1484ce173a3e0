//! The dashboard in a real browser: headless Chromium driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`, which `make setup` installs),
//! against the demo's functions on a harness cluster.

mod common;

use std::future::Future;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use pg_jobs_e2e::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The same examples scripts/demo.sh loads.
const DEMO_EXAMPLES: [&str; 6] = [
    "hello",
    "user_onboarding",
    "parallel_processing",
    "payment_flow",
    "email_queue",
    "data_sync",
];

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = Cluster::with_pg_jobs("server_browser", 2, &[]);
        let mut c = cluster.connect();
        for example in DEMO_EXAMPLES {
            let path = repository().join("examples").join(format!("{example}.sql"));
            c.batch_execute(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        c.batch_execute(
            "CREATE SEQUENCE charge_attempts;
             CREATE FUNCTION checkout(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
             DECLARE
                 order_row jsonb;
             BEGIN
                 order_row := jobs.step('load-order', $s$ SELECT jsonb_build_object('order', $1->>'order', 'total', 42) $s$, ctx->'event'->'data');
                 -- A sequence is not rolled back: the first attempt fails, the second succeeds.
                 PERFORM jobs.step('charge-card', $s$ SELECT 'ch_' || 1 / (nextval('charge_attempts') - 1) $s$);
                 PERFORM jobs.sleep('wait-for-settlement', '1 second');
                 RETURN jobs.step('send-receipt', $s$ SELECT jsonb_build_object('sent', true) $s$);
             END $$;
             SELECT jobs.create_function('checkout', 'checkout(jsonb)',
                 '{\"event\": \"shop/order.placed\", \"retries\": {\"attempts\": 3, \"backoff\": {\"type\": \"fixed\", \"base\": \"300ms\"}}}');
             CREATE FUNCTION slow_hello(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM jobs.step('first', 'SELECT 1');
                 PERFORM jobs.sleep('breath', '2 seconds');
                 RETURN jobs.step('second', $s$ SELECT jsonb_build_object('hello', $1->>'name') $s$, ctx->'event'->'data');
             END $$;
             SELECT jobs.create_function('slow-hello', 'slow_hello(jsonb)', '{\"event\": \"browser/slow\"}');
             CREATE FUNCTION long_nap(ctx jsonb) RETURNS void LANGUAGE plpgsql AS $$
             BEGIN PERFORM jobs.sleep('nap', '1 day'); END $$;
             SELECT jobs.create_function('long-nap', 'long_nap(jsonb)', '{\"event\": \"browser/nap\"}');
             CREATE FUNCTION echo_event(ctx jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT ctx->'event'->'data' $$;",
        )
        .unwrap();
        cluster
    })
}

/// Runs sync database code from inside the browser's async test body (the
/// harness's client brings its own runtime and refuses to nest).
fn db<T: Send>(f: impl FnOnce(&mut Client) -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(|| f(&mut cluster().connect())).join().unwrap())
}

struct ChromeDriver {
    child: Child,
    port: u16,
    profile: PathBuf,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
        assert!(
            Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
            "the browser tests need Debian's chromium and chromium-driver (make setup installs them)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile =
            std::env::temp_dir().join(format!("pg_jobs-chromium-{}-{port}", std::process::id()));
        ChromeDriver {
            child,
            port,
            profile,
        }
    }

    async fn session(&self) -> Browser {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", self.profile.display()),
                ]
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a WebDriver session")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// One browser at a time (2 cores); the session is closed even when the test
/// fails, then the failure is raised.
fn with_browser<Fut>(test: impl FnOnce(Browser, Server) -> Fut)
where
    Fut: Future<Output = ()> + Send + 'static,
{
    static ONE_BROWSER: Mutex<()> = Mutex::new(());
    let _turn = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(cluster(), "postgres");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let driver = ChromeDriver::start();
        let browser = driver.session().await;
        let outcome = tokio::spawn(test(browser.clone(), server)).await;
        let _ = browser.close().await;
        drop(driver);
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    });
}

async fn attr(browser: &Browser, css: &str, name: &str) -> Option<String> {
    match browser.find(Locator::Css(css)).await {
        // The live region may have been replaced since it was found.
        Ok(element) => element.attr(name).await.ok().flatten(),
        Err(_) => None,
    }
}

async fn attrs(browser: &Browser, css: &str, name: &str) -> Vec<String> {
    let mut values = Vec::new();
    for element in browser.find_all(Locator::Css(css)).await.unwrap() {
        values.push(element.attr(name).await.unwrap().unwrap_or_default());
    }
    values
}

/// Waits (the page updating itself, no reload) until the run shows `status`.
async fn wait_for_status(browser: &Browser, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shown = attr(browser, "dl.facts", "data-status").await;
        if shown.as_deref() == Some(status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the run page still shows {shown:?}, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn js(browser: &Browser, script: &str) -> serde_json::Value {
    browser.execute(script, vec![]).await.unwrap()
}

async fn type_into(browser: &Browser, css: &str, text: &str) {
    let field = browser.find(Locator::Css(css)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

async fn submit(browser: &Browser, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// The URL once the browser has navigated to a path starting with `prefix`
/// (a click may return before the navigation it started has finished).
async fn wait_for_path(browser: &Browser, prefix: &str) -> url::Url {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let url = browser.current_url().await.unwrap();
        if url.path().starts_with(prefix) {
            return url;
        }
        assert!(
            Instant::now() < deadline,
            "still at {url}, not {prefix}…: {}",
            browser.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn run_id_from(url: &url::Url) -> String {
    url.path().strip_prefix("/runs/").unwrap().to_string()
}

#[test]
fn functions_page_shows_the_demo_functions() {
    let defined: Vec<String> = cluster()
        .connect()
        .query("SELECT id FROM jobs.functions ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    with_browser(|browser, server| async move {
        browser
            .goto(&format!("{}/functions", server.url))
            .await
            .unwrap();
        let shown = attrs(
            &browser,
            "table.functions tr[data-function]",
            "data-function",
        )
        .await;
        // Other tests of this binary may define more while this one runs.
        for id in &defined {
            assert!(shown.contains(id), "{id} missing from {shown:?}");
        }
        for demo in ["hello-world", "user-onboarding", "payment-flow"] {
            assert!(shown.iter().any(|f| f == demo), "{demo} in {shown:?}");
        }
        let title = browser.title().await.unwrap();
        assert_eq!(title, "Functions · pg_jobs");
    });
}

#[test]
fn send_an_event_from_the_form_and_watch_its_run_complete() {
    with_browser(|browser, server| async move {
        browser.goto(&format!("{}/send", server.url)).await.unwrap();
        type_into(&browser, "#event-name", "browser/slow").await;
        type_into(&browser, "#event-data", r#"{"name": "Grace"}"#).await;
        submit(&browser, "form.stacked button[type=submit]").await;
        wait_for_path(&browser, "/events/").await;

        // The run the event started is listed; open it.
        submit(&browser, "a.run").await;
        let run_id = run_id_from(&wait_for_path(&browser, "/runs/").await);
        js(&browser, "window.__samePage = true").await;
        let first = attr(&browser, "dl.facts", "data-status").await.unwrap();
        assert_ne!(
            first, "completed",
            "the run sleeps 2 s; it cannot be done yet"
        );
        wait_for_status(&browser, "completed").await;
        assert_eq!(
            js(&browser, "return window.__samePage === true").await,
            serde_json::Value::Bool(true),
            "the page updated itself without a reload"
        );
        let steps = attrs(&browser, ".timeline .step", "data-step").await;
        assert_eq!(steps, ["first", "breath", "second"]);
        let output = browser
            .find(Locator::Css("div.output"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(output.contains("\"hello\": \"Grace\""), "{output}");

        browser.goto(&format!("{}/runs", server.url)).await.unwrap();
        let status = attr(
            &browser,
            &format!("tr[data-run=\"{run_id}\"]"),
            "data-status",
        )
        .await;
        assert_eq!(status.as_deref(), Some("completed"));
    });
}

/// The run an event `name` with `data` starts, once completed. Tests share
/// the cluster, so each finds its own run by the event it sent.
fn completed_run(name: &str, data: &str) -> String {
    db(|c| {
        let event: String = c
            .query_one(
                "SELECT jobs.send($1, $2::text::jsonb)::text",
                &[&name, &data],
            )
            .unwrap()
            .get(0);
        let run: String = c
            .query_one(
                "SELECT id::text FROM jobs.runs WHERE event_id = $1::text::uuid",
                &[&event],
            )
            .unwrap()
            .get(0);
        wait_until("the run completes", Duration::from_secs(60), || {
            count(
                c,
                &format!(
                    "SELECT count(*) FROM jobs.runs WHERE id = '{run}' AND status = 'completed'"
                ),
            ) == 1
        });
        run
    })
}

#[test]
fn run_page_draws_one_bar_per_step_in_order() {
    // The only checkout: its first charge fails once (the sequence).
    let run_id = completed_run("shop/order.placed", "{\"order\": \"A-1001\"}");
    with_browser(move |browser, server| async move {
        browser
            .goto(&format!("{}/runs/{run_id}", server.url))
            .await
            .unwrap();
        wait_for_status(&browser, "completed").await;
        let steps = attrs(&browser, ".timeline .step", "data-step").await;
        assert_eq!(
            steps,
            [
                "load-order",
                "charge-card",
                "wait-for-settlement",
                "send-receipt"
            ]
        );
        let bars = browser
            .find_all(Locator::Css(".timeline .step svg rect"))
            .await
            .unwrap();
        assert_eq!(bars.len(), 4);
        let gap = attrs(&browser, ".timeline .step svg rect", "class").await;
        assert!(gap[2].contains("gap") && !gap[1].contains("gap"), "{gap:?}");
        // Bars start in order along the axis.
        let mut xs = Vec::new();
        for bar in &bars {
            xs.push(
                bar.attr("x")
                    .await
                    .unwrap()
                    .unwrap()
                    .parse::<f64>()
                    .unwrap(),
            );
        }
        assert!(xs.windows(2).all(|w| w[0] <= w[1]), "{xs:?}");
        let retried = browser
            .find(Locator::Css(
                ".timeline .step[data-step=\"charge-card\"] .meta",
            ))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(retried.contains("2 attempts"), "{retried}");
        let attempts = attrs(&browser, "table.attempts code.sqlstate", "class").await;
        assert_eq!(attempts.len(), 1, "one failed attempt: division by zero");

        let screenshots = repository().join("target").join("screenshots");
        std::fs::create_dir_all(&screenshots).unwrap();
        let png = browser.screenshot().await.unwrap();
        std::fs::write(screenshots.join("run.png"), png).unwrap();
    });
}

#[test]
fn rerun_a_run_from_its_last_step() {
    let run_id = completed_run("browser/slow", "{\"name\": \"again\"}");
    with_browser(move |browser, server| async move {
        browser
            .goto(&format!("{}/runs/{run_id}", server.url))
            .await
            .unwrap();
        wait_for_status(&browser, "completed").await;
        let step = "details.step-detail[data-step=\"second\"]";
        submit(&browser, &format!("{step} summary")).await;
        submit(&browser, &format!("{step} button[type=submit]")).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        let new_run = loop {
            let url = wait_for_path(&browser, "/runs/").await;
            let shown = run_id_from(&url);
            if shown != run_id {
                break shown;
            }
            assert!(Instant::now() < deadline, "still on the original run");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        wait_for_status(&browser, "completed").await;
        let steps = attrs(&browser, ".timeline .step", "data-step").await;
        assert_eq!(steps, ["first", "breath", "second"]);
        let (of, from_step): (Option<String>, Option<String>) = db(|c| {
            let row = c
                .query_one(
                    "SELECT rerun_of::text, rerun_step FROM jobs.runs WHERE id = $1::text::uuid",
                    &[&new_run],
                )
                .unwrap();
            (row.get(0), row.get(1))
        });
        assert_eq!(of.as_deref(), Some(run_id.as_str()));
        assert_eq!(from_step.as_deref(), Some("second"));
    });
}

#[test]
fn cancel_a_sleeping_run_from_its_page() {
    with_browser(|browser, server| async move {
        let run_id: String = db(|c| {
            let event: String = c
                .query_one("SELECT jobs.send('browser/nap')::text", &[])
                .unwrap()
                .get(0);
            c.query_one(
                "SELECT id::text FROM jobs.runs WHERE event_id = $1::text::uuid",
                &[&event],
            )
            .unwrap()
            .get(0)
        });
        browser
            .goto(&format!("{}/runs/{run_id}", server.url))
            .await
            .unwrap();
        wait_for_status(&browser, "sleeping").await;
        submit(&browser, "div.actions button.danger").await;
        assert_eq!(run_id_from(&browser.current_url().await.unwrap()), run_id);
        wait_for_status(&browser, "cancelled").await;
        assert!(browser
            .find_all(Locator::Css("div.actions button.danger"))
            .await
            .unwrap()
            .is_empty());
        let stored: String = db(|c| {
            c.query_one(
                "SELECT status FROM jobs.runs WHERE id = $1::text::uuid",
                &[&run_id],
            )
            .unwrap()
            .get(0)
        });
        assert_eq!(stored, "cancelled");
    });
}

#[test]
fn hostile_event_names_and_data_show_as_text() {
    let name = r#"xss/<script>window.__xss=1</script>"><img src=x onerror="window.__xss=2">"#;
    let data =
        r#"{"html": "</pre><script>window.__xss=3</script><img src=x onerror=window.__xss=4>"}"#;
    db(|c| {
        c.execute(
            "SELECT jobs.create_function('xss-listener', 'echo_event(jsonb)', jsonb_build_object('event', $1::text))",
            &[&name],
        )
    })
    .unwrap();
    with_browser(move |browser, server| async move {
        let clean = |browser: Browser| async move {
            assert_eq!(
                js(&browser, "return typeof window.__xss").await,
                "undefined"
            );
            assert_eq!(js(&browser, "return document.images.length").await, 0);
            assert_eq!(
                js(
                    &browser,
                    "return document.querySelectorAll('main script').length"
                )
                .await,
                0
            );
        };
        browser.goto(&format!("{}/send", server.url)).await.unwrap();
        type_into(&browser, "#event-name", name).await;
        type_into(&browser, "#event-data", data).await;
        submit(&browser, "form.stacked button[type=submit]").await;
        wait_for_path(&browser, "/events/").await;
        clean(browser.clone()).await;
        let shown = browser
            .find(Locator::Css("h1 code.event-name"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(shown, name);
        let shown_data = browser
            .find(Locator::Css("pre.json"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            shown_data.contains("</pre><script>window.__xss=3</script>"),
            "{shown_data}"
        );

        browser
            .goto(&format!("{}/events", server.url))
            .await
            .unwrap();
        clean(browser.clone()).await;
        let listed = browser
            .find(Locator::Css("table.events td.name a"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(listed, name);

        let run_id: String = db(|c| {
            c.query_one(
                "SELECT id::text FROM jobs.runs WHERE function_id = 'xss-listener'",
                &[],
            )
            .unwrap()
            .get(0)
        });
        browser
            .goto(&format!("{}/runs?function=xss-listener", server.url))
            .await
            .unwrap();
        clean(browser.clone()).await;
        submit(
            &browser,
            &format!("tr[data-run=\"{run_id}\"] td:last-child a"),
        )
        .await;
        clean(browser.clone()).await;
        let event_link = browser
            .find(Locator::Css("a.event-name"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(event_link, name);
    });
}
