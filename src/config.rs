//! A function's configuration: the `config jsonb` of `jobs.create_function`,
//! checked and turned into what the catalog stores.

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::backoff::Backoff;
use crate::{cron, duration, event_name, expr};

pub const DEFAULT_RETRIES: u32 = 4;
pub const MAX_RETRIES: u32 = 20;
pub const MAX_TRIGGERS: usize = 10;
pub const MAX_CANCEL_ON: usize = 5;
pub const MAX_CRONS: usize = 10;
const DEFAULT_EXPONENTIAL_MAX: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq)]
pub struct FunctionConfig {
    pub triggers: Vec<event_name::Pattern>,
    /// The `if` filter: a CEL predicate over `event`, checked.
    pub filter: Option<String>,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub max_runtime: Option<Duration>,
    pub cancel_on: Vec<CancelOn>,
    /// The handler signature given as `on_failure`, resolved by the caller.
    pub on_failure: Option<String>,
    /// Cron schedules, in their time zones.
    pub crons: Vec<cron::Cron>,
    /// Roles, besides the owner's members, that may invoke the function
    /// (`"public"` for all), by name.
    pub invokers: Vec<String>,
    pub flow: crate::flow::Flow,
    /// How long finished runs are kept (`None`: the `jobs.retention` setting).
    pub retention: Option<Duration>,
    /// `keep: "failures"`: completed runs are removed as soon as they finish.
    pub keep_failures_only: bool,
}

/// An event that cancels a run (Inngest's `cancelOn`).
#[derive(Debug, Clone, PartialEq)]
pub struct CancelOn {
    pub event: String,
    /// Field of the cancelling event that must equal the triggering event's.
    pub match_path: Option<Vec<String>>,
    /// CEL predicate over `event` (the trigger) and `async` (the cancelling event), checked.
    pub condition: Option<String>,
    /// How long after the run starts the cancellation stays possible.
    pub timeout: Option<Duration>,
}

impl CancelOn {
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "event": self.event,
            "match_path": self.match_path,
            "condition": self.condition,
            "timeout_ms": self.timeout.map(|t| t.as_millis() as u64),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub value: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "config key \"{}\" = {}: {}",
            self.key, self.value, self.message
        )
    }
}

pub fn invalid(key: &str, value: &Value, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        value: shown(&value.to_string()),
        message: message.into(),
    }
}

/// Most characters of a value an error message quotes.
const SHOWN: usize = 200;

/// The start of `text`, so that an error about a huge value stays readable.
pub fn shown(text: &str) -> String {
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Every key of the contract, with its camelCase alias where Inngest spells it so.
const KEYS: &[(&str, Option<&str>)] = &[
    ("event", None),
    ("cron", None),
    ("timezone", None),
    ("if", None),
    ("retries", None),
    ("max_runtime", Some("maxRuntime")),
    ("concurrency", None),
    ("throttle", None),
    ("rate_limit", Some("rateLimit")),
    ("debounce", None),
    ("batch_events", Some("batchEvents")),
    ("priority", None),
    ("idempotency", None),
    ("singleton", None),
    ("cancel_on", Some("cancelOn")),
    ("timeouts", None),
    ("on_failure", Some("onFailure")),
    ("invokers", None),
    ("retention", None),
    ("keep", None),
];

/// Resolves aliases, refuses unknown and duplicated keys.
fn canonical_keys(object: &Map<String, Value>) -> Result<Map<String, Value>, ConfigError> {
    let mut out = Map::new();
    for (key, value) in object {
        let Some((canonical, _)) = KEYS
            .iter()
            .find(|(name, alias)| name == key || *alias == Some(key.as_str()))
        else {
            let known: Vec<&str> = KEYS.iter().map(|(name, _)| *name).collect();
            return Err(invalid(
                key,
                value,
                format!("unknown key; the keys are {}", known.join(", ")),
            ));
        };
        if out.contains_key(*canonical) {
            return Err(invalid(
                key,
                value,
                format!("\"{canonical}\" is given twice (once by its camelCase alias)"),
            ));
        }
        out.insert(canonical.to_string(), value.clone());
    }
    Ok(out)
}

pub fn parse(config: &Value) -> Result<FunctionConfig, ConfigError> {
    let Value::Object(object) = config else {
        return Err(invalid(
            "config",
            config,
            "must be a JSON object such as '{\"event\": \"app/user.created\"}'",
        ));
    };
    let object = canonical_keys(object)?;
    let flow = crate::flow::parse(&object, object.contains_key("cancel_on"))?;

    let triggers = match object.get("event") {
        None => Vec::new(),
        Some(value) => parse_triggers(value)?,
    };
    let filter = match object.get("if") {
        None => None,
        Some(value) => {
            if triggers.is_empty() {
                return Err(invalid(
                    "if",
                    value,
                    "filters events, so it needs an \"event\" trigger",
                ));
            }
            let Value::String(source) = value else {
                return Err(invalid(
                    "if",
                    value,
                    "must be an expression string such as \"event.data.amount > 100\"",
                ));
            };
            expr::compile(source, expr::EVENT).map_err(|e| invalid("if", value, e.to_string()))?;
            Some(source.clone())
        }
    };
    let (max_attempts, backoff) = match object.get("retries") {
        None => (DEFAULT_RETRIES + 1, Backoff::Default),
        Some(value) => parse_retries(value)?,
    };
    let max_runtime = match object.get("max_runtime") {
        None => None,
        Some(value) => {
            let limit =
                duration::from_json(value).map_err(|e| invalid("max_runtime", value, e.0))?;
            if limit.is_zero() {
                return Err(invalid("max_runtime", value, "must be longer than zero"));
            }
            Some(limit)
        }
    };
    let crons = parse_crons(object.get("cron"), object.get("timezone"))?;
    let cancel_on = match object.get("cancel_on") {
        None => Vec::new(),
        Some(value) => parse_cancel_on(value)?,
    };
    let on_failure = match object.get("on_failure") {
        None => None,
        Some(Value::String(handler)) if !handler.trim().is_empty() => Some(handler.clone()),
        Some(value) => {
            return Err(invalid(
                "on_failure",
                value,
                "must name a handler, such as \"notify_failure(jsonb)\"",
            ))
        }
    };
    let invokers = match object.get("invokers") {
        None => Vec::new(),
        Some(value) => parse_invokers(value)?,
    };
    let retention = match object.get("retention") {
        None => None,
        Some(value) => {
            let kept = duration::from_json(value).map_err(|e| invalid("retention", value, e.0))?;
            if kept < Duration::from_secs(1) {
                return Err(invalid("retention", value, "must be at least one second"));
            }
            Some(kept)
        }
    };
    let keep_failures_only = match object.get("keep") {
        None => false,
        Some(Value::String(keep)) if keep == "all" => false,
        Some(Value::String(keep)) if keep == "failures" => true,
        Some(value) => {
            return Err(invalid(
                "keep",
                value,
                "must be \"all\" (the default) or \"failures\"",
            ))
        }
    };
    Ok(FunctionConfig {
        flow,
        invokers,
        retention,
        keep_failures_only,
        triggers,
        filter,
        max_attempts,
        backoff,
        max_runtime,
        cancel_on,
        on_failure,
        crons,
    })
}

fn parse_crons(
    value: Option<&Value>,
    timezone: Option<&Value>,
) -> Result<Vec<cron::Cron>, ConfigError> {
    let zone = match (timezone, value) {
        (None, _) => chrono_tz::Tz::UTC,
        (Some(zone), None) => {
            return Err(invalid(
                "timezone",
                zone,
                "applies to cron schedules, and there is no \"cron\"",
            ))
        }
        (Some(zone @ Value::String(name)), Some(_)) => {
            cron::parse_zone(name).map_err(|e| invalid("timezone", zone, e.0))?
        }
        (Some(other), Some(_)) => {
            return Err(invalid(
                "timezone",
                other,
                "must be a time zone name such as \"Asia/Tokyo\"",
            ))
        }
    };
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let expressions: Vec<&Value> = match value {
        Value::String(_) => vec![value],
        Value::Array(items) if !items.is_empty() && items.len() <= MAX_CRONS => {
            items.iter().collect()
        }
        _ => {
            return Err(invalid(
                "cron",
                value,
                format!(
                "must be a cron expression such as \"0 9 * * *\" or an array of 1 to {MAX_CRONS}"
            ),
            ))
        }
    };
    let mut crons: Vec<cron::Cron> = Vec::new();
    for expression in expressions {
        let Value::String(text) = expression else {
            return Err(invalid(
                "cron",
                expression,
                "must be a cron expression (a string)",
            ));
        };
        let parsed = cron::parse(text, zone).map_err(|e| invalid("cron", expression, e.0))?;
        if !crons.iter().any(|c| c.expression == parsed.expression) {
            crons.push(parsed);
        }
    }
    Ok(crons)
}

fn parse_cancel_on(value: &Value) -> Result<Vec<CancelOn>, ConfigError> {
    let items: Vec<&Value> = match value {
        Value::Object(_) => vec![value],
        Value::Array(items) if !items.is_empty() && items.len() <= MAX_CANCEL_ON => items.iter().collect(),
        _ => {
            return Err(invalid(
                "cancel_on",
                value,
                format!("must be an object such as {{\"event\": \"app/user.deleted\", \"match\": \"data.userId\"}} or an array of 1 to {MAX_CANCEL_ON}"),
            ))
        }
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let key = |name: &str| format!("cancel_on[{index}].{name}");
            let Value::Object(object) = item else {
                return Err(invalid(
                    &format!("cancel_on[{index}]"),
                    item,
                    "must be an object with \"event\"",
                ));
            };
            if let Some((name, v)) = object
                .iter()
                .find(|(k, _)| !["event", "match", "if", "timeout"].contains(&k.as_str()))
            {
                return Err(invalid(
                    &key(name),
                    v,
                    "unknown key; use \"event\", \"match\", \"if\" and \"timeout\"",
                ));
            }
            let event = match object.get("event") {
                Some(Value::String(name)) => {
                    event_name::check_name(name).map_err(|e| {
                        invalid(&key("event"), &object["event"], format!("\"{name}\" {e}"))
                    })?;
                    name.clone()
                }
                other => {
                    return Err(invalid(
                        &key("event"),
                        other.unwrap_or(&Value::Null),
                        "must be an event name",
                    ))
                }
            };
            let match_path = match object.get("match") {
                None => None,
                Some(Value::String(path)) => Some(
                    expr::match_path(path)
                        .map_err(|e| invalid(&key("match"), &object["match"], e.to_string()))?,
                ),
                Some(other) => {
                    return Err(invalid(
                        &key("match"),
                        other,
                        "must be a path such as \"data.userId\"",
                    ))
                }
            };
            let condition = match object.get("if") {
                None => None,
                Some(Value::String(source)) => {
                    expr::compile(source, expr::EVENT_AND_ASYNC)
                        .map_err(|e| invalid(&key("if"), &object["if"], e.to_string()))?;
                    Some(source.clone())
                }
                Some(other) => {
                    return Err(invalid(&key("if"), other, "must be an expression string"))
                }
            };
            let timeout = match object.get("timeout") {
                None => None,
                Some(v) => {
                    Some(duration::from_json(v).map_err(|e| invalid(&key("timeout"), v, e.0))?)
                }
            };
            Ok(CancelOn {
                event,
                match_path,
                condition,
                timeout,
            })
        })
        .collect()
}

/// Most roles `invokers` may name.
pub const MAX_INVOKERS: usize = 64;

fn parse_invokers(value: &Value) -> Result<Vec<String>, ConfigError> {
    let names: Vec<&Value> = match value {
        Value::String(_) => vec![value],
        Value::Array(items) if items.len() <= MAX_INVOKERS => items.iter().collect(),
        _ => {
            return Err(invalid(
                "invokers",
                value,
                format!(
                    "must be a role name, \"public\", or an array of up to {MAX_INVOKERS} of them"
                ),
            ))
        }
    };
    names
        .into_iter()
        .map(|name| match name {
            Value::String(text) if !text.is_empty() && text.len() <= 63 => Ok(text.clone()),
            other => Err(invalid(
                "invokers",
                value,
                format!("{other} is not a role name"),
            )),
        })
        .collect()
}

fn parse_triggers(value: &Value) -> Result<Vec<event_name::Pattern>, ConfigError> {
    let names: Vec<&Value> = match value {
        Value::String(_) => vec![value],
        Value::Array(items) if !items.is_empty() && items.len() <= MAX_TRIGGERS => {
            items.iter().collect()
        }
        Value::Array(_) => {
            return Err(invalid(
                "event",
                value,
                format!("must list between 1 and {MAX_TRIGGERS} event names"),
            ))
        }
        _ => {
            return Err(invalid(
                "event",
                value,
                "must be an event name or an array of event names",
            ))
        }
    };
    let mut patterns: Vec<event_name::Pattern> = Vec::new();
    for name in names {
        let Value::String(text) = name else {
            return Err(invalid(
                "event",
                value,
                format!("{name} is not an event name (a string)"),
            ));
        };
        let pattern = event_name::parse_pattern(text)
            .map_err(|e| invalid("event", value, format!("\"{text}\" {e}")))?;
        if !patterns.contains(&pattern) {
            patterns.push(pattern);
        }
    }
    Ok(patterns)
}

fn parse_retries(value: &Value) -> Result<(u32, Backoff), ConfigError> {
    let range_error = || {
        invalid(
            "retries",
            value,
            format!("must be a whole number from 0 to {MAX_RETRIES}"),
        )
    };
    match value {
        Value::Number(n) => {
            let retries = n
                .as_u64()
                .filter(|r| *r <= MAX_RETRIES as u64)
                .ok_or_else(range_error)?;
            Ok((retries as u32 + 1, Backoff::Default))
        }
        Value::Object(object) => {
            let mut max_attempts = DEFAULT_RETRIES + 1;
            let mut backoff = Backoff::Default;
            for (key, item) in object {
                match key.as_str() {
                    "attempts" => {
                        max_attempts = item
                            .as_u64()
                            .filter(|a| (1..=MAX_RETRIES as u64 + 1).contains(a))
                            .ok_or_else(|| {
                                invalid(
                                    "retries.attempts",
                                    item,
                                    format!("must be a whole number from 1 to {}", MAX_RETRIES + 1),
                                )
                            })? as u32;
                    }
                    "backoff" => backoff = parse_backoff(item)?,
                    _ => {
                        return Err(invalid(
                            &format!("retries.{key}"),
                            item,
                            "unknown key; use \"attempts\" and \"backoff\"",
                        ))
                    }
                }
            }
            Ok((max_attempts, backoff))
        }
        _ => Err(range_error()),
    }
}

fn parse_backoff(value: &Value) -> Result<Backoff, ConfigError> {
    let Value::Object(object) = value else {
        return Err(invalid(
            "retries.backoff",
            value,
            "must be an object such as {\"type\": \"exponential\", \"base\": 2, \"max\": 60}",
        ));
    };
    let field = |name: &str| -> Result<Option<Duration>, ConfigError> {
        object
            .get(name)
            .map(|v| {
                duration::from_json(v)
                    .map_err(|e| invalid(&format!("retries.backoff.{name}"), v, e.0))
            })
            .transpose()
    };
    if let Some((key, item)) = object
        .iter()
        .find(|(k, _)| !["type", "base", "max"].contains(&k.as_str()))
    {
        return Err(invalid(
            &format!("retries.backoff.{key}"),
            item,
            "unknown key; use \"type\", \"base\" and \"max\"",
        ));
    }
    let kind = object.get("type").cloned().unwrap_or(Value::Null);
    let base = field("base")?;
    let max = field("max")?;
    match kind.as_str() {
        Some("exponential") => {
            let base =
                base.ok_or_else(|| invalid("retries.backoff.base", &Value::Null, "is required"))?;
            let max = max.unwrap_or(DEFAULT_EXPONENTIAL_MAX.max(base));
            if max < base {
                return Err(invalid(
                    "retries.backoff.max",
                    &object["max"],
                    "must not be shorter than \"base\"",
                ));
            }
            Ok(Backoff::Exponential { base, max })
        }
        Some("fixed") => {
            if let Some(v) = object.get("max") {
                return Err(invalid(
                    "retries.backoff.max",
                    v,
                    "applies only to \"exponential\" backoff",
                ));
            }
            let delay =
                base.ok_or_else(|| invalid("retries.backoff.base", &Value::Null, "is required"))?;
            Ok(Backoff::Fixed { delay })
        }
        _ => Err(invalid(
            "retries.backoff.type",
            &kind,
            "must be \"exponential\" or \"fixed\"",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(config: Value) -> ConfigError {
        parse(&config).unwrap_err()
    }

    #[test]
    fn defaults() {
        let c = parse(&json!({})).unwrap();
        assert!(c.triggers.is_empty());
        assert_eq!(c.max_attempts, 5);
        assert_eq!(c.backoff, Backoff::Default);
        assert_eq!(c.max_runtime, None);
        assert_eq!(c.filter, None);
    }

    #[test]
    fn triggers_and_filter() {
        let c =
            parse(&json!({"event": ["app/user.*", "app/x", "app/x"], "if": "event.data.n > 1"}))
                .unwrap();
        assert_eq!(c.triggers.len(), 2);
        assert!(c.triggers[0].wildcard);
        assert_eq!(c.filter.as_deref(), Some("event.data.n > 1"));
    }

    #[test]
    fn retries_number_and_object() {
        assert_eq!(parse(&json!({"retries": 3})).unwrap().max_attempts, 4);
        assert_eq!(parse(&json!({"retries": 0})).unwrap().max_attempts, 1);
        let c = parse(&json!({"retries": {"attempts": 5, "backoff": {"type": "exponential", "base": 2, "max": 60}}})).unwrap();
        assert_eq!(c.max_attempts, 5);
        assert_eq!(
            c.backoff,
            Backoff::Exponential {
                base: Duration::from_secs(2),
                max: Duration::from_secs(60)
            }
        );
        let c =
            parse(&json!({"retries": {"backoff": {"type": "fixed", "base": "100ms"}}})).unwrap();
        assert_eq!(
            c.backoff,
            Backoff::Fixed {
                delay: Duration::from_millis(100)
            }
        );
    }

    #[test]
    fn retention_and_keep() {
        let c = parse(&json!({})).unwrap();
        assert_eq!((c.retention, c.keep_failures_only), (None, false));
        let c = parse(&json!({"retention": "7d", "keep": "failures"})).unwrap();
        assert_eq!(c.retention, Some(Duration::from_secs(7 * 86_400)));
        assert!(c.keep_failures_only);
        assert!(!parse(&json!({"keep": "all"})).unwrap().keep_failures_only);
        let e = err(json!({"retention": "500ms"}));
        assert_eq!(
            (e.key.as_str(), e.value.as_str()),
            ("retention", "\"500ms\"")
        );
        assert_eq!(err(json!({"retention": "ever"})).key, "retention");
        let e = err(json!({"keep": "successes"}));
        assert_eq!(
            (e.key.as_str(), e.value.as_str()),
            ("keep", "\"successes\"")
        );
    }

    #[test]
    fn camel_case_aliases() {
        let c = parse(&json!({"maxRuntime": "30s"})).unwrap();
        assert_eq!(c.max_runtime, Some(Duration::from_secs(30)));
        let e = err(json!({"maxRuntime": "30s", "max_runtime": "1m"}));
        assert!(e.message.contains("twice"), "{e}");
    }

    #[test]
    fn errors_name_key_and_value() {
        let e = err(json!({"retires": 3}));
        assert_eq!((e.key.as_str(), e.value.as_str()), ("retires", "3"));
        assert!(e.to_string().contains("unknown key"));

        let e = err(json!({"retries": 21}));
        assert_eq!((e.key.as_str(), e.value.as_str()), ("retries", "21"));
        assert!(err(json!({"retries": -1})).message.contains("0 to 20"));
        assert!(err(json!({"retries": 1.5})).message.contains("0 to 20"));
        assert_eq!(
            err(json!({"retries": {"attempts": 0}})).key,
            "retries.attempts"
        );
        assert_eq!(
            err(json!({"retries": {"backoff": {"type": "linear", "base": 1}}})).key,
            "retries.backoff.type"
        );
        assert_eq!(
            err(json!({"retries": {"backoff": {"type": "exponential"}}})).key,
            "retries.backoff.base"
        );
        assert_eq!(
            err(json!({"retries": {"backoff": {"type": "exponential", "base": 10, "max": 5}}})).key,
            "retries.backoff.max"
        );
        assert_eq!(
            err(json!({"retries": {"backoff": {"type": "fixed", "base": "2 fortnights"}}})).key,
            "retries.backoff.base"
        );

        let e = err(json!({"max_runtime": "soon"}));
        assert_eq!(
            (e.key.as_str(), e.value.as_str()),
            ("max_runtime", "\"soon\"")
        );
        assert!(err(json!({"max_runtime": 0}))
            .message
            .contains("longer than zero"));

        assert_eq!(err(json!({"event": "app/user*"})).key, "event");
        assert_eq!(err(json!({"event": []})).key, "event");
        assert_eq!(err(json!({"event": [1]})).key, "event");
        assert!(err(json!({"event": ""})).message.contains("empty"));

        let e = err(json!({"event": "a/b", "if": "event.data.x === 1"}));
        assert_eq!(e.key, "if");
        assert!(e.message.contains("position"), "{e}");
        assert!(err(json!({"if": "event.data.x == 1"}))
            .message
            .contains("needs an \"event\""));
        assert_eq!(err(json!([])).key, "config");
    }

    #[test]
    fn cancel_on_and_on_failure() {
        let c = parse(&json!({
            "event": "app/subscription.canceled",
            "cancelOn": [{"event": "app/subscription.renewed", "match": "data.userId", "timeout": "30d",
                          "if": "async.data.plan == event.data.plan"}],
            "onFailure": "notify_failure(jsonb)"
        }))
        .unwrap();
        assert_eq!(c.cancel_on.len(), 1);
        assert_eq!(
            c.cancel_on[0].match_path.as_deref(),
            Some(&["data".to_string(), "userId".to_string()][..])
        );
        assert_eq!(
            c.cancel_on[0].timeout,
            Some(Duration::from_secs(30 * 86400))
        );
        assert_eq!(c.on_failure.as_deref(), Some("notify_failure(jsonb)"));
        let one = parse(&json!({"cancel_on": {"event": "app/x"}})).unwrap();
        assert_eq!(one.cancel_on[0].match_path, None);
        assert_eq!(
            err(json!({"cancel_on": [{"event": "app/x", "match": "data..id"}]})).key,
            "cancel_on[0].match"
        );
        assert_eq!(
            err(json!({"cancel_on": [{"event": "app/x", "if": "user.id == 1"}]})).key,
            "cancel_on[0].if"
        );
        assert_eq!(
            err(json!({"cancel_on": [{"match": "data.id"}]})).key,
            "cancel_on[0].event"
        );
        assert_eq!(
            err(json!({"cancel_on": [{"event": "app/x", "after": 1}]})).key,
            "cancel_on[0].after"
        );
        assert_eq!(err(json!({"cancel_on": []})).key, "cancel_on");
        assert_eq!(err(json!({"on_failure": 3})).key, "on_failure");
    }

    #[test]
    fn cron_and_timezone() {
        let c =
            parse(&json!({"cron": ["0 9 * * *", "0 17 * * *"], "timezone": "Asia/Tokyo"})).unwrap();
        assert_eq!(c.crons.len(), 2);
        assert_eq!(c.crons[0].zone, chrono_tz::Tz::Asia__Tokyo);
        assert_eq!(
            parse(&json!({"cron": "TZ=Europe/Berlin @daily"}))
                .unwrap()
                .crons[0]
                .zone,
            chrono_tz::Tz::Europe__Berlin
        );
        let e = err(json!({"cron": "0 25 * * *"}));
        assert_eq!(
            (e.key.as_str(), e.value.as_str()),
            ("cron", "\"0 25 * * *\"")
        );
        assert!(e.message.contains("hour 25 is out of range"), "{e}");
        assert_eq!(
            err(json!({"cron": ["0 9 * * *", "61 * * * *"]})).value,
            "\"61 * * * *\""
        );
        assert_eq!(
            err(json!({"cron": "0 9 * * *", "timezone": "Mars/Base"})).key,
            "timezone"
        );
        assert!(err(json!({"timezone": "Asia/Tokyo"}))
            .message
            .contains("no \"cron\""));
        assert_eq!(err(json!({"cron": []})).key, "cron");
        assert_eq!(err(json!({"cron": 5})).key, "cron");
        let e = err(json!({"cron": "*/60 * * * *"}));
        assert_eq!(e.key, "cron");
        assert!(e.message.contains("minute step"), "{e}");
        let with_reboot = parse(&json!({"cron": ["@reboot", "0 3 * * *"]})).unwrap();
        assert!(with_reboot.crons[0].is_reboot() && !with_reboot.crons[1].is_reboot());
    }

    #[test]
    fn flow_control_keys_are_taken() {
        let c = parse(&json!({"event": "a/b", "concurrency": 2, "batchEvents": {"maxSize": 5, "timeout": "1s"}}))
            .unwrap();
        assert_eq!(c.flow.concurrency[0].limit, 2);
        assert_eq!(c.flow.batch.unwrap().max_size, 5);
        assert_eq!(
            err(json!({"rateLimit": {"limit": 0, "period": "1s"}})).key,
            "rate_limit.limit"
        );
    }
}
