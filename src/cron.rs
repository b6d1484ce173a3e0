//! Cron schedules: parsing and the next instant to fire, in a time zone.
//!
//! Accepted: 5 fields (`minute hour day-of-month month day-of-week`) or 6
//! (a leading seconds field); `*`, lists, ranges, steps (`*/15`, `1-30/5`,
//! `10/5`), month and weekday names (`JAN`, `MON-FRI`), `7` for Sunday, `$` for
//! the last day of the month (pg_cron's); `@yearly @annually @monthly @weekly
//! @daily @midnight @hourly`; pg_cron's `'30 seconds'` (1 to 59 seconds); and
//! an optional `TZ=Area/City ` prefix. Day of month and day of week, when both
//! are restricted, match when either does (Vixie cron).
//!
//! Time zones and daylight saving: times are matched on the zone's wall
//! clock. A wall-clock time that does not exist (clocks spring forward) fires
//! once, at the first valid instant after it; one that occurs twice (clocks
//! fall back) fires once, at its first occurrence.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronError(pub String);

impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cron {
    /// The expression as written, `TZ=` prefix included.
    pub expression: String,
    pub zone: Tz,
    spec: Spec,
}

#[derive(Debug, Clone, PartialEq)]
enum Spec {
    Fields(Fields),
    /// pg_cron's `'N seconds'`: the instants that are multiples of N seconds since 1970.
    EverySeconds(i64),
}

#[derive(Debug, Clone, PartialEq)]
struct Fields {
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    last_day: bool,
    months: u64,
    weekdays: u64,
    days_restricted: bool,
    weekdays_restricted: bool,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

pub fn parse_zone(name: &str) -> Result<Tz, CronError> {
    Tz::from_str(name).map_err(|_| {
        CronError(format!(
            "\"{name}\" is not a time zone (use an IANA name such as \"Asia/Tokyo\")"
        ))
    })
}

/// Parses `expression`; `zone` applies unless the expression has a `TZ=` prefix.
pub fn parse(expression: &str, zone: Tz) -> Result<Cron, CronError> {
    let trimmed = expression.trim();
    let (zone, body) = match trimmed
        .strip_prefix("TZ=")
        .or_else(|| trimmed.strip_prefix("CRON_TZ="))
    {
        Some(rest) => {
            let (name, body) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            (parse_zone(name)?, body.trim())
        }
        None => (zone, trimmed),
    };
    let spec = parse_body(body)?;
    let cron = Cron {
        expression: expression.to_string(),
        zone,
        spec,
    };
    // A schedule such as "0 0 30 2 *" is valid field by field and never fires.
    let probe = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap();
    if cron.next_after(probe).is_none() {
        return Err(CronError(
            "it never fires (no date matches its fields)".into(),
        ));
    }
    Ok(cron)
}

fn parse_body(body: &str) -> Result<Spec, CronError> {
    if body.is_empty() {
        return Err(CronError("the expression is empty".into()));
    }
    let expanded = match body.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *".to_string(),
        "@monthly" => "0 0 1 * *".to_string(),
        "@weekly" => "0 0 * * 0".to_string(),
        "@daily" | "@midnight" => "0 0 * * *".to_string(),
        "@hourly" => "0 * * * *".to_string(),
        other if other.starts_with('@') => {
            return Err(CronError(format!(
                "unknown descriptor \"{body}\" (use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly)"
            )))
        }
        _ => body.to_string(),
    };
    if let Some(seconds) = parse_interval(&expanded)? {
        return Ok(Spec::EverySeconds(seconds));
    }
    let fields: Vec<&str> = expanded.split_whitespace().collect();
    let (seconds, rest) = match fields.len() {
        5 => ("0", &fields[..]),
        6 => (fields[0], &fields[1..]),
        n => {
            return Err(CronError(format!(
                "has {n} fields; a schedule has 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)"
            )))
        }
    };
    let (days, last_day) = parse_days(rest[2])?;
    Ok(Spec::Fields(Fields {
        seconds: parse_field(seconds, "second", 0, 59, &[])?,
        minutes: parse_field(rest[0], "minute", 0, 59, &[])?,
        hours: parse_field(rest[1], "hour", 0, 23, &[])?,
        days,
        last_day,
        months: parse_field(rest[3], "month", 1, 12, &MONTHS)?,
        weekdays: {
            let bits = parse_field(rest[4], "day of week", 0, 7, &WEEKDAYS)?;
            // 7 is Sunday too.
            (bits | (bits >> 7)) & 0x7f
        },
        days_restricted: !rest[2].starts_with('*'),
        weekdays_restricted: !rest[4].starts_with('*'),
    }))
}

/// pg_cron's interval syntax: `'30 seconds'`.
fn parse_interval(body: &str) -> Result<Option<i64>, CronError> {
    let parts: Vec<&str> = body.split_whitespace().collect();
    match parts.as_slice() {
        [n, unit] if matches!(unit.to_ascii_lowercase().as_str(), "second" | "seconds") => {
            match n.parse::<i64>() {
                Ok(seconds @ 1..=59) => Ok(Some(seconds)),
                _ => Err(CronError(format!(
                    "\"{n} {unit}\": an interval must be 1 to 59 seconds"
                ))),
            }
        }
        _ => Ok(None),
    }
}

fn parse_days(field: &str) -> Result<(u64, bool), CronError> {
    let mut last_day = false;
    let items: Vec<&str> = field
        .split(',')
        .filter(|item| {
            let last = *item == "$";
            last_day |= last;
            !last
        })
        .collect();
    let days = if items.is_empty() {
        0
    } else {
        parse_field(&items.join(","), "day of month", 1, 31, &[])?
    };
    Ok((days, last_day))
}

fn value(text: &str, what: &str, min: u32, max: u32, names: &[&str]) -> Result<u32, CronError> {
    let upper = text.to_ascii_uppercase();
    let number = match names.iter().position(|name| *name == upper) {
        Some(index) => index as u32 + if min == 1 { 1 } else { 0 },
        None => text
            .parse::<u32>()
            .map_err(|_| CronError(format!("\"{text}\" is not a valid {what}")))?,
    };
    if number < min || number > max {
        return Err(CronError(format!(
            "{what} {number} is out of range ({min}-{max})"
        )));
    }
    Ok(number)
}

fn parse_field(
    field: &str,
    what: &str,
    min: u32,
    max: u32,
    names: &[&str],
) -> Result<u64, CronError> {
    let mut bits = 0u64;
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    CronError(format!(
                        "\"{item}\": the step after / must be a positive number"
                    ))
                })?;
                (range, step)
            }
            None => (item, 1),
        };
        let (low, high) = if range == "*" {
            (min, max)
        } else if let Some((low, high)) = range.split_once('-') {
            let (low, high) = (
                value(low, what, min, max, names)?,
                value(high, what, min, max, names)?,
            );
            if low > high {
                return Err(CronError(format!(
                    "\"{range}\": a {what} range must go upward"
                )));
            }
            (low, high)
        } else {
            let start = value(range, what, min, max, names)?;
            // "10/5" runs from 10 to the end, by 5.
            (start, if item.contains('/') { max } else { start })
        };
        let mut v = low;
        while v <= high {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

fn has(bits: u64, v: u32) -> bool {
    bits & (1 << v) != 0
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let next = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    };
    next.and_then(|n| n.pred_opt()).map_or(28, |d| d.day())
}

impl Fields {
    fn day_matches(&self, date: NaiveDate) -> bool {
        let day = has(self.days, date.day())
            || (self.last_day && date.day() == days_in_month(date.year(), date.month()));
        let weekday = has(self.weekdays, date.weekday().num_days_from_sunday());
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => day || weekday,
            (true, false) => day,
            (false, true) => weekday,
            (false, false) => true,
        }
    }

    /// The first wall-clock time strictly after `after` that matches.
    fn next_local(&self, after: NaiveDateTime) -> Option<NaiveDateTime> {
        let mut t = after.with_nanosecond(0)? + Duration::seconds(1);
        let limit = after.date() + Duration::days(366 * 5);
        while t.date() <= limit {
            if !has(self.months, t.month()) {
                let (year, month) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = NaiveDate::from_ymd_opt(year, month, 1)?.and_hms_opt(0, 0, 0)?;
            } else if !self.day_matches(t.date()) {
                t = t.date().succ_opt()?.and_hms_opt(0, 0, 0)?;
            } else if !has(self.hours, t.hour()) {
                t = t.with_minute(0)?.with_second(0)? + Duration::hours(1);
            } else if !has(self.minutes, t.minute()) {
                t = t.with_second(0)? + Duration::minutes(1);
            } else if !has(self.seconds, t.second()) {
                t += Duration::seconds(1);
            } else {
                return Some(t);
            }
        }
        None
    }
}

impl Cron {
    /// The first instant strictly after `after` at which the schedule fires.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let fields = match &self.spec {
            Spec::EverySeconds(n) => {
                let next = (after.timestamp().div_euclid(*n) + 1) * n;
                return Utc.timestamp_opt(next, 0).single();
            }
            Spec::Fields(fields) => fields,
        };
        let mut local = after.with_timezone(&self.zone).naive_local();
        loop {
            local = fields.next_local(local)?;
            let instant = match self.zone.from_local_datetime(&local) {
                LocalResult::Single(t) => t,
                // Clocks fell back: only the first occurrence fires.
                LocalResult::Ambiguous(first, _) => first,
                // Clocks sprang forward over it: fire when the clock resumes.
                LocalResult::None => self.first_instant_after_gap(local)?,
            }
            .with_timezone(&Utc);
            if instant > after {
                return Some(instant);
            }
        }
    }

    fn first_instant_after_gap(&self, missing: NaiveDateTime) -> Option<DateTime<Tz>> {
        let mut t = missing.with_second(0)? + Duration::minutes(1);
        for _ in 0..24 * 60 {
            if let Some(instant) = self.zone.from_local_datetime(&t).earliest() {
                return Some(instant);
            }
            t += Duration::minutes(1);
        }
        None
    }

    /// The last instant in `(after, until]` at which the schedule fires: what
    /// to catch up on after downtime.
    pub fn last_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let mut last = None;
        let mut t = after;
        while let Some(next) = self.next_after(t).filter(|next| *next <= until) {
            last = Some(next);
            t = next;
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    fn cron(expression: &str) -> Cron {
        parse(expression, Tz::UTC).unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    fn next_n(c: &Cron, mut after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        (0..n)
            .map(|_| {
                after = c.next_after(after).unwrap();
                after
            })
            .collect()
    }

    #[test]
    fn five_fields() {
        assert_eq!(
            cron("0 9 * * *").next_after(utc(2026, 1, 1, 8, 0, 0)),
            Some(utc(2026, 1, 1, 9, 0, 0))
        );
        assert_eq!(
            cron("0 9 * * *").next_after(utc(2026, 1, 1, 9, 0, 0)),
            Some(utc(2026, 1, 2, 9, 0, 0))
        );
        assert_eq!(
            next_n(&cron("*/15 * * * *"), utc(2026, 1, 1, 0, 7, 0), 3),
            [
                utc(2026, 1, 1, 0, 15, 0),
                utc(2026, 1, 1, 0, 30, 0),
                utc(2026, 1, 1, 0, 45, 0)
            ]
        );
        assert_eq!(
            next_n(&cron("0 9,17 * * *"), utc(2026, 1, 1, 10, 0, 0), 2),
            [utc(2026, 1, 1, 17, 0, 0), utc(2026, 1, 2, 9, 0, 0)]
        );
        assert_eq!(
            cron("5 4 * * 0").next_after(utc(2026, 11, 29, 12, 0, 0)),
            Some(utc(2026, 12, 6, 4, 5, 0))
        );
        assert_eq!(
            cron("0 0 1-10/3 * *").next_after(utc(2026, 1, 2, 0, 0, 0)),
            Some(utc(2026, 1, 4, 0, 0, 0))
        );
        assert_eq!(
            cron("30 10/6 * * *").next_after(utc(2026, 1, 1, 17, 0, 0)),
            Some(utc(2026, 1, 1, 22, 30, 0))
        );
    }

    #[test]
    fn seconds_field() {
        assert_eq!(
            next_n(&cron("*/2 * * * * *"), utc(2026, 1, 1, 0, 0, 59), 3),
            [
                utc(2026, 1, 1, 0, 1, 0),
                utc(2026, 1, 1, 0, 1, 2),
                utc(2026, 1, 1, 0, 1, 4)
            ]
        );
        assert_eq!(
            cron("30 0 12 * * *").next_after(utc(2026, 1, 1, 12, 0, 30)),
            Some(utc(2026, 1, 2, 12, 0, 30))
        );
    }

    #[test]
    fn names_and_sunday_as_seven() {
        assert_eq!(
            cron("0 9 * * MON-FRI").next_after(utc(2026, 11, 28, 0, 0, 0)),
            Some(utc(2026, 11, 30, 9, 0, 0))
        );
        assert_eq!(
            cron("0 0 1 jan,JUL *").next_after(utc(2026, 2, 1, 0, 0, 0)),
            Some(utc(2026, 7, 1, 0, 0, 0))
        );
        assert_eq!(
            cron("0 0 * * 7").next_after(utc(2026, 11, 28, 0, 0, 0)),
            cron("0 0 * * SUN").next_after(utc(2026, 11, 28, 0, 0, 0))
        );
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // The 13th, or any Friday.
        let c = cron("0 0 13 * FRI");
        assert_eq!(
            next_n(&c, utc(2026, 11, 1, 0, 0, 0), 3),
            [
                utc(2026, 11, 6, 0, 0, 0),
                utc(2026, 11, 13, 0, 0, 0),
                utc(2026, 11, 20, 0, 0, 0)
            ]
        );
    }

    #[test]
    fn descriptors() {
        assert_eq!(
            cron("@daily").next_after(utc(2026, 1, 1, 5, 0, 0)),
            Some(utc(2026, 1, 2, 0, 0, 0))
        );
        assert_eq!(
            cron("@midnight"),
            Cron {
                expression: "@midnight".into(),
                ..cron("0 0 * * *")
            }
        );
        assert_eq!(
            cron("@hourly").next_after(utc(2026, 1, 1, 5, 30, 0)),
            Some(utc(2026, 1, 1, 6, 0, 0))
        );
        assert_eq!(
            cron("@weekly").next_after(utc(2026, 11, 29, 0, 0, 0)),
            Some(utc(2026, 12, 6, 0, 0, 0))
        );
        assert_eq!(
            cron("@monthly").next_after(utc(2026, 1, 15, 0, 0, 0)),
            Some(utc(2026, 2, 1, 0, 0, 0))
        );
        assert_eq!(
            cron("@yearly").next_after(utc(2026, 1, 15, 0, 0, 0)),
            Some(utc(2027, 1, 1, 0, 0, 0))
        );
        assert_eq!(
            cron("@annually").next_after(utc(2026, 1, 15, 0, 0, 0)),
            Some(utc(2027, 1, 1, 0, 0, 0))
        );
    }

    #[test]
    fn pg_cron_extras() {
        assert_eq!(
            next_n(&cron("30 seconds"), utc(2026, 1, 1, 0, 0, 10), 3),
            [
                utc(2026, 1, 1, 0, 0, 30),
                utc(2026, 1, 1, 0, 1, 0),
                utc(2026, 1, 1, 0, 1, 30)
            ]
        );
        // $: the last day of the month, leap years included.
        let last = cron("0 12 $ * *");
        assert_eq!(
            next_n(&last, utc(2028, 1, 31, 13, 0, 0), 3),
            [
                utc(2028, 2, 29, 12, 0, 0),
                utc(2028, 3, 31, 12, 0, 0),
                utc(2028, 4, 30, 12, 0, 0)
            ]
        );
        assert_eq!(
            last.next_after(utc(2027, 2, 1, 0, 0, 0)),
            Some(utc(2027, 2, 28, 12, 0, 0))
        );
    }

    #[test]
    fn month_ends_and_leap_years() {
        assert_eq!(
            cron("0 0 31 * *").next_after(utc(2026, 4, 1, 0, 0, 0)),
            Some(utc(2026, 5, 31, 0, 0, 0))
        );
        assert_eq!(
            cron("0 0 29 2 *").next_after(utc(2026, 3, 1, 0, 0, 0)),
            Some(utc(2028, 2, 29, 0, 0, 0))
        );
        assert_eq!(
            parse("0 0 30 2 *", Tz::UTC).unwrap_err().0,
            "it never fires (no date matches its fields)"
        );
    }

    #[test]
    fn time_zones() {
        // The guide's Tokyo schedule: 9:00 in Tokyo is 0:00 UTC (no DST).
        let tokyo = parse("0 9 * * *", Tz::Asia__Tokyo).unwrap();
        assert_eq!(
            next_n(&tokyo, utc(2026, 3, 1, 1, 0, 0), 2),
            [utc(2026, 3, 2, 0, 0, 0), utc(2026, 3, 3, 0, 0, 0)]
        );
        let prefixed = cron("TZ=Asia/Tokyo 0 9 * * *");
        assert_eq!(prefixed.zone, Tz::Asia__Tokyo);
        assert_eq!(
            prefixed.next_after(utc(2026, 3, 1, 1, 0, 0)),
            Some(utc(2026, 3, 2, 0, 0, 0))
        );
    }

    #[test]
    fn spring_forward_fires_once_when_the_clock_resumes() {
        // New York, 2026-03-08: 02:00 EST becomes 03:00 EDT (07:00 UTC).
        let ny = parse("30 2 * * *", Tz::America__New_York).unwrap();
        assert_eq!(
            next_n(&ny, utc(2026, 3, 7, 12, 0, 0), 2),
            [utc(2026, 3, 8, 7, 0, 0), utc(2026, 3, 9, 6, 30, 0)]
        );
        // Every 15 minutes: 02:00-02:45 do not exist; one fire at 03:00 covers them.
        let quarter = parse("*/15 * * * *", Tz::America__New_York).unwrap();
        assert_eq!(
            next_n(&quarter, utc(2026, 3, 8, 6, 40, 0), 3),
            [
                utc(2026, 3, 8, 6, 45, 0),
                utc(2026, 3, 8, 7, 0, 0),
                utc(2026, 3, 8, 7, 15, 0)
            ]
        );
        // Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00 UTC).
        let berlin = parse("15 2 * * *", Tz::Europe__Berlin).unwrap();
        assert_eq!(
            next_n(&berlin, utc(2026, 3, 28, 12, 0, 0), 2),
            [utc(2026, 3, 29, 1, 0, 0), utc(2026, 3, 30, 0, 15, 0)]
        );
    }

    #[test]
    fn fall_back_fires_once_at_the_first_occurrence() {
        // New York, 2026-11-01: 02:00 EDT becomes 01:00 EST; 01:30 happens at 05:30 and 06:30 UTC.
        let ny = parse("30 1 * * *", Tz::America__New_York).unwrap();
        assert_eq!(
            next_n(&ny, utc(2026, 10, 31, 12, 0, 0), 2),
            [utc(2026, 11, 1, 5, 30, 0), utc(2026, 11, 2, 6, 30, 0)]
        );
        // Hourly: the repeated hour does not fire twice.
        let hourly = parse("0 * * * *", Tz::America__New_York).unwrap();
        assert_eq!(
            next_n(&hourly, utc(2026, 11, 1, 4, 30, 0), 3),
            [
                utc(2026, 11, 1, 5, 0, 0),
                utc(2026, 11, 1, 7, 0, 0),
                utc(2026, 11, 1, 8, 0, 0)
            ]
        );
        // Starting inside the second occurrence: nothing fires until after it.
        assert_eq!(
            hourly.next_after(utc(2026, 11, 1, 6, 10, 0)),
            Some(utc(2026, 11, 1, 7, 0, 0))
        );
        // Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens at 00:30 and 01:30 UTC.
        let berlin = parse("30 2 * * *", Tz::Europe__Berlin).unwrap();
        assert_eq!(
            next_n(&berlin, utc(2026, 10, 24, 12, 0, 0), 2),
            [utc(2026, 10, 25, 0, 30, 0), utc(2026, 10, 26, 1, 30, 0)]
        );
    }

    #[test]
    fn catch_up_is_the_latest_missed_instant() {
        let c = cron("*/10 * * * *");
        assert_eq!(
            c.last_between(utc(2026, 1, 1, 0, 0, 0), utc(2026, 1, 1, 1, 5, 0)),
            Some(utc(2026, 1, 1, 1, 0, 0))
        );
        assert_eq!(
            c.last_between(utc(2026, 1, 1, 0, 0, 0), utc(2026, 1, 1, 0, 9, 59)),
            None
        );
    }

    #[test]
    fn errors_quote_what_is_wrong() {
        let e = |s: &str| parse(s, Tz::UTC).unwrap_err().0;
        assert_eq!(e("0 25 * * *"), "hour 25 is out of range (0-23)");
        assert_eq!(e("61 * * * * *"), "second 61 is out of range (0-59)");
        assert_eq!(e("0 0 0 * *"), "day of month 0 is out of range (1-31)");
        assert_eq!(e("0 0 * 13 *"), "month 13 is out of range (1-12)");
        assert_eq!(e("0 0 * * 8"), "day of week 8 is out of range (0-7)");
        assert!(e("0 0 * * FUNDAY").contains("\"FUNDAY\" is not a valid day of week"));
        assert!(e("* * * *").contains("has 4 fields"));
        assert!(e("*/0 * * * *").contains("positive number"));
        assert!(e("5-1 * * * *").contains("must go upward"));
        assert!(e("@fortnightly").contains("unknown descriptor"));
        assert!(e("90 seconds").contains("1 to 59 seconds"));
        assert!(e("TZ=Mars/Olympus 0 9 * * *").contains("\"Mars/Olympus\" is not a time zone"));
        assert!(e("").contains("empty"));
    }
}
