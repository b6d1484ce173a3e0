//! `{{secret.NAME}}` placeholders: replaced by the function owner's secret
//! values when the request is made, and put back in place of those values in
//! everything pg_jobs shows (step value, errors, history).
//!
//! A placeholder is exactly `{{secret.NAME}}`, NAME being one or more ASCII
//! letters, digits, `_`, `-` or `.`, with no spaces. Any other text starting
//! with `{{secret.` is an error, so that a typo is never sent literally.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use aho_corasick::{AhoCorasick, MatchKind};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

/// The function owner's secrets, by name.
pub type Secrets = HashMap<String, String>;

const OPEN: &str = "{{secret.";
const CLOSE: &str = "}}";

/// RFC 3986 unreserved characters stay as they are; everything else is
/// %-encoded, as `encodeURIComponent` and most clients do.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

enum Piece<'a> {
    Text(&'a str),
    Secret(&'a str),
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// Longest secret name and value `jobs.set_secret` takes.
pub const MAX_NAME_LEN: usize = 128;
pub const MAX_VALUE_LEN: usize = 64 * 1024;

/// Whether `name` can be written as `{{secret.NAME}}`, as `jobs.set_secret` requires.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "secret name \"{}\" must be 1 to {MAX_NAME_LEN} characters long",
            name.chars().take(MAX_NAME_LEN).collect::<String>()
        ));
    }
    if let Some(c) = name.chars().find(|&c| !is_name_char(c)) {
        return Err(format!(
            "secret name \"{name}\" has {c:?}: a name has only ASCII letters, digits, '_', '-' and '.'"
        ));
    }
    Ok(())
}

pub(crate) fn placeholder(name: &str) -> String {
    format!("{OPEN}{name}{CLOSE}")
}

/// Splits `text` into literal text and placeholder names.
fn scan(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        if start > 0 {
            pieces.push(Piece::Text(&rest[..start]));
        }
        let after = &rest[start + OPEN.len()..];
        let name_len = after
            .find(|c: char| !is_name_char(c))
            .unwrap_or(after.len());
        if name_len == 0 || !after[name_len..].starts_with(CLOSE) {
            let shown: String = rest[start..].chars().take(40).collect();
            return Err(format!(
                "malformed secret placeholder at \"{shown}\": write {{{{secret.NAME}}}}, \
                 NAME made of letters, digits, '_', '-' and '.'"
            ));
        }
        pieces.push(Piece::Secret(&after[..name_len]));
        rest = &after[name_len + CLOSE.len()..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

/// Checks the placeholders of `text` without substituting anything.
pub(crate) fn check_placeholders(text: &str) -> Result<(), String> {
    scan(text).map(drop)
}

/// `text` with every placeholder replaced by `stand_in`: lets a template be
/// validated (a URL parsed, a header value checked) before secrets are known.
pub(crate) fn with_stand_in(text: &str, stand_in: &str) -> Result<String, String> {
    Ok(scan(text)?
        .into_iter()
        .map(|piece| match piece {
            Piece::Text(text) => text,
            Piece::Secret(_) => stand_in,
        })
        .collect())
}

/// Substitutes the secrets of `text`; `location` names the field for an
/// unknown name (`url`, `headers.authorization`, `body`). The values used are
/// added to `used`, for the [`Redactor`].
pub(crate) fn substitute(
    text: &str,
    secrets: &Secrets,
    location: &str,
    used: &mut BTreeMap<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for piece in scan(text).map_err(|e| format!("{location}: {e}"))? {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Secret(name) => {
                let value = secrets.get(name).ok_or_else(|| {
                    format!(
                        "{} in {location} names no secret of the function's owner",
                        placeholder(name)
                    )
                })?;
                out.push_str(value);
                used.insert(name.to_owned(), value.clone());
            }
        }
    }
    Ok(out)
}

/// Substitutes secrets in every string (keys included) of a JSON body.
pub(crate) fn substitute_json(
    value: &Value,
    secrets: &Secrets,
    used: &mut BTreeMap<String, String>,
) -> Result<Value, String> {
    Ok(match value {
        Value::String(text) => Value::String(substitute(text, secrets, "body", used)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| substitute_json(item, secrets, used))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => {
            let mut out = serde_json::Map::with_capacity(map.len());
            for (key, item) in map {
                out.insert(
                    substitute(key, secrets, "body", used)?,
                    substitute_json(item, secrets, used)?,
                );
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

/// Checks the placeholders in every string of a JSON body.
pub(crate) fn check_json_placeholders(value: &Value) -> Result<(), String> {
    match value {
        Value::String(text) => check_placeholders(text),
        Value::Array(items) => items.iter().try_for_each(check_json_placeholders),
        Value::Object(map) => map.iter().try_for_each(|(key, item)| {
            check_placeholders(key)?;
            check_json_placeholders(item)
        }),
        _ => Ok(()),
    }
}

/// Replaces the secret values a request used by their placeholders.
///
/// Each value is found as written, JSON-escaped (as it appears inside a JSON
/// text) and %-encoded (as it appears in a URL), leftmost-longest first, so a
/// secret that contains another is replaced whole. Empty values are skipped:
/// there is nothing to hide.
#[derive(Clone)]
pub struct Redactor {
    matcher: Option<AhoCorasick>,
    placeholders: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("patterns", &self.placeholders.len())
            .finish()
    }
}

impl Redactor {
    /// `used` maps secret names to values.
    pub fn new(used: &BTreeMap<String, String>) -> Redactor {
        let mut patterns: Vec<String> = Vec::new();
        let mut placeholders = Vec::new();
        for (name, value) in used {
            if value.is_empty() {
                continue;
            }
            let escaped = serde_json::to_string(value).expect("a string serializes");
            let escaped = escaped[1..escaped.len() - 1].to_owned();
            let encoded = utf8_percent_encode(value, COMPONENT).to_string();
            for form in [value.clone(), escaped, encoded] {
                if !patterns.contains(&form) {
                    patterns.push(form);
                    placeholders.push(placeholder(name));
                }
            }
        }
        let matcher = (!patterns.is_empty()).then(|| {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .expect("literal patterns of bounded size build")
        });
        Redactor {
            matcher,
            placeholders,
        }
    }

    /// A redactor for a request that used no secret.
    #[cfg(test)]
    pub fn none() -> Redactor {
        Redactor {
            matcher: None,
            placeholders: Vec::new(),
        }
    }

    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match &self.matcher {
            Some(matcher) if matcher.is_match(text) => {
                Cow::Owned(matcher.replace_all(text, &self.placeholders))
            }
            _ => Cow::Borrowed(text),
        }
    }

    /// Redacts every string and key; a number whose digits contain a secret
    /// becomes the redacted string.
    pub fn redact_json(&self, value: Value) -> Value {
        if self.matcher.is_none() {
            return value;
        }
        match value {
            Value::String(text) => Value::String(self.redact(&text).into_owned()),
            Value::Number(number) => {
                let text = number.to_string();
                match self.redact(&text) {
                    Cow::Borrowed(_) => Value::Number(number),
                    Cow::Owned(redacted) => Value::String(redacted),
                }
            }
            Value::Array(items) => {
                Value::Array(items.into_iter().map(|v| self.redact_json(v)).collect())
            }
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (self.redact(&k).into_owned(), self.redact_json(v)))
                    .collect(),
            ),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secrets() -> Secrets {
        [
            ("API_KEY", "sk-live-123"),
            ("api.key-2", "s3cr&t value"),
            ("LONG", "sk-live-123456"),
            ("EMPTY", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn substitutes_placeholders_and_records_what_it_used() {
        let mut used = BTreeMap::new();
        let out = substitute(
            "Bearer {{secret.API_KEY}} and {{secret.api.key-2}}{{secret.API_KEY}}",
            &secrets(),
            "headers.authorization",
            &mut used,
        )
        .unwrap();
        assert_eq!(out, "Bearer sk-live-123 and s3cr&t valuesk-live-123");
        assert_eq!(used.len(), 2);
        assert_eq!(used["API_KEY"], "sk-live-123");
    }

    #[test]
    fn text_without_placeholders_and_lookalikes_pass_unchanged() {
        let mut used = BTreeMap::new();
        for text in [
            "",
            "plain",
            "{{other.x}}",
            "{secret.x}",
            "{{ secret.x }}",
            "{{secret",
        ] {
            assert_eq!(
                substitute(text, &secrets(), "url", &mut used).unwrap(),
                text
            );
        }
        assert!(used.is_empty());
    }

    #[test]
    fn unknown_names_are_errors_naming_the_placeholder_and_field() {
        let mut used = BTreeMap::new();
        let err =
            substitute("x {{secret.NOPE}}", &secrets(), "headers.x-key", &mut used).unwrap_err();
        assert_eq!(
            err,
            "{{secret.NOPE}} in headers.x-key names no secret of the function's owner"
        );
    }

    #[test]
    fn malformed_placeholders_are_errors() {
        for text in [
            "{{secret.}}",
            "{{secret.a b}}",
            "{{secret.API_KEY}",
            "{{secret.API_KEY",
            "{{secret.ü}}",
        ] {
            let err = check_placeholders(text).unwrap_err();
            assert!(
                err.starts_with("malformed secret placeholder at \"{{secret."),
                "{err}"
            );
        }
    }

    #[test]
    fn stand_ins_replace_every_placeholder() {
        assert_eq!(
            with_stand_in("https://{{secret.HOST}}/a?k={{secret.K}}", "secret").unwrap(),
            "https://secret/a?k=secret"
        );
    }

    #[test]
    fn json_bodies_are_substituted_in_strings_and_keys_only() {
        let body = json!({
            "to": "{{secret.API_KEY}}",
            "{{secret.LONG}}": [1, "a {{secret.api.key-2}}", null, true],
            "n": 5
        });
        let mut used = BTreeMap::new();
        let out = substitute_json(&body, &secrets(), &mut used).unwrap();
        assert_eq!(
            out,
            json!({"to": "sk-live-123", "sk-live-123456": [1, "a s3cr&t value", null, true], "n": 5})
        );
        assert_eq!(used.len(), 3);
        let err =
            substitute_json(&json!({"a": ["{{secret.X}}"]}), &secrets(), &mut used).unwrap_err();
        assert!(err.contains("{{secret.X}} in body"), "{err}");
    }

    #[test]
    fn redaction_replaces_every_form_of_every_used_value() {
        let used: BTreeMap<String, String> = secrets().into_iter().collect();
        let redactor = Redactor::new(&used);
        assert_eq!(
            redactor.redact("key sk-live-123456, sk-live-123; s3cr&t value / s3cr%26t%20value"),
            "key {{secret.LONG}}, {{secret.API_KEY}}; {{secret.api.key-2}} / {{secret.api.key-2}}"
        );
        let quoted: BTreeMap<String, String> = [("Q".to_owned(), "a\"b\\c".to_owned())]
            .into_iter()
            .collect();
        assert_eq!(
            Redactor::new(&quoted).redact(r#"{"echo":"a\"b\\c"} a"b\c"#),
            r#"{"echo":"{{secret.Q}}"} {{secret.Q}}"#
        );
        assert!(matches!(redactor.redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn redaction_of_json_covers_keys_strings_and_numbers() {
        let used: BTreeMap<String, String> = [("PIN".to_owned(), "4711".to_owned())]
            .into_iter()
            .collect();
        let redactor = Redactor::new(&used);
        assert_eq!(
            redactor.redact_json(json!({"pin 4711": [4711, 47, "x4711y", false]})),
            json!({"pin {{secret.PIN}}": ["{{secret.PIN}}", 47, "x{{secret.PIN}}y", false]})
        );
    }

    #[test]
    fn redactors_without_values_change_nothing_and_debug_shows_no_value() {
        let empty: BTreeMap<String, String> =
            [("E".to_owned(), String::new())].into_iter().collect();
        assert_eq!(Redactor::new(&empty).redact("abc"), "abc");
        assert_eq!(Redactor::none().redact_json(json!(["abc"])), json!(["abc"]));
        let used: BTreeMap<String, String> = secrets().into_iter().collect();
        assert!(!format!("{:?}", Redactor::new(&used)).contains("sk-live"));
    }

    #[test]
    fn secret_names_are_those_a_placeholder_can_write() {
        assert!(check_name("RESEND_API_KEY").is_ok());
        assert!(check_name("a.b-c_1").is_ok());
        assert!(check_name("").unwrap_err().contains("1 to 128 characters"));
        assert!(check_name(&"a".repeat(129)).is_err());
        assert!(check_name("a b").unwrap_err().contains("has ' '"));
        assert!(check_name("a}}").is_err());
    }
}
