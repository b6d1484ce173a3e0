//! Workers: `jobs.workers`, the launcher and each executor.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::html;

use super::*;

pub async fn list(State(state): State<Shared>) -> Response {
    let workers = match state.db.workers().await {
        Ok(workers) => workers,
        Err(e) => return failure(&state, Tab::Workers, &e),
    };
    let body = html! {
        h1 { "Workers" }
        p.lead { "From " code { "jobs.workers" } ": the launcher and each executor, with the run it is executing." }
        (live_region("workers", true, html! {
            @if workers.is_empty() {
                (no_rows("No workers: pg_jobs is not in shared_preload_libraries, or this database is not jobs.database."))
            } @else {
                table.workers {
                    thead { tr { th { "Kind" } th { "Slot" } th { "PID" } th { "State" } th { "Run" } th { "Last heartbeat" } } }
                    tbody {
                        @for w in &workers {
                            tr data-kind=(w.kind) {
                                td { (w.kind) }
                                td.num { @if let Some(slot) = w.slot { (slot) } }
                                td.num { (w.pid) }
                                td { (w.state) }
                                td { @if let Some(run) = w.run_id { a href=(format!("/runs/{run}")) { (short_id(&run)) } } }
                                td { (optional_time(w.last_heartbeat)) }
                            }
                        }
                    }
                }
            }
        }))
    };
    page(&state, Tab::Workers, "Workers", body).into_response()
}
