//! The dashboard: HTML rendered on the server with maud, which escapes every
//! value it interpolates (event data is written by whoever may send events),
//! and a little plain JavaScript (static/app.js) that refreshes the parts of a
//! page that change while runs are in progress.

mod events;
mod functions;
mod runs;
pub mod timeline;
mod workers;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

use crate::app::{AppState, Shared};
use crate::db::DbError;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/functions") }))
        .route("/functions", get(functions::list))
        .route("/functions/{id}", get(functions::show))
        .route("/functions/{id}/pause", post(functions::pause))
        .route("/functions/{id}/resume", post(functions::resume))
        .route("/functions/{id}/invoke", post(functions::invoke))
        .route("/events", get(events::list))
        .route("/events/{id}", get(events::show))
        .route("/send", get(events::send_form).post(events::send))
        .route("/runs", get(runs::list))
        .route("/runs/{id}", get(runs::show))
        .route("/runs/{id}/cancel", post(runs::cancel))
        .route("/runs/{id}/rerun", post(runs::rerun))
        .route("/workers", get(workers::list))
        .route("/static/app.css", get(stylesheet))
        .route("/static/app.js", get(script))
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../assets/app.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../assets/app.js"),
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Tab {
    Functions,
    Events,
    Runs,
    Workers,
    Send,
}

fn page(state: &AppState, tab: Tab, title: &str, body: Markup) -> Markup {
    let item = |t: Tab, href: &str, label: &str| {
        html! { a href=(href) class=[(t == tab).then_some("active")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · pg_jobs" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body {
                header {
                    span.brand { "pg_jobs" }
                    nav {
                        (item(Tab::Functions, "/functions", "Functions"))
                        (item(Tab::Events, "/events", "Events"))
                        (item(Tab::Runs, "/runs", "Runs"))
                        (item(Tab::Workers, "/workers", "Workers"))
                        (item(Tab::Send, "/send", "Send event"))
                    }
                    span.who title="The dashboard sees what this role may read" {
                        (state.role) " @ " (state.database)
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A page for an error: the SQLSTATE and PostgreSQL's message, escaped.
fn failure(state: &AppState, tab: Tab, e: &DbError) -> Response {
    let status = match e.sqlstate.as_deref() {
        Some("42501") => StatusCode::FORBIDDEN,
        Some("42704") => StatusCode::NOT_FOUND,
        Some(code) if code.starts_with("22") || code == "0A000" || code == "55000" => {
            StatusCode::BAD_REQUEST
        }
        Some(_) => StatusCode::INTERNAL_SERVER_ERROR,
        None => StatusCode::SERVICE_UNAVAILABLE,
    };
    (
        status,
        page(state, tab, "Error", html! { h1 { "Error" } (error_box(e)) }),
    )
        .into_response()
}

fn not_found(state: &AppState, tab: Tab, what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        page(
            state,
            tab,
            "Not found",
            html! {
                h1 { "Not found" }
                p { (what) " does not exist, or this role may not see it." }
            },
        ),
    )
        .into_response()
}

fn error_box(e: &DbError) -> Markup {
    html! {
        div.error role="alert" {
            @if let Some(code) = &e.sqlstate { code.sqlstate { (code) } " " }
            span.message { (e.message) }
            @if let Some(detail) = &e.detail { div.detail { (detail) } }
            @if let Some(hint) = &e.hint { div.hint { "Hint: " (hint) } }
        }
    }
}

/// A refused POST: the form did not carry this server's token.
fn csrf_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        "the form's CSRF token is missing or stale: reload the page and try again\n",
    )
        .into_response()
}

fn csrf_field(state: &AppState) -> Markup {
    html! { input type="hidden" name="csrf" value=(state.csrf.value()); }
}

/// A button that POSTs to `action`: every state change is such a form.
fn action_button(state: &AppState, action: &str, label: &str, class: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf_field(state))
            button type="submit" class=(class) { (label) }
        }
    }
}

const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// One path segment: function ids may hold `/`, `?` or `#`.
fn segment(value: &str) -> String {
    utf8_percent_encode(value, PATH_SEGMENT).to_string()
}

/// A query string from the pairs whose value is set.
fn query_string(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| {
            v.as_ref()
                .map(|v| format!("{k}={}", utf8_percent_encode(v, PATH_SEGMENT)))
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn function_href(id: &str) -> String {
    format!("/functions/{}", segment(id))
}

fn time(at: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)) {
            (at.format("%Y-%m-%d %H:%M:%S%.3f"))
        }
    }
}

fn optional_time(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        Some(at) => time(at),
        None => html! { span.none { "—" } },
    }
}

fn status_badge(status: &str) -> Markup {
    html! { span class={ "status status-" (status) } { (status) } }
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

fn json_block(value: &Value) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    html! { pre.json { (text) } }
}

/// The first `max` characters of compact JSON, for tables.
fn json_inline(value: &Value, max: usize) -> Markup {
    let text = value.to_string();
    let short: String = text.chars().take(max).collect();
    html! {
        code.json title=[(short.len() < text.len()).then_some(&text)] {
            (short) @if short.len() < text.len() { "…" }
        }
    }
}

fn short_id(id: &uuid::Uuid) -> String {
    let text = id.to_string();
    format!("…{}", &text[text.len() - 8..])
}

/// Keeps a redirect on this server: a path, never `//host` or a scheme.
fn local_path(back: Option<&str>, default: String) -> String {
    match back {
        Some(path) if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') => {
            path.to_string()
        }
        _ => default,
    }
}

/// Page content that `static/app.js` fetches again every second while it is
/// marked live (a run in progress); the fresh copy says whether it still is.
fn live_region(id: &str, live: bool, body: Markup) -> Markup {
    html! {
        div id=(id) data-live=[live.then_some("1")] { (body) }
    }
}

fn no_rows(text: &str) -> Markup {
    html! { p.empty { (text) } }
}

/// A bar of the timeline: SVG attributes rather than inline styles, which the
/// Content-Security-Policy forbids.
fn svg_rect(x: f64, width: f64, class: &str, title: &str) -> Markup {
    html! {
        rect x=(format!("{x:.2}")) y="0" width=(format!("{width:.2}")) height="12" class=(class) {
            title { (title) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_is_the_default() {
        let hostile = r#""><img src=x onerror=alert(1)><script>alert(2)</script>"#;
        let out = json_inline(&Value::String(hostile.into()), 200).into_string();
        assert!(!out.contains("<img") && !out.contains("<script"), "{out}");
        let out = status_badge(hostile).into_string();
        assert!(!out.contains("\"><img"), "{out}");
    }

    #[test]
    fn links_encode_ids_and_redirects_stay_local() {
        assert_eq!(function_href("app/a b?#"), "/functions/app%2Fa%20b%3F%23");
        assert_eq!(
            query_string(&[("function", Some("a&b=c".into())), ("status", None)]),
            "?function=a%26b%3Dc"
        );
        assert_eq!(local_path(Some("/runs"), "/x".into()), "/runs");
        for hostile in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil",
            "runs",
        ] {
            assert_eq!(local_path(Some(hostile), "/x".into()), "/x");
        }
    }
}
