//! Steps planned by jobs.parallel: each is claimed from the queue by any free
//! executor and runs in its own transaction, with its own retries. The last
//! one to finish makes its run due again.

use std::time::{Duration, Instant};

use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;

use super::executor::Claimed;
use super::invoke::{self, Failure, UserContext};
use super::record::{self, StepUpdate};
use super::report_activity;
use super::run::Policy;
use crate::api::{prepared, StatementCache};
use crate::shmem;

thread_local! {
    static LOAD_TASK: StatementCache = const { StatementCache::new() };
}

struct Task {
    name: String,
    sql: String,
    args: Option<String>,
    attempts: i32,
    function_exists: bool,
    paused: bool,
    policy: Policy,
    user: UserContext,
}

fn load(claimed: &Claimed) -> Option<Task> {
    Spi::connect_mut(|client| {
        let load = prepared(
            &LOAD_TASK,
            client,
            "SELECT coalesce(s.name, q.step_id), q.sql, q.args::text, coalesce(s.attempts, 0),
                    f.id IS NOT NULL, coalesce(f.paused, false), coalesce(f.max_attempts, 1),
                    coalesce(f.backoff::text, '{}'), (extract(epoch FROM f.max_runtime) * 1000)::int8, f.owner::oid,
                    coalesce(r.from_system_event, false)
             FROM jobs.queue q
             LEFT JOIN jobs.runs r ON r.id = q.run_id
             LEFT JOIN jobs.steps s ON s.run_id = q.run_id AND s.id = q.step_id
             LEFT JOIN jobs.functions f ON f.id = q.function_id
             WHERE q.run_id = $1 AND q.step_id = $2",
            &[UUIDOID.value(), TEXTOID.value()],
        );
        let rows = client
            .select(
                load,
                None,
                &[claimed.run.into(), claimed.step.as_str().into()],
            )
            .expect("loading a step");
        if rows.is_empty() {
            return None;
        }
        let row = rows.first();
        let max_attempts: i32 = row.get(7).ok().flatten().expect("max_attempts");
        let backoff: String = row.get(8).ok().flatten().expect("backoff");
        let max_runtime: Option<i64> = row.get(9).ok().flatten();
        Some(Task {
            name: row.get(1).ok().flatten().expect("name"),
            sql: row.get(2).ok().flatten().unwrap_or_default(),
            args: row.get(3).ok().flatten(),
            attempts: row.get(4).ok().flatten().expect("attempts"),
            function_exists: row.get(5).ok().flatten().expect("exists"),
            paused: row.get(6).ok().flatten().expect("paused"),
            policy: Policy::new(max_attempts, &backoff),
            user: UserContext::new(
                row.get(10).ok().flatten(),
                max_runtime,
                row.get(11).ok().flatten().unwrap_or(false),
            ),
        })
    })
}

pub fn execute(claimed: &Claimed) {
    let Some(task) = load(claimed) else { return };
    let (run, step) = (claimed.run, claimed.step.as_str());
    if !task.function_exists {
        // The run is cancelled with its function; its steps just go.
        record::task_done(run, step);
        return;
    }
    if task.paused {
        record::hold(run, step);
        return;
    }
    let update = StepUpdate {
        run,
        id: step,
        name: &task.name,
        kind: "run",
        status: "completed",
        attempted: true,
        output: None,
        failure: None,
        elapsed: Duration::ZERO,
    };
    let outcome = if claimed.interrupted() {
        Err(Failure::interrupted())
    } else {
        report_activity(
            pg_sys::BackendState::STATE_RUNNING,
            &format!("run {run}: parallel step {step}"),
            Some(run),
        );
        let started = Instant::now();
        let result = invoke::run_step(&task.user, &task.sql, task.args.as_deref());
        result.map(|output| (output, started.elapsed()))
    };
    match outcome {
        Ok((output, elapsed)) => {
            record::step(&StepUpdate {
                output,
                elapsed,
                ..update
            });
            finished(run, step);
        }
        Err(failure) => {
            record::attempt_error(run, step, task.attempts, &failure);
            // Interrupted by jobs.cancel_run: the run ends cancelled when it resumes.
            if failure.cancelled || task.policy.is_final(task.attempts, &failure) {
                record::step(&StepUpdate {
                    status: "failed",
                    failure: Some(&failure),
                    ..update
                });
                finished(run, step);
            } else {
                record::step(&StepUpdate {
                    status: "retrying",
                    failure: Some(&failure),
                    ..update
                });
                record::release(run, step, task.policy.delay(task.attempts, &failure));
            }
        }
    }
}

/// The step is done or failed for good; the run resumes after its last step.
fn finished(run: pgrx::Uuid, step: &str) {
    if record::task_done(run, step) {
        shmem::wake_workers_at_commit(1);
    }
}
