//! Events: the newest ones, one event with what pg_jobs made of it
//! (`jobs.explain_event`), and the form that sends one.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use uuid::Uuid;

use super::*;
use crate::db::{EventRow, RunRef};

const PAGE_SIZE: i64 = 50;

#[derive(Deserialize)]
pub struct ListQuery {
    name: Option<String>,
    before: Option<String>,
}

fn runs_cell(runs: &[RunRef], event: Uuid) -> Markup {
    let mine: Vec<&RunRef> = runs.iter().filter(|r| r.event_id == event).collect();
    html! {
        @if mine.is_empty() { span.none { "none" } }
        @for run in mine {
            a.run href=(format!("/runs/{}", run.id)) { (run.function_id) " " (status_badge(&run.status)) }
            " "
        }
    }
}

pub async fn list(State(state): State<Shared>, Query(q): Query<ListQuery>) -> Response {
    let name = q.name.as_deref().map(str::trim).filter(|n| !n.is_empty());
    let before = match q.before.as_deref().filter(|b| !b.is_empty()) {
        None => None,
        Some(text) => match text.parse::<Uuid>() {
            Ok(id) => Some(id),
            Err(_) => return bad_parameter(&state, Tab::Events, "before", text),
        },
    };
    let loaded = async {
        let events = state.db.events(name, before, PAGE_SIZE + 1).await?;
        let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        let runs = state.db.runs_of_events(&ids).await?;
        Ok::<_, DbError>((events, runs))
    }
    .await;
    let (mut events, runs) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => return failure(&state, Tab::Events, &e),
    };
    let more = events.len() as i64 > PAGE_SIZE;
    events.truncate(PAGE_SIZE as usize);
    let older = more.then(|| {
        format!(
            "/events{}",
            query_string(&[
                ("name", name.map(str::to_string)),
                ("before", events.last().map(|e| e.id.to_string())),
            ])
        )
    });
    let body = html! {
        h1 { "Events" }
        form.filters method="get" action="/events" {
            label { "Name " input type="text" name="name" value=[name] placeholder="app/user.created"; }
            button type="submit" { "Filter" }
            @if name.is_some() { a href="/events" { "clear" } }
            a.button href="/send" { "Send event" }
        }
        (live_region("events", before.is_none(), html! {
            @if events.is_empty() {
                (no_rows("No events."))
            } @else {
                table.events {
                    thead { tr { th { "Received" } th { "Name" } th { "Data" } th { "Runs started" } th { "Event" } } }
                    tbody {
                        @for e in &events {
                            tr data-event=(e.id) {
                                td { (time(e.received_at)) }
                                td.name { a href=(format!("/events{}", query_string(&[("name", Some(e.name.clone()))]))) { (e.name) } }
                                td.data { (json_inline(&e.data, 160)) }
                                td { (runs_cell(&runs, e.id)) }
                                td { a href=(format!("/events/{}", e.id)) { (short_id(&e.id)) } }
                            }
                        }
                    }
                }
            }
        }))
        (pager(&format!("/events{}", query_string(&[("name", name.map(str::to_string))])), before.is_some(), older))
    };
    page(&state, Tab::Events, "Events", body).into_response()
}

pub async fn show(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<Uuid>() else {
        return bad_parameter(&state, Tab::Events, "event id", &id);
    };
    let event = match state.db.event(id).await {
        Ok(Some(event)) => event,
        Ok(None) => return not_found(&state, Tab::Events, &format!("Event {id}")),
        Err(e) => return failure(&state, Tab::Events, &e),
    };
    // Shown even when explaining fails (a role without EXECUTE on it).
    let explained = state.db.explain_event(id).await;
    let runs = state.db.runs_of_events(&[id]).await;
    let resend = format!("/send?from={}", event.id);
    let body = html! {
        h1 { "Event " code.event-name { (event.name) } }
        (event_facts(&event))
        p { a.button href=(resend) { "Send again…" } }
        h2 { "Data" }
        (json_block(&event.data))
        h2 { "Runs it started" }
        @match &runs {
            Ok(runs) => (runs_cell(runs, event.id)),
            Err(e) => (error_box(e)),
        }
        h2 { "Why each function did or did not run" }
        @match &explained {
            Ok(rows) if rows.is_empty() => (no_rows("This role owns no functions.")),
            Ok(rows) => table.explain {
                thead { tr { th { "Function" } th { "Matched" } th { "Reason" } th { "Runs" } } }
                tbody {
                    @for row in rows {
                        tr data-function=(row.function_id) {
                            td { a href=(function_href(&row.function_id)) { (row.function_id) } }
                            td { @if row.matched { "yes" } @else { "no" } }
                            td { (row.reason) }
                            td { @for run in &row.run_ids { a href=(format!("/runs/{run}")) { (short_id(run)) } " " } }
                        }
                    }
                }
            },
            Err(e) => (error_box(e)),
        }
    };
    page(&state, Tab::Events, &event.name, body).into_response()
}

fn event_facts(event: &EventRow) -> Markup {
    html! {
        dl.facts {
            dt { "Id" } dd { code { (event.id) } }
            dt { "ts" } dd { (time(event.ts)) }
            dt { "Received" } dd { (time(event.received_at)) }
            @if let Some(dedup) = &event.dedup_id { dt { "Sender's id" } dd { code { (dedup) } } }
            @if let Some(original) = event.duplicate_of {
                dt { "Duplicate of" } dd { a href=(format!("/events/{original}")) { (original) } " (started nothing)" }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct SendQuery {
    name: Option<String>,
    from: Option<String>,
}

pub async fn send_form(State(state): State<Shared>, Query(q): Query<SendQuery>) -> Response {
    let mut name = q.name.unwrap_or_default();
    let mut data = "{}".to_string();
    if let Some(Ok(from)) = q.from.as_deref().map(str::parse::<Uuid>) {
        match state.db.event(from).await {
            Ok(Some(event)) => {
                name = event.name;
                data = serde_json::to_string_pretty(&event.data).unwrap_or_default();
            }
            Ok(None) => {}
            Err(e) => return failure(&state, Tab::Send, &e),
        }
    }
    send_page(&state, &name, &data, None).await
}

async fn send_page(state: &AppState, name: &str, data: &str, error: Option<&DbError>) -> Response {
    // Schemas are a help to the sender; the extension checks them on send.
    let schemas = state.db.event_schemas().await.unwrap_or_default();
    let body = html! {
        h1 { "Send event" }
        p.lead { "Calls " code { "jobs.send(name, data)" } " as " (state.role) ", in its own transaction: the event starts every function that listens to it." }
        @if let Some(e) = error { (error_box(e)) }
        form.stacked method="post" action="/send" {
            (csrf_field(state))
            label for="event-name" { "Name" }
            input id="event-name" type="text" name="name" value=(name) list="schema-names" required placeholder="app/hello.world" autocomplete="off";
            datalist id="schema-names" { @for s in &schemas { option value=(s.name) {} } }
            label for="event-data" { "Data (a JSON object)" }
            textarea id="event-data" name="data" rows="10" spellcheck="false" { (data) }
            button type="submit" { "Send" }
        }
        @if !schemas.is_empty() {
            h2 { "Event schemas" }
            p { "A send whose data breaks its event's schema fails with SQLSTATE 22023 and stores nothing." }
            @for s in &schemas {
                details data-schema=(s.name) open[s.name == name] {
                    summary { code { (s.name) } }
                    (json_block(&s.schema))
                }
            }
        }
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    (status, page(state, Tab::Send, "Send event", body)).into_response()
}

#[derive(Deserialize)]
pub struct SendForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    data: String,
}

pub async fn send(State(state): State<Shared>, Form(form): Form<SendForm>) -> Response {
    if !state.csrf.matches(&form.csrf) {
        return csrf_refused();
    }
    let data = if form.data.trim().is_empty() {
        "{}"
    } else {
        form.data.as_str()
    };
    match state.db.send(form.name.trim(), data).await {
        Ok(id) => Redirect::to(&format!("/events/{id}")).into_response(),
        Err(e) => send_page(&state, &form.name, data, Some(&e)).await,
    }
}

/// "Newest" and "Older" links of a keyset-paginated list.
pub(super) fn pager(first: &str, paged: bool, older: Option<String>) -> Markup {
    html! {
        nav.pager {
            @if paged { a href=(first) { "← Newest" } }
            @if let Some(older) = older { a href=(older) { "Older →" } }
        }
    }
}

pub(super) fn bad_parameter(state: &AppState, tab: Tab, field: &str, value: &str) -> Response {
    failure(
        state,
        tab,
        &DbError {
            sqlstate: Some("22023".into()),
            message: format!("{field} = {value:?} is not valid"),
            detail: None,
            hint: None,
        },
    )
}
