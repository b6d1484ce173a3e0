//! What an answer means for the step: its value, a failed attempt to retry,
//! or a failure that ends the step at once.
//!
//! The value is `{"status": 200, "headers": {...}, "body": ...}`:
//! - `headers` has lower-cased names; a header sent several times is one
//!   value joined with ", " (as HTTP allows for all but Set-Cookie, whose
//!   lines are joined the same way for want of a better JSON shape).
//! - `body` is the parsed JSON when the Content-Type is `application/json` or
//!   `application/*+json` and the body parses; otherwise it is the text.
//!   Bytes that are not UTF-8 become U+FFFD (lossy text: a step's value is
//!   JSON, and a binary answer is rare for a job; the value still shows what
//!   came back), and so does U+0000, which jsonb cannot store.
//! - every secret value the request used is replaced by its placeholder.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, StatusCode};
use serde_json::{json, Map, Value};

use super::secrets::Redactor;

/// `Retry-After` is honoured up to a day: a server asking for more is
/// treated as asking for a day, and the backoff takes over from there.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How much of a body an error message shows.
pub const MESSAGE_BODY_CHARS: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Network,
    Timeout,
    RetriableStatus,
    Status,
    TooLarge,
    HostNotAllowed,
    Redirect,
    Secret,
    Internal,
}

impl FailureKind {
    /// The SQLSTATE of the error the step fails with (see the module table).
    pub fn sqlstate(self) -> &'static str {
        match self {
            FailureKind::Network => "JB010",
            FailureKind::Timeout => "JB011",
            FailureKind::RetriableStatus => "JB012",
            FailureKind::Status => "JB013",
            FailureKind::TooLarge => "JB014",
            FailureKind::HostNotAllowed => "JB015",
            FailureKind::Redirect => "JB016",
            FailureKind::Secret => "JB017",
            FailureKind::Internal => "XX000",
        }
    }

    /// Whether the attempt is retried with the function's backoff; the others
    /// fail the step at once, as `jobs.non_retriable` does.
    pub fn retriable(self) -> bool {
        matches!(
            self,
            FailureKind::Network | FailureKind::Timeout | FailureKind::RetriableStatus
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    /// Shows placeholders, never secret values.
    pub message: String,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// The server's `Retry-After` for a retriable status, capped at
    /// [`MAX_RETRY_AFTER`]; the retry should wait at least this long.
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
            status: None,
            retry_after: None,
        }
    }

    pub fn sqlstate(&self) -> &'static str {
        self.kind.sqlstate()
    }

    pub fn retriable(&self) -> bool {
        self.kind.retriable()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The step's value.
    Value(Value),
    Failed(Failure),
}

/// Seconds (`120`) or an HTTP-date relative to `now` (a date past is 0);
/// `None` when the header is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(
        date.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|subtype| subtype.ends_with("+json"))
}

fn without_nul(text: Cow<'_, str>) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text.into_owned()
    }
}

fn json_without_nul(value: Value) -> Value {
    match value {
        Value::String(text) => Value::String(without_nul(Cow::Owned(text))),
        Value::Array(items) => Value::Array(items.into_iter().map(json_without_nul).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (without_nul(Cow::Owned(k)), json_without_nul(v)))
                .collect(),
        ),
        other => other,
    }
}

fn reason(status: u16) -> &'static str {
    StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// `404 Not Found`, or `599` for a status without a registered reason.
pub(crate) fn status_text(status: u16) -> String {
    match reason(status) {
        "" => format!("{status}"),
        reason => format!("{status} {reason}"),
    }
}

/// The start of a body for a message: redacted first (so no cut can leave
/// half a secret), on one line, at most [`MESSAGE_BODY_CHARS`] characters.
fn body_start(body: &[u8], redactor: &Redactor) -> String {
    let text = String::from_utf8_lossy(body);
    let redacted = redactor.redact(&text);
    let mut chars = redacted
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c });
    let mut start: String = chars.by_ref().take(MESSAGE_BODY_CHARS).collect();
    if chars.next().is_some() {
        start.push('…');
    }
    start
}

/// The step's value for an answer.
fn value(status: u16, headers: &HeaderMap, body: &[u8], redactor: &Redactor) -> Value {
    let mut names: Map<String, Value> = Map::new();
    for name in headers.keys() {
        let joined = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
            .collect::<Vec<_>>()
            .join(", ");
        let shown = without_nul(redactor.redact(&joined));
        names.insert(name.as_str().to_owned(), Value::String(shown));
    }
    let parsed = is_json(headers)
        .then(|| serde_json::from_slice::<Value>(body).ok())
        .flatten();
    let body = match parsed {
        Some(json) => redactor.redact_json(json_without_nul(json)),
        None => {
            let text = String::from_utf8_lossy(body);
            Value::String(without_nul(redactor.redact(&text)))
        }
    };
    json!({"status": status, "headers": names, "body": body})
}

/// Classifies a complete answer. `request` is the spec's display
/// (`POST https://api.example.com/emails`), which begins every message.
pub(crate) fn classify(
    request: &str,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    accept: &[u16],
    redactor: &Redactor,
    now: SystemTime,
) -> Outcome {
    if (200..300).contains(&status) || accept.contains(&status) {
        return Outcome::Value(value(status, headers, body, redactor));
    }
    let retriable = status == 408 || status == 429 || (500..600).contains(&status);
    let mut message = format!("{request} answered {}", status_text(status));
    let start = body_start(body, redactor);
    if !start.trim().is_empty() {
        message.push_str(": ");
        message.push_str(&start);
    }
    let retry_after = retriable
        .then(|| {
            headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, now))
        })
        .flatten();
    Outcome::Failed(Failure {
        kind: if retriable {
            FailureKind::RetriableStatus
        } else {
            FailureKind::Status
        },
        message,
        status: Some(status),
        retry_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn run(status: u16, pairs: &[(&str, &str)], body: &[u8], accept: &[u16]) -> Outcome {
        let used: BTreeMap<String, String> = [("KEY".to_owned(), "sk-123".to_owned())]
            .into_iter()
            .collect();
        classify(
            "POST https://api.example.com/emails",
            status,
            &headers(pairs),
            body,
            accept,
            &Redactor::new(&used),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000),
        )
    }

    fn expect_failure(outcome: Outcome) -> Failure {
        match outcome {
            Outcome::Failed(failure) => failure,
            Outcome::Value(value) => panic!("expected a failure, got {value}"),
        }
    }

    #[test]
    fn json_answers_are_parsed_and_headers_lowercased_and_joined() {
        let outcome = run(
            201,
            &[
                ("Content-Type", "application/json; charset=utf-8"),
                ("X-Multi", "a"),
                ("x-multi", "b"),
            ],
            br#"{"id": "e_1", "n": [1, 2.5]}"#,
            &[],
        );
        assert_eq!(
            outcome,
            Outcome::Value(json!({
                "status": 201,
                "headers": {"content-type": "application/json; charset=utf-8", "x-multi": "a, b"},
                "body": {"id": "e_1", "n": [1, 2.5]}
            }))
        );
    }

    #[test]
    fn other_bodies_are_text() {
        let body = |pairs: &[(&str, &str)], bytes: &[u8]| match run(200, pairs, bytes, &[]) {
            Outcome::Value(value) => value["body"].clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            body(&[("content-type", "text/plain")], b"{\"a\":1}"),
            json!("{\"a\":1}")
        );
        assert_eq!(body(&[], b"{\"a\":1}"), json!("{\"a\":1}"));
        assert_eq!(
            body(
                &[("content-type", "application/problem+json")],
                b"{\"a\":1}"
            ),
            json!({"a": 1})
        );
        assert_eq!(
            body(&[("content-type", "Application/JSON")], b"[1]"),
            json!([1])
        );
        assert_eq!(
            body(&[("content-type", "application/json")], b"{oops"),
            json!("{oops")
        );
        assert_eq!(
            body(&[("content-type", "application/json")], b""),
            json!("")
        );
        assert_eq!(
            body(&[], b"ok \xff\xfe end"),
            json!("ok \u{FFFD}\u{FFFD} end")
        );
        assert_eq!(body(&[], b"a\0b"), json!("a\u{FFFD}b"));
        assert_eq!(
            body(
                &[("content-type", "application/json")],
                br#"{"a\u0000": "b\u0000"}"#
            ),
            json!({"a\u{FFFD}": "b\u{FFFD}"})
        );
    }

    #[test]
    fn echoed_secrets_are_redacted_in_headers_and_body() {
        let outcome = run(
            200,
            &[
                ("content-type", "application/json"),
                ("x-echo", "Bearer sk-123"),
            ],
            br#"{"auth": "Bearer sk-123", "sk-123": 1}"#,
            &[],
        );
        assert_eq!(
            outcome,
            Outcome::Value(json!({
                "status": 200,
                "headers": {"content-type": "application/json", "x-echo": "Bearer {{secret.KEY}}"},
                "body": {"auth": "Bearer {{secret.KEY}}", "{{secret.KEY}}": 1}
            }))
        );
        let text = run(200, &[], b"key=sk-123", &[]);
        assert!(matches!(text, Outcome::Value(v) if v["body"] == json!("key={{secret.KEY}}")));
    }

    #[test]
    fn retriable_statuses() {
        for status in [408, 429, 500, 502, 503, 599] {
            let failure = expect_failure(run(status, &[], b"", &[]));
            assert_eq!(failure.kind, FailureKind::RetriableStatus, "{status}");
            assert!(failure.retriable());
            assert_eq!(failure.sqlstate(), "JB012");
            assert_eq!(failure.status, Some(status));
        }
        let failure = expect_failure(run(503, &[("retry-after", "120")], b"busy", &[]));
        assert_eq!(failure.retry_after, Some(Duration::from_secs(120)));
        assert_eq!(
            failure.message,
            "POST https://api.example.com/emails answered 503 Service Unavailable: busy"
        );
    }

    #[test]
    fn other_statuses_fail_the_step_with_the_start_of_the_body() {
        let body = format!(
            r#"{{"error":"no such key sk-123","pad":"{}"}}"#,
            "x".repeat(300)
        );
        let failure = expect_failure(run(404, &[("retry-after", "5")], body.as_bytes(), &[]));
        assert_eq!(failure.kind, FailureKind::Status);
        assert!(!failure.retriable());
        assert_eq!(failure.sqlstate(), "JB013");
        assert_eq!(failure.retry_after, None, "only retried statuses wait");
        let expected_start = r#"POST https://api.example.com/emails answered 404 Not Found: {"error":"no such key {{secret.KEY}}","pad":"xx"#;
        assert!(
            failure.message.starts_with(expected_start),
            "{}",
            failure.message
        );
        assert!(failure.message.ends_with('…'));
        let shown = failure.message.split_once(": ").unwrap().1;
        assert_eq!(shown.chars().count(), MESSAGE_BODY_CHARS + 1);
        for status in [100, 204, 300, 304, 400, 401, 403, 409, 422] {
            let outcome = run(status, &[], b"line1\nline2", &[]);
            if (200..300).contains(&status) {
                assert!(matches!(outcome, Outcome::Value(_)));
            } else {
                let failure = expect_failure(outcome);
                assert_eq!(failure.kind, FailureKind::Status, "{status}");
                assert!(
                    failure.message.ends_with(": line1 line2"),
                    "{}",
                    failure.message
                );
            }
        }
        assert_eq!(
            expect_failure(run(499, &[], b"", &[])).message,
            "POST https://api.example.com/emails answered 499"
        );
    }

    #[test]
    fn accepted_statuses_are_values() {
        for status in [404, 409, 500, 302] {
            match run(status, &[], b"gone", &[404, 409, 500, 302]) {
                Outcome::Value(value) => {
                    assert_eq!(value["status"], json!(status));
                    assert_eq!(value["body"], json!("gone"));
                }
                other => panic!("{status}: {other:?}"),
            }
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let parse = |value| parse_retry_after(value, now);
        assert_eq!(parse("0"), Some(Duration::ZERO));
        assert_eq!(parse(" 30 "), Some(Duration::from_secs(30)));
        assert_eq!(parse("86401"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse("99999999999999999999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse("Sun, 06 Nov 1994 08:50:37 GMT"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse("Sunday, 06-Nov-94 08:49:47 GMT"),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse("Sun Nov  6 08:49:57 1994"),
            Some(Duration::from_secs(20))
        );
        assert_eq!(parse("Sat, 05 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        assert_eq!(
            parse("Mon, 06 Nov 1995 08:49:37 GMT"),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse("-5"), None);
        assert_eq!(parse("1.5"), None);
        assert_eq!(parse("soon"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn every_kind_has_its_code() {
        let kinds = [
            (FailureKind::Network, "JB010", true),
            (FailureKind::Timeout, "JB011", true),
            (FailureKind::RetriableStatus, "JB012", true),
            (FailureKind::Status, "JB013", false),
            (FailureKind::TooLarge, "JB014", false),
            (FailureKind::HostNotAllowed, "JB015", false),
            (FailureKind::Redirect, "JB016", false),
            (FailureKind::Secret, "JB017", false),
            (FailureKind::Internal, "XX000", false),
        ];
        for (kind, code, retriable) in kinds {
            assert_eq!(
                (kind.sqlstate(), kind.retriable()),
                (code, retriable),
                "{kind:?}"
            );
        }
    }
}
