//! Cron schedules: parsing and the next instant to fire, in a time zone.
//!
//! Accepted: 5 fields (`minute hour day-of-month month day-of-week`) or 6
//! (a leading seconds field); `*`, lists, ranges, steps (`*/15`, `1-30/5`,
//! `10/5`), month and weekday names (`JAN`, `MON-FRI`), `7` for Sunday, `$` for
//! the last day of the month (pg_cron's); `@yearly @annually @monthly @weekly
//! @daily @midnight @hourly`; `@reboot` and `@restart` (once per server start,
//! fired by the launcher; no instant of their own here); pg_cron's
//! `'30 seconds'` (1 to 59 seconds); and an optional `TZ=Area/City ` prefix.
//!
//! The rules are Vixie cron's, as pg_cron has them:
//! - Days: a field that begins with `*` still restricts by its values (`*/2`
//!   is 1, 3, 5, ...). If the day-of-month or the day-of-week field begins
//!   with `*`, a day matches when both fields do; otherwise when either does.
//! - Daylight saving time: times are matched on the zone's wall clock. A
//!   schedule whose second, minute or hour field begins with `*` (a wildcard
//!   schedule, Vixie's MIN_STAR/HR_STAR) fires whenever the wall clock shows a
//!   matching time: not at all for times that clocks spring forward over, in
//!   both passes of times that clocks fall back over. Any other schedule
//!   (fixed-time) fires once per matching wall-clock time: a time that does
//!   not exist fires at the first valid instant after it, a time that occurs
//!   twice fires at its first occurrence.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeZone,
    Timelike, Utc,
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
    /// `@reboot`, `@restart`: when the server starts.
    Reboot,
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
    /// The field begins with `*` (Vixie's DOM_STAR, DOW_STAR): a day must
    /// then match both day fields, otherwise either.
    days_star: bool,
    weekdays_star: bool,
    /// A time-of-day field begins with `*` (Vixie's MIN_STAR, HR_STAR): the
    /// schedule follows the wall clock through daylight saving changes.
    wildcard: bool,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Dates and weekdays repeat every 400 Gregorian years: a schedule that
/// matches no date in that long matches none ever.
const GREGORIAN_CYCLE_DAYS: i64 = 146_097;

/// How far apart offset changes are looked for. Zones change offset months
/// apart; two changes that cancel out within this would go unnoticed.
const OFFSET_PROBE_SECONDS: i64 = 6 * 3600;

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
    if !cron.is_reboot() && cron.next_after(probe).is_none() {
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
        "@reboot" | "@restart" => return Ok(Spec::Reboot),
        "@yearly" | "@annually" => "0 0 1 1 *".to_string(),
        "@monthly" => "0 0 1 * *".to_string(),
        "@weekly" => "0 0 * * 0".to_string(),
        "@daily" | "@midnight" => "0 0 * * *".to_string(),
        "@hourly" => "0 * * * *".to_string(),
        other if other.starts_with('@') => {
            return Err(CronError(format!(
                "unknown descriptor \"{body}\" (use @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly, @reboot or @restart)"
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
    let star = |field: &str| field.starts_with('*');
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
        days_star: star(rest[2]),
        weekdays_star: star(rest[4]),
        wildcard: star(seconds) || star(rest[0]) || star(rest[1]),
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
            // Like pg_cron, a step beyond the field's largest value is refused:
            // "*/60" for minutes is a mistake, not "every hour".
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .ok()
                    .filter(|s| (1..=max).contains(s))
                    .ok_or_else(|| {
                        CronError(format!(
                            "\"{item}\": the {what} step must be a number from 1 to {max}"
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

/// The smallest value in `bits` that is `from` or more.
fn next_value(bits: u64, from: u32) -> Option<u32> {
    let rest = if from < 64 {
        bits & (u64::MAX << from)
    } else {
        0
    };
    (rest != 0).then(|| rest.trailing_zeros())
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
        if self.days_star || self.weekdays_star {
            day && weekday
        } else {
            day || weekday
        }
    }

    /// The first wall-clock time strictly after `after` that matches.
    fn next_local(&self, after: NaiveDateTime) -> Option<NaiveDateTime> {
        let mut t = after.with_nanosecond(0)? + Duration::seconds(1);
        let limit = after.date() + Duration::days(GREGORIAN_CYCLE_DAYS);
        while t.date() <= limit {
            let date = t.date();
            let next_day = || date.succ_opt()?.and_hms_opt(0, 0, 0);
            if !has(self.months, t.month()) {
                let (year, month) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = NaiveDate::from_ymd_opt(year, month, 1)?.and_hms_opt(0, 0, 0)?;
            } else if !self.day_matches(date) {
                t = next_day()?;
            } else if let Some(hour) = next_value(self.hours, t.hour()) {
                if hour > t.hour() {
                    t = date.and_hms_opt(hour, 0, 0)?;
                    continue;
                }
                t = match next_value(self.minutes, t.minute()) {
                    None => date.and_hms_opt(hour, 0, 0)? + Duration::hours(1),
                    Some(minute) if minute > t.minute() => date.and_hms_opt(hour, minute, 0)?,
                    Some(minute) => match next_value(self.seconds, t.second()) {
                        Some(second) => return date.and_hms_opt(hour, minute, second),
                        None => date.and_hms_opt(hour, minute, 0)? + Duration::minutes(1),
                    },
                };
            } else {
                t = next_day()?;
            }
        }
        None
    }
}

impl Cron {
    /// Whether this is `@reboot` / `@restart`: fired once per server start by
    /// the launcher, never by `next_after`.
    pub fn is_reboot(&self) -> bool {
        self.spec == Spec::Reboot
    }

    /// The first instant strictly after `after` at which the schedule fires.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.spec {
            Spec::EverySeconds(n) => {
                let next = (after.timestamp().div_euclid(*n) + 1) * n;
                Utc.timestamp_opt(next, 0).single()
            }
            Spec::Reboot => None,
            Spec::Fields(fields) if fields.wildcard => self.next_on_wall_clock(fields, after),
            Spec::Fields(fields) => self.next_fixed(fields, after),
        }
    }

    /// Wildcard schedules fire whenever the wall clock shows a matching time.
    /// Between two offset changes the wall clock is UTC plus one offset, so
    /// each such stretch is searched on its own, in order.
    fn next_on_wall_clock(&self, fields: &Fields, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut stretch_start = after;
        let mut offset = self.offset_at(after.timestamp());
        let mut wall = after.naive_utc() + offset;
        loop {
            let local = fields.next_local(wall)?;
            let instant = Utc.from_utc_datetime(&(local - offset));
            match self.offset_change(stretch_start, instant, offset) {
                None => return Some(instant),
                Some(change) => {
                    offset = self.offset_at(change.timestamp());
                    stretch_start = change;
                    // From the change itself on: next_local looks strictly after.
                    wall = change.naive_utc() + offset - Duration::seconds(1);
                }
            }
        }
    }

    /// Fixed-time schedules fire once per matching wall-clock time.
    fn next_fixed(&self, fields: &Fields, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
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

    /// The zone's offset from UTC at `timestamp` (seconds since 1970).
    fn offset_at(&self, timestamp: i64) -> Duration {
        let utc = DateTime::from_timestamp(timestamp, 0).unwrap_or_default();
        let offset = self.zone.offset_from_utc_datetime(&utc.naive_utc()).fix();
        Duration::seconds(offset.local_minus_utc().into())
    }

    /// The first whole second in `(from, until]` at which the zone's offset
    /// is no longer `offset` (the offset at `from`).
    fn offset_change(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        offset: Duration,
    ) -> Option<DateTime<Utc>> {
        let (mut low, end) = (from.timestamp(), until.timestamp());
        while low < end {
            let probe = (low + OFFSET_PROBE_SECONDS).min(end);
            if self.offset_at(probe) != offset {
                let mut high = probe;
                while high - low > 1 {
                    let middle = low + (high - low) / 2;
                    if self.offset_at(middle) == offset {
                        low = middle;
                    } else {
                        high = middle;
                    }
                }
                return DateTime::from_timestamp(high, 0);
            }
            low = probe;
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
    fn a_day_field_that_begins_with_a_star_keeps_its_values() {
        let from = utc(2026, 11, 29, 0, 0, 0); // a Sunday
                                               // Odd days.
        assert_eq!(
            next_n(&cron("0 0 */2 * *"), utc(2027, 1, 29, 0, 0, 0), 3),
            [
                utc(2027, 1, 31, 0, 0, 0),
                utc(2027, 2, 1, 0, 0, 0),
                utc(2027, 2, 3, 0, 0, 0)
            ]
        );
        // Sunday, Tuesday, Thursday, Saturday.
        assert_eq!(
            next_n(&cron("0 0 * * */2"), from, 4),
            [
                utc(2026, 12, 1, 0, 0, 0),
                utc(2026, 12, 3, 0, 0, 0),
                utc(2026, 12, 5, 0, 0, 0),
                utc(2026, 12, 6, 0, 0, 0)
            ]
        );
        // Day of month begins with *: odd days that are Tuesdays.
        assert_eq!(
            next_n(&cron("0 0 */2 * TUE"), from, 3),
            [
                utc(2026, 12, 1, 0, 0, 0),
                utc(2026, 12, 15, 0, 0, 0),
                utc(2026, 12, 29, 0, 0, 0)
            ]
        );
        // Day of week begins with *: the 1st, when it is a Sunday, Tuesday, Thursday or Saturday.
        assert_eq!(
            next_n(&cron("0 0 1 * */2"), from, 2),
            [utc(2026, 12, 1, 0, 0, 0), utc(2027, 4, 1, 0, 0, 0)]
        );
        // A * anywhere but first does not count: the 1st, the 15th, a Monday or a Sunday.
        assert_eq!(
            next_n(&cron("0 0 1,15 * MON,*/7"), from, 3),
            [
                utc(2026, 11, 30, 0, 0, 0),
                utc(2026, 12, 1, 0, 0, 0),
                utc(2026, 12, 6, 0, 0, 0)
            ]
        );
    }

    #[test]
    fn rare_dates_are_found_however_far_off() {
        // 29 February on a Sunday: 2004, 2032, 2060.
        let c = cron("0 0 29 2 */7");
        assert_eq!(
            next_n(&c, utc(2004, 3, 1, 0, 0, 0), 2),
            [utc(2032, 2, 29, 0, 0, 0), utc(2060, 2, 29, 0, 0, 0)]
        );
        let in_ny = in_zone("* * 29 2 */7", Tz::America__New_York);
        assert_eq!(
            in_ny.next_after(utc(2004, 3, 1, 5, 0, 0)),
            Some(utc(2032, 2, 29, 5, 0, 0))
        );
    }

    #[test]
    fn reboot_has_no_instant_of_its_own() {
        for expression in ["@reboot", "@restart", "@REBOOT", "TZ=Asia/Tokyo @reboot"] {
            let c = cron(expression);
            assert!(c.is_reboot(), "{expression}");
            assert_eq!(c.next_after(utc(2026, 1, 1, 0, 0, 0)), None);
        }
        assert!(!cron("@hourly").is_reboot());
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

    fn in_zone(expression: &str, zone: Tz) -> Cron {
        parse(expression, zone).unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    #[test]
    fn spring_forward_fixed_times_fire_when_the_clock_resumes() {
        // New York, 2026-03-08: 02:00 EST becomes 03:00 EDT (07:00 UTC).
        let ny = in_zone("30 2 * * *", Tz::America__New_York);
        assert_eq!(
            next_n(&ny, utc(2026, 3, 7, 12, 0, 0), 2),
            [utc(2026, 3, 8, 7, 0, 0), utc(2026, 3, 9, 6, 30, 0)]
        );
        // Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00 UTC).
        let berlin = in_zone("15 2 * * *", Tz::Europe__Berlin);
        assert_eq!(
            next_n(&berlin, utc(2026, 3, 28, 12, 0, 0), 2),
            [utc(2026, 3, 29, 1, 0, 0), utc(2026, 3, 30, 0, 15, 0)]
        );
        // Lord Howe, 2026-10-04: 02:00 (+10:30) becomes 02:30 (+11), 15:30 UTC.
        let lord_howe = in_zone("15 2 * * *", Tz::Australia__Lord_Howe);
        assert_eq!(
            next_n(&lord_howe, utc(2026, 10, 3, 12, 0, 0), 2),
            [utc(2026, 10, 3, 15, 30, 0), utc(2026, 10, 4, 15, 15, 0)]
        );
    }

    #[test]
    fn spring_forward_wildcards_skip_the_times_that_do_not_exist() {
        // New York: 02:00-02:45 do not exist; 03:00 does and fires once.
        let quarter = in_zone("*/15 * * * *", Tz::America__New_York);
        assert_eq!(
            next_n(&quarter, utc(2026, 3, 8, 6, 40, 0), 3),
            [
                utc(2026, 3, 8, 6, 45, 0),
                utc(2026, 3, 8, 7, 0, 0),
                utc(2026, 3, 8, 7, 15, 0)
            ]
        );
        // 02:15 does not exist: no fire at 03:00 for it, the next is 03:15.
        let quarter_past = in_zone("15 * * * *", Tz::America__New_York);
        assert_eq!(
            next_n(&quarter_past, utc(2026, 3, 8, 6, 0, 0), 2),
            [utc(2026, 3, 8, 6, 15, 0), utc(2026, 3, 8, 7, 15, 0)]
        );
        // Every 20 minutes of the hour that does not exist: not that day.
        let in_the_gap = in_zone("*/20 2 * * *", Tz::America__New_York);
        assert_eq!(
            in_the_gap.next_after(utc(2026, 3, 8, 0, 0, 0)),
            Some(utc(2026, 3, 9, 6, 0, 0))
        );
        // Lord Howe: hourly fires at 01:00 and 03:00, not also at 02:30 for 02:00.
        let hourly = in_zone("0 * * * *", Tz::Australia__Lord_Howe);
        assert_eq!(
            next_n(&hourly, utc(2026, 10, 3, 14, 0, 0), 2),
            [utc(2026, 10, 3, 14, 30, 0), utc(2026, 10, 3, 16, 0, 0)]
        );
        let quarter = in_zone("*/15 * * * *", Tz::Australia__Lord_Howe);
        assert_eq!(
            next_n(&quarter, utc(2026, 10, 3, 15, 10, 0), 3),
            [
                utc(2026, 10, 3, 15, 15, 0),
                utc(2026, 10, 3, 15, 30, 0),
                utc(2026, 10, 3, 15, 45, 0)
            ]
        );
        // Berlin: 02:30 does not exist; hourly at :30 goes from 01:30 CET to 03:30 CEST.
        let berlin = in_zone("30 * * * *", Tz::Europe__Berlin);
        assert_eq!(
            next_n(&berlin, utc(2026, 3, 29, 0, 0, 0), 2),
            [utc(2026, 3, 29, 0, 30, 0), utc(2026, 3, 29, 1, 30, 0)]
        );
    }

    #[test]
    fn fall_back_fixed_times_fire_once_at_the_first_occurrence() {
        // New York, 2026-11-01: 02:00 EDT becomes 01:00 EST; 01:30 happens at 05:30 and 06:30 UTC.
        let ny = in_zone("30 1 * * *", Tz::America__New_York);
        assert_eq!(
            next_n(&ny, utc(2026, 10, 31, 12, 0, 0), 2),
            [utc(2026, 11, 1, 5, 30, 0), utc(2026, 11, 2, 6, 30, 0)]
        );
        // Asked between the two occurrences: the second is not a fire.
        assert_eq!(
            ny.next_after(utc(2026, 11, 1, 5, 40, 0)),
            Some(utc(2026, 11, 2, 6, 30, 0))
        );
        // A seconds field without * is fixed too.
        let ny_seconds = in_zone("10 30 1 * * *", Tz::America__New_York);
        assert_eq!(
            next_n(&ny_seconds, utc(2026, 10, 31, 12, 0, 0), 2),
            [utc(2026, 11, 1, 5, 30, 10), utc(2026, 11, 2, 6, 30, 10)]
        );
        // Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens at 00:30 and 01:30 UTC.
        let berlin = in_zone("30 2 * * *", Tz::Europe__Berlin);
        assert_eq!(
            next_n(&berlin, utc(2026, 10, 24, 12, 0, 0), 2),
            [utc(2026, 10, 25, 0, 30, 0), utc(2026, 10, 26, 1, 30, 0)]
        );
        // Lord Howe, 2026-04-05: 02:00 (+11) becomes 01:30 (+10:30); 01:45 happens at 14:45 and 15:15 UTC.
        let lord_howe = in_zone("45 1 * * *", Tz::Australia__Lord_Howe);
        assert_eq!(
            next_n(&lord_howe, utc(2026, 4, 4, 12, 0, 0), 2),
            [utc(2026, 4, 4, 14, 45, 0), utc(2026, 4, 5, 15, 15, 0)]
        );
    }

    #[test]
    fn fall_back_wildcards_fire_in_both_passes() {
        // New York: 01:00 EDT (05:00 UTC), 01:00 EST (06:00 UTC), 02:00 EST.
        let hourly = in_zone("0 * * * *", Tz::America__New_York);
        assert_eq!(
            next_n(&hourly, utc(2026, 11, 1, 4, 30, 0), 3),
            [
                utc(2026, 11, 1, 5, 0, 0),
                utc(2026, 11, 1, 6, 0, 0),
                utc(2026, 11, 1, 7, 0, 0)
            ]
        );
        assert_eq!(
            hourly.next_after(utc(2026, 11, 1, 6, 10, 0)),
            Some(utc(2026, 11, 1, 7, 0, 0))
        );
        // Every 15 minutes: no silent hour; 01:45 EDT is followed by 01:00 EST.
        let quarter = in_zone("*/15 * * * *", Tz::America__New_York);
        assert_eq!(
            next_n(&quarter, utc(2026, 11, 1, 5, 40, 0), 3),
            [
                utc(2026, 11, 1, 5, 45, 0),
                utc(2026, 11, 1, 6, 0, 0),
                utc(2026, 11, 1, 6, 15, 0)
            ]
        );
        // A * in the minute field makes a wildcard too (Vixie's MIN_STAR).
        let during_one = in_zone("*/20 1 * * *", Tz::America__New_York);
        assert_eq!(
            next_n(&during_one, utc(2026, 11, 1, 4, 30, 0), 7),
            [
                utc(2026, 11, 1, 5, 0, 0),
                utc(2026, 11, 1, 5, 20, 0),
                utc(2026, 11, 1, 5, 40, 0),
                utc(2026, 11, 1, 6, 0, 0),
                utc(2026, 11, 1, 6, 20, 0),
                utc(2026, 11, 1, 6, 40, 0),
                utc(2026, 11, 2, 6, 0, 0)
            ]
        );
        // And in the seconds field.
        let seconds = in_zone("*/30 30 1 * * *", Tz::America__New_York);
        assert_eq!(
            next_n(&seconds, utc(2026, 11, 1, 4, 30, 0), 5),
            [
                utc(2026, 11, 1, 5, 30, 0),
                utc(2026, 11, 1, 5, 30, 30),
                utc(2026, 11, 1, 6, 30, 0),
                utc(2026, 11, 1, 6, 30, 30),
                utc(2026, 11, 2, 6, 30, 0)
            ]
        );
        // Berlin: 02:30 CEST, then 02:30 CET.
        let berlin = in_zone("30 * * * *", Tz::Europe__Berlin);
        assert_eq!(
            next_n(&berlin, utc(2026, 10, 25, 0, 0, 0), 3),
            [
                utc(2026, 10, 25, 0, 30, 0),
                utc(2026, 10, 25, 1, 30, 0),
                utc(2026, 10, 25, 2, 30, 0)
            ]
        );
        // Lord Howe repeats 01:30-01:59 only: hourly is unaffected, every
        // quarter hour runs 01:30 and 01:45 twice.
        let hourly = in_zone("0 * * * *", Tz::Australia__Lord_Howe);
        assert_eq!(
            next_n(&hourly, utc(2026, 4, 4, 13, 30, 0), 2),
            [utc(2026, 4, 4, 14, 0, 0), utc(2026, 4, 4, 15, 30, 0)]
        );
        let quarter = in_zone("*/15 * * * *", Tz::Australia__Lord_Howe);
        assert_eq!(
            next_n(&quarter, utc(2026, 4, 4, 14, 20, 0), 5),
            [
                utc(2026, 4, 4, 14, 30, 0),
                utc(2026, 4, 4, 14, 45, 0),
                utc(2026, 4, 4, 15, 0, 0),
                utc(2026, 4, 4, 15, 15, 0),
                utc(2026, 4, 4, 15, 30, 0)
            ]
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
        assert_eq!(
            e("*/0 * * * *"),
            "\"*/0\": the minute step must be a number from 1 to 59"
        );
        // Steps beyond a field's largest value are mistakes (pg_cron refuses them too).
        assert_eq!(
            e("*/60 * * * *"),
            "\"*/60\": the minute step must be a number from 1 to 59"
        );
        assert!(e("0 */24 * * *").contains("hour step must be a number from 1 to 23"));
        assert!(e("0 0 */32 * *").contains("day of month step must be a number from 1 to 31"));
        assert!(e("0 0 * 1-12/13 *").contains("month step must be a number from 1 to 12"));
        assert!(e("0 0 * * */8").contains("day of week step must be a number from 1 to 7"));
        assert!(e("*/60 * * * * *").contains("second step must be a number from 1 to 59"));
        assert!(e("*/x * * * *").contains("\"*/x\": the minute step"));
        assert!(e("5-1 * * * *").contains("must go upward"));
        assert!(e("@fortnightly").contains("unknown descriptor"));
        assert!(e("@reboot 5").contains("unknown descriptor"));
        assert!(e("90 seconds").contains("1 to 59 seconds"));
        assert!(e("TZ=Mars/Olympus 0 9 * * *").contains("\"Mars/Olympus\" is not a time zone"));
        assert!(e("").contains("empty"));
    }

    /// An independent check of the parser, the day rule and the daylight
    /// saving rule: expressions are generated together with the values each
    /// field stands for (worked out here, not by the parser); every minute
    /// (every second, for 6 fields) of a stretch of time is tested against
    /// Vixie cron's rules; the instants found must be exactly those that
    /// `next_after` steps through.
    mod oracle {
        use super::*;

        /// splitmix64: deterministic, so that a failure can be reproduced.
        struct Rng(u64);

        impl Rng {
            fn next(&mut self) -> u64 {
                self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = self.0;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^ (z >> 31)
            }

            fn between(&mut self, low: u32, high: u32) -> u32 {
                low + (self.next() % u64::from(high - low + 1)) as u32
            }

            fn percent(&mut self, p: u32) -> bool {
                self.between(0, 99) < p
            }
        }

        struct Field {
            text: String,
            /// Indexed by value.
            values: Vec<bool>,
            star: bool,
        }

        impl Field {
            fn of(text: &str, max: u32, items: &[(u32, u32, u32)]) -> Field {
                let mut values = vec![false; max as usize + 1];
                for &(low, high, step) in items {
                    let mut v = low;
                    while v <= high {
                        values[v as usize] = true;
                        v += step;
                    }
                }
                Field {
                    text: text.to_string(),
                    values,
                    star: text.starts_with('*'),
                }
            }

            fn every(min: u32, max: u32) -> Field {
                Field::of("*", max, &[(min, max, 1)])
            }

            fn has(&self, v: u32) -> bool {
                self.values[v as usize]
            }
        }

        /// One item of a field: its text and its values as (low, high, step).
        /// Sparse fields get no plain `*` and big steps, to keep the number
        /// of instants in a stretch of years small.
        fn item(
            rng: &mut Rng,
            min: u32,
            max: u32,
            names: &[&str],
            sparse: bool,
        ) -> (String, (u32, u32, u32)) {
            let show = |rng: &mut Rng, v: u32| match names.get((v - min) as usize) {
                Some(name) if rng.percent(30) => {
                    if rng.percent(50) {
                        name.to_ascii_lowercase()
                    } else {
                        name.to_string()
                    }
                }
                _ => v.to_string(),
            };
            let least_step = if sparse { (max / 4).max(2) } else { 1 };
            let low = rng.between(min, max);
            match rng.between(0, 5) {
                0 if !sparse => ("*".into(), (min, max, 1)),
                1 => {
                    let step = rng.between(least_step, max);
                    (format!("*/{step}"), (min, max, step))
                }
                2 => {
                    let high = rng.between(low, max.min(low + if sparse { 2 } else { max }));
                    let text = format!("{}-{}", show(rng, low), show(rng, high));
                    (text, (low, high, 1))
                }
                3 => {
                    let high = rng.between(low, max);
                    let step = rng.between(least_step, max);
                    let text = format!("{}-{}/{step}", show(rng, low), show(rng, high));
                    (text, (low, high, step))
                }
                4 => {
                    let step = rng.between(least_step, max);
                    (format!("{}/{step}", show(rng, low)), (low, max, step))
                }
                _ => (show(rng, low), (low, low, 1)),
            }
        }

        fn field(rng: &mut Rng, min: u32, max: u32, names: &[&str], sparse: bool) -> Field {
            let count = if !sparse && rng.percent(25) {
                rng.between(2, 3)
            } else {
                1
            };
            let (texts, items): (Vec<String>, Vec<(u32, u32, u32)>) = (0..count)
                .map(|_| item(rng, min, max, names, sparse))
                .unzip();
            Field::of(&texts.join(","), max, &items)
        }

        struct Expr {
            text: String,
            second: Field,
            minute: Field,
            hour: Field,
            day: Field,
            last_day: bool,
            month: Field,
            weekday: Field,
        }

        impl Expr {
            /// Vixie's MIN_STAR | HR_STAR (and the seconds field, here).
            fn wildcard(&self) -> bool {
                self.second.star || self.minute.star || self.hour.star
            }

            /// Vixie's `(DOM_STAR || DOW_STAR) ? dom && dow : dom || dow`.
            fn day_matches(&self, date: NaiveDate) -> bool {
                let last = date.succ_opt().unwrap().day() == 1;
                let dom = self.day.has(date.day()) || (self.last_day && last);
                let weekday = date.weekday().num_days_from_sunday();
                let dow = self.weekday.has(weekday) || (weekday == 0 && self.weekday.has(7));
                if self.day.star || self.weekday.star {
                    dom && dow
                } else {
                    dom || dow
                }
            }

            fn matches(&self, wall: NaiveDateTime) -> bool {
                self.month.has(wall.month())
                    && self.day_matches(wall.date())
                    && self.hour.has(wall.hour())
                    && self.minute.has(wall.minute())
                    && self.second.has(wall.second())
            }
        }

        /// `near_transitions`: hours and days that meet the small hours of
        /// the days clocks change.
        fn expression(rng: &mut Rng, six_fields: bool, near_transitions: bool) -> Expr {
            let second = if six_fields {
                field(rng, 0, 59, &[], true)
            } else {
                Field::of("0", 59, &[(0, 0, 1)])
            };
            let minute = field(rng, 0, 59, &[], true);
            let hour = if near_transitions {
                match rng.between(0, 9) {
                    0 | 1 => Field::every(0, 23),
                    2 => {
                        let step = rng.between(1, 4);
                        Field::of(&format!("*/{step}"), 23, &[(0, 23, step)])
                    }
                    3 | 4 => {
                        let low = rng.between(0, 2);
                        let high = rng.between(low, 4);
                        Field::of(&format!("{low}-{high}"), 23, &[(low, high, 1)])
                    }
                    _ => {
                        let h = [0, 1, 2, 3, 23][rng.between(0, 4) as usize];
                        Field::of(&h.to_string(), 23, &[(h, h, 1)])
                    }
                }
            } else {
                field(rng, 0, 23, &[], true)
            };
            let restrict_days = rng.percent(if near_transitions { 30 } else { 70 });
            let (day, last_day) = if !restrict_days || rng.percent(30) {
                (Field::every(1, 31), false)
            } else if rng.percent(10) {
                let mut day = field(rng, 1, 31, &[], false);
                day.text = if rng.percent(50) {
                    "$".into()
                } else {
                    format!("{},$", day.text)
                };
                if day.text == "$" {
                    day.values.fill(false);
                }
                day.star = day.text.starts_with('*');
                (day, true)
            } else {
                (field(rng, 1, 31, &[], false), false)
            };
            let month = if rng.percent(60) {
                Field::every(1, 12)
            } else {
                field(rng, 1, 12, &MONTHS, false)
            };
            let weekday = if !restrict_days || rng.percent(30) {
                Field::every(0, 7)
            } else {
                field(rng, 0, 7, &WEEKDAYS, false)
            };
            let mut parts = vec![
                &minute.text,
                &hour.text,
                &day.text,
                &month.text,
                &weekday.text,
            ];
            if six_fields {
                parts.insert(0, &second.text);
            }
            let text = parts
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            Expr {
                text,
                second,
                minute,
                hour,
                day,
                last_day,
                month,
                weekday,
            }
        }

        fn steps(c: &Cron, from: DateTime<Utc>, until: DateTime<Utc>) -> Vec<DateTime<Utc>> {
            let mut fires = Vec::new();
            let mut t = from - Duration::seconds(1);
            while let Some(next) = c.next_after(t).filter(|next| *next < until) {
                fires.push(next);
                t = next;
            }
            fires
        }

        fn assert_same(expr: &Expr, zone: Tz, expected: &[DateTime<Utc>], got: &[DateTime<Utc>]) {
            if let Some(i) =
                (0..expected.len().max(got.len())).find(|&i| expected.get(i) != got.get(i))
            {
                let around = |v: &[DateTime<Utc>]| {
                    v[i.saturating_sub(2)..(i + 3).min(v.len())]
                        .iter()
                        .map(|t| t.with_timezone(&zone).to_string())
                        .collect::<Vec<_>>()
                };
                panic!(
                    "\"{}\" in {zone}: instant {i} differs; the rules give {:?}, next_after {:?}",
                    expr.text,
                    around(expected),
                    around(got)
                );
            }
        }

        /// Parses `expr`; one that never fires must be refused, and then the
        /// rules must find nothing either.
        fn parsed(expr: &Expr, zone: Tz, expected: &[DateTime<Utc>]) -> Option<Cron> {
            match parse(&expr.text, zone) {
                Ok(c) => Some(c),
                Err(e) => {
                    assert_eq!(
                        e.0, "it never fires (no date matches its fields)",
                        "{}",
                        expr.text
                    );
                    assert!(
                        expected.is_empty(),
                        "\"{}\" was refused but fires",
                        expr.text
                    );
                    None
                }
            }
        }

        /// Every `tick` seconds of `days` days from `start`, in UTC.
        fn utc_fires(expr: &Expr, start: NaiveDate, days: i64, tick: usize) -> Vec<DateTime<Utc>> {
            let mut fires = Vec::new();
            for day in 0..days {
                let date = start + Duration::days(day);
                // The day rule decides for the whole day.
                if !(expr.month.has(date.month()) && expr.day_matches(date)) {
                    continue;
                }
                for second in (0..86_400u32).step_by(tick) {
                    let (h, m, s) = (second / 3600, second / 60 % 60, second % 60);
                    if expr.hour.has(h) && expr.minute.has(m) && expr.second.has(s) {
                        let wall = date.and_hms_opt(h, m, s).unwrap();
                        fires.push(Utc.from_utc_datetime(&wall));
                    }
                }
            }
            fires
        }

        fn compare_in_utc(seed: u64, count: usize, six_fields: bool, days: i64) -> usize {
            let mut rng = Rng(seed);
            let start = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
            let from = Utc.from_utc_datetime(&start.and_hms_opt(0, 0, 0).unwrap());
            let until = from + Duration::days(days);
            let mut compared = 0;
            for _ in 0..count {
                let expr = expression(&mut rng, six_fields, false);
                let expected = utc_fires(&expr, start, days, if six_fields { 1 } else { 60 });
                if let Some(c) = parsed(&expr, Tz::UTC, &expected) {
                    assert_same(&expr, Tz::UTC, &expected, &steps(&c, from, until));
                    compared += usize::from(!expected.is_empty());
                }
            }
            compared
        }

        #[test]
        fn day_rule_over_three_years() {
            let compared = compare_in_utc(17, 300, false, 3 * 365 + 1);
            assert!(compared > 250, "only {compared} expressions fired");
        }

        #[test]
        fn seconds_fields_over_three_weeks() {
            let compared = compare_in_utc(1717, 40, true, 21);
            assert!(compared > 20, "only {compared} expressions fired");
        }

        /// Each minute of a stretch of time, with the wall clock's time then.
        type Window = Vec<(DateTime<Utc>, NaiveDateTime)>;

        /// Every minute from 6 hours before to 6 hours after each offset
        /// change of `zone` in 2025-2028, with the wall clock's time.
        fn around_changes(zone: Tz) -> Vec<Window> {
            let offset = |t: DateTime<Utc>| zone.offset_from_utc_datetime(&t.naive_utc()).fix();
            let mut windows = Vec::new();
            let mut t = utc(2025, 1, 1, 0, 0, 0);
            while t < utc(2029, 1, 1, 0, 0, 0) {
                let next = t + Duration::hours(1);
                if offset(t) != offset(next) {
                    windows.push(
                        (-6 * 60..6 * 60)
                            .map(|m| {
                                let instant = next + Duration::minutes(m);
                                (instant, instant.with_timezone(&zone).naive_local())
                            })
                            .collect(),
                    );
                }
                t = next;
            }
            windows
        }

        /// Vixie cron's clock, minute by minute (cron.c; pg_cron's
        /// StartPendingRuns): a wildcard schedule runs when the wall clock
        /// shows a matching time; a fixed-time one runs for each wall-clock
        /// minute since the last it was checked for, up to the clock's time,
        /// so the minutes clocks skip run when they resume and, when the
        /// clock goes back, it waits until the clock has caught up. One run
        /// per instant.
        fn vixie_fires(
            expr: &Expr,
            window: &[(DateTime<Utc>, NaiveDateTime)],
        ) -> Vec<DateTime<Utc>> {
            let mut checked_up_to = window[0].1 - Duration::minutes(1);
            let mut fires = Vec::new();
            for &(instant, wall) in window {
                let fire = if expr.wildcard() {
                    expr.matches(wall)
                } else {
                    let mut due = false;
                    while checked_up_to < wall {
                        checked_up_to += Duration::minutes(1);
                        due |= expr.matches(checked_up_to);
                    }
                    due
                };
                if fire {
                    fires.push(instant);
                }
            }
            fires
        }

        #[test]
        fn daylight_saving_like_vixie_cron() {
            let zones = [
                Tz::America__New_York,
                Tz::Europe__Berlin,
                Tz::Australia__Lord_Howe,
                Tz::America__Santiago,
                Tz::America__Havana,
                Tz::Pacific__Chatham,
                Tz::Antarctica__Troll,
            ];
            let windows: Vec<(Tz, Vec<Window>)> = zones
                .iter()
                .map(|&zone| (zone, around_changes(zone)))
                .collect();
            for (zone, windows) in &windows {
                assert!(windows.len() >= 8, "{zone} changes offset twice a year");
            }
            let mut rng = Rng(4242);
            let (mut wildcard, mut fixed, mut in_changes) = (0, 0, 0);
            for _ in 0..200 {
                let expr = expression(&mut rng, false, true);
                for (zone, windows) in &windows {
                    for window in windows {
                        let expected = vixie_fires(&expr, window);
                        let Some(c) = parsed(&expr, *zone, &expected) else {
                            continue;
                        };
                        let (from, until) = (
                            window[0].0,
                            window[window.len() - 1].0 + Duration::minutes(1),
                        );
                        assert_same(&expr, *zone, &expected, &steps(&c, from, until));
                        in_changes += expected.len();
                    }
                }
                if expr.wildcard() {
                    wildcard += 1;
                } else {
                    fixed += 1;
                }
            }
            assert!(
                wildcard > 50 && fixed > 50 && in_changes > 10_000,
                "{wildcard} wildcard, {fixed} fixed, {in_changes} instants"
            );
        }
    }
}
