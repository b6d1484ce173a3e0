//! Event names and the trigger patterns that subscribe to them.

pub const MAX_LEN: usize = 256;
pub const RESERVED_PREFIX: &str = "jobs/";

/// Why a name was refused; the caller adds the field it came from.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if name.chars().count() > MAX_LEN {
        return Err(format!("is longer than {MAX_LEN} characters"));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err("must not contain control characters".into());
    }
    if name.contains('*') {
        return Err(
            "must not contain '*' (wildcards belong in a function's \"event\" trigger)".into(),
        );
    }
    Ok(())
}

/// A name an application may send: valid and outside the reserved `jobs/` space.
pub fn check_user_name(name: &str) -> Result<(), String> {
    check_name(name)?;
    if name.trim_start().starts_with(['[', '{']) {
        return Err("looks like JSON, not an event name (to send a batch, pass jsonb: jobs.send('[...]'::jsonb))".into());
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(format!("uses the prefix \"{RESERVED_PREFIX}\", which is reserved for events pg_jobs sends itself"));
    }
    Ok(())
}

/// A function's `event` trigger: an exact name, or a prefix ending in `/` or `.`
/// followed by `*` (`app/user.*`, `app/*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The exact name, or the prefix before the `*`.
    pub name: String,
    pub wildcard: bool,
}

pub fn parse_pattern(text: &str) -> Result<Pattern, String> {
    match text.strip_suffix('*') {
        Some(prefix) => {
            if !(prefix.ends_with('/') || prefix.ends_with('.')) || prefix.len() < 2 {
                return Err(
                    "has a wildcard that does not follow '/' or '.' (write \"app/user.*\")".into(),
                );
            }
            check_name(prefix)?;
            Ok(Pattern {
                name: prefix.to_string(),
                wildcard: true,
            })
        }
        None => {
            check_name(text)?;
            Ok(Pattern {
                name: text.to_string(),
                wildcard: false,
            })
        }
    }
}

/// Every wildcard prefix that would match `name`: for `app/user.created`,
/// `app/` and `app/user.`. The send path looks triggers up by these keys.
pub fn wildcard_prefixes(name: &str) -> Vec<String> {
    name.char_indices()
        .filter(|(i, c)| (*c == '/' || *c == '.') && *i + 1 < name.len())
        .map(|(i, c)| name[..i + c.len_utf8()].to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_user_name("app/user.created").is_ok());
        assert!(check_user_name("").unwrap_err().contains("empty"));
        assert!(check_user_name(&"x".repeat(257))
            .unwrap_err()
            .contains("256"));
        assert!(check_user_name(&"x".repeat(256)).is_ok());
        assert!(check_user_name("jobs/function.failed")
            .unwrap_err()
            .contains("reserved"));
        assert!(check_name("jobs/function.failed").is_ok());
        assert!(check_user_name("app/*").unwrap_err().contains("'*'"));
        assert!(check_user_name("[{\"name\": \"a\"}]")
            .unwrap_err()
            .contains("JSON"));
    }

    #[test]
    fn patterns() {
        assert_eq!(
            parse_pattern("app/user.*").unwrap(),
            Pattern {
                name: "app/user.".into(),
                wildcard: true
            }
        );
        assert_eq!(
            parse_pattern("app/*").unwrap(),
            Pattern {
                name: "app/".into(),
                wildcard: true
            }
        );
        assert_eq!(
            parse_pattern("app/x").unwrap(),
            Pattern {
                name: "app/x".into(),
                wildcard: false
            }
        );
        assert!(parse_pattern("app/user*")
            .unwrap_err()
            .contains("'/' or '.'"));
        assert!(parse_pattern("*").is_err());
        assert!(parse_pattern("app/*.x").is_err());
    }

    #[test]
    fn prefixes_cover_every_wildcard_that_matches() {
        assert_eq!(
            wildcard_prefixes("app/user.created"),
            vec!["app/", "app/user."]
        );
        assert_eq!(wildcard_prefixes("plain"), Vec::<String>::new());
        assert_eq!(wildcard_prefixes("a.b/"), vec!["a."]);
    }
}
