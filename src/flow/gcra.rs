//! The generic cell rate algorithm, as Inngest uses it for `throttle` and
//! `rate_limit`: the state of a key is one instant, its theoretical arrival
//! time (TAT); a start is due one emission interval (`period / limit`) after
//! the previous one, and up to `tolerance` early.
//!
//! Times are microseconds since 1970.

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gcra {
    emission_us: i64,
    tolerance_us: i64,
}

impl Gcra {
    /// `throttle`: steady `limit` starts per `period`, and `burst` more at once
    /// after a quiet spell.
    pub fn throttle(limit: u32, period_ms: u64, burst: u32) -> Gcra {
        let emission_us = (period_ms as i64 * 1000 / limit.max(1) as i64).max(1);
        Gcra {
            emission_us,
            tolerance_us: emission_us * burst as i64,
        }
    }

    /// `rate_limit`: at most `limit` starts in any `period`.
    pub fn rate_limit(limit: u32, period_ms: u64) -> Gcra {
        let emission_us = (period_ms as i64 * 1000 / limit.max(1) as i64).max(1);
        Gcra {
            emission_us,
            tolerance_us: emission_us * (limit.max(1) as i64 - 1),
        }
    }

    /// Reserves the earliest start at or after `now`: returns when it is and
    /// the key's new TAT. Starts reserved one after the other keep their order.
    pub fn reserve(&self, tat: Option<i64>, now: i64) -> (i64, i64) {
        let tat = tat.unwrap_or(now);
        let start = now.max(tat - self.tolerance_us);
        (start, tat.max(start) + self.emission_us)
    }

    /// Admits a start at `now`, or refuses it (nothing is reserved then):
    /// returns the new TAT when admitted.
    pub fn admit(&self, tat: Option<i64>, now: i64) -> Option<i64> {
        let tat = tat.unwrap_or(now).max(now);
        (tat - now <= self.tolerance_us).then_some(tat + self.emission_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1000;

    #[test]
    fn throttle_spaces_starts_after_the_burst() {
        let g = Gcra::throttle(5, 1000, 1);
        let mut tat = None;
        let starts: Vec<i64> = (0..6)
            .map(|_| {
                let (start, next) = g.reserve(tat, 0);
                tat = Some(next);
                start / MS
            })
            .collect();
        assert_eq!(starts, [0, 0, 200, 400, 600, 800]);
        // After a quiet spell the burst is there again, not more.
        let (start, _) = g.reserve(tat, 10_000 * MS);
        assert_eq!(start, 10_000 * MS);
    }

    #[test]
    fn throttle_rate_is_the_configured_one_over_time() {
        let g = Gcra::throttle(7, 3000, 2);
        let mut tat = None;
        let mut last = 0;
        for _ in 0..1000 {
            let (start, next) = g.reserve(tat, 0);
            tat = Some(next);
            last = start;
        }
        // 1000 starts at 7 per 3 s, after a burst of 3.
        let expected = (1000 - 3) as f64 * 3000.0 / 7.0;
        assert!(((last / MS) as f64 - expected).abs() < 2.0, "{last}");
    }

    #[test]
    fn rate_limit_admits_limit_per_period() {
        let g = Gcra::rate_limit(3, 1000);
        let mut tat = None;
        let admitted = (0..10)
            .filter(|_| match g.admit(tat, 0) {
                Some(next) => {
                    tat = Some(next);
                    true
                }
                None => false,
            })
            .count();
        assert_eq!(admitted, 3);
        assert!(g.admit(tat, 200 * MS).is_none());
        assert!(g.admit(tat, 334 * MS).is_some());
    }
}
