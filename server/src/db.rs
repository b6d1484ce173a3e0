//! Every statement the server sends, and the rows it reads. Columns are read by
//! name from explicit select lists, so the extension may add columns freely;
//! a renamed one is changed here and nowhere else.
//!
//! The server connects as the role in its URL and never elevates: what a page
//! shows is what PostgreSQL's grants and pg_jobs' row-level security let that
//! role read, and every action is a call of the SQL API as that role.

use std::fmt;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Client, Pool};
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

/// A failed statement as PostgreSQL reported it, or a connection problem.
#[derive(Debug, Clone)]
pub struct DbError {
    pub sqlstate: Option<String>,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl DbError {
    pub fn is(&self, sqlstate: &str) -> bool {
        self.sqlstate.as_deref() == Some(sqlstate)
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(code) = &self.sqlstate {
            write!(f, "{code}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => DbError {
                sqlstate: Some(db.code().code().to_string()),
                message: db.message().to_string(),
                detail: db.detail().map(str::to_string),
                hint: db.hint().map(str::to_string),
            },
            None => DbError {
                sqlstate: None,
                message: e.to_string(),
                detail: None,
                hint: None,
            },
        }
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => DbError {
                sqlstate: None,
                message: format!("no database connection: {other}"),
                detail: None,
                hint: None,
            },
        }
    }
}

pub type Result<T> = std::result::Result<T, DbError>;

type Param = Box<dyn ToSql + Sync + Send>;

/// Statements are prepared once per connection and kept (deadpool's cache).
async fn query(client: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
    let statement = client.prepare_cached(sql).await?;
    Ok(client.query(&statement, params).await?)
}

async fn query_boxed(client: &Client, sql: &str, params: &[Param]) -> Result<Vec<Row>> {
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    query(client, sql, &refs).await
}

pub struct Database {
    pool: Pool,
}

/// Who the server is connected as, for the page header.
pub struct Identity {
    pub role: String,
    pub database: String,
    pub superuser: bool,
}

pub struct FunctionRow {
    pub id: String,
    pub handler: String,
    pub config: Value,
    pub owner: String,
    pub paused: bool,
    pub failure_of: Option<String>,
    pub triggers: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub struct ScheduleRow {
    pub function_id: String,
    pub expression: String,
    pub timezone: String,
    pub next_fire_at: DateTime<Utc>,
    pub last_fired_at: Option<DateTime<Utc>>,
    pub last_run_id: Option<Uuid>,
}

pub struct StatusCount {
    pub function_id: String,
    pub status: String,
    pub count: i64,
}

pub struct EventRow {
    pub id: Uuid,
    pub name: String,
    pub data: Value,
    pub ts: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub dedup_id: Option<String>,
    pub duplicate_of: Option<Uuid>,
}

pub struct RunRef {
    pub id: Uuid,
    pub event_id: Uuid,
    pub function_id: String,
    pub status: String,
}

pub struct Explanation {
    pub function_id: String,
    pub matched: bool,
    pub reason: String,
    pub run_ids: Vec<Uuid>,
}

pub struct RunSummary {
    pub id: Uuid,
    pub function_id: String,
    pub event_id: Uuid,
    pub event_name: Option<String>,
    pub status: String,
    pub attempt: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
}

pub struct RunRow {
    pub id: Uuid,
    pub function_id: String,
    pub event_id: Uuid,
    pub status: String,
    pub attempt: i32,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub parent_run_id: Option<Uuid>,
    pub parent_step_id: Option<String>,
}

pub struct StepRow {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub status: String,
    pub attempts: i32,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

pub struct AttemptError {
    pub step_id: String,
    pub attempt: i32,
    pub sqlstate: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    pub failed_at: DateTime<Utc>,
}

pub struct WorkerRow {
    pub kind: String,
    pub slot: Option<i32>,
    pub pid: i32,
    pub state: String,
    pub run_id: Option<Uuid>,
    pub last_heartbeat: Option<DateTime<Utc>>,
}

pub struct EventSchema {
    pub name: String,
    pub schema: Value,
}

/// The runs list's filters; `before` is the keyset cursor (the last id shown).
#[derive(Default, Clone)]
pub struct RunFilter {
    pub function_id: Option<String>,
    pub status: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub before: Option<Uuid>,
}

/// The smallest UUIDv7 of the millisecond `at`: run and event ids are UUIDv7,
/// so a time range is a range of ids, and the primary key (or an index ending
/// in the id) serves it in order.
pub fn first_id_at(at: DateTime<Utc>) -> Uuid {
    let millis = at.timestamp_millis().max(0) as u128;
    Uuid::from_u128((millis & 0xFFFF_FFFF_FFFF) << 80)
}

fn row_run_summary(row: &Row) -> Result<RunSummary> {
    Ok(RunSummary {
        id: row.try_get("id")?,
        function_id: row.try_get("function_id")?,
        event_id: row.try_get("event_id")?,
        event_name: row.try_get("event_name")?,
        status: row.try_get("status")?,
        attempt: row.try_get("attempt")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
    })
}

fn row_event(row: &Row) -> Result<EventRow> {
    Ok(EventRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        data: row.try_get("data")?,
        ts: row.try_get("ts")?,
        received_at: row.try_get("received_at")?,
        dedup_id: row.try_get("dedup_id")?,
        duplicate_of: row.try_get("duplicate_of")?,
    })
}

/// A run's statuses, unfinished first (jobs.runs' check constraint).
pub const STATUSES: [&str; 7] = [
    "queued",
    "running",
    "sleeping",
    "waiting",
    "completed",
    "failed",
    "cancelled",
];
const UNFINISHED: &[&str] = STATUSES.split_at(4).0;

const EVENT_COLUMNS: &str = "id, name, data, ts, received_at, dedup_id, duplicate_of";

impl Database {
    pub fn new(pool: Pool) -> Self {
        Database { pool }
    }

    async fn client(&self) -> Result<Client> {
        Ok(self.pool.get().await?)
    }

    pub async fn identity(&self) -> Result<Identity> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT current_user::text AS role, current_database()::text AS database,
                    coalesce((SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), false) AS superuser",
            &[],
        )
        .await?;
        let row = &rows[0];
        Ok(Identity {
            role: row.try_get("role")?,
            database: row.try_get("database")?,
            superuser: row.try_get("superuser")?,
        })
    }

    pub async fn functions(&self) -> Result<Vec<FunctionRow>> {
        self.functions_where("", &[]).await
    }

    pub async fn function(&self, id: &str) -> Result<Option<FunctionRow>> {
        Ok(self
            .functions_where("WHERE f.id = $1", &[&id])
            .await?
            .into_iter()
            .next())
    }

    async fn functions_where(
        &self,
        condition: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<FunctionRow>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT f.id, f.handler, f.config, f.owner::text AS owner, f.paused, f.failure_of,
                    f.created_at, f.updated_at,
                    coalesce((SELECT array_agg(t.event || CASE WHEN t.wildcard THEN '*' ELSE '' END ORDER BY t.event)
                              FROM jobs.triggers t WHERE t.function_id = f.id), '{{}}') AS triggers
             FROM jobs.functions f {condition} ORDER BY f.id"
        );
        query(&client, &sql, params)
            .await?
            .iter()
            .map(|row| {
                Ok(FunctionRow {
                    id: row.try_get("id")?,
                    handler: row.try_get("handler")?,
                    config: row.try_get("config")?,
                    owner: row.try_get("owner")?,
                    paused: row.try_get("paused")?,
                    failure_of: row.try_get("failure_of")?,
                    triggers: row.try_get("triggers")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            })
            .collect()
    }

    pub async fn schedules(&self, function_id: Option<&str>) -> Result<Vec<ScheduleRow>> {
        let client = self.client().await?;
        query(
            &client,
            "SELECT function_id, expression, timezone, next_fire_at, last_fired_at, last_run_id
             FROM jobs.schedules WHERE $1::text IS NULL OR function_id = $1
             ORDER BY function_id, expression",
            &[&function_id],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(ScheduleRow {
                function_id: row.try_get("function_id")?,
                expression: row.try_get("expression")?,
                timezone: row.try_get("timezone")?,
                next_fire_at: row.try_get("next_fire_at")?,
                last_fired_at: row.try_get("last_fired_at")?,
                last_run_id: row.try_get("last_run_id")?,
            })
        })
        .collect()
    }

    /// Runs created since `since`, by function and status: a range of the
    /// primary key, however long the history is.
    pub async fn status_counts(
        &self,
        since: DateTime<Utc>,
        function_id: Option<&str>,
    ) -> Result<Vec<StatusCount>> {
        let client = self.client().await?;
        let (sql, params): (&str, Vec<Param>) = match function_id {
            None => (
                "SELECT function_id, status, count(*) AS count FROM jobs.runs
                 WHERE id >= $1 GROUP BY function_id, status",
                vec![Box::new(first_id_at(since))],
            ),
            Some(id) => (
                "SELECT function_id, status, count(*) AS count FROM jobs.runs
                 WHERE function_id = $2 AND id >= $1 GROUP BY function_id, status",
                vec![Box::new(first_id_at(since)), Box::new(id.to_string())],
            ),
        };
        query_boxed(&client, sql, &params)
            .await?
            .iter()
            .map(|row| {
                Ok(StatusCount {
                    function_id: row.try_get("function_id")?,
                    status: row.try_get("status")?,
                    count: row.try_get("count")?,
                })
            })
            .collect()
    }

    /// Newest events first, `limit` of them before the cursor.
    pub async fn events(
        &self,
        name: Option<&str>,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<EventRow>> {
        let client = self.client().await?;
        let mut conditions = Vec::new();
        let mut params: Vec<Param> = vec![Box::new(limit)];
        if let Some(name) = name {
            params.push(Box::new(name.to_string()));
            conditions.push(format!("name = ${}", params.len()));
        }
        if let Some(before) = before {
            params.push(Box::new(before));
            conditions.push(format!("id < ${}", params.len()));
        }
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM jobs.events {} ORDER BY id DESC LIMIT $1",
            where_clause(&conditions)
        );
        query_boxed(&client, &sql, &params)
            .await?
            .iter()
            .map(row_event)
            .collect()
    }

    pub async fn event(&self, id: Uuid) -> Result<Option<EventRow>> {
        let client = self.client().await?;
        let sql = format!("SELECT {EVENT_COLUMNS} FROM jobs.events WHERE id = $1");
        query(&client, &sql, &[&id])
            .await?
            .iter()
            .map(row_event)
            .next()
            .transpose()
    }

    /// The runs the given events started (those this role may see).
    pub async fn runs_of_events(&self, event_ids: &[Uuid]) -> Result<Vec<RunRef>> {
        let client = self.client().await?;
        query(
            &client,
            "SELECT id, event_id, function_id, status FROM jobs.runs
             WHERE event_id = ANY($1) ORDER BY id",
            &[&event_ids],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(RunRef {
                id: row.try_get("id")?,
                event_id: row.try_get("event_id")?,
                function_id: row.try_get("function_id")?,
                status: row.try_get("status")?,
            })
        })
        .collect()
    }

    pub async fn explain_event(&self, id: Uuid) -> Result<Vec<Explanation>> {
        let client = self.client().await?;
        query(
            &client,
            "SELECT function_id, matched, reason, run_ids FROM jobs.explain_event($1)",
            &[&id],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(Explanation {
                function_id: row.try_get("function_id")?,
                matched: row.try_get("matched")?,
                reason: row.try_get("reason")?,
                run_ids: row.try_get("run_ids")?,
            })
        })
        .collect()
    }

    /// Newest runs first: `ORDER BY id DESC` with every filter a condition on
    /// an index whose last column is the id (the primary key, or
    /// `runs_function_id_id`), so a page reads about `limit` index entries;
    /// a status filter reads as far back as it takes to fill the page.
    pub async fn runs(&self, filter: &RunFilter, limit: i64) -> Result<Vec<RunSummary>> {
        let client = self.client().await?;
        let mut conditions = Vec::new();
        let mut params: Vec<Param> = vec![Box::new(limit)];
        if let Some(function_id) = &filter.function_id {
            params.push(Box::new(function_id.clone()));
            conditions.push(format!("r.function_id = ${}", params.len()));
        }
        if let Some(status) = &filter.status {
            params.push(Box::new(status.clone()));
            conditions.push(format!("r.status = ${}", params.len()));
            // No index has the status (finishing a run must stay a HOT
            // update), but every unfinished run is in the small queue.
            if UNFINISHED.contains(&status.as_str()) {
                conditions.push(
                    "r.id IN (SELECT q.run_id FROM jobs.queue q WHERE q.step_id = '')".to_string(),
                );
            }
        }
        if let Some(from) = filter.from {
            params.push(Box::new(first_id_at(from)));
            conditions.push(format!("r.id >= ${}", params.len()));
        }
        let upper = match (filter.before, filter.to.map(first_id_at)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(upper) = upper {
            params.push(Box::new(upper));
            conditions.push(format!("r.id < ${}", params.len()));
        }
        let sql = format!(
            "SELECT r.id, r.function_id, r.event_id, e.name AS event_name, r.status, r.attempt,
                    r.created_at, r.started_at, r.ended_at
             FROM (SELECT r.id, r.function_id, r.event_id, r.status, r.attempt, r.created_at, r.started_at, r.ended_at
                   FROM jobs.runs r {} ORDER BY r.id DESC LIMIT $1) r
             LEFT JOIN jobs.events e ON e.id = r.event_id
             ORDER BY r.id DESC",
            where_clause(&conditions)
        );
        query_boxed(&client, &sql, &params)
            .await?
            .iter()
            .map(row_run_summary)
            .collect()
    }

    pub async fn run(&self, id: Uuid) -> Result<Option<RunRow>> {
        let client = self.client().await?;
        query(
            &client,
            "SELECT id, function_id, event_id, status, attempt, output, error,
                    created_at, started_at, ended_at, parent_run_id, parent_step_id
             FROM jobs.runs WHERE id = $1",
            &[&id],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(RunRow {
                id: row.try_get("id")?,
                function_id: row.try_get("function_id")?,
                event_id: row.try_get("event_id")?,
                status: row.try_get("status")?,
                attempt: row.try_get("attempt")?,
                output: row.try_get("output")?,
                error: row.try_get("error")?,
                created_at: row.try_get("created_at")?,
                started_at: row.try_get("started_at")?,
                ended_at: row.try_get("ended_at")?,
                parent_run_id: row.try_get("parent_run_id")?,
                parent_step_id: row.try_get("parent_step_id")?,
            })
        })
        .next()
        .transpose()
    }

    /// A run's steps in the order they started: its timeline.
    pub async fn steps(&self, run_id: Uuid) -> Result<Vec<StepRow>> {
        let client = self.client().await?;
        query(
            &client,
            "SELECT id, name, kind, status, attempts, output, error, started_at, ended_at
             FROM jobs.steps WHERE run_id = $1 ORDER BY started_at, id",
            &[&run_id],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(StepRow {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                kind: row.try_get("kind")?,
                status: row.try_get("status")?,
                attempts: row.try_get("attempts")?,
                output: row.try_get("output")?,
                error: row.try_get("error")?,
                started_at: row.try_get("started_at")?,
                ended_at: row.try_get("ended_at")?,
            })
        })
        .collect()
    }

    pub async fn attempt_errors(&self, run_id: Uuid) -> Result<Vec<AttemptError>> {
        let client = self.client().await?;
        query(
            &client,
            "SELECT step_id, attempt, sqlstate, message, detail, hint, failed_at
             FROM jobs.attempt_errors WHERE run_id = $1 ORDER BY failed_at, step_id, attempt",
            &[&run_id],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(AttemptError {
                step_id: row.try_get("step_id")?,
                attempt: row.try_get("attempt")?,
                sqlstate: row.try_get("sqlstate")?,
                message: row.try_get("message")?,
                detail: row.try_get("detail")?,
                hint: row.try_get("hint")?,
                failed_at: row.try_get("failed_at")?,
            })
        })
        .collect()
    }

    pub async fn workers(&self) -> Result<Vec<WorkerRow>> {
        let client = self.client().await?;
        query(
            &client,
            "SELECT kind, slot, pid, state, run_id, last_heartbeat FROM jobs.workers
             ORDER BY kind = 'executor', slot NULLS FIRST, pid",
            &[],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(WorkerRow {
                kind: row.try_get("kind")?,
                slot: row.try_get("slot")?,
                pid: row.try_get("pid")?,
                state: row.try_get("state")?,
                run_id: row.try_get("run_id")?,
                last_heartbeat: row.try_get("last_heartbeat")?,
            })
        })
        .collect()
    }

    pub async fn event_schemas(&self) -> Result<Vec<EventSchema>> {
        let client = self.client().await?;
        query(
            &client,
            "SELECT name, schema FROM jobs.event_schemas ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(EventSchema {
                name: row.try_get("name")?,
                schema: row.try_get("schema")?,
            })
        })
        .collect()
    }

    /// Whether `jobs.rerun` exists (a later version of pg_jobs adds it) and
    /// this role may call it.
    pub async fn can_rerun(&self) -> Result<bool> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT coalesce(bool_or(has_function_privilege(p.oid, 'EXECUTE')), false) AS can
             FROM pg_catalog.pg_proc p
             WHERE p.pronamespace = 'jobs'::regnamespace AND p.proname = 'rerun'",
            &[],
        )
        .await?;
        Ok(rows[0].try_get("can")?)
    }

    /// `jobs.send`: the extension checks the name, the size and the event's
    /// schema, and says what is wrong with the SQLSTATE of its contract.
    pub async fn send(&self, name: &str, data: &str) -> Result<Uuid> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT jobs.send($1, $2::text::jsonb) AS id",
            &[&name, &data],
        )
        .await?;
        Ok(rows[0].try_get("id")?)
    }

    pub async fn invoke_function(&self, id: &str, data: &str) -> Result<Uuid> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT jobs.invoke_function($1, $2::text::jsonb) AS id",
            &[&id, &data],
        )
        .await?;
        Ok(rows[0].try_get("id")?)
    }

    pub async fn set_paused(&self, id: &str, paused: bool) -> Result<()> {
        let client = self.client().await?;
        let sql = if paused {
            "SELECT jobs.pause_function($1)"
        } else {
            "SELECT jobs.resume_function($1)"
        };
        query(&client, sql, &[&id]).await?;
        Ok(())
    }

    pub async fn cancel_run(&self, id: Uuid) -> Result<()> {
        let client = self.client().await?;
        query(&client, "SELECT jobs.cancel_run($1)", &[&id]).await?;
        Ok(())
    }

    /// Named arguments, so that a `jobs.rerun` with further defaulted
    /// parameters (an input override) still matches.
    pub async fn rerun(&self, id: Uuid, from_step: Option<&str>) -> Result<Uuid> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT jobs.rerun(run_id => $1, from_step => $2) AS id",
            &[&id, &from_step],
        )
        .await?;
        Ok(rows[0].try_get("id")?)
    }
}

fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn first_id_at_orders_with_uuid_v7() {
        let at = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            at.timestamp() as u64,
            at.timestamp_subsec_nanos(),
        );
        let same_millisecond = Uuid::new_v7(ts);
        let before = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            at.timestamp() as u64 - 1,
            999_999_999,
        ));
        assert!(first_id_at(at) <= same_millisecond);
        assert!(before < first_id_at(at));
        assert_eq!(
            first_id_at(at).as_bytes()[..6],
            same_millisecond.as_bytes()[..6]
        );
    }
}
