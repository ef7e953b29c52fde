//! When reconcile passes run: after peer changes ([`Coalescer`]) and for repair
//! ([`next_repair`]).
//!
//! After peer changes: soon after a change that finds the daemon idle, at most once per
//! [`COALESCE`] while changes keep coming.
//! A fixed delay after the first change (50 ms before) made every lone change wait the whole
//! window, so at 5000 peers a single node's new VtepMAC took 90 ms to reach the kernel (50 ms of
//! waiting, 40 ms for the pass). Now a change that arrives when the last pass ended more than
//! [`COALESCE`] ago waits only [`SETTLE`] (for the rest of its own burst, e.g. the `Removed` and
//! `Added` of a podCIDR change), while a burst still costs one pass per [`COALESCE`]: the pass
//! that follows another waits until [`COALESCE`] after that one ended.

use std::time::Duration;

use tokio::time::Instant;

/// The shortest time between repair passes (every pass compares the whole kernel state with
/// the desired one, so any pass counts as a repair).
pub const REPAIR_INTERVAL: Duration = Duration::from_secs(10);

/// A repair pass may use at most one part in this many of a core: at 5000 peers a pass that
/// finds everything in place still dumps and compares 15000 kernel entries (~50 ms), which
/// every 10 s was a quarter of the daemon's CPU while 5000 Nodes sent status updates.
pub const REPAIR_COST_SHARE: u32 = 500;

/// The longest time between repair passes, however expensive they are.
pub const REPAIR_INTERVAL_MAX: Duration = Duration::from_secs(60);

/// When the next repair pass is due after a pass that ended at `now`, when a pass that finds
/// everything in place takes `cost`: [`REPAIR_INTERVAL`] later, or later still when such passes
/// are expensive (26 s at 5000 peers, never more than [`REPAIR_INTERVAL_MAX`]). Deleted devices
/// and peer changes do not wait for it: they start a pass at once.
pub fn next_repair(now: Instant, cost: Duration) -> Instant {
    now + cost
        .saturating_mul(REPAIR_COST_SHARE)
        .clamp(REPAIR_INTERVAL, REPAIR_INTERVAL_MAX)
}

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

    #[test]
    fn repairs_cost_a_bounded_share() {
        let t0 = Instant::now();
        // Cheap passes: every 10 s.
        assert_eq!(
            next_repair(t0, Duration::from_millis(2)),
            t0 + REPAIR_INTERVAL
        );
        // A 51 ms pass (5000 peers): 25.5 s, so at most 0.2 % of a core.
        assert_eq!(
            next_repair(t0, Duration::from_millis(51)),
            t0 + Duration::from_millis(25_500)
        );
        // Absurd durations are capped, and do not overflow.
        assert_eq!(
            next_repair(t0, Duration::from_secs(u64::MAX / 1000)),
            t0 + REPAIR_INTERVAL_MAX
        );
    }
}
