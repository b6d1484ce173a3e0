//! The replay model's state for one handler invocation: the steps the run has
//! already done, the ids handed out so far, and the one operation the
//! invocation yields when it reaches a step that is not done.
//!
//! The executor fills a [`Replay`] before calling the handler and reads the
//! yielded [`Operation`] after; `jobs.step` and its siblings consult it. It is
//! the ground truth for "this invocation stopped at a step": the error that
//! unwinds the handler is only the means, so a handler that catches it changes
//! nothing.

use std::cell::RefCell;
use std::collections::HashMap;

/// What the run's history says about a step id.
#[derive(Debug, Clone, PartialEq)]
pub enum Memo {
    /// Done; the output as JSON text (`None` for SQL NULL).
    Completed(Option<String>),
    /// Out of attempts; raised inside the handler at that step.
    Failed(StepError),
    /// Started and not done: failed attempts waiting for a retry, a sleep
    /// whose time has not come, planned steps still executing.
    Pending { attempts: i32 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepError {
    pub sqlstate: String,
    pub message: String,
    pub attempts: i32,
}

/// A step the handler asked for in this invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedStep {
    pub id: String,
    pub name: String,
    /// Empty for a fetch.
    pub sql: String,
    /// `$1` of the step's SQL, as JSON text.
    pub args: Option<String>,
    /// A fetch's request (`jobs.fetch`, `jobs.plan_fetch`): the checked spec
    /// as JSON text, placeholders and all; the fetcher makes the request.
    pub fetch: Option<String>,
    /// Failed attempts so far.
    pub attempts: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// Run one step's SQL in its own transaction, then resume the run.
    Run(PlannedStep),
    /// Suspend the run until `until_ms` (Unix milliseconds).
    Sleep {
        id: String,
        name: String,
        until_ms: i64,
    },
    /// Run these steps at the same time on free executors (fetches on the
    /// fetcher); resume when all are done. A lone `jobs.fetch` is one of these.
    Parallel(Vec<PlannedStep>),
    /// Suspend the run until an event arrives, or `timeout_ms` passes.
    Wait(PlannedWait),
    /// Start a run of another function and suspend until it finishes.
    Invoke(PlannedInvoke),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedWait {
    pub id: String,
    pub name: String,
    pub event: String,
    pub timeout_ms: i64,
    /// Field of the awaited event that must equal the triggering event's.
    pub match_path: Option<Vec<String>>,
    /// CEL predicate over `event` (the trigger) and `async` (the awaited event).
    pub condition: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedInvoke {
    pub id: String,
    pub name: String,
    pub function_id: String,
    /// The invoked run's event data, as JSON text.
    pub data: String,
    pub timeout_ms: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Replay {
    /// The role the handler runs as; only it may add steps to the run.
    owner: u32,
    memos: HashMap<String, Memo>,
    seen: HashMap<String, u32>,
    yielded: Option<Operation>,
    /// A rerun's step whose args are replaced (jobs.rerun's `input`), as JSON text.
    args_override: Option<(String, String)>,
}

impl Replay {
    pub fn new(owner: u32, memos: HashMap<String, Memo>) -> Replay {
        Replay {
            owner,
            memos,
            ..Default::default()
        }
    }

    /// Step `id` gets `args` (JSON text) instead of those the handler passes.
    pub fn with_args_override(mut self, id: String, args: String) -> Replay {
        self.args_override = Some((id, args));
        self
    }

    /// The args step `id` runs with: the handler's, unless overridden.
    pub fn args_for(&self, id: &str, handler_args: Option<String>) -> Option<String> {
        match &self.args_override {
            Some((step, args)) if step == id => Some(args.clone()),
            _ => handler_args,
        }
    }

    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// The id of this call of step `name`: the name itself the first time in
    /// an invocation, then `name:1`, `name:2`, ... so that loops work.
    pub fn next_id(&mut self, name: &str) -> String {
        let seen = self.seen.entry(name.to_string()).or_insert(0);
        let id = if *seen == 0 {
            name.to_string()
        } else {
            format!("{name}:{seen}")
        };
        *seen += 1;
        id
    }

    pub fn memo(&self, id: &str) -> Option<&Memo> {
        self.memos.get(id)
    }

    pub fn attempts(&self, id: &str) -> i32 {
        match self.memos.get(id) {
            Some(Memo::Pending { attempts }) => *attempts,
            _ => 0,
        }
    }

    /// Records the operation that ends this invocation. Only the first counts:
    /// a handler that swallowed the stop and went on to another step does not
    /// get to replace it.
    pub fn yield_operation(&mut self, operation: Operation) {
        if self.yielded.is_none() {
            self.yielded = Some(operation);
        }
    }

    pub fn has_yielded(&self) -> bool {
        self.yielded.is_some()
    }

    /// The memos it was given, and what the invocation yielded.
    pub fn into_parts(self) -> (HashMap<String, Memo>, Option<Operation>) {
        (self.memos, self.yielded)
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Replay>> = const { RefCell::new(None) };
}

/// Installs `replay` for the invocation `f` makes; returns `f`'s result, the
/// memos (for the next invocation) and what the invocation yielded.
pub fn during<R>(
    replay: Replay,
    f: impl FnOnce() -> R,
) -> (R, HashMap<String, Memo>, Option<Operation>) {
    CURRENT.with(|c| *c.borrow_mut() = Some(replay));
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            CURRENT.with(|c| c.borrow_mut().take());
        }
    }
    let guard = Clear;
    let result = f();
    let (memos, operation) = CURRENT
        .with(|c| c.borrow_mut().take())
        .map(Replay::into_parts)
        .unwrap_or_default();
    drop(guard);
    (result, memos, operation)
}

/// Gives the step functions access to the invocation's replay state, or `None`
/// outside a handler invocation.
pub fn with_current<R>(f: impl FnOnce(&mut Replay) -> R) -> Option<R> {
    CURRENT.with(|c| c.borrow_mut().as_mut().map(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(id: &str) -> PlannedStep {
        PlannedStep {
            id: id.into(),
            name: id.into(),
            sql: "SELECT 1".into(),
            args: None,
            fetch: None,
            attempts: 0,
        }
    }

    #[test]
    fn repeated_names_get_numbered_ids_in_call_order() {
        let mut r = Replay::default();
        let ids: Vec<String> = (0..3).map(|_| r.next_id("send")).collect();
        assert_eq!(ids, ["send", "send:1", "send:2"]);
        assert_eq!(r.next_id("other"), "other");
        assert_eq!(r.next_id("send"), "send:3");
    }

    #[test]
    fn only_the_first_yield_counts() {
        let mut r = Replay::default();
        assert!(!r.has_yielded());
        r.yield_operation(Operation::Run(planned("a")));
        r.yield_operation(Operation::Run(planned("b")));
        assert_eq!(r.into_parts().1, Some(Operation::Run(planned("a"))));
    }

    #[test]
    fn memos_and_attempts() {
        let mut memos = HashMap::new();
        memos.insert("done".to_string(), Memo::Completed(Some("1".into())));
        memos.insert("retrying".to_string(), Memo::Pending { attempts: 2 });
        let r = Replay::new(10, memos);
        assert_eq!(r.owner(), 10);
        assert_eq!(r.memo("done"), Some(&Memo::Completed(Some("1".into()))));
        assert_eq!(r.attempts("retrying"), 2);
        assert_eq!(r.attempts("new"), 0);
        assert_eq!(r.memo("new"), None);
    }

    #[test]
    fn a_rerun_replaces_the_args_of_its_step_only() {
        let r = Replay::default().with_args_override("charge:1".into(), "{\"amount\": 5}".into());
        assert_eq!(
            r.args_for("charge:1", Some("{}".into())).as_deref(),
            Some("{\"amount\": 5}")
        );
        assert_eq!(
            r.args_for("charge", Some("{}".into())).as_deref(),
            Some("{}")
        );
        assert_eq!(r.args_for("other", None), None);
    }

    #[test]
    fn the_context_exists_only_during_an_invocation() {
        assert_eq!(with_current(|_| ()), None);
        let ((), _, op) = during(Replay::default(), || {
            with_current(|r| {
                r.yield_operation(Operation::Sleep {
                    id: "s".into(),
                    name: "s".into(),
                    until_ms: 5,
                })
            })
            .unwrap();
        });
        assert_eq!(
            op,
            Some(Operation::Sleep {
                id: "s".into(),
                name: "s".into(),
                until_ms: 5
            })
        );
        assert_eq!(with_current(|_| ()), None);
    }
}
