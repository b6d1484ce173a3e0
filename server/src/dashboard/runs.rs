//! Runs: the newest first, with filters and keyset pagination; one run with
//! its event, outcome and timeline; cancel and rerun.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use maud::{html, Markup};
use serde::Deserialize;
use uuid::Uuid;

use super::events::{bad_parameter, pager};
use super::timeline::{duration_between, Axis, WIDTH};
use super::*;
use crate::db::{RunFilter, RunRow, StepRow, STATUSES};

const PAGE_SIZE: i64 = 50;

#[derive(Deserialize, Default)]
pub struct ListQuery {
    function: Option<String>,
    status: Option<String>,
    from: Option<String>,
    to: Option<String>,
    before: Option<String>,
}

/// A time as typed in a filter, read as UTC: RFC 3339, or what an HTML
/// `datetime-local` input sends (`2026-12-01T09:30`), or a date.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(at) = NaiveDateTime::parse_from_str(text, format) {
            return Some(at.and_utc());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|at| at.and_utc())
}

fn set(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn run_filter(q: &ListQuery) -> Result<RunFilter, (&'static str, String)> {
    let time = |field: &'static str, value: &Option<String>| match set(value) {
        None => Ok(None),
        Some(text) => parse_time(text).map(Some).ok_or((field, text.to_string())),
    };
    let status = set(&q.status).map(str::to_string);
    if let Some(s) = &status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(("status", s.clone()));
        }
    }
    Ok(RunFilter {
        function_id: set(&q.function).map(str::to_string),
        status,
        from: time("from", &q.from)?,
        to: time("to", &q.to)?,
        before: match set(&q.before) {
            None => None,
            Some(text) => Some(text.parse().map_err(|_| ("before", text.to_string()))?),
        },
    })
}

pub async fn list(State(state): State<Shared>, Query(q): Query<ListQuery>) -> Response {
    let filter = match run_filter(&q) {
        Ok(filter) => filter,
        Err((field, value)) => return bad_parameter(&state, Tab::Runs, field, &value),
    };
    let loaded = async {
        Ok::<_, DbError>((
            state.db.runs(&filter, PAGE_SIZE + 1).await?,
            state.db.functions().await?,
        ))
    }
    .await;
    let (mut runs, functions) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => return failure(&state, Tab::Runs, &e),
    };
    let more = runs.len() as i64 > PAGE_SIZE;
    runs.truncate(PAGE_SIZE as usize);
    let filters = |before: Option<String>| {
        query_string(&[
            ("function", set(&q.function).map(str::to_string)),
            ("status", set(&q.status).map(str::to_string)),
            ("from", set(&q.from).map(str::to_string)),
            ("to", set(&q.to).map(str::to_string)),
            ("before", before),
        ])
    };
    let older = more.then(|| format!("/runs{}", filters(runs.last().map(|r| r.id.to_string()))));
    let now = Utc::now();
    let body = html! {
        h1 { "Runs" }
        form.filters method="get" action="/runs" {
            label { "Function "
                select name="function" {
                    option value="" { "any" }
                    @for f in &functions {
                        option value=(f.id) selected[filter.function_id.as_deref() == Some(f.id.as_str())] { (f.id) }
                    }
                }
            }
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for s in STATUSES { option value=(s) selected[filter.status.as_deref() == Some(s)] { (s) } }
                }
            }
            label { "From (UTC) " input type="datetime-local" name="from" step="1" value=[set(&q.from)]; }
            label { "To " input type="datetime-local" name="to" step="1" value=[set(&q.to)]; }
            button type="submit" { "Filter" }
            a href="/runs" { "clear" }
        }
        (live_region("runs", filter.before.is_none(), html! {
            @if runs.is_empty() {
                (no_rows("No runs match."))
            } @else {
                table.runs {
                    thead { tr { th { "Created" } th { "Function" } th { "Event" } th { "Status" } th { "Attempt" } th { "Duration" } th { "Run" } } }
                    tbody {
                        @for r in &runs {
                            tr data-run=(r.id) data-status=(r.status) {
                                td { (time(r.created_at)) }
                                td { a href=(function_href(&r.function_id)) { (r.function_id) } }
                                td.name { a href=(format!("/events/{}", r.event_id)) { (r.event_name.as_deref().unwrap_or("?")) } }
                                td { (status_badge(&r.status)) }
                                td.num { (r.attempt + 1) }
                                td.num { @if let Some(started) = r.started_at { (duration_between(started, r.ended_at.unwrap_or(now))) } }
                                td { a href=(format!("/runs/{}", r.id)) { (short_id(&r.id)) } }
                            }
                        }
                    }
                }
            }
        }))
        (pager(&format!("/runs{}", filters(None)), filter.before.is_some(), older))
    };
    page(&state, Tab::Runs, "Runs", body).into_response()
}

pub async fn show(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    match id.parse::<Uuid>() {
        Ok(id) => run_page(&state, id, None).await,
        Err(_) => bad_parameter(&state, Tab::Runs, "run id", &id),
    }
}

async fn run_page(state: &AppState, id: Uuid, error: Option<&DbError>) -> Response {
    let loaded = async {
        let Some(run) = state.db.run(id).await? else {
            return Ok(None);
        };
        Ok::<_, DbError>(Some((
            state.db.event(run.event_id).await?,
            state.db.steps(id).await?,
            state.db.attempt_errors(id).await?,
            state.db.can_rerun().await?,
            run,
        )))
    };
    let (event, steps, errors, can_rerun, run) = match loaded.await {
        Ok(Some(loaded)) => loaded,
        Ok(None) => return not_found(state, Tab::Runs, &format!("Run {id}")),
        Err(e) => return failure(state, Tab::Runs, &e),
    };
    let now = Utc::now();
    let live = !is_terminal(&run.status);
    let action = |verb: &str| format!("/runs/{}/{verb}", run.id);
    let body = html! {
        h1 { "Run of " a href=(function_href(&run.function_id)) { (run.function_id) } " " (status_badge(&run.status)) }
        @if let Some(e) = error { (error_box(e)) }
        (live_region("run", live, html! {
            div.actions {
                @if live { (action_button(state, &action("cancel"), "Cancel", "danger")) }
                @if can_rerun { (action_button(state, &action("rerun"), "Rerun", "")) }
            }
            dl.facts data-status=(run.status) {
                dt { "Run" } dd { code { (run.id) } }
                dt { "Event" } dd {
                    @match &event {
                        Some(e) => { a.event-name href=(format!("/events/{}", e.id)) { (e.name) } " " (json_inline(&e.data, 120)) },
                        None => code { (run.event_id) },
                    }
                }
                dt { "Status" } dd { (status_badge(&run.status)) }
                dt { "Attempt" } dd { (run.attempt + 1) }
                dt { "Created" } dd { (time(run.created_at)) }
                dt { "Started" } dd { (optional_time(run.started_at)) }
                dt { "Ended" } dd { (optional_time(run.ended_at)) }
                @if let Some(started) = run.started_at {
                    dt { "Duration" } dd { (duration_between(started, run.ended_at.unwrap_or(now))) }
                }
                @if let Some(parent) = run.parent_run_id {
                    dt { "Invoked by" } dd {
                        a href=(format!("/runs/{parent}")) { (short_id(&parent)) }
                        @if let Some(step) = &run.parent_step_id { ", step " code { (step) } }
                    }
                }
            }
            @if let Some(output) = &run.output { h2 { "Output" } div.output { (json_block(output)) } }
            @if let Some(error) = &run.error { h2 { "Error" } div.run-error { (json_block(error)) } }
            h2 { "Timeline" }
            (timeline(state, &run, &steps, can_rerun, now))
            @if !errors.is_empty() {
                h2 { "Failed attempts" }
                table.attempts {
                    thead { tr { th { "Step" } th { "Attempt" } th { "SQLSTATE" } th { "Message" } th { "Failed at" } } }
                    tbody {
                        @for e in &errors {
                            tr {
                                td { @if e.step_id.is_empty() { span.none { "the handler" } } @else { code { (e.step_id) } } }
                                td.num { (e.attempt + 1) }
                                td { code.sqlstate { (e.sqlstate) } }
                                td {
                                    (e.message)
                                    @if let Some(d) = &e.detail { div.detail { (d) } }
                                    @if let Some(h) = &e.hint { div.hint { "Hint: " (h) } }
                                }
                                td { (time(e.failed_at)) }
                            }
                        }
                    }
                }
            }
        }))
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    (status, page(state, Tab::Runs, "Run", body)).into_response()
}

/// One bar per step on a time axis from the run's creation to its end (or
/// now). Sleeps and waits are drawn as outlined gaps: time the run spent
/// holding nothing.
fn timeline(
    state: &AppState,
    run: &RunRow,
    steps: &[StepRow],
    can_rerun: bool,
    now: DateTime<Utc>,
) -> Markup {
    let end_of = |end: Option<DateTime<Utc>>| end.unwrap_or(now);
    let axis = Axis::new(
        run.created_at,
        end_of(run.ended_at),
        steps.iter().map(|s| (s.started_at, end_of(s.ended_at))),
    );
    let view_box = format!("0 0 {WIDTH} 12");
    let svg_bar = |from: DateTime<Utc>, to: DateTime<Utc>, class: String, title: String| {
        let bar = axis.bar(from, to);
        html! {
            svg.track viewBox=(view_box) preserveAspectRatio="none" role="img" aria-label=(title) {
                (svg_rect(bar.x, bar.width, &class, &title))
            }
        }
    };
    html! {
        div.timeline {
            div.row.axis {
                div.label { "t = " (time(run.created_at)) }
                div.ticks { @for (_, label) in axis.ticks(4) { span { (label) } } }
                div.meta {}
            }
            @if let Some(started) = run.started_at {
                div.row.run-row {
                    div.label { strong { "run" } }
                    (svg_bar(started, end_of(run.ended_at), format!("bar status-{}", run.status),
                        format!("run {}: {}", run.status, duration_between(started, end_of(run.ended_at)))))
                    div.meta { (duration_between(started, end_of(run.ended_at))) }
                }
            }
            @if steps.is_empty() { (no_rows("No steps yet.")) }
            @for step in steps {
                @let gap = matches!(step.kind.as_str(), "sleep" | "wait" | "invoke");
                @let duration = duration_between(step.started_at, end_of(step.ended_at));
                div.row.step data-step=(step.id) data-kind=(step.kind) data-status=(step.status) {
                    div.label {
                        code { (step.id) }
                        " " span.kind { (step.kind) }
                    }
                    (svg_bar(step.started_at, end_of(step.ended_at),
                        format!("bar status-{}{}", step.status, if gap { " gap" } else { "" }),
                        format!("{} {} {}: {}", step.kind, step.id, step.status, duration)))
                    div.meta {
                        (status_badge(&step.status)) " " (duration)
                        @if step.attempts > 1 { " · " (step.attempts) " attempts" }
                    }
                }
                @if step.output.is_some() || step.error.is_some() || can_rerun {
                    details.step-detail data-step=(step.id) {
                        summary { "output and errors of " code { (step.id) } }
                        p { "Started " (time(step.started_at)) ", ended " (optional_time(step.ended_at)) ", " (step.attempts) " attempt(s)." }
                        @if let Some(output) = &step.output { h3 { "Output" } (json_block(output)) }
                        @if let Some(error) = &step.error { h3 { "Last error" } (json_block(error)) }
                        @if can_rerun {
                            form.inline method="post" action=(format!("/runs/{}/rerun", run.id)) {
                                (csrf_field(state))
                                input type="hidden" name="from_step" value=(step.id);
                                button type="submit" { "Rerun from this step" }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
    from_step: Option<String>,
}

pub async fn cancel(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    if !state.csrf.matches(&form.csrf) {
        return csrf_refused();
    }
    let Ok(id) = id.parse::<Uuid>() else {
        return bad_parameter(&state, Tab::Runs, "run id", &id);
    };
    match state.db.cancel_run(id).await {
        Ok(()) => Redirect::to(&format!("/runs/{id}")).into_response(),
        Err(e) => run_page(&state, id, Some(&e)).await,
    }
}

pub async fn rerun(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    if !state.csrf.matches(&form.csrf) {
        return csrf_refused();
    }
    let Ok(id) = id.parse::<Uuid>() else {
        return bad_parameter(&state, Tab::Runs, "run id", &id);
    };
    let from_step = form.from_step.as_deref().filter(|s| !s.is_empty());
    match state.db.rerun(id, from_step).await {
        Ok(new_run) => Redirect::to(&format!("/runs/{new_run}")).into_response(),
        Err(e) => run_page(&state, id, Some(&e)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn filter_times() {
        let nine = Utc.with_ymd_and_hms(2026, 12, 1, 9, 30, 0).unwrap();
        assert_eq!(parse_time("2026-12-01T09:30"), Some(nine));
        assert_eq!(parse_time("2026-12-01T09:30:00"), Some(nine));
        assert_eq!(parse_time("2026-12-01T10:30:00+01:00"), Some(nine));
        assert_eq!(parse_time(" 2026-12-01 09:30 "), Some(nine));
        assert_eq!(
            parse_time("2026-12-01"),
            Some(Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap())
        );
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn filters_are_checked() {
        let q = ListQuery {
            status: Some("done".into()),
            ..Default::default()
        };
        assert_eq!(run_filter(&q).err(), Some(("status", "done".to_string())));
        let q = ListQuery {
            before: Some("not-a-uuid".into()),
            ..Default::default()
        };
        assert_eq!(run_filter(&q).err().map(|e| e.0), Some("before"));
        let q = ListQuery {
            function: Some("  ".into()),
            from: Some("2026-12-01".into()),
            ..Default::default()
        };
        let filter = run_filter(&q).unwrap();
        assert!(filter.function_id.is_none() && filter.from.is_some());
    }
}
