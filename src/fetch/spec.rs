//! What a handler asked for: `jobs.fetch(id, url, method, headers, body,
//! timeout, accept)`, as the executor stores it in jsonb:
//!
//! ```json
//! {"url": "https://api.resend.com/emails", "method": "POST",
//!  "headers": {"Authorization": "Bearer {{secret.RESEND_KEY}}"},
//!  "body": {"to": "a@example.com"}, "timeout": 30, "accept": [409]}
//! ```
//!
//! Only `url` is required. `method` defaults to GET and is upper-cased (HTTP
//! methods are case-sensitive and every registered one is upper case);
//! `headers` is an object of string values; `body` absent or JSON null means
//! no body; `timeout` is in seconds; `accept` lists extra statuses (100–599)
//! that are the step's value instead of a failure, a listed 3xx included
//! (it is then returned, not followed). Placeholders stay in the spec: it is
//! what the history shows.

use std::fmt;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use serde_json::{json, Map, Value};

use super::secrets::{check_json_placeholders, with_stand_in};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// A request holds no worker while it waits, but a run suspended for more than
/// an hour on one answer is a mistake more often than an intent.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Common server limits on the request line and on header counts.
const MAX_URL_LEN: usize = 8192;
const MAX_HEADERS: usize = 100;

/// Headers that the HTTP client derives from the URL and the body; a caller's
/// value would contradict the request actually sent.
const MANAGED_HEADERS: [&str; 8] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError(pub String);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpecError {}

fn err<T>(message: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError(message.into()))
}

#[derive(Debug, Clone, PartialEq)]
pub struct FetchSpec {
    /// The URL as written, placeholders included.
    pub url: String,
    pub method: Method,
    /// Lower-cased names (HTTP names are case-insensitive), values as written;
    /// in the order of the stored object.
    pub headers: Vec<(HeaderName, String)>,
    pub body: Option<Value>,
    pub timeout: Duration,
    pub accept: Vec<u16>,
}

impl FetchSpec {
    pub fn from_json(value: &Value) -> Result<FetchSpec, SpecError> {
        let Some(object) = value.as_object() else {
            return err(format!(
                "a fetch spec must be a JSON object, not {}",
                shown(value)
            ));
        };
        if let Some(key) = object.keys().find(|key| {
            !matches!(
                key.as_str(),
                "url" | "method" | "headers" | "body" | "timeout" | "accept"
            )
        }) {
            return err(format!(
                "unknown fetch field \"{key}\": expected url, method, headers, body, timeout, accept"
            ));
        }
        Ok(FetchSpec {
            url: parse_url(object.get("url"))?,
            method: parse_method(object.get("method"))?,
            headers: parse_headers(object.get("headers"))?,
            body: parse_body(object.get("body"))?,
            timeout: parse_timeout(object.get("timeout"))?,
            accept: parse_accept(object.get("accept"))?,
        })
    }

    /// The stored form; [`FetchSpec::from_json`] reads it back unchanged.
    pub fn to_json(&self) -> Value {
        let headers: Map<String, Value> = self
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), Value::String(value.clone())))
            .collect();
        let mut out = json!({
            "url": self.url,
            "method": self.method.as_str(),
            "headers": headers,
            "timeout": self.timeout.as_secs_f64(),
            "accept": self.accept,
        });
        if let Some(body) = &self.body {
            out["body"] = body.clone();
        }
        out
    }

    /// `POST https://api.example.com/emails`, placeholders shown: the start of
    /// every message about this request.
    pub fn display(&self) -> String {
        format!("{} {}", self.method, self.url)
    }
}

/// A value quoted for a message, cut short.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(80).collect::<String>())
    } else {
        text
    }
}

fn parse_url(value: Option<&Value>) -> Result<String, SpecError> {
    let text = match value {
        Some(Value::String(text)) => text,
        None | Some(Value::Null) => return err("fetch url is required"),
        Some(other) => return err(format!("fetch url must be a string, not {}", shown(other))),
    };
    if text.len() > MAX_URL_LEN {
        return err(format!(
            "fetch url is {} bytes long; the limit is {MAX_URL_LEN}",
            text.len()
        ));
    }
    let shown_url = shown(&Value::String(text.clone()));
    // A placeholder may stand for any part, the host included: check the
    // shape with a stand-in that is valid everywhere.
    let candidate =
        with_stand_in(text, "secret").map_err(|e| SpecError(format!("fetch url: {e}")))?;
    let parsed = url::Url::parse(&candidate)
        .map_err(|e| SpecError(format!("fetch url {shown_url} is not a valid URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return err(format!(
            "fetch url {shown_url} must use http or https, not \"{}\"",
            parsed.scheme()
        ));
    }
    if parsed.host().is_none() {
        return err(format!("fetch url {shown_url} has no host"));
    }
    Ok(text.clone())
}

fn parse_method(value: Option<&Value>) -> Result<Method, SpecError> {
    let text = match value {
        None | Some(Value::Null) => return Ok(Method::GET),
        Some(Value::String(text)) => text,
        Some(other) => {
            return err(format!(
                "fetch method must be a string, not {}",
                shown(other)
            ))
        }
    };
    let upper = text.to_ascii_uppercase();
    if upper.is_empty() || upper.len() > 32 {
        return err(format!(
            "fetch method \"{text}\" is not an HTTP method (1 to 32 token characters)"
        ));
    }
    Method::from_bytes(upper.as_bytes()).map_err(|_| {
        SpecError(format!(
            "fetch method \"{text}\" is not a valid HTTP method token"
        ))
    })
}

fn parse_headers(value: Option<&Value>) -> Result<Vec<(HeaderName, String)>, SpecError> {
    let object = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(object)) => object,
        Some(other) => {
            return err(format!(
                "fetch headers must be a JSON object of strings, not {}",
                shown(other)
            ))
        }
    };
    if object.len() > MAX_HEADERS {
        return err(format!(
            "fetch headers has {} entries; the limit is {MAX_HEADERS}",
            object.len()
        ));
    }
    let mut headers: Vec<(HeaderName, String)> = Vec::with_capacity(object.len());
    for (name, value) in object {
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            SpecError(format!(
                "fetch header name \"{name}\" is not a valid HTTP header name"
            ))
        })?;
        if MANAGED_HEADERS.contains(&header.as_str()) {
            return err(format!(
                "fetch header \"{name}\" is set by pg_jobs from the url and body; remove it"
            ));
        }
        if headers.iter().any(|(seen, _)| *seen == header) {
            return err(format!(
                "fetch headers name \"{name}\" twice (header names are case-insensitive)"
            ));
        }
        let Value::String(text) = value else {
            return err(format!(
                "fetch header \"{name}\" must be a string, not {}",
                shown(value)
            ));
        };
        let candidate = with_stand_in(text, "secret")
            .map_err(|e| SpecError(format!("fetch header \"{name}\": {e}")))?;
        if HeaderValue::from_bytes(candidate.as_bytes()).is_err() {
            return err(format!(
                "fetch header \"{name}\" has a value with a control character (such as a line break)"
            ));
        }
        headers.push((header, text.clone()));
    }
    Ok(headers)
}

fn parse_body(value: Option<&Value>) -> Result<Option<Value>, SpecError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(body) => {
            check_json_placeholders(body).map_err(|e| SpecError(format!("fetch body: {e}")))?;
            Ok(Some(body.clone()))
        }
    }
}

fn parse_timeout(value: Option<&Value>) -> Result<Duration, SpecError> {
    let seconds = match value {
        None | Some(Value::Null) => return Ok(DEFAULT_TIMEOUT),
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        Some(other) => {
            return err(format!(
                "fetch timeout must be a number of seconds, not {}",
                shown(other)
            ))
        }
    };
    if !(seconds.is_finite() && seconds >= 0.001 && seconds <= MAX_TIMEOUT.as_secs_f64()) {
        return err(format!(
            "fetch timeout {seconds} s is out of range: it must be at least 1 ms and at most {} s",
            MAX_TIMEOUT.as_secs()
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_accept(value: Option<&Value>) -> Result<Vec<u16>, SpecError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return err(format!(
                "fetch accept must be an array of HTTP statuses, not {}",
                shown(other)
            ))
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| match item.as_u64() {
            Some(status @ 100..=599) => Ok(status as u16),
            _ => err(format!(
                "fetch accept[{}] is {}: an HTTP status is an integer from 100 to 599",
                index + 1,
                shown(item)
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: Value) -> Result<FetchSpec, String> {
        FetchSpec::from_json(&value).map_err(|e| e.0)
    }

    #[test]
    fn a_url_alone_takes_every_default() {
        let spec = parse(json!({"url": "https://api.example.com/x"})).unwrap();
        assert_eq!(spec.method, Method::GET);
        assert!(spec.headers.is_empty());
        assert_eq!(spec.body, None);
        assert_eq!(spec.timeout, DEFAULT_TIMEOUT);
        assert!(spec.accept.is_empty());
        assert_eq!(spec.display(), "GET https://api.example.com/x");
    }

    #[test]
    fn a_full_spec_round_trips_through_json() {
        let stored = json!({
            "url": "https://{{secret.HOST}}/emails?key={{secret.KEY}}",
            "method": "post",
            "headers": {"Authorization": "Bearer {{secret.KEY}}", "X-Trace": "1"},
            "body": {"to": "a@example.com", "n": [1, 2]},
            "timeout": 2.5,
            "accept": [409, 302]
        });
        let spec = parse(stored).unwrap();
        assert_eq!(spec.method, Method::POST);
        assert_eq!(spec.headers[0].0.as_str(), "authorization");
        assert_eq!(spec.headers[0].1, "Bearer {{secret.KEY}}");
        assert_eq!(spec.timeout, Duration::from_millis(2500));
        assert_eq!(spec.accept, vec![409, 302]);
        assert_eq!(parse(spec.to_json()).unwrap(), spec);
        assert_eq!(
            spec.display(),
            "POST https://{{secret.HOST}}/emails?key={{secret.KEY}}"
        );
    }

    #[test]
    fn json_null_means_the_default() {
        let spec = parse(json!({"url": "http://h/", "method": null, "headers": null,
            "body": null, "timeout": null, "accept": null}))
        .unwrap();
        assert_eq!(spec.method, Method::GET);
        assert_eq!(spec.body, None);
        let body = parse(json!({"url": "http://h/", "body": "a=1&b=2"})).unwrap();
        assert_eq!(body.body, Some(json!("a=1&b=2")));
    }

    #[test]
    fn bad_specs_are_errors_naming_field_and_value() {
        let cases = [
            (json!([1]), "a fetch spec must be a JSON object, not [1]"),
            (
                json!({"url": "http://h/", "verb": "GET"}),
                "unknown fetch field \"verb\"",
            ),
            (json!({}), "fetch url is required"),
            (json!({"url": 5}), "fetch url must be a string, not 5"),
            (
                json!({"url": "not a url"}),
                "fetch url \"not a url\" is not a valid URL",
            ),
            (
                json!({"url": "ftp://h/x"}),
                "fetch url \"ftp://h/x\" must use http or https, not \"ftp\"",
            ),
            (
                json!({"url": "https://h/{{secret.}}"}),
                "fetch url: malformed secret placeholder",
            ),
            (
                json!({"url": "http://h/", "method": "GE T"}),
                "fetch method \"GE T\" is not a valid",
            ),
            (
                json!({"url": "http://h/", "method": ""}),
                "fetch method \"\" is not an HTTP method",
            ),
            (
                json!({"url": "http://h/", "method": 1}),
                "fetch method must be a string, not 1",
            ),
            (
                json!({"url": "http://h/", "headers": ["a"]}),
                "fetch headers must be a JSON object",
            ),
            (
                json!({"url": "http://h/", "headers": {"Bad Name": "x"}}),
                "fetch header name \"Bad Name\" is not",
            ),
            (
                json!({"url": "http://h/", "headers": {"X-N": 5}}),
                "fetch header \"X-N\" must be a string, not 5",
            ),
            (
                json!({"url": "http://h/", "headers": {"X-A": "a\r\nX-B: b"}}),
                "fetch header \"X-A\" has a value with a control",
            ),
            (
                json!({"url": "http://h/", "headers": {"Host": "evil"}}),
                "fetch header \"Host\" is set by pg_jobs",
            ),
            (
                json!({"url": "http://h/", "headers": {"X-A": "1", "x-a": "2"}}),
                "fetch headers name \"x-a\" twice",
            ),
            (
                json!({"url": "http://h/", "headers": {"X-A": "{{secret.a b}}"}}),
                "fetch header \"X-A\": malformed secret placeholder",
            ),
            (
                json!({"url": "http://h/", "body": {"k": "{{secret.x"}}),
                "fetch body: malformed secret placeholder",
            ),
            (
                json!({"url": "http://h/", "timeout": 0}),
                "fetch timeout 0 s is out of range",
            ),
            (
                json!({"url": "http://h/", "timeout": -1}),
                "fetch timeout -1 s is out of range",
            ),
            (
                json!({"url": "http://h/", "timeout": 3601}),
                "fetch timeout 3601 s is out of range",
            ),
            (
                json!({"url": "http://h/", "timeout": "30s"}),
                "fetch timeout must be a number of seconds, not \"30s\"",
            ),
            (
                json!({"url": "http://h/", "accept": 404}),
                "fetch accept must be an array of HTTP statuses, not 404",
            ),
            (
                json!({"url": "http://h/", "accept": [404, 99]}),
                "fetch accept[2] is 99: an HTTP status",
            ),
            (
                json!({"url": "http://h/", "accept": [600]}),
                "fetch accept[1] is 600",
            ),
            (
                json!({"url": "http://h/", "accept": ["404"]}),
                "fetch accept[1] is \"404\"",
            ),
        ];
        for (spec, expected) in cases {
            let message = parse(spec.clone()).unwrap_err();
            assert!(
                message.starts_with(expected),
                "{spec}: got {message:?}, expected {expected:?}"
            );
        }
    }

    #[test]
    fn size_limits_are_errors() {
        let long = format!("http://h/{}", "a".repeat(MAX_URL_LEN));
        assert!(parse(json!({"url": long}))
            .unwrap_err()
            .contains("the limit is 8192"));
        let headers: Map<String, Value> = (0..=MAX_HEADERS)
            .map(|i| (format!("x-{i}"), json!("v")))
            .collect();
        assert!(parse(json!({"url": "http://h/", "headers": headers}))
            .unwrap_err()
            .contains("the limit is 100"));
    }

    #[test]
    fn extension_methods_are_tokens_too() {
        assert_eq!(
            parse(json!({"url": "http://h/", "method": "purge"}))
                .unwrap()
                .method
                .as_str(),
            "PURGE"
        );
    }
}
