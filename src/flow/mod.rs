//! Flow control, Inngest's: `concurrency`, `throttle`, `rate_limit`,
//! `debounce`, `batch_events`, `priority`, `singleton`, `idempotency` and
//! `timeouts`. This module checks the config keys and holds the arithmetic;
//! the catalog keeps the state (api/events.rs at send, worker/flow.rs at claim).

pub mod gcra;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{invalid, ConfigError};
use crate::{duration, expr};

/// Most concurrency limits a function may have (Inngest's).
pub const MAX_CONCURRENCY_LIMITS: usize = 2;
pub const MAX_LIMIT: u64 = 100_000;
pub const MAX_BATCH_SIZE: u64 = 1000;
pub const MAX_PRIORITY_SECONDS: i64 = 600;

const SECOND: Duration = Duration::from_secs(1);
const DAY: Duration = Duration::from_secs(86_400);
const WEEK: Duration = Duration::from_secs(7 * 86_400);
const HOUR: Duration = Duration::from_secs(3600);

/// A function's flow control, as checked; stored as jsonb in
/// `jobs.functions.flow` (NULL when the function has none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub concurrency: Vec<Concurrency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce: Option<Debounce>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Batch>,
    /// `priority.run`: seconds the run goes ahead of (or, negative, behind)
    /// the runs queued before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub singleton: Option<Singleton>,
    /// One run per value of this expression per 24 hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Per function (the default).
    Fn,
    /// Shared by every function that names the same key expression.
    Env,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Concurrency {
    pub limit: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub scope: Scope,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throttle {
    pub limit: u32,
    pub period_ms: u64,
    pub burst: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateLimit {
    pub limit: u32,
    pub period_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Debounce {
    pub period_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub max_size: u32,
    pub timeout_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Events for which this is false run alone, at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SingletonMode {
    /// A new run is skipped while one is unfinished.
    Skip,
    /// The unfinished run is cancelled and the new one starts.
    Cancel,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Singleton {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub mode: SingletonMode,
}

impl Flow {
    pub fn is_empty(&self) -> bool {
        *self == Flow::default()
    }
}

/// The flow-control keys of a config (canonical names), checked together:
/// Inngest refuses some combinations.
pub fn parse(object: &Map<String, Value>, has_cancel_on: bool) -> Result<Flow, ConfigError> {
    let mut flow = Flow::default();
    if let Some(value) = object.get("concurrency") {
        flow.concurrency = parse_concurrency(value)?;
    }
    if let Some(value) = object.get("throttle") {
        let fields = fields("throttle", value, &["limit", "period", "burst", "key"])?;
        flow.throttle = Some(Throttle {
            limit: count("throttle.limit", fields.get("limit"), 1, MAX_LIMIT)?,
            period_ms: period("throttle.period", fields.get("period"), SECOND, WEEK)?,
            burst: match fields.get("burst") {
                None => 1,
                Some(v) => count("throttle.burst", Some(v), 1, MAX_LIMIT)?,
            },
            key: key("throttle.key", fields.get("key"))?,
        });
    }
    if let Some(value) = object.get("rate_limit") {
        let fields = fields("rate_limit", value, &["limit", "period", "key"])?;
        flow.rate_limit = Some(RateLimit {
            limit: count("rate_limit.limit", fields.get("limit"), 1, MAX_LIMIT)?,
            period_ms: period("rate_limit.period", fields.get("period"), SECOND, DAY)?,
            key: key("rate_limit.key", fields.get("key"))?,
        });
    }
    if let Some(value) = object.get("debounce") {
        let fields = fields("debounce", value, &["period", "key", "timeout"])?;
        let period_ms = period("debounce.period", fields.get("period"), SECOND, WEEK)?;
        let timeout_ms = match fields.get("timeout") {
            None => None,
            Some(v) => Some(period("debounce.timeout", Some(v), SECOND, WEEK)?),
        };
        if let (Some(timeout), Some(v)) = (timeout_ms, fields.get("timeout")) {
            if timeout < period_ms {
                return Err(invalid(
                    "debounce.timeout",
                    v,
                    "must not be shorter than \"period\"",
                ));
            }
        }
        flow.debounce = Some(Debounce {
            period_ms,
            key: key("debounce.key", fields.get("key"))?,
            timeout_ms,
        });
    }
    if let Some(value) = object.get("batch_events") {
        let fields = fields(
            "batch_events",
            value,
            &["max_size", "maxSize", "timeout", "key", "if"],
        )?;
        let size = fields.get("max_size").or_else(|| fields.get("maxSize"));
        flow.batch = Some(Batch {
            max_size: count("batch_events.max_size", size, 1, MAX_BATCH_SIZE)?,
            timeout_ms: period("batch_events.timeout", fields.get("timeout"), SECOND, HOUR)?,
            key: key("batch_events.key", fields.get("key"))?,
            condition: match fields.get("if") {
                None => None,
                Some(v) => Some(predicate("batch_events.if", v)?),
            },
        });
    }
    if let Some(value) = object.get("priority") {
        let fields = fields("priority", value, &["run"])?;
        let Some(run) = fields.get("run") else {
            return Err(invalid("priority.run", &Value::Null, "is required"));
        };
        flow.priority = Some(expression("priority.run", run)?);
    }
    if let Some(value) = object.get("singleton") {
        let fields = fields("singleton", value, &["key", "mode"])?;
        let mode = match fields.get("mode").and_then(Value::as_str) {
            Some("skip") => SingletonMode::Skip,
            Some("cancel") => SingletonMode::Cancel,
            _ => {
                return Err(invalid(
                    "singleton.mode",
                    fields.get("mode").unwrap_or(&Value::Null),
                    "must be \"skip\" or \"cancel\"",
                ))
            }
        };
        flow.singleton = Some(Singleton {
            key: key("singleton.key", fields.get("key"))?,
            mode,
        });
    }
    if let Some(value) = object.get("idempotency") {
        flow.idempotency = Some(expression("idempotency", value)?);
    }
    if let Some(value) = object.get("timeouts") {
        let fields = fields("timeouts", value, &["start", "finish"])?;
        let bound = |name: &str| -> Result<Option<u64>, ConfigError> {
            fields
                .get(name)
                .map(|v| {
                    period(
                        &format!("timeouts.{name}"),
                        Some(v),
                        Duration::from_millis(1),
                        duration::MAX,
                    )
                })
                .transpose()
        };
        flow.start_timeout_ms = bound("start")?;
        flow.finish_timeout_ms = bound("finish")?;
    }
    if flow.batch.is_some() {
        let refused = [
            ("idempotency", flow.idempotency.is_some()),
            ("rate_limit", flow.rate_limit.is_some()),
            ("cancel_on", has_cancel_on),
            ("priority", flow.priority.is_some()),
            ("singleton", flow.singleton.is_some()),
            ("debounce", flow.debounce.is_some()),
        ];
        if let Some((other, _)) = refused.iter().find(|(_, given)| *given) {
            return Err(invalid(
                "batch_events",
                &object["batch_events"],
                format!("cannot be combined with \"{other}\" (as in Inngest)"),
            ));
        }
    }
    Ok(flow)
}

fn fields<'a>(
    name: &str,
    value: &'a Value,
    allowed: &[&str],
) -> Result<&'a Map<String, Value>, ConfigError> {
    let Value::Object(fields) = value else {
        return Err(invalid(name, value, "must be an object"));
    };
    if let Some((key, item)) = fields.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        let listed: Vec<String> = allowed.iter().map(|k| format!("\"{k}\"")).collect();
        return Err(invalid(
            &format!("{name}.{key}"),
            item,
            format!("unknown key; use {}", listed.join(", ")),
        ));
    }
    Ok(fields)
}

fn count(name: &str, value: Option<&Value>, min: u64, max: u64) -> Result<u32, ConfigError> {
    let Some(value) = value else {
        return Err(invalid(name, &Value::Null, "is required"));
    };
    value
        .as_u64()
        .filter(|n| (min..=max).contains(n))
        .map(|n| n as u32)
        .ok_or_else(|| {
            invalid(
                name,
                value,
                format!("must be a whole number from {min} to {max}"),
            )
        })
}

fn period(
    name: &str,
    value: Option<&Value>,
    min: Duration,
    max: Duration,
) -> Result<u64, ConfigError> {
    let Some(value) = value else {
        return Err(invalid(name, &Value::Null, "is required"));
    };
    let d = duration::from_json(value).map_err(|e| invalid(name, value, e.0))?;
    if d < min || d > max {
        return Err(invalid(
            name,
            value,
            format!(
                "must be from {} to {}",
                duration::format(min),
                duration::format(max)
            ),
        ));
    }
    Ok(d.as_millis() as u64)
}

/// A value expression over `event`, checked.
fn expression(name: &str, value: &Value) -> Result<String, ConfigError> {
    let Value::String(source) = value else {
        return Err(invalid(
            name,
            value,
            "must be an expression string such as \"event.data.userId\"",
        ));
    };
    expr::compile(source, expr::EVENT).map_err(|e| invalid(name, value, e.to_string()))?;
    Ok(source.clone())
}

fn predicate(name: &str, value: &Value) -> Result<String, ConfigError> {
    expression(name, value)
}

fn key(name: &str, value: Option<&Value>) -> Result<Option<String>, ConfigError> {
    value.map(|v| expression(name, v)).transpose()
}

fn parse_concurrency(value: &Value) -> Result<Vec<Concurrency>, ConfigError> {
    let items: Vec<(String, &Value)> = match value {
        Value::Array(items) if !items.is_empty() && items.len() <= MAX_CONCURRENCY_LIMITS => items
            .iter()
            .enumerate()
            .map(|(i, item)| (format!("concurrency[{i}]"), item))
            .collect(),
        Value::Array(_) => {
            return Err(invalid(
                "concurrency",
                value,
                format!("must list 1 to {MAX_CONCURRENCY_LIMITS} limits"),
            ))
        }
        _ => vec![("concurrency".to_string(), value)],
    };
    items
        .into_iter()
        .map(|(name, item)| match item {
            Value::Number(_) => Ok(Concurrency {
                limit: count(&name, Some(item), 1, MAX_LIMIT)?,
                key: None,
                scope: Scope::Fn,
            }),
            Value::Object(_) => {
                let fields = fields(&name, item, &["limit", "key", "scope"])?;
                let scope = match fields.get("scope").map(|s| (s, s.as_str())) {
                    None | Some((_, Some("fn"))) => Scope::Fn,
                    Some((_, Some("env"))) => Scope::Env,
                    Some((v, _)) => {
                        return Err(invalid(
                            &format!("{name}.scope"),
                            v,
                            "must be \"fn\" or \"env\"",
                        ))
                    }
                };
                let key = key(&format!("{name}.key"), fields.get("key"))?;
                if scope == Scope::Env && key.is_none() {
                    return Err(invalid(
                        &format!("{name}.key"),
                        &Value::Null,
                        "is required with scope \"env\" (the key names what the functions share)",
                    ));
                }
                Ok(Concurrency {
                    limit: count(&format!("{name}.limit"), fields.get("limit"), 1, MAX_LIMIT)?,
                    key,
                    scope,
                })
            }
            other => Err(invalid(
                &name,
                other,
                "must be a number or {\"limit\", \"key\", \"scope\"}",
            )),
        })
        .collect()
}

/// The key a key expression gives for an event: its string value, other
/// values as JSON text; an expression that fails (a missing field) gives "".
pub fn key_value(source: &str, event: &Value) -> String {
    let Ok(compiled) = expr::cached(source, expr::EVENT) else {
        return String::new();
    };
    match compiled.evaluate(&[("event", event)]) {
        Ok(cel::Value::String(s)) => s.to_string(),
        Ok(cel::Value::Null) | Err(_) => String::new(),
        Ok(other) => other
            .json()
            .map(|json| json.to_string())
            .unwrap_or_default(),
    }
}

/// `priority.run` for an event, clamped to ±600 seconds; an expression that
/// fails or gives no number is 0.
pub fn priority_seconds(source: &str, event: &Value) -> i64 {
    let Ok(compiled) = expr::cached(source, expr::EVENT) else {
        return 0;
    };
    let seconds = match compiled.evaluate(&[("event", event)]) {
        Ok(cel::Value::Int(n)) => n,
        Ok(cel::Value::UInt(n)) => n.min(i64::MAX as u64) as i64,
        Ok(cel::Value::Float(f)) if f.is_finite() => f as i64,
        _ => 0,
    };
    seconds.clamp(-MAX_PRIORITY_SECONDS, MAX_PRIORITY_SECONDS)
}

/// Whether a batch's `if` lets the event into a batch.
pub fn batches(condition: Option<&str>, event: &Value) -> bool {
    match condition {
        None => true,
        Some(source) => expr::cached(source, expr::EVENT)
            .map(|e| e.is_true(&[("event", event)]))
            .unwrap_or(false),
    }
}

/// The key that counts a concurrency limit's slots: per function, or shared
/// by the functions of an environment that name the same expression.
pub fn concurrency_key(function_id: &str, limit: &Concurrency, event: &Value) -> String {
    let value = limit
        .key
        .as_deref()
        .map(|k| key_value(k, event))
        .unwrap_or_default();
    match limit.scope {
        Scope::Fn => format!("fn:{function_id}:{value}"),
        Scope::Env => format!("env:{}:{value}", limit.key.as_deref().unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flow(config: Value) -> Result<Flow, ConfigError> {
        parse(config.as_object().unwrap(), false)
    }

    #[test]
    fn every_key_parses() {
        let f = flow(json!({
            "concurrency": [{"limit": 1, "key": "event.data.userId"}, {"limit": 5, "key": "\"openai\"", "scope": "env"}],
            "throttle": {"limit": 5, "period": "1s"},
            "rate_limit": {"limit": 10, "period": "1h", "key": "event.data.ip"},
            "debounce": {"period": "5s", "timeout": "1m"},
            "priority": {"run": "event.data.plan == \"enterprise\" ? 180 : 0"},
            "singleton": {"key": "event.data.userId", "mode": "cancel"},
            "idempotency": "event.data.orderId",
            "timeouts": {"start": "10s", "finish": "1m"}
        }))
        .unwrap();
        assert_eq!(f.concurrency.len(), 2);
        assert_eq!(f.concurrency[1].scope, Scope::Env);
        assert_eq!(f.throttle.as_ref().unwrap().burst, 1);
        assert_eq!(f.throttle.as_ref().unwrap().period_ms, 1000);
        assert_eq!(f.debounce.as_ref().unwrap().timeout_ms, Some(60_000));
        assert_eq!(f.start_timeout_ms, Some(10_000));
        let stored: Flow = serde_json::from_value(serde_json::to_value(&f).unwrap()).unwrap();
        assert_eq!(stored, f);
        assert_eq!(
            flow(json!({"concurrency": 3})).unwrap().concurrency[0].limit,
            3
        );
        let b = flow(
            json!({"batch_events": {"maxSize": 10, "timeout": "1s", "if": "event.data.n > 1"}}),
        )
        .unwrap();
        assert_eq!(b.batch.unwrap().max_size, 10);
    }

    #[test]
    fn bad_values_name_the_key() {
        let key = |config: Value| flow(config).unwrap_err().key;
        assert_eq!(key(json!({"concurrency": 0})), "concurrency");
        assert_eq!(key(json!({"concurrency": [1, 2, 3]})), "concurrency");
        assert_eq!(
            key(json!({"concurrency": {"limit": 2, "scope": "env"}})),
            "concurrency.key"
        );
        assert_eq!(
            key(json!({"concurrency": {"limit": 2, "key": "usr.id"}})),
            "concurrency.key"
        );
        assert_eq!(
            key(json!({"concurrency": [{"limit": 2, "scope": "world"}]})),
            "concurrency[0].scope"
        );
        assert_eq!(
            key(json!({"throttle": {"limit": 5, "period": "500ms"}})),
            "throttle.period"
        );
        assert_eq!(
            key(json!({"throttle": {"limit": 5, "period": "8d"}})),
            "throttle.period"
        );
        assert_eq!(key(json!({"throttle": {"period": "1s"}})), "throttle.limit");
        assert_eq!(
            key(json!({"rate_limit": {"limit": 1, "period": "2d"}})),
            "rate_limit.period"
        );
        assert_eq!(
            key(json!({"debounce": {"period": "10s", "timeout": "5s"}})),
            "debounce.timeout"
        );
        assert_eq!(
            key(json!({"debounce": {"period": "1s", "every": 1}})),
            "debounce.every"
        );
        assert_eq!(
            key(json!({"batch_events": {"max_size": 0, "timeout": "1s"}})),
            "batch_events.max_size"
        );
        assert_eq!(key(json!({"priority": {"run": 5}})), "priority.run");
        assert_eq!(key(json!({"priority": {}})), "priority.run");
        assert_eq!(
            key(json!({"singleton": {"mode": "replace"}})),
            "singleton.mode"
        );
        assert_eq!(
            key(json!({"timeouts": {"finish": "soon"}})),
            "timeouts.finish"
        );
        let e = flow(
            json!({"batch_events": {"max_size": 2, "timeout": "1s"}, "debounce": {"period": "1s"}}),
        )
        .unwrap_err();
        assert!(e.message.contains("debounce"), "{e}");
        let with_cancel = parse(
            json!({"batch_events": {"max_size": 2, "timeout": "1s"}})
                .as_object()
                .unwrap(),
            true,
        )
        .unwrap_err();
        assert!(with_cancel.message.contains("cancel_on"), "{with_cancel}");
    }

    #[test]
    fn keys_and_priorities_from_events() {
        let event = json!({"data": {"userId": 42, "plan": "enterprise", "name": "ada"}});
        assert_eq!(key_value("event.data.userId", &event), "42");
        assert_eq!(key_value("event.data.name", &event), "ada");
        assert_eq!(key_value("event.data.missing", &event), "");
        assert_eq!(
            priority_seconds("event.data.plan == \"enterprise\" ? 180 : 0", &event),
            180
        );
        assert_eq!(priority_seconds("10000", &event), 600);
        assert_eq!(priority_seconds("-10000", &event), -600);
        assert_eq!(priority_seconds("event.data.name", &event), 0);
        let limit = Concurrency {
            limit: 1,
            key: Some("\"openai\"".into()),
            scope: Scope::Env,
        };
        assert_eq!(
            concurrency_key("f", &limit, &event),
            "env:\"openai\":openai"
        );
        assert!(batches(None, &event));
        assert!(!batches(Some("event.data.userId > 100"), &event));
    }
}
