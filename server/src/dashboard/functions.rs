//! Functions: their triggers, schedules, settings and recent runs; pause,
//! resume, invoke.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::{Duration, Utc};
use maud::{html, Markup};
use serde::Deserialize;

use super::*;
use crate::db::{FunctionRow, ScheduleRow, StatusCount, STATUSES};

/// Config keys shown as triggers; every other key is a setting (retries,
/// flow control, ...), shown as written, so new keys need no change here.
const TRIGGER_KEYS: [&str; 4] = ["event", "cron", "timezone", "if"];

fn counts_window() -> chrono::DateTime<Utc> {
    Utc::now() - Duration::hours(24)
}

fn counts_of<'a>(
    counts: &'a [StatusCount],
    function_id: &'a str,
) -> impl Iterator<Item = &'a StatusCount> {
    counts.iter().filter(move |c| c.function_id == function_id)
}

fn counts_cell(counts: &[StatusCount], function_id: &str) -> Markup {
    let by_status: BTreeMap<&str, i64> = counts_of(counts, function_id)
        .map(|c| (c.status.as_str(), c.count))
        .collect();
    html! {
        @if by_status.is_empty() { span.none { "none" } }
        @for status in STATUSES {
            @if let Some(n) = by_status.get(status) {
                a.count href=(format!("/runs{}", query_string(&[
                    ("function", Some(function_id.to_string())),
                    ("status", Some(status.to_string())),
                ]))) {
                    (status_badge(status)) " " (n)
                }
                " "
            }
        }
    }
}

fn triggers_cell(function: &FunctionRow, schedules: &[ScheduleRow]) -> Markup {
    let condition = function.config.get("if").and_then(|v| v.as_str());
    html! {
        ul.triggers {
            @for event in &function.triggers {
                li { "event " a href=(format!("/events{}", query_string(&[("name", Some(event.clone()))]))) { code { (event) } } }
            }
            @for schedule in schedules.iter().filter(|s| s.function_id == function.id) {
                li {
                    "cron " code { (schedule.expression) }
                    @if schedule.timezone != "UTC" { " (" (schedule.timezone) ")" }
                    ", next " (time(schedule.next_fire_at))
                }
            }
            @if let Some(condition) = condition { li { "if " code { (condition) } } }
            @if function.triggers.is_empty() && !schedules.iter().any(|s| s.function_id == function.id) {
                li.none { "invoked only" }
            }
        }
    }
}

fn settings_cell(function: &FunctionRow) -> Markup {
    let settings: Vec<(&String, &serde_json::Value)> = function
        .config
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| !TRIGGER_KEYS.contains(&k.as_str()))
                .collect()
        })
        .unwrap_or_default();
    html! {
        @if settings.is_empty() { span.none { "defaults" } }
        ul.settings {
            @for (key, value) in settings {
                li { code { (key) } " " (json_inline(value, 80)) }
            }
        }
    }
}

fn pause_button(state: &AppState, function: &FunctionRow, back: &str) -> Markup {
    let (action, label) = if function.paused {
        ("resume", "Resume")
    } else {
        ("pause", "Pause")
    };
    html! {
        form.inline method="post" action=(format!("{}/{action}", function_href(&function.id))) {
            (csrf_field(state))
            input type="hidden" name="back" value=(back);
            button type="submit" { (label) }
        }
    }
}

pub async fn list(State(state): State<Shared>) -> Response {
    let loaded = async {
        Ok::<_, DbError>((
            state.db.functions().await?,
            state.db.schedules(None).await?,
            state.db.status_counts(counts_window(), None).await?,
        ))
    }
    .await;
    let (functions, schedules, counts) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => return failure(&state, Tab::Functions, &e),
    };
    let body = html! {
        h1 { "Functions" }
        p.lead { (functions.len()) " function(s) this role may see; run counts of the last 24 hours." }
        (live_region("functions", true, html! {
            @if functions.is_empty() {
                (no_rows("No functions. Define one with jobs.create_function."))
            } @else {
                table.functions {
                    thead { tr { th { "Function" } th { "Triggers" } th { "Handler" } th { "Settings" } th { "Runs (24 h)" } th {} } }
                    tbody {
                        @for f in &functions {
                            tr data-function=(f.id) {
                                td {
                                    a href=(function_href(&f.id)) { (f.id) }
                                    @if f.paused { " " span.paused { "paused" } }
                                }
                                td { (triggers_cell(f, &schedules)) }
                                td { code { (f.handler) } }
                                td { (settings_cell(f)) }
                                td { (counts_cell(&counts, &f.id)) }
                                td { (pause_button(&state, f, "/functions")) }
                            }
                        }
                    }
                }
            }
        }))
    };
    page(&state, Tab::Functions, "Functions", body).into_response()
}

async fn show_page(
    state: &AppState,
    id: &str,
    invoke_data: &str,
    error: Option<&DbError>,
) -> Response {
    let loaded = async {
        Ok::<_, DbError>((
            state.db.function(id).await?,
            state.db.schedules(Some(id)).await?,
            state.db.status_counts(counts_window(), Some(id)).await?,
        ))
    }
    .await;
    let (function, schedules, counts) = match loaded {
        Ok((Some(f), s, c)) => (f, s, c),
        Ok((None, _, _)) => return not_found(state, Tab::Functions, &format!("Function {id:?}")),
        Err(e) => return failure(state, Tab::Functions, &e),
    };
    let href = function_href(&function.id);
    let body = html! {
        h1 { "Function " code { (function.id) } @if function.paused { " " span.paused { "paused" } } }
        @if let Some(e) = error { (error_box(e)) }
        dl.facts {
            dt { "Handler" } dd { code { (function.handler) } }
            dt { "Owner" } dd { (function.owner) }
            dt { "Triggers" } dd { (triggers_cell(&function, &schedules)) }
            dt { "Settings" } dd { (settings_cell(&function)) }
            @if let Some(of) = &function.failure_of {
                dt { "on_failure of" } dd { a href=(function_href(of)) { (of) } }
            }
            dt { "Runs (24 h)" } dd { (counts_cell(&counts, &function.id)) " " a href=(format!("/runs{}", query_string(&[("function", Some(function.id.clone()))]))) { "all runs →" } }
            dt { "Defined" } dd { (time(function.created_at)) ", changed " (time(function.updated_at)) }
        }
        p { (pause_button(state, &function, &href)) }
        @if !schedules.is_empty() {
            h2 { "Schedules" }
            table {
                thead { tr { th { "Expression" } th { "Zone" } th { "Next fire" } th { "Last fired" } th { "Last run" } } }
                tbody {
                    @for s in &schedules {
                        tr {
                            td { code { (s.expression) } }
                            td { (s.timezone) }
                            td { (time(s.next_fire_at)) }
                            td { (optional_time(s.last_fired_at)) }
                            td { @if let Some(run) = s.last_run_id { a href=(format!("/runs/{run}")) { (short_id(&run)) } } }
                        }
                    }
                }
            }
        }
        h2 { "Config" }
        (json_block(&function.config))
        h2 { "Invoke" }
        form.stacked method="post" action=(format!("{href}/invoke")) {
            (csrf_field(state))
            label for="invoke-data" { "Data (a JSON object, the event's data)" }
            textarea id="invoke-data" name="data" rows="6" spellcheck="false" { (invoke_data) }
            button type="submit" { "Invoke" }
        }
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    (status, page(state, Tab::Functions, &function.id, body)).into_response()
}

pub async fn show(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    show_page(&state, &id, "{}", None).await
}

#[derive(Deserialize)]
pub struct PauseForm {
    #[serde(default)]
    csrf: String,
    back: Option<String>,
}

async fn set_paused(state: &AppState, id: &str, form: &PauseForm, paused: bool) -> Response {
    if !state.csrf.matches(&form.csrf) {
        return csrf_refused();
    }
    match state.db.set_paused(id, paused).await {
        Ok(()) => {
            Redirect::to(&local_path(form.back.as_deref(), function_href(id))).into_response()
        }
        Err(e) => failure(state, Tab::Functions, &e),
    }
}

pub async fn pause(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Form(form): Form<PauseForm>,
) -> Response {
    set_paused(&state, &id, &form, true).await
}

pub async fn resume(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Form(form): Form<PauseForm>,
) -> Response {
    set_paused(&state, &id, &form, false).await
}

#[derive(Deserialize)]
pub struct InvokeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    data: String,
}

pub async fn invoke(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Form(form): Form<InvokeForm>,
) -> Response {
    if !state.csrf.matches(&form.csrf) {
        return csrf_refused();
    }
    let data = if form.data.trim().is_empty() {
        "{}"
    } else {
        form.data.as_str()
    };
    match state.db.invoke_function(&id, data).await {
        Ok(run) => Redirect::to(&format!("/runs/{run}")).into_response(),
        Err(e) => show_page(&state, &id, data, Some(&e)).await,
    }
}
