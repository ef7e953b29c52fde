//! When the reconcile after peer changes runs: soon after a change that finds the daemon idle,
//! at most once per [`COALESCE`] while changes keep coming.
//!
//! A fixed delay after the first change (50 ms before) made every lone change wait the whole
//! window, so at 5000 peers a single node's new VtepMAC took 90 ms to reach the kernel (50 ms of
//! waiting, 40 ms for the pass). Now a change that arrives when the last pass ended more than
//! [`COALESCE`] ago waits only [`SETTLE`] (for the rest of its own burst, e.g. the `Removed` and
//! `Added` of a podCIDR change), while a burst still costs one pass per [`COALESCE`]: the pass
//! that follows another waits until [`COALESCE`] after that one ended.

use std::time::Duration;

use tokio::time::Instant;

/// The longest a peer change waits for the others of its burst; also the shortest gap between
/// two reconciles run for peer changes.
pub const COALESCE: Duration = Duration::from_millis(50);

/// How long a change that finds the daemon idle waits for the rest of its burst.
pub const SETTLE: Duration = Duration::from_millis(5);

/// The reconcile schedule for peer changes; pure, so the rule is tested without a daemon.
#[derive(Debug, Default, Clone, Copy)]
pub struct Coalescer {
    /// When the last reconcile (of any trigger: each one is a full pass) ended.
    last_pass: Option<Instant>,
}

impl Coalescer {
    /// When to run the reconcile for a change arriving at `now` with none scheduled yet.
    pub fn due(&self, now: Instant) -> Instant {
        let soon = now + SETTLE;
        match self.last_pass {
            Some(end) => soon.max(end + COALESCE),
            None => soon,
        }
    }

    /// A reconcile pass ended at `at`.
    pub fn passed(&mut self, at: Instant) {
        self.last_pass = Some(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_changes_settle_briefly_bursts_are_spaced() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        // Nothing ran yet: only the settle delay.
        assert_eq!(c.due(t0), t0 + SETTLE);
        // A pass just ended: the next one waits for the window after it.
        c.passed(t0);
        assert_eq!(c.due(t0 + Duration::from_millis(1)), t0 + COALESCE);
        assert_eq!(
            c.due(t0 + Duration::from_millis(48)),
            t0 + Duration::from_millis(53)
        );
        // Long after the last pass: idle again.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(c.due(later), later + SETTLE);
    }
}
