//! A run's timeline as geometry: where each step's bar starts and how wide it
//! is on an axis from the run's creation to its end (or now), in thousandths.

use chrono::{DateTime, Utc};

/// The axis spans this many units; bars are placed in an SVG of that width.
pub const WIDTH: f64 = 1000.0;
/// A step of a microsecond on an axis of a week is still drawn, this wide.
const MIN_BAR: f64 = 2.0;

#[derive(Debug, Clone, Copy)]
pub struct Axis {
    start: DateTime<Utc>,
    millis: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bar {
    pub x: f64,
    pub width: f64,
}

impl Axis {
    /// From `start` to the latest of `end` and every span's end; never empty.
    pub fn new(
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        spans: impl IntoIterator<Item = (DateTime<Utc>, DateTime<Utc>)>,
    ) -> Axis {
        let mut first = start;
        let mut last = end;
        for (from, to) in spans {
            first = first.min(from);
            last = last.max(to);
        }
        Axis {
            start: first,
            millis: millis(first, last).max(1.0),
        }
    }

    pub fn total_millis(&self) -> f64 {
        self.millis
    }

    pub fn bar(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Bar {
        let scale = WIDTH / self.millis;
        let x = (millis(self.start, from) * scale).clamp(0.0, WIDTH - MIN_BAR);
        let width = (millis(from, to).max(0.0) * scale).clamp(MIN_BAR, WIDTH - x);
        Bar { x, width }
    }

    /// Tick positions and labels (offsets from the start), `count` + 1 of them.
    pub fn ticks(&self, count: usize) -> Vec<(f64, String)> {
        (0..=count)
            .map(|i| {
                let share = i as f64 / count as f64;
                (share * WIDTH, format_duration(share * self.millis))
            })
            .collect()
    }
}

fn millis(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().map_or_else(
        || (to - from).num_milliseconds() as f64,
        |us| us as f64 / 1000.0,
    )
}

pub fn duration_between(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    format_duration(millis(from, to).max(0.0))
}

/// "0.42 ms", "12 ms", "1.5 s", "2 min 5 s", "3 h 20 min", "7 d 1 h".
pub fn format_duration(ms: f64) -> String {
    if ms < 1.0 {
        return format!("{ms:.2} ms");
    }
    if ms < 1000.0 {
        return format!("{} ms", ms.round());
    }
    let seconds = ms / 1000.0;
    if seconds < 60.0 {
        return format!("{seconds:.1} s");
    }
    let whole = seconds.round() as u64;
    let (d, h, m, s) = (
        whole / 86_400,
        whole / 3600 % 24,
        whole / 60 % 60,
        whole % 60,
    );
    match (d, h) {
        (0, 0) if s == 0 => format!("{m} min"),
        (0, 0) => format!("{m} min {s} s"),
        (0, _) if m == 0 => format!("{h} h"),
        (0, _) => format!("{h} h {m} min"),
        (_, 0) => format!("{d} d"),
        _ => format!("{d} d {h} h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn t(ms: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap() + Duration::milliseconds(ms)
    }

    #[test]
    fn bars_in_proportion() {
        let axis = Axis::new(t(0), t(1000), [(t(100), t(600))]);
        assert_eq!(axis.total_millis(), 1000.0);
        assert_eq!(
            axis.bar(t(100), t(600)),
            Bar {
                x: 100.0,
                width: 500.0
            }
        );
        assert_eq!(
            axis.bar(t(0), t(1000)),
            Bar {
                x: 0.0,
                width: 1000.0
            }
        );
    }

    #[test]
    fn axis_covers_steps_past_the_end_and_tiny_steps_stay_visible() {
        let axis = Axis::new(t(0), t(10), [(t(5), t(2000))]);
        assert_eq!(axis.total_millis(), 2000.0);
        let tiny = axis.bar(t(1999), t(1999));
        assert_eq!(tiny.width, MIN_BAR);
        assert!(tiny.x + tiny.width <= WIDTH);
        let zero = Axis::new(t(0), t(0), []);
        assert_eq!(zero.total_millis(), 1.0);
        assert_eq!(
            zero.ticks(2),
            vec![
                (0.0, "0.00 ms".into()),
                (500.0, "0.50 ms".into()),
                (1000.0, "1 ms".into())
            ]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(0.42), "0.42 ms");
        assert_eq!(format_duration(12.4), "12 ms");
        assert_eq!(format_duration(1500.0), "1.5 s");
        assert_eq!(format_duration(125_000.0), "2 min 5 s");
        assert_eq!(format_duration(120_000.0), "2 min");
        assert_eq!(
            format_duration(3.0 * 3_600_000.0 + 20.0 * 60_000.0),
            "3 h 20 min"
        );
        assert_eq!(format_duration(7.0 * 86_400_000.0), "7 d");
        assert_eq!(format_duration(7.0 * 86_400_000.0 + 3_600_000.0), "7 d 1 h");
        assert_eq!(duration_between(t(10), t(0)), "0.00 ms");
    }
}
