//! When to try again after a failed attempt.

use std::time::Duration;

/// Inngest's default schedule: the delay before retry n (0-based), plus up to
/// 30 seconds of jitter so that a burst of failures does not retry in lockstep.
const DEFAULT_TABLE_SECS: [u64; 10] = [15, 30, 60, 120, 300, 600, 1200, 2400, 3600, 7200];
const DEFAULT_JITTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backoff {
    /// Inngest's table, 15 s doubling up to 2 h, with jitter.
    Default,
    /// `base * 2^n`, capped at `max`.
    Exponential { base: Duration, max: Duration },
    /// The same delay every time.
    Fixed { delay: Duration },
}

impl Backoff {
    /// Delay before the retry that follows failed attempt `attempt` (0-based).
    /// `jitter` is a uniform random number in [0, 1): the default schedule adds
    /// up to 30 s, the configured ones up to 10% of the delay, never past `max`.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let jitter = jitter.clamp(0.0, 1.0);
        match self {
            Backoff::Default => {
                let index = (attempt as usize).min(DEFAULT_TABLE_SECS.len() - 1);
                Duration::from_secs(DEFAULT_TABLE_SECS[index]) + DEFAULT_JITTER.mul_f64(jitter)
            }
            Backoff::Exponential { base, max } => {
                let max = max.as_secs_f64();
                let capped = (base.as_secs_f64() * 2f64.powi(attempt.min(62) as i32)).min(max);
                Duration::from_secs_f64((capped * (1.0 + 0.1 * jitter)).min(max))
            }
            Backoff::Fixed { delay } => *delay,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Backoff::Default => serde_json::json!({"type": "default"}),
            Backoff::Exponential { base, max } => serde_json::json!({
                "type": "exponential",
                "base": base.as_secs_f64(),
                "max": max.as_secs_f64(),
            }),
            Backoff::Fixed { delay } => {
                serde_json::json!({"type": "fixed", "base": delay.as_secs_f64()})
            }
        }
    }

    /// Reads back what [`Backoff::to_json`] stored.
    pub fn from_stored(value: &serde_json::Value) -> Backoff {
        let seconds = |key: &str| {
            Duration::from_secs_f64(value.get(key).and_then(|v| v.as_f64()).unwrap_or(0.0))
        };
        match value.get("type").and_then(|t| t.as_str()) {
            Some("exponential") => Backoff::Exponential {
                base: seconds("base"),
                max: seconds("max"),
            },
            Some("fixed") => Backoff::Fixed {
                delay: seconds("base"),
            },
            _ => Backoff::Default,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn default_follows_inngest_table_with_bounded_jitter() {
        assert_eq!(Backoff::Default.delay(0, 0.0), secs(15));
        assert_eq!(Backoff::Default.delay(1, 0.0), secs(30));
        assert_eq!(Backoff::Default.delay(3, 0.0), secs(120));
        assert_eq!(Backoff::Default.delay(50, 0.0), secs(7200));
        let jittered = Backoff::Default.delay(0, 0.999);
        assert!(jittered > secs(44) && jittered < secs(45));
    }

    #[test]
    fn exponential_doubles_from_base_and_caps_at_max() {
        let b = Backoff::Exponential {
            base: secs(2),
            max: secs(60),
        };
        let delays: Vec<u64> = (0..7).map(|n| b.delay(n, 0.0).as_secs()).collect();
        assert_eq!(delays, vec![2, 4, 8, 16, 32, 60, 60]);
        assert!(b.delay(40, 0.99) <= secs(60));
        let with_jitter = b.delay(1, 0.5);
        assert!(with_jitter >= secs(4) && with_jitter <= Duration::from_millis(4_400));
    }

    #[test]
    fn fixed_is_constant() {
        let b = Backoff::Fixed {
            delay: Duration::from_millis(250),
        };
        assert_eq!(b.delay(0, 0.7), Duration::from_millis(250));
        assert_eq!(b.delay(9, 0.1), Duration::from_millis(250));
    }

    #[test]
    fn stored_form_round_trips() {
        for b in [
            Backoff::Default,
            Backoff::Exponential {
                base: secs(2),
                max: secs(60),
            },
            Backoff::Fixed {
                delay: Duration::from_millis(100),
            },
        ] {
            assert_eq!(Backoff::from_stored(&b.to_json()), b);
        }
    }
}
