//! Rate limiting for the warnings the lease watch repeats while etcd stays unavailable.
//!
//! The watch retries every 5 s at most (its backoff cap), which is right for recovering fast
//! but would log a warning every 5 s on every node for as long as etcd has no quorum. The first
//! failure of a run is logged as it happens; repeats at most once per [`REPEAT_INTERVAL`], saying
//! how many were left out; the end of the run is logged once.

use std::time::{Duration, Instant};

/// How often a repeated failure is logged while it lasts.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(60);

/// Consecutive failures of one kind of attempt.
#[derive(Debug, Default)]
pub struct Repeats {
    streak: u32,
    suppressed: u32,
    last_logged: Option<Instant>,
}

impl Repeats {
    /// Records a failure at `now`; `Some(n)` if it is to be logged, `n` being how many failures
    /// were not logged since the last one that was.
    pub fn failed(&mut self, now: Instant) -> Option<u32> {
        self.streak = self.streak.saturating_add(1);
        match self.last_logged {
            Some(t) if now.saturating_duration_since(t) < REPEAT_INTERVAL => {
                self.suppressed = self.suppressed.saturating_add(1);
                None
            }
            _ => {
                self.last_logged = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// Records a success; returns how many failures in a row it ended (0: none).
    pub fn recovered(&mut self) -> u32 {
        std::mem::take(self).streak
    }
}

/// The suffix for a logged failure that stands for `suppressed` others.
pub fn left_out(suppressed: u32) -> String {
    match suppressed {
        0 => String::new(),
        n => format!(" ({n} more failures since the last message)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_failure_logged_then_one_a_minute_then_the_recovery() {
        let t0 = Instant::now();
        let mut r = Repeats::default();
        assert_eq!(r.recovered(), 0, "nothing failed yet");
        assert_eq!(r.failed(t0), Some(0));
        // The watch's backoff: 0.1, 0.2, ... 5 s, then every 5 s.
        let mut logged = Vec::new();
        for s in 1..=24u64 {
            if let Some(n) = r.failed(t0 + Duration::from_secs(5 * s)) {
                logged.push((s, n));
            }
        }
        assert_eq!(logged, [(12, 11), (24, 11)], "one message a minute");
        assert_eq!(r.recovered(), 25);
        // A new run starts over: its first failure is logged at once.
        assert_eq!(r.failed(t0 + Duration::from_secs(121)), Some(0));
        assert_eq!(r.recovered(), 1);
    }

    #[test]
    fn suffix_counts_what_was_left_out() {
        assert_eq!(left_out(0), "");
        assert_eq!(left_out(11), " (11 more failures since the last message)");
    }
}
