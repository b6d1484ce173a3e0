//! Durations as Inngest writes them: `"500ms"`, `"30s"`, `"1h30m"`, `"7d"`, `"2w"`,
//! or a plain number of seconds in JSON config.

use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError(pub String);

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The longest duration any setting accepts: a year is far past any sane
/// retry or runtime limit, and keeps millisecond arithmetic far from overflow.
pub const MAX: Duration = Duration::from_secs(366 * 24 * 3600);

fn unit_millis(unit: &str) -> Option<f64> {
    Some(match unit {
        "ms" | "msec" | "millisecond" | "milliseconds" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000.0,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000.0,
        "d" | "day" | "days" => 86_400_000.0,
        "w" | "week" | "weeks" => 604_800_000.0,
        _ => return None,
    })
}

/// Parses `"1h30m"`, `"1.5 hours"`, `"500ms"`; a bare number is seconds.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DurationError("a duration must not be empty".into()));
    }
    if let Ok(seconds) = trimmed.parse::<f64>() {
        return from_seconds(seconds);
    }
    let bytes = trimmed.as_bytes();
    let mut pos = 0;
    let mut total_ms = 0.0;
    while pos < bytes.len() {
        while pos < bytes.len() && bytes[pos].is_ascii_whitespace() {
            pos += 1;
        }
        let number_start = pos;
        while pos < bytes.len() && (bytes[pos].is_ascii_digit() || bytes[pos] == b'.') {
            pos += 1;
        }
        let number = &trimmed[number_start..pos];
        let value: f64 = number.parse().map_err(|_| {
            DurationError(format!(
                "expected a number at position {} of \"{trimmed}\"",
                number_start + 1
            ))
        })?;
        while pos < bytes.len() && bytes[pos].is_ascii_whitespace() {
            pos += 1;
        }
        let unit_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_alphabetic() {
            pos += 1;
        }
        let unit = trimmed[unit_start..pos].to_ascii_lowercase();
        let Some(factor) = unit_millis(&unit) else {
            return Err(DurationError(if unit.is_empty() {
                format!("\"{trimmed}\" needs a unit after {number} (ms, s, m, h, d or w)")
            } else {
                format!("unknown unit \"{unit}\" in \"{trimmed}\" (use ms, s, m, h, d or w)")
            }));
        };
        total_ms += value * factor;
    }
    from_millis(total_ms, trimmed)
}

/// A JSON config value: a duration string or a number of seconds.
pub fn from_json(value: &serde_json::Value) -> Result<Duration, DurationError> {
    match value {
        serde_json::Value::String(text) => parse(text),
        serde_json::Value::Number(n) => from_seconds(n.as_f64().unwrap_or(f64::NAN)),
        other => Err(DurationError(format!(
            "expected a duration such as \"30s\" or a number of seconds, got {other}"
        ))),
    }
}

fn from_seconds(seconds: f64) -> Result<Duration, DurationError> {
    from_millis(seconds * 1000.0, &format!("{seconds}"))
}

fn from_millis(ms: f64, shown: &str) -> Result<Duration, DurationError> {
    if !ms.is_finite() || ms < 0.0 {
        return Err(DurationError(format!(
            "\"{shown}\" is not a valid duration: it must be zero or more"
        )));
    }
    let duration = Duration::from_micros((ms * 1000.0).round() as u64);
    if duration > MAX {
        return Err(DurationError(format!(
            "\"{shown}\" is longer than the maximum of 366 days"
        )));
    }
    Ok(duration)
}

/// Formats a duration the way Inngest writes it (`"1h30m"`, `"500ms"`).
pub fn format(duration: Duration) -> String {
    let mut ms = duration.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("w", 604_800_000u128),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn inngest_strings() {
        assert_eq!(parse("1h").unwrap(), ms(3_600_000));
        assert_eq!(parse("30m").unwrap(), ms(1_800_000));
        assert_eq!(parse("7d").unwrap(), ms(7 * 86_400_000));
        assert_eq!(parse("2w").unwrap(), ms(14 * 86_400_000));
        assert_eq!(parse("1h30m").unwrap(), ms(5_400_000));
        assert_eq!(parse("500ms").unwrap(), ms(500));
        assert_eq!(parse("1.5h").unwrap(), ms(5_400_000));
        assert_eq!(parse("2 minutes 3 seconds").unwrap(), ms(123_000));
        assert_eq!(parse("10").unwrap(), ms(10_000));
        assert_eq!(parse("0.25").unwrap(), ms(250));
    }

    #[test]
    fn json_numbers_are_seconds() {
        assert_eq!(from_json(&serde_json::json!(2)).unwrap(), ms(2_000));
        assert_eq!(from_json(&serde_json::json!("60s")).unwrap(), ms(60_000));
        assert!(from_json(&serde_json::json!(true)).is_err());
    }

    #[test]
    fn bad_durations_say_why() {
        assert!(parse("").unwrap_err().0.contains("empty"));
        assert!(parse("5 fortnights").unwrap_err().0.contains("fortnights"));
        assert!(parse("5").is_ok());
        assert!(parse("h").unwrap_err().0.contains("expected a number"));
        assert!(parse("-5").unwrap_err().0.contains("zero or more"));
        assert!(parse("400d").unwrap_err().0.contains("maximum"));
        assert!(parse("5 5s").unwrap_err().0.contains("needs a unit"));
    }

    #[test]
    fn formats_like_inngest() {
        assert_eq!(format(ms(5_400_000)), "1h30m");
        assert_eq!(format(ms(500)), "500ms");
        assert_eq!(format(ms(0)), "0s");
        assert_eq!(format(ms(8 * 86_400_000)), "1w1d");
    }
}
