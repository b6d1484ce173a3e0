//! Bounded history: what one retention pass scans, and how it paces itself
//! so that removing history never competes with the work (README,
//! "Operations"). The statements are in worker/retention.rs.

use std::time::Duration;

/// One index range a pass walks, a batch at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// The runs of one function whose `retention` is shorter than the
    /// setting's (by the index on function and id).
    FunctionRuns { function_id: String, keep_secs: i64 },
    /// Every run older than the setting's retention (by the primary key).
    AllRuns { keep_secs: i64 },
    /// Events older than the setting's retention that no run needs.
    Events { keep_secs: i64 },
}

/// The scans of a pass, in order: runs first, so that the events they
/// held are free by the time the events are scanned. `global_secs` is
/// `jobs.retention` (0: for ever); `overrides`, the functions' own.
pub fn plan(global_secs: i64, overrides: Vec<(String, i64)>) -> Vec<Scan> {
    let mut scans: Vec<Scan> = overrides
        .into_iter()
        .filter(|(_, keep)| global_secs == 0 || *keep < global_secs)
        .map(|(function_id, keep_secs)| Scan::FunctionRuns {
            function_id,
            keep_secs,
        })
        .collect();
    if global_secs > 0 {
        scans.push(Scan::AllRuns {
            keep_secs: global_secs,
        });
        scans.push(Scan::Events {
            keep_secs: global_secs,
        });
    }
    scans
}

/// Rows one batch looks at: one short transaction.
pub const BATCH: i64 = 1000;

/// Share of the time a pass with work spends in batches. Deleting is
/// cheap per row but would otherwise take a core for as long as the
/// backlog lasts; at a fifth of one, a million runs go in minutes.
const DUTY_PERCENT: u32 = 20;

/// How long to wait after a batch that took `batch`.
pub fn pause_after(batch: Duration) -> Duration {
    (batch * (100 / DUTY_PERCENT - 1)).clamp(Duration::from_millis(5), Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_keeping_less_get_their_own_scan() {
        let overrides = vec![("short".to_string(), 60), ("long".to_string(), 90 * 86_400)];
        assert_eq!(
            plan(30 * 86_400, overrides.clone()),
            vec![
                Scan::FunctionRuns {
                    function_id: "short".into(),
                    keep_secs: 60
                },
                Scan::AllRuns {
                    keep_secs: 30 * 86_400
                },
                Scan::Events {
                    keep_secs: 30 * 86_400
                },
            ]
        );
        // Kept for ever by the setting: only the functions' own retention removes anything.
        assert_eq!(plan(0, overrides).len(), 2);
        assert_eq!(plan(0, vec![]), vec![]);
    }

    #[test]
    fn batches_take_a_fifth_of_the_time() {
        assert_eq!(
            pause_after(Duration::from_millis(10)),
            Duration::from_millis(40)
        );
        assert_eq!(pause_after(Duration::ZERO), Duration::from_millis(5));
        assert_eq!(pause_after(Duration::from_secs(10)), Duration::from_secs(5));
    }
}
