//! From a spec to the request actually sent: secrets substituted, default
//! headers added, the first host checked.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::{CONTENT_TYPE, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use percent_encoding::{utf8_percent_encode, CONTROLS};
use serde_json::Value;
use url::Url;

use super::hosts::AllowedHosts;
use super::outcome::{Failure, FailureKind};
use super::secrets::{self, Redactor, Secrets};
use super::spec::FetchSpec;

/// `jobs.fetch_max_response_size`'s default.
pub const DEFAULT_MAX_RESPONSE_SIZE: usize = 1024 * 1024;
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";
pub(crate) const DEFAULT_USER_AGENT: &str = concat!("pg_jobs/", env!("CARGO_PKG_VERSION"));

/// The server settings a request is made under, read by the caller (the
/// client's thread reads no setting); shared by the requests of one reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub allowed_hosts: AllowedHosts,
    /// Bytes of body, after decompression.
    pub max_response_size: usize,
}

/// A request ready for [`super::Client::submit`]. Its `Debug` shows the
/// request as the spec wrote it: the substituted values are secrets.
pub struct PreparedRequest {
    pub(crate) method: Method,
    pub(crate) url: Url,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Option<Vec<u8>>,
    pub(crate) timeout: Duration,
    pub(crate) accept: Vec<u16>,
    /// `POST https://api.example.com/emails` from the spec, placeholders shown.
    pub(crate) display: String,
    pub(crate) redactor: Redactor,
    pub(crate) policy: Arc<Policy>,
}

impl fmt::Debug for PreparedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedRequest")
            .field("request", &self.display)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PreparedRequest {
    #[cfg(test)]
    pub fn display(&self) -> &str {
        &self.display
    }
}

/// `<run id>:<step id>`, the `Idempotency-Key` sent unless the spec has one:
/// the same for every attempt of a step, so that a server can tell a retry.
pub fn idempotency_key(run_id: &impl fmt::Display, step_id: &str) -> String {
    format!("{run_id}:{step_id}")
}

/// Substitutes `secrets` (the function owner's), adds `Content-Type` for a
/// body, the `Idempotency-Key` and a `User-Agent` unless the spec sets them,
/// and checks the host. A JSON string body is sent as its text
/// (`text/plain; charset=utf-8` unless the spec sets a Content-Type, e.g. for
/// a form); any other JSON value as JSON (`application/json`).
pub fn prepare(
    spec: &FetchSpec,
    secrets: &Secrets,
    idempotency_key: &str,
    policy: Arc<Policy>,
) -> Result<PreparedRequest, Failure> {
    let display = spec.display();
    let fail = |kind, message: String| Failure::new(kind, format!("{display}: {message}"));
    let mut used = BTreeMap::new();

    let url_text = secrets::substitute(&spec.url, secrets, "url", &mut used)
        .map_err(|e| fail(FailureKind::Secret, e))?;
    let url = Url::parse(&url_text)
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
        .ok_or_else(|| {
            fail(
                FailureKind::Secret,
                "with its secrets substituted, the url is not a valid http or https URL".into(),
            )
        })?;

    let mut headers = HeaderMap::with_capacity(spec.headers.len() + 3);
    for (name, template) in &spec.headers {
        let location = format!("headers.{name}");
        let text = secrets::substitute(template, secrets, &location, &mut used)
            .map_err(|e| fail(FailureKind::Secret, e))?;
        let value = HeaderValue::from_bytes(text.as_bytes()).map_err(|_| {
            fail(
                FailureKind::Secret,
                format!("with its secrets substituted, header {name} has a control character"),
            )
        })?;
        headers.insert(name.clone(), value);
    }

    let (body, content_type) = match &spec.body {
        None => (None, None),
        Some(Value::String(text)) => (
            Some(
                secrets::substitute(text, secrets, "body", &mut used)
                    .map_err(|e| fail(FailureKind::Secret, e))?
                    .into_bytes(),
            ),
            Some("text/plain; charset=utf-8"),
        ),
        Some(json) => {
            let substituted = secrets::substitute_json(json, secrets, &mut used)
                .map_err(|e| fail(FailureKind::Secret, e))?;
            (
                Some(serde_json::to_vec(&substituted).expect("JSON values serialize")),
                Some("application/json"),
            )
        }
    };
    if let Some(content_type) = content_type {
        if !headers.contains_key(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        }
    }
    let key = HeaderName::from_static(IDEMPOTENCY_KEY);
    if !headers.contains_key(&key) {
        // Step ids are user text: a control character would not be a valid
        // header value, so it is %-encoded.
        let encoded = utf8_percent_encode(idempotency_key, CONTROLS).to_string();
        headers.insert(
            key,
            HeaderValue::from_str(&encoded).expect("%-encoded text is a header value"),
        );
    }
    if !headers.contains_key(USER_AGENT) {
        headers.insert(USER_AGENT, HeaderValue::from_static(DEFAULT_USER_AGENT));
    }

    let redactor = Redactor::new(&used);
    if let Err(refusal) = policy.allowed_hosts.check(&url) {
        return Err(fail(
            FailureKind::HostNotAllowed,
            redactor.redact(&refusal).into_owned(),
        ));
    }
    Ok(PreparedRequest {
        method: spec.method.clone(),
        url,
        headers,
        body,
        timeout: spec.timeout,
        accept: spec.accept.clone(),
        display,
        redactor,
        policy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(hosts: &str) -> Arc<Policy> {
        Arc::new(Policy {
            allowed_hosts: AllowedHosts::parse(hosts).unwrap(),
            max_response_size: DEFAULT_MAX_RESPONSE_SIZE,
        })
    }

    fn owner_secrets() -> Secrets {
        [
            ("KEY", "sk-123"),
            ("HOST", "api.example.com"),
            ("NL", "a\nb"),
            ("SPACE", "a b"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn prepared(spec: Value, hosts: &str) -> Result<PreparedRequest, Failure> {
        let spec = FetchSpec::from_json(&spec).unwrap();
        prepare(&spec, &owner_secrets(), "run-1:send", policy(hosts))
    }

    fn header<'a>(request: &'a PreparedRequest, name: &str) -> Option<&'a str> {
        request.headers.get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn json_bodies_get_a_content_type_and_every_request_a_key() {
        let request = prepared(
            json!({"url": "https://{{secret.HOST}}/emails?k={{secret.KEY}}", "method": "POST",
                   "headers": {"Authorization": "Bearer {{secret.KEY}}"},
                   "body": {"to": "a@b.c", "token": "{{secret.KEY}}"}}),
            "api.example.com",
        )
        .unwrap();
        assert_eq!(
            request.url.as_str(),
            "https://api.example.com/emails?k=sk-123"
        );
        assert_eq!(header(&request, "authorization"), Some("Bearer sk-123"));
        assert_eq!(header(&request, "content-type"), Some("application/json"));
        assert_eq!(header(&request, "idempotency-key"), Some("run-1:send"));
        assert_eq!(header(&request, "user-agent"), Some(DEFAULT_USER_AGENT));
        let body: Value = serde_json::from_slice(request.body.as_ref().unwrap()).unwrap();
        assert_eq!(body, json!({"to": "a@b.c", "token": "sk-123"}));
        assert_eq!(
            request.display(),
            "POST https://{{secret.HOST}}/emails?k={{secret.KEY}}"
        );
        let debug = format!("{request:?}");
        assert!(
            !debug.contains("sk-123") && debug.contains("{{secret.KEY}}"),
            "{debug}"
        );
        assert_eq!(request.redactor.redact("x sk-123"), "x {{secret.KEY}}");
    }

    #[test]
    fn the_callers_headers_win_whatever_their_case() {
        let request = prepared(
            json!({"url": "http://h/", "method": "POST", "body": "a=1&b={{secret.KEY}}",
                   "headers": {"Content-TYPE": "application/x-www-form-urlencoded",
                               "IDEMPOTENCY-key": "mine", "User-Agent": "me"}}),
            "h",
        )
        .unwrap();
        assert_eq!(request.body.as_deref(), Some(&b"a=1&b=sk-123"[..]));
        assert_eq!(
            header(&request, "content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(header(&request, "idempotency-key"), Some("mine"));
        assert_eq!(header(&request, "user-agent"), Some("me"));
        assert_eq!(request.headers.len(), 3);
    }

    #[test]
    fn string_bodies_are_plain_text_and_no_body_has_no_content_type() {
        let text = prepared(json!({"url": "http://h/", "body": "hello"}), "h").unwrap();
        assert_eq!(
            header(&text, "content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(text.body.as_deref(), Some(&b"hello"[..]));
        let none = prepared(json!({"url": "http://h/"}), "h").unwrap();
        assert_eq!(none.body, None);
        assert_eq!(header(&none, "content-type"), None);
        let number = prepared(json!({"url": "http://h/", "body": 5}), "h").unwrap();
        assert_eq!(number.body.as_deref(), Some(&b"5"[..]));
    }

    #[test]
    fn control_characters_in_the_key_are_encoded() {
        let spec = FetchSpec::from_json(&json!({"url": "http://h/"})).unwrap();
        let request = prepare(&spec, &Secrets::new(), "r:a\nb", policy("h")).unwrap();
        assert_eq!(header(&request, "idempotency-key"), Some("r:a%0Ab"));
        assert_eq!(
            idempotency_key(&uuid::Uuid::nil(), "s"),
            "00000000-0000-0000-0000-000000000000:s"
        );
    }

    #[test]
    fn failures_show_placeholders_never_values() {
        let unknown = prepared(json!({"url": "http://h/{{secret.NOPE}}"}), "h").unwrap_err();
        assert_eq!(unknown.kind, FailureKind::Secret);
        assert_eq!(
            unknown.message,
            "GET http://h/{{secret.NOPE}}: {{secret.NOPE}} in url names no secret of the function's owner"
        );
        let in_header = prepared(
            json!({"url": "http://h/", "headers": {"X-K": "{{secret.X}}"}}),
            "h",
        )
        .unwrap_err();
        assert!(in_header
            .message
            .ends_with("{{secret.X}} in headers.x-k names no secret of the function's owner"));
        let newline = prepared(
            json!({"url": "http://h/", "headers": {"X-K": "{{secret.NL}}"}}),
            "h",
        )
        .unwrap_err();
        assert_eq!(newline.kind, FailureKind::Secret);
        assert!(newline
            .message
            .contains("header x-k has a control character"));
        let refused = prepared(
            json!({"url": "https://{{secret.HOST}}/x"}),
            "other.example.com",
        )
        .unwrap_err();
        assert_eq!(refused.kind, FailureKind::HostNotAllowed);
        assert_eq!(
            refused.message,
            "GET https://{{secret.HOST}}/x: jobs.fetch_allowed_hosts does not allow {{secret.HOST}}:443; a superuser must add it"
        );
        let bad_url = prepared(json!({"url": "http://{{secret.SPACE}}/"}), "*").unwrap_err();
        assert_eq!(bad_url.kind, FailureKind::Secret);
        assert_eq!(
            bad_url.message,
            "GET http://{{secret.SPACE}}/: with its secrets substituted, the url is not a valid http or https URL"
        );
    }
}
